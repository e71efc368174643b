//! [`EarlyExit`]: a stack of blocks with classifier heads at chosen depths; at inference a row
//! whose head is confident enough leaves the batch, so later blocks run on fewer rows.
//!
//! ```text
//! x ─ block 1 ─ … ─ block k₁ ─┬─ block … ─ block k₂ ─┬─ … ─ block L ─┬
//!                             head 1                  head 2          head E (final)
//!   training:  loss = Σ_e w_e · CE(head_e, y)          every row through every block
//!   inference: rows with conf(head_e) passing leave;   the rest are compacted and go on
//! ```
//!
//! Training is BranchyNet's joint loss (Teerapittayanon et al., arXiv 1709.01686): the weighted
//! sum of every exit's cross-entropy, so the backbone learns features the early heads can use.
//! Inference follows BranchyNet and DeeBERT (arXiv 2004.12993): a row exits at the first head
//! whose confidence passes a threshold — the maximum softmax probability `≥ τ`, or the
//! normalised entropy `H/ln(classes) ≤ τ` (so both thresholds live in `[0, 1]`). Exited rows
//! leave the active batch (one gather of the survivors into a compact batch), so block `l`
//! costs its price on the rows still active at depth `l`: the FLOPs skipped are really skipped.
//! [`EarlyExit::calibrate`] picks the most permissive threshold whose predictions agree with
//! the full-depth model on held-out rows at a target rate (CALM, arXiv 2207.07061, calibrates
//! for the same target; it adds a statistical guarantee via Learn-then-Test, arXiv 2110.01052,
//! which this empirical helper does not: it uses the fixed-sequence order of that procedure on
//! the observed agreement).

use crate::block::Block;
use crate::error::{Error, Result};
use crate::gathered::gather;
use crate::plan::{Capacity, DispatchPlan};
use elide_autodiff::{init, no_grad, Param, Scope, Var};
use elide_tensor::{Rng, Tensor};
use std::sync::Arc;

/// How confident an exit head is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// The largest softmax probability; a row exits when it is `≥ threshold`.
    MaxProb,
    /// The softmax entropy divided by `ln(classes)`; a row exits when it is `≤ threshold`.
    Entropy,
}

impl Confidence {
    /// The confidence of one row of logits (computed in f64).
    pub fn of(self, logits: &[f32]) -> f32 {
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
        let z: f64 = e.iter().sum();
        match self {
            Confidence::MaxProb => (1.0 / z) as f32, // the max entry's exp is 1
            Confidence::Entropy => {
                let h: f64 = e.iter().map(|&p| p / z).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
                (h / (logits.len() as f64).ln()).clamp(0.0, 1.0) as f32
            }
        }
    }

    /// Whether a confidence value passes `threshold`.
    pub fn passes(self, confidence: f32, threshold: f32) -> bool {
        match self {
            Confidence::MaxProb => confidence >= threshold,
            Confidence::Entropy => confidence <= threshold,
        }
    }

    /// `confidence` mapped so that larger means more confident (for sorting; exact).
    fn key(self, confidence: f32) -> f32 {
        match self {
            Confidence::MaxProb => confidence,
            Confidence::Entropy => -confidence,
        }
    }

    /// The strictest threshold in `[0, 1]`.
    fn strictest(self) -> f32 {
        match self {
            Confidence::MaxProb => 1.0,
            Confidence::Entropy => 0.0,
        }
    }
}

/// When rows exit: a confidence measure and its threshold at each early head.
#[derive(Clone, Debug, PartialEq)]
pub struct ExitRule {
    /// The measure.
    pub confidence: Confidence,
    /// One threshold for every early head, or one per early head (all heads but the last, which
    /// takes every row still active), each in `[0, 1]`.
    pub thresholds: Vec<f32>,
}

impl ExitRule {
    /// One threshold shared by every early head.
    pub fn new(confidence: Confidence, threshold: f32) -> ExitRule {
        ExitRule { confidence, thresholds: vec![threshold] }
    }

    /// The threshold of early head `e`.
    fn threshold(&self, e: usize) -> f32 {
        if self.thresholds.len() == 1 {
            self.thresholds[0]
        } else {
            self.thresholds[e]
        }
    }
}

