//! Per-row argmax and top-k of a contiguous `[rows, cols]` array: the selections that routers
//! (top-k token choice, expert choice, mixture-of-depths) and greedy decoding make.
//!
//! Ties go to the lower column index, so a selection is reproducible. A NaN in a row is an
//! error rather than a silent choice: a router fed NaN is a bug upstream, and picking "some"
//! expert would hide it. Rows split over rayon in fixed chunks; a row is never split.

use crate::error::{check_matrix, KernelError, Result};
use crate::lanes;
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::{for_row_chunks, ROWWISE_CHUNK, ROWWISE_PAR_MIN};
use crate::Isa;
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering as Atomic};

/// Up to this `k`, top-k keeps a sorted list of the best `k` so far (O(cols·k) at worst, far less
/// on typical rows, since whole vectors below the current k-th value are skipped); above it, a
/// partial selection (O(cols + k log k)).
const INSERTION_MAX_K: usize = 64;
/// Up to this `k` (and rows up to [`PASSES_MAX_COLS`]), top-k keeps each vector lane's best `k`
/// instead ([`topk_lanes`], falling back to `k` maximum passes over a copy of the row,
/// [`topk_passes`], for rows reaching -∞): a router's top-2 of 64 experts inserted every
/// element of the row into the list (the first `k` slots fill, so no vector is skipped).
const PASSES_MAX_K: usize = 4;
/// Longest row [`topk_lanes`] takes ([`topk_passes`] copies it).
const PASSES_MAX_COLS: usize = 1024;

/// `x` is `[rows, cols]`, `out` is `[rows]`: the column of each row's largest value (the lowest
/// such column on ties).
///
/// # Errors
/// [`KernelError::Shape`] if `x` or `out` has the wrong length; [`KernelError::Argument`] if
/// `cols == 0`, if column indices do not fit `u32`, or if a row holds a NaN (naming the first
/// such row; `out` may then be partly written).
pub fn argmax_rows(isa: Isa, x: &[f32], rows: usize, cols: usize, out: &mut [u32]) -> Result<()> {
    const OP: &str = "argmax_rows";
    check(OP, x, rows, cols, 1)?;
    if out.len() != rows {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("out has {} elements, expected [{rows}]", out.len()),
        });
    }
    let first_nan = AtomicUsize::new(usize::MAX);
    for_row_chunks(out, 1, cols, |row0, out| {
        let x = &x[row0 * cols..(row0 + out.len()) * cols];
        if let Some(r) = with_simd(isa, ArgmaxTask { x, cols, out }) {
            first_nan.fetch_min(row0 + r, Atomic::Relaxed);
        }
    });
    nan_error(OP, first_nan.into_inner())
}

/// `x` is `[rows, cols]`, `values` and `indices` are `[rows, k]`: per row, the `k` largest
/// values in descending order and their column indices; ties go to the lower index.
///
/// ```
/// use elide_kernels::{topk_rows, Isa};
/// let x = [0.1, 0.7, 0.2, 0.7];
/// let (mut v, mut i) = ([0.0; 3], [0u32; 3]);
/// topk_rows(Isa::active(), &x, 1, 4, 3, &mut v, &mut i)?;
/// assert_eq!((v, i), ([0.7, 0.7, 0.2], [1, 3, 2]));
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if a slice has the wrong length; [`KernelError::Argument`] if `k == 0`,
/// `k > cols`, column indices do not fit `u32`, or a row holds a NaN (naming the first such row;
/// the outputs may then be partly written).
pub fn topk_rows(
    isa: Isa,
    x: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
    values: &mut [f32],
    indices: &mut [u32],
) -> Result<()> {
    const OP: &str = "topk_rows";
    check(OP, x, rows, cols, k)?;
    check_matrix(OP, "values", values.len(), rows, k)?;
    check_matrix(OP, "indices", indices.len(), rows, k)?;
    let first_nan = AtomicUsize::new(usize::MAX);
    let chunk = |row0: usize, values: &mut [f32], indices: &mut [u32]| {
        let x = &x[row0 * cols..(row0 + values.len() / k) * cols];
        if let Some(r) = with_simd(isa, TopkTask { x, cols, k, values, indices }) {
            first_nan.fetch_min(row0 + r, Atomic::Relaxed);
        }
    };
    if rows < 2 || x.len() < ROWWISE_PAR_MIN || rayon::current_num_threads() < 2 {
        chunk(0, values, indices);
    } else {
        let rows_per_chunk = (ROWWISE_CHUNK / cols).max(1);
        let (vs, is) = (values.par_chunks_mut(rows_per_chunk * k), indices.par_chunks_mut(rows_per_chunk * k));
        vs.zip(is).enumerate().for_each(|(c, (v, i))| chunk(c * rows_per_chunk, v, i));
    }
    nan_error(OP, first_nan.into_inner())
}

