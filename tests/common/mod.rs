//! Helpers shared by the PyTorch cross-checks: reading fixture tensors, comparing against them.
// Each test binary compiles this module and uses only some of its helpers.
#![allow(dead_code)]

use elide::tensor::Tensor;
use serde_json::Value;

/// A fixture tensor `{"shape": [...], "data": [...]}`.
pub fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data: Vec<f32> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    Tensor::from_vec(data, &shape).unwrap()
}

/// Relative agreement, measured against the tensor's scale so entries near zero do not turn
/// rounding noise into a huge relative error.
#[track_caller]
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let (g, w) = (got.to_vec(), want.to_vec());
    let scale = w.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= rtol * b.abs().max(0.1 * scale), "{what}[{i}]: elide {a}, PyTorch {b}");
    }
}
