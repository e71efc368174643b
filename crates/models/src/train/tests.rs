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
