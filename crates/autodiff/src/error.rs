//! Errors of the autodiff layer.

use thiserror::Error;

/// An error from a differentiable op, a backward pass, an optimizer or a checkpoint.
#[derive(Debug, Error)]
pub enum Error {
    /// A tensor op refused its arguments.
    #[error(transparent)]
    Tensor(#[from] elide_tensor::Error),
    /// A backward pass was started from something it cannot start from.
    #[error("backward: {0}")]
    Backward(String),
    /// A parameter was registered twice, is missing, or has the wrong shape.
    #[error("{op}: {detail}")]
    Param {
        /// The operation that failed.
        op: &'static str,
        /// What was wrong, with the name and shapes.
        detail: String,
    },
    /// An optimizer was asked to step with settings or gradients it cannot use.
    #[error("{op}: {detail}")]
    Optimizer {
        /// The operation that refused (`AdamW::step`, `Gradients::clip_global_norm`, ...).
        op: &'static str,
        /// What was wrong, with the value.
        detail: String,
    },
    /// A checkpoint could not be written or read back.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The file involved.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A gradient check found an analytic gradient that disagrees with finite differences.
    #[error("gradcheck: {0}")]
    Gradcheck(String),
}

/// Result of an autodiff operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