/// A linear classifier head after block `after` (1-based: after the first `after` blocks).
struct ExitHead {
    after: usize,
    weight: Param,
    bias: Param,
}

impl ExitHead {
    fn logits(&self, h: &Var) -> Result<Var> {
        Ok(h.matmul(&self.weight.var())?.add(&self.bias.var())?)
    }
}

/// A stack of blocks with exit heads.
///
/// Three residual MLP blocks with exits after the first and the last, trained on the joint
/// loss, then run with an exit threshold calibrated for 90 % agreement with full depth:
///
/// ```
/// use elide_autodiff::{ParamStore, Var};
/// use elide_cond::{Confidence, EarlyExit, ExitRule, MlpBlock, Residual};
/// use elide_kernels::gemm::Activation;
/// use elide_tensor::{Rng, Tensor};
///
/// let mut rng = Rng::seed(0);
/// let mut store = ParamStore::new();
/// let blocks = (0..3)
///     .map(|l| Ok(Residual(MlpBlock::new(&mut store.scope(&format!("b{l}")), 8, 16, Activation::Gelu, &mut rng)?)))
///     .collect::<elide_cond::Result<Vec<_>>>()?;
/// let stack = EarlyExit::new(&mut store.scope("exits"), blocks, &[1, 3], 4, &mut rng)?;
/// let x = Var::constant(Tensor::randn(&[32, 8], &mut rng));
/// let targets: Vec<u32> = (0..32).map(|i| i % 4).collect();
/// let loss = stack.loss(&x, &targets, &[0.5, 1.0])?;
/// assert!(loss.total.backward()?.len() > 0);
///
/// let calibration = stack.calibrate(&x, Confidence::MaxProb, 0.9)?;
/// let run = stack.infer(&x, &ExitRule::new(Confidence::MaxProb, calibration.threshold))?;
/// assert!(run.mean_depth() <= 3.0);
/// # Ok::<(), elide_cond::Error>(())
/// ```
pub struct EarlyExit<B> {
    blocks: Vec<B>,
    heads: Vec<ExitHead>,
    classes: usize,
}

/// The joint training loss and its parts.
pub struct ExitLoss {
    /// `Σ_e w_e · CE_e`, differentiable.
    pub total: Var,
    /// Each exit's cross-entropy (for logging).
    pub per_exit: Vec<f32>,
}

/// What an early-exit inference pass produced.
#[derive(Clone, Debug)]
pub struct ExitInference {
    /// `[rows, classes]`: each row's logits from the head it exited at.
    pub logits: Tensor,
    /// Each row's exit (index into the heads).
    pub exit: Vec<usize>,
    /// Rows that ran through each block (the batch after compaction).
    pub rows_per_block: Vec<usize>,
    /// FLOPs run: every block on its active rows, every head on the rows it saw.
    pub flops: f64,
}

impl ExitInference {
    /// Each row's predicted class (argmax of its logits, ties to the lower class).
    pub fn predictions(&self) -> Vec<u32> {
        argmax_rows(&self.logits.to_vec(), self.logits.shape()[1])
    }

    /// Mean number of blocks a row went through.
    pub fn mean_depth(&self) -> f64 {
        let rows = self.exit.len().max(1);
        self.rows_per_block.iter().sum::<usize>() as f64 / rows as f64
    }
}

/// What [`EarlyExit::calibrate`] chose.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    /// The threshold (shared by every early head).
    pub threshold: f32,
    /// Agreement with the full-depth prediction on the held-out rows at that threshold.
    pub agreement: f64,
    /// Fraction of rows leaving at each exit.
    pub exit_fraction: Vec<f64>,
    /// Mean number of blocks a row goes through.
    pub mean_depth: f64,
}

/// Argmax of each row (ties to the lower index).
fn argmax_rows(logits: &[f32], classes: usize) -> Vec<u32> {
    logits
        .chunks(classes)
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }) as u32)
        .collect()
}

