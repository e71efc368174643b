//! Unit-sparse feed-forward (Terraformer, Jaszczur et al., arXiv 2111.12763; trax `SparseFF`):
//! a ReLU feed-forward layer whose `d_ff` hidden units come in blocks of `N`, of which a
//! low-rank controller lets exactly one per block run for each token.
//!
//! ```text
//! logits  = (x·C1)·C2                        C1 [d_model, rank], C2 [rank, d_ff]: the controller
//! choice  = argmax over each block of N      (Gumbel-perturbed in training)
//! h       = ReLU(x·W1ᵀ + b1) ⊙ mask          W1 [d_ff, d_model] unit-major, b1 [d_ff]
//! y       = h·W2 + b2                        W2 [d_ff, d_model] unit-major, b2 [d_model]
//! ```
//!
//! **Training** ([`SparseFfMode::Train`]) follows trax: Gumbel noise scaled by the temperature
//! picks a unit per block (`argmax(logits + τ·g)`, `g = −ln(−ln u)`); the mask is the one-hot
//! of that pick with a straight-through gradient into the block's softmax (arXiv 1308.3432,
//! the trick of arXiv 1801.09797 §2.1), except on a fraction of steps (`soft_fraction`, 70 % in
//! trax) where it is the softmax itself. Like the paper, the training forward runs the dense
//! products and masks: the straight-through gradient of every unit's mask entry needs that
//! unit's `ReLU(z)`, so training is not faster than a dense layer.
//!
//! **Inference** ([`SparseFfMode::Eval`] with gradients off) takes the argmax per block and
//! computes only the chosen units: the unit-major weights make each chosen unit one contiguous
//! row of `W1` and of `W2`. Tokens are grouped by unit with one counting sort (the
//! [`DispatchPlan`](crate::DispatchPlan)'s, listing only the chosen units: a plan over all
//! `d_ff` destinations walks and allocates per unit on every call, measured at 12 µs of a
//! ~100 µs layer at batch 1), and the two unit-row kernels of `elide_kernels::unit_rows` read
//! each chosen row once per batch: at batch 1 a gathered GEMV over `1/N` of the weights, at
//! batch `T` one read of each distinct chosen unit for all the tokens that chose it. Each output element sums its
//! units in a fixed order, so results are bit-identical for any number of threads. With
//! gradients on, `Eval` runs the training-mode hard forward on the argmax choices instead
//! (dense and masked, straight-through), which equals the sparse path up to rounding.
//!
//! ```
//! use elide_autodiff::{no_grad, ParamStore, Var};
//! use elide_cond::{SparseFeedForward, SparseFfConfig, SparseFfMode};
//! use elide_tensor::{pool, Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let config = SparseFfConfig { block_size: 4, rank: 8, ..SparseFfConfig::new(16, 64) };
//! let ff = SparseFeedForward::new(&mut store.scope("blocks.0.ff"), config, &mut rng)?;
//! let x = Var::constant(Tensor::randn(&[3, 16], &mut rng));
//!
//! // A training step: Gumbel noise, straight-through (or soft) mask, dense compute.
//! let out = ff.forward(&x, SparseFfMode::Train(&mut rng))?;
//! let grads = out.output.square().mean_all().backward()?;
//! assert!(store.iter().all(|p| grads.get(p).is_some()));
//!
//! // Inference: one unit per block of 4, only 16 of the 64 units computed per token.
//! let out = no_grad(|| ff.forward(&x, SparseFfMode::Eval))?;
//! assert_eq!(out.choices.len(), 3 * 16);
//! assert!(out.choices.iter().enumerate().all(|(i, &u)| u as usize / 4 == i % 16));
//! # Ok::<(), elide_cond::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::estimator::{straight_through_one_hot, StraightThroughGrad};
use elide_autodiff::init::{self, WeightLayout};
use elide_autodiff::{is_recording, Param, Scope, Var};
use elide_kernels::gemm::{Activation, Gemm, MatMut, MatRef};
use elide_kernels::unit_rows::{accumulate_unit_rows, unit_row_dots, UnitGroups};
use elide_kernels::{Isa, KernelError, Par};
use elide_tensor::{pool, Rng, Tensor};

