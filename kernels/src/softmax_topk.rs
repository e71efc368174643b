//! A token-choice router's scores and selection in one pass over its `[rows, cols]` logits:
//! each row is checked for NaN and infinities, its softmax written, and the top k of that
//! softmax taken while the row is still in L1.
//!
//! The three steps are [`softmax_rows`](crate::softmax_rows), [`topk_rows`](crate::topk_rows)
//! of its output and a finiteness check, and for finite logits give the same bits: this module
//! calls the same per-row code. As three calls they were three passes over the rows, three
//! rounds of waking the worker threads and a scan on one thread; `elide bench moe` times both
//! ways side by side on a 64-expert router's 4096 rows (`router_softmax_topk_fused_speedup`:
//! 1.24–1.37× on 2 threads, wall clock).

use crate::error::{check_matrix, KernelError, Result};
use crate::lanes::{self, lane_fn};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::softmax::softmax_row;
use crate::threading::{ROWWISE_CHUNK, ROWWISE_PAR_MIN};
use crate::topk::{check, RowTopk};
use crate::Isa;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering as Atomic};

/// `logits` and `probs` are `[rows, cols]`, `values` and `indices` `[rows, k]`:
/// `probs = softmax(logits)` row by row, and each row's `k` largest probabilities, best first,
/// with their columns (ties to the lower column). For finite logits the results are
/// bit-identical to [`softmax_rows`](crate::softmax_rows) followed by
/// [`topk_rows`](crate::topk_rows) of `probs`.
///
/// ```
/// use elide_kernels::{softmax_topk_rows, Isa};
/// let logits = [0.0, 2.0, 1.0, 2.0];
/// let (mut probs, mut top, mut cols) = ([0.0; 4], [0.0; 2], [0u32; 2]);
/// softmax_topk_rows(Isa::active(), &logits, 1, 4, 2, &mut probs, &mut top, &mut cols)?;
/// assert_eq!(cols, [1, 3]);
/// assert_eq!(top, [probs[1], probs[3]]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if a slice has the wrong length; [`KernelError::Argument`] if
/// `cols == 0`, `k == 0`, `k > cols`, column indices do not fit `u32`, or a row holds a NaN or an
/// infinity (naming the first such row; the outputs may then be partly written).
#[allow(clippy::too_many_arguments)] // one input, three outputs and their shape
pub fn softmax_topk_rows(
    isa: Isa,
    logits: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
    probs: &mut [f32],
    values: &mut [f32],
    indices: &mut [u32],
) -> Result<()> {
    const OP: &str = "softmax_topk_rows";
    check(OP, logits, rows, cols, k)?;
    check_matrix(OP, "probs", probs.len(), rows, cols)?;
    check_matrix(OP, "values", values.len(), rows, k)?;
    check_matrix(OP, "indices", indices.len(), rows, k)?;
    let first_bad = AtomicUsize::new(usize::MAX);
    let chunk = |row0: usize, probs: &mut [f32], values: &mut [f32], indices: &mut [u32]| {
        let logits = &logits[row0 * cols..row0 * cols + probs.len()];
        if let Some(r) = with_simd(isa, SoftmaxTopkTask { logits, cols, k, probs, values, indices }) {
            first_bad.fetch_min(row0 + r, Atomic::Relaxed);
        }
    };
    if rows < 2 || logits.len() < ROWWISE_PAR_MIN || rayon::current_num_threads() < 2 {
        chunk(0, probs, values, indices);
    } else {
        let rows_per_chunk = (ROWWISE_CHUNK / cols).max(1);
        let outs = probs
            .par_chunks_mut(rows_per_chunk * cols)
            .zip(values.par_chunks_mut(rows_per_chunk * k))
            .zip(indices.par_chunks_mut(rows_per_chunk * k));
        outs.enumerate().for_each(|(c, ((p, v), i))| chunk(c * rows_per_chunk, p, v, i));
    }
    match first_bad.into_inner() {
        usize::MAX => Ok(()),
        row => Err(KernelError::Argument { op: OP, detail: format!("row {row} holds a NaN or an infinity") }),
    }
}

