//! The `pets` part of `elide compare`: a hierarchical classifier that runs one branch per
//! sample, against a dense classifier with the same trunk and one branch as wide as all of the
//! hierarchical one's (every sample pays for every class), trained identically.

use super::progress::Progress;
use super::{Outcome, Run};
use elide::autodiff::optim::{AdamW, Optimizer};
use elide::autodiff::{ParamStore, Var};
use elide::cond::{HierarchicalClassifier, HierarchicalConfig, TrainRoute};
use elide::models::tasks::{Pets, PetsConfig};
use elide::models::Split;
use elide::tensor::Rng;
use std::time::Instant;

/// Training settings of the pets runs.
pub struct PetsPlan {
    pub steps: u64,
    pub batch: usize,
    pub eval_samples: usize,
}

/// One classifier's configuration: the hierarchical one, or its dense twin (`C = 1` over all
/// `C·M` classes, branch `C×` as wide).
fn classifier(task: &PetsConfig, dense: bool) -> HierarchicalConfig {
    let branch_hidden = 256;
    HierarchicalConfig {
        d_in: task.dim,
        d_trunk: 64,
        num_coarse: if dense { 1 } else { task.coarse },
        num_fine: if dense { task.coarse * task.fine } else { task.fine },
        branch_hidden: if dense { task.coarse * branch_hidden } else { branch_hidden },
        train_route: TrainRoute::TrueClass,
        second_branch_below: None,
    }
}

/// FLOPs of one sample's branch (what the hierarchy saves on).
fn branch_flops(c: &HierarchicalConfig) -> f64 {
    2.0 * (c.d_trunk * c.branch_hidden + c.branch_hidden * c.num_fine) as f64
}

/// FLOPs of one sample's forward pass: trunk, coarse head, one branch.
fn forward_flops(c: &HierarchicalConfig) -> f64 {
    2.0 * (c.d_in * c.d_trunk + c.d_trunk * c.num_coarse) as f64 + branch_flops(c)
}

fn train_one(name: &str, task: &Pets, config: HierarchicalConfig, plan: &PetsPlan, seed: u64) -> Run {
    let mut store = ParamStore::new();
    let model =
        HierarchicalClassifier::new(&mut store.scope("pets"), config, &mut Rng::seed(seed)).expect("a valid config");
    let mut opt = AdamW::new(3e-3);
    let progress = Progress::new(name, plan.steps);
    let eval = task.batch(Split::Validation, seed, 0, plan.eval_samples);
    let m = task.config().fine as u32;
    let accuracy = |model: &HierarchicalClassifier| {
        let p = model.predict(&Var::constant(eval.x.clone())).expect("predict");
        // The dense twin has one coarse class whose fine classes are the flat classes.
        let flat = p.classes(config.num_fine);
        let right = (0..eval.coarse.len()).filter(|&i| flat[i] == eval.coarse[i] * m + eval.fine[i]).count();
        right as f64 / eval.coarse.len() as f64
    };
    let flops_per_step = 3.0 * forward_flops(&config) * plan.batch as f64;
    let mut curve = Vec::new();
    let (mut train_s, mut samples) = (0.0, 0usize);
    for step in 0..plan.steps {
        let b = task.batch(Split::Train, seed, step, plan.batch);
        let start = Instant::now();
        let coarse = if config.num_coarse == 1 { vec![0; plan.batch] } else { b.coarse.clone() };
        let fine: Vec<u32> = if config.num_coarse == 1 {
            b.coarse.iter().zip(&b.fine).map(|(c, f)| c * m + f).collect()
        } else {
            b.fine.clone()
        };
        let loss = model.loss(&Var::constant(b.x), &coarse, &fine).expect("loss");
        let grads = loss.total.backward().expect("backward");
        opt.step(&store, &grads).expect("step");
        train_s += start.elapsed().as_secs_f64();
        samples += plan.batch;
        let done = step + 1;
        if done % (plan.steps / 8).max(1) == 0 || done == plan.steps {
            let acc = accuracy(&model);
            curve.push((done as f64 * flops_per_step, train_s, acc));
            progress.set(done, &format!("accuracy {acc:.3}"));
        } else {
            progress.set(done, "");
        }
    }
    progress.finish();
    let start = Instant::now();
    let reps = 5;
    for _ in 0..reps {
        std::hint::black_box(model.predict(&Var::constant(eval.x.clone())).expect("predict"));
    }
    let infer_s = start.elapsed().as_secs_f64() / reps as f64;
    let acc = accuracy(&model);
    Run {
        name: name.into(),
        params: store.num_elements(),
        active_flops: forward_flops(&config),
        train_per_s: samples as f64 / train_s,
        infer_per_s: plan.eval_samples as f64 / infer_s,
        quality: acc,
        gap: task.bayes_accuracy(seed, plan.eval_samples) - acc,
        curve,
    }
}

/// Trains both classifiers and reports them with the `pets` figures.
pub fn compare_pets(plan: &PetsPlan, outcome: &mut Outcome) {
    let task = Pets::new(PetsConfig::default()).expect("the default task");
    let (hier_cfg, dense_cfg) = (classifier(task.config(), false), classifier(task.config(), true));
    let dense = train_one("pets dense", &task, dense_cfg, plan, 11);
    let hier = train_one("pets hierarchical", &task, hier_cfg, plan, 11);
    outcome.figure("hier_acc_minus_dense", hier.quality - dense.quality);
    outcome.figure("hier_branch_compute_fraction", branch_flops(&hier_cfg) / branch_flops(&dense_cfg));
    outcome.figure("hier_infer_speedup", hier.infer_per_s / dense.infer_per_s);
    outcome.figure("pets_dense_accuracy", dense.quality);
    outcome.figure("pets_hier_accuracy", hier.quality);
    outcome.figure("pets_bayes_accuracy", task.bayes_accuracy(11, plan.eval_samples));
    outcome.pets.push(dense);
    outcome.pets.push(hier);
}
