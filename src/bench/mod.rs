//! The benchmark areas behind `elide bench <area>`.

pub mod attention;
pub mod autodiff;
pub mod dense_ffn;
pub mod exit;
pub mod gemm;
pub mod hier;
pub mod lm;
pub mod moe;
pub mod peak;
pub mod report;
pub mod skip;
pub mod sparse_ff;
pub mod sweep;
pub mod timing;

/// `len` deterministic values in [-1, 1) from `seed` (the same on every machine), in memory
/// allocated as elide allocates its own tensors ([`elide::kernels::buffer::zeroed_f32`]: huge
/// pages for a large buffer, where the system has them), so a benchmark's inputs and weights
/// are paged as a model's activations and parameters are.
pub fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = elide::tensor::Rng::seed(seed);
    let mut out = elide::kernels::buffer::zeroed_f32(len);
    out.iter_mut().for_each(|v| *v = rng.next_f32() * 2.0 - 1.0);
    out
}

/// `len` ones, allocated as [`fill`] allocates: the buffer a plain read streams over to
/// measure the memory bandwidth that a layer's weights (paged alike) are held against.
pub fn ones(len: usize) -> Vec<f32> {
    let mut out = elide::kernels::buffer::zeroed_f32(len);
    out.fill(1.0);
    out
}
