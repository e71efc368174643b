//! Elementwise kernels: unary maps, binary ops with scalar broadcast, and `y += alpha·x`.
//!
//! Every element takes the same vector arithmetic (tails go through a padded vector), and large
//! slices split into fixed chunks over rayon, so results do not depend on the thread count. NaN
//! propagates through every op, including `Max`, `Min` and `Relu`.

use crate::error::{KernelError, Result};
use crate::gemm::Activation;
use crate::lanes::{self, lane_fn, LaneFn2};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::for_row_chunks;
use crate::Isa;

/// A function applied to each element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x` (0 below -87.3, where f32 turns subnormal; `inf` above 88.72).
    Exp,
    /// Natural log (`-inf` at 0, NaN below 0).
    Log,
    /// `√x` (NaN below 0).
    Sqrt,
    /// `1/x`.
    Recip,
    /// `x²`.
    Square,
    /// `tanh x`.
    Tanh,
    /// Logistic sigmoid `1 / (1 + e^{-x})`.
    Sigmoid,
    /// `max(x, 0)`.
    Relu,
    /// GELU, tanh form, the same arithmetic as the GEMM epilogue's [`Activation::Gelu`].
    Gelu,
    /// GELU, exact erf form `0.5·x·(1 + erf(x/√2))`, the same arithmetic as the GEMM epilogue's
    /// [`Activation::GeluErf`].
    GeluErf,
    /// SiLU `x·σ(x)`, the same arithmetic as the GEMM epilogue's [`Activation::Silu`].
    Silu,
}

impl UnaryOp {
    /// Scalar `x` in, scalar out: the f64 definition the vector code is tested against.
    pub fn reference(self, x: f64) -> f64 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Square => x * x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryOp::Relu => {
                if x.is_nan() {
                    x
                } else {
                    x.max(0.0)
                }
            }
            UnaryOp::Gelu => Activation::Gelu.reference(x),
            UnaryOp::GeluErf => Activation::GeluErf.reference(x),
            UnaryOp::Silu => Activation::Silu.reference(x),
        }
    }
}

/// `x`, `out` are `[n]`: `out[i] = op(x[i])`.
///
/// # Errors
/// [`KernelError::Shape`] if the lengths differ.
pub fn unary(isa: Isa, op: UnaryOp, x: &[f32], out: &mut [f32]) -> Result<()> {
    if x.len() != out.len() {
        let detail = format!("{op:?}: x has {} elements, out has {}", x.len(), out.len());
        return Err(KernelError::Shape { op: "unary", detail });
    }
    for_row_chunks(out, 1, 1, |start, out| {
        with_simd(isa, UnaryTask { op, x: &x[start..start + out.len()], out });
    });
    Ok(())
}

struct UnaryTask<'a> {
    op: UnaryOp,
    x: &'a [f32],
    out: &'a mut [f32],
}

impl SimdTask for UnaryTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let (x, out) = (self.x, self.out);
        // One loop per op, so the match is not inside the loop.
        match self.op {
            UnaryOp::Neg => lanes::map(s, x, out, Neg {}),
            UnaryOp::Abs => lanes::map(s, x, out, Abs {}),
            UnaryOp::Exp => lanes::map(s, x, out, Exp {}),
            UnaryOp::Log => lanes::map(s, x, out, Log {}),
            UnaryOp::Sqrt => lanes::map(s, x, out, Sqrt {}),
            UnaryOp::Recip => lanes::map(s, x, out, Recip {}),
            UnaryOp::Square => lanes::map(s, x, out, Square {}),
            UnaryOp::Tanh => lanes::map(s, x, out, Tanh {}),
            UnaryOp::Sigmoid => lanes::map(s, x, out, Sigmoid {}),
            UnaryOp::Relu => lanes::map(s, x, out, Relu {}),
            UnaryOp::Gelu => lanes::map(s, x, out, Gelu {}),
            UnaryOp::GeluErf => lanes::map(s, x, out, GeluErf {}),
            UnaryOp::Silu => lanes::map(s, x, out, Silu {}),
        }
    }
}

lane_fn!(Neg {} = |s, v| s.mul(v, s.splat(-1.0)));
lane_fn!(Abs {} = |s, v| s.abs(v));
lane_fn!(Exp {} = |s, v| lanes::exp_ieee(s, v));
lane_fn!(Log {} = |s, v| s.ln(v));
lane_fn!(Sqrt {} = |s, v| s.sqrt(v));
lane_fn!(Recip {} = |s, v| s.div(s.splat(1.0), v));
lane_fn!(Square {} = |s, v| s.mul(v, v));
lane_fn!(Tanh {} = |s, v| tanh_accurate(s, v));
lane_fn!(Sigmoid {} = |s, v| s.sigmoid(v));
// The epilogue's ReLU is a plain max, which turns NaN into 0 on x86; keep the NaN.
lane_fn!(Relu {} = |s, v| s.keep_nan(v, Activation::Relu.apply_simd(s, v)));
lane_fn!(Gelu {} = |s, v| Activation::Gelu.apply_simd(s, v));
lane_fn!(GeluErf {} = |s, v| Activation::GeluErf.apply_simd(s, v));
lane_fn!(Silu {} = |s, v| Activation::Silu.apply_simd(s, v));

