//! The language model: cached decoding equals the full forward, every kind learns a short text,
//! configs round-trip through JSON and refuse inconsistent sizes, sampling is seeded.

use super::*;
use crate::data::{ByteText, Split, TokenSource};
use crate::train::{TrainConfig, Trainer};
use elide_autodiff::no_grad;
use std::sync::atomic::AtomicBool;

fn moe() -> FfnConfig {
    FfnConfig::Moe { hidden: 32, experts: 4, top_k: 2, capacity_factor: None, balance_coef: 0.01, z_loss_coef: 1e-3 }
}

fn sparse() -> FfnConfig {
    FfnConfig::SparseFf { hidden: 64, block_size: 8, rank: 8 }
}

fn tiny(ffn: FfnConfig) -> LmConfig {
    LmConfig::uniform(64, 32, 4, 2, 48, ffn)
}

fn build(config: LmConfig, seed: u64) -> (ParamStore, TransformerLm) {
    let mut store = ParamStore::new();
    let lm = TransformerLm::new(&mut store, config, &mut Rng::seed(seed)).unwrap();
    (store, lm)
}

#[test]
fn cached_decoding_gives_the_logits_of_the_full_forward() {
    for ffn in [FfnConfig::Dense { hidden: 48 }, FfnConfig::SwiGlu { hidden: 40 }, moe(), sparse()] {
        for tied in [true, false] {
            let (_, lm) = build(LmConfig { tied_embeddings: tied, ..tiny(ffn.clone()) }, 1);
            let ids: Vec<u32> = (0..13).map(|i| (i * 7 + 3) % 64).collect();
            let full = no_grad(|| lm.logits(&ids, 1, 13, &mut Ctx::eval())).unwrap().value().to_vec();
            let mut cache = lm.new_cache(1).unwrap();
            let mut ctx = Ctx::eval();
            // A prompt of 5 in one step, then one token at a time.
            let mut got = no_grad(|| lm.decode_step(&ids[..5], 1, &mut cache, &mut ctx)).unwrap().value().to_vec();
            for t in 5..13 {
                got.extend(
                    no_grad(|| lm.decode_step(&ids[t..t + 1], 1, &mut cache, &mut ctx)).unwrap().value().to_vec(),
                );
            }
            assert_eq!(got.len(), full.len());
            for (i, (a, b)) in got.iter().zip(&full).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{ffn:?} tied={tied}: [{i}] {a} vs {b}");
            }
        }
    }
}

/// The five kinds of model the issue names, each 2 blocks of width 32.
fn kinds() -> Vec<(&'static str, LmConfig)> {
    let base = |ffn| LmConfig::uniform(256, 32, 2, 2, 32, ffn);
    let dense = FfnConfig::Dense { hidden: 64 };
    let mut depth = base(dense.clone());
    depth.blocks[1].depth = Some(DepthConfig::new(0.25));
    let mut exit = base(dense.clone());
    exit.early_exit = Some(ExitConfig { after: vec![0], measure: ExitMeasure::MaxProb, threshold: 0.9 });
    vec![
        ("dense", base(dense)),
        ("swiglu", base(FfnConfig::SwiGlu { hidden: 48 })),
        ("moe", base(moe())),
        ("sparse ff", base(FfnConfig::SparseFf { hidden: 64, block_size: 8, rank: 16 })),
        ("mixture of depths", depth),
        ("early exit", exit),
    ]
}

