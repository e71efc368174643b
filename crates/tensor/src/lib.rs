//! The elide tensor: an n-dimensional `f32` array with shared storage, and the forward
//! operations the layers above it are written in.
//!
//! A [`Tensor`] is a shape, strides and an offset over reference-counted storage. It is
//! immutable: every operation returns a new tensor, and views (reshape, permute, transpose,
//! narrow, broadcast, squeeze) share the storage of their source, so they cost no copy. The
//! operations (NumPy-broadcasting arithmetic, unary maps, batched matrix products, reductions,
//! softmax and norms, top-k, gather and scatter) check their arguments, return [`Result`] with
//! an [`Error`] naming the operation and the shapes involved, and run on the vectorised,
//! multi-threaded kernels of `elide-kernels`. Results are bit-identical for any number of
//! threads, and the seeded [`Rng`] gives the same values on every machine. Large buffers are
//! recycled through a bounded process-wide [`pool`], so a layer called in a loop does not pay
//! page faults for fresh memory on every call. Through the `elide` facade this crate is
//! `elide::tensor`.
//!
//! ```
//! use elide_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let x = Tensor::randn(&[4, 8], &mut rng); // a batch of 4 inputs
//! let w = Tensor::randn(&[8, 3], &mut rng); // weights
//! let b = Tensor::from_vec(vec![0.1, 0.2, 0.3], &[3])?;
//!
//! let logits = x.matmul(&w)?.add(&b)?; // [4, 3]; the bias broadcasts over rows
//! let probs = logits.softmax()?;
//! let (top, which) = probs.topk(1)?; // best class per row
//! assert_eq!((top.shape(), which.shape()), (&[4, 1][..], &[4, 1][..]));
//!
//! let row_sums = probs.sum(1, false)?.to_vec();
//! assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
//!
//! // Views are free: the transpose shares storage and the product reads it in place.
//! let gram = w.t()?.matmul(&w)?;
//! assert_eq!(gram.shape(), &[3, 3]);
//!
//! // Errors name the operation and the shapes.
//! let err = x.matmul(&x).unwrap_err();
//! assert_eq!(err.to_string(), "matmul: inner dimensions differ: [4, 8] x [4, 8]");
//! # Ok::<(), elide_tensor::Error>(())
//! ```

#![warn(missing_docs)]

mod alloc;
mod broadcast;
mod error;
mod indices;
mod layout;
mod ops;
pub mod pool;
mod rng;
mod tensor;
#[cfg(test)]
mod testing;
mod view;

pub use broadcast::broadcast_shape;
pub use elide_kernels::elementwise::UnaryOp;
pub use error::{Error, Result};
pub use indices::IndexTensor;
pub use rng::Rng;
pub use tensor::Tensor;

// Tensors are shared between threads (rayon pools, servers holding a model): keep them so.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tensor>();
    assert_send_sync::<IndexTensor>();
    assert_send_sync::<Rng>();
};
