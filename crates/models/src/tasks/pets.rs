//! [`Pets`]: hierarchical classification, "cat or dog, then which breed". `C` coarse classes of
//! `M` fine classes each; a sample of fine class `(c, m)` is
//!
//! ```text
//! x = P[c] + Q[c][m] + σ·ε,    ε ~ N(0, I_dim)
//! ```
//!
//! where the coarse prototypes `P[c]` spread over every dimension, and the fine offsets
//! `Q[c][m]` of coarse class `c` live in a subspace of `subspace` dimensions that belongs to `c`
//! (its own random subset): telling breeds apart needs features that only matter inside their
//! coarse class. With equal priors and isotropic noise, the Bayes-optimal classifier is the
//! nearest of the `C·M` class means, so the Bayes accuracy is estimated by Monte Carlo on held-out
//! samples (`../shared/notes/methods.md`).

use crate::data::{batch_rng, Split};
use crate::error::{Error, Result};
use elide_tensor::{Rng, Tensor};

/// The shape of a [`Pets`] task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PetsConfig {
    /// Coarse classes `C`.
    pub coarse: usize,
    /// Fine classes per coarse class `M`.
    pub fine: usize,
    /// Feature width.
    pub dim: usize,
    /// Dimensions of each coarse class's fine subspace.
    pub subspace: usize,
    /// Standard deviation of the coarse prototypes' entries.
    pub coarse_scale: f32,
    /// Standard deviation of the fine offsets' entries (inside the subspace).
    pub fine_scale: f32,
    /// Noise standard deviation `σ`.
    pub noise: f32,
    /// The seed the prototypes are drawn from.
    pub seed: u64,
}

impl Default for PetsConfig {
    fn default() -> PetsConfig {
        PetsConfig {
            coarse: 4,
            fine: 8,
            dim: 64,
            subspace: 12,
            coarse_scale: 1.0,
            fine_scale: 0.6,
            noise: 0.5,
            seed: 2,
        }
    }
}

/// Labelled samples of a [`Pets`] task.
#[derive(Clone, Debug)]
pub struct PetsBatch {
    /// `[n, dim]` features.
    pub x: Tensor,
    /// The coarse class of each sample.
    pub coarse: Vec<u32>,
    /// The fine class of each sample, within its coarse class.
    pub fine: Vec<u32>,
}

/// The generator of a hierarchical classification task and its Bayes-optimal classifier.
#[derive(Clone, Debug)]
pub struct Pets {
    config: PetsConfig,
    /// `[C·M, dim]`: the mean of class `(c, m)` at row `c·M + m`.
    means: Vec<f32>,
}

const SPLIT_SEEDS: [u64; 2] = [0xCA75_D065, 0xD065_CA75];

impl Pets {
    /// Draws the prototypes from `config.seed`.
    ///
    /// # Errors
    /// [`Error::Config`] for a size of 0, a subspace wider than `dim`, or a scale that is not
    /// finite and positive.
    pub fn new(config: PetsConfig) -> Result<Pets> {
        let c = config;
        let sizes = [c.coarse, c.fine, c.dim, c.subspace].contains(&0) || c.subspace > c.dim;
        let scales = [c.coarse_scale, c.fine_scale, c.noise].iter().any(|s| !(s.is_finite() && *s > 0.0));
        if sizes || scales {
            return Err(Error::config("Pets", format!("{c:?}: sizes > 0, subspace <= dim, finite positive scales")));
        }
        let mut rng = Rng::seed(c.seed);
        let mut means = Vec::with_capacity(c.coarse * c.fine * c.dim);
        for _ in 0..c.coarse {
            let prototype: Vec<f32> = (0..c.dim).map(|_| c.coarse_scale * rng.normal()).collect();
            // This class's own subspace: a random subset of the dimensions.
            let mut dims: Vec<usize> = (0..c.dim).collect();
            for j in 0..c.subspace {
                let pick = j + rng.below((c.dim - j) as u64) as usize;
                dims.swap(j, pick);
            }
            for _ in 0..c.fine {
                let mut mean = prototype.clone();
                for &j in &dims[..c.subspace] {
                    mean[j] += c.fine_scale * rng.normal();
                }
                means.extend(mean);
            }
        }
        Ok(Pets { config, means })
    }

    /// The configuration.
    pub fn config(&self) -> &PetsConfig {
        &self.config
    }