/// `tanh x` with full relative accuracy near 0, where `1 - 2/(e^{2x}+1)` ([`Simd::tanh`])
/// cancels: below `|x| = 0.625` an odd polynomial (Cephes `tanhf`), above it [`Simd::tanh`].
#[inline(always)]
fn tanh_accurate<S: Simd>(s: S, x: S::V) -> S::V {
    let z = s.mul(x, x);
    let mut p = s.splat(-5.704_988_7e-3);
    p = s.mul_add(p, z, s.splat(2.063_909e-2));
    p = s.mul_add(p, z, s.splat(-5.373_971_6e-2));
    p = s.mul_add(p, z, s.splat(1.333_144_2e-1));
    p = s.mul_add(p, z, s.splat(-3.333_328e-1));
    let small = s.mul_add(s.mul(p, z), x, x);
    s.select_lt(s.abs(x), s.splat(0.625), small, s.tanh(x))
}

/// A function of two elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a · b`.
    Mul,
    /// `a / b`.
    Div,
    /// The larger of `a` and `b` (NaN if either is NaN).
    Max,
    /// The smaller of `a` and `b` (NaN if either is NaN).
    Min,
}

impl BinaryOp {
    /// Scalars `a`, `b` in, scalar out: the f64 definition the vector code is tested against.
    pub fn reference(self, a: f64, b: f64) -> f64 {
        let nan = a.is_nan() || b.is_nan();
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Max if nan => f64::NAN,
            BinaryOp::Max => a.max(b),
            BinaryOp::Min if nan => f64::NAN,
            BinaryOp::Min => a.min(b),
        }
    }
}

/// One input of a binary op: a slice as long as the output, or one value broadcast to all.
#[derive(Clone, Copy)]
enum Operand<'a> {
    Slice(&'a [f32]),
    Scalar(f32),
}

impl<'a> Operand<'a> {
    fn new(x: &'a [f32], n: usize) -> Option<Self> {
        match x.len() {
            len if len == n => Some(Operand::Slice(x)),
            1 => Some(Operand::Scalar(x[0])),
            _ => None,
        }
    }

    /// The operand restricted to output elements `start..start + len`.
    fn range(self, start: usize, len: usize) -> Self {
        match self {
            Operand::Slice(x) => Operand::Slice(&x[start..start + len]),
            scalar => scalar,
        }
    }

    /// The full vector at element `i`.
    #[inline(always)]
    fn vector<S: Simd>(self, s: S, i: usize) -> S::V {
        match self {
            Operand::Slice(x) => lanes::load(s, &x[i..]),
            Operand::Scalar(v) => s.splat(v),
        }
    }

    /// The partial vector from element `i` to the end.
    #[inline(always)]
    fn partial<S: Simd>(self, s: S, i: usize) -> S::V {
        match self {
            Operand::Slice(x) => lanes::load_partial(s, &x[i..], 0.0),
            Operand::Scalar(v) => s.splat(v),
        }
    }
}

/// `a`, `b` are `[n]` or `[1]` (broadcast), `out` is `[n]`: `out[i] = op(a[i], b[i])`.
///
/// # Errors
/// [`KernelError::Shape`] if `a` or `b` has neither `out.len()` elements nor one.
pub fn binary(isa: Isa, op: BinaryOp, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<()> {
    let n = out.len();
    let (Some(a), Some(b)) = (Operand::new(a, n), Operand::new(b, n)) else {
        let detail =
            format!("{op:?}: a has {} elements, b has {}, out has {n} (each input needs {n} or 1)", a.len(), b.len());
        return Err(KernelError::Shape { op: "binary", detail });
    };
    for_row_chunks(out, 1, 1, |start, out| {
        let len = out.len();
        with_simd(isa, BinaryTask { op, a: a.range(start, len), b: b.range(start, len), out });
    });
    Ok(())
}

struct BinaryTask<'a> {
    op: BinaryOp,
    a: Operand<'a>,
    b: Operand<'a>,
    out: &'a mut [f32],
}

impl SimdTask for BinaryTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let (a, b, out) = (self.a, self.b, self.out);
        match self.op {
            BinaryOp::Add => binary_body(s, a, b, out, lanes::Add {}),
            BinaryOp::Sub => binary_body(s, a, b, out, Sub {}),
            BinaryOp::Mul => binary_body(s, a, b, out, lanes::Mul {}),
            BinaryOp::Div => binary_body(s, a, b, out, Div {}),
            BinaryOp::Max => binary_body(s, a, b, out, lanes::MaxNan {}),
            BinaryOp::Min => binary_body(s, a, b, out, lanes::MinNan {}),
        }
    }
}

