//! Walking strided tensors in contiguous runs, so elementwise work reaches the vectorised
//! kernels in long slices instead of one element at a time.
//!
//! Several operands of one shape (an output and its inputs) are described together by [`Runs`]:
//! dims of size 1 are dropped and neighbouring dims that are contiguous *in every operand* are
//! merged. What remains is an innermost *run* (one call of a slice kernel) and outer dims walked
//! by an odometer. Along a run an operand either steps by 1 (a slice), by 0 (one value broadcast
//! over the run) or by something else, in which case its run is copied into a scratch buffer so
//! the kernel still sees a slice, and still does the same arithmetic.

use std::convert::Infallible;
use std::ops::Range;

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::{row_major_strides, Tensor};

/// Elements per parallel chunk of an elementwise pass: below about this much work a fork/join
/// costs more than it saves.
const CHUNK_ELEMS: usize = 1 << 15;

/// The layout of several same-shape operands, reduced to the fewest dims.
#[derive(Debug)]
pub(crate) struct Runs {
    /// Sizes of the outer dims, outermost first.
    outer_shape: Vec<usize>,
    /// `outer_strides[op][d]`: stride of operand `op` along outer dim `d`.
    outer_strides: Vec<Vec<usize>>,
    /// Length of one run.
    pub(crate) len: usize,
    /// Stride of each operand along a run.
    pub(crate) run_strides: Vec<usize>,
}

impl Runs {
    /// Describes operands of `shape` with the given strides (one stride list per operand).
    pub(crate) fn new(shape: &[usize], strides: &[&[usize]]) -> Runs {
        // Merged dims from the innermost outwards: (size, stride of each operand).
        let mut dims: Vec<(usize, Vec<usize>)> = Vec::new();
        for d in (0..shape.len()).rev() {
            if shape[d] == 1 {
                continue;
            }
            let outer: Vec<usize> = strides.iter().map(|s| s[d]).collect();
            if let Some((size, inner)) = dims.last_mut() {
                // Dim d continues the current group in every operand: merge it in.
                if outer.iter().zip(inner.iter()).all(|(&o, &i)| o == i * *size) {
                    *size *= shape[d];
                    continue;
                }
            }
            dims.push((shape[d], outer));
        }
        let (len, run_strides) = if dims.is_empty() { (1, vec![1; strides.len()]) } else { dims.remove(0) };
        dims.reverse();
        let outer_shape = dims.iter().map(|(size, _)| *size).collect();
        let outer_strides = (0..strides.len()).map(|op| dims.iter().map(|(_, s)| s[op]).collect()).collect();
        Runs { outer_shape, outer_strides, len, run_strides }
    }

    /// The number of runs.
    pub(crate) fn count(&self) -> usize {
        if self.len == 0 {
            return 0;
        }
        self.outer_shape.iter().product()
    }

