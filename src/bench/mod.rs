//! The benchmark areas behind `elide bench <area>`.

pub mod autodiff;
pub mod dense_ffn;
pub mod gemm;
pub mod moe;
pub mod report;
pub mod timing;
