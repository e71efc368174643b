//! Reductions over the middle axis of a contiguous `[outer, axis, inner]` array.
//!
//! Each output element is reduced in a fixed order that depends only on the shape: along the
//! axis with lane-wise partial results (`inner == 1`), or axis row by axis row, vectorised
//! across `inner` (`inner > 1`). Work splits over rayon by output rows or column tiles, never
//! inside one output element, so results are bit-identical for any thread count.

use crate::error::{KernelError, Result};
use crate::lanes;
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::{for_row_chunks, ROWWISE_CHUNK, ROWWISE_PAR_MIN};
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
    if out.len() != outer * inner {
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
    // A tile is (one outer index, up to TILE_COLS columns); wide enough tiles to repay a task.
    let tile_cols = TILE_COLS.min((ROWWISE_CHUNK / axis).next_multiple_of(16)).max(16);
    let tile = |o: usize, t: usize, out: &mut [f32]| {
        let x = &x[o * axis * inner..(o + 1) * axis * inner];
        with_simd(isa, AcrossInner { op, x, axis, inner, col0: t * tile_cols, out });
    };
    if x.len() < ROWWISE_PAR_MIN || rayon::current_num_threads() < 2 {
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
    fn run<S: Simd>(self, s: S) {
        let rows = self.x.chunks_exact(self.axis).zip(self.out.iter_mut());
        match self.op {
            ReduceOp::Sum => rows.for_each(|(x, out)| *out = lanes::sum(s, x)),
            ReduceOp::Mean => rows.for_each(|(x, out)| *out = lanes::sum(s, x) / self.axis as f32),
            ReduceOp::Max => rows.for_each(|(x, out)| *out = lanes::max(s, x)),
            ReduceOp::Min => rows.for_each(|(x, out)| *out = lanes::min(s, x)),
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
    fn run<S: Simd>(self, s: S) {
        let cols = self.col0..self.col0 + self.out.len();
        let rows = self.x.chunks_exact(self.inner).map(|row| &row[cols.clone()]);
        match self.op {
            ReduceOp::Sum | ReduceOp::Mean => combine_rows(s, rows, self.out, |a, b| s.add(a, b)),
            ReduceOp::Max => combine_rows(s, rows, self.out, |a, b| lanes::max_nan(s, a, b)),
            ReduceOp::Min => combine_rows(s, rows, self.out, |a, b| lanes::min_nan(s, a, b)),
        }
        if self.op == ReduceOp::Mean {
            let n = s.splat(self.axis as f32);
            lanes::map_in_place(s, self.out, |v| s.div(v, n));
        }
    }
}

/// `out = rows[0]`, then `out = f(out, row)` for each following row, lane-wise.
#[inline(always)]
fn combine_rows<'a, S: Simd>(
    s: S,
    mut rows: impl Iterator<Item = &'a [f32]>,
    out: &mut [f32],
    f: impl Fn(S::V, S::V) -> S::V,
) {
    let Some(first) = rows.next() else { return };
    out.copy_from_slice(first);
    for row in rows {
        let mut outs = out.chunks_exact_mut(S::LANES);
        let mut xs = row.chunks_exact(S::LANES);
        for (ov, xv) in (&mut outs).zip(&mut xs) {
            let v = f(lanes::load(s, ov), lanes::load(s, xv));
            lanes::store(s, ov, v);
        }
        let (ot, xt) = (outs.into_remainder(), xs.remainder());
        if !ot.is_empty() {
            let v = f(lanes::load_partial(s, ot, 0.0), lanes::load_partial(s, xt, 0.0));
            lanes::store_partial(s, ot, v);
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
        let shapes =
            [(1, 1, 1), (3, 7, 1), (2, 257, 1), (1, 65, 1), (5, 33, 3), (1, 65, 33), (3, 7, 257), (2, 1, 17), (4, 3, 7)];
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
            for (outer, axis, inner) in [(300, 1000, 1), (1, 300, 1000), (3, 100, 1000)] {
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
}
