//! What happens to a GEMM result on its way into C: bias, activation, per-row scale.
//!
//! The math is `C ← accum(C, scale_i · act(alpha · (A·B)_ij + bias_j))`, fused into the store of
//! each register tile while it is still in L1, so a bias or GELU costs no extra pass over C.

use crate::simd::Simd;

/// How the result meets what is already in C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Accum {
    /// `C ← result` (C's previous contents are never read).
    #[default]
    Replace,
    /// `C ← C + result`.
    Add,
}

/// An elementwise activation fused into the GEMM store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    /// No activation.
    #[default]
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// GELU, tanh form: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (arXiv 1606.08415).
    Gelu,
    /// GELU, exact erf form: `x·Φ(x) = 0.5·x·(1 + erf(x/√2))` (arXiv 1606.08415; PyTorch's
    /// default `F.gelu`). Differs from the tanh form by up to about 5e-4.
    GeluErf,
    /// SiLU / swish: `x·σ(x)` (arXiv 1702.03118).
    Silu,
}

/// The epilogue of a GEMM: `scale_i · act(alpha·(A·B)_ij + bias_j)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added to every row (length `n`).
    pub bias: Option<&'a [f32]>,
    /// Applied after the bias.
    pub activation: Activation,
    /// Multiplies row `i` after the activation (length `m`), e.g. a mixture-of-experts gate.
    pub row_scale: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// True when the epilogue leaves the product unchanged.
    pub fn is_identity(&self) -> bool {
        self.bias.is_none() && self.activation == Activation::Identity && self.row_scale.is_none()
    }
}

/// `√(2/π)`, the GELU tanh-form constant (shared with the derivative in `activation_grad.rs`).
pub(crate) const GELU_C: f32 = 0.797_884_6;
/// The cubic coefficient of the GELU tanh form.
pub(crate) const GELU_A: f32 = 0.044_715;

impl Activation {
    /// Applies the activation to a vector of lanes.
    #[inline(always)]
    pub(crate) fn apply_simd<S: Simd>(self, s: S, x: S::V) -> S::V {
        match self {
            Activation::Identity => x,
            Activation::Relu => s.max(x, s.splat(0.0)),
            Activation::Gelu => {
                let x3 = s.mul(s.mul(x, x), x);
                let inner = s.mul(s.splat(GELU_C), s.mul_add(s.splat(GELU_A), x3, x));
                let half_x = s.mul(s.splat(0.5), x);
                s.mul_add(half_x, s.tanh(inner), half_x)
            }
            Activation::GeluErf => {
                let half_x = s.mul(s.splat(0.5), x);
                s.mul_add(half_x, s.erf(s.mul(x, s.splat(std::f32::consts::FRAC_1_SQRT_2))), half_x)
            }
            Activation::Silu => s.mul(x, s.sigmoid(x)),
        }
    }

    /// The scalar definition, in f64: the reference the vector code is tested against.
    pub fn reference(self, x: f64) -> f64 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::Gelu => {
                0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// `row[j] ← scale · act(row[j] + bias[j])` for `j < len`, in place, vectorised; a partial last
/// vector is loaded and stored masked ([`Simd::load_first`]), so every element takes the same
/// arithmetic.
///
/// # Safety
/// `row` must be valid for reading and writing `len` floats, and `bias` (if any) for reading
/// `len` floats.
#[inline(always)]
pub(crate) unsafe fn finish_row<S: Simd>(
    s: S,
    row: *mut f32,
    len: usize,
    bias: Option<*const f32>,
    act: Activation,
    scale: Option<f32>,
) {
    let lanes = S::LANES;
    // A nested fn, not a closure: closures do not inherit the caller's target features.
    #[inline(always)]
    fn apply<S: Simd>(s: S, v: S::V, b: Option<S::V>, act: Activation, scale: Option<f32>) -> S::V {
        let v = match b {
            Some(b) => s.add(v, b),
            None => v,
        };
        let v = act.apply_simd(s, v);
        match scale {
            Some(sc) => s.mul(v, s.splat(sc)),
            None => v,
        }
    }
    let mut j = 0;
    while j + lanes <= len {
        // SAFETY: j + lanes <= len, within the caller's guarantee.
        unsafe {
            let b = bias.map(|b| s.load(b.add(j)));
            s.store(row.add(j), apply(s, s.load(row.add(j)), b, act, scale));
        }
        j += lanes;
    }
    if j < len {
        let rest = len - j;
        // SAFETY: `rest` < lanes elements remain readable/writable at `row + j` (and readable
        // at `bias + j`), within the caller's guarantee.
        unsafe {
            let b = bias.map(|b| s.load_first(b.add(j), rest, 0.0));
            let v = apply(s, s.load_first(row.add(j), rest, 0.0), b, act, scale);
            s.store_first(row.add(j), rest, v);
        }
    }
}