/// The checks both ops share: the shape of `x`, `cols > 0`, `1 <= k <= cols`, `u32` columns.
pub(crate) fn check(op: &'static str, x: &[f32], rows: usize, cols: usize, k: usize) -> Result<()> {
    let argument = |detail: String| Err(KernelError::Argument { op, detail });
    if cols == 0 {
        return argument(format!("cols is 0 (x is [{rows}, 0]): nothing to select from"));
    }
    if k == 0 {
        return argument(format!("k is 0 (x is [{rows}, {cols}])"));
    }
    if k > cols {
        return argument(format!("k = {k} exceeds cols = {cols}"));
    }
    if cols - 1 > u32::MAX as usize {
        return argument(format!("cols = {cols} does not fit u32 column indices"));
    }
    check_matrix(op, "x", x.len(), rows, cols)
}

fn nan_error(op: &'static str, first_nan: usize) -> Result<()> {
    match first_nan {
        usize::MAX => Ok(()),
        row => Err(KernelError::Argument { op, detail: format!("NaN in row {row}") }),
    }
}

/// Argmax of each `cols`-long row of `x` into `out`; stops at the first row holding a NaN and
/// returns its position in `x`.
struct ArgmaxTask<'a> {
    x: &'a [f32],
    cols: usize,
    out: &'a mut [u32],
}

impl SimdTask for ArgmaxTask<'_> {
    type Output = Option<usize>;
    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> Option<usize> {
        for (r, (row, out)) in self.x.chunks_exact(self.cols).zip(self.out.iter_mut()).enumerate() {
            let max = lanes::max(s, row);
            if max.is_nan() {
                return Some(r);
            }
            *out = first_equal(row, max) as u32; // `cols` fits u32 (checked)
        }
        None
    }
}

/// Position of the first element of `row` equal to `target` (0 if none): a branch-free scan of
/// 64-element chunks (which the compiler vectorises) finds the chunk, then a plain search.
fn first_equal(row: &[f32], target: f32) -> usize {
    for (c, chunk) in row.chunks(64).enumerate() {
        if chunk.iter().fold(false, |hit, &v| hit | (v == target)) {
            return c * 64 + chunk.iter().position(|&v| v == target).unwrap_or(0);
        }
    }
    0
}

/// Top-k of each `cols`-long row of `x` into `values` and `indices` (`k` per row); stops at the
/// first row holding a NaN and returns its position in `x`.
struct TopkTask<'a> {
    x: &'a [f32],
    cols: usize,
    k: usize,
    values: &'a mut [f32],
    indices: &'a mut [u32],
}

impl SimdTask for TopkTask<'_> {
    type Output = Option<usize>;
    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> Option<usize> {
        let k = self.k;
        let mut select = RowTopk::new();
        let outs = self.values.chunks_exact_mut(k).zip(self.indices.chunks_exact_mut(k));
        for (r, (row, (values, indices))) in self.x.chunks_exact(self.cols).zip(outs).enumerate() {
            if !select.row(s, row, values, indices) {
                return Some(r);
            }
        }
        None
    }
}

/// The top-k of one row at a time, by the method that suits `k` and the row length, with the
/// scratch space those methods need (kept across the rows of a task).
pub(crate) struct RowTopk {
    keys: Vec<u64>,
    copy: [f32; PASSES_MAX_COLS],
}

impl RowTopk {
    pub(crate) fn new() -> RowTopk {
        RowTopk { keys: Vec::new(), copy: [0.0; PASSES_MAX_COLS] }
    }

    /// The `values.len()` (= `indices.len()`, at least 1, at most `row.len()`) best entries of
    /// `row`, best first, ties to the lower column. Returns false if the row holds a NaN.
    #[inline(always)]
    pub(crate) fn row<S: Simd>(&mut self, s: S, row: &[f32], values: &mut [f32], indices: &mut [u32]) -> bool {
        let k = values.len();
        if k <= PASSES_MAX_K && row.len() <= PASSES_MAX_COLS {
            topk_lanes(s, row, values, indices, &mut self.copy)
        } else if k <= INSERTION_MAX_K {
            topk_insertion(s, row, values, indices)
        } else {
            topk_select(row, values, indices, &mut self.keys)
        }
    }
}

