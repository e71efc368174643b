//! Row gather and scatter-add through an index list: how a conditional layer moves the rows it
//! routes when the GEMM's own gathered/scattered views do not apply (embedding lookups, the
//! combine of a mixture-of-experts, the backward of a gather).
//!
//! Indices are all checked before anything is written, so a bad index leaves the output as it
//! was. Scatter-add applies duplicate indices in index order; it splits over rayon by column
//! ranges, each thread walking the whole index list, so the order of the additions into any
//! element is the same for every thread count.

use crate::error::{check_matrix, KernelError, Result};
use crate::lanes;
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::{for_row_chunks, SendPtr, ROWWISE_PAR_MIN};
use crate::Isa;
use rayon::prelude::*;

/// Columns per rayon task of a scatter-add: 2 KiB of each row, enough for the prefetcher to stream.
const SCATTER_COLS: usize = 512;

/// `src` is `[src_rows, cols]`, `index` is `[n]`, `out` is `[n, cols]`:
/// `out[i, :] = src[index[i], :]`.
///
/// ```
/// use elide_kernels::{gather_rows, Isa};
/// let table = [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]; // 3 rows of 2
/// let mut out = [0.0; 6];
/// gather_rows(Isa::active(), &table, 3, 2, &[2, 0, 2], &mut out)?;
/// assert_eq!(out, [2.0, 2.0, 0.0, 0.0, 2.0, 2.0]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if `src` or `out` has the wrong length; [`KernelError::Index`] for the
/// first index `>= src_rows` (nothing is written then).
pub fn gather_rows(isa: Isa, src: &[f32], src_rows: usize, cols: usize, index: &[u32], out: &mut [f32]) -> Result<()> {
    const OP: &str = "gather_rows";
    // A row copy is a memcpy, already as fast as the CPU allows on every instruction set.
    let _ = isa;
    check_matrix(OP, "src", src.len(), src_rows, cols)?;
    check_matrix(OP, "out", out.len(), index.len(), cols)?;
    check_indices(OP, index, src_rows)?;
    for_row_chunks(out, cols, cols, |row0, out| {
        for (row, &i) in out.chunks_exact_mut(cols).zip(&index[row0..]) {
            let i = i as usize;
            row.copy_from_slice(&src[i * cols..(i + 1) * cols]);
        }
    });
    Ok(())
}

/// `src` is `[n, cols]`, `index` is `[n]`, `dst` is `[dst_rows, cols]`:
/// `dst[index[i], :] += src[i, :]` for `i = 0, 1, ..., n-1` in that order (duplicates add up).
///
/// ```
/// use elide_kernels::{scatter_add_rows, Isa};
/// let mut dst = [0.0; 4]; // 2 rows of 2
/// scatter_add_rows(Isa::active(), &[1.0, 2.0, 10.0, 20.0], &[1, 1], &mut dst, 2, 2)?;
/// assert_eq!(dst, [0.0, 0.0, 11.0, 22.0]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if `src` or `dst` has the wrong length; [`KernelError::Index`] for the
/// first index `>= dst_rows` (nothing is written then).
pub fn scatter_add_rows(
    isa: Isa,
    src: &[f32],
    index: &[u32],
    dst: &mut [f32],
    dst_rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "scatter_add_rows";
    check_matrix(OP, "src", src.len(), index.len(), cols)?;
    check_matrix(OP, "dst", dst.len(), dst_rows, cols)?;
    check_indices(OP, index, dst_rows)?;
    if cols == 0 || index.is_empty() {
        return Ok(());
    }
    if index.len() * cols < ROWWISE_PAR_MIN || cols <= SCATTER_COLS || rayon::current_num_threads() < 2 {
        with_simd(isa, ScatterTask { src, index, dst: SendPtr(dst.as_mut_ptr()), cols, col0: 0, width: cols });
        return Ok(());
    }
    let dst = SendPtr(dst.as_mut_ptr());
    (0..cols.div_ceil(SCATTER_COLS)).into_par_iter().for_each(|t| {
        let col0 = t * SCATTER_COLS;
        let width = SCATTER_COLS.min(cols - col0);
        with_simd(isa, ScatterTask { src, index, dst, cols, col0, width });
    });
    Ok(())
}

fn check_indices(op: &'static str, index: &[u32], rows: usize) -> Result<()> {
    match index.iter().position(|&i| i as usize >= rows) {
        None => Ok(()),
        Some(position) => {
            Err(KernelError::Index { op, index: index[position] as u64, position, bound: rows, note: String::new() })
        }
    }
}

/// Columns `col0..col0 + width` of a scatter-add, walking the whole index list in order.
/// `dst` points at a `[dst_rows, cols]` buffer, every `index` is `< dst_rows`, and no other
/// thread touches these columns while the task runs (checked by `scatter_add_rows`).
struct ScatterTask<'a> {
    src: &'a [f32],
    index: &'a [u32],
    dst: SendPtr,
    cols: usize,
    col0: usize,
    width: usize,
}