/// Rows of [`softmax_topk_rows`]; stops at the first row holding a NaN or an infinity and
/// returns its position.
struct SoftmaxTopkTask<'a> {
    logits: &'a [f32],
    cols: usize,
    k: usize,
    probs: &'a mut [f32],
    values: &'a mut [f32],
    indices: &'a mut [u32],
}

impl SimdTask for SoftmaxTopkTask<'_> {
    type Output = Option<usize>;
    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> Option<usize> {
        let k = self.k;
        let mut select = RowTopk::new();
        let rows = self.logits.chunks_exact(self.cols).zip(self.probs.chunks_exact_mut(self.cols));
        let outs = self.values.chunks_exact_mut(k).zip(self.indices.chunks_exact_mut(k));
        for (r, ((x, p), (values, indices))) in rows.zip(outs).enumerate() {
            // `v - v` is 0 for a finite v and NaN for NaN or ±∞, so the sum is NaN iff one is.
            if s.reduce_sum(lanes::fold(s, x, 0.0, s.splat(0.0), AddSelfDifference {}, lanes::Add {})).is_nan() {
                return Some(r);
            }
            softmax_row(s, x, p);
            // Finite logits give probabilities in [0, 1], never NaN.
            if !select.row(s, p, values, indices) {
                return Some(r);
            }
        }
        None
    }
}

