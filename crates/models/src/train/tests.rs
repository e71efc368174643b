//! The training loop on a tiny language model: the loss falls, a resumed run equals an
//! uninterrupted one bit for bit, a stop request saves, and bad settings are refused.

use super::*;
use crate::data::ByteText;
use crate::ffn::{Ffn, FfnKind};
use crate::linear::{Embedding, Linear};
use crate::module::Module;
use elide_cond::gathered::WeightLayout;
use elide_kernels::gemm::Activation;

/// Embedding → GELU MLP (residual) → linear head: enough to learn byte bigrams.
struct TinyLm {
    embed: Embedding,
    ffn: Ffn,
    head: Linear,
}

impl TinyLm {
    fn new(store: &mut ParamStore, seed: u64) -> TinyLm {
        let mut rng = Rng::seed(seed);
        TinyLm {
            embed: Embedding::new(&mut store.scope("embed"), 256, 16, 0.5, &mut rng).unwrap(),
            ffn: Ffn::new(&mut store.scope("ffn"), FfnKind::Mlp(Activation::Gelu), 16, 32, &mut rng).unwrap(),
            head: Linear::new(&mut store.scope("head"), 16, 256, true, WeightLayout::InOut, &mut rng).unwrap(),
        }
    }
}

impl LossModel for TinyLm {
    fn loss(&self, batch: &Batch, ctx: &mut Ctx<'_>) -> Result<Var> {
        let x = self.embed.forward(&batch.inputs)?;
        let h = x.add(&self.ffn.forward(&x, ctx)?)?;
        Ok(self.head.forward(&h, ctx)?.cross_entropy(&batch.targets)?)
    }
}

fn text() -> ByteText {
    ByteText::new(&"the cat sat on the mat. the dog sat on the log. ".repeat(40), 0.2).unwrap()
}