impl SimdTask for ScatterTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let cols = self.col0..self.col0 + self.width;
        for (src_row, &d) in self.src.chunks_exact(self.cols).zip(self.index) {
            // SAFETY: `scatter_add_rows` checked `dst` holds `dst_rows × cols` floats and
            // `d < dst_rows`, and `cols` lies within `0..self.cols`, so the slice is in bounds.
            // Tasks running at once own disjoint column ranges, and within a task this is the
            // only live reference into `dst`, so nothing aliases it.
            let dst_row = unsafe {
                std::slice::from_raw_parts_mut(self.dst.0.add(d as usize * self.cols + cols.start), self.width)
            };
            lanes::zip_in_place(s, dst_row, &src_row[cols.clone()], lanes::Add {});
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, bits, data, in_pools, SIZES};

    #[test]
    fn gather_copies_the_indexed_rows() {
        for isa in Isa::supported() {
            for cols in SIZES {
                let src = data(5 * cols, cols as u64, -1.0, 1.0);
                let index = [4u32, 0, 4, 2, 1, 3, 3];
                let mut out = vec![f32::NAN; index.len() * cols];
                gather_rows(isa, &src, 5, cols, &index, &mut out).unwrap();
                for (i, &r) in index.iter().enumerate() {
                    let r = r as usize;
                    assert_eq!(&out[i * cols..(i + 1) * cols], &src[r * cols..(r + 1) * cols], "{isa} cols={cols}");
                }
            }
        }
    }

    fn scatter_reference(src: &[f32], index: &[u32], dst: &[f32], cols: usize) -> Vec<f64> {
        let mut want: Vec<f64> = dst.iter().map(|&v| v as f64).collect();
        for (row, &d) in src.chunks(cols).zip(index) {
            for (j, &v) in row.iter().enumerate() {
                want[d as usize * cols + j] += v as f64;
            }
        }
        want
    }

    #[test]
    fn scatter_add_accumulates_duplicates() {
        for isa in Isa::supported() {
            for cols in SIZES {
                let index = [1u32, 3, 1, 0, 1, 3];
                let src = data(index.len() * cols, cols as u64, -1.0, 1.0);
                let mut dst = data(4 * cols, 7, -1.0, 1.0);
                let want = scatter_reference(&src, &index, &dst, cols);
                scatter_add_rows(isa, &src, &index, &mut dst, 4, cols).unwrap();
                assert_close(&format!("{isa} cols={cols}"), &dst, &want, 1e-6, 1e-6);
            }
        }
    }

    #[test]
    fn scatter_add_does_not_depend_on_thread_count() {
        let (n, cols, dst_rows) = (300, 1000, 50);
        let src = data(n * cols, 3, -1.0, 1.0);
        let index: Vec<u32> = (0..n as u32).map(|i| (i * 7 + i / 3) % dst_rows as u32).collect();
        let dst0 = data(dst_rows * cols, 4, -1.0, 1.0);
        for isa in Isa::supported() {
            let runs = in_pools(&[1, 2], || {
                let mut dst = dst0.clone();
                scatter_add_rows(isa, &src, &index, &mut dst, dst_rows, cols).unwrap();
                bits(&dst)
            });
            assert_eq!(runs[0], runs[1], "{isa}");
            let got: Vec<f32> = runs[0].iter().map(|&b| f32::from_bits(b)).collect();
            assert_close(&format!("{isa}"), &got, &scatter_reference(&src, &index, &dst0, cols), 1e-5, 1e-5);
        }
    }

    #[test]
    fn bad_indices_and_shapes_are_errors() {
        let isa = Isa::active();
        let src = [0.0; 6];
        let mut out = [1.0; 6];
        let err = gather_rows(isa, &src, 3, 2, &[0, 1, 3], &mut out).unwrap_err();
        assert_eq!(err.to_string(), "gather_rows: index 3 at position 2 is out of range for 3 rows");
        assert_eq!(out, [1.0; 6], "nothing written");
        let err = gather_rows(isa, &src, 3, 2, &[0, 1], &mut out).unwrap_err();
        assert_eq!(err.to_string(), "gather_rows: shape mismatch: out has 6 elements, expected [2, 2]");
        let err = scatter_add_rows(isa, &src, &[0, 9, 1], &mut out, 3, 2).unwrap_err();
        assert_eq!(err.to_string(), "scatter_add_rows: index 9 at position 1 is out of range for 3 rows");
        assert_eq!(out, [1.0; 6], "nothing written");
        let err = scatter_add_rows(isa, &src, &[0, 1], &mut out, 3, 2).unwrap_err();
        assert_eq!(err.to_string(), "scatter_add_rows: shape mismatch: src has 6 elements, expected [2, 2]");
        let err = scatter_add_rows(isa, &src, &[0, 1, 2], &mut out, 4, 2).unwrap_err();
        assert_eq!(err.to_string(), "scatter_add_rows: shape mismatch: dst has 6 elements, expected [4, 2]");
    }

    #[test]
    fn zero_columns_or_no_indices_are_no_ops() {
        let mut dst: [f32; 0] = [];
        scatter_add_rows(Isa::active(), &[], &[0, 1], &mut dst, 2, 0).unwrap();
        let mut dst = [1.0f32; 4];
        scatter_add_rows(Isa::active(), &[], &[], &mut dst, 2, 2).unwrap();
        assert_eq!(dst, [1.0; 4]);
    }
}
