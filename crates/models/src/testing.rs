//! Helpers shared by the unit tests.

use elide_autodiff::{gradcheck, GradcheckOptions, Var};
use elide_tensor::Tensor;

/// Asserts `got` and `want` agree to `1e-5` relative (plus absolute at 0).
#[track_caller]
pub(crate) fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what}: [{i}] {a} vs {b}");
    }
}

/// Gradient check of `f` against every input, with the default tolerances.
#[track_caller]
pub(crate) fn check_grad(f: impl Fn(&[Var]) -> crate::Result<Var>, inputs: &[Tensor]) {
    let f = |v: &[Var]| f(v).map_err(|e| elide_autodiff::Error::Gradcheck(format!("the checked function failed: {e}")));
    gradcheck(f, inputs, GradcheckOptions::default()).unwrap_or_else(|e| panic!("{e}"));
}