/// Very small k, at most [`PASSES_MAX_K`]: one vector pass keeps each lane's best `k` (value
/// and column, an insertion network of `k` levels; a later column displaces an equal value
/// only from below, so ties keep the lower column), then `k` vector rounds take the best of
/// those. A router's top-2 of 64, 4096 rows on one core: 0.39–0.44 ms as [`topk_passes`]
/// alone, 0.16–0.22 ms this way (measured alternately). A row whose top k reaches -∞ (a masked
/// router) goes to [`topk_passes`], which gives distinct lowest columns. Returns false if the
/// row holds a NaN.
#[inline(always)]
fn topk_lanes<S: Simd>(s: S, row: &[f32], values: &mut [f32], indices: &mut [u32], buf: &mut [f32]) -> bool {
    let k = values.len();
    let iota: [f32; lanes::MAX_LANES] = std::array::from_fn(|i| i as f32);
    let ninf = s.splat(f32::NEG_INFINITY);
    let (mut best, mut col) = ([ninf; PASSES_MAX_K], [s.splat(-1.0); PASSES_MAX_K]);
    let (mut nan, mut at, step) = (s.splat(0.0), lanes::load(s, &iota), s.splat(S::LANES as f32));
    for chunk in row.chunks(S::LANES) {
        let v = if chunk.len() == S::LANES {
            lanes::load(s, chunk)
        } else {
            lanes::load_partial(s, chunk, f32::NEG_INFINITY)
        };
        nan = s.keep_nan(v, nan);
        let (mut cv, mut cc) = (v, at);
        for l in 0..k {
            // The carry enters level l where it beats the kept value; the kept one moves down.
            let (kept, kept_col) = (best[l], col[l]);
            best[l] = s.select_lt(kept, cv, cv, kept);
            col[l] = s.select_lt(kept, cv, cc, kept_col);
            cc = s.select_lt(kept, cv, kept_col, cc);
            cv = s.select_lt(kept, cv, kept, cv);
        }
        at = s.add(at, step);
    }
    // Lanes of `nan` are 0, or NaN where a NaN went by.
    if s.reduce_sum(nan).is_nan() {
        return false;
    }
    // Merge: k rounds over the k·LANES kept candidates, each taking the largest value and,
    // among equals, the lowest column, then knocking that candidate down to -∞. (Nested fns and
    // loops, not closures: a closure would not inherit the vector target features.)
    #[inline(always)]
    fn select_eq<S: Simd>(s: S, a: S::V, b: S::V, if_eq: S::V, otherwise: S::V) -> S::V {
        s.select_lt(a, b, otherwise, s.select_lt(b, a, otherwise, if_eq))
    }
    let (zero, far) = (s.splat(0.0), s.splat(f32::MAX));
    for r in 0..k {
        let mut top = best[0];
        for &v in &best[1..k] {
            top = s.max(top, v);
        }
        let m = s.reduce_max(top);
        if m == f32::NEG_INFINITY {
            return topk_passes(s, row, values, indices, buf);
        }
        let (mv, mut lowest) = (s.splat(m), far);
        for l in 0..k {
            lowest = s.min(lowest, select_eq(s, best[l], mv, col[l], far));
        }
        let c = -s.reduce_max(s.sub(zero, lowest));
        (values[r], indices[r]) = (m, c as u32);
        let cv = s.splat(c);
        for l in 0..k {
            best[l] = select_eq(s, col[l], cv, ninf, best[l]);
        }
    }
    true
}

/// Very small k: `k` passes over a copy of the row, each taking the maximum (a vector reduction)
/// and its lowest not-yet-taken position, then knocking that position down to -∞. A position
/// already taken is skipped when searching, so rows of -∞ (a masked router) still give `k`
/// distinct columns, lowest first. Returns false if the row holds a NaN.
#[inline(always)]
fn topk_passes<S: Simd>(s: S, row: &[f32], values: &mut [f32], indices: &mut [u32], buf: &mut [f32]) -> bool {
    let buf = &mut buf[..row.len()];
    buf.copy_from_slice(row);
    let k = values.len();
    let mut taken = [u32::MAX; PASSES_MAX_K];
    for r in 0..k {
        let m = lanes::max(s, buf);
        if m.is_nan() {
            return false;
        }
        let mut at = 0;
        for (c, chunk) in buf.chunks(64).enumerate() {
            if chunk.iter().fold(false, |hit, &v| hit | (v == m)) {
                let free = chunk.iter().enumerate().position(|(j, &v)| {
                    let j = (c * 64 + j) as u32;
                    v == m && !taken[..r].contains(&j)
                });
                if let Some(j) = free {
                    at = c * 64 + j;
                    break;
                }
            }
        }
        (values[r], indices[r]) = (row[at], at as u32);
        taken[r] = at as u32;
        buf[at] = f32::NEG_INFINITY;
    }
    true
}

