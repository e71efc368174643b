//! Row gather and scatter-add through an index list: how a conditional layer moves the rows it
//! routes when the GEMM's own gathered/scattered views do not apply (embedding lookups, the
//! combine of a mixture-of-experts, the backward of a gather).
//!
//! Indices are all checked before anything is written, so a bad index leaves the output as it
//! was. Scatter-add applies duplicate indices in index order; it splits over rayon by column
//! ranges, each thread walking the whole index list, so the order of the additions into any
//! element is the same for every thread count.

use crate::error::{check_matrix, KernelError, Result};
use crate::gemm::Accum;
use crate::lanes;
use crate::simd::{with_simd, Simd, SimdTask, LINE_FLOATS};
use crate::threading::{for_row_chunks, SendPtr, ROWWISE_CHUNK, ROWWISE_PAR_MIN};
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

/// The rows of each group, scaled and summed: `src` is `[n, cols]`, group `t`'s rows are
/// `rows[start[t]..start[t + 1]]` (a CSR list), `scale` is `[n]` or empty (all 1), `out` is
/// `[groups, cols]` with `groups = start.len() - 1`:
/// `out[t, :] = Σ_i scale[rows[i]] · src[rows[i], :]` in list order ([`Accum::Replace`]; a
/// group with no rows gives 0), or that sum added onto `out` ([`Accum::Add`]), each product
/// rounded before it is added (no fused multiply-add). This is a mixture-of-experts combine:
/// each token's gated expert outputs.
///
/// [`Accum::Replace`]: crate::gemm::Accum::Replace
/// [`Accum::Add`]: crate::gemm::Accum::Add
///
/// ```
/// use elide_kernels::{gemm::Accum, weighted_row_sums, Isa};
/// let src = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0]; // 3 rows of 2
/// let mut out = [0.0; 4]; // 2 groups: rows {2, 0} and {1}
/// weighted_row_sums(Isa::active(), &src, 2, &[0, 2, 3], &[2, 0, 1], &[0.5, 2.0, 0.1], &mut out, Accum::Replace)?;
/// assert_eq!(out, [10.5, 21.0, 20.0, 40.0]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if `src`, `scale` or `out` has the wrong length or `start` is not
/// non-decreasing within `rows`; [`KernelError::Index`] for the first row `>= n` (nothing is
/// written then).
#[allow(clippy::too_many_arguments)]
pub fn weighted_row_sums(
    isa: Isa,
    src: &[f32],
    cols: usize,
    start: &[usize],
    rows: &[u32],
    scale: &[f32],
    out: &mut [f32],
    accum: Accum,
) -> Result<()> {
    const OP: &str = "weighted_row_sums";
    let n = src.len() / cols.max(1);
    check_matrix(OP, "src", src.len(), n, cols)?;
    if !scale.is_empty() && scale.len() != n {
        let detail = format!("scale has {} elements for {n} rows of src", scale.len());
        return Err(KernelError::Shape { op: OP, detail });
    }
    let groups = start.len().saturating_sub(1);
    check_matrix(OP, "out", out.len(), groups, cols)?;
    let ordered = start.first() == Some(&0) && start.windows(2).all(|w| w[0] <= w[1]);
    if !ordered || start.last().is_some_and(|&end| end > rows.len()) {
        let detail = format!("start must rise from 0 to at most {} (the row list), got {start:?}", rows.len());
        return Err(KernelError::Shape { op: OP, detail });
    }
    if cols == 0 {
        return Ok(());
    }
    check_indices(OP, rows, n)?;
    for_row_chunks(out, cols, 2 * cols, |t0, out| {
        with_simd(isa, CombineTask { src, cols, start: &start[t0..], rows, scale, out, accum });
    });
    Ok(())
}

/// Groups `0..out.len() / cols` of [`weighted_row_sums`], `start` offset to the first.
struct CombineTask<'a> {
    src: &'a [f32],
    cols: usize,
    start: &'a [usize],
    rows: &'a [u32],
    scale: &'a [f32],
    out: &'a mut [f32],
    accum: Accum,
}

impl SimdTask for CombineTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let CombineTask { src, cols, start, rows, scale, out, accum } = self;
        let groups = out.len() / cols;
        for (t, row) in out.chunks_exact_mut(cols).enumerate() {
            // The rows of a group lie anywhere in `src`: fetch the next group's while this one
            // is summed (a row is a few KiB, too short for the hardware prefetcher to get ahead).
            if t + 1 < groups {
                for &r in &rows[start[t + 1]..start[t + 2]] {
                    let next = &src[r as usize * cols..(r as usize + 1) * cols];
                    next.chunks(LINE_FLOATS).for_each(|line| s.prefetch(line.as_ptr()));
                }
            }
            let mut mine = rows[start[t]..start[t + 1]].iter().map(|&r| r as usize);
            let row_of = |r: usize| (&src[r * cols..(r + 1) * cols], scale.get(r).copied().unwrap_or(1.0));
            if accum == Accum::Replace {
                match mine.next() {
                    Some(r) => {
                        let (x, g) = row_of(r);
                        lanes::map(s, x, row, lanes::Scale { factor: g });
                    }
                    None => row.fill(0.0),
                }
            }
            for r in mine {
                let (x, g) = row_of(r);
                lanes::zip_in_place(s, row, x, lanes::AddScaled { factor: g });
            }
        }
    }
}

