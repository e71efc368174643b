//! The one error type of the kernels.

use thiserror::Error;

/// An invalid argument to a kernel. Every message names the operation and the shapes, strides
/// or index involved, so the caller can see what was wrong without a debugger.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KernelError {
    /// Operand shapes do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The operation that refused its arguments.
        op: &'static str,
        /// What did not fit, with the shapes.
        detail: String,
    },
    /// A view reaches outside its buffer, or a mutable view overlaps itself.
    #[error("{op}: invalid view: {detail}")]
    View {
        /// The operation that refused its arguments.
        op: &'static str,
        /// The view's shape, strides and buffer length.
        detail: String,
    },
    /// An index is out of range (or repeated where indices must be distinct).
    #[error("{op}: index {index} at position {position} is out of range for {bound} rows{note}")]
    Index {
        /// The operation that refused its arguments.
        op: &'static str,
        /// The offending index.
        index: u64,
        /// Where it sits in the index list.
        position: usize,
        /// The number of valid rows.
        bound: usize,
        /// Extra context (empty, or starting with a separator).
        note: String,
    },
    /// An index appears twice where every index must be distinct (a scattered output).
    #[error("{op}: index {index} appears twice (positions {first} and {second}); scattered rows must be distinct")]
    DuplicateIndex {
        /// The operation that refused its arguments.
        op: &'static str,
        /// The repeated index.
        index: u32,
        /// Its first position.
        first: usize,
        /// Its second position.
        second: usize,
    },
    /// An argument outside what the operation accepts (k = 0 for top-k, an empty axis, ...).
    #[error("{op}: {detail}")]
    Argument {
        /// The operation that refused its arguments.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Result of a kernel call.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Checks that the slice `name` of length `len` holds a `[rows, cols]` matrix.
pub(crate) fn check_matrix(op: &'static str, name: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if rows.checked_mul(cols) == Some(len) {
        return Ok(());
    }
    Err(KernelError::Shape { op, detail: format!("{name} has {len} elements, expected [{rows}, {cols}]") })
}
