//! Derivatives of the fused activations, for backward passes: `dz = dy ⊙ act'(z)`.

use crate::error::{KernelError, Result};
use crate::gemm::{Activation, GELU_A, GELU_C};
use crate::lanes::{self, lane_fn, LaneFn2};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::threading::for_row_chunks;
use crate::Isa;

/// `z`, `dy`, `dz` are `[n]`: `dz[i] = dy[i] · act'(z[i])`, where `z` is the pre-activation.
/// GELU uses the tanh form's exact derivative, erf GELU `Φ(z) + z·φ(z)`; ReLU's derivative at 0 is 0 (as PyTorch).
///
/// # Errors
/// [`KernelError::Shape`] if the lengths differ.
pub fn activation_backward(isa: Isa, act: Activation, z: &[f32], dy: &[f32], dz: &mut [f32]) -> Result<()> {
    if z.len() != dz.len() || dy.len() != dz.len() {
        let detail = format!("z has {} elements, dy {}, dz {}", z.len(), dy.len(), dz.len());
        return Err(KernelError::Shape { op: "activation_backward", detail });
    }
    for_row_chunks(dz, 1, 1, |start, dz| {
        let len = dz.len();
        with_simd(isa, Task { act, z: &z[start..start + len], dy: &dy[start..start + len], dz });
    });
    Ok(())
}

struct Task<'a> {
    act: Activation,
    z: &'a [f32],
    dy: &'a [f32],
    dz: &'a mut [f32],
}

impl SimdTask for Task<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        match self.act {
            Activation::Identity => self.dz.copy_from_slice(self.dy),
            Activation::Relu => body(s, self.z, self.dy, self.dz, ReluGrad {}),
            Activation::Gelu => body(s, self.z, self.dy, self.dz, GeluGrad {}),
            Activation::GeluErf => body(s, self.z, self.dy, self.dz, GeluErfGrad {}),
            Activation::Silu => body(s, self.z, self.dy, self.dz, SiluGrad {}),
        }
    }
}

lane_fn!(ReluGrad {} = |s, z, dy| s.select_lt(s.splat(0.0), z, dy, s.splat(0.0)));
lane_fn!(
    GeluGrad {} = |s, z, dy| {
        // u = c(z + a z³), t = tanh u:  d/dz = ½(1 + t) + ½ z (1 − t²) · c (1 + 3a z²).
        let (c, a) = (s.splat(GELU_C), s.splat(GELU_A));
        let z2 = s.mul(z, z);
        let t = s.tanh(s.mul(c, s.mul_add(s.mul(a, z2), z, z)));
        let half = s.splat(0.5);
        let one = s.splat(1.0);
        let du = s.mul(c, s.mul_add(s.mul(s.splat(3.0), a), z2, one));
        let left = s.mul(half, s.add(one, t));
        let right = s.mul(s.mul(s.mul(half, z), s.sub(one, s.mul(t, t))), du);
        s.mul(dy, s.add(left, right))
    }
);
/// `1/√(2π)`, the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = (std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2 * 0.5) as f32;
lane_fn!(
    GeluErfGrad {} = |s, z, dy| {
        // d/dz z·Φ(z) = Φ(z) + z·φ(z), Φ(z) = ½(1 + erf(z/√2)), φ(z) = e^{−z²/2}/√(2π).
        let cdf = s.mul(s.splat(0.5), s.add(s.splat(1.0), s.erf(s.mul(z, s.splat(std::f32::consts::FRAC_1_SQRT_2)))));
        let pdf = s.mul(s.splat(FRAC_1_SQRT_2PI), s.exp(s.mul(s.splat(-0.5), s.mul(z, z))));
        s.mul(dy, s.mul_add(z, pdf, cdf))
    }
);
lane_fn!(
    SiluGrad {} = |s, z, dy| {
        // σ(z) (1 + z (1 − σ(z))).
        let sig = s.sigmoid(z);
        let one = s.splat(1.0);
        s.mul(dy, s.mul(sig, s.mul_add(z, s.sub(one, sig), one)))
    }
);

#[inline(always)]
fn body<S: Simd>(s: S, z: &[f32], dy: &[f32], dz: &mut [f32], f: impl LaneFn2) {
    let mut zs = z.chunks_exact(S::LANES);
    let mut dys = dy.chunks_exact(S::LANES);
    let mut dzs = dz.chunks_exact_mut(S::LANES);
    for ((zv, dyv), dzv) in (&mut zs).zip(&mut dys).zip(&mut dzs) {
        lanes::store(s, dzv, f.apply(s, lanes::load(s, zv), lanes::load(s, dyv)));
    }
    let tail = zs.remainder();
    if !tail.is_empty() {
        let v = f.apply(s, lanes::load_partial(s, tail, 0.0), lanes::load_partial(s, dys.remainder(), 0.0));
        lanes::store_partial(s, dzs.into_remainder(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences_on_every_path() {
        let z: Vec<f32> = (0..257).map(|i| (i as f32 - 128.0) * 0.037 + 0.005).collect();
        let dy: Vec<f32> = (0..257).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
        for isa in Isa::supported() {
            for act in [Activation::Identity, Activation::Relu, Activation::Gelu, Activation::GeluErf, Activation::Silu]
            {
                let mut dz = vec![0.0; 257];
                activation_backward(isa, act, &z, &dy, &mut dz).unwrap();
                for i in 0..257 {
                    let (x, h) = (z[i] as f64, 1e-6);
                    let want = dy[i] as f64 * (act.reference(x + h) - act.reference(x - h)) / (2.0 * h);
                    assert!(
                        (dz[i] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()),
                        "{isa} {act:?} z={x}: {} vs {want}",
                        dz[i]
                    );
                }
            }
        }
        let err = activation_backward(Isa::active(), Activation::Gelu, &z, &dy[..3], &mut [0.0; 257]).unwrap_err();
        assert_eq!(err.to_string(), "activation_backward: shape mismatch: z has 257 elements, dy 3, dz 257");
    }

    #[test]
    fn erf_gelu_derivative_matches_f64_erf_on_every_path() {
        // Φ(z) + z·φ(z) in f64, from libm's erf: not the formula the kernel evaluates in f32.
        let z: Vec<f32> = (0..2001).map(|i| (i as f32 - 1000.0) * 0.0093 + 0.0001).collect();
        let dy = vec![1.0f32; z.len()];
        for isa in Isa::supported() {
            let mut dz = vec![0.0; z.len()];
            activation_backward(isa, Activation::GeluErf, &z, &dy, &mut dz).unwrap();
            for (&x, &got) in z.iter().zip(&dz) {
                let x = x as f64;
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let want = cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                assert!((got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{isa} z={x}: {got} vs {want}");
            }
        }
    }
}
