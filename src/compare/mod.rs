//! `elide compare`: what conditional computation buys at equal compute, on generated tasks
//! with a known optimum. Each model is trained with identical data, seeds and steps; the table
//! reports parameters, active FLOPs, training and inference speed, quality and the gap to the
//! optimum, and `--json` the named figures.

mod lm;
mod lm_speed;
mod pets;
mod plot;
mod progress;

use crate::bench::report::Report;
use std::collections::BTreeMap;

/// One trained model.
pub struct Run {
    /// Its name in the table.
    pub name: String,
    /// Parameters.
    pub params: usize,
    /// FLOPs of one sample's (or token's) forward pass: what actually runs.
    pub active_flops: f64,
    /// Training samples (tokens) per second.
    pub train_per_s: f64,
    /// Inference samples (tokens) per second.
    pub infer_per_s: f64,
    /// Accuracy (pets) or eval loss (language models).
    pub quality: f64,
    /// Distance to the optimum: Bayes accuracy − accuracy, or loss − Bayes loss.
    pub gap: f64,
    /// `(training FLOPs, training seconds, quality)` at each evaluation.
    pub curve: Vec<(f64, f64, f64)>,
}

/// Everything a comparison measured.
#[derive(Default)]
pub struct Outcome {
    /// The language-model runs on `domains`.
    pub lm: Vec<Run>,
    /// The hierarchical-classification runs.
    pub pets: Vec<Run>,
    figures: BTreeMap<String, f64>,
}

impl Outcome {
    fn figure(&mut self, key: &str, value: f64) {
        self.figures.insert(key.into(), value);
    }
}

/// How long to train.
#[derive(Clone, Copy)]
pub struct Plan {
    /// A smoke run of under a minute.
    pub quick: bool,
}

/// Runs every comparison.
pub fn compare(plan: Plan) -> Outcome {
    let mut outcome = Outcome::default();
    let pets_plan = if plan.quick {
        pets::PetsPlan { steps: 150, batch: 64, eval_samples: 2000 }
    } else {
        pets::PetsPlan { steps: 800, batch: 128, eval_samples: 4000 }
    };
    let lm_plan = if plan.quick {
        lm::LmPlan {
            steps: 40,
            batch: 8,
            seq: 32,
            eval_every: 10,
            eval_batches: 2,
            decode_sequences: 2,
            timing_rounds: 3,
        }
    } else {
        lm::LmPlan {
            steps: 2000,
            batch: 16,
            seq: 64,
            eval_every: 200,
            eval_batches: 8,
            decode_sequences: 32,
            timing_rounds: 11,
        }
    };
    lm::compare_lm(&lm_plan, &mut outcome);
    pets::compare_pets(&pets_plan, &mut outcome);
    outcome
}

/// Writes the charts of every comparison into `dir`.
///
/// # Errors
/// A message naming the file that could not be written.
pub fn plot(outcome: &Outcome, dir: &std::path::Path) -> Result<(), String> {
    plot::plot_runs(dir, "domains", "eval loss", &outcome.lm)?;
    plot::plot_runs(dir, "pets", "accuracy", &outcome.pets)
}

/// The table (and the figures under it) or the flat JSON object.
pub fn report(outcome: &Outcome) -> Report {
    let mut r = Report::with_widths(
        "elide compare: conditional models against their dense twins, trained identically",
        &[
            "model",
            "params",
            "active MFLOP/token",
            "train tok/s",
            "infer tok/s",
            "eval loss / accuracy",
            "gap to Bayes",
        ],
        &[24, 7, 0, 0, 0, 21],
    );
    let runs = outcome.lm.iter().map(|r| (r, "loss")).chain(outcome.pets.iter().map(|r| (r, "accuracy")));
    for (run, quality) in runs {
        r.row(vec![
            run.name.clone(),
            run.params.to_string(),
            format!("{:.3}", run.active_flops / 1e6),
            format!("{:.0}", run.train_per_s),
            format!("{:.0}", run.infer_per_s),
            format!("{quality} {:.4}", run.quality),
            format!("{:+.4}", run.gap),
        ]);
    }
    for (k, v) in &outcome.figures {
        r.figure(k, *v);
    }
    r
}
