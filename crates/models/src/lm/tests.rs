//! The language model: cached decoding equals the full forward, every kind learns a short text,
//! configs round-trip through JSON and refuse inconsistent sizes, sampling is seeded.

use super::*;
use crate::data::{ByteText, Split, TokenSource};
use crate::train::{TrainConfig, Trainer};
use std::sync::atomic::AtomicBool;

fn moe() -> FfnConfig {
    FfnConfig::Moe { hidden: 32, experts: 4, top_k: 2, capacity_factor: None, balance_coef: 0.01, z_loss_coef: 1e-3 }
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
    for ffn in [FfnConfig::Dense { hidden: 48 }, FfnConfig::SwiGlu { hidden: 40 }, moe()] {
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

#[test]
fn every_kind_learns_a_short_text() {
    let text = ByteText::new(&"abcabd abcabd abcabe ".repeat(30), 0.1).unwrap();
    for ffn in [FfnConfig::Dense { hidden: 64 }, FfnConfig::SwiGlu { hidden: 48 }, moe()] {
        let mut store = ParamStore::new();
        let config = LmConfig::uniform(256, 32, 2, 2, 32, ffn.clone());
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
        assert!(last < 0.6, "{ffn:?}: final training loss {last}");
        assert!(summary.eval_loss.unwrap() < 1.0, "{ffn:?}: eval loss {:?}", summary.eval_loss);
    }
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
        blocks: vec![BlockConfig { ffn: FfnConfig::Dense { hidden: 8 } }, BlockConfig { ffn: moe() }],
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