/// The backward of [`weighted_row_sums`] for rows that each belong to one group: `dout` is
/// `[groups, cols]`, `group[r]` is row `r`'s group, `src` and `dsrc` are `[n, cols]`, `scale`
/// and `dscale` are `[n]`: `dsrc[r, :] = scale[r] · dout[group[r], :]` and
/// `dscale[r] = ⟨dout[group[r], :], src[r, :]⟩` (a dot product in a fixed order). For a
/// mixture-of-experts combine: each slot's output gradient and its gate's gradient, in one
/// pass over the slots.
///
/// ```
/// use elide_kernels::{weighted_row_sums_backward, Isa};
/// let dout = [1.0, 2.0]; // 1 group of 2 columns
/// let src = [3.0, 4.0, 5.0, 6.0]; // 2 rows, both in group 0
/// let (mut dsrc, mut dscale) = ([0.0; 4], [0.0; 2]);
/// weighted_row_sums_backward(Isa::active(), &dout, 2, &[0, 0], &src, &[0.5, 2.0], &mut dsrc, &mut dscale)?;
/// assert_eq!((dsrc, dscale), ([0.5, 1.0, 2.0, 4.0], [11.0, 17.0]));
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] for lengths that do not match; [`KernelError::Index`] for the first
/// group `>= groups` (nothing is written then).
#[allow(clippy::too_many_arguments)]
pub fn weighted_row_sums_backward(
    isa: Isa,
    dout: &[f32],
    cols: usize,
    group: &[u32],
    src: &[f32],
    scale: &[f32],
    dsrc: &mut [f32],
    dscale: &mut [f32],
) -> Result<()> {
    const OP: &str = "weighted_row_sums_backward";
    let (n, groups) = (group.len(), dout.len() / cols.max(1));
    check_matrix(OP, "dout", dout.len(), groups, cols)?;
    check_matrix(OP, "src", src.len(), n, cols)?;
    check_matrix(OP, "dsrc", dsrc.len(), n, cols)?;
    if scale.len() != n || dscale.len() != n {
        let detail = format!("scale has {} and dscale {} elements for {n} rows", scale.len(), dscale.len());
        return Err(KernelError::Shape { op: OP, detail });
    }
    if cols == 0 {
        dscale.fill(0.0);
        return Ok(());
    }
    check_indices(OP, group, groups)?;
    let task = |r0: usize, dsrc: &mut [f32], dscale: &mut [f32]| {
        let rows = dscale.len();
        let span = r0..r0 + rows;
        let (group, scale, src) = (&group[span.clone()], &scale[span], &src[r0 * cols..(r0 + rows) * cols]);
        with_simd(isa, CombineBackwardTask { dout, cols, group, src, scale, dsrc, dscale });
    };
    if n * cols < ROWWISE_PAR_MIN || rayon::current_num_threads() < 2 {
        task(0, dsrc, dscale);
        return Ok(());
    }
    let chunk = (ROWWISE_CHUNK / (2 * cols)).max(1);
    dsrc.par_chunks_mut(chunk * cols)
        .zip(dscale.par_chunks_mut(chunk))
        .enumerate()
        .for_each(|(c, (dsrc, dscale))| task(c * chunk, dsrc, dscale));
    Ok(())
}

/// Rows `0..dscale.len()` of [`weighted_row_sums_backward`] (the slices start at the chunk).
struct CombineBackwardTask<'a> {
    dout: &'a [f32],
    cols: usize,
    group: &'a [u32],
    src: &'a [f32],
    scale: &'a [f32],
    dsrc: &'a mut [f32],
    dscale: &'a mut [f32],
}

