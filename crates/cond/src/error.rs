//! The one error type of the conditional-computation layer.
//!
//! Every message starts with the operation that refused its input (`router`, `top_k`,
//! `DispatchPlan`, ...) and names the values, indices or shapes involved, so a bad router or a
//! bad plan can be diagnosed from the message alone.

use thiserror::Error;

/// An invalid input to a router, a dispatch plan, an auxiliary loss or a conditional layer.
#[derive(Debug, Error)]
pub enum Error {
    /// A differentiable op (or its backward pass) failed.
    #[error(transparent)]
    Autodiff(#[from] elide_autodiff::Error),
    /// A tensor op refused its arguments.
    #[error(transparent)]
    Tensor(#[from] elide_tensor::Error),
    /// A router logit is NaN or infinite: the router (or what feeds it) has diverged.
    #[error("router: NaN or infinite logit in row {row} (expert {expert} is {value})")]
    NonFiniteLogit {
        /// The token (row of the `[T, E]` logits).
        row: usize,
        /// The first expert (column) of that row holding a non-finite value.
        expert: usize,
        /// The value.
        value: f32,
    },
    /// A token-choice router asked for `k` experts out of `num_experts` with `k` out of range.
    #[error("top_k: k = {k} must be in 1..={num_experts} experts")]
    TopK {
        /// The requested number of experts per token.
        k: usize,
        /// The number of experts.
        num_experts: usize,
    },
    /// A capacity factor that is not finite or not positive.
    #[error("{op}: capacity factor {factor} must be finite and > 0")]
    CapacityFactor {
        /// The operation that refused it.
        op: &'static str,
        /// The factor given.
        factor: f32,
    },
    /// The same (token, expert) pair appears twice in one routing.
    #[error(
        "DispatchPlan: token {token} is assigned to expert {expert} twice \
         (assignments {first} and {second}); duplicate expert ids refused"
    )]
    DuplicateAssignment {
        /// The token.
        token: u32,
        /// The expert it names twice.
        expert: u32,
        /// The first assignment naming the pair.
        first: usize,
        /// The second assignment naming the pair.
        second: usize,
    },
    /// A token or expert id outside `0..num_tokens` / `0..num_experts`.
    #[error("{op}: {what} {value} at assignment {position} is out of range for {bound} {what}s")]
    OutOfRange {
        /// The operation that refused it.
        op: &'static str,
        /// `"token"` or `"expert"`.
        what: &'static str,
        /// The offending id.
        value: u32,
        /// Its position in the assignment list.
        position: usize,
        /// The number of tokens or experts.
        bound: usize,
    },
    /// Shapes or lengths that do not fit together.
    #[error("{op}: {detail}")]
    Shape {
        /// The operation that refused its arguments.
        op: &'static str,
        /// What did not fit, with the shapes.
        detail: String,
    },
    /// Any other argument outside what the operation accepts (zero experts, ...).
    #[error("{op}: {detail}")]
    Argument {
        /// The operation that refused its arguments.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Result of a conditional-computation operation.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Error {
        Error::Shape { op, detail: detail.into() }
    }

    pub(crate) fn argument(op: &'static str, detail: impl Into<String>) -> Error {
        Error::Argument { op, detail: detail.into() }
    }
}

/// Errors inside a backward rule of this crate travel through the autodiff graph as its error.
impl From<Error> for elide_autodiff::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Autodiff(e) => e,
            Error::Tensor(e) => elide_autodiff::Error::Tensor(e),
            other => elide_autodiff::Error::Backward(other.to_string()),
        }
    }
}