#[test]
fn every_kind_learns_a_short_text() {
    let text = ByteText::new(&"abcabd abcabd abcabe ".repeat(30), 0.1).unwrap();
    for (name, config) in kinds() {
        let mut store = ParamStore::new();
        let lm = TransformerLm::new(&mut store, config, &mut Rng::seed(3)).unwrap();
        let train = TrainConfig {
            steps: 120,
            batch: 8,
            seq: 16,
            lr: 1e-2,
            warmup: 10,
            eval_every: 0,
            eval_batches: 2,
            ..TrainConfig::default()
        };
        let summary =
            Trainer::new(&lm, &store, &text, train, None).unwrap().run(&AtomicBool::new(false), &mut |_| {}).unwrap();
        // The text is nearly periodic: after the warm-up most bytes are determined by the last
        // few, and a uniform guess costs ln 256 = 5.5 nats.
        let last = summary.losses.iter().rev().take(10).sum::<f32>() / 10.0;
        assert!(last < 0.6, "{name}: final training loss {last}");
        assert!(summary.eval_loss.unwrap() < 1.0, "{name}: eval loss {:?}", summary.eval_loss);
        // Decoding (causal routing, early exits, chosen units only) predicts the text too.
        let ids: Vec<u32> = "abcabd abcabd abcabe abcabd".bytes().map(u32::from).collect();
        let decoded = lm.score_decoding(&ids).unwrap();
        assert!(decoded.loss < 1.0, "{name}: decoding loss {}", decoded.loss);
        // And generates it: after "abcabd " the text always goes on "abcab".
        let prompt: Vec<u32> = "abcabd ".bytes().map(u32::from).collect();
        let more = lm.generate(&prompt, 5, Sampling::Greedy, &mut Rng::seed(0)).unwrap();
        assert_eq!(String::from_utf8(more.iter().map(|&t| t as u8).collect()).unwrap(), "abcab", "{name}");
    }
}

#[test]
fn a_routed_block_that_takes_every_token_decodes_like_the_full_forward() {
    // Capacity 1 picks every token in the full forward; a zero router gives logit 0, which the
    // decode-time rule (r >= 0) takes too, at the same gate sigmoid(0). So the two paths agree
    // only if the routed block's cache and positions are right.
    let mut config = tiny(FfnConfig::Dense { hidden: 48 });
    config.blocks[1].depth = Some(DepthConfig::new(1.0));
    let (store, lm) = build(config, 4);
    store.get("blocks.1.depth.router").unwrap().set(elide_tensor::Tensor::zeros(&[32, 1])).unwrap();
    let ids: Vec<u32> = (0..9).map(|i| (i * 5 + 1) % 64).collect();
    let full = no_grad(|| lm.logits(&ids, 1, 9, &mut Ctx::eval())).unwrap().value().to_vec();
    let mut cache = lm.new_cache(1).unwrap();
    let mut ctx = Ctx::eval();
    let mut got = lm.decode_step(&ids[..4], 1, &mut cache, &mut ctx).unwrap().value().to_vec();
    for &id in &ids[4..] {
        got.extend(lm.decode_token(id, &mut cache, &mut ctx).unwrap().0);
    }
    assert_eq!(cache.layer_len(1), 9);
    for (i, (a, b)) in got.iter().zip(&full).enumerate() {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "[{i}] {a} vs {b}");
    }
    // A random router: the tokens whose logit h·w is >= 0 enter the block (the decode-time
    // rule) and only they leave keys in its cache; the others pass through untouched.
    let w = elide_tensor::Tensor::randn(&[32, 1], &mut Rng::seed(11));
    store.get("blocks.1.depth.router").unwrap().set(w.clone()).unwrap();
    let mut cache = lm.new_cache(1).unwrap();
    let h = no_grad(|| {
        let h = lm.embed.forward(&ids).unwrap().reshape(&[1, 9, 32]).unwrap();
        lm.blocks[0].decode(&h, &mut cache, 0, &mut Ctx::eval())
    })
    .unwrap();
    let out = no_grad(|| lm.blocks[1].decode(&h, &mut cache, 1, &mut Ctx::eval())).unwrap().value().to_vec();
    let (hv, wv) = (h.value().to_vec(), w.to_vec());
    let enters: Vec<bool> =
        hv.chunks(32).map(|row| row.iter().zip(&wv).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() >= 0.0).collect();
    let entered = enters.iter().filter(|&&e| e).count();
    assert!(entered > 0 && entered < 9, "the seed gives a mixed decision: {enters:?}");
    assert_eq!(cache.layer_len(1), entered);
    for (t, &e) in enters.iter().enumerate() {
        let same = out[t * 32..(t + 1) * 32] == hv[t * 32..(t + 1) * 32];
        assert_eq!(same, !e, "token {t}");
    }
}

