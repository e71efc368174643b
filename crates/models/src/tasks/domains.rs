//! [`Domains`]: `K` synthetic "languages" over one vocabulary, each a random sparse Markov
//! source of order `n`; every sequence comes from one of them. The best achievable loss is the
//! Bayes-optimal predictor's, computed exactly on the very sequences a model is scored on.
//!
//! Source `k` draws a sequence's first `n` tokens uniformly, then each next token from a
//! distribution over `support` tokens that depends on the last `n` tokens (a table per source,
//! drawn once from the task's seed). The Bayes-optimal predictor does not know the source: it
//! mixes the sources' next-token distributions under the posterior over sources, updated token
//! by token,
//!
//! ```text
//! p(x_t | x_<t) = Σ_k P(k | x_<t) · p_k(x_t | x_{t−n..t}),    P(k | x_≤t) ∝ P(k | x_<t) · p_k(x_t | …)
//! ```
//!
//! so early tokens, which carry little evidence about the source, cost more than the sources'
//! entropy rates (`../shared/notes/methods.md`). A model that could hold every source's table
//! and infer the source from the prefix would reach this loss; the gap to it is what remains.

use crate::data::{batch_rng, Batch, Split, TokenSource};
use crate::error::{Error, Result};
use elide_tensor::Rng;

/// The shape of a [`Domains`] task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DomainsConfig {
    /// Number of sources `K`.
    pub domains: usize,
    /// Vocabulary size `V`.
    pub vocab: usize,
    /// Markov order `n` (tokens of context).
    pub order: usize,
    /// Tokens each context may be followed by.
    pub support: usize,
    /// How peaked each next-token distribution is: its weights are `exp(sharpness · z)`,
    /// `z ~ N(0, 1)`.
    pub sharpness: f32,
    /// The seed the sources' tables are drawn from.
    pub seed: u64,
}

impl Default for DomainsConfig {
    fn default() -> DomainsConfig {
        DomainsConfig { domains: 8, vocab: 32, order: 2, support: 4, sharpness: 1.5, seed: 1 }
    }
}

/// `K` sparse Markov sources and the exact Bayes-optimal loss on their sequences.
#[derive(Clone, Debug)]
pub struct Domains {
    config: DomainsConfig,
    /// `[K · V^n · support]` (token, probability) pairs: source `k`, context `c`'s options.
    table: Vec<(u32, f32)>,
}

/// Seeds of the two splits' sequence streams (the batch index is mixed in by [`batch_rng`]).
const SPLIT_SEEDS: [u64; 2] = [0x5EED_7A11, 0xE7A1_5EED];

