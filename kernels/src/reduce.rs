//! Reductions over the middle axis of a contiguous `[outer, axis, inner]` array.
//!
//! Each output element is reduced in a fixed order that depends only on the shape: along the
//! axis with lane-wise partial results (`inner == 1`), or axis row by axis row, vectorised
//! across `inner` (`inner > 1`). Work splits over rayon by output rows or column tiles, never
//! inside one output element, so results are bit-identical for any thread count.

use crate::error::{KernelError, Result};
use crate::lanes::{self, lane_fn, LaneFn2};
use crate::simd::{prefetch_run_l2, with_simd, Simd, SimdTask};
use crate::threading::{for_row_chunks, ROWWISE_PAR_MIN};
use crate::Isa;
use rayon::prelude::*;

/// How the elements along the axis combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum (0 over an empty axis).
    Sum,
    /// Arithmetic mean (the sum divided by the axis length).
    Mean,
    /// Largest element (NaN if any element is NaN).
    Max,
    /// Smallest element (NaN if any element is NaN).
    Min,
}

/// Columns per tile when reducing across `inner`: the tile's running result (4 KiB) stays in L1
/// while the axis rows stream past it.
const TILE_COLS: usize = 1024;

/// `x` is `[outer, axis, inner]`, `out` is `[outer, inner]`: `out[o, j] = op over a of x[o, a, j]`.
///
/// ```
/// use elide_kernels::{reduce_axis, Isa, ReduceOp};
/// // Column sums of a 2x3 matrix: outer = 1, axis = 2 rows, inner = 3 columns.
/// let x = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
/// let mut out = [0.0; 3];
/// reduce_axis(Isa::active(), ReduceOp::Sum, &x, 1, 2, 3, &mut out)?;
/// assert_eq!(out, [11.0, 22.0, 33.0]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Shape`] if `x` or `out` has the wrong length; [`KernelError::Argument`] if
/// `axis == 0` for `Mean`, `Max` or `Min` (a `Sum` over an empty axis is 0).
pub fn reduce_axis(
    isa: Isa,
    op: ReduceOp,
    x: &[f32],
    outer: usize,
    axis: usize,
    inner: usize,
    out: &mut [f32],
) -> Result<()> {
    const OP: &str = "reduce_axis";
    let shape = format!("[outer, axis, inner] = [{outer}, {axis}, {inner}]");
    let x_len = outer.checked_mul(axis).and_then(|n| n.checked_mul(inner));
    if x_len != Some(x.len()) {
        return Err(KernelError::Shape { op: OP, detail: format!("x has {} elements, {shape}", x.len()) });
    }
    if outer.checked_mul(inner) != Some(out.len()) {
        let detail = format!("out has {} elements, expected [outer, inner] = [{outer}, {inner}]", out.len());
        return Err(KernelError::Shape { op: OP, detail });
    }
    if axis == 0 {
        if op != ReduceOp::Sum {
            return Err(KernelError::Argument { op: OP, detail: format!("{op:?} over an empty axis ({shape})") });
        }
        out.fill(0.0);
        return Ok(());
    }
    if inner == 1 {
        for_row_chunks(out, 1, axis, |start, out| {
            let x = &x[start * axis..(start + out.len()) * axis];
            with_simd(isa, AlongAxis { op, x, axis, out });
        });
        return Ok(());
    }
    // A tile is (one outer index, a range of columns): whole rows when they fit TILE_COLS (so
    // the tile reads one contiguous stream), else a share of the columns for each thread, at
    // least 1 KiB of each axis row (so reads stream) and at most TILE_COLS (so its running
    // result stays in L1). Which columns share a tile does not change any column's sum.
    if out.is_empty() {
        return Ok(());
    }
    let threads = rayon::current_num_threads();
    let tile_cols =
        if inner <= TILE_COLS { inner } else { inner.div_ceil(threads).next_multiple_of(16).clamp(256, TILE_COLS) };
    let tile = |o: usize, t: usize, out: &mut [f32]| {
        let x = &x[o * axis * inner..(o + 1) * axis * inner];
        with_simd(isa, AcrossInner { op, x, axis, inner, col0: t * tile_cols, out });
    };
    if x.len() < ROWWISE_PAR_MIN || threads < 2 {
        for (o, out_row) in out.chunks_mut(inner).enumerate() {
            for (t, out) in out_row.chunks_mut(tile_cols).enumerate() {
                tile(o, t, out);
            }
        }
    } else {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, out_row)| {
            out_row.par_chunks_mut(tile_cols).enumerate().for_each(|(t, out)| tile(o, t, out));
        });
    }
    Ok(())
}

/// `inner == 1`: `out[r] = op(x[r, :])` for each row `r` of `x` (`[out.len(), axis]`).
struct AlongAxis<'a> {
    op: ReduceOp,
    x: &'a [f32],
    axis: usize,
    out: &'a mut [f32],
}