#[test]
fn training_a_routed_block_adds_its_router_loss() {
    let mut config = tiny(FfnConfig::Dense { hidden: 48 });
    config.blocks[0].depth = Some(DepthConfig { predictor_hidden: Some(8), ..DepthConfig::new(0.25) });
    let (store, lm) = build(config, 6);
    assert!(store.get("blocks.0.depth.predictor.w1").is_some());
    let ids: Vec<u32> = (0..16).map(|i| (i * 3) % 64).collect();
    let mut noise = Rng::seed(1);
    let mut ctx = Ctx::train(&mut noise);
    lm.logits(&ids, 2, 8, &mut ctx).unwrap();
    assert_eq!(ctx.aux_losses.len(), 2, "router BCE and predictor BCE");
    let mut eval = Ctx::eval();
    lm.logits(&ids, 2, 8, &mut eval).unwrap();
    assert!(eval.aux_losses.is_empty());
    // 2 of 8 tokens per sequence run block 0: fewer FLOPs than the dense twin.
    let mut dense = Ctx::eval();
    build(tiny(FfnConfig::Dense { hidden: 48 }), 6).1.logits(&ids, 2, 8, &mut dense).unwrap();
    assert!(eval.flops < dense.flops, "{} vs {}", eval.flops, dense.flops);
}

fn exit_model(threshold: f32) -> (ParamStore, TransformerLm) {
    let mut config = tiny(FfnConfig::Dense { hidden: 48 });
    config.early_exit = Some(ExitConfig { after: vec![0], measure: ExitMeasure::TopGap, threshold });
    build(config, 8)
}

/// Cross-entropy of each row of `logits` `[n, vocab]` against the next id.
fn next_token_losses(logits: &[f32], ids: &[u32], vocab: usize) -> Vec<f64> {
    ids.windows(2)
        .enumerate()
        .map(|(t, w)| {
            let row = &logits[t * vocab..(t + 1) * vocab];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let z: f64 = row.iter().map(|&l| (l as f64 - m).exp()).sum();
            m + z.ln() - row[w[1] as usize] as f64
        })
        .collect()
}

