//! Decoding a [`TransformerLm`] with its KV cache: generation ([`TransformerLm::generate`]) and
//! teacher-forced scoring of the decoding path ([`TransformerLm::score_decoding`]), where early
//! exits, mixture-of-depths routing and sparse feed-forward layers skip what they skip.

use super::config::ExitMeasure;
use super::TransformerLm;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::module::Ctx;
use elide_autodiff::{no_grad, Var};
use elide_tensor::Rng;

/// How [`TransformerLm::generate`] picks each next token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most probable token.
    Greedy,
    /// A draw from `softmax(logits / temperature)`.
    Temperature(f32),
    /// A draw from the smallest set of most probable tokens whose probability reaches `p`
    /// (nucleus sampling, arXiv 1904.09751), after the temperature.
    TopP {
        /// Cumulative probability kept, in `(0, 1]`.
        p: f32,
        /// Softmax temperature, `> 0`.
        temperature: f32,
    },
}

/// What decoding a sequence token by token cost and scored ([`TransformerLm::score_decoding`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeScore {
    /// Mean cross-entropy (nats) of each next token under the decoding path's logits.
    pub loss: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Mean blocks each token ran before its logits (the block count when none exits early).
    pub mean_blocks: f64,
    /// FLOPs executed, state propagation of exited tokens included.
    pub flops: f64,
}

impl TransformerLm {
    /// The logits of `new` tokens (`[batch · new]`) that follow what `cache` holds, through
    /// every block, appending their keys and values to it. Records no gradient.
    pub(super) fn decode_step(&self, ids: &[u32], batch: usize, cache: &mut KvCache, ctx: &mut Ctx<'_>) -> Result<Var> {
        no_grad(|| {
            let new = ids.len() / batch;
            let mut h = self.embed.forward(ids)?.reshape(&[batch, new, self.config.d_model])?;
            for (i, b) in self.blocks.iter().enumerate() {
                h = b.decode(&h, cache, i, ctx)?;
            }
            self.head(&h, ctx)
        })
    }

    /// One token of one sequence after what `cache` holds: its next-token logits and the blocks
    /// it ran. With early exits, a token whose confidence passes the threshold at an exit stops
    /// there and leaves, in each block it skips, the keys and values of its exited state.
    pub(super) fn decode_token(&self, id: u32, cache: &mut KvCache, ctx: &mut Ctx<'_>) -> Result<(Vec<f32>, usize)> {
        no_grad(|| {
            // A confidence is at most 1: above that no token can exit, so no exit head runs.
            let exit = self.config.early_exit.as_ref().filter(|e| e.threshold <= 1.0);
            let mut h = self.embed.forward(&[id])?.reshape(&[1, 1, self.config.d_model])?;
            for (i, b) in self.blocks.iter().enumerate() {
                h = b.decode(&h, cache, i, ctx)?;
                if let Some(exit) = exit.filter(|e| e.after.contains(&i)) {
                    let logits = self.head(&h, ctx)?.value().to_vec();
                    if confidence(exit.measure, &logits) >= exit.threshold {
                        for (j, skipped) in self.blocks.iter().enumerate().skip(i + 1) {
                            skipped.propagate(&h, cache, j, ctx)?;
                        }
                        return Ok((logits, i + 1));
                    }
                }
            }
            Ok((self.head(&h, ctx)?.value().to_vec(), self.blocks.len()))
        })
    }

    /// Decodes `ids` (one sequence, at least 2 tokens) one token at a time with a KV cache, as
    /// generation would, and scores each next token: the loss of what decoding actually
    /// computes (early exits at the model's threshold, mixture-of-depths blocks deciding
    /// causally, sparse layers on their chosen units).
    ///
    /// # Errors
    /// [`Error::Config`] for fewer than 2 ids, more than `max_seq`, or an id outside the
    /// vocabulary.
    pub fn score_decoding(&self, ids: &[u32]) -> Result<DecodeScore> {
        const OP: &str = "TransformerLm::score_decoding";
        if ids.len() < 2 || ids.len() > self.config.max_seq {
            return Err(Error::config(
                OP,
                format!("needs 2 to max_seq {} ids, got {}", self.config.max_seq, ids.len()),
            ));
        }
        let mut cache = self.new_cache(1)?;
        let mut ctx = Ctx::eval();
        let (mut loss, mut blocks) = (0.0, 0);
        for w in ids.windows(2) {
            let (logits, depth) = self.decode_token(w[0], &mut cache, &mut ctx)?;
            loss += cross_entropy(&logits, w[1] as usize);
            blocks += depth;
        }
        let n = ids.len() - 1;
        Ok(DecodeScore { loss: loss / n as f64, tokens: n, mean_blocks: blocks as f64 / n as f64, flops: ctx.flops })
    }

