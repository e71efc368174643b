//! Slice-level building blocks over the [`Simd`] trait, shared by the non-GEMM kernels:
//! bounds-checked vector loads and stores, padded partial vectors for tails, a lane-wise map
//! and a lane-wise fold. Kernels built from these need no `unsafe` of their own.
//!
//! Tails go through a padded vector, so every element of a slice takes the same arithmetic
//! whatever its position: a result never depends on where a chunk boundary fell.
//!
//! The per-lane functions are small types implementing [`LaneFn`] / [`LaneFn2`] (declared with
//! [`lane_fn!`]), never closures: a closure is compiled without the target features of the
//! `#[target_feature]` entry point that runs the kernel, so every intrinsic inside it would
//! become an out-of-line call (about ten times slower on AVX2).

use crate::simd::Simd;

/// The widest vector any [`Simd`] implementation has (AVX-512: 16 f32 lanes).
pub(crate) const MAX_LANES: usize = 16;

/// A lane-wise function of one vector.
pub(crate) trait LaneFn: Copy {
    fn apply<S: Simd>(self, s: S, v: S::V) -> S::V;
}

/// A lane-wise function of two vectors.
pub(crate) trait LaneFn2: Copy {
    fn apply<S: Simd>(self, s: S, a: S::V, b: S::V) -> S::V;
}

/// Declares a `Copy` struct implementing [`LaneFn`] (`|s, v| body`) or [`LaneFn2`]
/// (`|s, a, b| body`); the body sees the struct's fields as locals.
macro_rules! lane_fn {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* } = |$s:ident, $v:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub(crate) struct $name { $(pub(crate) $field: $ty),* }
        impl $crate::lanes::LaneFn for $name {
            #[inline(always)]
            fn apply<S: $crate::simd::Simd>(self, $s: S, $v: S::V) -> S::V {
                let $name { $($field),* } = self;
                $body
            }
        }
    };
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* } = |$s:ident, $a:ident, $b:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub(crate) struct $name { $(pub(crate) $field: $ty),* }
        impl $crate::lanes::LaneFn2 for $name {
            #[inline(always)]
            fn apply<S: $crate::simd::Simd>(self, $s: S, $a: S::V, $b: S::V) -> S::V {
                let $name { $($field),* } = self;
                $body
            }
        }
    };
}
pub(crate) use lane_fn;

lane_fn!(/** `a + b`. */ Add {} = |s, a, b| s.add(a, b));
lane_fn!(/** `a · b`. */ Mul {} = |s, a, b| s.mul(a, b));
lane_fn!(/** `max(a, b)`, NaN if either is NaN. */ MaxNan {} = |s, a, b| s.keep_nan(a, s.keep_nan(b, s.max(a, b))));
lane_fn!(/** `min(a, b)`, NaN if either is NaN. */ MinNan {} = |s, a, b| s.keep_nan(a, s.keep_nan(b, s.min(a, b))));
lane_fn!(/** `v · factor`. */ Scale { factor: f32 } = |s, v| s.mul(v, s.splat(factor)));
lane_fn!(/** `a + b · factor`, the product rounded first (no fused multiply-add). */
    AddScaled { factor: f32 } = |s, a, b| s.add(a, s.mul(b, s.splat(factor))));

/// Loads the first `LANES` floats of `x`; panics if `x` is shorter (a kernel bug).
#[inline(always)]
pub(crate) fn load<S: Simd>(s: S, x: &[f32]) -> S::V {
    assert!(x.len() >= S::LANES);
    // SAFETY: just checked that `x` holds at least LANES floats.
    unsafe { s.load(x.as_ptr()) }
}

/// Stores `v` into the first `LANES` floats of `out`; panics if `out` is shorter.
#[inline(always)]
pub(crate) fn store<S: Simd>(s: S, out: &mut [f32], v: S::V) {
    assert!(out.len() >= S::LANES);
    // SAFETY: just checked that `out` holds at least LANES floats.
    unsafe { s.store(out.as_mut_ptr(), v) }
}

