//! Straight-through estimators (Bengio, Léonard, Courville 2013, arXiv 1308.3432):
//! a hard decision forward, a made-up derivative backward.
//!
//! The paper's estimator "copies the gradient with respect to the stochastic output directly
//! as an estimator of the gradient with respect to the sigmoid argument": backward, the
//! threshold is treated as the identity. Its variant multiplies by the derivative of the
//! sigmoid the decision was sampled from (the "sigmoid-adjusted" estimator); for a choice of one
//! out of `n`, the same idea back-propagates through the softmax the arg-max was taken of
//! ("straight-through softmax"). Both are biased: the loss is evaluated at a corner of the
//! hypercube (or simplex) but differentiated as if it were linear in between.

use super::{finite_values, last_axis, one_hot, sample_bernoulli, softmax_vjp, DiscreteChoice};
use crate::error::{Error, Result};
use elide_autodiff::Var;
use elide_tensor::{Rng, Tensor};

/// The backward rule of a straight-through op: what the hard decision pretends to have been.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StraightThroughGrad {
    /// The identity: the output's gradient is copied to the scores unchanged (the paper's
    /// straight-through estimator).
    Identity,
    /// The soft probabilities the decision was taken from: the gradient is multiplied by the
    /// Jacobian of `σ(x − threshold)` for a threshold, of `σ(logit)` for a Bernoulli gate, and of
    /// `softmax(scores)` for a one-hot (the "straight-through softmax" variant).
    Soft,
}

/// A hard threshold with a straight-through gradient: `y = 1[x > threshold]` elementwise (0 at
/// the threshold itself), any shape.
///
/// Backward, for the output gradient `g`: [`StraightThroughGrad::Identity`] gives `dx = g`;
/// [`StraightThroughGrad::Soft`] gives `dx = g ⊙ σ'(x − threshold)`, with
/// `σ'(u) = σ(u)(1 − σ(u))`: the gradient of the sigmoid whose `> ½` test the threshold is.
///
/// ```
/// use elide_autodiff::Var;
/// use elide_cond::{straight_through_threshold, StraightThroughGrad};
/// use elide_tensor::Tensor;
///
/// let x = Var::leaf(Tensor::from_vec(vec![-0.5, 0.2, 1.5], &[3])?);
/// let y = straight_through_threshold(&x, 0.0, StraightThroughGrad::Identity)?;
/// assert_eq!(y.value().to_vec(), vec![0.0, 1.0, 1.0]);
/// let grads = y.mul_scalar(2.0).sum_all().backward()?;
/// assert_eq!(grads.of(&x).unwrap().to_vec(), vec![2.0, 2.0, 2.0]); // straight through
/// # Ok::<(), elide_cond::Error>(())
/// ```
///
/// # Errors
/// [`Error::Argument`] for a non-finite threshold or a NaN or infinite element of `x` (naming
/// its row and column along the last dim).
pub fn straight_through_threshold(x: &Var, threshold: f32, grad: StraightThroughGrad) -> Result<Var> {
    const OP: &str = "straight_through_threshold";
    if !threshold.is_finite() {
        return Err(Error::argument(OP, format!("threshold {threshold} is not finite")));
    }
    let values = finite_values(OP, "input", x.value())?;
    let hard: Vec<f32> = values.iter().map(|&v| if v > threshold { 1.0 } else { 0.0 }).collect();
    let hard = Tensor::from_vec(hard, x.shape())?;
    if !Var::records(&[x]) {
        return Ok(Var::constant(hard));
    }
    Ok(match grad {
        StraightThroughGrad::Identity => Var::from_op(OP, hard, &[x], |g| Ok(vec![Some(g.clone())])),
        StraightThroughGrad::Soft => {
            let slope = sigmoid_slope(&x.value().sub_scalar(threshold))?;
            Var::from_op(OP, hard, &[x], move |g| Ok(vec![Some(g.mul(&slope)?)]))
        }
    })
}

