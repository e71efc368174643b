//! Gumbel-softmax (Jang, Gu, Poole 2016, arXiv 1611.01144), a relaxed categorical sample.
//!
//! The Gumbel-max trick: with `g_k` i.i.d. standard Gumbel, `argmax_k(ℓ_k + g_k)` is distributed
//! as `softmax(ℓ)`. Gumbel-softmax replaces the arg-max with a softmax at temperature `τ`,
//!
//! ```text
//! y = softmax((ℓ + g)/τ),   ∂y/∂ℓ = (diag(y) − y yᵀ)/τ,
//! ```
//!
//! a point of the simplex that tends to the one-hot sample as `τ → 0` (the relaxation's bias
//! vanishes) while the gradient's variance grows: the gradient is of order `1/τ` on the draws
//! whose two largest noisy scores are within about `τ` of each other, and near zero elsewhere.
//! The hard form ("straight-through Gumbel-Softmax" in the paper) returns the exact sample
//! `one_hot(argmax(ℓ + g))` forward and back-propagates through `y`.

use super::{finite_values, last_axis, one_hot, softmax_vjp, DiscreteChoice};
use crate::error::{Error, Result};
use elide_autodiff::Var;
use elide_tensor::{Rng, Tensor};

/// What the forward pass of a Gumbel-softmax sample returns; the backward pass is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GumbelOutput {
    /// The relaxed sample `y = softmax((ℓ + g)/τ)`.
    Soft,
    /// The exact categorical sample `one_hot(argmax(ℓ + g))`, with the gradient of `y`.
    Hard,
}

/// A Gumbel-softmax sampler: a temperature and the kind of output.
///
/// ```
/// use elide_autodiff::Var;
/// use elide_cond::{GumbelOutput, GumbelSoftmax};
/// use elide_tensor::{Rng, Tensor};
///
/// // A controller's scores for 2 tokens over 2 blocks of 4 units: one unit per block.
/// let logits = Var::leaf(Tensor::randn(&[2, 8], &mut Rng::seed(0)));
/// let sampler = GumbelSoftmax::new(0.5, GumbelOutput::Hard)?;
/// let mask = sampler.sample_blocks(&logits, 4, &mut Rng::seed(1))?;
/// assert_eq!(mask.index.shape(), &[2, 2]); // the unit chosen in each (token, block)
/// let ones: f32 = mask.value.value().to_vec().iter().sum();
/// assert_eq!(ones, 4.0); // exactly one 1 per block
/// let grads = mask.value.mul(&Var::constant(Tensor::randn(&[2, 8], &mut Rng::seed(2))))?.sum_all().backward()?;
/// assert_eq!(grads.of(&logits).unwrap().shape(), &[2, 8]); // through the soft sample
/// # Ok::<(), elide_cond::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GumbelSoftmax {
    temperature: f32,
    output: GumbelOutput,
}

