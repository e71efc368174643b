//! Slice-level compute kernels for elide, with no tensor type: the layer that makes skipped
//! FLOPs into skipped seconds.
//!
//! The centre is one GEMM ([`gemm`]) that reads its operands through strided views whose rows
//! may be gathered through an index list and writes through views whose rows may be scattered,
//! with a bias, activation and per-row scale fused into the store. The mixture-of-experts layer
//! of `elide-cond` is this GEMM with one index list per expert; its unit-sparse feed-forward
//! layer at inference streams only its chosen unit rows ([`unit_rows`]). Around it: vectorised
//! elementwise ops, reductions, softmax, norms, top-k and row
//! gather/scatter. Every kernel runs on the best instruction set the CPU has, chosen at run
//! time ([`Isa`]; `ELIDE_ISA` forces a lower one), and splits work over rayon's pool in fixed
//! chunks, so results are bit-identical for any number of threads.
//!
//! ```
//! use elide_kernels::gemm::{Gemm, MatMut, MatRef};
//! // Rows 2 and 0 of X (3x2), times W (2x2): a gathered product, no copy of the rows.
//! let x = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
//! let w = [1.0, 2.0, 3.0, 4.0];
//! let rows = [2u32, 0];
//! let mut h = [0.0; 4];
//! Gemm::default().run(
//!     MatMut::row_major(&mut h, 2, 2)?,
//!     MatRef::row_major(&x, 3, 2)?.gather_rows(&rows)?,
//!     MatRef::row_major(&w, 2, 2)?,
//! )?;
//! assert_eq!(h, [12.0, 18.0, 4.0, 6.0]);
//! # Ok::<(), elide_kernels::KernelError>(())
//! ```

pub mod activation_grad;
pub mod attention;
pub mod buffer;
pub mod cache;
pub mod elementwise;
pub mod error;
pub mod gather;
pub mod gemm;
mod isa;
mod lanes;
pub mod norm;
pub mod peak;
pub mod reduce;
pub mod rope;
pub mod shared_rows;
pub(crate) mod simd;
pub mod softmax;
pub mod softmax_topk;
#[cfg(test)]
mod testing;
pub mod threading;
pub mod topk;
pub mod unit_rows;

pub use activation_grad::activation_backward;
pub use cache::CacheSizes;
pub use elementwise::{binary, scale_add, unary, BinaryOp, UnaryOp};
pub use error::{KernelError, Result};
pub use gather::{gather_rows, scatter_add_rows, weighted_row_sums, weighted_row_sums_backward};
pub use isa::Isa;
pub use norm::{layer_norm_rows, rms_norm_rows};
pub use reduce::{reduce_axis, ReduceOp};
pub use softmax::{log_softmax_rows, softmax_rows};
pub use softmax_topk::softmax_topk_rows;
pub use threading::Par;
pub use topk::{argmax_rows, topk_rows};
