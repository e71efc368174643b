//! Differentiable ops on [`crate::Var`]: each forward sits next to its backward rule.

mod arith;
mod index;
mod matmul;
mod nn;
mod reduce;
mod shape;
mod unary;

use crate::error::Result;
use elide_tensor::Tensor;

/// Sums `grad` down to `shape`: over leading dims it has and `shape` lacks, and over dims where
/// `shape` is 1 and `grad` is not (the adjoint of NumPy broadcasting).
pub(crate) fn reduce_to_shape(grad: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if grad.shape() == shape {
        return Ok(grad.clone());
    }
    let extra = grad.rank() - shape.len();
    let mut g = grad.clone();
    for _ in 0..extra {
        g = g.sum(0, false)?;
    }
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 && g.shape()[d] != 1 {
            g = g.sum(d, true)?;
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests;
