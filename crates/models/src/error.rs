//! The one error type of the model layer.

use thiserror::Error;

/// An invalid model configuration or input, or an error of a layer below.
#[derive(Debug, Error)]
pub enum Error {
    /// A tensor op refused its arguments.
    #[error(transparent)]
    Tensor(#[from] elide_tensor::Error),
    /// A differentiable op, parameter or optimizer failed.
    #[error(transparent)]
    Autodiff(#[from] elide_autodiff::Error),
    /// A conditional layer refused its input.
    #[error(transparent)]
    Cond(#[from] elide_cond::Error),
    /// A kernel refused its arguments.
    #[error(transparent)]
    Kernel(#[from] elide_kernels::KernelError),
    /// A shape that does not fit the layer.
    #[error("{op}: {detail}")]
    Shape {
        /// The layer or operation.
        op: &'static str,
        /// What was expected and what was given.
        detail: String,
    },
    /// A setting out of its range.
    #[error("{op}: {detail}")]
    Config {
        /// The layer or operation.
        op: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Error {
        Error::Shape { op, detail: detail.into() }
    }

    pub(crate) fn config(op: &'static str, detail: impl Into<String>) -> Error {
        Error::Config { op, detail: detail.into() }
    }
}

/// `Result` with this crate's [`Error`](enum@Error).
pub type Result<T> = std::result::Result<T, Error>;
