//! `elide bench lm`: whole `TransformerLm`s — a training step of a mixture-of-experts model
//! against the dense model of equal active FLOPs, and decoding with the KV cache against
//! recomputing the prefix for every new token. Every ratio is measured interleaved in one run.

use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{no_grad, AdamW, Gradients, Optimizer, ParamStore};
use elide::models::{Batch, Ctx, FfnConfig, LmConfig, LossModel, Sampling, TrainConfig, TransformerLm};
use elide::tensor::Rng;
use std::cell::RefCell;

/// The sizes of one run.
struct Sizes {
    layers: usize,
    d: usize,
    heads: usize,
    /// The dense hidden width; each of the MoE's experts has half of it (top-2: equal active
    /// FLOPs).
    hidden: usize,
    experts: usize,
    vocab: usize,
    batch: usize,
    seq: usize,
    prompt: usize,
    decode: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                layers: 2,
                d: 64,
                heads: 2,
                hidden: 256,
                experts: 8,
                vocab: 256,
                batch: 2,
                seq: 32,
                prompt: 4,
                decode: 32,
            }
        } else {
            Sizes {
                layers: 6,
                d: 256,
                heads: 4,
                hidden: 1024,
                experts: 8,
                vocab: 256,
                batch: 8,
                seq: 128,
                prompt: 16,
                decode: 256,
            }
        }
    }

    fn config(&self, ffn: FfnConfig) -> LmConfig {
        LmConfig::uniform(self.vocab, self.d, self.heads, self.layers, self.prompt + self.decode, ffn)
    }

    fn dense(&self) -> LmConfig {
        self.config(FfnConfig::Dense { hidden: self.hidden })
    }

    fn moe(&self) -> LmConfig {
        self.config(FfnConfig::Moe {
            hidden: self.hidden / 2,
            experts: self.experts,
            top_k: 2,
            capacity_factor: None,
            balance_coef: 0.01,
            z_loss_coef: 1e-3,
        })
    }
}

/// A model with its parameters and the optimizer the trainer would use.
struct Model {
    store: ParamStore,
    lm: TransformerLm,
    optimizer: RefCell<AdamW>,
}

impl Model {
    fn new(config: LmConfig) -> Model {
        let mut store = ParamStore::new();
        let lm = TransformerLm::new(&mut store, config, &mut Rng::seed(0)).expect("a valid config");
        let rule = TrainConfig::default().no_decay;
        let optimizer = AdamW::new(1e-3).with_decay_filter(move |p| rule.decays(p));
        Model { store, lm, optimizer: RefCell::new(optimizer) }
    }

    /// Forward, loss (auxiliary losses included) and backward.
    fn grads(&self, batch: &Batch) -> Gradients {
        let mut noise = Rng::seed(1);
        let mut ctx = Ctx::train(&mut noise);
        let loss = self.lm.loss(batch, &mut ctx).expect("forward");
        let loss = loss.add(&ctx.aux_loss().expect("scalar")).expect("scalars");
        loss.backward().expect("backward")
    }

    /// One AdamW step.
    fn update(&self, grads: &Gradients) {
        self.optimizer.borrow_mut().step(&self.store, grads).expect("step");
    }

    /// [`Model::grads`]; with `update`, what `Trainer` does next too: clipping to global norm
    /// 1 and the AdamW step.
    fn train_step(&self, batch: &Batch, update: bool) {
        let mut grads = self.grads(batch);
        if update {
            grads.clip_global_norm(1.0).expect("finite gradients");
            self.update(&grads);
        }
        std::hint::black_box(grads);
    }

    /// Greedy decoding of `new` tokens after `prompt` with the KV cache.
    fn decode_cached(&self, prompt: &[u32], new: usize) -> Vec<u32> {
        self.lm.generate(prompt, new, Sampling::Greedy, &mut Rng::seed(2)).expect("decode")
    }

    /// Greedy decoding of `new` tokens after `prompt`, running the whole sequence so far
    /// through the model for every new token (no cache).
    fn decode_recomputed(&self, prompt: &[u32], new: usize) -> Vec<u32> {
        let vocab = self.lm.config().vocab;
        let mut ids = prompt.to_vec();
        no_grad(|| {
            for _ in 0..new {
                let logits = self.lm.logits(&ids, 1, ids.len(), &mut Ctx::eval()).expect("forward").value().to_vec();
                let last = &logits[logits.len() - vocab..];
                let next = last.iter().enumerate().fold(0, |a, (i, &v)| if v > last[a] { i } else { a });
                ids.push(next as u32);
            }
        });
        ids.split_off(prompt.len())
    }
}

/// A batch of random tokens.
fn batch(s: &Sizes) -> Batch {
    let mut rng = Rng::seed(3);
    let ids: Vec<u32> = (0..s.batch * (s.seq + 1)).map(|_| rng.below(s.vocab as u64) as u32).collect();
    let rows = ids.chunks(s.seq + 1);
    let inputs = rows.clone().flat_map(|r| r[..s.seq].to_vec()).collect();
    let targets = rows.flat_map(|r| r[1..].to_vec()).collect();
    Batch { inputs, targets, batch: s.batch, seq: s.seq }
}

fn ms(seconds: f64) -> String {
    format!("{:.2}", seconds * 1e3)
}