    /// Continues `prompt` by `max_new` tokens, reading each step's context from a KV cache (the
    /// prompt in one pass through every block, then one token at a time, exiting early where
    /// the model has exits); `rng` draws the samples.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty prompt, an id outside the vocabulary, a prompt plus
    /// `max_new` longer than `max_seq`, or a sampling setting out of range.
    pub fn generate(&self, prompt: &[u32], max_new: usize, sampling: Sampling, rng: &mut Rng) -> Result<Vec<u32>> {
        const OP: &str = "TransformerLm::generate";
        if prompt.is_empty() {
            return Err(Error::config(OP, "the prompt is empty"));
        }
        if prompt.len() + max_new > self.config.max_seq {
            return Err(Error::config(
                OP,
                format!(
                    "prompt {} + {max_new} new tokens is longer than max_seq {}",
                    prompt.len(),
                    self.config.max_seq
                ),
            ));
        }
        check_sampling(sampling)?;
        let mut cache = self.new_cache(1)?;
        let mut ctx = Ctx::eval();
        let mut out = Vec::with_capacity(max_new);
        let v = self.config.vocab;
        let all = self.decode_step(prompt, 1, &mut cache, &mut ctx)?.value().to_vec();
        let mut logits = all[all.len() - v..].to_vec();
        for _ in 0..max_new {
            let next = sample(&logits, sampling, rng);
            out.push(next);
            if out.len() == max_new {
                break;
            }
            logits = self.decode_token(next, &mut cache, &mut ctx)?.0;
        }
        Ok(out)
    }
}

/// An exit's confidence in one row of logits.
fn confidence(measure: ExitMeasure, logits: &[f32]) -> f32 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let (mut z, mut first, mut second) = (0.0f64, 0.0f64, 0.0f64);
    for &l in logits {
        let e = ((l - m) as f64).exp();
        z += e;
        if e > first {
            (first, second) = (e, first);
        } else if e > second {
            second = e;
        }
    }
    let p = match measure {
        ExitMeasure::MaxProb => first / z,
        ExitMeasure::TopGap => (first - second) / z,
    };
    p as f32
}

/// `−ln softmax(logits)[target]`, in f64.
fn cross_entropy(logits: &[f32], target: usize) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    m + z.ln() - logits[target] as f64
}

fn check_sampling(s: Sampling) -> Result<()> {
    let ok = match s {
        Sampling::Greedy => true,
        Sampling::Temperature(t) => t.is_finite() && t > 0.0,
        Sampling::TopP { p, temperature } => p > 0.0 && p <= 1.0 && temperature.is_finite() && temperature > 0.0,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::config("sampling", format!("{s:?}: temperature must be finite and > 0, p in (0, 1]")))
    }
}

/// The next token from one row of logits.
fn sample(logits: &[f32], sampling: Sampling, rng: &mut Rng) -> u32 {
    let argmax = || logits.iter().enumerate().fold(0, |a, (i, &v)| if v > logits[a] { i } else { a }) as u32;
    let (temperature, p) = match sampling {
        Sampling::Greedy => return argmax(),
        Sampling::Temperature(t) => (t, 1.0),
        Sampling::TopP { p, temperature } => (temperature, p),
    };
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let weights: Vec<f64> = logits.iter().map(|&l| (((l - m) / temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    // The nucleus: most probable first (ties to the lower id), until the mass reaches p.
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
    let (mut kept, mut mass) = (0, 0.0);
    while kept < order.len() && (kept == 0 || mass < p as f64 * total) {
        mass += weights[order[kept]];
        kept += 1;
    }
    let u = rng.next_f64() * mass;
    let mut acc = 0.0;
    for &i in &order[..kept] {
        acc += weights[i];
        if u < acc {
            return i as u32;
        }
    }
    order[kept - 1] as u32
}
