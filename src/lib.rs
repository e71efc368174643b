//! elide: a CPU tensor engine for conditional computation.
pub use elide_kernels as kernels;
pub use elide_tensor as tensor;
