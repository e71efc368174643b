//! The language-model part of `elide compare`: a dense transformer and its conditional twins
//! trained on the `domains` task with identical data, seeds and steps, each scored against the
//! Bayes-optimal loss on the same evaluation sequences.

use super::progress::Progress;
use super::{Outcome, Run};
use elide::autodiff::{no_grad, ParamStore};
use elide::models::tasks::{Domains, DomainsConfig};
use elide::models::{Batch, Ctx, Event, FfnConfig, LmConfig, Split, TokenSource, TrainConfig, Trainer, TransformerLm};
use elide::tensor::Rng;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Training settings of the language-model runs.
pub struct LmPlan {
    pub steps: u64,
    pub batch: usize,
    pub seq: usize,
    pub eval_every: u64,
    pub eval_batches: usize,
}

const D_MODEL: usize = 64;
const HEADS: usize = 4;
const LAYERS: usize = 2;
/// The dense FFN's hidden width; each of the mixture's 8 experts has half of it, and top-2
/// routing makes the active FLOPs equal.
const DENSE_HIDDEN: usize = 256;
const SEED: u64 = 7;

fn model(task: &Domains, ffn: FfnConfig, seq: usize) -> LmConfig {
    LmConfig::uniform(task.config().vocab, D_MODEL, HEADS, LAYERS, seq, ffn)
}

/// The evaluation batches every model (and the Bayes-optimal predictor) is scored on.
fn eval_batches(task: &Domains, plan: &LmPlan) -> Vec<Batch> {
    (0..plan.eval_batches as u64)
        .map(|i| task.batch(Split::Validation, SEED, i, plan.batch, plan.seq).expect("a valid task"))
        .collect()
}

fn train_one(name: &str, task: &Domains, config: LmConfig, plan: &LmPlan, optimum: f64) -> Run {
    let mut store = ParamStore::new();
    let lm = TransformerLm::new(&mut store, config.clone(), &mut Rng::seed(SEED)).expect("a valid config");
    let train = TrainConfig {
        steps: plan.steps,
        batch: plan.batch,
        seq: plan.seq,
        lr: 1e-2,
        warmup: plan.steps / 10,
        eval_every: plan.eval_every,
        eval_batches: plan.eval_batches,
        seed: SEED,
        ..TrainConfig::default()
    };
    let tokens_per_step = (plan.batch * plan.seq) as f64;
    let flops_per_step = 3.0 * config.active_flops_per_token(plan.seq) * tokens_per_step;
    let mut trainer = Trainer::new(&lm, &store, task, train, None).expect("a valid run");
    let progress = Progress::new(name, plan.steps);
    let (mut train_s, mut curve) = (0.0, Vec::new());
    let summary = trainer
        .run(&AtomicBool::new(false), &mut |e| match e {
            Event::Step(r) => {
                train_s += tokens_per_step / r.tokens_per_s;
                progress.set(r.step, "");
            }
            Event::Eval { step, loss } => {
                curve.push((step as f64 * flops_per_step, train_s, loss as f64));
                progress.set(step, &format!("eval loss {loss:.3} (optimum {optimum:.3})"));
            }
            Event::Checkpoint(_) => {}
        })
        .expect("training");
    progress.finish();
    // Inference: the evaluation batches through a forward pass without recording.
    let batches = eval_batches(task, plan);
    let start = Instant::now();
    for b in &batches {
        no_grad(|| std::hint::black_box(lm.logits(&b.inputs, b.batch, b.seq, &mut Ctx::eval()).expect("forward")));
    }
    let infer_s = start.elapsed().as_secs_f64();
    let loss = summary.eval_loss.expect("the last step evaluates") as f64;
    Run {
        name: name.into(),
        params: store.num_elements(),
        active_flops: config.active_flops_per_token(plan.seq),
        train_per_s: plan.steps as f64 * tokens_per_step / train_s,
        infer_per_s: (batches.len() * plan.batch * plan.seq) as f64 / infer_s,
        quality: loss,
        gap: loss - optimum,
        curve,
    }
}

/// The eval loss of a run at training time `t`, interpolated along its curve.
fn loss_at_time(run: &Run, t: f64) -> f64 {
    let c = &run.curve;
    match c.iter().position(|p| p.1 >= t) {
        Some(0) => c[0].2,
        Some(i) => {
            let (a, b) = (c[i - 1], c[i]);
            a.2 + (b.2 - a.2) * (t - a.1) / (b.1 - a.1).max(1e-12)
        }
        None => c.last().map_or(f64::NAN, |p| p.2),
    }
}

/// Trains the dense model and its conditional twins and reports them with the LM figures.
pub fn compare_lm(plan: &LmPlan, outcome: &mut Outcome) {
    let task = Domains::new(DomainsConfig::default()).expect("the default task");
    let optimum = {
        let batches = eval_batches(&task, plan);
        batches.iter().map(|b| task.optimal_loss(b).expect("the task's own sequences")).sum::<f64>()
            / batches.len() as f64
    };
    let dense = train_one(
        "domains dense",
        &task,
        model(&task, FfnConfig::Dense { hidden: DENSE_HIDDEN }, plan.seq),
        plan,
        optimum,
    );
    let moe_ffn = FfnConfig::Moe {
        hidden: DENSE_HIDDEN / 2,
        experts: 8,
        top_k: 2,
        capacity_factor: None,
        balance_coef: 0.01,
        z_loss_coef: 1e-3,
    };
    let moe = train_one("domains MoE top-2 of 8", &task, model(&task, moe_ffn, plan.seq), plan, optimum);
    outcome.figure("domains_optimal_loss", optimum);
    outcome.figure("dense_eval_loss", dense.quality);
    outcome.figure("dense_gap", dense.gap);
    outcome.figure("moe_eval_loss", moe.quality);
    outcome.figure("moe_gap", moe.gap);
    outcome.figure("moe_minus_dense_loss", moe.quality - dense.quality);
    let t = dense.curve.last().map_or(0.0, |p| p.1).min(moe.curve.last().map_or(0.0, |p| p.1));
    outcome.figure("moe_minus_dense_loss_equal_time", loss_at_time(&moe, t) - loss_at_time(&dense, t));
    outcome.lm.push(dense);
    outcome.lm.push(moe);
}
