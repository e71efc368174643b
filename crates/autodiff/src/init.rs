//! Parameter initializers. A weight declares its [`WeightLayout`]: `[in, out]` (the layer
//! computes `x·W`) or `[out, in]` (one row per output unit: PyTorch's `Linear`, and the
//! unit-major layout of a sparse feed-forward layer); the fan-based initializers read
//! `fan_in` and `fan_out` from the last two dims through it (leading dims stack independent
//! blocks, such as the experts of `[E, in, out]`).

use crate::error::Result;
use elide_tensor::{Rng, Tensor};

/// `N(0, std²)`.
///
/// # Errors
/// If the tensor cannot be allocated (a size that overflows, or memory runs out).
pub fn normal(shape: &[usize], std: f32, rng: &mut Rng) -> Result<Tensor> {
    Ok(Tensor::try_randn(shape, rng)?.mul_scalar(std))
}

/// `U(−bound, bound)`.
///
/// # Errors
/// If `bound` is not finite, or the tensor cannot be allocated.
pub fn uniform(shape: &[usize], bound: f32, rng: &mut Rng) -> Result<Tensor> {
    Ok(Tensor::uniform(shape, -bound.abs(), bound.abs(), rng)?)
}

/// How a weight stores the map from its inputs to its outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightLayout {
    /// `[.., in, out]`: the matrix of `x·W`.
    #[default]
    InOut,
    /// `[.., out, in]`: one row per output unit, read transposed.
    OutIn,
}

impl WeightLayout {
    /// The `[G, ·, ·]` shape of `g` stacked blocks mapping `fan_in` to `fan_out`.
    pub fn shape(self, g: usize, fan_in: usize, fan_out: usize) -> [usize; 3] {
        match self {
            WeightLayout::InOut => [g, fan_in, fan_out],
            WeightLayout::OutIn => [g, fan_out, fan_in],
        }
    }

    /// `(fan_in, fan_out)` of a weight of this layout, from its last two dims (`[n]`: both
    /// `n`; a scalar: both 1).
    pub fn fans(self, shape: &[usize]) -> (usize, usize) {
        match (shape, self) {
            ([], _) => (1, 1),
            ([n], _) => (*n, *n),
            ([.., a, b], WeightLayout::InOut) => (*a, *b),
            ([.., a, b], WeightLayout::OutIn) => (*b, *a),
        }
    }
}

/// `N(0, 1/fan_in)` (LeCun normal): unit-variance outputs for unit-variance inputs.
///
/// # Errors
/// If the tensor cannot be allocated.
pub fn lecun_normal(shape: &[usize], layout: WeightLayout, rng: &mut Rng) -> Result<Tensor> {
    let (fi, _) = layout.fans(shape);
    normal(shape, (1.0 / fi.max(1) as f32).sqrt(), rng)
}

/// Xavier/Glorot uniform: `U(±√(6/(fan_in + fan_out)))` (Glorot & Bengio 2010).
///
/// # Errors
/// If a dimension is 0 (the bound would be infinite).
pub fn xavier_uniform(shape: &[usize], layout: WeightLayout, rng: &mut Rng) -> Result<Tensor> {
    let (fi, fo) = layout.fans(shape);
    uniform(shape, (6.0 / (fi + fo) as f32).sqrt(), rng)
}

/// Kaiming/He normal for ReLU-family layers: `N(0, 2/fan_in)` (arXiv 1502.01852).
///
/// # Errors
/// If the tensor cannot be allocated.
pub fn kaiming_normal(shape: &[usize], layout: WeightLayout, rng: &mut Rng) -> Result<Tensor> {
    let (fi, _) = layout.fans(shape);
    normal(shape, (2.0 / fi as f32).sqrt(), rng)
}

/// `N(0, (std/√(2·layers))²)`: the scaled init of residual-branch output projections (GPT-2),
/// so the residual stream's variance does not grow with depth.
///
/// # Errors
/// If the tensor cannot be allocated.
pub fn residual_scaled_normal(shape: &[usize], std: f32, layers: usize, rng: &mut Rng) -> Result<Tensor> {
    normal(shape, std / (2.0 * layers.max(1) as f32).sqrt(), rng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initializers_have_the_intended_spread() {
        let mut rng = Rng::seed(3);
        let variance = |t: Tensor| t.to_vec().iter().map(|x| (x * x) as f64).sum::<f64>() / t.numel() as f64;
        let var = variance(kaiming_normal(&[256, 512], WeightLayout::InOut, &mut rng).unwrap());
        assert!((var - 2.0 / 256.0).abs() < 0.1 * 2.0 / 256.0, "{var}");
        // The same shape read as [out, in]: fan-in is 512.
        let var = variance(kaiming_normal(&[256, 512], WeightLayout::OutIn, &mut rng).unwrap());
        assert!((var - 2.0 / 512.0).abs() < 0.1 * 2.0 / 512.0, "{var}");
        // Stacked blocks [E, out, in]: fan-in is the last dim.
        let var = variance(lecun_normal(&[4, 64, 128], WeightLayout::OutIn, &mut rng).unwrap());
        assert!((var - 1.0 / 128.0).abs() < 0.1 / 128.0, "{var}");
        let bound = (6.0f32 / 768.0).sqrt();
        let w = xavier_uniform(&[256, 512], WeightLayout::InOut, &mut rng).unwrap().to_vec();
        assert!(w.iter().all(|x| x.abs() <= bound) && w.iter().any(|x| x.abs() > 0.9 * bound));
    }

    #[test]
    fn layouts_name_their_fans() {
        assert_eq!(WeightLayout::InOut.fans(&[3, 5]), (3, 5));
        assert_eq!(WeightLayout::OutIn.fans(&[8, 3, 5]), (5, 3));
        assert_eq!(WeightLayout::OutIn.shape(8, 5, 3), [8, 3, 5]);
        assert_eq!(WeightLayout::InOut.fans(&[7]), (7, 7));
    }
}