/// Small k: a sorted list of the best so far (descending value, ascending index on ties).
/// A vector of the row whose maximum does not beat the current k-th value is skipped whole.
/// Returns false if the row holds a NaN.
#[inline(always)]
fn topk_insertion<S: Simd>(s: S, row: &[f32], values: &mut [f32], indices: &mut [u32]) -> bool {
    let k = values.len();
    let mut len = 0;
    for (b, block) in row.chunks(4 * S::LANES).enumerate() {
        let block_max = lanes::max(s, block);
        if block_max.is_nan() {
            return false;
        }
        // Once k values are kept, only a strictly larger value can enter.
        if len < k || block_max > values[k - 1] {
            for (i, &v) in block.iter().enumerate() {
                if len < k || v > values[k - 1] {
                    len = insert(values, indices, len, v, (b * 4 * S::LANES + i) as u32);
                }
            }
        }
    }
    true
}

/// Inserts `(v, j)` into the sorted `values[..len]`/`indices[..len]` after every kept value
/// `>= v` (so an equal value seen earlier stays first), dropping the last if all `k` slots are
/// full; returns the new length.
#[inline(always)]
fn insert(values: &mut [f32], indices: &mut [u32], len: usize, v: f32, j: u32) -> usize {
    let k = values.len();
    let at = values[..len].partition_point(|&kept| kept >= v);
    if at == k {
        return len;
    }
    let end = (len + 1).min(k);
    values.copy_within(at..end - 1, at + 1);
    indices.copy_within(at..end - 1, at + 1);
    values[at] = v;
    indices[at] = j;
    end
}

/// Large k: a partial selection of the k best, then a sort of those k. Each candidate is one
/// `u64` key that sorts ascending as (value descending, index ascending), so selecting and
/// sorting compare integers. Returns false if the row holds a NaN.
fn topk_select(row: &[f32], values: &mut [f32], indices: &mut [u32], keys: &mut Vec<u64>) -> bool {
    if row.iter().any(|v| v.is_nan()) {
        return false;
    }
    let k = values.len();
    keys.clear();
    keys.extend(row.iter().enumerate().map(|(j, &v)| ((descending_key(v) as u64) << 32) | j as u64));
    if k < keys.len() {
        keys.select_nth_unstable(k - 1);
    }
    let best = &mut keys[..k];
    best.sort_unstable();
    for ((v, i), &key) in values.iter_mut().zip(indices.iter_mut()).zip(best.iter()) {
        let j = key as u32; // the low half is the column
        (*v, *i) = (row[j as usize], j);
    }
    true
}

