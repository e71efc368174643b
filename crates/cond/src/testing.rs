//! Helpers shared by the unit tests: random assignments, logits whose choices are clear of
//! ties, and gradient checks of functions returning this crate's `Result`.

use crate::error::Result;
use crate::routing::Routing;
use elide_autodiff::{gradcheck, GradcheckOptions, Var};
use elide_tensor::{Rng, Tensor};

/// The finite-difference step of [`check_grad`] (the gradcheck default).
const STEP: f32 = 1e-2;

/// Token-choice style assignments: each of `t` tokens picks `k` distinct experts of `e` at
/// random, token-major. Returns `(tokens, experts)`.
pub(crate) fn random_token_choice(t: usize, e: usize, k: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng::seed(seed);
    let (mut tokens, mut experts) = (Vec::new(), Vec::new());
    for token in 0..t {
        // A partial Fisher–Yates shuffle: the first k of a random permutation.
        let mut ids: Vec<u32> = (0..e as u32).collect();
        for j in 0..k {
            let pick = j + rng.below((e - j) as u64) as usize;
            ids.swap(j, pick);
            tokens.push(token as u32);
            experts.push(ids[j]);
        }
    }
    (tokens, experts)
}

/// `[t, e]` logits whose row entries are at least 0.2 apart (a random permutation of
/// `0, 0.6, 1.2, ...` plus jitter in `[-0.2, 0.2)`), so row choices sit far from ties; the
/// jitter separates columns too, which [`assert_clear_choices`] verifies.
pub(crate) fn separated_logits(t: usize, e: usize, seed: u64) -> Tensor {
    let mut rng = Rng::seed(seed);
    let mut out = Vec::with_capacity(t * e);
    for _ in 0..t {
        let mut perm: Vec<usize> = (0..e).collect();
        for j in (1..e).rev() {
            perm.swap(j, rng.below(j as u64 + 1) as usize);
        }
        out.extend(perm.iter().map(|&p| 0.6 * p as f32 - 0.3 * e as f32 + 0.4 * rng.next_f32() - 0.2));
    }
    Tensor::from_vec(out, &[t, e]).unwrap()
}

/// Asserts that moving any one input element by ±1.5× the gradcheck step leaves the routing's
/// choices unchanged: the finite differences then never straddle a change of selection.
#[track_caller]
pub(crate) fn assert_clear_choices_many(inputs: &[Tensor], route: impl Fn(&[Var]) -> Result<Routing>) {
    let consts = |xs: &[Tensor]| xs.iter().map(|x| Var::constant(x.clone())).collect::<Vec<_>>();
    let base = route(&consts(inputs)).unwrap();
    for (which, x) in inputs.iter().enumerate() {
        let values = x.to_vec();
        for i in 0..values.len() {
            for delta in [-1.5 * STEP, 1.5 * STEP] {
                let mut moved = values.clone();
                moved[i] += delta;
                let mut xs = inputs.to_vec();
                xs[which] = Tensor::from_vec(moved, x.shape()).unwrap();
                let r = route(&consts(&xs)).unwrap();
                assert!(
                    r.tokens == base.tokens && r.experts == base.experts,
                    "input {which} element {i} moved by {delta} changes the selection: pick other test logits"
                );
            }
        }
    }
}

/// [`assert_clear_choices_many`] for one input.
#[track_caller]
pub(crate) fn assert_clear_choices(logits: &Tensor, route: impl Fn(&Var) -> Result<Routing>) {
    assert_clear_choices_many(std::slice::from_ref(logits), |v| route(&v[0]));
}

/// Gradient check of `f` against every input, with the default tolerances.
#[track_caller]
pub(crate) fn check_grad_many(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) {
    let f = |v: &[Var]| f(v).map_err(|e| elide_autodiff::Error::Gradcheck(format!("the checked function failed: {e}")));
    let report = gradcheck(f, inputs, GradcheckOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.checked > 0);
}

/// [`check_grad_many`] for one input.
#[track_caller]
pub(crate) fn check_grad(f: impl Fn(&Var) -> Result<Var>, x: &Tensor) {
    check_grad_many(|v| f(&v[0]), std::slice::from_ref(x));
}

/// Asserts `got` and `want` agree to `rtol`, relative to `1 + |want|`, naming `what` and the
/// element that differs. The one closeness check of this crate's unit tests.
#[track_caller]
pub(crate) fn assert_close(got: &[f32], want: &[f32], rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= rtol * (1.0 + b.abs()), "{what}: [{i}] {a} vs {b}");
    }
}
