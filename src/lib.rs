//! elide: a CPU tensor engine for conditional computation, whose wall-clock cost tracks active
//! FLOPs.
//!
//! This facade re-exports the layers, lowest first: [`kernels`] (slice-level compute: the
//! gathered/scattered GEMM, elementwise ops, reductions, softmax, norms, top-k, gather/scatter,
//! run-time CPU dispatch), [`tensor`] (the `Tensor` type with views, broadcasting and forward
//! ops), [`autodiff`] (`Var`, backward rules, parameters, optimizers, checkpoints) and [`cond`]
//! (routers, dispatch plans, the mixture-of-experts layer on the grouped gathered GEMM). The `elide` binary in this package runs the benchmarks (`elide bench gemm`).
//!
//! ```
//! use elide::kernels::gemm::{Gemm, MatMut, MatRef};
//! let (a, b) = ([1.0, 2.0], [3.0, 4.0]);
//! let mut c = [0.0];
//! Gemm::default().run(MatMut::row_major(&mut c, 1, 1)?, MatRef::row_major(&a, 1, 2)?, MatRef::row_major(&b, 2, 1)?)?;
//! assert_eq!(c, [11.0]);
//! # Ok::<(), elide::kernels::KernelError>(())
//! ```

pub use elide_autodiff as autodiff;
pub use elide_cond as cond;
pub use elide_kernels as kernels;
pub use elide_models as models;
pub use elide_tensor as tensor;

/// The README's library example, compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