/// A `u32` that orders non-NaN floats in descending order, with -0 and +0 equal (as `>` has it).
fn descending_key(v: f32) -> u32 {
    let bits = (v + 0.0).to_bits(); // -0 + 0 = +0
    let ascending = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
    !ascending
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{data, SHAPES};

    /// A full stable sort by descending value: the reference selection.
    fn reference(row: &[f32], k: usize) -> (Vec<f32>, Vec<u32>) {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        order.sort_by(|&a, &b| row[b as usize].partial_cmp(&row[a as usize]).unwrap());
        order.truncate(k);
        (order.iter().map(|&j| row[j as usize]).collect(), order)
    }

    /// Rows with many ties: values on a coarse grid.
    fn tied(len: usize, seed: u64) -> Vec<f32> {
        data(len, seed, 0.0, 6.0).iter().map(|v| v.floor()).collect()
    }

    #[test]
    fn argmax_matches_reference_on_every_path() {
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES {
                for x in [data(rows * cols, cols as u64, -1.0, 1.0), tied(rows * cols, 3)] {
                    let mut out = vec![u32::MAX; rows];
                    argmax_rows(isa, &x, rows, cols, &mut out).unwrap();
                    let want: Vec<u32> = x.chunks(cols).map(|row| reference(row, 1).1[0]).collect();
                    assert_eq!(out, want, "{isa} {rows}x{cols}");
                }
            }
        }
    }

    #[test]
    fn topk_matches_reference_on_every_path() {
        for isa in Isa::supported() {
            for (rows, cols) in SHAPES.into_iter().chain([(3, 300), (2, 1000)]) {
                for k in [1, 2, 3, 4, 7, 33, 65, 100, cols].into_iter().filter(|&k| k <= cols) {
                    for x in [data(rows * cols, (cols + k) as u64, -1.0, 1.0), tied(rows * cols, k as u64)] {
                        let (mut values, mut indices) = (vec![f32::NAN; rows * k], vec![u32::MAX; rows * k]);
                        topk_rows(isa, &x, rows, cols, k, &mut values, &mut indices).unwrap();
                        for (r, row) in x.chunks(cols).enumerate() {
                            let (v, i) = reference(row, k);
                            assert_eq!(&values[r * k..(r + 1) * k], &v[..], "{isa} {rows}x{cols} k={k} row {r}");
                            assert_eq!(&indices[r * k..(r + 1) * k], &i[..], "{isa} {rows}x{cols} k={k} row {r}");
                        }
                    }
                }
            }
        }
    }

    /// Rows of -∞ (a router with masked experts) still give `k` distinct columns, ties to the
    /// lower index, on the few-pass path (k ≤ 4) and the others.
    #[test]
    fn minus_infinity_rows_give_distinct_columns() {
        let mut x = vec![f32::NEG_INFINITY; 2 * 9];
        x[9 + 4] = 1.0;
        for isa in Isa::supported() {
            for k in [1, 2, 4, 5, 9] {
                let (mut values, mut indices) = (vec![0.0; 2 * k], vec![0; 2 * k]);
                topk_rows(isa, &x, 2, 9, k, &mut values, &mut indices).unwrap();
                let want_first: Vec<u32> = (0..k as u32).collect();
                let want_second: Vec<u32> = std::iter::once(4).chain((0..9).filter(|&j| j != 4)).take(k).collect();
                assert_eq!((&indices[..k], &indices[k..]), (&want_first[..], &want_second[..]), "{isa} k={k}");
                assert_eq!(values[k], 1.0);
                assert!(values[..k].iter().chain(&values[k + 1..]).all(|&v| v == f32::NEG_INFINITY));
            }
        }
    }

    #[test]
    fn ascending_rows_work_for_small_and_large_k() {
        let x: Vec<f32> = (0..500).map(|j| j as f32).collect();
        for k in [3, 64, 65, 500] {
            let (mut values, mut indices) = (vec![0.0; k], vec![0; k]);
            topk_rows(Isa::active(), &x, 1, 500, k, &mut values, &mut indices).unwrap();
            assert_eq!(indices, (0..k as u32).map(|i| 499 - i).collect::<Vec<_>>(), "k={k}");
        }
    }

    #[test]
    fn nan_is_an_error_naming_the_first_row() {
        let mut x = data(40 * 1000, 1, -1.0, 1.0);
        x[3 * 1000 + 999] = f32::NAN;
        x[17 * 1000] = f32::NAN;
        for isa in Isa::supported() {
            for k in [1, 5, 100] {
                let (mut v, mut i) = (vec![0.0; 40 * k], vec![0; 40 * k]);
                let err = topk_rows(isa, &x, 40, 1000, k, &mut v, &mut i).unwrap_err();
                assert_eq!(err.to_string(), "topk_rows: NaN in row 3", "{isa} k={k}");
            }
            let err = argmax_rows(isa, &x, 40, 1000, &mut [0; 40]).unwrap_err();
            assert_eq!(err.to_string(), "argmax_rows: NaN in row 3", "{isa}");
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let isa = Isa::active();
        let x = [0.0; 6];
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert_eq!(msg(topk_rows(isa, &x, 2, 3, 0, &mut [], &mut [])), "topk_rows: k is 0 (x is [2, 3])");
        assert_eq!(msg(topk_rows(isa, &x, 2, 3, 4, &mut [0.0; 8], &mut [0; 8])), "topk_rows: k = 4 exceeds cols = 3");
        assert_eq!(
            msg(topk_rows(isa, &x, 2, 3, 2, &mut [0.0; 4], &mut [0; 3])),
            "topk_rows: shape mismatch: indices has 3 elements, expected [2, 2]"
        );
        assert_eq!(
            msg(argmax_rows(isa, &[], 2, 0, &mut [0; 2])),
            "argmax_rows: cols is 0 (x is [2, 0]): nothing to select from"
        );
        assert_eq!(
            msg(argmax_rows(isa, &x, 2, 3, &mut [0; 3])),
            "argmax_rows: shape mismatch: out has 3 elements, expected [2]"
        );
        assert_eq!(
            msg(argmax_rows(isa, &x, 3, 3, &mut [0; 3])),
            "argmax_rows: shape mismatch: x has 6 elements, expected [3, 3]"
        );
    }
}
