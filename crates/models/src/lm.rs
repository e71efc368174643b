//! [`TransformerLm`]: a decoder-only transformer language model whose blocks may be
//! conditional, built from one JSON-serialisable [`LmConfig`].
//!
//! ```text
//! h = embed(ids)                                   [batch, seq, d]   (no position table: RoPE)
//! per block:  h = h + attn(rms_norm(h))            causal, rotary positions
//!             h = h + ffn(rms_norm(h))             dense | SwiGLU | mixture of experts | sparse FF
//!   or, routed by mixture-of-depths, the same on the top-C tokens of each sequence only
//! logits = rms_norm(h) · Wᵀ_embed (tied) or · W_head     (also after each early-exit block)
//! ```
//!
//! Parameter names: `embed.weight [vocab, d]`; per block `i`: `blocks.i.attn_norm.weight`,
//! `blocks.i.attn.{q,k,v,o}.weight`, `blocks.i.ffn_norm.weight`, the feed-forward layer's under
//! `blocks.i.ffn` (see [`Ffn`](crate::Ffn), [`MoeFfn`](crate::MoeFfn) and
//! [`SparseFfn`](crate::SparseFfn)), and a routed block's `blocks.i.depth.router [d, 1]`
//! (plus `blocks.i.depth.predictor.*`); `final_norm.weight`; `head.weight [d, vocab]` unless the
//! embeddings are tied. Early exits share the final norm and the head.
//!
//! A mixture-of-depths block reads its chosen tokens as a shorter sequence, with rotary
//! positions counted within that sequence (the `k`-th chosen token is at position `k`), so that
//! decoding, where a block's KV cache holds only the tokens that entered it, sees the same
//! positions as training.

mod block;
mod config;
mod decode;

use crate::data::Batch;
use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::linear::{Embedding, Linear};
use crate::module::{Ctx, Module};
use crate::norm::RmsNorm;
use crate::train::LossModel;
use block::Block;
pub use config::{BlockConfig, DepthConfig, DepthGate, ExitConfig, ExitMeasure, FfnConfig, LmConfig};
pub use decode::{DecodeScore, Sampling};
use elide_autodiff::{init::WeightLayout, Param, ParamStore, Var};
use elide_tensor::Rng;

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
            blocks.push(Block::new(&mut store.scope(&format!("blocks.{i}")), b, d, config.heads, rng)?);
        }
        let final_norm = RmsNorm::new(&mut store.scope("final_norm"), d, 1e-5)?;
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

    /// Sets the confidence an early exit needs (`> 1`: no token exits, no exit head runs), for
    /// decoding and [`TransformerLm::score_decoding`].
    ///
    /// # Errors
    /// [`Error::Config`] if the model has no early exits or `threshold` is negative or NaN.
    pub fn set_exit_threshold(&mut self, threshold: f32) -> Result<()> {
        let exit = self
            .config
            .early_exit
            .as_mut()
            .ok_or_else(|| Error::config("TransformerLm::set_exit_threshold", "the model has no early exits"))?;
        if threshold.is_nan() || threshold < 0.0 {
            return Err(Error::config(
                "TransformerLm::set_exit_threshold",
                format!("threshold {threshold} must be >= 0"),
            ));
        }
        exit.threshold = threshold;
        Ok(())
    }

    /// Every parameter, in the order of the module docs.
    pub fn params(&self) -> Vec<&Param> {
        let mut p = vec![self.embed.weight()];
        p.extend(self.blocks.iter().flat_map(Block::params));
        p.extend(self.final_norm.params());
        p.extend(self.head.iter().flat_map(|h| h.params()));
        p
    }

    /// The feed-forward layer of block `i`, for measuring it alone.
    pub fn ffn(&self, i: usize) -> Option<&dyn Module> {
        self.blocks.get(i).map(|b| b.ffn.module())
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

    /// Next-token logits `[batch, seq, vocab]` of `ids` (`[batch · seq]`, row-major), from the
    /// last block.
    ///
    /// # Errors
    /// [`Error::Shape`] if `ids` is not `batch · seq` long; [`Error::Config`] for an id outside
    /// the vocabulary or a sequence longer than `max_seq`.
    pub fn logits(&self, ids: &[u32], batch: usize, seq: usize, ctx: &mut Ctx<'_>) -> Result<Var> {
        let (h, _) = self.hidden(ids, batch, seq, &[], ctx)?;
        self.head(&h, ctx)
    }

    /// The last block's hidden states of `ids`, and those after each block in `exits`.
    fn hidden(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        exits: &[usize],
        ctx: &mut Ctx<'_>,
    ) -> Result<(Var, Vec<Var>)> {
        self.check_ids("TransformerLm::logits", ids, batch, seq)?;
        let mut h = self.embed.forward(ids)?.reshape(&[batch, seq, self.config.d_model])?;
        let mut kept = Vec::with_capacity(exits.len());
        for (i, b) in self.blocks.iter().enumerate() {
            h = b.forward(&h, ctx)?;
            if exits.contains(&i) {
                kept.push(h.clone());
            }
        }
        Ok((h, kept))
    }

    /// Logits of hidden states `h` (`[.., d]`): the final norm, then the head.
    fn head(&self, h: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let h = self.final_norm.forward(h, ctx)?;
        match &self.head {
            Some(head) => head.forward(&h, ctx),
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

    /// A KV cache for `batch` sequences of up to `max_seq` positions.
    ///
    /// # Errors
    /// As [`KvCache::new`].
    pub fn new_cache(&self, batch: usize) -> Result<KvCache> {
        let c = &self.config;
        KvCache::new(c.blocks.len(), batch, c.heads, c.max_seq, c.d_model / c.heads)
    }
}

impl LossModel for TransformerLm {
    /// Mean next-token cross-entropy of the batch. Training a model with early exits adds each
    /// exit's loss, the exit after block `i` (0-based) weighted `∝ i + 1` and the last block's
    /// `∝ layers` (CALM's weighting, weights summing to 1); evaluation scores the last block.
    fn loss(&self, batch: &Batch, ctx: &mut Ctx<'_>) -> Result<Var> {
        let rows = batch.batch * batch.seq;
        let exits = match (&self.config.early_exit, ctx.training()) {
            (Some(exit), true) => exit.after.clone(),
            _ => Vec::new(),
        };
        let (h, exit_h) = self.hidden(&batch.inputs, batch.batch, batch.seq, &exits, ctx)?;
        let ce = |h: &Var, ctx: &mut Ctx<'_>| -> Result<Var> {
            Ok(self.head(h, ctx)?.reshape(&[rows, self.config.vocab])?.cross_entropy(&batch.targets)?)
        };
        let last = ce(&h, ctx)?;
        if exits.is_empty() {
            return Ok(last);
        }
        let layers = self.blocks.len();
        let total = (exits.iter().map(|&i| i + 1).sum::<usize>() + layers) as f32;
        let mut loss = last.mul_scalar(layers as f32 / total);
        for (&i, h) in exits.iter().zip(&exit_h) {
            loss = loss.add(&ce(h, ctx)?.mul_scalar((i + 1) as f32 / total))?;
        }
        Ok(loss)
    }
}

#[cfg(test)]
mod tests;