#[test]
fn early_exits_score_what_they_skip_and_propagate_their_state() {
    let ids: Vec<u32> = (0..12).map(|i| (i * 11 + 2) % 64).collect();
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    // Never exiting: decoding scores the full forward's logits, every token runs both blocks.
    let (_, lm) = exit_model(2.0);
    let full = no_grad(|| lm.logits(&ids, 1, 12, &mut Ctx::eval())).unwrap().value().to_vec();
    let never = lm.score_decoding(&ids).unwrap();
    assert_eq!(never.mean_blocks, 2.0);
    assert!((never.loss - mean(next_token_losses(&full, &ids, 64))).abs() < 1e-5);
    // Always exiting after block 0: the head's logits of block 0's states.
    let (_, mut lm) = exit_model(0.0);
    let exit_logits = no_grad(|| {
        let (_, exits) = lm.hidden(&ids, 1, 12, &[0], &mut Ctx::eval())?;
        lm.head(&exits[0], &mut Ctx::eval())
    })
    .unwrap()
    .value()
    .to_vec();
    let always = lm.score_decoding(&ids).unwrap();
    assert_eq!(always.mean_blocks, 1.0);
    assert!(always.flops < never.flops);
    assert!((always.loss - mean(next_token_losses(&exit_logits, &ids, 64))).abs() < 1e-5);
    // Tokens that exited left block 1 the keys and values of their block-0 state, which is the
    // input block 1 reads in the full forward: so a later token that runs both blocks sees
    // exactly the full forward's context there.
    let mut cache = lm.new_cache(1).unwrap();
    let mut ctx = Ctx::eval();
    for &id in &ids[..11] {
        assert_eq!(lm.decode_token(id, &mut cache, &mut ctx).unwrap().1, 1);
    }
    assert_eq!(cache.layer_len(1), 11);
    lm.set_exit_threshold(2.0).unwrap();
    let (last, depth) = lm.decode_token(ids[11], &mut cache, &mut ctx).unwrap();
    assert_eq!(depth, 2);
    for (a, b) in last.iter().zip(&full[11 * 64..]) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn training_with_exits_weights_each_exit_by_its_depth() {
    let (_, lm) = exit_model(0.5);
    let text = ByteText::new(&"0123 4567 0 12 ".repeat(20), 0.1).unwrap(); // bytes below the vocab of 64
    let batch = text.batch(Split::Train, 0, 0, 2, 8).unwrap();
    let mut noise = Rng::seed(0);
    let loss = no_grad(|| lm.loss(&batch, &mut Ctx::train(&mut noise))).unwrap().value().item().unwrap() as f64;
    let ce = |h: &Var| -> f64 {
        let logits = lm.head(h, &mut Ctx::eval()).unwrap().reshape(&[16, 64]).unwrap();
        logits.cross_entropy(&batch.targets).unwrap().value().item().unwrap() as f64
    };
    let (last, exits) = no_grad(|| lm.hidden(&batch.inputs, 2, 8, &[0], &mut Ctx::eval())).unwrap();
    // CALM: weights 1 and 2 over blocks 1 and 2, normalised.
    let want = ce(&exits[0]) / 3.0 + 2.0 * ce(&last) / 3.0;
    assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
    let eval = no_grad(|| lm.loss(&batch, &mut Ctx::eval())).unwrap().value().item().unwrap() as f64;
    assert!((eval - ce(&last)).abs() < 1e-6, "evaluation scores the last block");
}

#[test]
fn generation_is_seeded_and_greedy_follows_the_argmax() {
    let (_, lm) = build(tiny(FfnConfig::Dense { hidden: 48 }), 5);
    let prompt = [1, 2, 3];
    let greedy = lm.generate(&prompt, 6, Sampling::Greedy, &mut Rng::seed(0)).unwrap();
    // Greedy by hand: the argmax of the full forward's last logits, appended, repeated.
    let mut ids = prompt.to_vec();
    for _ in 0..6 {
        let logits = no_grad(|| lm.logits(&ids, 1, ids.len(), &mut Ctx::eval())).unwrap().value().to_vec();
        let last = &logits[logits.len() - 64..];
        ids.push((0..64).fold(0, |a, i| if last[i] > last[a] { i } else { a }) as u32);
    }
    assert_eq!(greedy, ids[3..]);
    let draw = |s| lm.generate(&prompt, 8, s, &mut Rng::seed(9)).unwrap();
    assert_eq!(draw(Sampling::Temperature(1.0)), draw(Sampling::Temperature(1.0)));
    assert_eq!(
        draw(Sampling::TopP { p: 1e-6, temperature: 1.0 }),
        lm.generate(&prompt, 8, Sampling::Greedy, &mut Rng::seed(1)).unwrap()
    );
    assert_ne!(draw(Sampling::Temperature(5.0)), lm.generate(&prompt, 8, Sampling::Greedy, &mut Rng::seed(1)).unwrap());
}

#[test]
fn configs_round_trip_and_refuse_inconsistent_sizes() {
    let config = LmConfig {
        blocks: vec![
            BlockConfig { ffn: FfnConfig::Dense { hidden: 8 }, depth: Some(DepthConfig::new(0.125)) },
            BlockConfig { ffn: moe(), depth: None },
            BlockConfig { ffn: sparse(), depth: None },
        ],
        ..tiny(moe())
    };
    assert_eq!(LmConfig::from_json(&config.to_json()).unwrap(), config);
    let json = r#"{"vocab": 256, "d_model": 64, "heads": 4, "max_seq": 128,
        "blocks": [{"ffn": {"kind": "moe", "hidden": 128, "experts": 8, "top_k": 2}}]}"#;
    let parsed = LmConfig::from_json(json).unwrap();
    assert!(parsed.tied_embeddings);
    assert_eq!(
        parsed.blocks[0].ffn,
        FfnConfig::Moe {
            hidden: 128,
            experts: 8,
            top_k: 2,
            capacity_factor: None,
            balance_coef: 0.01,
            z_loss_coef: 1e-3
        }
    );
    let err = |json: &str| LmConfig::from_json(json).err().unwrap().to_string();
    assert_eq!(
        err(
            r#"{"vocab": 256, "d_model": 60, "heads": 8, "max_seq": 8, "blocks": [{"ffn": {"kind": "dense", "hidden": 4}}]}"#
        ),
        "LmConfig: heads 8 must divide d_model 60 into heads of even width (rotary embeddings rotate pairs)"
    );
    assert!(err(r#"{"vocab": 256, "d_model": 64, "heads": 4, "max_seq": 8, "blocks": [{"ffn": {"kind": "moe", "hidden": 4, "experts": 2, "top_k": 3}}]}"#)
        .starts_with("LmConfig: block 0: a mixture needs"));
    assert!(err(r#"{"vocab": 256, "d_model": 64, "heads": 4, "max_seq": 8, "blocks": [], "depth": 3}"#)
        .contains("unknown field `depth`"));
    assert!(err("{").starts_with("LmConfig: "));
    let blocks = r#""blocks": [{"ffn": {"kind": "dense", "hidden": 8}}, {"ffn": {"kind": "dense", "hidden": 8}}]"#;
    assert!(err(&format!(r#"{{"vocab": 64, "d_model": 8, "heads": 2, "max_seq": 8, {blocks}, "early_exit": {{"after": [1], "threshold": 0.5}}}}"#))
        .contains("must list ascending blocks before the last (1)"));
    let exit = ExitConfig { after: vec![0], measure: ExitMeasure::MaxProb, threshold: 0.5 };
    let mut both = tiny(FfnConfig::Dense { hidden: 8 });
    both.blocks[1].depth = Some(DepthConfig::new(0.5));
    both.early_exit = Some(exit);
    assert!(both.validate().unwrap_err().to_string().contains("not supported"));
    assert!(err(r#"{"vocab": 64, "d_model": 8, "heads": 2, "max_seq": 8, "blocks": [{"ffn": {"kind": "sparse_ff", "hidden": 30, "block_size": 8}}]}"#)
        .contains("block_size dividing hidden"));
}

#[test]
fn bad_input_is_refused_by_name() {
    let (_, lm) = build(tiny(FfnConfig::Dense { hidden: 8 }), 2);
    let err = |r: Result<Var>| r.err().unwrap().to_string();
    assert_eq!(err(lm.logits(&[1, 2, 3], 2, 2, &mut Ctx::eval())), "TransformerLm::logits: 3 ids for batch 2 × seq 2");
    assert_eq!(
        err(lm.logits(&[0; 49], 1, 49, &mut Ctx::eval())),
        "TransformerLm::logits: seq 49 is longer than max_seq 48"
    );
    assert!(err(lm.logits(&[64], 1, 1, &mut Ctx::eval())).contains("id 64 at position 0 must be < vocab 64"));
    let gen = |p: &[u32], n, s| lm.generate(p, n, s, &mut Rng::seed(0)).err().unwrap().to_string();
    assert_eq!(gen(&[], 3, Sampling::Greedy), "TransformerLm::generate: the prompt is empty");
    assert!(gen(&[1; 40], 9, Sampling::Greedy).contains("longer than max_seq 48"));
    assert!(gen(&[1], 2, Sampling::TopP { p: 0.0, temperature: 1.0 }).starts_with("sampling: "));
    let data = ByteText::new("x", 0.0).unwrap();
    assert!(data.batch(Split::Train, 0, 0, 1, 4).is_err());
}
