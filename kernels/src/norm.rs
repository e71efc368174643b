//! Row normalisations of a contiguous `[rows, cols]` array: RMSNorm (arXiv 1910.07467) and
//! LayerNorm (arXiv 1607.06450), each with an optional per-column weight (and bias).
//!
//! Row statistics are reduced in a fixed lane-wise order within the row; rows split over rayon
//! in fixed chunks, so results are bit-identical for any thread count. LayerNorm takes the
//! variance in a second pass over the centred row, which stays accurate when the mean is large.

use crate::error::{check_matrix, KernelError, Result};
use crate::lanes::{self, lane_fn};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::for_row_chunks;
use crate::Isa;

/// `x` and `out` are `[rows, cols]`, `weight` is `[cols]`:
/// `out[r, j] = x[r, j] / √(mean_k x[r, k]² + eps) · weight[j]`.
///
/// ```
/// use elide_kernels::{rms_norm_rows, Isa};
/// let x = [3.0, 4.0]; // mean square 12.5
/// let mut y = [0.0; 2];
/// rms_norm_rows(Isa::active(), &x, 1, 2, Some(&[1.0, 2.0]), 0.0, &mut y)?;
/// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6 && (y[1] - 8.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if `x`, `out` or `weight` has the wrong length;
/// [`KernelError::Argument`] if `cols == 0` or `eps` is negative or not finite.
pub fn rms_norm_rows(
    isa: Isa,
    x: &[f32],
    rows: usize,
    cols: usize,
    weight: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    check("rms_norm_rows", x, rows, cols, weight, None, eps, out)?;
    for_row_chunks(out, cols, cols, |row0, out| {
        let x = &x[row0 * cols..row0 * cols + out.len()];
        with_simd(isa, NormTask { kind: Kind::Rms, x, cols, weight, bias: None, eps, out });
    });
    Ok(())
}

