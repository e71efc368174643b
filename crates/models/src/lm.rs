//! [`TransformerLm`]: a decoder-only transformer language model whose feed-forward layers may be
//! conditional, built from one JSON-serialisable [`LmConfig`].
//!
//! ```text
//! h = embed(ids)                                   [batch, seq, d]   (no position table: RoPE)
//! per block:  h = h + attn(rms_norm(h))            causal, rotary positions
//!             h = h + ffn(rms_norm(h))             dense | SwiGLU | mixture of experts
//! logits = rms_norm(h) · Wᵀ_embed (tied) or · W_head
//! ```
//!
//! Parameter names: `embed.weight [vocab, d]`; per block `i`: `blocks.i.attn_norm.weight`,
//! `blocks.i.attn.{q,k,v,o}.weight`, `blocks.i.ffn_norm.weight`, and the feed-forward layer's
//! under `blocks.i.ffn` (see [`Ffn`] and [`MoeFfn`]); `final_norm.weight`; `head.weight [d,
//! vocab]` unless the embeddings are tied.

use crate::attention::CausalSelfAttention;
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::ffn::{Ffn, FfnKind, MoeFfn};
use crate::kv_cache::KvCache;
use crate::linear::{Embedding, Linear};
use crate::module::{Ctx, Module};
use crate::norm::RmsNorm;
use crate::train::LossModel;
use elide_autodiff::{init::WeightLayout, no_grad, Param, ParamStore, Var};
use elide_cond::{Capacity, ExpertKind, MoeConfig, RouterKind};
use elide_kernels::gemm::Activation;
use elide_tensor::Rng;
use serde::{Deserialize, Serialize};

/// The feed-forward layer of a block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FfnConfig {
    /// `gelu(x·W1 + b1)·W2 + b2`.
    Dense {
        /// Hidden width.
        hidden: usize,
    },
    /// `(silu(x·Wg) ⊙ x·Wu)·W2`.
    SwiGlu {
        /// Hidden width.
        hidden: usize,
    },
    /// A mixture of GELU experts with token-choice top-k routing ([`MoeFfn`]).
    Moe {
        /// Hidden width of each expert.
        hidden: usize,
        /// Experts.
        experts: usize,
        /// Experts per token.
        top_k: usize,
        /// Per-expert capacity factor; absent: dropless.
        #[serde(default)]
        capacity_factor: Option<f32>,
        /// Weight of the load-balancing loss.
        #[serde(default = "default_balance")]
        balance_coef: f32,
        /// Weight of the router z-loss.
        #[serde(default = "default_z_loss")]
        z_loss_coef: f32,
    },
}

fn default_balance() -> f32 {
    0.01
}

fn default_z_loss() -> f32 {
    1e-3
}

impl FfnConfig {
    /// FLOPs of one token's pass through the layer (the active FLOPs: top-k experts for a
    /// mixture).
    pub fn active_flops(&self, d: usize) -> f64 {
        match *self {
            FfnConfig::Dense { hidden } => 4.0 * (d * hidden) as f64,
            FfnConfig::SwiGlu { hidden } => 6.0 * (d * hidden) as f64,
            FfnConfig::Moe { hidden, experts, top_k, .. } => (4 * top_k * d * hidden + 2 * d * experts) as f64,
        }
    }
}

/// One block: attention, then a feed-forward layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// The feed-forward layer.
    pub ffn: FfnConfig,
}

/// Everything that defines a [`TransformerLm`]'s shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Model width.
    pub d_model: usize,
    /// Attention heads (dividing `d_model` into heads of even width).
    pub heads: usize,
    /// The longest sequence decoding may reach (the KV cache's size).
    pub max_seq: usize,
    /// Whether the output head reuses the embedding table.
    #[serde(default = "default_tied")]
    pub tied_embeddings: bool,
    /// The blocks, first to last.
    pub blocks: Vec<BlockConfig>,
}

fn default_tied() -> bool {
    true
}

impl LmConfig {
    /// `layers` identical blocks with feed-forward layer `ffn`.
    pub fn uniform(
        vocab: usize,
        d_model: usize,
        heads: usize,
        layers: usize,
        max_seq: usize,
        ffn: FfnConfig,
    ) -> LmConfig {
        LmConfig { vocab, d_model, heads, max_seq, tied_embeddings: true, blocks: vec![BlockConfig { ffn }; layers] }
    }

