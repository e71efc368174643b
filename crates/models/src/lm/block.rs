//! One transformer block of a [`TransformerLm`](super::TransformerLm): pre-norm attention and a
//! feed-forward layer, optionally routed as a whole by mixture-of-depths.

use super::config::{BlockConfig, DepthGate, FfnConfig};
use crate::attention::CausalSelfAttention;
use crate::error::{Error, Result};
use crate::ffn::{Ffn, FfnKind, MoeFfn, SparseFfn};
use crate::kv_cache::KvCache;
use crate::module::{Ctx, Module};
use crate::norm::RmsNorm;
use elide_autodiff::{init::WeightLayout, Param, Scope, Var};
use elide_cond::{
    Capacity, Causal, DepthRouter, ExpertKind, MixtureOfDepthsConfig, MoeConfig, RouterKind, RowSelection, ScoreFn,
};
use elide_kernels::gemm::Activation;
use elide_tensor::Rng;

const NORM_EPS: f32 = 1e-5;

/// A block's feed-forward layer.
pub(super) enum FeedForward {
    Dense(Ffn),
    Moe(MoeFfn),
    Sparse(SparseFfn),
}

impl FeedForward {
    pub(super) fn module(&self) -> &dyn Module {
        match self {
            FeedForward::Dense(f) => f,
            FeedForward::Moe(f) => f,
            FeedForward::Sparse(f) => f,
        }
    }
}

/// Mixture-of-depths routing of a block: its router and its decode-time rule.
struct Depth {
    router: DepthRouter,
    capacity: f32,
    causal: Causal,
}

pub(super) struct Block {
    attn_norm: RmsNorm,
    attn: CausalSelfAttention,
    ffn_norm: RmsNorm,
    pub(super) ffn: FeedForward,
    depth: Option<Depth>,
}

impl Block {
    /// Registers block `config`'s parameters under `scope`: `attn_norm`, `attn`, `ffn_norm`,
    /// `ffn` and, if routed, `depth` (the router `depth.router` and the optional
    /// `depth.predictor.*`).
    pub(super) fn new(
        scope: &mut Scope<'_>,
        config: &BlockConfig,
        d: usize,
        heads: usize,
        rng: &mut Rng,
    ) -> Result<Block> {
        let attn_norm = RmsNorm::new(&mut scope.scope("attn_norm"), d, NORM_EPS)?;
        let attn = CausalSelfAttention::new(&mut scope.scope("attn"), d, heads, WeightLayout::InOut, rng)?;
        let ffn_norm = RmsNorm::new(&mut scope.scope("ffn_norm"), d, NORM_EPS)?;
        let mut ffn_scope = scope.scope("ffn");
        let ffn = match config.ffn {
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
            FfnConfig::SparseFf { .. } => {
                let sparse = config.ffn.sparse_ff(d).expect("a sparse FF config");
                FeedForward::Sparse(SparseFfn::new(&mut ffn_scope, sparse, rng)?)
            }
        };
        let depth = match &config.depth {
            None => None,
            Some(c) => {
                let routing = MixtureOfDepthsConfig {
                    d_model: d,
                    // Per call, the sequence length is the input's; this one only passes validation.
                    selection: RowSelection::TopC { capacity: c.capacity, seq_len: 1 },
                    gate: match c.gate {
                        DepthGate::Raw => ScoreFn::Raw,
                        DepthGate::Sigmoid => ScoreFn::Sigmoid,
                    },
                    predictor_hidden: c.predictor_hidden,
                    router_aux_coef: c.router_aux_coef,
                };
                let causal = if c.predictor_hidden.is_some() { Causal::Predictor } else { Causal::Router };
                let router = DepthRouter::new(&mut scope.scope("depth"), routing, rng)?;
                Some(Depth { router, capacity: c.capacity, causal })
            }
        };
        Ok(Block { attn_norm, attn, ffn_norm, ffn, depth })
    }

    pub(super) fn params(&self) -> Vec<&Param> {
        let mut p = self.attn_norm.params();
        p.extend(self.attn.params());
        p.extend(self.ffn_norm.params());
        p.extend(self.ffn.module().params());
        if let Some(depth) = &self.depth {
            p.extend(depth.router.params());
        }
        p
    }

