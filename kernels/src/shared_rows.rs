//! Output rows that several threads add gated rows into at once, each row behind a lock of its
//! own: a mixture-of-experts combine run by the tasks that compute the expert outputs, while
//! those outputs are still in cache, instead of a pass of its own that reads them all back from
//! memory.
//!
//! Arrival order depends on the threads, so the sums could depend on it too. They do not while
//! a row receives at most [`MAX_ADDS_PER_ROW`] rows: the first is stored as `g·x` and the second
//! added as `out + g·x`, each product rounded before the add, and a two-term float sum is the
//! same in either order (`a + b = b + a`, signed zeros included; of two NaNs, x86 keeps the
//! first one's payload, so only a NaN's payload can differ). So a top-1 or top-2 combine
//! through [`SharedRowSums`] has the bits of [`weighted_row_sums`](crate::weighted_row_sums)
//! for any thread count, and a third row for one output row is refused.

use crate::error::{check_matrix, KernelError, Result};
use crate::lanes;
use crate::simd::{with_simd, Simd, SimdTask, LINE_FLOATS};
use crate::Isa;
use std::sync::{Mutex, PoisonError};

/// How many rows one output row of a [`SharedRowSums`] may receive: the most for which the sum
/// does not depend on the order they arrive in.
pub const MAX_ADDS_PER_ROW: usize = 2;

/// One output row and how many rows it has received.
struct Row<'a> {
    received: usize,
    values: &'a mut [f32],
}

/// A `[rows, cols]` output that threads add scaled rows into ([`SharedRowSums::add_scaled`]),
/// each output row locked while it is written. Rows that received nothing are zeroed when it is
/// [`finish`](SharedRowSums::finish)ed or dropped, so the output never keeps what the buffer
/// held before.
///
/// ```
/// use elide_kernels::shared_rows::SharedRowSums;
/// use elide_kernels::Isa;
/// let mut out = [f32::NAN; 6]; // 3 rows of 2
/// let sums = SharedRowSums::new(&mut out, 3, 2)?;
/// std::thread::scope(|scope| {
///     scope.spawn(|| sums.add_scaled(Isa::active(), &[1.0, 2.0], &[2], &[0.5]));
///     scope.spawn(|| sums.add_scaled(Isa::active(), &[10.0, 20.0, 3.0, 4.0], &[0, 2], &[2.0, 1.0]));
/// });
/// sums.finish();
/// assert_eq!(out, [20.0, 40.0, 0.0, 0.0, 3.5, 5.0]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
pub struct SharedRowSums<'a> {
    cols: usize,
    /// Where the output starts, as an address: only ever used to prefetch, which never faults.
    base: usize,
    rows: Vec<Mutex<Row<'a>>>,
}

impl<'a> SharedRowSums<'a> {
    /// Shares `out`, `[rows, cols]`, whose values are overwritten: each row by its first added
    /// row, or by zeros when the sums are finished (or dropped) if it receives none.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if `out` does not hold `rows × cols` values.
    pub fn new(out: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        check_matrix("SharedRowSums::new", "out", out.len(), rows, cols)?;
        let base = out.as_ptr() as usize;
        let rows = if cols == 0 {
            (0..rows).map(|_| Mutex::new(Row { received: 0, values: &mut [] })).collect()
        } else {
            out.chunks_exact_mut(cols).map(|values| Mutex::new(Row { received: 0, values })).collect()
        };
        Ok(SharedRowSums { cols, base, rows })
    }

    /// Number of output rows.
    pub fn num_rows(&self) -> usize {
        self.rows.len()
    }

    /// Width of each output row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// For each `i` in order, output row `rows[i]` receives `scale[i] · src[i, :]` (`scale`
    /// empty: 1): stored if it is the row's first, added otherwise, each product rounded before
    /// it is added (no fused multiply-add), as [`weighted_row_sums`](crate::weighted_row_sums)
    /// computes. `src` is `[rows.len(), cols]`. Safe to call from many threads at once.
    ///
    /// # Errors
    /// [`KernelError::Shape`] if `src` or `scale` has the wrong length; [`KernelError::Index`]
    /// for the first row index out of range (nothing is written then); [`KernelError::Argument`]
    /// naming the output row that would receive a row beyond [`MAX_ADDS_PER_ROW`] (the rows
    /// before it in this call are added).
    pub fn add_scaled(&self, isa: Isa, src: &[f32], rows: &[u32], scale: &[f32]) -> Result<()> {
        const OP: &str = "SharedRowSums::add_scaled";
        check_matrix(OP, "src", src.len(), rows.len(), self.cols)?;
        if !scale.is_empty() && scale.len() != rows.len() {
            let detail = format!("scale has {} elements for {} rows of src", scale.len(), rows.len());
            return Err(KernelError::Shape { op: OP, detail });
        }
        let bound = self.rows.len();
        if let Some(position) = rows.iter().position(|&r| r as usize >= bound) {
            let index = rows[position] as u64;
            return Err(KernelError::Index { op: OP, index, position, bound, note: String::new() });
        }
        match with_simd(isa, AddTask { sums: self, src, rows, scale }) {
            None => Ok(()),
            Some(row) => Err(KernelError::Argument {
                op: OP,
                detail: format!(
                    "output row {row} would receive more than {MAX_ADDS_PER_ROW} rows, whose sum would depend on \
                     the order the threads add them in"
                ),
            }),
        }
    }

    /// Ends the sums: rows that received nothing are filled with zeros, and `out` is free again.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for SharedRowSums<'_> {
    fn drop(&mut self) {
        for row in &mut self.rows {
            let row = row.get_mut().unwrap_or_else(PoisonError::into_inner);
            if row.received == 0 {
                row.values.fill(0.0);
            }
        }
    }
}

/// The rows of one [`SharedRowSums::add_scaled`] call, every index checked.
struct AddTask<'s, 'a> {
    sums: &'s SharedRowSums<'a>,
    src: &'s [f32],
    rows: &'s [u32],
    scale: &'s [f32],
}

impl SimdTask for AddTask<'_, '_> {
    /// The first output row that would have received one row too many.
    type Output = Option<usize>;
    #[inline(always)]
    fn run<S: Simd>(self, s: S) -> Option<usize> {
        let AddTask { sums, src, rows, scale } = self;
        let cols = sums.cols;
        for (i, &r) in rows.iter().enumerate() {
            // Output rows lie anywhere: fetch the next one while this one is written (a row is
            // a few KiB, too short for the hardware prefetcher to get ahead).
            if let Some(&next) = rows.get(i + 1) {
                let start = (sums.base as *const f32).wrapping_add(next as usize * cols);
                for j in (0..cols).step_by(LINE_FLOATS) {
                    s.prefetch(start.wrapping_add(j));
                }
            }
            let x = &src[i * cols..(i + 1) * cols];
            let g = scale.get(i).copied().unwrap_or(1.0);
            let mut row = sums.rows[r as usize].lock().unwrap_or_else(PoisonError::into_inner);
            match row.received {
                0 => lanes::map(s, x, &mut row.values[..], lanes::Scale { factor: g }),
                1 => lanes::zip_in_place(s, &mut row.values[..], x, lanes::AddScaled { factor: g }),
                _ => return Some(r as usize),
            }
            row.received += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests;
