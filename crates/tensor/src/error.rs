//! The one error type of the tensor layer.
//!
//! Every message starts with the operation that refused its arguments and names the shapes,
//! dims or indices involved, e.g. `matmul: inner dimensions differ: [2, 3] x [4, 5]`, so a
//! caller can see what was wrong without a debugger.

use elide_kernels::KernelError;
use thiserror::Error;

/// An invalid argument to a tensor operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// Operand shapes do not fit together (broadcasting, matmul, concat, reshape, ...).
    #[error("{op}: {detail}")]
    Shape {
        /// The operation that refused its arguments.
        op: &'static str,
        /// What did not fit, with the shapes.
        detail: String,
    },
    /// A buffer's length is not the number of elements its shape needs.
    #[error("{op}: {len} values cannot fill shape {shape:?}, which holds {expected}")]
    DataLength {
        /// The operation that refused its arguments.
        op: &'static str,
        /// The number of values given.
        len: usize,
        /// The requested shape.
        shape: Vec<usize>,
        /// The number of elements `shape` holds.
        expected: usize,
    },
    /// A dimension argument is not a dimension of the tensor.
    #[error("{op}: dim {dim} is out of range for shape {shape:?} (rank {})", .shape.len())]
    Dim {
        /// The operation that refused its arguments.
        op: &'static str,
        /// The offending dimension.
        dim: usize,
        /// The tensor's shape.
        shape: Vec<usize>,
    },
    /// An index (in an index list, or an element index) is out of range.
    #[error(
        "{op}: index {index} at position {position} is out of range for dim {dim} of size {size} (shape {shape:?})"
    )]
    Index {
        /// The operation that refused its arguments.
        op: &'static str,
        /// The offending index.
        index: usize,
        /// Where it sits in the index list.
        position: usize,
        /// The dimension being indexed.
        dim: usize,
        /// The size of that dimension.
        size: usize,
        /// The indexed tensor's shape.
        shape: Vec<usize>,
    },
    /// An argument outside what the operation accepts (an empty axis, `k` larger than a row, ...).
    #[error("{op}: {detail}")]
    Argument {
        /// The operation that refused its arguments.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A result too large to allocate: its element count overflows `usize`, or the memory it
    /// needs cannot be allocated.
    #[error("{op}: shape {shape:?} {detail}")]
    Alloc {
        /// The operation that needed the memory.
        op: &'static str,
        /// The shape it would have had.
        shape: Vec<usize>,
        /// Why it cannot be allocated, with the byte count.
        detail: String,
    },
    /// A kernel refused its arguments (its message names the kernel and the sizes).
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Result of a tensor operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Error {
        Error::Shape { op, detail: detail.into() }
    }

    pub(crate) fn argument(op: &'static str, detail: impl Into<String>) -> Error {
        Error::Argument { op, detail: detail.into() }
    }

    pub(crate) fn dim(op: &'static str, dim: usize, shape: &[usize]) -> Error {
        Error::Dim { op, dim, shape: shape.to_vec() }
    }
}

/// Checks that `dim` is a dimension of `shape`.
pub(crate) fn check_dim(op: &'static str, dim: usize, shape: &[usize]) -> Result<()> {
    if dim < shape.len() {
        Ok(())
    } else {
        Err(Error::dim(op, dim, shape))
    }
}

/// Checks every entry of `index` is below `shape[dim]`.
pub(crate) fn check_index(op: &'static str, index: &[u32], dim: usize, shape: &[usize]) -> Result<()> {
    let size = shape[dim];
    match index.iter().position(|&i| i as usize >= size) {
        None => Ok(()),
        Some(position) => {
            Err(Error::Index { op, index: index[position] as usize, position, dim, size, shape: shape.to_vec() })
        }
    }
}
