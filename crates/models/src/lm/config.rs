//! [`LmConfig`]: everything that defines a [`TransformerLm`](super::TransformerLm)'s shape, as
//! JSON: the sizes, and per block the feed-forward kind, optional mixture-of-depths routing and
//! optional early-exit heads.

use crate::error::{Error, Result};
use elide_cond::{capacity_rows, SparseFfConfig};
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
    /// A mixture of GELU experts with token-choice top-k routing ([`MoeFfn`](crate::MoeFfn)).
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
    /// A unit-sparse ReLU layer (Terraformer's sparse FF, [`SparseFfn`](crate::SparseFfn)):
    /// `hidden` units in blocks of `block_size`, one unit per block running per token, chosen by
    /// a low-rank controller. Trains dense-and-masked; decodes on the chosen units only.
    SparseFf {
        /// Hidden units, a multiple of `block_size`.
        hidden: usize,
        /// Units per block, of which one runs (trax: 32).
        #[serde(default = "default_block_size")]
        block_size: usize,
        /// Inner width of the controller (the paper's 64).
        #[serde(default = "default_rank")]
        rank: usize,
    },
}

fn default_balance() -> f32 {
    0.01
}

fn default_z_loss() -> f32 {
    1e-3
}

fn default_block_size() -> usize {
    32
}

fn default_rank() -> usize {
    64
}

impl FfnConfig {
    /// FLOPs of one token's forward pass through the layer: the top-k experts of a mixture, the
    /// controller and the chosen units of a sparse layer.
    pub fn active_flops(&self, d: usize) -> f64 {
        match *self {
            FfnConfig::Dense { hidden } => 4.0 * (d * hidden) as f64,
            FfnConfig::SwiGlu { hidden } => 6.0 * (d * hidden) as f64,
            FfnConfig::Moe { hidden, experts, top_k, .. } => (4 * top_k * d * hidden + 2 * d * experts) as f64,
            FfnConfig::SparseFf { hidden, block_size, rank } => {
                (2 * (d * rank + rank * hidden) + 4 * d * (hidden / block_size.max(1))) as f64
            }
        }
    }

    /// The sparse layer's settings (trax's temperature and soft fraction), for a
    /// [`FfnConfig::SparseFf`].
    pub(crate) fn sparse_ff(&self, d: usize) -> Option<SparseFfConfig> {
        match *self {
            FfnConfig::SparseFf { hidden, block_size, rank } => {
                Some(SparseFfConfig { block_size, rank, ..SparseFfConfig::new(d, hidden) })
            }
            _ => None,
        }
    }
}

/// How a mixture-of-depths block scales its output by its router score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepthGate {
    /// The raw router logit, as in the paper (arXiv 2404.02258).
    Raw,
    /// `sigmoid(logit)`: the block starts at half strength instead of near zero.
    Sigmoid,
}

/// Mixture-of-depths routing of a whole block (attention and feed-forward together, Raposo et
/// al., arXiv 2404.02258): in training and evaluation the `⌊capacity · seq⌋` (at least 1)
/// highest-scoring tokens of each sequence run the block, reading each other as a shorter
/// sequence; the rest ride the residual. Decoding, where the future is unknown, lets each token
/// decide alone: by the sign of its router logit (trained towards top-C membership by a BCE
/// loss of weight `router_aux_coef`), or by a small predictor if `predictor_hidden` is set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DepthConfig {
    /// Fraction of each sequence's tokens that run the block, in `(0, 1]` (the paper's best:
    /// 0.125).
    pub capacity: f32,
    /// How the router score scales the block output.
    #[serde(default = "default_gate")]
    pub gate: DepthGate,
    /// Weight of the router's BCE loss against top-C membership.
    #[serde(default = "default_router_aux")]
    pub router_aux_coef: f32,
    /// Hidden width of the causal predictor that decides while decoding; absent: the router's
    /// sign decides.
    #[serde(default)]
    pub predictor_hidden: Option<usize>,
}

fn default_gate() -> DepthGate {
    DepthGate::Sigmoid
}

fn default_router_aux() -> f32 {
    0.01
}

impl DepthConfig {
    /// Routing at capacity `capacity` with the defaults: sigmoid gate, router BCE weight 0.01,
    /// no predictor.
    pub fn new(capacity: f32) -> DepthConfig {
        DepthConfig { capacity, gate: default_gate(), router_aux_coef: default_router_aux(), predictor_hidden: None }
    }
}

/// One block: attention, then a feed-forward layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    /// The feed-forward layer.
    pub ffn: FfnConfig,
    /// Mixture-of-depths routing of the whole block; absent: every token runs it.
    #[serde(default)]
    pub depth: Option<DepthConfig>,
}