/// Loads `x` (at most `LANES` floats) into a vector whose remaining lanes hold `pad`.
#[inline(always)]
pub(crate) fn load_partial<S: Simd>(s: S, x: &[f32], pad: f32) -> S::V {
    assert!(x.len() <= S::LANES);
    // SAFETY: `x` holds the `x.len() ≤ LANES` floats read.
    unsafe { s.load_first(x.as_ptr(), x.len(), pad) }
}

/// Stores the first `out.len()` (at most `LANES`) lanes of `v` into `out`.
#[inline(always)]
pub(crate) fn store_partial<S: Simd>(s: S, out: &mut [f32], v: S::V) {
    assert!(out.len() <= S::LANES);
    // SAFETY: `out` holds the `out.len() ≤ LANES` floats written.
    unsafe { s.store_first(out.as_mut_ptr(), out.len(), v) }
}

/// `out[i] = f(x[i])` for every `i`, a vector at a time (`x` and `out` have equal lengths).
#[inline(always)]
pub(crate) fn map<S: Simd>(s: S, x: &[f32], out: &mut [f32], f: impl LaneFn) {
    assert_eq!(x.len(), out.len());
    let mut xs = x.chunks_exact(S::LANES);
    let mut outs = out.chunks_exact_mut(S::LANES);
    for (xv, ov) in (&mut xs).zip(&mut outs) {
        store(s, ov, f.apply(s, load(s, xv)));
    }
    let tail = xs.remainder();
    if !tail.is_empty() {
        store_partial(s, outs.into_remainder(), f.apply(s, load_partial(s, tail, 0.0)));
    }
}

/// `y[i] = f(y[i])` for every `i`, in place, a vector at a time.
#[inline(always)]
pub(crate) fn map_in_place<S: Simd>(s: S, y: &mut [f32], f: impl LaneFn) {
    let mut ys = y.chunks_exact_mut(S::LANES);
    for yv in &mut ys {
        let v = f.apply(s, load(s, yv));
        store(s, yv, v);
    }
    let tail = ys.into_remainder();
    if !tail.is_empty() {
        let v = f.apply(s, load_partial(s, tail, 0.0));
        store_partial(s, tail, v);
    }
}

/// `y[i] = f(y[i], w[i])` for every `i`, in place, a vector at a time (equal lengths).
#[inline(always)]
pub(crate) fn zip_in_place<S: Simd>(s: S, y: &mut [f32], w: &[f32], f: impl LaneFn2) {
    assert_eq!(y.len(), w.len());
    let mut ys = y.chunks_exact_mut(S::LANES);
    let mut ws = w.chunks_exact(S::LANES);
    for (yv, wv) in (&mut ys).zip(&mut ws) {
        let v = f.apply(s, load(s, yv), load(s, wv));
        store(s, yv, v);
    }
    let (yt, wt) = (ys.into_remainder(), ws.remainder());
    if !yt.is_empty() {
        let v = f.apply(s, load_partial(s, yt, 0.0), load_partial(s, wt, 0.0));
        store_partial(s, yt, v);
    }
}

/// `e^x` with IEEE-like ends: [`Simd::exp`] saturates outside `[-87.3, 88.4]`; here the result
/// is 0 below `ln(f32::MIN_POSITIVE)` (subnormal results flush to zero) and `inf` above
/// `ln(f32::MAX)`.
#[inline(always)]
pub(crate) fn exp_ieee<S: Simd>(s: S, x: S::V) -> S::V {
    let e = s.select_lt(x, s.splat(-87.336_54), s.splat(0.0), s.exp(x));
    s.select_lt(s.splat(88.722_84), x, s.splat(f32::INFINITY), e)
}

/// Folds `x` lane-wise: four accumulators (for instruction-level parallelism) start at `init`
/// and take `acc = step(acc, v)` for each vector `v` of `x`, the tail padded with `pad` (pick a
/// `pad` that `step` ignores); they are merged as `(a0 ⊕ a1) ⊕ (a2 ⊕ a3)`. The order depends only
/// on `x.len()`, so the result is deterministic.
#[inline(always)]
pub(crate) fn fold<S: Simd>(s: S, x: &[f32], pad: f32, init: S::V, step: impl LaneFn2, merge: impl LaneFn2) -> S::V {
    let mut acc = [init; 4];
    let mut blocks = x.chunks_exact(4 * S::LANES);
    for block in &mut blocks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = step.apply(s, *a, load(s, &block[k * S::LANES..]));
        }
    }
    let mut vectors = blocks.remainder().chunks_exact(S::LANES);
    for xv in &mut vectors {
        acc[0] = step.apply(s, acc[0], load(s, xv));
    }
    let tail = vectors.remainder();
    if !tail.is_empty() {
        acc[1] = step.apply(s, acc[1], load_partial(s, tail, pad));
    }
    merge.apply(s, merge.apply(s, acc[0], acc[1]), merge.apply(s, acc[2], acc[3]))
}

