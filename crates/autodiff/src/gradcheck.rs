//! Gradient checking: analytic gradients against central finite differences.
//!
//! For a function `f` of some tensors, the check draws a fixed random projection `R` of the
//! output and compares, for every input element, the analytic `∂⟨R, f⟩/∂x` (one backward pass
//! seeded with `R`) with `(⟨R, f(x+h)⟩ − ⟨R, f(x−h)⟩) / 2h`. The projection and the differences
//! are summed in f64, so the only f32 rounding left is in `f` itself.

use crate::error::{Error, Result};
use crate::var::Var;
use elide_tensor::{Rng, Tensor};

/// Tolerances of a gradient check: an element passes when
/// `|analytic − numeric| ≤ atol + rtol·|numeric|`.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub step: f32,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Seed of the output projection.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { step: 1e-2, atol: 2e-3, rtol: 2e-2, seed: 7 }
    }
}

/// The largest disagreement a passing check saw.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckReport {
    /// Largest `|analytic − numeric|`.
    pub max_abs_error: f64,
    /// Number of elements compared.
    pub checked: usize,
}

/// `⟨R, f(inputs)⟩` in f64, with recording off.
fn projected(f: &dyn Fn(&[Var]) -> Result<Var>, inputs: &[Tensor], r: &[f32]) -> Result<f64> {
    let vars: Vec<Var> = inputs.iter().map(|t| Var::constant(t.clone())).collect();
    let out = crate::no_grad(|| f(&vars))?;
    Ok(out.value().to_vec().iter().zip(r).map(|(&y, &w)| y as f64 * w as f64).sum())
}

/// Checks the gradients of `f` with respect to every input.
///
/// # Errors
/// [`Error::Gradcheck`] naming the input, the element, and both values, for the first element
/// that disagrees; or any error `f` returns.
pub fn gradcheck(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    options: GradcheckOptions,
) -> Result<GradcheckReport> {
    let leaves: Vec<Var> = inputs.iter().map(|t| Var::leaf(t.contiguous())).collect();
    let out = f(&leaves)?;
    let mut rng = Rng::seed(options.seed);
    let r = Tensor::uniform(out.shape(), -1.0, 1.0, &mut rng)?;
    let grads = out.backward_with(&r)?;
    let r = r.to_vec();
    let mut report = GradcheckReport { max_abs_error: 0.0, checked: 0 };
    for (which, leaf) in leaves.iter().enumerate() {
        let analytic = grads.of(leaf).map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; leaf.value().numel()]);
        let base = leaf.value().to_vec();
        for (i, &a) in analytic.iter().enumerate() {
            let at = |delta: f32| -> Result<f64> {
                let mut moved = base.clone();
                moved[i] += delta;
                let mut xs: Vec<Tensor> = leaves.iter().map(|l| l.value().clone()).collect();
                xs[which] = Tensor::from_vec(moved, leaf.shape())?;
                projected(&f, &xs, &r)
            };
            let h = options.step;
            let numeric = (at(h)? - at(-h)?) / (2.0 * h as f64);
            let err = (a as f64 - numeric).abs();
            if err > options.atol + options.rtol * numeric.abs() {
                return Err(Error::Gradcheck(format!(
                    "input {which} (shape {:?}), element {i}: analytic {a}, numeric {numeric}",
                    leaf.shape()
                )));
            }
            report.max_abs_error = report.max_abs_error.max(err);
            report.checked += 1;
        }
    }
    Ok(report)
}