const OP: &str = "SparseFeedForward";

/// Sizes and training settings of a [`SparseFeedForward`] layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SparseFfConfig {
    /// Width of the input and output.
    pub d_model: usize,
    /// Hidden units, a multiple of `block_size`.
    pub d_ff: usize,
    /// Units per block, `N`: one of them runs per token (trax default 32).
    pub block_size: usize,
    /// Inner width of the low-rank controller (the paper's 64).
    pub rank: usize,
    /// Scale of the Gumbel noise added to the controller logits in training (trax: 0.1);
    /// finite and `>= 0` (0: the argmax, as at inference).
    pub temperature: f32,
    /// Fraction of training steps that use the soft (softmax) mask instead of the
    /// straight-through one-hot (trax: 0.7); in `[0, 1]`.
    pub soft_fraction: f32,
}

impl SparseFfConfig {
    /// The trax/paper defaults (blocks of 32, rank 64, temperature 0.1, 70 % soft steps) for
    /// the given widths.
    pub fn new(d_model: usize, d_ff: usize) -> SparseFfConfig {
        SparseFfConfig { d_model, d_ff, block_size: 32, rank: 64, temperature: 0.1, soft_fraction: 0.7 }
    }

    /// Number of blocks, `d_ff / block_size`: the units each token runs.
    pub fn num_blocks(&self) -> usize {
        self.d_ff / self.block_size.max(1)
    }

    fn validate(&self) -> Result<()> {
        let SparseFfConfig { d_model, d_ff, block_size, rank, temperature, soft_fraction } = *self;
        if d_model == 0 || d_ff == 0 || block_size == 0 || rank == 0 {
            return Err(Error::argument(
                OP,
                format!(
                    "d_model {d_model}, d_ff {d_ff}, block size {block_size} and rank {rank}: every size must be > 0"
                ),
            ));
        }
        if d_ff % block_size != 0 {
            return Err(Error::argument(
                OP,
                format!("the block size {block_size} does not divide d_ff {d_ff} (blocks of N units)"),
            ));
        }
        if !(temperature.is_finite() && temperature >= 0.0) {
            return Err(Error::argument(OP, format!("temperature {temperature} must be finite and >= 0")));
        }
        if !(0.0..=1.0).contains(&soft_fraction) {
            return Err(Error::argument(OP, format!("soft fraction {soft_fraction} must be in [0, 1]")));
        }
        Ok(())
    }
}

/// How a forward pass picks its units.
#[derive(Debug)]
pub enum SparseFfMode<'a> {
    /// Training: the soft-or-hard draw and the Gumbel noise come from this generator (seeded:
    /// the same seed gives the same step). Always dense and masked.
    Train(&'a mut Rng),
    /// Evaluation: the argmax per block, no noise. With gradients off, only the chosen units
    /// are computed.
    Eval,
}

/// What a forward pass produced.
#[derive(Clone, Debug)]
pub struct SparseFfOutput {
    /// `[T, d_model]`.
    pub output: Var,
    /// `[T · d_ff/N]`, token-major: the unit (index in `0..d_ff`) each token ran in each block.
    pub choices: Vec<u32>,
    /// Whether this pass used the soft (softmax) mask: a training step drawn soft.
    pub soft_mask: bool,
    /// FLOPs executed (2 per multiply-add), controller included.
    pub flops: f64,
    /// Bytes of weights read (controller included): every weight for the dense training
    /// forward, the controller plus the chosen units' rows and biases at inference.
    pub weight_bytes: f64,
}

/// The layer's weights as vars (the parameters', or test leaves).
struct Weights {
    c1: Var,
    c2: Var,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
}