    /// `h` (`[batch, seq, d]`, whole sequences) through the block.
    pub(super) fn forward(&self, h: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let Some(depth) = &self.depth else {
            let h = h.add(&self.attn.forward(&self.attn_norm.forward(h, ctx)?, ctx)?)?;
            return Ok(h.add(&self.ffn.module().forward(&self.ffn_norm.forward(&h, ctx)?, ctx)?)?);
        };
        let (b, t, d) = dims(h)?;
        let rows = h.reshape(&[b * t, d])?;
        let route = depth.router.route(&rows, RowSelection::TopC { capacity: depth.capacity, seq_len: t })?;
        // Each sequence's chosen rows, in order, are a shorter sequence the block reads alone.
        let c = route.chosen().len() / b;
        let inside = self.branch(&route.gather(&rows)?.reshape(&[b, c, d])?, None, ctx)?;
        let out = depth.router.finish(&rows, route, &inside.reshape(&[b * c, d])?, 0.0)?;
        ctx.flops += out.flops;
        if ctx.training() {
            ctx.aux_losses.push(out.aux_loss()?);
            if depth.causal == Causal::Predictor {
                ctx.aux_losses.push(depth.router.predictor_loss(&rows, &out)?);
            }
        }
        Ok(out.output.reshape(&[b, t, d])?)
    }

    /// The block's residual branch `attn + ffn` on `x` (`[batch, seq, d]`), the attention
    /// reading and extending `cache`'s layer if one is given.
    fn branch(&self, x: &Var, cache: Option<(&mut KvCache, usize)>, ctx: &mut Ctx<'_>) -> Result<Var> {
        let normed = self.attn_norm.forward(x, ctx)?;
        let a = match cache {
            Some((cache, layer)) => self.attn.forward_cached(&normed, cache, layer, ctx)?,
            None => self.attn.forward(&normed, ctx)?,
        };
        let f = self.ffn.module().forward(&self.ffn_norm.forward(&x.add(&a)?, ctx)?, ctx)?;
        Ok(a.add(&f)?)
    }

    /// New positions `h` (`[batch, new, d]`) through the block, reading and extending layer
    /// `layer` of `cache`. A routed block decides token by token (its decode-time rule) and
    /// caches the keys of the tokens that enter it only, so it supports batch 1.
    pub(super) fn decode(&self, h: &Var, cache: &mut KvCache, layer: usize, ctx: &mut Ctx<'_>) -> Result<Var> {
        let Some(depth) = &self.depth else {
            let h = h.add(&self.attn.forward_cached(&self.attn_norm.forward(h, ctx)?, cache, layer, ctx)?)?;
            return Ok(h.add(&self.ffn.module().forward(&self.ffn_norm.forward(&h, ctx)?, ctx)?)?);
        };
        let (b, t, d) = dims(h)?;
        if b != 1 {
            return Err(Error::shape(
                "TransformerLm decoding",
                format!("a mixture-of-depths block decodes one sequence at a time, got batch {b}"),
            ));
        }
        let rows = h.reshape(&[t, d])?;
        let route = depth.router.route_causal(&rows, depth.causal)?;
        let c = route.chosen().len();
        if c == 0 {
            ctx.flops += 2.0 * (t * d) as f64;
            return Ok(h.clone());
        }
        let inside = self.branch(&route.gather(&rows)?.reshape(&[1, c, d])?, Some((cache, layer)), ctx)?;
        let out = depth.router.finish(&rows, route, &inside.reshape(&[c, d])?, 0.0)?;
        ctx.flops += out.flops;
        Ok(out.output.reshape(&[1, t, d])?)
    }

    /// Appends the keys and values a skipped token leaves in this block: those of its exited
    /// hidden state `h` (CALM's state propagation).
    pub(super) fn propagate(&self, h: &Var, cache: &mut KvCache, layer: usize, ctx: &mut Ctx<'_>) -> Result<()> {
        self.attn.append_kv(&self.attn_norm.forward(h, ctx)?, cache, layer, ctx)
    }
}

fn dims(h: &Var) -> Result<(usize, usize, usize)> {
    match *h.shape() {
        [b, t, d] => Ok((b, t, d)),
        ref s => Err(Error::shape("TransformerLm block", format!("hidden states must be [batch, seq, d], got {s:?}"))),
    }
}