lane_fn!(Sub {} = |s, a, b| s.sub(a, b));
lane_fn!(Div {} = |s, a, b| s.div(a, b));

#[inline(always)]
fn binary_body<S: Simd>(s: S, a: Operand, b: Operand, out: &mut [f32], f: impl LaneFn2) {
    let mut outs = out.chunks_exact_mut(S::LANES);
    let mut i = 0;
    for ov in &mut outs {
        lanes::store(s, ov, f.apply(s, a.vector(s, i), b.vector(s, i)));
        i += S::LANES;
    }
    let tail = outs.into_remainder();
    if !tail.is_empty() {
        lanes::store_partial(s, tail, f.apply(s, a.partial(s, i), b.partial(s, i)));
    }
}

/// `x`, `y` are `[n]`: `y[i] += alpha·x[i]` (axpy, fused multiply-add where the CPU has it).
///
/// # Errors
/// [`KernelError::Shape`] if the lengths differ.
pub fn scale_add(isa: Isa, alpha: f32, x: &[f32], y: &mut [f32]) -> Result<()> {
    if x.len() != y.len() {
        let detail = format!("x has {} elements, y has {}", x.len(), y.len());
        return Err(KernelError::Shape { op: "scale_add", detail });
    }
    for_row_chunks(y, 1, 1, |start, y| {
        with_simd(isa, ScaleAddTask { alpha, x: &x[start..start + y.len()], y });
    });
    Ok(())
}