/// `x` and `out` are `[rows, cols]`, `weight` and `bias` are `[cols]`:
/// `out[r, j] = (x[r, j] - μ_r) / √(σ²_r + eps) · weight[j] + bias[j]`, with the biased
/// variance `σ²_r = mean_k (x[r, k] - μ_r)²` (as PyTorch).
///
/// # Errors
/// [`KernelError::Shape`] if `x`, `out`, `weight` or `bias` has the wrong length;
/// [`KernelError::Argument`] if `cols == 0` or `eps` is negative or not finite.
#[allow(clippy::too_many_arguments)] // the signature the tensor layer is written against
pub fn layer_norm_rows(
    isa: Isa,
    x: &[f32],
    rows: usize,
    cols: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> Result<()> {
    check("layer_norm_rows", x, rows, cols, weight, bias, eps, out)?;
    for_row_chunks(out, cols, 2 * cols, |row0, out| {
        let x = &x[row0 * cols..row0 * cols + out.len()];
        with_simd(isa, NormTask { kind: Kind::Layer, x, cols, weight, bias, eps, out });
    });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check(
    op: &'static str,
    x: &[f32],
    rows: usize,
    cols: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    out: &[f32],
) -> Result<()> {
    if cols == 0 {
        return Err(KernelError::Argument {
            op,
            detail: format!("cols is 0 (x is [{rows}, 0]): nothing to normalise"),
        });
    }
    if !(eps >= 0.0 && eps.is_finite()) {
        return Err(KernelError::Argument { op, detail: format!("eps must be finite and >= 0, got {eps}") });
    }
    check_matrix(op, "x", x.len(), rows, cols)?;
    check_matrix(op, "out", out.len(), rows, cols)?;
    for (name, v) in [("weight", weight), ("bias", bias)] {
        if let Some(v) = v.filter(|v| v.len() != cols) {
            let detail = format!("{name} has {} elements, expected [{cols}]", v.len());
            return Err(KernelError::Shape { op, detail });
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rms,
    Layer,
}

/// Normalises each `cols`-long row of `x` into `out`.
struct NormTask<'a> {
    kind: Kind,
    x: &'a [f32],
    cols: usize,
    weight: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    eps: f32,
    out: &'a mut [f32],
}

impl SimdTask for NormTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let n = self.cols as f32;
        for (x, out) in self.x.chunks_exact(self.cols).zip(self.out.chunks_exact_mut(self.cols)) {
            let mean = match self.kind {
                Kind::Rms => 0.0,
                Kind::Layer => lanes::sum(s, x) / n,
            };
            // Σ (x - mean)², the tail padded with the mean so it adds exact zeros.
            let squares = lanes::fold(s, x, mean, s.splat(0.0), AddSquareCentred { mean }, lanes::Add {});
            let var = s.reduce_sum(squares) / n;
            let rstd = 1.0 / (var + self.eps).sqrt();
            lanes::map(s, x, out, Normalise { mean, rstd });
            if let Some(w) = self.weight {
                lanes::zip_in_place(s, out, w, lanes::Mul {});
            }
            if let Some(b) = self.bias {
                lanes::zip_in_place(s, out, b, lanes::Add {});
            }
        }
    }
}

lane_fn!(/** `acc + (v - mean)²`. */ AddSquareCentred { mean: f32 } = |s, acc, v| {
    let d = s.sub(v, s.splat(mean));
    s.mul_add(d, d, acc)
});
lane_fn!(
    /** `(v - mean) · rstd`. */
    Normalise { mean: f32, rstd: f32 } = |s, v| s.mul(s.sub(v, s.splat(mean)), s.splat(rstd))
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, data, SHAPES};

    fn reference(x: &[f32], cols: usize, layer: bool, w: Option<&[f32]>, b: Option<&[f32]>, eps: f64) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(cols) {
            let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let mean = if layer { row.iter().sum::<f64>() / cols as f64 } else { 0.0 };
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            out.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, v)| (v - mean) * rstd * w.map_or(1.0, |w| w[j] as f64) + b.map_or(0.0, |b| b[j] as f64)),
            );
        }
        out
    }

    #[test]
    fn matches_reference_on_every_path() {
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES {
                // An offset mean, to exercise LayerNorm's centring.
                let x = data(rows * cols, (rows + 3 * cols) as u64, 2.0, 6.0);
                let w = data(cols, 1, 0.5, 1.5);
                let b = data(cols, 2, -1.0, 1.0);
                let mut out = vec![f32::NAN; rows * cols];
                for (wt, bs) in [(None, None), (Some(&w[..]), None), (Some(&w[..]), Some(&b[..])), (None, Some(&b[..]))]
                {
                    let what = format!("{isa} {rows}x{cols} weight={} bias={}", wt.is_some(), bs.is_some());
                    layer_norm_rows(isa, &x, rows, cols, wt, bs, 1e-5, &mut out).unwrap();
                    let want = reference(&x, cols, true, wt, bs, 1e-5);
                    assert_close(&format!("layer_norm {what}"), &out, &want, 2e-6, 1e-6);
                    if bs.is_none() {
                        rms_norm_rows(isa, &x, rows, cols, wt, 1e-6, &mut out).unwrap();
                        let want = reference(&x, cols, false, wt, None, 1e-6);
                        assert_close(&format!("rms_norm {what}"), &out, &want, 1e-6, 0.0);
                    }
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let isa = Isa::active();
        let err = rms_norm_rows(isa, &[], 2, 0, None, 1e-6, &mut []).unwrap_err();
        assert_eq!(err.to_string(), "rms_norm_rows: cols is 0 (x is [2, 0]): nothing to normalise");
        let err = layer_norm_rows(isa, &[0.0; 6], 2, 3, None, None, -1.0, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "layer_norm_rows: eps must be finite and >= 0, got -1");
        let err = layer_norm_rows(isa, &[0.0; 6], 2, 3, None, Some(&[0.0; 2]), 1e-5, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "layer_norm_rows: shape mismatch: bias has 2 elements, expected [3]");
        let err = rms_norm_rows(isa, &[0.0; 6], 2, 3, Some(&[1.0; 4]), 1e-5, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "rms_norm_rows: shape mismatch: weight has 4 elements, expected [3]");
        let err = rms_norm_rows(isa, &[0.0; 6], 3, 3, None, 1e-5, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "rms_norm_rows: shape mismatch: x has 6 elements, expected [3, 3]");
    }
}