/// Which confidence measure decides an early exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitMeasure {
    /// The largest next-token probability; a token exits when it is `≥ threshold`.
    MaxProb,
    /// The gap between the two largest probabilities (CALM's softmax response); a token exits
    /// when it is `≥ threshold`.
    TopGap,
}

/// Early-exit heads for decoding (CALM, Schuster et al., arXiv 2207.07061): after each block
/// listed in `after`, the shared output head (final norm and unembedding) predicts the next
/// token; while decoding, a token whose confidence passes `threshold` there stops, and the
/// layers it skips still get its keys and values, projected from the exited hidden state
/// (CALM's state propagation), so later tokens can attend to it. Training adds every exit's
/// loss, each exit's weight proportional to its depth (CALM's weighting).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitConfig {
    /// Blocks (0-based, ascending, before the last) after which a token may exit.
    pub after: Vec<usize>,
    /// The confidence measure.
    #[serde(default = "default_measure")]
    pub measure: ExitMeasure,
    /// The confidence a token needs to exit, in `[0, 1]` (above 1: no token exits and no exit
    /// head runs).
    pub threshold: f32,
}

fn default_measure() -> ExitMeasure {
    ExitMeasure::MaxProb
}

/// Everything that defines a [`TransformerLm`](super::TransformerLm)'s shape.
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
    /// Early-exit heads; absent: every token runs every block.
    #[serde(default)]
    pub early_exit: Option<ExitConfig>,
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
        LmConfig {
            vocab,
            d_model,
            heads,
            max_seq,
            tied_embeddings: true,
            blocks: vec![BlockConfig { ffn, depth: None }; layers],
            early_exit: None,
        }
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
                FfnConfig::SparseFf { hidden, block_size, rank }
                    if hidden == 0 || block_size == 0 || rank == 0 || !hidden.is_multiple_of(block_size) =>
                {
                    return bad(format!(
                        "block {i}: a sparse FF needs sizes > 0 and block_size dividing hidden, got hidden {hidden}, block_size {block_size}, rank {rank}"
                    ));
                }
                _ => {}
            }
            if let Some(depth) = &b.depth {
                if !(depth.capacity > 0.0 && depth.capacity <= 1.0) {
                    return bad(format!("block {i}: mixture-of-depths capacity {} must be in (0, 1]", depth.capacity));
                }
                if !(depth.router_aux_coef.is_finite() && depth.router_aux_coef >= 0.0) {
                    return bad(format!(
                        "block {i}: router_aux_coef {} must be finite and >= 0",
                        depth.router_aux_coef
                    ));
                }
                if depth.predictor_hidden == Some(0) {
                    return bad(format!("block {i}: predictor_hidden must be > 0"));
                }
            }
        }
        if let Some(exit) = &self.early_exit {
            let last = self.blocks.len() - 1;
            if exit.after.is_empty()
                || exit.after.windows(2).any(|w| w[0] >= w[1])
                || exit.after.iter().any(|&a| a >= last)
            {
                return bad(format!(
                    "early_exit.after {:?} must list ascending blocks before the last ({last})",
                    exit.after
                ));
            }
            if exit.threshold.is_nan() || exit.threshold < 0.0 {
                return bad(format!("early_exit.threshold {} must be >= 0", exit.threshold));
            }
            if self.blocks.iter().any(|b| b.depth.is_some()) {
                return bad("early exit with mixture-of-depths blocks is not supported: a token's propagated state would have to be routed too".into());
            }
        }
        Ok(())
    }

    /// FLOPs of one token's forward pass at context length `seq` (attention over half the
    /// context on average, causal; a mixture-of-depths block at its capacity's share of the
    /// tokens plus its router).
    pub fn active_flops_per_token(&self, seq: usize) -> f64 {
        let d = self.d_model as f64;
        let blocks: f64 = self
            .blocks
            .iter()
            .map(|b| match &b.depth {
                None => block_flops(d, seq as f64, &b.ffn, self.d_model),
                Some(depth) => {
                    let c = capacity_rows(seq, depth.capacity) as f64;
                    // The routed tokens attend over the routed context only.
                    c / seq as f64 * block_flops(d, c, &b.ffn, self.d_model) + 2.0 * d
                }
            })
            .sum();
        blocks + 2.0 * d * self.vocab as f64
    }
}

/// One token's forward FLOPs through a block at context length `seq`: four projections, `QKᵀ`
/// and `PV` over `seq/2` keys on average, the feed-forward layer.
fn block_flops(d: f64, seq: f64, ffn: &FfnConfig, d_model: usize) -> f64 {
    8.0 * d * d + 2.0 * d * seq + ffn.active_flops(d_model)
}