    /// `n` samples of `split` with uniformly drawn classes, a function of `(seed, index)` only.
    pub fn batch(&self, split: Split, seed: u64, index: u64, n: usize) -> PetsBatch {
        let c = &self.config;
        let mut rng = batch_rng(seed ^ SPLIT_SEEDS[matches!(split, Split::Validation) as usize], index);
        let (mut x, mut coarse, mut fine) =
            (Vec::with_capacity(n * c.dim), Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let class = rng.below((c.coarse * c.fine) as u64) as usize;
            x.extend(self.means[class * c.dim..(class + 1) * c.dim].iter().map(|&m| m + c.noise * rng.normal()));
            coarse.push((class / c.fine) as u32);
            fine.push((class % c.fine) as u32);
        }
        PetsBatch { x: Tensor::from_vec(x, &[n, c.dim]).expect("n·dim values"), coarse, fine }
    }

    /// The Bayes-optimal decision for each row of `x` `[n, dim]`: the nearest class mean, as
    /// the flat class `c·M + m`.
    ///
    /// # Errors
    /// [`Error::Shape`] unless `x` is `[n, dim]`.
    pub fn bayes_classes(&self, x: &Tensor) -> Result<Vec<u32>> {
        let dim = self.config.dim;
        if x.shape().len() != 2 || x.shape()[1] != dim {
            return Err(Error::shape("Pets::bayes_classes", format!("x must be [n, {dim}], got {:?}", x.shape())));
        }
        Ok(x.to_vec()
            .chunks(dim)
            .map(|row| {
                let dist = |m: &[f32]| row.iter().zip(m).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
                let best = self
                    .means
                    .chunks(dim)
                    .enumerate()
                    .map(|(k, m)| (dist(m), k))
                    .fold((f64::INFINITY, 0), |a, b| if b.0 < a.0 { b } else { a });
                best.1 as u32
            })
            .collect())
    }

    /// The Bayes accuracy, estimated on `n` validation samples (batch 0 of `seed`).
    pub fn bayes_accuracy(&self, seed: u64, n: usize) -> f64 {
        let batch = self.batch(Split::Validation, seed, 0, n);
        let classes = self.bayes_classes(&batch.x).expect("the task's own shape");
        let m = self.config.fine as u32;
        let right = classes.iter().enumerate().filter(|&(i, &k)| k == batch.coarse[i] * m + batch.fine[i]).count();
        right as f64 / n.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_offsets_live_in_their_coarse_class_subspace() {
        let p = Pets::new(PetsConfig::default()).unwrap();
        let c = *p.config();
        for class in 0..c.coarse {
            let rows: Vec<&[f32]> = (0..c.fine).map(|m| &p.means[(class * c.fine + m) * c.dim..][..c.dim]).collect();
            // Dimensions on which the breeds of this class differ: exactly its subspace.
            let varying = (0..c.dim).filter(|&j| rows.iter().any(|r| r[j] != rows[0][j])).count();
            assert_eq!(varying, c.subspace, "coarse class {class}");
        }
    }

    #[test]
    fn samples_centre_on_their_class_mean() {
        let p = Pets::new(PetsConfig { noise: 0.5, ..PetsConfig::default() }).unwrap();
        let b = p.batch(Split::Train, 1, 0, 4000);
        let dim = p.config().dim;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (i, row) in b.x.to_vec().chunks(dim).enumerate() {
            let class = (b.coarse[i] * 8 + b.fine[i]) as usize;
            for (a, m) in row.iter().zip(&p.means[class * dim..(class + 1) * dim]) {
                sum += ((a - m) as f64).powi(2);
                count += 1;
            }
        }
        let var = sum / count as f64;
        assert!((var - 0.25).abs() < 0.01, "noise variance {var}");
        let again = p.batch(Split::Train, 1, 0, 4000);
        assert_eq!((b.x.to_vec(), &b.coarse, &b.fine), (again.x.to_vec(), &again.coarse, &again.fine));
    }

    #[test]
    fn the_bayes_accuracy_falls_with_the_noise() {
        let acc = |noise| Pets::new(PetsConfig { noise, ..PetsConfig::default() }).unwrap().bayes_accuracy(3, 2000);
        let (clean, mid, noisy) = (acc(0.05), acc(0.5), acc(2.0));
        assert!(clean > 0.999 && clean > mid && mid > noisy && noisy > 1.0 / 32.0, "{clean} {mid} {noisy}");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(Pets::new(PetsConfig { subspace: 100, ..PetsConfig::default() }).is_err());
        assert!(Pets::new(PetsConfig { noise: 0.0, ..PetsConfig::default() }).is_err());
        let p = Pets::new(PetsConfig::default()).unwrap();
        assert!(p.bayes_classes(&Tensor::zeros(&[2, 3])).is_err());
    }
}