/// A stochastic binary gate with a straight-through gradient (the paper's setting): `h ~
/// Bernoulli(σ(a))` elementwise, drawn as `h = 1[a + s > 0]` with `s` a logistic sample from
/// `rng` (one per element, in row-major order), any shape.
///
/// Backward: [`StraightThroughGrad::Identity`] gives `da = g` (the paper's estimator);
/// [`StraightThroughGrad::Soft`] gives `da = g ⊙ σ(a)(1 − σ(a))` (sigmoid-adjusted). For a loss
/// `f(h)` the soft variant's expectation is `σ'(a)·E[f'(h)]` while the exact gradient of
/// `E[f(h)]` is `σ'(a)·(f(1) − f(0))`: equal when `f` is linear in `h`, otherwise biased by
/// `σ'(a)·(E[f'(h)] − f(1) + f(0))`, whose factor `σ'(a) = σ(a)(1 − σ(a))` is the gate's
/// variance (so the bias vanishes as the gate concentrates, and so does the exact gradient).
///
/// # Errors
/// [`Error::Argument`] for a NaN or infinite logit (naming its row and column).
pub fn bernoulli_straight_through(logits: &Var, grad: StraightThroughGrad, rng: &mut Rng) -> Result<Var> {
    const OP: &str = "bernoulli_straight_through";
    let values = finite_values(OP, "logit", logits.value())?;
    let gates = Tensor::from_vec(sample_bernoulli(&values, rng), logits.shape())?;
    if !Var::records(&[logits]) {
        return Ok(Var::constant(gates));
    }
    Ok(match grad {
        StraightThroughGrad::Identity => Var::from_op(OP, gates, &[logits], |g| Ok(vec![Some(g.clone())])),
        StraightThroughGrad::Soft => {
            let slope = sigmoid_slope(logits.value())?;
            Var::from_op(OP, gates, &[logits], move |g| Ok(vec![Some(g.mul(&slope)?)]))
        }
    })
}

/// A one-hot of the arg-max of each row of `scores` (along the last dim, any rank ≥ 1; the
/// first maximum on ties) with a straight-through gradient.
///
/// Backward: [`StraightThroughGrad::Identity`] gives `dx = g`; [`StraightThroughGrad::Soft`]
/// gives the vector-Jacobian product of `p = softmax(x)`, `dx = p ⊙ (g − Σ g⊙p)`
/// ("straight-through softmax"). The per-block choice of a unit-sparse layer (one unit out of
/// each block of `N`) is this op on the scores reshaped to `[rows, blocks, N]`.
///
/// ```
/// use elide_autodiff::Var;
/// use elide_cond::{straight_through_one_hot, StraightThroughGrad};
/// use elide_tensor::Tensor;
///
/// let scores = Var::leaf(Tensor::from_vec(vec![0.1, 2.0, -1.0, 0.5, 0.4, 0.3], &[2, 3])?);
/// let choice = straight_through_one_hot(&scores, StraightThroughGrad::Soft)?;
/// assert_eq!(choice.index.as_slice(), &[1, 0]);
/// assert_eq!(choice.value.value().to_vec(), vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
/// let grads = choice.value.sum_all().backward()?; // Σ of a softmax row is 1: zero gradient
/// assert!(grads.of(&scores).unwrap().to_vec().iter().all(|g| g.abs() < 1e-6));
/// # Ok::<(), elide_cond::Error>(())
/// ```
///
/// # Errors
/// [`Error::Shape`] for a 0-dimensional input or an empty last dim; [`Error::Argument`] for a
/// NaN or infinite score (naming its row and column).
pub fn straight_through_one_hot(scores: &Var, grad: StraightThroughGrad) -> Result<DiscreteChoice> {
    const OP: &str = "straight_through_one_hot";
    let (_, n) = last_axis(OP, scores.shape())?;
    finite_values(OP, "score", scores.value())?;
    let index = scores.value().argmax()?;
    let hard = one_hot(index.as_slice(), n, scores.shape())?;
    if !Var::records(&[scores]) {
        return Ok(DiscreteChoice { value: Var::constant(hard), index });
    }
    let value = match grad {
        StraightThroughGrad::Identity => Var::from_op(OP, hard, &[scores], |g| Ok(vec![Some(g.clone())])),
        StraightThroughGrad::Soft => {
            let probs = scores.value().softmax()?;
            Var::from_op(OP, hard, &[scores], move |g| Ok(vec![Some(softmax_vjp(&probs, g)?)]))
        }
    };
    Ok(DiscreteChoice { value, index })
}

/// `σ'(u) = σ(u)(1 − σ(u))` elementwise.
fn sigmoid_slope(u: &Tensor) -> Result<Tensor> {
    let s = u.sigmoid();
    Ok(s.neg().add_scalar(1.0).mul(&s)?)
}