lane_fn!(/** `acc + (v − v)`. */ AddSelfDifference {} = |s, acc, v| s.add(acc, s.sub(v, v)));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bits, data, in_pools, SHAPES};
    use crate::{softmax_rows, topk_rows};

    /// The three steps the fused kernel replaces: softmax, then top-k of the probabilities.
    fn separate(isa: Isa, x: &[f32], rows: usize, cols: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
        let mut probs = vec![0.0; rows * cols];
        softmax_rows(isa, x, rows, cols, &mut probs).unwrap();
        let (mut values, mut indices) = (vec![0.0; rows * k], vec![0; rows * k]);
        topk_rows(isa, &probs, rows, cols, k, &mut values, &mut indices).unwrap();
        (probs, values, indices)
    }

    fn fused(isa: Isa, x: &[f32], rows: usize, cols: usize, k: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<u32>)> {
        let (mut probs, mut values, mut indices) =
            (vec![f32::NAN; rows * cols], vec![f32::NAN; rows * k], vec![0; rows * k]);
        softmax_topk_rows(isa, x, rows, cols, k, &mut probs, &mut values, &mut indices)?;
        Ok((probs, values, indices))
    }

    /// A naive top-k: a stable sort of the row by descending value.
    fn reference_topk(row: &[f32], k: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        order.truncate(k);
        order
    }

    #[test]
    fn matches_the_separate_kernels_bit_for_bit_on_every_path() {
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES.into_iter().chain([(300, 64), (2, 1000)]) {
                for k in [1, 2, 3, 4, 7, 65].into_iter().filter(|&k| k <= cols) {
                    // Coarse logits make tied probabilities: the ties must go the same way.
                    let smooth = data(rows * cols, (cols + k) as u64, -4.0, 4.0);
                    let coarse: Vec<f32> = smooth.iter().map(|v| v.floor()).collect();
                    for x in [smooth, coarse] {
                        let (probs, values, indices) = fused(isa, &x, rows, cols, k).unwrap();
                        let want = separate(isa, &x, rows, cols, k);
                        let what = format!("{isa} {rows}x{cols} k={k}");
                        assert_eq!(bits(&probs), bits(&want.0), "{what} probs");
                        assert_eq!(bits(&values), bits(&want.1), "{what} values");
                        assert_eq!(indices, want.2, "{what} indices");
                        for (r, row) in probs.chunks(cols).enumerate() {
                            assert_eq!(&indices[r * k..(r + 1) * k], &reference_topk(row, k)[..], "{what} row {r}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bit_identical_on_one_and_two_threads() {
        let (rows, cols, k) = (1500, 64, 2);
        let x = data(rows * cols, 5, -3.0, 3.0);
        for isa in Isa::supported() {
            let runs = in_pools(&[1, 2], || {
                let (p, v, i) = fused(isa, &x, rows, cols, k).unwrap();
                (bits(&p), bits(&v), i)
            });
            assert!(runs[0] == runs[1], "{isa}");
        }
    }

    #[test]
    fn extreme_and_long_rows_match_the_separate_kernels() {
        // Finite extremes whose differences overflow to -inf inside the softmax; rows whose
        // probabilities underflow to exactly 0, so the top k includes ties at 0 (lowest columns
        // first); a row longer than the per-lane top-k takes (1024) with k <= 4.
        let mut extreme = vec![0.0f32; 2 * 9];
        extreme[..3].copy_from_slice(&[f32::MAX, -f32::MAX, 0.0]);
        extreme[9..12].copy_from_slice(&[-f32::MAX, 1e30, -1e30]);
        let long = data(3 * 1500, 9, -2.0, 2.0);
        for isa in Isa::supported() {
            for (x, cols) in [(&extreme, 9), (&long, 1500)] {
                let rows = x.len() / cols;
                for k in [1, 2, 4, 5] {
                    let (probs, values, indices) = fused(isa, x, rows, cols, k).unwrap();
                    let want = separate(isa, x, rows, cols, k);
                    assert_eq!(
                        (bits(&probs), bits(&values), &indices),
                        (bits(&want.0), bits(&want.1), &want.2),
                        "{isa} {cols} k={k}"
                    );
                    assert!(probs.iter().all(|p| p.is_finite()), "{isa} {cols} k={k}");
                }
            }
            let (_, values, indices) = fused(isa, &extreme, 2, 9, 4).unwrap();
            // Every probability but the maximum's underflows to 0: the rest go by column.
            assert_eq!(&indices[..4], &[0, 1, 2, 3], "{isa}");
            assert_eq!(&values[..4], &[1.0, 0.0, 0.0, 0.0], "{isa}");
            assert_eq!(&indices[4..], &[1, 0, 2, 3], "{isa}");
        }
    }

    #[test]
    fn non_finite_logits_are_an_error_naming_the_first_row() {
        let (rows, cols) = (1200, 64);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = data(rows * cols, 2, -1.0, 1.0);
            x[900 * cols + 63] = bad;
            x[17 * cols + 5] = bad;
            for isa in Isa::supported() {
                // Two threads split the rows into chunks: the lowest bad row still wins.
                for err in in_pools(&[1, 2], || fused(isa, &x, rows, cols, 2).unwrap_err()) {
                    assert_eq!(err.to_string(), "softmax_topk_rows: row 17 holds a NaN or an infinity", "{isa} {bad}");
                }
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let isa = Isa::active();
        let x = [0.0; 6];
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        let (mut p, mut v, mut i) = ([0.0; 6], [0.0; 4], [0u32; 4]);
        assert_eq!(
            msg(softmax_topk_rows(isa, &x, 2, 3, 0, &mut p, &mut [], &mut [])),
            "softmax_topk_rows: k is 0 (x is [2, 3])"
        );
        assert_eq!(
            msg(softmax_topk_rows(isa, &x, 2, 3, 2, &mut p[..5], &mut v, &mut i)),
            "softmax_topk_rows: shape mismatch: probs has 5 elements, expected [2, 3]"
        );
        assert_eq!(
            msg(softmax_topk_rows(isa, &x, 2, 3, 2, &mut p, &mut v, &mut i[..3])),
            "softmax_topk_rows: shape mismatch: indices has 3 elements, expected [2, 2]"
        );
    }
}