impl SimdTask for CombineBackwardTask<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let CombineBackwardTask { dout, cols, group, src, scale, dsrc, dscale } = self;
        let rows = dsrc.chunks_exact_mut(cols).zip(src.chunks_exact(cols));
        for (r, (dst, x)) in rows.enumerate() {
            let g = group[r] as usize;
            let d = &dout[g * cols..(g + 1) * cols];
            lanes::map(s, d, dst, lanes::Scale { factor: scale[r] });
            dscale[r] = lanes::dot(s, d, x);
        }
    }
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

    /// Groups of rows for the combine tests, as CSR: every fourth group is empty, odd groups take
    /// rows `(3t) mod n` and `(5t + 1) mod n`, the others row `(3t) mod n`.
    fn groups(count: usize, n: usize) -> (Vec<usize>, Vec<u32>) {
        let (mut start, mut rows) = (vec![0], Vec::new());
        for t in 0..count {
            if t % 4 != 3 {
                rows.push(((t * 3) % n) as u32);
                if t % 2 == 1 {
                    rows.push(((t * 5 + 1) % n) as u32);
                }
            }
            start.push(rows.len());
        }
        (start, rows)
    }

    #[test]
    fn weighted_row_sums_match_the_reference() {
        let (count, n) = (13, 9);
        let (start, rows) = groups(count, n);
        for isa in Isa::supported() {
            for cols in SIZES {
                let src = data(n * cols, cols as u64, -1.0, 1.0);
                let scale = data(n, 5, -2.0, 2.0);
                let base = data(count * cols, 6, -1.0, 1.0);
                let cases = [(&scale[..], false), (&scale[..], true), (&[][..], false), (&[][..], true)];
                for (scale, onto) in cases {
                    let accum = if onto { Accum::Add } else { Accum::Replace };
                    let mut out = if onto { base.clone() } else { vec![f32::NAN; count * cols] };
                    weighted_row_sums(isa, &src, cols, &start, &rows, scale, &mut out, accum).unwrap();
                    let mut want = vec![0.0f64; count * cols];
                    for t in 0..count {
                        for j in 0..cols {
                            let mut v = if onto { base[t * cols + j] as f64 } else { 0.0 };
                            for &r in &rows[start[t]..start[t + 1]] {
                                let g = scale.get(r as usize).copied().unwrap_or(1.0) as f64;
                                v += g * src[r as usize * cols + j] as f64;
                            }
                            want[t * cols + j] = v;
                        }
                    }
                    assert_close(&format!("{isa} cols={cols} onto={onto}"), &out, &want, 1e-6, 1e-6);
                }
            }
        }
    }

    #[test]
    fn weighted_row_sums_backward_matches_the_reference() {
        let (groups_n, n) = (5, 11);
        let group: Vec<u32> = (0..n as u32).map(|r| (r * 3) % groups_n as u32).collect();
        for isa in Isa::supported() {
            for cols in SIZES {
                let dout = data(groups_n * cols, 1, -1.0, 1.0);
                let src = data(n * cols, 2, -1.0, 1.0);
                let scale = data(n, 3, -2.0, 2.0);
                let (mut dsrc, mut dscale) = (vec![f32::NAN; n * cols], vec![f32::NAN; n]);
                weighted_row_sums_backward(isa, &dout, cols, &group, &src, &scale, &mut dsrc, &mut dscale).unwrap();
                let (mut want_src, mut want_scale) = (vec![0.0f64; n * cols], vec![0.0f64; n]);
                for r in 0..n {
                    let g = group[r] as usize;
                    for j in 0..cols {
                        let d = dout[g * cols + j] as f64;
                        want_src[r * cols + j] = scale[r] as f64 * d;
                        want_scale[r] += d * src[r * cols + j] as f64;
                    }
                }
                let what = format!("{isa} cols={cols}");
                assert_close(&what, &dsrc, &want_src, 1e-6, 1e-6);
                assert_close(&what, &dscale, &want_scale, 1e-5, 1e-5);
            }
        }
    }

    #[test]
    fn combine_kernels_do_not_depend_on_thread_count() {
        let (count, n, cols) = (700, 1000, 96);
        let (start, rows) = groups(count, n);
        let src = data(n * cols, 1, -1.0, 1.0);
        let scale = data(n, 2, -1.0, 1.0);
        let group: Vec<u32> = (0..n as u32).map(|r| r % count as u32).collect();
        let dout = data(count * cols, 3, -1.0, 1.0);
        for isa in Isa::supported() {
            let runs = in_pools(&[1, 2], || {
                let mut out = vec![0.0; count * cols];
                weighted_row_sums(isa, &src, cols, &start, &rows, &scale, &mut out, Accum::Replace).unwrap();
                let (mut dsrc, mut dscale) = (vec![0.0; n * cols], vec![0.0; n]);
                weighted_row_sums_backward(isa, &dout, cols, &group, &src, &scale, &mut dsrc, &mut dscale).unwrap();
                [bits(&out), bits(&dsrc), bits(&dscale)]
            });
            assert_eq!(runs[0], runs[1], "{isa}");
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
        let err =
            weighted_row_sums(isa, &src, 2, &[0, 2, 3], &[0, 5, 1], &[], &mut out[..4], Accum::Replace).unwrap_err();
        assert_eq!(err.to_string(), "weighted_row_sums: index 5 at position 1 is out of range for 3 rows");
        assert_eq!(out, [1.0; 6], "nothing written");
        let err =
            weighted_row_sums(isa, &src, 2, &[0, 3, 2], &[0, 1, 2], &[], &mut out[..4], Accum::Replace).unwrap_err();
        assert!(err.to_string().contains("start must rise from 0"), "{err}");
        let err = weighted_row_sums(isa, &src, 2, &[0, 1], &[0], &[1.0; 2], &mut out[..2], Accum::Replace).unwrap_err();
        assert_eq!(err.to_string(), "weighted_row_sums: shape mismatch: scale has 2 elements for 3 rows of src");
        let (mut dsrc, mut dscale) = ([0.0; 6], [0.0; 3]);
        let err = weighted_row_sums_backward(isa, &src[..2], 2, &[0, 1, 0], &src, &[1.0; 3], &mut dsrc, &mut dscale)
            .unwrap_err();
        assert_eq!(err.to_string(), "weighted_row_sums_backward: index 1 at position 1 is out of range for 1 rows");
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
