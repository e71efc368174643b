//! Models for elide: layers behind one [`Module`] trait, so a model is built the way it is in
//! PyTorch's `nn` or candle-nn — [`Linear`], [`Embedding`], [`RmsNorm`], [`LayerNorm`], the
//! dense [`Ffn`] and the mixture-of-experts [`MoeFfn`] — each registering named parameters under
//! a scope and running its forward pass on [`Var`](elide_autodiff::Var)s in a [`Ctx`] that
//! carries the mode (train or eval), the noise source and what layers report back (auxiliary
//! losses, executed FLOPs).
//!
//! A two-layer model with a mixture-of-experts feed-forward layer, one training step:
//!
//! ```
//! use elide_autodiff::optim::{AdamW, Optimizer};
//! use elide_autodiff::{ParamStore, Var};
//! use elide_cond::{Activation, ExpertKind, MoeConfig, RouterKind};
//! use elide_models::{Ctx, Linear, Module, MoeFfn, RmsNorm};
//! use elide_cond::gathered::WeightLayout;
//! use elide_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let norm = RmsNorm::new(&mut store.scope("norm"), 16, 1e-5)?;
//! let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
//! let config = MoeConfig::new(16, 32, 4, top2, ExpertKind::Mlp(Activation::Gelu));
//! let moe = MoeFfn::new(&mut store.scope("moe"), config, &mut rng)?;
//! let head = Linear::new(&mut store.scope("head"), 16, 3, true, WeightLayout::InOut, &mut rng)?;
//!
//! let x = Var::constant(Tensor::randn(&[2, 5, 16], &mut rng)); // [batch, seq, d]
//! let mut noise = Rng::seed(1);
//! let mut ctx = Ctx::train(&mut noise);
//! let h = x.add(&moe.forward(&norm.forward(&x, &mut ctx)?, &mut ctx)?)?;
//! let logits = head.forward(&h, &mut ctx)?.reshape(&[10, 3])?;
//! let loss = logits.cross_entropy(&[0, 1, 2, 0, 1, 2, 0, 1, 2, 0])?.add(&ctx.aux_loss()?)?;
//! let grads = loss.backward()?;
//! AdamW::new(1e-3).step(&store, &grads)?;
//! assert!(ctx.flops > 0.0);
//! # Ok::<(), elide_models::Error>(())
//! ```

#![warn(missing_docs)]

mod attention;
mod data;
mod error;
mod ffn;
mod kv_cache;
mod linear;
mod lm;
mod module;
mod norm;
pub mod tasks;
#[cfg(test)]
mod testing;
mod train;

pub use attention::{causal_attention, rotary, CausalSelfAttention, ROPE_BASE};
pub use data::{batch_rng, random_windows, Batch, ByteText, Split, TokenSource};
pub use error::{Error, Result};
pub use ffn::{Ffn, FfnKind, MoeFfn, SparseFfn};
pub use kv_cache::KvCache;
pub use linear::{Embedding, Linear};
pub use lm::{
    BlockConfig, DecodeScore, DepthConfig, DepthGate, ExitConfig, ExitMeasure, FfnConfig, LmConfig, Sampling,
    TransformerLm,
};
pub use module::{Ctx, Mode, Module};
pub use norm::{LayerNorm, RmsNorm};
pub use train::{
    Event, LossModel, NoDecay, StepReport, TrainConfig, TrainSummary, Trainer, CHECKPOINT_FILE, METRICS_FILE,
};

/// `docs/models.md`'s examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/models.md")]
pub struct ModelsDocTests;