impl<B: Block> EarlyExit<B> {
    /// A stack of `blocks` with a classifier head over `classes` after each depth in
    /// `exit_after` (1-based block counts, increasing, the last equal to the number of blocks,
    /// so every row gets an answer). Heads are registered as `<scope>.exit<e>.{weight,bias}`,
    /// weights `N(0, 1/d)`, zero biases.
    ///
    /// # Errors
    /// [`Error::Argument`] for no blocks, blocks of different widths, fewer than 2 classes, or
    /// exit depths that are not increasing, not in `1..=blocks`, or do not end at the last block;
    /// a registration error if a name is taken.
    pub fn new(
        scope: &mut Scope<'_>,
        blocks: Vec<B>,
        exit_after: &[usize],
        classes: usize,
        rng: &mut Rng,
    ) -> Result<EarlyExit<B>> {
        const OP: &str = "EarlyExit::new";
        let n = blocks.len();
        let d = blocks.first().ok_or_else(|| Error::argument(OP, "needs at least one block"))?.d_model();
        if let Some(i) = blocks.iter().position(|b| b.d_model() != d) {
            return Err(Error::argument(OP, format!("block {i} has width {}, block 0 has {d}", blocks[i].d_model())));
        }
        if classes < 2 {
            return Err(Error::argument(OP, format!("{classes} classes: a classifier needs at least 2")));
        }
        let increasing = exit_after.windows(2).all(|w| w[0] < w[1]);
        if exit_after.first().is_none_or(|&e| e == 0) || !increasing || exit_after.last() != Some(&n) {
            return Err(Error::argument(
                OP,
                format!("exit depths {exit_after:?} must increase within 1..={n} and end at the last block ({n})"),
            ));
        }
        let mut heads = Vec::with_capacity(exit_after.len());
        for (e, &after) in exit_after.iter().enumerate() {
            let mut s = scope.scope(&format!("exit{e}"));
            let weight = s.param("weight", init::normal(&[d, classes], (1.0 / d as f32).sqrt(), rng)?)?;
            let bias = s.param("bias", Tensor::zeros(&[classes]))?;
            heads.push(ExitHead { after, weight, bias });
        }
        Ok(EarlyExit { blocks, heads, classes })
    }

    /// The blocks.
    pub fn blocks(&self) -> &[B] {
        &self.blocks
    }

    /// The depth (blocks run) of each exit.
    pub fn exit_depths(&self) -> Vec<usize> {
        self.heads.iter().map(|h| h.after).collect()
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The heads' parameters, `(weight [d, classes], bias [classes])` per exit.
    pub fn head_params(&self) -> Vec<(&Param, &Param)> {
        self.heads.iter().map(|h| (&h.weight, &h.bias)).collect()
    }

    fn check_input(&self, op: &'static str, x: &Var) -> Result<()> {
        let d = self.blocks[0].d_model();
        if x.shape().len() != 2 || x.shape()[1] != d {
            return Err(Error::shape(op, format!("x must be [rows, {d}], got {:?}", x.shape())));
        }
        Ok(())
    }

    /// Every row through every block: `[rows, classes]` logits at each exit (training, and the
    /// full-depth reference of calibration). Differentiable.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[rows, d]`; the blocks' errors.
    pub fn exit_logits(&self, x: &Var) -> Result<Vec<Var>> {
        self.check_input("EarlyExit::exit_logits", x)?;
        let mut h = x.clone();
        let mut out = Vec::with_capacity(self.heads.len());
        let mut heads = self.heads.iter().peekable();
        for (l, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(head) = heads.next_if(|head| head.after == l + 1) {
                out.push(head.logits(&h)?);
            }
        }
        Ok(out)
    }

    /// The joint loss `Σ_e w_e · CE(head_e(x), targets)` (BranchyNet).
    ///
    /// # Errors
    /// [`Error::Argument`] unless there is one weight per exit, each finite and `≥ 0`; the
    /// errors of [`EarlyExit::exit_logits`] and of the cross-entropy (targets out of range,
    /// their count not the number of rows, no rows).
    pub fn loss(&self, x: &Var, targets: &[u32], weights: &[f32]) -> Result<ExitLoss> {
        if weights.len() != self.heads.len() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(Error::argument(
                "EarlyExit::loss",
                format!("{weights:?}: need one finite weight >= 0 per exit ({})", self.heads.len()),
            ));
        }
        let mut total: Option<Var> = None;
        let mut per_exit = Vec::with_capacity(weights.len());
        for (logits, &w) in self.exit_logits(x)?.iter().zip(weights) {
            let ce = logits.cross_entropy(targets)?;
            per_exit.push(ce.value().item()?);
            let term = ce.mul_scalar(w);
            total = Some(match total {
                Some(t) => t.add(&term)?,
                None => term,
            });
        }
        Ok(ExitLoss { total: total.expect("at least one exit"), per_exit })
    }

