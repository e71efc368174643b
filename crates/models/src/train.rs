//! [`Trainer`]: the training loop — AdamW with two parameter groups ([`NoDecay`]: no weight
//! decay on biases, norm gains and embeddings) on a warmup + cosine schedule, gradient clipping,
//! auxiliary losses, evaluation every N steps, metrics as JSON lines, checkpoints every N steps
//! and at the end, and a resume that continues bit for bit.
//!
//! Everything a step draws is a function of `(seed, step)`: its batch
//! ([`TokenSource::batch`]) and its training noise (routing noise, Gumbel noise). With the
//! parameters, the optimizer's moments and its step count restored from a checkpoint, a resumed
//! run therefore computes exactly the losses an uninterrupted one would.

use crate::data::{Batch, Split, TokenSource};
use crate::error::{Error, Result};
use crate::module::Ctx;
pub use decay::NoDecay;
use elide_autodiff::{checkpoint, no_grad, AdamW, LrSchedule, Optimizer, ParamStore, Var};
use elide_tensor::Rng;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Something the trainer can train: a scalar loss on a batch.
pub trait LossModel: Send + Sync {
    /// The mean loss of `batch` (auxiliary losses go into `ctx`, the trainer adds them).
    ///
    /// # Errors
    /// If the batch does not fit the model.
    fn loss(&self, batch: &Batch, ctx: &mut Ctx<'_>) -> Result<Var>;
}

/// The settings of a training run (JSON: every field optional, defaulting to
/// [`TrainConfig::default`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps in the whole run.
    pub steps: u64,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warmup steps, then cosine decay to `min_lr_factor · lr` at the last step.
    pub warmup: u64,
    /// The floor of the cosine decay, as a fraction of `lr`.
    pub min_lr_factor: f32,
    /// AdamW's decoupled weight decay, applied to the parameters `no_decay` does not match.
    pub weight_decay: f32,
    /// The parameters left out of weight decay (by default biases, norm gains and the
    /// embedding table; see [`NoDecay`]).
    pub no_decay: NoDecay,
    /// Global gradient-norm clipping, if any.
    pub clip: Option<f32>,
    /// Evaluate every this many steps (0: only at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation (the same ones every time).
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: u64,
    /// The seed of batches and noise.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            steps: 1000,
            batch: 16,
            seq: 64,
            lr: 3e-3,
            warmup: 100,
            min_lr_factor: 0.1,
            weight_decay: 0.01,
            no_decay: NoDecay::default(),
            clip: Some(1.0),
            eval_every: 100,
            eval_batches: 8,
            checkpoint_every: 0,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first setting out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::config("TrainConfig", what));
        if self.steps == 0 || self.batch == 0 || self.seq == 0 || self.eval_batches == 0 {
            return bad(format!(
                "steps, batch, seq and eval_batches must be > 0, got {}, {}, {}, {}",
                self.steps, self.batch, self.seq, self.eval_batches
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr {} must be finite and > 0", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_factor) {
            return bad(format!("min_lr_factor {} must be in [0, 1]", self.min_lr_factor));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay {} must be finite and >= 0", self.weight_decay));
        }
        if self.clip.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return bad(format!("clip {:?} must be finite and > 0", self.clip));
        }
        Ok(())
    }

    fn schedule(&self) -> LrSchedule {
        LrSchedule::WarmupCosine { warmup: self.warmup, total: self.steps, min_factor: self.min_lr_factor }
    }
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The step just taken (1 for the first).
    pub step: u64,
    /// Its training loss (auxiliary losses included).
    pub loss: f32,
    /// The learning rate it used.
    pub lr: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f32,
    /// Training tokens per second over this step.
    pub tokens_per_s: f64,
}