impl SimdTask for AlongAxis<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        for (x, out) in self.x.chunks_exact(self.axis).zip(self.out.iter_mut()) {
            *out = match self.op {
                ReduceOp::Sum => lanes::sum(s, x),
                ReduceOp::Mean => lanes::sum(s, x) / self.axis as f32,
                ReduceOp::Max => lanes::max(s, x),
                ReduceOp::Min => lanes::min(s, x),
            };
        }
    }
}

/// `inner > 1`, one tile: `out[j] = op over a of x[a, col0 + j]` for `x` one `[axis, inner]`
/// slab. The tile is initialised from axis row 0 and combined with rows 1, 2, ... in order.
struct AcrossInner<'a> {
    op: ReduceOp,
    x: &'a [f32],
    axis: usize,
    inner: usize,
    col0: usize,
    out: &'a mut [f32],
}

impl SimdTask for AcrossInner<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let (x, inner, col0, out) = (self.x, self.inner, self.col0, &mut *self.out);
        match self.op {
            ReduceOp::Sum | ReduceOp::Mean => combine_rows(s, x, inner, col0, out, lanes::Add {}),
            ReduceOp::Max => combine_rows(s, x, inner, col0, out, lanes::MaxNan {}),
            ReduceOp::Min => combine_rows(s, x, inner, col0, out, lanes::MinNan {}),
        }
        if self.op == ReduceOp::Mean {
            lanes::map_in_place(s, self.out, DivBy { n: self.axis as f32 });
        }
    }
}

lane_fn!(/** `v / n`. */ DivBy { n: f32 } = |s, v| s.div(v, s.splat(n)));

/// How many axis rows ahead [`combine_rows`] fetches its tile's columns, into L2. A tile's share
/// of a row is a few KiB at most, and the hardware prefetcher starts over at every page, so
/// without this each row waits on memory. Column sums of a gradient from memory on 2 threads:
/// on Zen 5, 4096 × 2048 3.2 → 1.9 ms and 4096 × 512 1.0 → 0.5 ms with an L1 prefetch and
/// tiles of 256 columns (48 rows ahead was no better); on Zen 4 that was 2.4–2.6 and 1.1–1.3
/// ms, and an L2 prefetch into tiles of a thread's share of the columns (up to [`TILE_COLS`])
/// 1.5 and 0.76–0.83 ms, against 1.2–1.6 and 0.3–0.4 ms for a plain loop over whole rows on one
/// thread (the column tiles that keep each sum's order fixed for any thread count cost the
/// rest).
const ROWS_AHEAD: usize = 16;