/// `elide bench lm`; `quick` shrinks the models and the decode length for a smoke run.
pub fn bench_lm(plan: Plan, quick: bool) -> Report {
    let s = Sizes::new(quick);
    let mut r = Report::new(
        "transformer LM: MoE vs dense training step; KV-cache decoding (interleaved, medians)",
        &["measurement", "ms", "ratio", "rate"],
    );
    let (dense, moe) = (Model::new(s.dense()), Model::new(s.moe()));
    let what = format!(
        "{} layers, d {}, {} heads, vocab {}; batch {} × seq {}",
        s.layers, s.d, s.heads, s.vocab, s.batch, s.seq
    );
    r.note(format!(
        "models: {what}; dense FFN hidden {}; MoE top-2 of {} experts of hidden {} (equal active FLOPs: \
         dense {:.1} vs MoE {:.1} MFLOP per token forward at seq {})",
        s.hidden,
        s.experts,
        s.hidden / 2,
        s.dense().active_flops_per_token(s.seq) / 1e6,
        s.moe().active_flops_per_token(s.seq) / 1e6,
        s.seq
    ));
    r.note(format!(
        "parameters: dense {:.2} M, MoE {:.2} M",
        dense.store.num_elements() as f64 / 1e6,
        moe.store.num_elements() as f64 / 1e6
    ));

    // Training: a full step (forward, loss, backward, clipping, AdamW), and forward+backward
    // alone, all four interleaved.
    let b = batch(&s);
    let tokens = (s.batch * s.seq) as f64;
    let res = interleaved(
        plan,
        &mut [
            &mut || dense.train_step(&b, true),
            &mut || moe.train_step(&b, true),
            &mut || dense.train_step(&b, false),
            &mut || moe.train_step(&b, false),
        ],
    );
    let step_ratio = res.ratios_to_first[1];
    let fwdbwd_ratio = res.ratio(3, 2);
    r.figure("lm_moe_step_vs_dense", step_ratio);
    r.figure("lm_moe_fwdbwd_vs_dense", fwdbwd_ratio);
    r.figure("lm_dense_train_tok_s", tokens / res.medians[0]);
    r.row(vec!["dense training step".into(), ms(res.medians[0]), "1.000".into(), tok_s(tokens, res.medians[0])]);
    r.row(vec![
        "MoE training step".into(),
        ms(res.medians[1]),
        format!("{step_ratio:.3}"),
        tok_s(tokens, res.medians[1]),
    ]);
    r.row(vec![
        "dense forward+backward (no clipping, no AdamW)".into(),
        ms(res.medians[2]),
        "1.000".into(),
        String::new(),
    ]);
    r.row(vec![
        "MoE forward+backward (no clipping, no AdamW)".into(),
        ms(res.medians[3]),
        format!("{fwdbwd_ratio:.3}"),
        String::new(),
    ]);
    // The AdamW step alone (the MoE has three times the parameters at equal active FLOPs).
    let (dense_grads, moe_grads) = (dense.grads(&b), moe.grads(&b));
    let res = interleaved(plan, &mut [&mut || dense.update(&dense_grads), &mut || moe.update(&moe_grads)]);
    r.row(vec!["dense AdamW step alone".into(), ms(res.medians[0]), "1.000".into(), String::new()]);
    r.row(vec![
        "MoE AdamW step alone".into(),
        ms(res.medians[1]),
        format!("{:.3}", res.ratios_to_first[1]),
        String::new(),
    ]);

    // Decoding: the same prompt continued greedily; the recomputing side runs the whole prefix
    // for every token. Both cached models and the recomputing dense one, interleaved.
    let prompt: Vec<u32> = (0..s.prompt as u32).map(|i| (i * 37 + 11) % s.vocab as u32).collect();
    let agree = dense.decode_cached(&prompt, 8) == dense.decode_recomputed(&prompt, 8);
    r.note(format!("cached and recomputed greedy decoding pick the same first 8 tokens: {agree}"));
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                std::hint::black_box(dense.decode_recomputed(&prompt, s.decode));
            },
            &mut || {
                std::hint::black_box(dense.decode_cached(&prompt, s.decode));
            },
            &mut || {
                std::hint::black_box(moe.decode_cached(&prompt, s.decode));
            },
        ],
    );
    let n = s.decode as f64;
    let speedup = 1.0 / res.ratios_to_first[1];
    r.row(vec![
        format!("dense decode {} tokens after {}, recomputing the prefix", s.decode, s.prompt),
        ms(res.medians[0]),
        "1.000".into(),
        tok_s(n, res.medians[0]),
    ]);
    r.row(vec![
        "dense decode, KV cache".into(),
        ms(res.medians[1]),
        format!("{:.4}", res.ratios_to_first[1]),
        tok_s(n, res.medians[1]),
    ]);
    r.row(vec![
        "MoE decode, KV cache".into(),
        ms(res.medians[2]),
        format!("{:.4}", res.ratios_to_first[2]),
        tok_s(n, res.medians[2]),
    ]);
    r.figure("kv_cache_speedup", speedup);
    r.figure("lm_dense_decode_tok_s", n / res.medians[1]);
    r.figure("lm_moe_decode_tok_s", n / res.medians[2]);
    r.figure("lm_moe_decode_vs_dense", res.ratio(2, 1));
    r
}

fn tok_s(tokens: f64, seconds: f64) -> String {
    format!("{:.0} tok/s", tokens / seconds)
}
