//! The benchmark areas behind `elide bench <area>`.

pub mod autodiff;
pub mod gemm;
pub mod report;
pub mod timing;
