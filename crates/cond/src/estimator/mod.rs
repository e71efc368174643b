//! Estimators for discrete decisions: how a gradient crosses a hard choice (a gate that is on or
//! off, one unit out of a block, one branch out of several).
//!
//! A discrete choice `z` made from scores `ℓ` has no useful derivative (it is piecewise
//! constant), yet training needs `∇_ℓ` of a loss computed after it. Three families, each an
//! autodiff op on [`Var`](elide_autodiff::Var) here:
//!
//! - **Straight-through** (Bengio, Léonard, Courville, arXiv 1308.3432;
//!   [`straight_through_threshold`], [`straight_through_one_hot`], [`bernoulli_straight_through`]):
//!   the forward pass is the hard choice; the backward pass pretends it was the identity
//!   ([`StraightThroughGrad::Identity`]) or the soft probabilities it was taken from
//!   ([`StraightThroughGrad::Soft`]: the sigmoid, or the softmax — "straight-through softmax").
//!   Cheap, low variance, **biased**: for a stochastic gate `h ~ Bernoulli(σ(a))` the soft
//!   variant's mean is `σ'(a)·E[f'(h)]` where the true gradient is `σ'(a)·(f(1) − f(0))`, equal
//!   for `f` linear; the gap carries the factor `σ'(a) = σ(a)(1 − σ(a))`, the gate's variance,
//!   so it shrinks as the gate concentrates on one value (as does the true gradient).
//! - **Gumbel-softmax** (Jang, Gu, Poole, arXiv 1611.01144; also Maddison et al.'s Concrete,
//!   arXiv 1611.00712; [`GumbelSoftmax`]): `y = softmax((ℓ + g)/τ)` with Gumbel noise `g`, a
//!   differentiable relaxation of the exact categorical sample `one_hot(argmax(ℓ + g))`; the
//!   hard form returns that one-hot and back-propagates through `y`. Biased for `τ > 0`, the
//!   bias vanishing as `τ → 0` while the variance grows.
//! - **REINFORCE** (Williams 1992; the score-function estimator of arXiv 1308.3432;
//!   [`BernoulliGates`], [`MovingAverageBaseline`]): sample `z`, and descend the surrogate
//!   `(f(z) − b)·log p(z)`, whose gradient `(f(z) − b)·∇ log p(z)` is an **unbiased** estimate
//!   of `∇ E[f(z)]` for any baseline `b` that does not depend on the sample. High variance; the
//!   baseline reduces it.
//!
//! Which to use: straight-through or hard Gumbel-softmax when the loss is differentiable in the
//! choice (a mask multiplying activations) and bias is acceptable; REINFORCE when the cost is a
//! black box (FLOPs spent, a reward) or the gradient must be unbiased. `docs/skip.md` discusses
//! the trade-offs.
//!
//! Every op checks its input (non-finite scores, temperatures, shapes) and returns this crate's
//! [`Error`]; every random draw comes from a seeded [`Rng`](elide_tensor::Rng) in row-major
//! order, so results repeat bit for bit and do not depend on the number of threads.

mod gumbel;
mod reinforce;
mod straight_through;
#[cfg(test)]
mod tests;

pub use gumbel::{GumbelOutput, GumbelSoftmax};
pub use reinforce::{BernoulliGates, MovingAverageBaseline};
pub use straight_through::{
    bernoulli_straight_through, straight_through_one_hot, straight_through_threshold, StraightThroughGrad,
};

use crate::error::{Error, Result};
use elide_autodiff::Var;
use elide_tensor::{IndexTensor, Rng, Tensor};

/// A discrete choice per row: the forward value an estimator returns and the position chosen
/// in each row.
#[derive(Clone, Debug)]
pub struct DiscreteChoice {
    /// The forward value, the shape of the scores: a one-hot per row (hard estimators) or the
    /// relaxed sample (soft Gumbel-softmax). Its backward rule is the estimator's.
    pub value: Var,
    /// The position chosen in each row (the arg-max of the scores, or of the noisy scores for a
    /// Gumbel sample), with the scores' shape minus its last dim (`[rows, blocks]` for a
    /// per-block choice).
    pub index: IndexTensor,
}

/// `(rows, n)` of scores seen as rows along their last dim; `n ≥ 1` unless there are no rows.
fn last_axis(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    let Some(&n) = shape.last() else {
        return Err(Error::shape(op, "scores must have at least 1 dim (choices along the last), got shape []"));
    };
    let rows = shape[..shape.len() - 1].iter().product();
    if n == 0 && rows > 0 {
        return Err(Error::shape(op, format!("the last dim of shape {shape:?} is empty: nothing to choose from")));
    }
    Ok((rows, n))
}

/// The values of `t`, refusing the first NaN or infinity with its row and column (rows along
/// the last dim).
fn finite_values(op: &'static str, what: &str, t: &Tensor) -> Result<Vec<f32>> {
    let values = t.to_vec();
    let n = t.shape().last().copied().unwrap_or(1).max(1);
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(values),
        Some(i) => Err(Error::argument(
            op,
            format!("{what} {} at row {}, column {} (shape {:?}) is not finite", values[i], i / n, i % n, t.shape()),
        )),
    }
}

/// Bernoulli(`σ(ℓ)`) draws, one per logit in order, as `1[ℓ + s > 0]` with `s` a logistic
/// sample: `P(ℓ + s > 0) = σ(ℓ)`.
fn sample_bernoulli(logits: &[f32], rng: &mut Rng) -> Vec<f32> {
    let mut noise = vec![0.0f32; logits.len()];
    rng.fill_logistic(&mut noise);
    logits.iter().zip(&noise).map(|(&l, &s)| if l + s > 0.0 { 1.0 } else { 0.0 }).collect()
}

/// One-hot rows of length `n` with a 1 at each `index`, in `shape`.
fn one_hot(index: &[u32], n: usize, shape: &[usize]) -> Result<Tensor> {
    let mut data = vec![0.0f32; index.len() * n];
    for (row, &i) in index.iter().enumerate() {
        data[row * n + i as usize] = 1.0;
    }
    Ok(Tensor::from_vec(data, shape)?)
}

/// The vector-Jacobian product of a row softmax `y`: `y ⊙ (g − Σ_last g⊙y)`.
fn softmax_vjp(y: &Tensor, g: &Tensor) -> Result<Tensor> {
    let last = y.rank() - 1;
    Ok(y.mul(&g.sub(&g.mul(y)?.sum(last, true)?)?)?)
}