/// A unit-sparse feed-forward layer (see the module docs).
pub struct SparseFeedForward {
    config: SparseFfConfig,
    /// `[d_model, rank]`, the controller's down-projection.
    c1: Param,
    /// `[rank, d_ff]`, the controller's up-projection to one logit per unit.
    c2: Param,
    /// `[d_ff, d_model]`, unit-major: row `u` is unit `u`'s input weights.
    w1: Param,
    /// `[d_ff]`.
    b1: Param,
    /// `[d_ff, d_model]`, unit-major: row `u` is unit `u`'s output weights.
    w2: Param,
    /// `[d_model]`.
    b2: Param,
}

impl SparseFeedForward {
    /// Registers the weights under `scope` (`c1`, `c2`, `w1`, `b1`, `w2`, `b2`), Glorot-uniform
    /// matrices as in trax (fans from each weight's layout: `W1` is `OutIn`, one row per unit
    /// read as `x·W1ᵀ`; `W2` is `InOut`, `h·W2`) and zero biases.
    ///
    /// # Errors
    /// [`Error::Argument`] for a size of 0, a block size that does not divide `d_ff`, a
    /// temperature that is negative or not finite, or a soft fraction outside `[0, 1]`; or if a
    /// name is already registered.
    pub fn new(scope: &mut Scope<'_>, config: SparseFfConfig, rng: &mut Rng) -> Result<SparseFeedForward> {
        config.validate()?;
        let SparseFfConfig { d_model: d, d_ff: f, rank: r, .. } = config;
        Ok(SparseFeedForward {
            config,
            c1: scope.param("c1", init::xavier_uniform(&[d, r], WeightLayout::InOut, rng)?)?,
            c2: scope.param("c2", init::xavier_uniform(&[r, f], WeightLayout::InOut, rng)?)?,
            w1: scope.param("w1", init::xavier_uniform(&[f, d], WeightLayout::OutIn, rng)?)?,
            b1: scope.param("b1", Tensor::zeros(&[f]))?,
            w2: scope.param("w2", init::xavier_uniform(&[f, d], WeightLayout::InOut, rng)?)?,
            b2: scope.param("b2", Tensor::zeros(&[d]))?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SparseFfConfig {
        &self.config
    }

    /// The parameters: `c1`, `c2`, `w1`, `b1`, `w2`, `b2`.
    pub fn params(&self) -> [&Param; 6] {
        [&self.c1, &self.c2, &self.w1, &self.b1, &self.w2, &self.b2]
    }

    /// `x: [T, d_model]` through the layer (see the module docs for what each mode computes).
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[T, d_model]`; [`Error::Argument`] if `x` holds a NaN or
    /// infinite value, or the controller's logits do.
    pub fn forward(&self, x: &Var, mode: SparseFfMode<'_>) -> Result<SparseFfOutput> {
        let cfg = &self.config;
        if x.shape().len() != 2 || x.shape()[1] != cfg.d_model {
            return Err(Error::shape(OP, format!("x must be [T, {}], got {:?}", cfg.d_model, x.shape())));
        }
        let xv = x.value().contiguous();
        let xs = xv.as_slice().expect("contiguous");
        if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
            let (row, col) = (i / cfg.d_model, i % cfg.d_model);
            return Err(Error::argument(OP, format!("x[{row}, {col}] is {}: the input must be finite", xs[i])));
        }
        match mode {
            SparseFfMode::Eval if !is_recording() => self.infer(xs, x.shape()[0]),
            mode => {
                let w = Weights {
                    c1: self.c1.var(),
                    c2: self.c2.var(),
                    w1: self.w1.var(),
                    b1: self.b1.var(),
                    w2: self.w2.var(),
                    b2: self.b2.var(),
                };
                let draw = match mode {
                    SparseFfMode::Train(rng) => MaskDraw::Sample(rng),
                    SparseFfMode::Eval => MaskDraw::Argmax,
                };
                dense_masked(x, &w, cfg, draw)
            }
        }
    }

    /// Inference on the chosen units only: controller GEMMs, argmax per block, the tokens
    /// grouped by unit, then the two unit-row kernels.
    fn infer(&self, x: &[f32], t: usize) -> Result<SparseFfOutput> {
        let SparseFfConfig { d_model: d, d_ff: f, block_size: n, rank: r, .. } = self.config;
        let nb = f / n;
        let kernel = |e: KernelError| Error::Tensor(e.into());
        let (c1, c2, w1, b1, w2, b2) = (
            self.c1.value().contiguous(),
            self.c2.value().contiguous(),
            self.w1.value().contiguous(),
            self.b1.value().contiguous(),
            self.w2.value().contiguous(),
            self.b2.value().contiguous(),
        );
        let (c1, c2, w1, b1, w2, b2) = (contig(&c1), contig(&c2), contig(&w1), contig(&b1), contig(&w2), contig(&b2));
        let isa = Isa::try_active().map_err(kernel)?;
        let xm = MatRef::row_major(x, t, d).map_err(kernel)?;
        // The controller: two small GEMMs (GEMVs at batch 1).
        let mut low = pool::take(t * r); // pooled: every element is written by the GEMM
        Gemm::default()
            .run(MatMut::row_major(&mut low, t, r).map_err(kernel)?, xm, MatRef::row_major(c1, d, r).map_err(kernel)?)
            .map_err(kernel)?;
        let mut logits = pool::take(t * f);
        Gemm::default()
            .run(
                MatMut::row_major(&mut logits, t, f).map_err(kernel)?,
                MatRef::row_major(&low, t, r).map_err(kernel)?,
                MatRef::row_major(c2, r, f).map_err(kernel)?,
            )
            .map_err(kernel)?;
        let pick = pick_units(&logits, n).ok_or_else(|| nonfinite_logits(&logits, f))?;
        pool::give(low);
        pool::give(logits);
        let choices: Vec<u32> = pick.iter().enumerate().map(|(i, &c)| ((i % nb) * n) as u32 + c).collect();
        let (units, offsets, tokens) = group_by_unit(&choices, t, nb, f);
        let groups = UnitGroups::new(&units, &offsets, &tokens, f, t).map_err(kernel)?;
        let mut h = pool::take(tokens.len()); // one dot product per slot
        let w1m = MatRef::row_major(w1, f, d).map_err(kernel)?;
        unit_row_dots(isa, &groups, xm, w1m, Some(b1), Activation::Relu, &mut h, Par::Rayon).map_err(kernel)?;
        let mut y = pool::take(t * d);
        y.chunks_mut(d).for_each(|row| row.copy_from_slice(b2));
        let w2m = MatRef::row_major(w2, f, d).map_err(kernel)?;
        accumulate_unit_rows(isa, &groups, &h, w2m, MatMut::row_major(&mut y, t, d).map_err(kernel)?, Par::Rayon)
            .map_err(kernel)?;
        pool::give(h);
        let units_read = units.len();
        Ok(SparseFfOutput {
            output: Var::constant(Tensor::from_vec(y, &[t, d])?),
            choices,
            soft_mask: false,
            flops: controller_flops(&self.config, t) + 4.0 * (t * nb * d) as f64,
            weight_bytes: 4.0 * ((d * r + r * f) + units_read * (2 * d + 1) + d) as f64,
        })
    }
}

/// The argmax of each block of `n` logits (ties to the lower unit), or `None` if a logit is NaN
/// or infinite. One pass per block, blocks split over threads in fixed runs (each block's
/// result is independent of the split).
fn pick_units(logits: &[f32], n: usize) -> Option<Vec<u32>> {
    use rayon::prelude::*;
    const BLOCKS_PER_TASK: usize = 1024;
    let mut picks = vec![0u32; logits.len() / n];
    let run = |(out, rows): (&mut [u32], &[f32])| -> bool {
        let mut nonfinite = false;
        for (o, row) in out.iter_mut().zip(rows.chunks(n)) {
            let (mut best, mut top) = (0, row[0]);
            for (j, &v) in row.iter().enumerate() {
                // Exponent all ones: infinite or NaN (no short-circuit, so the loop stays simple).
                nonfinite |= v.to_bits() & 0x7f80_0000 == 0x7f80_0000;
                if v > top {
                    (best, top) = (j, v);
                }
            }
            *o = best as u32;
        }
        nonfinite
    };
    let bad = if picks.len() > BLOCKS_PER_TASK {
        picks
            .par_chunks_mut(BLOCKS_PER_TASK)
            .zip(logits.par_chunks(BLOCKS_PER_TASK * n))
            .map(run)
            .reduce(|| false, |a, b| a | b)
    } else {
        run((&mut picks, logits))
    };
    (!bad).then_some(picks)
}

/// The `(token, unit)` choices (token-major, `nb` per token) grouped by unit with one counting
/// sort: the chosen units ascending, each unit's slot offsets, and the token of each slot
/// (ascending within a unit). `O(T·nb + d_ff)`; at batch 1 the choices are already in unit
/// order (one per block), so no sort at all.
fn group_by_unit(choices: &[u32], t: usize, nb: usize, d_ff: usize) -> (Vec<u32>, Vec<usize>, Vec<u32>) {
    if t == 1 {
        return (choices.to_vec(), (0..=nb).collect(), vec![0; nb]);
    }
    let mut next = vec![0usize; d_ff];
    for &u in choices {
        next[u as usize] += 1;
    }
    let (mut units, mut offsets) = (Vec::new(), vec![0]);
    let mut running = 0;
    for (u, slot) in next.iter_mut().enumerate() {
        if *slot > 0 {
            units.push(u as u32);
            let count = *slot;
            *slot = running;
            running += count;
            offsets.push(running);
        }
    }
    let mut tokens = vec![0u32; choices.len()];
    for (i, &u) in choices.iter().enumerate() {
        tokens[next[u as usize]] = (i / nb) as u32;
        next[u as usize] += 1;
    }
    (units, offsets, tokens)
}

fn contig(t: &Tensor) -> &[f32] {
    t.as_slice().expect("made contiguous")
}

/// FLOPs of the controller over `t` tokens.
fn controller_flops(cfg: &SparseFfConfig, t: usize) -> f64 {
    2.0 * (t * (cfg.d_model * cfg.rank + cfg.rank * cfg.d_ff)) as f64
}

/// The error for logits holding a NaN or infinity (a diverged controller).
fn nonfinite_logits(logits: &[f32], d_ff: usize) -> Error {
    let i = logits.iter().position(|v| !v.is_finite()).unwrap_or(0);
    Error::argument(
        OP,
        format!(
            "the controller logit of token {} unit {} is {}: the controller has diverged",
            i / d_ff,
            i % d_ff,
            logits.get(i).copied().unwrap_or(f32::NAN)
        ),
    )
}

/// Where a dense-and-masked forward gets its choices.
enum MaskDraw<'a> {
    /// The argmax per block, straight-through mask (evaluation with gradients on).
    Argmax,
    /// A training step: the soft-or-hard draw and Gumbel noise from this generator.
    Sample(&'a mut Rng),
}

/// The dense-and-masked forward (training, and evaluation with gradients on), on explicit
/// weight vars: `y = (ReLU(x·W1ᵀ + b1) ⊙ mask)·W2 + b2`, differentiable in every input.
fn dense_masked(x: &Var, w: &Weights, cfg: &SparseFfConfig, draw: MaskDraw<'_>) -> Result<SparseFfOutput> {
    let (t, d, f, n) = (x.shape()[0], cfg.d_model, cfg.d_ff, cfg.block_size);
    let logits = x.matmul(&w.c1)?.matmul(&w.c2)?;
    if let Some(bad) = logits.value().as_slice().filter(|l| l.iter().any(|v| !v.is_finite())) {
        return Err(nonfinite_logits(bad, f));
    }
    let blocks = logits.reshape(&[t * cfg.num_blocks(), n])?;
    let mask = controller_mask(&blocks, cfg, draw)?;
    let z = x.matmul(&w.w1.transpose(0, 1)?)?.add(&w.b1)?;
    let h = z.relu().mul(&mask.mask.reshape(&[t, f])?)?;
    let output = h.matmul(&w.w2)?.add(&w.b2)?;
    let all = |v: &Var| v.value().numel();
    Ok(SparseFfOutput {
        output,
        choices: mask.choices,
        soft_mask: mask.soft,
        flops: controller_flops(cfg, t) + 4.0 * (t * f * d) as f64,
        weight_bytes: 4.0 * [&w.c1, &w.c2, &w.w1, &w.b1, &w.w2, &w.b2].into_iter().map(all).sum::<usize>() as f64,
    })
}

/// A controller mask and the units it picked.
struct ControllerMask {
    /// `[T·blocks, N]`: a one-hot row per block (straight-through) or the softmax.
    mask: Var,
    /// `[T·blocks]`: the picked unit, as an index in `0..d_ff`.
    choices: Vec<u32>,
    soft: bool,
}

/// The controller's sampling, all in one place: from `[T·blocks, N]` logits, the picked unit per
/// block and the mask the layer multiplies by.
///
/// - `Argmax`: the shared [`straight_through_one_hot`] with the softmax gradient (ties to the
///   lower unit).
/// - `Sample`: first one uniform draw decides the step: soft when below `soft_fraction`; then
///   `T·d_ff` uniforms `u` in `[1e-6, 1 − 1e-6]` give Gumbel noise `g = −ln(−ln u)`, token-major,
///   and the pick is `argmax(logits + τ·g)` per block. A soft step's mask is the softmax; a hard
///   step's the one-hot of the pick with its gradient sent into the softmax of the *clean*
///   logits (trax's `one_hot + p − stop_gradient(p)`).
///
/// The sampled step keeps trax's form rather than the shared [`GumbelSoftmax`](crate::GumbelSoftmax),
/// whose hard output back-propagates through `softmax((ℓ + g)/τ)` (the noisy relaxation) and
/// scales the logits, not the noise, by the temperature. Swapping it in changes the estimator
/// (and the draw order the seeded tests pin), so it is left as a decision for the layer's users.
fn controller_mask(blocks: &Var, cfg: &SparseFfConfig, draw: MaskDraw<'_>) -> Result<ControllerMask> {
    let (rows, n) = (blocks.shape()[0], cfg.block_size);
    let nb = cfg.num_blocks();
    let units = |picks: &[u32]| picks.iter().enumerate().map(|(i, &c)| ((i % nb) * n) as u32 + c).collect();
    let rng = match draw {
        MaskDraw::Argmax => {
            let choice = straight_through_one_hot(blocks, StraightThroughGrad::Soft)?;
            return Ok(ControllerMask { choices: units(choice.index.as_slice()), mask: choice.value, soft: false });
        }
        MaskDraw::Sample(rng) => rng,
    };
    let soft = rng.next_f32() < cfg.soft_fraction;
    let tau = cfg.temperature as f64;
    let noisy: Vec<f32> = blocks
        .value()
        .to_vec()
        .iter()
        .map(|&l| {
            let u = 1e-6 + (1.0 - 2e-6) * rng.next_f64();
            (l as f64 + tau * -(-u.ln()).ln()) as f32
        })
        .collect();
    let picks: Vec<u32> = noisy
        .chunks(n)
        .map(|row| {
            // First maximum: ties to the lower unit (the logits were checked finite).
            let mut best = 0;
            for (j, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = j;
                }
            }
            best as u32
        })
        .collect();
    let probs = blocks.softmax()?;
    let mask = if soft {
        probs
    } else {
        let mut one_hot = vec![0.0f32; rows * n];
        for (i, &c) in picks.iter().enumerate() {
            one_hot[i * n + c as usize] = 1.0;
        }
        straight_through(Tensor::from_vec(one_hot, &[rows, n])?, &probs)
    };
    Ok(ControllerMask { mask, choices: units(&picks), soft })
}

/// `hard` in the forward pass, the identity into `soft` in the backward pass (the
/// straight-through estimator, arXiv 1308.3432): `∂L/∂soft = ∂L/∂mask`.
fn straight_through(hard: Tensor, soft: &Var) -> Var {
    Var::from_op("straight_through", hard, &[soft], |g| Ok(vec![Some(g.clone())]))
}

#[cfg(test)]
mod tests;