    /// Inference with early exits: after each head, the rows whose confidence passes `rule`
    /// leave with that head's logits, and the rest are gathered into a compact batch for the
    /// next blocks. The last head takes every row still active. Runs without recording.
    ///
    /// # Errors
    /// [`Error::Argument`] for a threshold outside `[0, 1]` or a threshold count that is neither
    /// 1 nor the number of early heads, or a head logit that is NaN or infinite (naming the exit,
    /// the row and the class); [`Error::Shape`] if `x` is not `[rows, d]`; the blocks' errors.
    pub fn infer(&self, x: &Var, rule: &ExitRule) -> Result<ExitInference> {
        const OP: &str = "EarlyExit::infer";
        self.check_input(OP, x)?;
        let early = self.heads.len() - 1;
        if rule.thresholds.len() != 1 && rule.thresholds.len() != early {
            return Err(Error::argument(
                OP,
                format!("{} thresholds: give 1, or one per early exit ({early})", rule.thresholds.len()),
            ));
        }
        if let Some(t) = rule.thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(Error::argument(OP, format!("threshold {t} must be in [0, 1]")));
        }
        no_grad(|| self.infer_compacting(x.detach(), rule))
    }

    fn infer_compacting(&self, x: Var, rule: &ExitRule) -> Result<ExitInference> {
        let (rows, c) = (x.shape()[0], self.classes);
        let d = self.blocks[0].d_model();
        let mut out = vec![0.0f32; rows * c];
        let mut exit = vec![0usize; rows];
        let mut rows_per_block = Vec::with_capacity(self.blocks.len());
        let mut flops = 0.0;
        // `active[i]` is the original row of row `i` of the current batch `h`.
        let mut active: Vec<u32> = (0..rows as u32).collect();
        let mut h = x;
        let mut heads = self.heads.iter().enumerate().peekable();
        for (l, block) in self.blocks.iter().enumerate() {
            if active.is_empty() {
                rows_per_block.push(0);
                continue;
            }
            h = block.forward(&h)?;
            flops += block.forward_flops(active.len());
            rows_per_block.push(active.len());
            let Some((e, head)) = heads.next_if(|(_, head)| head.after == l + 1) else { continue };
            let logits = head.logits(&h)?.value().to_vec();
            flops += 2.0 * (active.len() * d * c) as f64;
            if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
                let (row, class, value) = (active[i / c], i % c, logits[i]);
                return Err(Error::argument(
                    "EarlyExit::infer",
                    format!("NaN or infinite logit at exit {e} in row {row} (class {class} is {value})"),
                ));
            }
            let last = e == self.heads.len() - 1;
            let mut keep = Vec::with_capacity(active.len());
            for (i, row) in logits.chunks(c).enumerate() {
                if last || rule.confidence.passes(rule.confidence.of(row), rule.threshold(e)) {
                    let orig = active[i] as usize;
                    out[orig * c..(orig + 1) * c].copy_from_slice(row);
                    exit[orig] = e;
                } else {
                    keep.push(i as u32);
                }
            }
            if keep.len() < active.len() && !keep.is_empty() {
                // Batch compaction: the survivors, in order, become the next blocks' batch.
                let plan = DispatchPlan::new(&keep, &vec![0; keep.len()], active.len(), 1, Capacity::Dropless)?;
                h = gather(&h, &Arc::new(plan))?;
            }
            active = keep.iter().map(|&i| active[i as usize]).collect();
        }
        Ok(ExitInference { logits: Tensor::from_vec(out, &[rows, c])?, exit, rows_per_block, flops })
    }

    /// Picks the most permissive shared threshold for `confidence` whose early-exit predictions
    /// agree with the full-depth prediction (the last head's argmax) on at least
    /// `target_agreement` of the held-out rows `x`.
    ///
    /// Candidates are the confidences observed at the early heads (between two of them the
    /// exits do not change), visited from the strictest (`1` for max-prob, `0` for entropy)
    /// towards the most permissive; the search stops at the first that misses the target
    /// (fixed-sequence order, as Learn-then-Test), so every stricter candidate meets it too.
    /// One full-depth pass and a sort: `O(rows · exits · log)` beyond the pass.
    ///
    /// # Errors
    /// [`Error::Argument`] for a target outside `(0, 1]`, no rows, or a target not met even at the
    /// strictest threshold; the errors of [`EarlyExit::exit_logits`].
    pub fn calibrate(&self, x: &Var, confidence: Confidence, target_agreement: f64) -> Result<Calibration> {
        const OP: &str = "EarlyExit::calibrate";
        if !(target_agreement > 0.0 && target_agreement <= 1.0) {
            return Err(Error::argument(OP, format!("target agreement {target_agreement} must be in (0, 1]")));
        }
        let rows = x.shape().first().copied().unwrap_or(0);
        if rows == 0 {
            return Err(Error::argument(OP, "needs at least one held-out row"));
        }
        let logits = no_grad(|| self.exit_logits(&x.detach()))?;
        let c = self.classes;
        let heads: Vec<Vec<f32>> = logits.iter().map(|l| l.value().to_vec()).collect();
        let preds: Vec<Vec<u32>> = heads.iter().map(|l| argmax_rows(l, c)).collect();
        let last = heads.len() - 1;
        let conf: Vec<Vec<f32>> =
            heads[..last].iter().map(|l| l.chunks(c).map(|row| confidence.of(row)).collect()).collect();
        let depths = self.exit_depths();

        // Each row's exit as the threshold loosens changes where its key beats every earlier
        // head's: an event (key, row, exit).
        let mut events = Vec::new();
        for r in 0..rows {
            let mut best = f32::NEG_INFINITY;
            for (e, conf) in conf.iter().enumerate() {
                let k = confidence.key(conf[r]);
                if k > best {
                    events.push((k, r, e));
                    best = k;
                }
            }
        }
        events.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut exit = vec![last; rows];
        let mut agree = rows; // at "never exit early" every row agrees with itself
        let agrees = |e: usize, r: usize| preds[e][r] == preds[last][r];
        let apply = |exit: &mut [usize], agree: &mut usize, r: usize, e: usize| {
            *agree -= agrees(exit[r], r) as usize;
            exit[r] = e;
            *agree += agrees(e, r) as usize;
        };
        let summary = |threshold: f32, exit: &[usize], agree: usize| {
            let mut count = vec![0usize; heads.len()];
            exit.iter().for_each(|&e| count[e] += 1);
            let fraction = count.iter().map(|&n| n as f64 / rows as f64).collect();
            let mean_depth = exit.iter().map(|&e| depths[e] as f64).sum::<f64>() / rows as f64;
            Calibration { threshold, agreement: agree as f64 / rows as f64, exit_fraction: fraction, mean_depth }
        };
        // The strictest threshold first: rows whose confidence is already at the extreme exit.
        let strictest = confidence.strictest();
        let mut i = 0;
        while i < events.len() && events[i].0 >= confidence.key(strictest) {
            apply(&mut exit, &mut agree, events[i].1, events[i].2);
            i += 1;
        }
        let mut chosen = summary(strictest, &exit, agree);
        if chosen.agreement < target_agreement {
            return Err(Error::argument(
                OP,
                format!(
                    "no threshold reaches agreement {target_agreement}: at the strictest ({strictest}) it is {}",
                    chosen.agreement
                ),
            ));
        }
        while i < events.len() {
            // Every event at this key moves together (a threshold equal to it passes them all).
            let key = events[i].0;
            while i < events.len() && events[i].0 == key {
                apply(&mut exit, &mut agree, events[i].1, events[i].2);
                i += 1;
            }
            if (agree as f64 / rows as f64) < target_agreement {
                break;
            }
            chosen = summary(confidence.key(key), &exit, agree);
        }
        Ok(chosen)
    }
}

#[cfg(test)]
mod tests;