/// What the trainer tells its observer.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step was taken.
    Step(&'a StepReport),
    /// The model was evaluated after `step` steps: mean validation loss.
    Eval {
        /// Steps taken.
        step: u64,
        /// Mean loss over the evaluation batches.
        loss: f32,
    },
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Steps taken in total (including those before a resume).
    pub steps: u64,
    /// Whether the run stopped early on request.
    pub interrupted: bool,
    /// The last evaluation's loss.
    pub eval_loss: Option<f32>,
    /// The training loss of every step this call took.
    pub losses: Vec<f32>,
}

/// The file name of the checkpoint inside a run's output directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The file name of the metrics (one JSON object a line) inside a run's output directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// A training run of a [`LossModel`] whose parameters live in a [`ParamStore`].
pub struct Trainer<'a> {
    model: &'a dyn LossModel,
    store: &'a ParamStore,
    data: &'a dyn TokenSource,
    config: TrainConfig,
    optimizer: AdamW,
    step: u64,
    out: Option<PathBuf>,
}

/// A stream of `(seed, index)`-determined values, distinct from the batch stream.
fn step_rng(seed: u64, step: u64) -> Rng {
    Rng::seed(seed.rotate_left(17) ^ step.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

impl<'a> Trainer<'a> {
    /// A run from step 0. With `out`, metrics are appended to `out/metrics.jsonl` and
    /// checkpoints written to `out/checkpoint.safetensors` (the directory is created).
    ///
    /// # Errors
    /// The errors of [`TrainConfig::validate`]; the data's error if a split is shorter than one
    /// sequence; [`Error::Config`] if `out` cannot be created.
    pub fn new(
        model: &'a dyn LossModel,
        store: &'a ParamStore,
        data: &'a dyn TokenSource,
        config: TrainConfig,
        out: Option<&Path>,
    ) -> Result<Trainer<'a>> {
        config.validate()?;
        // Both splits must hold a sequence before anything is written.
        for split in [Split::Train, Split::Validation] {
            data.batch(split, config.seed, 0, 1, config.seq)?;
        }
        if let Some(dir) = out {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::config("Trainer", format!("cannot create {}: {e}", dir.display())))?;
        }
        let rule = config.no_decay.clone();
        let mut optimizer = AdamW::new(config.lr).with_decay_filter(move |p| rule.decays(p));
        optimizer.weight_decay = config.weight_decay;
        Ok(Trainer { model, store, data, config, optimizer, step: 0, out: out.map(Path::to_path_buf) })
    }

    /// Steps taken so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Continues from the checkpoint in the output directory: parameters, optimizer state and
    /// step count.
    ///
    /// # Errors
    /// [`Error::Config`] without an output directory; the checkpoint's load errors (a missing,
    /// corrupted or foreign checkpoint changes nothing).
    pub fn resume(&mut self) -> Result<()> {
        let path = self.checkpoint_path().ok_or_else(|| Error::config("Trainer::resume", "no output directory"))?;
        let meta = checkpoint::load(&path, self.store, Some(&mut self.optimizer))?;
        self.step = meta.get("step").and_then(|s| s.as_u64()).ok_or_else(|| {
            Error::config("Trainer::resume", format!("{} has no step count in its metadata", path.display()))
        })?;
        Ok(())
    }

    fn checkpoint_path(&self) -> Option<PathBuf> {
        self.out.as_ref().map(|d| d.join(CHECKPOINT_FILE))
    }

    /// Writes the checkpoint (parameters, optimizer state, step) to the output directory.
    ///
    /// # Errors
    /// [`Error::Config`] without an output directory; the checkpoint's write errors.
    pub fn save(&self) -> Result<PathBuf> {
        let path = self.checkpoint_path().ok_or_else(|| Error::config("Trainer::save", "no output directory"))?;
        let meta = serde_json::json!({ "step": self.step, "seed": self.config.seed });
        checkpoint::save(&path, self.store, Some(&self.optimizer), &meta)?;
        Ok(path)
    }

    /// The mean loss over the configuration's evaluation batches (the same batches every
    /// time), without recording gradients.
    ///
    /// # Errors
    /// If the validation split is shorter than one sequence, or the model fails.
    pub fn evaluate(&self) -> Result<f32> {
        no_grad(|| {
            let mut total = 0.0f64;
            for i in 0..self.config.eval_batches as u64 {
                let batch =
                    self.data.batch(Split::Validation, self.config.seed, i, self.config.batch, self.config.seq)?;
                total += self.model.loss(&batch, &mut Ctx::eval())?.value().item()? as f64;
            }
            Ok((total / self.config.eval_batches as f64) as f32)
        })
    }

    /// Trains until the configured step count, or until `stop` is set (checked between steps:
    /// the step in progress finishes and a checkpoint is written). `observe` sees every step,
    /// evaluation and checkpoint.
    ///
    /// # Errors
    /// The model's, the optimizer's and the checkpoint's errors; a non-finite loss, naming the
    /// step.
    pub fn run(&mut self, stop: &AtomicBool, observe: &mut dyn FnMut(Event<'_>)) -> Result<TrainSummary> {
        let cfg = self.config.clone();
        let schedule = cfg.schedule();
        let mut summary = TrainSummary { steps: self.step, interrupted: false, eval_loss: None, losses: Vec::new() };
        while self.step < cfg.steps {
            if stop.load(Ordering::Relaxed) {
                summary.interrupted = true;
                break;
            }
            let start = Instant::now();
            let batch = self.data.batch(Split::Train, cfg.seed, self.step, cfg.batch, cfg.seq)?;
            let lr = schedule.lr(cfg.lr, self.step);
            self.optimizer.set_lr(lr);
            let mut noise = step_rng(cfg.seed, self.step);
            let mut ctx = Ctx::train(&mut noise);
            let loss = self.model.loss(&batch, &mut ctx)?;
            let loss = loss.add(&ctx.aux_loss()?)?;
            let value = loss.value().item()?;
            if !value.is_finite() {
                return Err(Error::config("Trainer::run", format!("the loss is {value} at step {}", self.step + 1)));
            }
            let mut grads = loss.backward()?;
            let grad_norm = match cfg.clip {
                Some(max) => grads.clip_global_norm(max)?,
                None => grads.global_norm(),
            };
            self.optimizer.step(self.store, &grads)?;
            self.step += 1;
            let report = StepReport {
                step: self.step,
                loss: value,
                lr,
                grad_norm,
                tokens_per_s: (cfg.batch * cfg.seq) as f64 / start.elapsed().as_secs_f64(),
            };
            summary.losses.push(value);
            self.log(&serde_json::json!({
                "step": report.step, "loss": report.loss, "lr": report.lr,
                "grad_norm": report.grad_norm, "tokens_per_s": report.tokens_per_s,
            }))?;
            observe(Event::Step(&report));
            let last = self.step == cfg.steps;
            if last || (cfg.eval_every > 0 && self.step.is_multiple_of(cfg.eval_every)) {
                let eval = self.evaluate()?;
                summary.eval_loss = Some(eval);
                self.log(&serde_json::json!({ "step": self.step, "eval_loss": eval }))?;
                observe(Event::Eval { step: self.step, loss: eval });
            }
            if self.out.is_some() && !last && cfg.checkpoint_every > 0 && self.step.is_multiple_of(cfg.checkpoint_every)
            {
                let path = self.save()?;
                observe(Event::Checkpoint(&path));
            }
        }
        if self.out.is_some() {
            let path = self.save()?;
            observe(Event::Checkpoint(&path));
        }
        summary.steps = self.step;
        Ok(summary)
    }

    /// Appends one JSON line to the metrics file, if there is an output directory.
    fn log(&self, line: &serde_json::Value) -> Result<()> {
        let Some(dir) = &self.out else { return Ok(()) };
        let path = dir.join(METRICS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::config("Trainer", format!("cannot open {}: {e}", path.display())))?;
        writeln!(f, "{line}").map_err(|e| Error::config("Trainer", format!("cannot write {}: {e}", path.display())))
    }
}

mod decay;
#[cfg(test)]
mod tests;
