//! Softmax and log-softmax over the rows of a contiguous `[rows, cols]` array.
//!
//! Numerically stable: each row's maximum is subtracted before exponentiating, so no `e^x`
//! overflows, and log-softmax is computed as `(x - max) - ln Σ e^{x - max}` without ever taking
//! the log of a rounded probability. A NaN in a row makes the whole row NaN, as do `+inf` and an
//! all-`-inf` row (as in PyTorch). Rows split over rayon in fixed chunks; a row's sum never
//! splits, so results are bit-identical for any thread count.

use crate::error::{check_matrix, KernelError, Result};
use crate::lanes::{self, lane_fn};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::for_row_chunks;
use crate::Isa;

/// `x` and `out` are `[rows, cols]`: `out[r, j] = e^{x[r, j]} / Σ_k e^{x[r, k]}`.
///
/// ```
/// use elide_kernels::{softmax_rows, Isa};
/// let x = [0.0, 0.0, 1000.0, 1000.0];
/// let mut p = [0.0; 4];
/// softmax_rows(Isa::active(), &x, 2, 2, &mut p)?;
/// assert_eq!(p, [0.5; 4]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if `x` or `out` does not hold `rows × cols` elements;
/// [`KernelError::Argument`] if `cols == 0`.
pub fn softmax_rows(isa: Isa, x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    run("softmax_rows", false, isa, x, rows, cols, out)
}

/// `x` and `out` are `[rows, cols]`: `out[r, j] = x[r, j] - ln Σ_k e^{x[r, k]}`.
///
/// # Errors
/// [`KernelError::Shape`] if `x` or `out` does not hold `rows × cols` elements;
/// [`KernelError::Argument`] if `cols == 0`.
pub fn log_softmax_rows(isa: Isa, x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    run("log_softmax_rows", true, isa, x, rows, cols, out)
}

fn run(op: &'static str, log: bool, isa: Isa, x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    if cols == 0 {
        return Err(KernelError::Argument {
            op,
            detail: format!("cols is 0 (x is [{rows}, 0]): a softmax needs a class"),
        });
    }
    check_matrix(op, "x", x.len(), rows, cols)?;
    check_matrix(op, "out", out.len(), rows, cols)?;
    for_row_chunks(out, cols, cols, |row0, out| {
        let x = &x[row0 * cols..row0 * cols + out.len()];
        with_simd(isa, SoftmaxTask { log, x, cols, out });
    });
    Ok(())
}

/// Softmax (or log-softmax) of each `cols`-long row of `x` into `out`.
struct SoftmaxTask<'a> {
    log: bool,
    x: &'a [f32],
    cols: usize,
    out: &'a mut [f32],
}

impl SimdTask for SoftmaxTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        for (x, out) in self.x.chunks_exact(self.cols).zip(self.out.chunks_exact_mut(self.cols)) {
            if self.log {
                log_softmax_row(s, x, out);
            } else {
                softmax_row(s, x, out);
            }
        }
    }
}

#[inline(always)]
pub(crate) fn softmax_row<S: Simd>(s: S, x: &[f32], out: &mut [f32]) {
    let max = lanes::max(s, x);
    lanes::map(s, x, out, ExpShifted { max });
    let factor = 1.0 / lanes::sum(s, out);
    lanes::map_in_place(s, out, lanes::Scale { factor });
}

#[inline(always)]
fn log_softmax_row<S: Simd>(s: S, x: &[f32], out: &mut [f32]) {
    let max = lanes::max(s, x);
    // Padding the tail with -inf adds e^{-inf} = 0 exactly (`exp_ieee` flushes to zero).
    let sum = lanes::fold(s, x, f32::NEG_INFINITY, s.splat(0.0), AddExpShifted { max }, lanes::Add {});
    let log_sum = s.reduce_sum(sum).ln();
    lanes::map(s, x, out, LogSoftmax { max, log_sum });
}

lane_fn!(/** `e^{v - max}`. */ ExpShifted { max: f32 } = |s, v| lanes::exp_ieee(s, s.sub(v, s.splat(max))));
lane_fn!(
    /** `acc + e^{v - max}`. */
    AddExpShifted { max: f32 } = |s, acc, v| s.add(acc, lanes::exp_ieee(s, s.sub(v, s.splat(max))))
);
lane_fn!(
    /** `(v - max) - log_sum`. */
    LogSoftmax { max: f32, log_sum: f32 } = |s, v| s.sub(s.sub(v, s.splat(max)), s.splat(log_sum))
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, bits, data, in_pools, SHAPES};

    fn reference(x: &[f32], cols: usize, log: bool) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(cols) {
            let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let sum: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            out.extend(row.iter().map(|&v| if log { v as f64 - m - sum.ln() } else { (v as f64 - m).exp() / sum }));
        }
        out
    }

    #[test]
    fn matches_reference_on_every_path() {
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES {
                // e^{x - max} inherits the rounding of x - max (|x - max|·6e-8 relative), so a
                // 2e-6 tolerance holds for a spread of about 10.
                let x = data(rows * cols, (rows * 7 + cols) as u64, -5.0, 5.0);
                let mut out = vec![f32::NAN; rows * cols];
                softmax_rows(isa, &x, rows, cols, &mut out).unwrap();
                assert_close(&format!("{isa} softmax {rows}x{cols}"), &out, &reference(&x, cols, false), 2e-6, 0.0);
                log_softmax_rows(isa, &x, rows, cols, &mut out).unwrap();
                let want = reference(&x, cols, true);
                assert_close(&format!("{isa} log_softmax {rows}x{cols}"), &out, &want, 2e-6, 2e-6);
            }
        }
    }

    #[test]
    fn extreme_rows_stay_finite_and_nan_rows_are_nan() {
        for isa in Isa::supported() {
            let x = [1e30, 0.0, -1e30, f32::NEG_INFINITY, 1.0, f32::NAN, 2.0, 3.0];
            let mut out = [0.0; 8];
            softmax_rows(isa, &x, 2, 4, &mut out).unwrap();
            assert_eq!(out[..4], [1.0, 0.0, 0.0, 0.0], "{isa}");
            assert!(out[4..].iter().all(|v| v.is_nan()), "{isa}: {out:?}");
            log_softmax_rows(isa, &x, 2, 4, &mut out).unwrap();
            assert_eq!(out[..4], [0.0, -1e30, -2e30, f32::NEG_INFINITY], "{isa}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let isa = Isa::active();
        let err = softmax_rows(isa, &[], 3, 0, &mut []).unwrap_err();
        assert_eq!(err.to_string(), "softmax_rows: cols is 0 (x is [3, 0]): a softmax needs a class");
        let err = log_softmax_rows(isa, &[0.0; 5], 2, 3, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "log_softmax_rows: shape mismatch: x has 5 elements, expected [2, 3]");
        let err = softmax_rows(isa, &[0.0; 6], 2, 3, &mut [0.0; 7]).unwrap_err();
        assert_eq!(err.to_string(), "softmax_rows: shape mismatch: out has 7 elements, expected [2, 3]");
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let x = data(300 * 1000, 11, -5.0, 5.0);
        for isa in Isa::supported() {
            let runs = in_pools(&[1, 2], || {
                let mut out = vec![0.0; x.len()];
                softmax_rows(isa, &x, 300, 1000, &mut out).unwrap();
                let mut log = vec![0.0; x.len()];
                log_softmax_rows(isa, &x, 300, 1000, &mut log).unwrap();
                (bits(&out), bits(&log))
            });
            assert_eq!(runs[0], runs[1], "{isa}");
        }
    }
}