/// `y += alpha · x` over equal-length slices, one fused multiply-add per element.
#[inline(always)]
pub(crate) fn axpy<S: Simd>(s: S, y: &mut [f32], alpha: f32, x: &[f32]) {
    let a = s.splat(alpha);
    let (mut ys, mut xs) = (y.chunks_exact_mut(S::LANES), x.chunks_exact(S::LANES));
    for (yv, xv) in (&mut ys).zip(&mut xs) {
        let v = s.mul_add(a, load(s, xv), load(s, yv));
        store(s, yv, v);
    }
    let (yt, xt) = (ys.into_remainder(), xs.remainder());
    if !xt.is_empty() {
        let v = s.mul_add(a, load_partial(s, xt, 0.0), load_partial(s, yt, 0.0));
        store_partial(s, yt, v);
    }
}

/// `Σ x[i]·y[i]` over equal-length slices in a fixed order: four lane-wise accumulators of
/// fused multiply-adds, merged as `(a0 + a1) + (a2 + a3)`, then the lanes.
#[inline(always)]
pub(crate) fn dot<S: Simd>(s: S, x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut acc = [s.splat(0.0); 4];
    let (mut xb, mut yb) = (x.chunks_exact(4 * S::LANES), y.chunks_exact(4 * S::LANES));
    for (xv, yv) in (&mut xb).zip(&mut yb) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = s.mul_add(load(s, &xv[k * S::LANES..]), load(s, &yv[k * S::LANES..]), *a);
        }
    }
    let (mut xs, mut ys) = (xb.remainder().chunks_exact(S::LANES), yb.remainder().chunks_exact(S::LANES));
    for (xv, yv) in (&mut xs).zip(&mut ys) {
        acc[0] = s.mul_add(load(s, xv), load(s, yv), acc[0]);
    }
    if !xs.remainder().is_empty() {
        acc[1] = s.mul_add(load_partial(s, xs.remainder(), 0.0), load_partial(s, ys.remainder(), 0.0), acc[1]);
    }
    s.reduce_sum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])))
}

/// Sum of the elements of `x` in a fixed order (lane-wise partial sums, then the lanes).
#[inline(always)]
pub(crate) fn sum<S: Simd>(s: S, x: &[f32]) -> f32 {
    s.reduce_sum(fold(s, x, 0.0, s.splat(0.0), Add {}, Add {}))
}

/// Largest lane of `v`, or NaN if any lane is NaN.
#[inline(always)]
pub(crate) fn hmax<S: Simd>(s: S, v: S::V) -> f32 {
    // The zero lanes sum to zero; a NaN lane makes the sum NaN.
    let nan_probe = s.reduce_sum(s.keep_nan(v, s.splat(0.0)));
    if nan_probe.is_nan() {
        f32::NAN
    } else {
        s.reduce_max(v)
    }
}

/// Largest element of `x` (which must not be empty), or NaN if any element is NaN.
#[inline(always)]
pub(crate) fn max<S: Simd>(s: S, x: &[f32]) -> f32 {
    let low = f32::NEG_INFINITY;
    hmax(s, fold(s, x, low, s.splat(low), MaxNan {}, MaxNan {}))
}

/// Smallest element of `x` (which must not be empty), or NaN if any element is NaN.
#[inline(always)]
pub(crate) fn min<S: Simd>(s: S, x: &[f32]) -> f32 {
    let high = f32::INFINITY;
    let v = fold(s, x, high, s.splat(high), MinNan {}, MinNan {});
    -hmax(s, s.mul(v, s.splat(-1.0)))
}
