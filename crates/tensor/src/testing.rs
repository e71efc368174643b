//! Helpers shared by the unit tests: small tensors with known values, and naive references.

use crate::rng::Rng;
use crate::tensor::Tensor;

/// A contiguous tensor of `shape` holding `0, 1, 2, ...` in row-major order.
pub(crate) fn arange_shaped(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|i| i as f32).collect(), shape).unwrap()
}

/// The value [`arange_shaped`] puts at `index`: its row-major position.
pub(crate) fn reference_get(shape: &[usize], index: &[usize]) -> f32 {
    index.iter().zip(shape).fold(0usize, |acc, (&i, &d)| acc * d + i) as f32
}

/// A tensor of `shape` with values in [-1, 1), from `seed`.
pub(crate) fn random(shape: &[usize], seed: u64) -> Tensor {
    Tensor::uniform(shape, -1.0, 1.0, &mut Rng::seed(seed)).unwrap()
}

/// The row-major multi-index of flat position `flat` in `shape`.
pub(crate) fn unflatten(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        index[d] = flat % shape[d];
        flat /= shape[d];
    }
    index
}

/// Asserts `got` and `want` agree to `tol`, relative to the size of `want`.
#[track_caller]
pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()) || g == w;
        assert!(ok, "element {i}: got {g}, want {w} (tol {tol})");
    }
}