/// For `x` an `[axis, inner]` slab and `w = out.len()`: `out = x[0, col0..col0 + w]`, then
/// `out = f(out, x[a, col0..col0 + w])` for `a = 1, 2, ...` in order, lane-wise. A tile of whole
/// rows reads them one after another, a single stream the hardware prefetcher follows: from
/// memory on Zen 4, 4096 × 512 and 4096 × 1024 in 0.47–0.54 and 0.74–0.75 ms on one thread,
/// against 0.97–1.23 and 1.36–1.62 ms for two tiles of half rows on two threads, four rows at a
/// time and fetched ahead. A tile of part rows takes rows four at a time through each vector
/// of `out`, which quarters the loads and stores of `out`, and fetches rows ahead into L2. The
/// order of the combination is the same either way.
#[inline(always)]
fn combine_rows<S: Simd>(s: S, x: &[f32], inner: usize, col0: usize, out: &mut [f32], f: impl LaneFn2) {
    let (w, axis) = (out.len(), x.len() / inner);
    out.copy_from_slice(&x[col0..col0 + w]);
    let full = w - w % S::LANES;
    let whole_rows = w == inner;
    let step = if whole_rows { 1 } else { 4 };
    for a0 in (1..axis).step_by(step) {
        let rows = a0..(a0 + step).min(axis);
        if !whole_rows {
            for a in (a0 + ROWS_AHEAD..a0 + ROWS_AHEAD + 4).take_while(|&a| a < axis) {
                prefetch_run_l2(&x[a * inner + col0..a * inner + col0 + w]);
            }
        }
        for j in (0..full).step_by(S::LANES) {
            let mut acc = lanes::load(s, &out[j..]);
            for a in rows.clone() {
                acc = f.apply(s, acc, lanes::load(s, &x[a * inner + col0 + j..]));
            }
            lanes::store(s, &mut out[j..], acc);
        }
        if full < w {
            let mut acc = lanes::load_partial(s, &out[full..], 0.0);
            for a in rows {
                let start = a * inner + col0;
                acc = f.apply(s, acc, lanes::load_partial(s, &x[start + full..start + w], 0.0));
            }
            lanes::store_partial(s, &mut out[full..], acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, bits, data, in_pools};

    const OPS: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min];

    fn reference(op: ReduceOp, x: &[f32], outer: usize, axis: usize, inner: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for j in 0..inner {
                let col = (0..axis).map(|a| x[(o * axis + a) * inner + j] as f64);
                out.push(match op {
                    ReduceOp::Sum => col.sum(),
                    ReduceOp::Mean => col.sum::<f64>() / axis as f64,
                    ReduceOp::Max => col.fold(f64::NEG_INFINITY, f64::max),
                    ReduceOp::Min => col.fold(f64::INFINITY, f64::min),
                });
            }
        }
        out
    }

    #[test]
    fn matches_reference_on_every_path() {
        let shapes = [
            (1, 1, 1),
            (3, 7, 1),
            (2, 257, 1),
            (1, 65, 1),
            (5, 33, 3),
            (1, 65, 33),
            (3, 7, 257),
            (2, 1, 17),
            (4, 3, 7),
            // Wider than a tile of whole rows: tiles of part rows, the last one ragged.
            (1, 9, 1500),
            (2, 5, 1100),
        ];
        for isa in Isa::supported() {
            for op in OPS {
                for (outer, axis, inner) in shapes {
                    let x = data(outer * axis * inner, (axis * 31 + inner) as u64, -1.0, 1.0);
                    let mut out = vec![f32::NAN; outer * inner];
                    reduce_axis(isa, op, &x, outer, axis, inner, &mut out).unwrap();
                    let want = reference(op, &x, outer, axis, inner);
                    // Sums of signed values: bound the error by the size of the terms, not the sum.
                    let what = format!("{isa} {op:?} [{outer}, {axis}, {inner}]");
                    assert_close(&what, &out, &want, 1e-6, 1e-6);
                }
            }
        }
    }

    #[test]
    fn max_and_min_see_nan() {
        for isa in Isa::supported() {
            for inner in [1, 5] {
                let mut x = data(40 * inner, 1, -1.0, 1.0);
                x[37 * inner] = f32::NAN;
                for op in [ReduceOp::Max, ReduceOp::Min] {
                    let mut out = vec![0.0; inner];
                    reduce_axis(isa, op, &x, 1, 40, inner, &mut out).unwrap();
                    assert!(out[0].is_nan(), "{isa} {op:?} inner={inner}: {out:?}");
                    assert!(out[1..].iter().all(|v| !v.is_nan()), "{isa} {op:?} inner={inner}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn empty_axis_sums_to_zero() {
        let mut out = [1.0; 6];
        reduce_axis(Isa::active(), ReduceOp::Sum, &[], 2, 0, 3, &mut out).unwrap();
        assert_eq!(out, [0.0; 6]);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let isa = Isa::active();
        let err = reduce_axis(isa, ReduceOp::Max, &[], 2, 0, 3, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "reduce_axis: Max over an empty axis ([outer, axis, inner] = [2, 0, 3])");
        let err = reduce_axis(isa, ReduceOp::Sum, &[0.0; 5], 2, 1, 3, &mut [0.0; 6]).unwrap_err();
        assert_eq!(err.to_string(), "reduce_axis: shape mismatch: x has 5 elements, [outer, axis, inner] = [2, 1, 3]");
        let err = reduce_axis(isa, ReduceOp::Sum, &[0.0; 6], 2, 1, 3, &mut [0.0; 4]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "reduce_axis: shape mismatch: out has 4 elements, expected [outer, inner] = [2, 3]"
        );
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let x = data(300 * 1000, 9, -1.0, 1.0);
        for isa in Isa::supported() {
            // [1, 200, 1500]: tiles of part rows, split differently on one and two threads.
            for (outer, axis, inner) in [(300, 1000, 1), (1, 300, 1000), (3, 100, 1000), (1, 200, 1500)] {
                for op in [ReduceOp::Sum, ReduceOp::Max] {
                    let runs = in_pools(&[1, 2], || {
                        let mut out = vec![0.0; outer * inner];
                        reduce_axis(isa, op, &x, outer, axis, inner, &mut out).unwrap();
                        bits(&out)
                    });
                    assert_eq!(runs[0], runs[1], "{isa} {op:?} [{outer}, {axis}, {inner}]");
                }
            }
        }
    }

    #[test]
    fn empty_inner_and_outer_are_no_ops() {
        let mut out: [f32; 0] = [];
        reduce_axis(Isa::active(), ReduceOp::Sum, &[], 3, 5, 0, &mut out).unwrap();
        reduce_axis(Isa::active(), ReduceOp::Max, &[], 0, 5, 4, &mut out).unwrap();
    }
}
