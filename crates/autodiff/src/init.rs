//! Parameter initializers. Weights of a linear map are stored `[in, out]` (the layer computes
//! `x·W`), so `fan_in = shape[0]` and `fan_out = shape[1]`.

use crate::error::Result;
use elide_tensor::{Rng, Tensor};

/// `N(0, std²)`.
pub fn normal(shape: &[usize], std: f32, rng: &mut Rng) -> Tensor {
    Tensor::randn(shape, rng).mul_scalar(std)
}

/// `U(−bound, bound)`.
///
/// # Errors
/// If `bound` is not finite.
pub fn uniform(shape: &[usize], bound: f32, rng: &mut Rng) -> Result<Tensor> {
    Ok(Tensor::uniform(shape, -bound.abs(), bound.abs(), rng)?)
}

/// Fan-in and fan-out of a `[in, out]` weight (or `[n]`: both `n`).
fn fans(shape: &[usize]) -> (f32, f32) {
    match shape {
        [n] => (*n as f32, *n as f32),
        [.., fan_in, fan_out] => (*fan_in as f32, *fan_out as f32),
        [] => (1.0, 1.0),
    }
}

/// Xavier/Glorot uniform: `U(±√(6/(fan_in + fan_out)))` (Glorot & Bengio 2010).
///
/// # Errors
/// If a dimension is 0 (the bound would be infinite).
pub fn xavier_uniform(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
    let (fi, fo) = fans(shape);
    uniform(shape, (6.0 / (fi + fo)).sqrt(), rng)
}

/// Kaiming/He normal for ReLU-family layers: `N(0, 2/fan_in)` (arXiv 1502.01852).
pub fn kaiming_normal(shape: &[usize], rng: &mut Rng) -> Tensor {
    let (fi, _) = fans(shape);
    normal(shape, (2.0 / fi).sqrt(), rng)
}

/// `N(0, (std/√(2·layers))²)`: the scaled init of residual-branch output projections (GPT-2),
/// so the residual stream's variance does not grow with depth.
pub fn residual_scaled_normal(shape: &[usize], std: f32, layers: usize, rng: &mut Rng) -> Tensor {
    normal(shape, std / (2.0 * layers.max(1) as f32).sqrt(), rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initializers_have_the_intended_spread() {
        let mut rng = Rng::seed(3);
        let w = kaiming_normal(&[256, 512], &mut rng).to_vec();
        let var = w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64;
        assert!((var - 2.0 / 256.0).abs() < 0.1 * 2.0 / 256.0, "{var}");
        let bound = (6.0f32 / 768.0).sqrt();
        assert!(xavier_uniform(&[256, 512], &mut rng).unwrap().to_vec().iter().all(|x| x.abs() <= bound));
    }
}