impl Domains {
    /// Draws the sources' tables from `config.seed`.
    ///
    /// # Errors
    /// [`Error::Config`] for a size of 0, `support > vocab`, a vocabulary above `u32`, a table
    /// of more than 2²⁴ contexts, or a sharpness that is not finite.
    pub fn new(config: DomainsConfig) -> Result<Domains> {
        let c = config;
        let contexts = c.vocab.checked_pow(c.order as u32).filter(|&n| n <= 1 << 24);
        if c.domains == 0 || c.vocab == 0 || c.support == 0 || c.support > c.vocab || !c.sharpness.is_finite() {
            return Err(Error::config(
                "Domains",
                format!("{c:?}: sizes must be > 0, support <= vocab, sharpness finite"),
            ));
        }
        let Some(contexts) = contexts else {
            return Err(Error::config(
                "Domains",
                format!("vocab^order = {}^{} contexts is too many", c.vocab, c.order),
            ));
        };
        let mut rng = Rng::seed(c.seed);
        let mut table = Vec::with_capacity(c.domains * contexts * c.support);
        for _ in 0..c.domains * contexts {
            // `support` distinct tokens (a partial Fisher–Yates draw) with softmax weights.
            let mut ids: Vec<u32> = (0..c.vocab as u32).collect();
            let weights: Vec<f32> = (0..c.support)
                .map(|j| {
                    let pick = j + rng.below((c.vocab - j) as u64) as usize;
                    ids.swap(j, pick);
                    (c.sharpness * rng.normal()).exp()
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            table.extend(ids[..c.support].iter().zip(&weights).map(|(&t, &w)| (t, w / sum)));
        }
        Ok(Domains { config, table })
    }

    /// The configuration.
    pub fn config(&self) -> &DomainsConfig {
        &self.config
    }

    /// The options of source `k` after the context ending at `tokens[..t]` (`t >= order`).
    fn options(&self, k: usize, context: &[u32]) -> &[(u32, f32)] {
        let c = &self.config;
        let index = context.iter().fold(0usize, |acc, &x| acc * c.vocab + x as usize);
        let contexts = c.vocab.pow(c.order as u32);
        let start = (k * contexts + index) * c.support;
        &self.table[start..start + c.support]
    }

    /// `p_k(next | context)`.
    fn prob(&self, k: usize, context: &[u32], next: u32) -> f64 {
        self.options(k, context).iter().find(|o| o.0 == next).map_or(0.0, |o| o.1 as f64)
    }

    /// A sequence of `len` tokens from source `k`.
    fn sequence(&self, k: usize, len: usize, rng: &mut Rng) -> Vec<u32> {
        let c = &self.config;
        let mut seq = Vec::with_capacity(len);
        for t in 0..len {
            let next = if t < c.order {
                rng.below(c.vocab as u64) as u32
            } else {
                let options = self.options(k, &seq[t - c.order..t]);
                let u = rng.next_f32();
                let mut acc = 0.0;
                options
                    .iter()
                    .find(|o| {
                        acc += o.1;
                        u < acc
                    })
                    .unwrap_or(&options[options.len() - 1])
                    .0
            };
            seq.push(next);
        }
        seq
    }

    /// The Bayes-optimal predictor's mean loss (nats per target token) on a batch of whole
    /// sequences, as this task's [`TokenSource::batch`] makes them: row `b` is one sequence from
    /// its first token, `inputs` its first `seq` tokens and `targets` the next ones.
    ///
    /// # Errors
    /// [`Error::Shape`] if the batch's sizes disagree; [`Error::Config`] if a row is not a
    /// sequence any source could emit.
    pub fn optimal_loss(&self, batch: &Batch) -> Result<f64> {
        let (b, s) = (batch.batch, batch.seq);
        if batch.inputs.len() != b * s || batch.targets.len() != b * s {
            return Err(Error::shape("Domains::optimal_loss", format!("{b} rows of {s} need {} tokens", b * s)));
        }
        let (k_count, n, v) = (self.config.domains, self.config.order, self.config.vocab as f64);
        let mut total = 0.0f64;
        for row in 0..b {
            // The whole sequence: the first input, then every target.
            let mut tokens = vec![batch.inputs[row * s]];
            tokens.extend_from_slice(&batch.targets[row * s..(row + 1) * s]);
            let mut posterior = vec![1.0 / k_count as f64; k_count];
            for t in 1..tokens.len() {
                let p = if t < n {
                    1.0 / v
                } else {
                    let likelihood: Vec<f64> =
                        (0..k_count).map(|k| self.prob(k, &tokens[t - n..t], tokens[t])).collect();
                    let p: f64 = posterior.iter().zip(&likelihood).map(|(a, b)| a * b).sum();
                    if p <= 0.0 {
                        return Err(Error::config(
                            "Domains::optimal_loss",
                            format!("row {row}: token {t} is impossible under every source"),
                        ));
                    }
                    posterior.iter_mut().zip(&likelihood).for_each(|(q, l)| *q = *q * l / p);
                    p
                };
                total -= p.ln();
            }
        }
        Ok(total / (b * s) as f64)
    }
}

impl TokenSource for Domains {
    fn vocab(&self) -> usize {
        self.config.vocab
    }

    /// `batch` whole sequences of `seq + 1` tokens, each from a uniformly drawn source.
    fn batch(&self, split: Split, seed: u64, index: u64, batch: usize, seq: usize) -> Result<Batch> {
        if batch == 0 || seq == 0 {
            return Err(Error::config("batch", format!("batch and seq must be > 0, got {batch} and {seq}")));
        }
        let split_seed = SPLIT_SEEDS[matches!(split, Split::Validation) as usize];
        let mut rng = batch_rng(seed ^ split_seed, index);
        let (mut inputs, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
        for _ in 0..batch {
            let k = rng.below(self.config.domains as u64) as usize;
            let s = self.sequence(k, seq + 1, &mut rng);
            inputs.extend_from_slice(&s[..seq]);
            targets.extend_from_slice(&s[1..]);
        }
        Ok(Batch { inputs, targets, batch, seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Domains {
        Domains::new(DomainsConfig { domains: 3, vocab: 5, order: 1, support: 2, sharpness: 1.0, seed: 4 }).unwrap()
    }

    #[test]
    fn every_next_token_distribution_sums_to_one_over_distinct_tokens() {
        let d = Domains::new(DomainsConfig::default()).unwrap();
        for chunk in d.table.chunks(4) {
            let sum: f32 = chunk.iter().map(|o| o.1).sum();
            assert!((sum - 1.0).abs() < 1e-5);
            let mut ids: Vec<u32> = chunk.iter().map(|o| o.0).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 4);
        }
    }

    #[test]
    fn the_optimal_loss_matches_a_brute_force_posterior() {
        // Brute force: P(x_1..x_t) under each source by multiplying probabilities from scratch
        // at every position, p(x_t | x_<t) = Σ_k P_k(x_≤t) / Σ_k P_k(x_<t).
        let d = small();
        let batch = d.batch(Split::Validation, 9, 0, 6, 7).unwrap();
        let mut total = 0.0;
        for row in 0..6 {
            let mut tokens = vec![batch.inputs[row * 7]];
            tokens.extend_from_slice(&batch.targets[row * 7..row * 7 + 7]);
            let joint = |len: usize| -> f64 {
                (0..3)
                    .map(|k| {
                        let mut p = 1.0 / 3.0 / 5.0; // the prior and the uniform first token
                        for t in 1..len {
                            p *= d.prob(k, &tokens[t - 1..t], tokens[t]);
                        }
                        p
                    })
                    .sum()
            };
            for t in 1..tokens.len() {
                total -= (joint(t + 1) / joint(t)).ln();
            }
        }
        let want = total / 42.0;
        let got = d.optimal_loss(&batch).unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }

    #[test]
    fn the_optimum_lies_between_the_mixed_and_the_known_source_entropy() {
        // Knowing the source can only help: the loss of the predictor told the source is lower;
        // and the optimum is below the uniform log V.
        let d = Domains::new(DomainsConfig::default()).unwrap();
        let batch = d.batch(Split::Validation, 1, 0, 64, 48).unwrap();
        let optimal = d.optimal_loss(&batch).unwrap();
        assert!(optimal < (32f64).ln() && optimal > 0.0, "{optimal}");
        // The same sequences scored by a predictor that knows each row's source: regenerate the
        // rows' sources from the same stream.
        let mut rng = batch_rng(1 ^ SPLIT_SEEDS[1], 0);
        let mut oracle = 0.0;
        for row in 0..64 {
            let k = rng.below(8) as usize;
            let s = d.sequence(k, 49, &mut rng);
            assert_eq!(&s[1..], &batch.targets[row * 48..(row + 1) * 48]);
            for t in 1..49 {
                oracle -= if t < 2 { (1.0f64 / 32.0).ln() } else { d.prob(k, &s[t - 2..t], s[t]).ln() };
            }
        }
        let oracle = oracle / (64.0 * 48.0);
        assert!(oracle < optimal && optimal < oracle + 0.3, "oracle {oracle}, optimal {optimal}");
    }

    #[test]
    fn batches_are_deterministic_and_splits_differ() {
        let d = small();
        let a = d.batch(Split::Train, 3, 5, 4, 6).unwrap();
        assert_eq!(a, d.batch(Split::Train, 3, 5, 4, 6).unwrap());
        assert_ne!(a, d.batch(Split::Validation, 3, 5, 4, 6).unwrap());
        assert_eq!(&a.inputs[1..6], &a.targets[..5]);
    }

    #[test]
    fn bad_configs_and_foreign_sequences_are_refused() {
        let bad = |c: DomainsConfig| Domains::new(c).err().unwrap().to_string();
        assert!(bad(DomainsConfig { support: 40, ..DomainsConfig::default() }).starts_with("Domains: "));
        assert!(bad(DomainsConfig { vocab: 256, order: 4, ..DomainsConfig::default() }).contains("too many"));
        let d = small();
        // A context after which some token is allowed by no source (3 sources × 2 options of 5).
        let (ctx, bad) = (0..5u32)
            .find_map(|ctx| {
                let allowed: Vec<u32> = (0..3).flat_map(|k| d.options(k, &[ctx]).iter().map(|o| o.0)).collect();
                (0..5).find(|t| !allowed.contains(t)).map(|bad| (ctx, bad))
            })
            .expect("some context leaves a token out");
        let batch = Batch { inputs: vec![ctx], targets: vec![bad], batch: 1, seq: 1 };
        assert!(d.optimal_loss(&batch).err().unwrap().to_string().contains("impossible under every source"));
    }
}
