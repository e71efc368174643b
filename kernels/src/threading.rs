//! Threading policy: which calls fork onto rayon's pool, and the small helpers that lets
//! disjoint writers share one output buffer.

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
