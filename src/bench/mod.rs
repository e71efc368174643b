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

/// `len` deterministic values in [-1, 1) from `seed` (the same on every machine).
pub fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = elide::tensor::Rng::seed(seed);
    (0..len).map(|_| rng.next_f32() * 2.0 - 1.0).collect()
}