fn config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps,
        batch: 4,
        seq: 16,
        lr: 1e-2,
        warmup: 3,
        eval_every: 5,
        eval_batches: 2,
        ..TrainConfig::default()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("elide-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_loss_falls_and_metrics_are_written() {
    let data = text();
    let mut store = ParamStore::new();
    let model = TinyLm::new(&mut store, 1);
    let dir = temp_dir("falls");
    let mut trainer = Trainer::new(&model, &store, &data, config(60), Some(&dir)).unwrap();
    let before = trainer.evaluate().unwrap();
    let mut evals = Vec::new();
    let summary = trainer
        .run(&AtomicBool::new(false), &mut |e| {
            if let Event::Eval { loss, .. } = e {
                evals.push(loss)
            }
        })
        .unwrap();
    assert_eq!((summary.steps, summary.interrupted, summary.losses.len(), evals.len()), (60, false, 60, 12));
    let after = summary.eval_loss.unwrap();
    assert!(after < 0.5 * before, "eval loss {before} -> {after}");
    let lines = std::fs::read_to_string(dir.join(METRICS_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 60 + 12);
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 1);
    assert_eq!(first["loss"].as_f64().unwrap() as f32, summary.losses[0]);
    assert!(dir.join(CHECKPOINT_FILE).exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let data = text();
    let full = {
        let mut store = ParamStore::new();
        let model = TinyLm::new(&mut store, 2);
        let mut t = Trainer::new(&model, &store, &data, config(12), None).unwrap();
        t.run(&AtomicBool::new(false), &mut |_| {}).unwrap().losses
    };
    let dir = temp_dir("resume");
    // First half: stop after step 5 (the observer asks; the step finishes and is saved).
    let first = {
        let mut store = ParamStore::new();
        let model = TinyLm::new(&mut store, 2);
        let mut t = Trainer::new(&model, &store, &data, config(12), Some(&dir)).unwrap();
        let stop = AtomicBool::new(false);
        let s = t
            .run(&stop, &mut |e| {
                if let Event::Step(r) = e {
                    if r.step == 5 {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
            .unwrap();
        assert!(s.interrupted);
        assert_eq!(s.steps, 5);
        s.losses
    };
    // Second half: a fresh model (other initial weights), resumed from the checkpoint.
    let rest = {
        let mut store = ParamStore::new();
        let model = TinyLm::new(&mut store, 99);
        let mut t = Trainer::new(&model, &store, &data, config(12), Some(&dir)).unwrap();
        t.resume().unwrap();
        assert_eq!(t.step(), 5);
        t.run(&AtomicBool::new(false), &mut |_| {}).unwrap().losses
    };
    let resumed: Vec<u32> = first.iter().chain(&rest).map(|l| l.to_bits()).collect();
    assert_eq!(resumed, full.iter().map(|l| l.to_bits()).collect::<Vec<_>>());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_settings_and_foreign_checkpoints_are_refused() {
    let data = text();
    let mut store = ParamStore::new();
    let model = TinyLm::new(&mut store, 3);
    let bad = |c: TrainConfig| Trainer::new(&model, &store, &data, c, None).err().unwrap().to_string();
    assert_eq!(bad(TrainConfig { lr: f32::NAN, ..config(5) }), "TrainConfig: lr NaN must be finite and > 0");
    assert!(bad(TrainConfig { batch: 0, ..config(5) }).starts_with("TrainConfig: steps, batch, seq"));
    assert!(bad(TrainConfig { clip: Some(0.0), ..config(5) }).starts_with("TrainConfig: clip"));
    let err = bad(TrainConfig { seq: 5000, ..config(5) });
    assert!(err.contains("fewer than one sequence"), "{err}");
    // A checkpoint of another model: the resume fails and changes nothing.
    let dir = temp_dir("foreign");
    let mut other_store = ParamStore::new();
    other_store.register("something.else", elide_tensor::Tensor::zeros(&[3])).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    checkpoint::save(&dir.join(CHECKPOINT_FILE), &other_store, None, &serde_json::json!({ "step": 3 })).unwrap();
    let before: Vec<Vec<f32>> = store.iter().map(|p| p.value().to_vec()).collect();
    let mut t = Trainer::new(&model, &store, &data, config(5), Some(&dir)).unwrap();
    assert!(t.resume().is_err());
    assert_eq!(t.step(), 0);
    assert_eq!(store.iter().map(|p| p.value().to_vec()).collect::<Vec<_>>(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bias and a weight matrix that the loss multiplies by zero: their gradients are zero, so
/// only weight decay can move them.
struct IdleParams {
    inner: TinyLm,
    weight: elide_autodiff::Param,
    bias: elide_autodiff::Param,
}

impl LossModel for IdleParams {
    fn loss(&self, batch: &Batch, ctx: &mut Ctx<'_>) -> Result<Var> {
        let idle = self.weight.var().sum_all().add(&self.bias.var().sum_all())?.mul_scalar(0.0);
        Ok(self.inner.loss(batch, ctx)?.add(&idle)?)
    }
}

#[test]
fn weight_decay_skips_the_no_decay_group() {
    let data = text();
    let mut store = ParamStore::new();
    let inner = TinyLm::new(&mut store, 4);
    let start = elide_tensor::Tensor::from_vec(vec![1.5, -0.5, 2.0, 0.25], &[2, 2]).unwrap();
    let weight = store.register("idle.weight", start.clone()).unwrap();
    let bias = store.register("idle.bias", start.clone()).unwrap();
    let model = IdleParams { inner, weight, bias };
    let cfg = TrainConfig { weight_decay: 0.1, clip: None, ..config(6) };
    Trainer::new(&model, &store, &data, cfg.clone(), None).unwrap().run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    // `idle.bias` is 2-d but a bias by name: not decayed, not moved at all.
    assert_eq!(model.bias.value().to_vec(), start.to_vec(), "the excluded bias moved");
    // `idle.weight` shrank by the product of (1 − lr_t·λ) over the six steps' learning rates.
    let factor: f64 = (0..6).map(|s| 1.0 - cfg.schedule().lr(cfg.lr, s) as f64 * 0.1).product();
    assert!(factor < 0.9999, "the decay is too weak to see: {factor}");
    for (got, was) in model.weight.value().to_vec().iter().zip(start.to_vec()) {
        assert!((*got as f64 - was as f64 * factor).abs() < 1e-6, "{got} vs {was}·{factor}");
    }
    // With the rule switched off, the bias decays like the weight.
    let cfg = TrainConfig { no_decay: NoDecay::none(), ..cfg };
    Trainer::new(&model, &store, &data, cfg, None).unwrap().run(&AtomicBool::new(false), &mut |_| {}).unwrap();
    for (got, was) in model.bias.value().to_vec().iter().zip(start.to_vec()) {
        assert!((*got as f64 - was as f64 * factor).abs() < 1e-6, "{got} vs {was}·{factor}");
    }
}

#[test]
fn a_transformer_lms_parameters_split_into_the_documented_groups() {
    use crate::lm::{BlockConfig, DepthConfig, FfnConfig, LmConfig, TransformerLm};
    let moe = FfnConfig::Moe {
        hidden: 8,
        experts: 4,
        top_k: 2,
        capacity_factor: None,
        balance_coef: 0.01,
        z_loss_coef: 1e-3,
    };
    let sparse = FfnConfig::SparseFf { hidden: 16, block_size: 4, rank: 4 };
    let routed = DepthConfig { predictor_hidden: Some(4), ..DepthConfig::new(0.5) };
    let blocks = [
        (FfnConfig::Dense { hidden: 8 }, None),
        (FfnConfig::SwiGlu { hidden: 8 }, None),
        (moe, None),
        (sparse, Some(routed)),
    ];
    let config = LmConfig {
        vocab: 32,
        d_model: 8,
        heads: 2,
        max_seq: 16,
        tied_embeddings: false,
        blocks: blocks.into_iter().map(|(ffn, depth)| BlockConfig { ffn, depth }).collect(),
        early_exit: None,
    };
    let mut store = ParamStore::new();
    TransformerLm::new(&mut store, config, &mut Rng::seed(0)).unwrap();
    let rule = NoDecay::default();
    let (decayed, kept): (Vec<_>, Vec<_>) = store.iter().partition(|p| rule.decays(p));
    let sorted = |names: Vec<String>| {
        let mut names = names;
        names.sort();
        names
    };
    let names = |ps: Vec<&elide_autodiff::Param>| sorted(ps.iter().map(|p| p.name().to_string()).collect());
    let under = |prefix: &str, names: &[&str]| names.iter().map(|n| format!("{prefix}.{n}")).collect::<Vec<_>>();
    // Decayed: the matrices of attention, feed-forward layers and routers, and the untied head.
    let mut want_decayed = vec!["head.weight".to_string()];
    for i in 0..4 {
        want_decayed.extend(under(&format!("blocks.{i}.attn"), &["q.weight", "k.weight", "v.weight", "o.weight"]));
    }
    want_decayed.extend(under("blocks.0.ffn", &["up.weight", "down.weight"]));
    want_decayed.extend(under("blocks.1.ffn", &["gate.weight", "up.weight", "down.weight"]));
    want_decayed.extend(under("blocks.2.ffn", &["router", "experts.w1", "experts.w2"]));
    want_decayed.extend(under("blocks.3.ffn", &["c1", "c2", "w1", "w2"]));
    want_decayed.extend(under("blocks.3.depth", &["router", "predictor.w1", "predictor.w2"]));
    assert_eq!(names(decayed), sorted(want_decayed));
    // Not decayed: the embedding table, every norm gain and every bias.
    let mut want_kept = vec!["embed.weight".to_string(), "final_norm.weight".to_string()];
    for i in 0..4 {
        want_kept.extend(under(&format!("blocks.{i}"), &["attn_norm.weight", "ffn_norm.weight"]));
    }
    want_kept.extend(under("blocks.0.ffn", &["up.bias", "down.bias"]));
    want_kept.extend(under("blocks.2.ffn", &["experts.b1", "experts.b2"]));
    want_kept.extend(under("blocks.3.ffn", &["b1", "b2"]));
    want_kept.extend(under("blocks.3.depth", &["predictor.b1", "predictor.b2"]));
    assert_eq!(names(kept), sorted(want_kept));
}

#[test]
fn the_no_decay_rule_reads_names_and_shapes() {
    let rule = NoDecay::default();
    assert!(rule.matches("blocks.0.ffn.router_bias", &[8, 8]));
    assert!(rule.matches("moe.experts.b2", &[4, 16]));
    assert!(rule.matches("skip.b", &[3, 3]));
    assert!(rule.matches("lm.embed.weight", &[10, 4]), "a suffix after a dot");
    assert!(!rule.matches("token_embed.weight", &[10, 4]), "not a suffix after a dot");
    assert!(!rule.matches("blocks.0.ffn.experts.w2", &[4, 8, 2]));
    assert!(!rule.matches("branches.b1x", &[4, 8]));
    let custom = NoDecay { vectors: false, biases: false, names: vec!["pos".into()] };
    assert!(!custom.matches("norm.weight", &[8]));
    assert!(custom.matches("pos", &[8, 8]) && custom.matches("a.pos", &[8, 8]));
    let json = r#"{"vectors": false, "names": []}"#;
    let parsed: NoDecay = serde_json::from_str(json).unwrap();
    assert_eq!(parsed, NoDecay { vectors: false, biases: true, names: vec![] });
}
