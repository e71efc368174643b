//! Conditional computation for elide: the layers that decide, per token, which of their parts
//! to run, and the pieces they are built from.
//!
//! Every conditional layer here is built on the ops of [`gathered`]: rows picked by a plan →
//! one grouped GEMM with a fused epilogue → a gate-weighted combine, forward and backward, each
//! touching only the planned rows. A [`Router`] scores each token against each destination (a
//! [`ScoreFn`]) and a [`Selection`] (top-k per token, top-C per destination, a threshold) turns
//! the scores into a [`Routing`], a flat list of (token, expert, gate) assignments whose gates are
//! differentiable with respect to the router. A [`DispatchPlan`] sorts those assignments by
//! expert with one counting sort (offsets, row lists, and what a [`Capacity`] dropped), which is
//! what the gathered kernels read, so an expert computes only the rows routed to it. The
//! auxiliary losses ([`load_balancing_loss`], [`z_loss`]) keep the router balanced and its
//! logits small, and [`ExpertStats`] reports the load for logging. [`Experts`] compute only the
//! rows routed to them, forward and backward, on the grouped gathered GEMM, and [`MoeLayer`] puts
//! router, plan, experts and losses together (`docs/moe.md` walks through it). A layer can also
//! be built from existing weights ([`MoeLayer::from_tensors`]), and [`import`] reads and writes
//! other frameworks' safetensors files through a name map (a Hugging Face Mixtral block's ships).
//! Around any [`Block`] (`[rows, d] → [rows, d]`), [`MixtureOfDepths`] runs the block on the
//! rows a one-destination router picks and lets the rest ride the residual, and [`EarlyExit`]
//! stacks blocks with classifier heads so confident rows leave the batch early
//! (`docs/skip.md`).
//! [`SparseFeedForward`] routes units instead of rows: a low-rank controller picks one hidden
//! unit per block for each token (Terraformer, arXiv 2111.12763), trained through
//! Gumbel/straight-through masks and run at inference on the chosen unit rows only.
//!
//! Through the `elide` facade this crate is `elide::cond` (and its neighbours `elide::tensor`,
//! `elide::autodiff`); the facade's documentation shows the examples below with those paths.
//!
//! A mixture-of-experts layer in a training step:
//!
//! ```
//! use elide_autodiff::{ParamStore, Var};
//! use elide_cond::{Activation, Capacity, ExpertKind, MoeConfig, MoeLayer, RouterKind};
//! use elide_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
//! let config = MoeConfig {
//!     capacity: Capacity::factor(1.25), // ⌈1.25·S/E⌉ slots per expert
//!     ..MoeConfig::new(16, 32, 4, top2, ExpertKind::Mlp(Activation::Gelu))
//! };
//! let moe = MoeLayer::new(&mut store.scope("blocks.0.moe"), config, &mut rng)?;
//! let x = Var::constant(Tensor::randn(&[10, 16], &mut rng));
//! let out = moe.forward(&x)?;
//! let y = x.add(&out.output)?; // dropped tokens ride the residual
//! let loss = y.square().mean_all().add(&out.aux_loss()?)?;
//! let grads = loss.backward()?;
//! assert_eq!(out.stats.tokens_per_expert.iter().sum::<usize>() + out.stats.dropped_assignments, 20); // 10 tokens × top-2
//! assert!(store.iter().all(|p| grads.get(p).is_some()));
//! # Ok::<(), elide_cond::Error>(())
//! ```
//!
//! Routing a small batch with top-2 token choice and planning the dispatch:
//!
//! ```
//! use elide_autodiff::{ParamStore, Var};
//! use elide_cond::{load_balancing_loss, z_loss, Capacity, DispatchPlan, ExpertStats, LoadCount, Router, RouterKind};
//! use elide_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let kind = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
//! let router = Router::new(&mut store.scope("blocks.0.moe"), 16, 4, kind, &mut rng)?;
//!
//! let x = Var::constant(Tensor::randn(&[6, 16], &mut rng)); // 6 tokens of width 16
//! let routing = router.route(&x, None)?;
//! assert_eq!(routing.len(), 12); // token t's choices are assignments 2t and 2t + 1
//! let gates = routing.gate_values();
//! assert!((gates[0] + gates[1] - 1.0).abs() < 1e-6); // renormalised, as Mixtral
//!
//! let plan = DispatchPlan::from_routing(&routing, Capacity::Dropless)?;
//! assert_eq!(plan.offsets().len(), 5);
//! for e in 0..4 {
//!     for slot in plan.expert_range(e) {
//!         let assignment = plan.assignment()[slot] as usize;
//!         assert_eq!((routing.tokens[assignment], routing.experts[assignment]), (plan.tokens()[slot], e as u32));
//!     }
//! }
//! assert_eq!(ExpertStats::from_plan(&plan).tokens_per_expert.iter().sum::<usize>(), 12);
//!
//! // The auxiliary losses are differentiable: their gradient reaches the router weight.
//! let aux = load_balancing_loss(&routing, &plan, LoadCount::Routed, 0.01)?.add(&z_loss(&routing.logits)?.mul_scalar(1e-3))?;
//! let grads = aux.backward()?;
//! assert!(grads.get(router.weight()).is_some());
//! # Ok::<(), elide_cond::Error>(())
//! ```

#![warn(missing_docs)]

mod aux_loss;
mod block;
mod early_exit;
mod error;
mod estimator;
mod expert;
pub mod gathered;
mod hierarchical;
pub mod import;
mod mixture_of_depths;
mod moe;
mod plan;
mod router;
mod routing;
mod sparse_ff;
#[cfg(test)]
mod testing;
mod weights;

pub use aux_loss::{load_balancing_loss, z_loss, ExpertStats, LoadCount};
pub use block::{Block, MlpBlock, Residual};
pub use early_exit::{Calibration, Confidence, EarlyExit, ExitInference, ExitLoss, ExitRule};
/// The activation of an MLP expert ([`ExpertKind::Mlp`]), re-exported from the kernels that fuse it.
pub use elide_kernels::gemm::Activation;
pub use error::{Error, Result};
pub use estimator::{
    bernoulli_straight_through, straight_through_one_hot, straight_through_threshold, BernoulliGates, DiscreteChoice,
    GumbelOutput, GumbelSoftmax, MovingAverageBaseline, StraightThroughGrad,
};
pub use expert::{ExpertKind, ExpertTimes, Experts};
pub use hierarchical::{
    HierarchicalClassifier, HierarchicalConfig, HierarchicalLoss, HierarchicalPrediction, TrainRoute,
};
pub use mixture_of_depths::{
    capacity_rows, Causal, DepthRoute, DepthRouter, MixtureOfDepths, MixtureOfDepthsConfig, MixtureOfDepthsOutput,
    RowSelection,
};
pub use moe::{MoeConfig, MoeLayer, MoeOutput, MoePhases};
pub use plan::{Capacity, DispatchPlan, Rounding};
pub use router::{
    expert_choice_capacity, noise_std, NoiseScale, Router, RouterKind, RouterOptions, ScoreFn, Selection,
};
pub use routing::Routing;
pub use sparse_ff::{SparseFeedForward, SparseFfConfig, SparseFfMode, SparseFfOutput};
pub use weights::NamedTensors;
