//! A small seeded random number generator, so that initial weights, data and sampling are
//! reproducible bit for bit.
//!
//! The generator is xoshiro256** (Blackman and Vigna, "Scrambled linear pseudorandom number
//! generators", arXiv 1805.01407), its state filled from the seed by SplitMix64. Normal samples
//! use Marsaglia's polar method, and Gumbel and logistic samples (the noise of discrete-choice
//! estimators) invert their distribution functions, all with a logarithm computed here from
//! `+ - * /` and `sqrt` only: those are correctly rounded by IEEE 754, whereas the platform's
//! `ln` may differ in the last bit between C libraries. So **the same seed gives the same values
//! on every machine**, every operating system and every build.

use crate::alloc;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A deterministic pseudo-random generator (xoshiro256**, seeded by SplitMix64).
///
/// ```
/// use elide_tensor::{Rng, Tensor};
/// let a = Tensor::randn(&[2, 3], &mut Rng::seed(7));
/// let b = Tensor::randn(&[2, 3], &mut Rng::seed(7));
/// assert_eq!(a.to_vec(), b.to_vec()); // and the same on any other machine
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: [u64; 4],
    /// The second value of the last polar-method pair, as f64 bits, not yet handed out.
    spare_normal: Option<u64>,
}

/// One step of SplitMix64 (Steele, Lea and Flood 2014), used to spread a seed over the state.
fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `ln(x)` for a positive normal `x`, from IEEE-exact operations only (so identical on every
/// platform). Writes `x = m·2^e` with `m` in `[√½, √2)`, then
/// `ln m = 2·atanh(s) = 2(s + s³/3 + s⁵/5 + ...)` with `s = (m-1)/(m+1)`, `|s| < 0.172`;
/// twelve terms leave an error below 1e-19.
fn portable_ln(x: f64) -> f64 {
    debug_assert!(x.is_normal() && x > 0.0);
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut series = 0.0;
    for k in (0..12).rev() {
        series = series * s2 + 1.0 / (2 * k + 1) as f64;
    }
    e as f64 * std::f64::consts::LN_2 + 2.0 * s * series
}

/// The standard Gumbel value of an open uniform `u`: `−ln(−ln u)`.
fn gumbel_of(u: f64) -> f32 {
    -portable_ln(-portable_ln(u)) as f32
}

/// The standard logistic value of an open uniform `u`: `ln u − ln(1 − u)` (`1 − u` is exact).
fn logistic_of(u: f64) -> f32 {
    (portable_ln(u) - portable_ln(1.0 - u)) as f32
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn seed(seed: u64) -> Rng {
        let mut x = seed;
        let state = [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)];
        Rng { state, spare_normal: None }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform `f64` in `[0, 1)`, a multiple of 2⁻⁵³.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform `f32` in `[0, 1)`, a multiple of 2⁻²⁴.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A uniform integer in `[0, n)` without modulo bias (Lemire's method, arXiv 1805.10941);
    /// 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = self.next_u64() as u128 * n as u128;
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// A uniform `f64` in the open interval `(0, 1)`: `(k + ½)·2⁻⁵²` for a random 52-bit `k`.
    /// Every such value and its complement `1 − u` are exact in f64, so neither is ever 0 and
    /// both logarithms below are finite.
    fn open_unit_f64(&mut self) -> f64 {
        ((self.next_u64() >> 12) as f64 + 0.5) * (1.0 / (1u64 << 52) as f64)
    }

    /// A standard Gumbel sample `−ln(−ln U)`, `U` uniform in `(0, 1)`: the noise of the
    /// Gumbel-max trick, `argmax_k(ℓ_k + g_k)` being distributed as `softmax(ℓ)` (and of
    /// Gumbel-softmax, arXiv 1611.01144). Mean is the Euler–Mascheroni constant γ ≈ 0.5772,
    /// variance π²/6; values lie in about `[−3.6, 36.7]`. Computed in f64 with this module's
    /// portable logarithm, so the same seed gives the same values on every machine.
    pub fn gumbel(&mut self) -> f32 {
        gumbel_of(self.open_unit_f64())
    }

    /// Fills `out` with the values `out.len()` calls of [`Rng::gumbel`] would return, several
    /// times faster on a long slice: the uniforms are drawn first, then transformed in a loop
    /// free of the generator's serial dependency.
    pub fn fill_gumbel(&mut self, out: &mut [f32]) {
        self.fill_from_uniforms(out, gumbel_of);
    }

    /// A standard logistic sample `ln U − ln(1 − U)`, `U` uniform in `(0, 1)`: `x + s > 0`
    /// holds with probability `σ(x)`, which makes it the noise of a Bernoulli(`σ(x)`) draw from
    /// a logit. Mean 0, variance π²/3; values lie in about `[−36.7, 36.7]`. Portable like
    /// [`Rng::gumbel`].
    pub fn logistic(&mut self) -> f32 {
        logistic_of(self.open_unit_f64())
    }

    /// Fills `out` with the values `out.len()` calls of [`Rng::logistic`] would return, faster
    /// as [`Rng::fill_gumbel`] is.
    pub fn fill_logistic(&mut self, out: &mut [f32]) {
        self.fill_from_uniforms(out, logistic_of);
    }

    /// `out[i] = transform(U_i)` for successive open uniforms, drawn a block at a time.
    fn fill_from_uniforms(&mut self, out: &mut [f32], transform: fn(f64) -> f32) {
        const BLOCK: usize = 256;
        let mut uniforms = [0.0f64; BLOCK];
        for chunk in out.chunks_mut(BLOCK) {
            let uniforms = &mut uniforms[..chunk.len()];
            uniforms.iter_mut().for_each(|u| *u = self.open_unit_f64());
            chunk.iter_mut().zip(uniforms.iter()).for_each(|(o, &u)| *o = transform(u));
        }
    }

    /// A standard normal sample (mean 0, variance 1), by Marsaglia's polar method. Samples come
    /// in pairs; the second of each pair is kept for the next call.
    pub fn normal(&mut self) -> f32 {
        self.normal_f64() as f32
    }

    fn normal_f64(&mut self) -> f64 {
        if let Some(bits) = self.spare_normal.take() {
            return f64::from_bits(bits);
        }
        loop {
            let u = 2.0 * self.next_f64() - 1.0;
            let v = 2.0 * self.next_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                let factor = (-2.0 * portable_ln(s) / s).sqrt();
                self.spare_normal = Some((v * factor).to_bits());
                return u * factor;
            }
        }
    }
}

impl Tensor {
    /// A tensor of `shape` filled with standard normal samples from `rng`, in row-major order.
    ///
    /// # Errors
    /// [`Error::Alloc`] when the shape's element count overflows `usize` or its memory cannot
    /// be allocated.
    pub fn try_randn(shape: &[usize], rng: &mut Rng) -> Result<Tensor> {
        let mut data = alloc::filled("Tensor::randn", shape, 0.0)?;
        data.iter_mut().for_each(|v| *v = rng.normal());
        Ok(Tensor::from_contiguous(data, shape.to_vec()))
    }

    /// [`Tensor::try_randn`] for shapes the program chose itself (tests, examples).
    ///
    /// # Panics
    /// With the message of [`Tensor::try_randn`]'s error. For a shape that comes from a user or
    /// a file, call [`Tensor::try_randn`].
    pub fn randn(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::try_randn(shape, rng).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A tensor of `shape` filled with uniform samples in `[lo, hi)` from `rng` (a value may
    /// round to `hi` when `hi - lo` is not a power of two), in row-major order.
    ///
    /// # Errors
    /// [`Error::Argument`] unless `lo <= hi` and both are finite; [`Error::Alloc`] when the
    /// shape cannot be allocated.
    pub fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(Error::argument(
                "Tensor::uniform",
                format!("needs finite bounds with lo <= hi, got lo = {lo}, hi = {hi}"),
            ));
        }
        let mut data = alloc::filled("Tensor::uniform", shape, 0.0)?;
        let (lo, width) = (lo as f64, hi as f64 - lo as f64);
        data.iter_mut().for_each(|v| *v = (lo + width * rng.next_f64()) as f32);
        Ok(Tensor::from_contiguous(data, shape.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_and_splitmix_match_their_reference_outputs() {
        // Reference values from the authors' C code.
        let mut x = 0u64;
        assert_eq!(splitmix64(&mut x), 0xe220_a839_7b1d_cdaf);
        let mut rng = Rng { state: [1, 2, 3, 4], spare_normal: None };
        let first: Vec<u64> = (0..4).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [11520, 0, 1509978240, 1215971899390074240]);
    }

    #[test]
    fn same_seed_same_values_and_golden_outputs() {
        let a = Tensor::randn(&[5], &mut Rng::seed(42)).to_vec();
        assert_eq!(a, Tensor::randn(&[5], &mut Rng::seed(42)).to_vec());
        assert_ne!(a, Tensor::randn(&[5], &mut Rng::seed(43)).to_vec());
        // Pinned values: any change to the generator or the sampling shows up here.
        let bits: Vec<u32> = a.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, GOLDEN_RANDN_42);
    }

    const GOLDEN_RANDN_42: [u32; 5] = [3208243583, 3193455617, 1046671632, 1057346654, 1055762598];

    #[test]
    fn portable_ln_matches_std() {
        let mut rng = Rng::seed(1);
        for _ in 0..10_000 {
            let x = rng.next_f64() * 4.0 + 1e-300;
            let (got, want) = (portable_ln(x), x.ln());
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs().max(1.0), "ln({x}): {got} vs {want}");
        }
    }

    #[test]
    fn samples_have_the_right_moments_and_ranges() {
        let mut rng = Rng::seed(3);
        let n = Tensor::randn(&[20_000], &mut rng).to_vec();
        let mean = n.iter().map(|&v| v as f64).sum::<f64>() / n.len() as f64;
        let var = n.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean}, var {var}");
        let u = Tensor::uniform(&[10_000], -2.0, 3.0, &mut rng).unwrap().to_vec();
        assert!(u.iter().all(|&v| (-2.0..=3.0).contains(&v)));
        let mean = u.iter().map(|&v| v as f64).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert!((0..1000).all(|_| rng.next_f32() < 1.0));
        assert_eq!(Tensor::uniform(&[3], 1.5, 1.5, &mut rng).unwrap().to_vec(), vec![1.5; 3]);
    }

    /// Mean and variance of `n` samples, in f64.
    fn moments(n: usize, mut draw: impl FnMut() -> f32) -> (f64, f64) {
        let v: Vec<f64> = (0..n).map(|_| draw() as f64).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64)
    }

    #[test]
    fn gumbel_and_logistic_have_their_moments_and_pinned_values() {
        let mut rng = Rng::seed(11);
        // Standard errors at n = 40 000: mean ≈ 0.006 (Gumbel), 0.009 (logistic).
        let (mean, var) = moments(40_000, || rng.gumbel());
        assert!((mean - 0.577_215_7).abs() < 0.03 && (var - 1.644_934).abs() < 0.08, "gumbel: {mean}, {var}");
        let (mean, var) = moments(40_000, || rng.logistic());
        assert!(mean.abs() < 0.04 && (var - 3.289_868).abs() < 0.15, "logistic: {mean}, {var}");
        // P(x + s > 0) = σ(x): at x = 1, σ = 0.731 (standard error 0.0022 at n = 40 000).
        let hits = (0..40_000).filter(|_| 1.0 + rng.logistic() > 0.0).count() as f64 / 40_000.0;
        assert!((hits - 0.731_058_6).abs() < 0.01, "P(1 + s > 0) = {hits}");
        let mut rng = Rng::seed(42);
        let mut bits: Vec<u32> = (0..3).map(|_| rng.gumbel().to_bits()).collect();
        bits.extend((0..3).map(|_| rng.logistic().to_bits()));
        assert_eq!(bits, GOLDEN_GUMBEL_LOGISTIC_42);
    }

    #[test]
    fn filled_samples_are_the_one_at_a_time_samples() {
        // Lengths around the fill's block of 256, and the generator's state afterwards.
        for n in [0, 1, 255, 256, 257, 1000] {
            let (mut one, mut fill) = (Rng::seed(n as u64), Rng::seed(n as u64));
            let mut want: Vec<f32> = (0..n).map(|_| one.gumbel()).collect();
            want.extend((0..n).map(|_| one.logistic()));
            let mut got = vec![0.0f32; 2 * n];
            fill.fill_gumbel(&mut got[..n]);
            fill.fill_logistic(&mut got[n..]);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n = {n}"
            );
            assert_eq!(one, fill, "n = {n}: the generators end in the same state");
        }
    }

    /// Three Gumbel then three logistic samples of seed 42, as f32 bits, computed by an
    /// independent Python implementation of xoshiro256** with the platform's `math.log`.
    const GOLDEN_GUMBEL_LOGISTIC_42: [u32; 6] =
        [3211288029, 1022835550, 1064563986, 1075872060, 1083799490, 1067088321];

    #[test]
    fn random_constructors_refuse_shapes_that_overflow_or_cannot_be_allocated() {
        let mut rng = Rng::seed(0);
        let err = Tensor::try_randn(&[usize::MAX, 2], &mut rng).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Tensor::randn: shape [{}, 2] has more elements than fit in usize", usize::MAX)
        );
        assert!(Tensor::try_randn(&[1 << 60], &mut rng).unwrap_err().to_string().contains("could not be allocated"));
        let err = Tensor::uniform(&[1 << 62, 4], 0.0, 1.0, &mut rng).unwrap_err();
        assert!(err.to_string().starts_with("Tensor::uniform: shape [4611686018427387904, 4]"), "{err}");
        // The fallible and the panicking forms draw the same values.
        assert_eq!(
            Tensor::try_randn(&[3], &mut Rng::seed(5)).unwrap().to_vec(),
            Tensor::randn(&[3], &mut Rng::seed(5)).to_vec()
        );
    }

    #[test]
    fn uniform_rejects_bad_bounds() {
        let err = Tensor::uniform(&[2], 1.0, 0.0, &mut Rng::seed(0)).unwrap_err();
        assert_eq!(err.to_string(), "Tensor::uniform: needs finite bounds with lo <= hi, got lo = 1, hi = 0");
        assert!(Tensor::uniform(&[2], 0.0, f32::INFINITY, &mut Rng::seed(0)).is_err());
    }
}
