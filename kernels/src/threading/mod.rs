//! Threading policy: which calls fork onto rayon's pool, a parallel loop in which the calling
//! thread takes part ([`for_each_task`]), and the small helpers that let disjoint writers
//! share one output buffer.

mod tasks;

pub use tasks::for_each_task;

/// Whether a kernel may use rayon's thread pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Par {
    /// Run on the calling thread.
    Seq,
    /// Use the current rayon pool (the global one, or the one installed around the call).
    /// Problems too small to repay a fork/join still run on the calling thread.
    #[default]
    Rayon,
}

/// A raw output pointer shared by threads that write disjoint elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendPtr(pub(crate) *mut f32);

// SAFETY: a SendPtr is only created by kernels that hand each thread a disjoint set of
// elements to write (checked by the view constructors), so sharing the pointer is race-free.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// Elements of work below which the row-wise kernels (everything but the GEMM) stay on the
/// calling thread: a fork/join costs a few microseconds, about what 32K elements take.
pub(crate) const ROWWISE_PAR_MIN: usize = 32 * 1024;

/// Elements of work per rayon task of a row-wise kernel.
pub(crate) const ROWWISE_CHUNK: usize = 16 * 1024;

/// Calls `f(first_row, rows)` on consecutive chunks of whole rows of `out`, whose rows are
/// `row_len` long and cost `work_per_row` elements of work each. Forks onto rayon only when the
/// total work reaches [`ROWWISE_PAR_MIN`]. A row is never split, so every output element is
/// computed by the same arithmetic for any number of threads: results are bit-identical.
pub(crate) fn for_row_chunks<T: Send>(
    out: &mut [T],
    row_len: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    use rayon::prelude::*;
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let work = rows.saturating_mul(work_per_row);
    if rows < 2 || work < ROWWISE_PAR_MIN || rayon::current_num_threads() < 2 {
        f(0, out);
        return;
    }
    let chunk_rows = (ROWWISE_CHUNK / work_per_row.max(1)).max(1);
    out.par_chunks_mut(chunk_rows * row_len).enumerate().for_each(|(c, chunk)| f(c * chunk_rows, chunk));
}