    /// Calls `f` with the start offset of every operand for runs `runs` (in row-major order of
    /// the outer dims), starting from the operands' base offsets.
    pub(crate) fn for_each<E>(
        &self,
        runs: Range<usize>,
        base: &[usize],
        mut f: impl FnMut(&[usize]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if runs.is_empty() {
            return Ok(());
        }
        let rank = self.outer_shape.len();
        let mut index = vec![0; rank];
        let mut rest = runs.start;
        for d in (0..rank).rev() {
            index[d] = rest % self.outer_shape[d];
            rest /= self.outer_shape[d];
        }
        let mut offsets: Vec<usize> = base
            .iter()
            .zip(&self.outer_strides)
            .map(|(&b, strides)| b + index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>())
            .collect();
        for _ in runs {
            f(&offsets)?;
            // Odometer step: bump the innermost outer dim, carrying outwards.
            for d in (0..rank).rev() {
                index[d] += 1;
                for (o, s) in offsets.iter_mut().zip(&self.outer_strides) {
                    *o += s[d];
                }
                if index[d] < self.outer_shape[d] {
                    break;
                }
                for (o, s) in offsets.iter_mut().zip(&self.outer_strides) {
                    *o -= s[d] * self.outer_shape[d];
                }
                index[d] = 0;
            }
        }
        Ok(())
    }
}

/// The most inputs [`fill_runs`] takes.
pub(crate) const MAX_INPUTS: usize = 3;

/// Copies the run of `len` elements at `storage[offset]`, stride `stride`, into `scratch`.
fn copy_strided_run(storage: &[f32], offset: usize, len: usize, stride: usize, scratch: &mut Vec<f32>) {
    scratch.clear();
    scratch.extend((0..len).map(|i| storage[offset + i * stride]));
}

/// Fills `out`, a contiguous row-major buffer of `shape`, run by run. Every input must already
/// have `shape` (broadcast views are fine). `f(inputs, out_run)` receives, per input, either a
/// slice of `out_run.len()` values or one value to broadcast over the run (the convention of the
/// slice kernels). Runs are split over rayon's pool in fixed chunks; each output element depends
/// only on its inputs, so the result does not depend on the number of threads.
pub(crate) fn fill_runs<E: Send>(
    shape: &[usize],
    inputs: &[&Tensor],
    out: &mut [f32],
    f: impl Fn(&[&[f32]], &mut [f32]) -> std::result::Result<(), E> + Sync,
) -> std::result::Result<(), E> {
    assert!(inputs.len() <= MAX_INPUTS, "fill_runs takes at most {MAX_INPUTS} inputs");
    debug_assert_eq!(out.len(), shape.iter().product::<usize>());
    if out.is_empty() {
        return Ok(());
    }
    let out_strides = row_major_strides(shape);
    let mut strides: Vec<&[usize]> = vec![&out_strides];
    strides.extend(inputs.iter().map(|t| {
        debug_assert_eq!(t.shape(), shape);
        t.strides()
    }));
    let runs = Runs::new(shape, &strides);
    let mut base = vec![0];
    base.extend(inputs.iter().map(|t| t.offset));
    let len = runs.len;
    // The output is row-major, so run r is out[r * len..(r + 1) * len].
    let fill = |first_run: usize, chunk: &mut [f32]| -> std::result::Result<(), E> {
        let mut scratch: [Vec<f32>; MAX_INPUTS] = Default::default();
        let mut at = 0;
        runs.for_each(first_run..first_run + chunk.len() / len, &base, |offsets| {
            for (k, t) in inputs.iter().enumerate() {
                let stride = runs.run_strides[k + 1];
                if stride > 1 {
                    copy_strided_run(&t.storage, offsets[k + 1], len, stride, &mut scratch[k]);
                }
            }
            let mut slices: [&[f32]; MAX_INPUTS] = [&[]; MAX_INPUTS];
            for (k, t) in inputs.iter().enumerate() {
                let o = offsets[k + 1];
                slices[k] = match runs.run_strides[k + 1] {
                    1 => &t.storage[o..o + len],
                    0 => &t.storage[o..o + 1],
                    _ => &scratch[k],
                };
            }
            let result = f(&slices[..inputs.len()], &mut chunk[at..at + len]);
            at += len;
            result
        })
    };
    let runs_per_chunk = (CHUNK_ELEMS / len).max(1);
    if runs.count() <= runs_per_chunk {
        fill(0, out)
    } else {
        out.par_chunks_mut(runs_per_chunk * len).enumerate().try_for_each(|(c, chunk)| fill(c * runs_per_chunk, chunk))
    }
}

/// [`fill_runs`] into a new contiguous tensor of `shape`, allocated for `op`.
pub(crate) fn map_runs(
    op: &'static str,
    shape: &[usize],
    inputs: &[&Tensor],
    f: impl Fn(&[&[f32]], &mut [f32]) -> Result<()> + Sync,
) -> Result<Tensor> {
    // A broadcast result can hold far more elements than its inputs.
    let mut out = crate::alloc::filled(op, shape, 0.0f32)?;
    fill_runs(shape, inputs, &mut out, f)?;
    Ok(Tensor::from_contiguous(out, shape.to_vec()))
}

/// The elements of `t` in row-major order.
pub(crate) fn gather(t: &Tensor) -> Vec<f32> {
    let mut out = crate::pool::take(t.numel());
    let copy = |inputs: &[&[f32]], out: &mut [f32]| -> std::result::Result<(), Infallible> {
        if inputs[0].len() == out.len() {
            out.copy_from_slice(inputs[0]);
        } else {
            out.fill(inputs[0][0]);
        }
        Ok(())
    };
    let Ok(()) = fill_runs(&t.shape, &[t], &mut out, copy);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arange_shaped, reference_get, unflatten};

    #[test]
    fn runs_merge_dims_contiguous_in_every_operand() {
        // Contiguous: one run of everything.
        let r = Runs::new(&[2, 3, 4], &[&[12, 4, 1]]);
        assert_eq!((r.len, r.count(), r.run_strides.clone()), (24, 1, vec![1]));
        // A bias broadcast over rows: runs are rows, the batch and row dims merge.
        let r = Runs::new(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]);
        assert_eq!((r.len, r.count(), r.outer_shape.clone()), (4, 6, vec![6]));
        // Size-1 dims are dropped; a transposed operand breaks the merge.
        let r = Runs::new(&[3, 1, 4], &[&[4, 4, 1], &[1, 7, 3]]);
        assert_eq!((r.len, r.run_strides.clone(), r.outer_shape.clone()), (4, vec![1, 3], vec![3]));
        // A 0-dimensional operand is one run of one element.
        let r = Runs::new(&[], &[&[]]);
        assert_eq!((r.len, r.count()), (1, 1));
    }

    #[test]
    fn for_each_starts_anywhere_and_walks_in_row_major_order() {
        let r = Runs::new(&[2, 3, 4], &[&[1, 2, 6]]); // fully transposed: runs of 4, stride 6
        let mut all = Vec::new();
        r.for_each::<()>(0..r.count(), &[5], |o| {
            all.push(o[0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(all, vec![5, 7, 9, 6, 8, 10]);
        let mut tail = Vec::new();
        r.for_each::<()>(4..6, &[5], |o| {
            tail.push(o[0]);
            Ok(())
        })
        .unwrap();
        assert_eq!(tail, all[4..]);
    }

    #[test]
    fn gather_is_correct_across_parallel_chunks() {
        // Enough short strided runs to split into several parallel chunks.
        let x = arange_shaped(&[300, 250]).t().unwrap();
        for (f, v) in gather(&x).iter().enumerate() {
            let [j, i] = unflatten(f, &[250, 300])[..] else { unreachable!() };
            assert_eq!(*v, reference_get(&[300, 250], &[i, j]));
        }
    }
}