    /// Reads a config from JSON, naming the field that is wrong.
    ///
    /// # Errors
    /// [`Error::Config`] for malformed JSON or an unknown field; the errors of
    /// [`LmConfig::validate`].
    pub fn from_json(json: &str) -> Result<LmConfig> {
        let config: LmConfig = serde_json::from_str(json).map_err(|e| Error::config("LmConfig", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a config serialises")
    }

    /// Checks that the sizes fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first inconsistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::config("LmConfig", what));
        if self.vocab == 0 || self.d_model == 0 || self.max_seq == 0 || self.blocks.is_empty() {
            return bad(format!(
                "vocab, d_model, max_seq and the block count must be > 0, got {}, {}, {}, {}",
                self.vocab,
                self.d_model,
                self.max_seq,
                self.blocks.len()
            ));
        }
        if self.heads == 0 || !self.d_model.is_multiple_of(self.heads) || !(self.d_model / self.heads).is_multiple_of(2)
        {
            return bad(format!(
                "heads {} must divide d_model {} into heads of even width (rotary embeddings rotate pairs)",
                self.heads, self.d_model
            ));
        }
        for (i, b) in self.blocks.iter().enumerate() {
            match b.ffn {
                FfnConfig::Dense { hidden } | FfnConfig::SwiGlu { hidden } if hidden == 0 => {
                    return bad(format!("block {i}: hidden must be > 0"))
                }
                FfnConfig::Moe { hidden, experts, top_k, capacity_factor, .. } => {
                    if hidden == 0 || experts == 0 || top_k == 0 || top_k > experts {
                        return bad(format!(
                            "block {i}: a mixture needs hidden > 0 and 1 <= top_k <= experts, got hidden {hidden}, top_k {top_k}, experts {experts}"
                        ));
                    }
                    if capacity_factor.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
                        return bad(format!("block {i}: capacity factor {capacity_factor:?} must be finite and > 0"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// FLOPs of one token's forward pass at context length `seq` (attention over half the
    /// context on average, causal).
    pub fn active_flops_per_token(&self, seq: usize) -> f64 {
        let d = self.d_model as f64;
        let attention = 8.0 * d * d + 2.0 * d * seq as f64; // four projections; QKᵀ and PV over seq/2 keys
        let blocks: f64 = self.blocks.iter().map(|b| attention + b.ffn.active_flops(self.d_model)).sum();
        blocks + 2.0 * d * self.vocab as f64
    }
}

/// A block's feed-forward layer.
enum FeedForward {
    Dense(Ffn),
    Moe(MoeFfn),
}

impl FeedForward {
    fn module(&self) -> &dyn Module {
        match self {
            FeedForward::Dense(f) => f,
            FeedForward::Moe(f) => f,
        }
    }
}

struct Block {
    attn_norm: RmsNorm,
    attn: CausalSelfAttention,
    ffn_norm: RmsNorm,
    ffn: FeedForward,
}

const NORM_EPS: f32 = 1e-5;

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

/// A decoder-only transformer language model.
pub struct TransformerLm {
    config: LmConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    head: Option<Linear>,
}

impl TransformerLm {
    /// Builds the model, registering its parameters (names in the module docs) in `store`.
    ///
    /// # Errors
    /// The errors of [`LmConfig::validate`]; a registration error if a name is taken.
    pub fn new(store: &mut ParamStore, config: LmConfig, rng: &mut Rng) -> Result<TransformerLm> {
        config.validate()?;
        let d = config.d_model;
        let embed = Embedding::new(&mut store.scope("embed"), config.vocab, d, 0.02, rng)?;
        let mut blocks = Vec::with_capacity(config.blocks.len());
        for (i, b) in config.blocks.iter().enumerate() {
            let mut scope = store.scope(&format!("blocks.{i}"));
            let attn_norm = RmsNorm::new(&mut scope.scope("attn_norm"), d, NORM_EPS)?;
            let attn = CausalSelfAttention::new(&mut scope.scope("attn"), d, config.heads, WeightLayout::InOut, rng)?;
            let ffn_norm = RmsNorm::new(&mut scope.scope("ffn_norm"), d, NORM_EPS)?;
            let mut ffn_scope = scope.scope("ffn");
            let ffn = match b.ffn {
                FfnConfig::Dense { hidden } => {
                    FeedForward::Dense(Ffn::new(&mut ffn_scope, FfnKind::Mlp(Activation::Gelu), d, hidden, rng)?)
                }
                FfnConfig::SwiGlu { hidden } => {
                    FeedForward::Dense(Ffn::new(&mut ffn_scope, FfnKind::SwiGlu, d, hidden, rng)?)
                }
                FfnConfig::Moe { hidden, experts, top_k, capacity_factor, balance_coef, z_loss_coef } => {
                    let router = RouterKind::TopK { k: top_k, renormalize: true, noisy: false };
                    let config = MoeConfig {
                        capacity: capacity_factor.map_or(Capacity::Dropless, Capacity::factor),
                        balance_coef,
                        z_loss_coef,
                        ..MoeConfig::new(d, hidden, experts, router, ExpertKind::Mlp(Activation::Gelu))
                    };
                    FeedForward::Moe(MoeFfn::new(&mut ffn_scope, config, rng)?)
                }
            };
            blocks.push(Block { attn_norm, attn, ffn_norm, ffn });
        }
        let final_norm = RmsNorm::new(&mut store.scope("final_norm"), d, NORM_EPS)?;
        let head = if config.tied_embeddings {
            None
        } else {
            Some(Linear::new(&mut store.scope("head"), d, config.vocab, false, WeightLayout::InOut, rng)?)
        };
        Ok(TransformerLm { config, embed, blocks, final_norm, head })
    }

    /// The configuration.
    pub fn config(&self) -> &LmConfig {
        &self.config
    }

    /// Every parameter, in the order of the module docs.
    pub fn params(&self) -> Vec<&Param> {
        let mut p = vec![self.embed.weight()];
        for b in &self.blocks {
            p.extend(b.attn_norm.params());
            p.extend(b.attn.params());
            p.extend(b.ffn_norm.params());
            p.extend(b.ffn.module().params());
        }
        p.extend(self.final_norm.params());
        p.extend(self.head.iter().flat_map(|h| h.params()));
        p
    }

    fn check_ids(&self, op: &'static str, ids: &[u32], batch: usize, seq: usize) -> Result<()> {
        if batch == 0 || seq == 0 || ids.len() != batch * seq {
            return Err(Error::shape(op, format!("{} ids for batch {batch} × seq {seq}", ids.len())));
        }
        if seq > self.config.max_seq {
            return Err(Error::config(op, format!("seq {seq} is longer than max_seq {}", self.config.max_seq)));
        }
        Ok(())
    }

    /// Next-token logits `[batch, seq, vocab]` of `ids` (`[batch · seq]`, row-major).
    ///
    /// # Errors
    /// [`Error::Shape`] if `ids` is not `batch · seq` long; [`Error::Config`] for an id outside
    /// the vocabulary or a sequence longer than `max_seq`.
    pub fn logits(&self, ids: &[u32], batch: usize, seq: usize, ctx: &mut Ctx<'_>) -> Result<Var> {
        self.check_ids("TransformerLm::logits", ids, batch, seq)?;
        let mut h = self.embed.forward(ids)?.reshape(&[batch, seq, self.config.d_model])?;
        for b in &self.blocks {
            h = h.add(&b.attn.forward(&b.attn_norm.forward(&h, ctx)?, ctx)?)?;
            h = h.add(&b.ffn.module().forward(&b.ffn_norm.forward(&h, ctx)?, ctx)?)?;
        }
        self.head(&self.final_norm.forward(&h, ctx)?, ctx)
    }

    fn head(&self, h: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        match &self.head {
            Some(head) => head.forward(h, ctx),
            None => {
                let (lead, d) = h.shape().split_at(h.shape().len() - 1);
                let rows = lead.iter().product::<usize>();
                let table = self.embed.weight().var();
                let logits = h.reshape(&[rows, d[0]])?.matmul(&table.transpose(0, 1)?)?;
                ctx.flops += 2.0 * (rows * d[0] * self.config.vocab) as f64;
                let mut shape = lead.to_vec();
                shape.push(self.config.vocab);
                Ok(logits.reshape(&shape)?)
            }
        }
    }

    /// The logits of `new` tokens (`[batch · new]`) that follow what `cache` holds, appending
    /// their keys and values to it. Records no gradient.
    fn decode_step(&self, ids: &[u32], batch: usize, cache: &mut KvCache, ctx: &mut Ctx<'_>) -> Result<Var> {
        let new = ids.len() / batch;
        let mut h = self.embed.forward(ids)?.reshape(&[batch, new, self.config.d_model])?;
        for (i, b) in self.blocks.iter().enumerate() {
            h = h.add(&b.attn.forward_cached(&b.attn_norm.forward(&h, ctx)?, cache, i, ctx)?)?;
            h = h.add(&b.ffn.module().forward(&b.ffn_norm.forward(&h, ctx)?, ctx)?)?;
        }
        self.head(&self.final_norm.forward(&h, ctx)?, ctx)
    }

    /// A KV cache for `batch` sequences of up to `max_seq` positions.
    ///
    /// # Errors
    /// As [`KvCache::new`].
    pub fn new_cache(&self, batch: usize) -> Result<KvCache> {
        let c = &self.config;
        KvCache::new(c.blocks.len(), batch, c.heads, c.max_seq, c.d_model / c.heads)
    }

    /// Continues `prompt` by `max_new` tokens, reading each step's context from a KV cache (the
    /// prompt in one pass, then one token at a time); `rng` draws the samples.
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
        no_grad(|| {
            let mut logits = self.decode_step(prompt, 1, &mut cache, &mut ctx)?;
            for _ in 0..max_new {
                let v = self.config.vocab;
                let all = logits.value().to_vec();
                let next = sample(&all[all.len() - v..], sampling, rng);
                out.push(next);
                if out.len() == max_new {
                    break;
                }
                logits = self.decode_step(&[next], 1, &mut cache, &mut ctx)?;
            }
            Ok(out)
        })
    }
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

impl LossModel for TransformerLm {
    /// Mean next-token cross-entropy of the batch.
    fn loss(&self, batch: &Batch, ctx: &mut Ctx<'_>) -> Result<Var> {
        let logits = self.logits(&batch.inputs, batch.batch, batch.seq, ctx)?;
        Ok(logits.reshape(&[batch.batch * batch.seq, self.config.vocab])?.cross_entropy(&batch.targets)?)
    }
}

#[cfg(test)]
mod tests;