struct ScaleAddTask<'a> {
    alpha: f32,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl SimdTask for ScaleAddTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        lanes::axpy(s, self.y, self.alpha, self.x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, bits, data, in_pools, SIZES};

    const UNARY: [UnaryOp; 13] = [
        UnaryOp::Neg,
        UnaryOp::Abs,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Relu,
        UnaryOp::Gelu,
        UnaryOp::GeluErf,
        UnaryOp::Silu,
    ];
    const BINARY: [BinaryOp; 6] =
        [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min];

    /// Inputs in each op's domain, and its tolerance `(rtol, atol)`.
    fn unary_case(op: UnaryOp, n: usize, seed: u64) -> (Vec<f32>, f64, f64) {
        match op {
            UnaryOp::Log => (data(n, seed, 1e-6, 1e4), 1e-6, 0.0),
            UnaryOp::Sqrt => (data(n, seed, 0.0, 100.0), 1e-6, 0.0),
            UnaryOp::Exp => (data(n, seed, -80.0, 80.0), 2e-6, 0.0),
            UnaryOp::Recip => (data(n, seed, 0.01, 100.0), 1e-6, 0.0),
            // The tail of 1 + tanh(u) as u -> -inf cancels, so GELU is accurate in absolute terms.
            UnaryOp::Gelu => (data(n, seed, -10.0, 10.0), 2e-6, 1e-6),
            // Against f64 erf: 1e-6 relative, 1e-6 absolute (the tail below x ≈ -5.7, where
            // 1 + erf rounds to 0 in f32, is under 4e-8 in size).
            UnaryOp::GeluErf => (data(n, seed, -10.0, 10.0), 1e-6, 1e-6),
            UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Silu => (data(n, seed, -10.0, 10.0), 2e-6, 0.0),
            _ => (data(n, seed, -10.0, 10.0), 1e-6, 0.0),
        }
    }

    #[test]
    fn unary_matches_reference_on_every_path() {
        for isa in Isa::supported() {
            for op in UNARY {
                for n in SIZES {
                    let (x, rtol, atol) = unary_case(op, n, n as u64);
                    let mut out = vec![0.0; n];
                    unary(isa, op, &x, &mut out).unwrap();
                    let want: Vec<f64> = x.iter().map(|&v| op.reference(v as f64)).collect();
                    assert_close(&format!("{isa} {op:?} n={n}"), &out, &want, rtol, atol);
                }
            }
        }
    }

    #[test]
    fn unary_special_values() {
        let x = [0.0, -0.0, -1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 1e-40, 1e-3, 200.0, -200.0, 1.0];
        for isa in Isa::supported() {
            for op in UNARY {
                let mut out = vec![0.0; x.len()];
                unary(isa, op, &x, &mut out).unwrap();
                for (&v, &got) in x.iter().zip(&out) {
                    let want = op.reference(v as f64) as f32;
                    // GELU and SiLU of infinities are inf·0 = NaN in the formulas; skip those.
                    if v.is_infinite() && matches!(op, UnaryOp::Gelu | UnaryOp::GeluErf | UnaryOp::Silu) {
                        continue;
                    }
                    let same = (got.is_nan() && want.is_nan())
                        || got == want
                        || (got - want).abs() <= 2e-6 * want.abs()
                        // `Simd::exp` saturates at e^-87.3, so a result that underflows in f32
                        // (sigmoid, SiLU far left) may come out tiny instead of zero.
                        || (want.abs() < f32::MIN_POSITIVE && got.abs() < 1e-30);
                    assert!(same, "{isa} {op:?}({v:e}) = {got:e}, want {want:e}");
                }
            }
        }
    }

    #[test]
    fn log_is_accurate_across_the_whole_range() {
        let mut x = Vec::new();
        let mut v = f32::from_bits(1); // smallest subnormal
        while v < f32::MAX / 1.7 {
            x.push(v);
            x.push(v * 1.37);
            v *= 1.7;
        }
        x.extend([0.999_999_9, 1.0, 1.000_000_1, 0.75, 1.5, std::f32::consts::SQRT_2]);
        let want: Vec<f64> = x.iter().map(|&v| (v as f64).ln()).collect();
        for isa in Isa::supported() {
            let mut out = vec![0.0; x.len()];
            unary(isa, UnaryOp::Log, &x, &mut out).unwrap();
            assert_close(&format!("{isa} ln"), &out, &want, 2e-7, 1e-7);
        }
    }

    #[test]
    fn binary_matches_reference_with_broadcast() {
        for isa in Isa::supported() {
            for op in BINARY {
                for n in SIZES {
                    let a = data(n, 1, -4.0, 4.0);
                    let b = data(n, 2, 0.5, 4.0);
                    let s = [1.5f32];
                    for (aa, bb) in [(&a[..], &b[..]), (&s[..], &b[..]), (&a[..], &s[..]), (&s[..], &s[..])] {
                        let mut out = vec![0.0; n];
                        binary(isa, op, aa, bb, &mut out).unwrap();
                        let at = |x: &[f32], i: usize| x[if x.len() == 1 { 0 } else { i }] as f64;
                        let want: Vec<f64> = (0..n).map(|i| op.reference(at(aa, i), at(bb, i))).collect();
                        let what = format!("{isa} {op:?} n={n} a={} b={}", aa.len(), bb.len());
                        assert_close(&what, &out, &want, 1e-6, 0.0);
                    }
                }
            }
        }
    }

    #[test]
    fn max_and_min_propagate_nan_from_either_side() {
        for isa in Isa::supported() {
            for op in [BinaryOp::Max, BinaryOp::Min] {
                let a = [f32::NAN, 1.0, f32::NAN, 2.0];
                let b = [1.0, f32::NAN, f32::NAN, 3.0];
                let mut out = [0.0; 4];
                binary(isa, op, &a, &b, &mut out).unwrap();
                assert!(out[..3].iter().all(|v| v.is_nan()), "{isa} {op:?}: {out:?}");
                assert_eq!(out[3], if op == BinaryOp::Max { 3.0 } else { 2.0 });
            }
        }
    }

    #[test]
    fn scale_add_matches_reference() {
        for isa in Isa::supported() {
            for n in SIZES {
                let x = data(n, 3, -1.0, 1.0);
                let mut y = data(n, 4, -1.0, 1.0);
                let want: Vec<f64> = x.iter().zip(&y).map(|(&x, &y)| y as f64 + 0.3 * x as f64).collect();
                scale_add(isa, 0.3, &x, &mut y).unwrap();
                assert_close(&format!("{isa} n={n}"), &y, &want, 1e-6, 1e-7);
            }
        }
    }

    #[test]
    fn large_inputs_are_thread_count_independent() {
        let x = data(100_003, 5, -3.0, 3.0);
        for isa in Isa::supported() {
            let runs = in_pools(&[1, 2], || {
                let mut out = vec![0.0; x.len()];
                unary(isa, UnaryOp::Gelu, &x, &mut out).unwrap();
                bits(&out)
            });
            assert_eq!(runs[0], runs[1], "{isa}");
        }
    }

    #[test]
    fn length_mismatches_are_errors() {
        let isa = Isa::active();
        let err = unary(isa, UnaryOp::Exp, &[1.0; 3], &mut [0.0; 4]).unwrap_err();
        assert_eq!(err.to_string(), "unary: shape mismatch: Exp: x has 3 elements, out has 4");
        let err = binary(isa, BinaryOp::Add, &[1.0; 3], &[1.0; 2], &mut [0.0; 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "binary: shape mismatch: Add: a has 3 elements, b has 2, out has 3 (each input needs 3 or 1)"
        );
        let err = scale_add(isa, 1.0, &[1.0; 2], &mut [0.0; 5]).unwrap_err();
        assert_eq!(err.to_string(), "scale_add: shape mismatch: x has 2 elements, y has 5");
    }
}