impl GumbelSoftmax {
    /// A sampler at temperature `τ = temperature`.
    ///
    /// # Errors
    /// [`Error::Argument`] unless the temperature is finite and `> 0`.
    pub fn new(temperature: f32, output: GumbelOutput) -> Result<GumbelSoftmax> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::argument("GumbelSoftmax", format!("temperature {temperature} must be finite and > 0")));
        }
        Ok(GumbelSoftmax { temperature, output })
    }

    /// The temperature `τ`.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// The kind of output.
    pub fn output(&self) -> GumbelOutput {
        self.output
    }

    /// A sample along the last dim of `logits` (`[rows, n]`, or any rank ≥ 1), with one Gumbel
    /// draw from `rng` per element in row-major order.
    ///
    /// # Errors
    /// [`Error::Shape`] for a 0-dimensional input or an empty last dim; [`Error::Argument`] for a
    /// NaN or infinite logit, or a temperature so small that `(ℓ + g)/τ` overflows.
    pub fn sample(&self, logits: &Var, rng: &mut Rng) -> Result<DiscreteChoice> {
        const OP: &str = "gumbel_softmax";
        last_axis(OP, logits.shape())?;
        let values = finite_values(OP, "logit", logits.value())?;
        let mut noise = vec![0.0f32; values.len()];
        rng.fill_gumbel(&mut noise);
        self.relax(OP, logits, values, noise)
    }

    /// A sample with given Gumbel `noise` (the shape of `logits`): the same function of the
    /// logits every call, which is what a gradient check or a replayed step needs.
    ///
    /// # Errors
    /// Those of [`GumbelSoftmax::sample`]; [`Error::Shape`] if `noise` has another shape;
    /// [`Error::Argument`] for non-finite noise.
    pub fn sample_with_noise(&self, logits: &Var, noise: &Tensor) -> Result<DiscreteChoice> {
        const OP: &str = "gumbel_softmax";
        last_axis(OP, logits.shape())?;
        if noise.shape() != logits.shape() {
            return Err(Error::shape(
                OP,
                format!("noise of shape {:?} for logits of shape {:?}", noise.shape(), logits.shape()),
            ));
        }
        let values = finite_values(OP, "logit", logits.value())?;
        let noise = finite_values(OP, "noise", noise)?;
        self.relax(OP, logits, values, noise)
    }

    /// One choice per block of `block_size` consecutive columns of `logits` `[rows, d]`: a
    /// sample over the last dim of the logits seen as `[rows, d/block_size, block_size]`. The
    /// value has the logits' shape (one 1 per block when hard) and `index` is
    /// `[rows, d/block_size]`, the position within each block. The noise is drawn as
    /// [`GumbelSoftmax::sample`] draws it for `[rows, d]`.
    ///
    /// # Errors
    /// [`Error::Shape`] unless `logits` is 2-D with `block_size ≥ 1` dividing its width; those of
    /// [`GumbelSoftmax::sample`].
    pub fn sample_blocks(&self, logits: &Var, block_size: usize, rng: &mut Rng) -> Result<DiscreteChoice> {
        const OP: &str = "gumbel_softmax_blocks";
        let shape = logits.shape();
        if shape.len() != 2 || block_size == 0 || !shape[1].is_multiple_of(block_size) {
            return Err(Error::shape(
                OP,
                format!("logits must be [rows, d] with d a multiple of the block size {block_size}, got {shape:?}"),
            ));
        }
        // Checked here too so that an error names the row and column of `[rows, d]`.
        finite_values(OP, "logit", logits.value())?;
        let (rows, d) = (shape[0], shape[1]);
        let blocks = logits.reshape(&[rows, d / block_size, block_size])?;
        let choice = self.sample(&blocks, rng)?;
        Ok(DiscreteChoice { value: choice.value.reshape(&[rows, d])?, index: choice.index })
    }

    /// `y = softmax((ℓ + g)/τ)` and its backward rule, from checked values.
    fn relax(&self, op: &'static str, logits: &Var, values: Vec<f32>, noise: Vec<f32>) -> Result<DiscreteChoice> {
        let shape = logits.shape();
        let n = *shape.last().unwrap_or(&1);
        let inv_tau = 1.0 / self.temperature;
        let scaled: Vec<f32> = values.iter().zip(&noise).map(|(&l, &g)| (l + g) * inv_tau).collect();
        if let Some(i) = scaled.iter().position(|v| !v.is_finite()) {
            return Err(Error::argument(
                op,
                format!(
                    "temperature {} is too small: (logit + noise)/τ overflows at row {}, column {}",
                    self.temperature,
                    i / n.max(1),
                    i % n.max(1)
                ),
            ));
        }
        let scaled = Tensor::from_vec(scaled, shape)?;
        // The arg-max of the noisy logits is the exact categorical sample (Gumbel-max trick).
        let index = scaled.argmax()?;
        if self.output == GumbelOutput::Hard && !Var::records(&[logits]) {
            // Inference: the one-hot is all there is to compute.
            return Ok(DiscreteChoice { value: Var::constant(one_hot(index.as_slice(), n, shape)?), index });
        }
        let soft = scaled.softmax()?;
        let value = match self.output {
            GumbelOutput::Soft => soft.clone(),
            GumbelOutput::Hard => one_hot(index.as_slice(), n, shape)?,
        };
        // Both outputs back-propagate through the soft sample: dℓ = y ⊙ (g − Σ g⊙y) / τ.
        let value =
            Var::from_op(op, value, &[logits], move |g| Ok(vec![Some(softmax_vjp(&soft, g)?.mul_scalar(inv_tau))]));
        Ok(DiscreteChoice { value, index })
    }
}
