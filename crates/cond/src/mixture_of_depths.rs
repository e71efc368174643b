//! [`MixtureOfDepths`]: a one-destination router picks which rows enter a block; the block runs
//! on those rows only and the others ride the residual (Raposo et al., arXiv 2404.02258; the
//! threshold rule is SkipNet's gate, arXiv 1711.09485).
//!
//! ```text
//! x [T, d] ──router──▶ r = x·w_r [T]            one logit per row
//!          ──select──▶ chosen rows, ascending   top-C per sequence, or sigmoid(r) ≥ τ
//!          ──gather──▶ x_c [n, d] ──block──▶ f(x_c)      the block sees n rows, not T
//!          ──combine_onto─▶ y = x + g ⊙ f(x)  on chosen rows, y = x elsewhere
//! ```
//!
//! The gate `g_i` is the router's score of row `i` (the raw logit `r_i`, as in the paper, or
//! `sigmoid(r_i)`), so the loss reaches the router through the block output it scales: that is
//! the estimator (the selection itself is piecewise constant). Top-C over a sequence sees the
//! future, so for decoding the layer carries the paper's two causal substitutes: a BCE loss on
//! the router logits against top-C membership ([`MixtureOfDepthsOutput::router_aux_loss`]; the
//! router then decides by `r ≥ 0`), and a small MLP predictor on a stop-gradient copy of the
//! input trained with BCE against the same membership ([`MixtureOfDepths::predictor_loss`]),
//! which decides at decode time ([`Causal::Predictor`]).
//!
//! The work skipped is real in both directions: the block's forward and backward run on the
//! compact `[n, d]` batch, and the gather and the residual combine are the gathered ops of
//! [`crate::gathered`], whose backward touches only the chosen rows (plus the identity of the
//! residual).

use crate::block::Block;
use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use crate::router::{Router, ScoreFn};
use elide_autodiff::{Param, Scope, Var};
use elide_tensor::{Rng, Tensor};
use std::sync::Arc;

/// Which rows enter the block during training (and non-causal inference).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowSelection {
    /// The `C = `[`capacity_rows`]`(seq_len, capacity)` highest-logit rows of each sequence:
    /// the input is `[B·seq_len, d]`, sequence `b` being rows `b·seq_len..(b+1)·seq_len`
    /// (mixture-of-depths).
    TopC {
        /// Fraction of each sequence that enters the block, in `(0, 1]` (the paper's best is
        /// 0.125).
        capacity: f32,
        /// Rows per sequence, `≥ 1`.
        seq_len: usize,
    },
    /// Every row with `sigmoid(r) ≥ threshold` (SkipNet's hard gate); the number of rows varies.
    Threshold {
        /// In `[0, 1]`.
        threshold: f32,
    },
}

/// Who decides at decode time, where top-C over the sequence is not available.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causal {
    /// The router itself: a row enters when `r ≥ 0` (`sigmoid(r) ≥ ½`); train it with
    /// [`MixtureOfDepthsOutput::router_aux_loss`].
    Router,
    /// The auxiliary predictor: a row enters when its predictor logit is `≥ 0`; train it with
    /// [`MixtureOfDepths::predictor_loss`].
    Predictor,
}

/// The shape and behaviour of a [`MixtureOfDepths`] layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MixtureOfDepthsConfig {
    /// Row width `d` (the block's).
    pub d_model: usize,
    /// How rows are chosen in [`MixtureOfDepths::forward`].
    pub selection: RowSelection,
    /// How the router logit becomes the gate that scales the block output: [`ScoreFn::Raw`]
    /// (the paper) or [`ScoreFn::Sigmoid`]. A softmax over one destination is the constant 1
    /// and is refused.
    pub gate: ScoreFn,
    /// Hidden width of the causal predictor (`d → h → 1`, GELU), or `None` for no predictor.
    pub predictor_hidden: Option<usize>,
    /// Weight of the router's BCE loss against top-C membership in
    /// [`MixtureOfDepthsOutput::aux_loss`] (0 to train without it).
    pub router_aux_coef: f32,
}

/// The rows per sequence that enter the block under top-C: `floor(capacity · seq_len)`, at least
/// 1 (so a short sequence still feeds its block one row), and 0 for an empty sequence. Floor is
/// the common convention of reimplementations; the paper does not state one.
pub fn capacity_rows(seq_len: usize, capacity: f32) -> usize {
    if seq_len == 0 {
        return 0;
    }
    // `as` maps NaN to 0 and saturates; the clamp does the rest.
    ((capacity as f64 * seq_len as f64).floor() as usize).clamp(1, seq_len)
}

impl MixtureOfDepthsConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Argument`] for `d_model = 0`, a capacity outside `(0, 1]`, `seq_len = 0`, a
    /// threshold outside `[0, 1]`, a softmax gate, a predictor of hidden width 0, or a router
    /// aux coefficient that is negative or not finite.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "MixtureOfDepths";
        let bad = |detail: String| Err(Error::argument(OP, detail));
        if self.d_model == 0 {
            return bad("d_model must be > 0".into());
        }
        match self.selection {
            RowSelection::TopC { capacity, .. } if !(capacity > 0.0 && capacity <= 1.0) => {
                return bad(format!("capacity {capacity} must be in (0, 1]"));
            }
            RowSelection::TopC { seq_len: 0, .. } => return bad("seq_len must be > 0".into()),
            RowSelection::Threshold { threshold } if !(0.0..=1.0).contains(&threshold) => {
                return bad(format!("threshold {threshold} must be in [0, 1]"));
            }
            _ => {}
        }
        if self.gate == ScoreFn::Softmax {
            return bad("a softmax over one destination is the constant 1: use a Raw or Sigmoid gate".into());
        }
        if self.predictor_hidden == Some(0) {
            return bad("the predictor's hidden width must be > 0".into());
        }
        if !(self.router_aux_coef.is_finite() && self.router_aux_coef >= 0.0) {
            return bad(format!("router_aux_coef {} must be finite and >= 0", self.router_aux_coef));
        }
        Ok(())
    }
}

/// A block wrapped so that only the rows a router picks run through it.
///
/// Two sequences of 8 rows, a quarter of each entering an MLP block:
///
/// ```
/// use elide_autodiff::{ParamStore, Var};
/// use elide_cond::{MixtureOfDepths, MixtureOfDepthsConfig, MlpBlock, RowSelection, ScoreFn};
/// use elide_kernels::gemm::Activation;
/// use elide_tensor::{Rng, Tensor};
///
/// let mut rng = Rng::seed(0);
/// let mut store = ParamStore::new();
/// let block = MlpBlock::new(&mut store.scope("blocks.0.mlp"), 16, 64, Activation::Gelu, &mut rng)?;
/// let config = MixtureOfDepthsConfig {
///     d_model: 16,
///     selection: RowSelection::TopC { capacity: 0.25, seq_len: 8 },
///     gate: ScoreFn::Raw,
///     predictor_hidden: Some(8),
///     router_aux_coef: 0.0,
/// };
/// let layer = MixtureOfDepths::new(&mut store.scope("blocks.0"), config, block, &mut rng)?;
/// let x = Var::constant(Tensor::randn(&[16, 16], &mut rng));
/// let out = layer.forward(&x)?;
/// assert_eq!(out.chosen.len(), 4); // 2 of 8 rows per sequence
/// let loss = out.output.square().mean_all().add(&layer.predictor_loss(&x, &out)?)?;
/// let grads = loss.backward()?;
/// assert!(store.iter().all(|p| grads.get(p).is_some()));
/// # Ok::<(), elide_cond::Error>(())
/// ```
pub struct MixtureOfDepths<B> {
    depth: DepthRouter,
    block: B,
}

/// What one pass produced.
pub struct MixtureOfDepthsOutput {
    /// `[T, d]`: `x + g ⊙ f(x)` on the chosen rows, `x` on the others.
    pub output: Var,
    /// `[T]` router logits `r = x·w_r`.
    pub router_logits: Var,
    /// The rows that entered the block, ascending (so each sequence's chosen rows stay in order
    /// for a block that reads them as a sequence).
    pub chosen: Vec<u32>,
    /// `[T]` 1 for a chosen row, 0 for the others: the BCE target of the causal losses.
    pub membership: Vec<f32>,
    /// The one-destination plan the block ran on (slot `s` is row `chosen[s]`).
    pub plan: Arc<DispatchPlan>,
    /// FLOPs run: the router, the predictor if it decided, and the block on the chosen rows.
    pub flops: f64,
    /// The layer's router aux coefficient.
    router_aux_coef: f32,
}

impl MixtureOfDepthsOutput {
    /// Mean BCE of `sigmoid(r)` against top-C membership, unweighted: trains the router to make
    /// the top-C decision on its own, so `r ≥ 0` can decide causally.
    ///
    /// # Errors
    /// Only on an internal shape mismatch (never for a layer's own output).
    pub fn router_aux_loss(&self) -> Result<Var> {
        bce_with_logits(&self.router_logits, &self.membership)
    }

    /// `router_aux_coef · router_aux_loss` (a constant 0 when the coefficient is 0): add it to
    /// the training loss.
    ///
    /// # Errors
    /// As [`MixtureOfDepthsOutput::router_aux_loss`].
    pub fn aux_loss(&self) -> Result<Var> {
        if self.router_aux_coef == 0.0 {
            return Ok(Var::constant(Tensor::scalar(0.0)));
        }
        Ok(self.router_aux_loss()?.mul_scalar(self.router_aux_coef))
    }
}

impl<B: Block> MixtureOfDepths<B> {
    /// Wraps `block` — the residual branch `f`, without its own residual connection (the layer
    /// adds `x`) — registering the router (`<scope>.router`, `[d, 1]`, `N(0, 0.02²)`) and, if
    /// configured, the predictor (`<scope>.predictor.{w1,b1,w2,b2}`).
    ///
    /// # Errors
    /// The errors of [`MixtureOfDepthsConfig::validate`]; [`Error::Shape`] if the block's width
    /// is not `d_model`; a registration error if a name is taken.
    pub fn new(
        scope: &mut Scope<'_>,
        config: MixtureOfDepthsConfig,
        block: B,
        rng: &mut Rng,
    ) -> Result<MixtureOfDepths<B>> {
        config.validate()?;
        if block.d_model() != config.d_model {
            return Err(Error::shape(
                "MixtureOfDepths",
                format!("the block's width {} differs from d_model = {}", block.d_model(), config.d_model),
            ));
        }
        Ok(MixtureOfDepths { depth: DepthRouter::new(scope, config, rng)?, block })
    }

    /// The configuration.
    pub fn config(&self) -> &MixtureOfDepthsConfig {
        self.depth.config()
    }

    /// The router (weight `[d, 1]`).
    pub fn router(&self) -> &Router {
        self.depth.router()
    }

    /// The routing half.
    pub fn depth_router(&self) -> &DepthRouter {
        &self.depth
    }

    /// The wrapped block.
    pub fn block(&self) -> &B {
        &self.block
    }

    /// The predictor's parameters `w1 [d, h]`, `b1 [h]`, `w2 [h, 1]`, `b2 [1]`, if it has one.
    pub fn predictor_params(&self) -> Option<[&Param; 4]> {
        self.depth.predictor_params()
    }

    /// `x: [T, d]` through the layer, rows chosen by the configured [`RowSelection`].
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[T, d_model]` or, under top-C, `T` is not a multiple of
    /// `seq_len`; [`Error::NonFiniteLogit`] naming the first row whose router logit is NaN or
    /// infinite; the block's errors.
    pub fn forward(&self, x: &Var) -> Result<MixtureOfDepthsOutput> {
        let route = self.depth.route(x, self.config().selection)?;
        self.run(x, route)
    }

    /// `x: [T, d]` at decode time: each row decides alone (no look at other rows), by the
    /// router's sign or the predictor's ([`Causal`]).
    ///
    /// # Errors
    /// As [`MixtureOfDepths::forward`] (no sequence-length check); [`Error::Argument`] for
    /// [`Causal::Predictor`] on a layer without one.
    pub fn forward_causal(&self, x: &Var, rule: Causal) -> Result<MixtureOfDepthsOutput> {
        let route = self.depth.route_causal(x, rule)?;
        self.run(x, route)
    }

    /// Mean BCE of the predictor on a stop-gradient copy of `x` against `out`'s membership
    /// (the top-C decision of [`MixtureOfDepths::forward`] on the same `x`). Its gradient
    /// reaches the predictor only.
    ///
    /// # Errors
    /// [`Error::Argument`] on a layer without a predictor; [`Error::Shape`] if `x` does not
    /// match `out`.
    pub fn predictor_loss(&self, x: &Var, out: &MixtureOfDepthsOutput) -> Result<Var> {
        self.depth.predictor_loss(x, out)
    }

    /// Runs the block on the route's rows and puts the gated results back on the residual.
    fn run(&self, x: &Var, route: DepthRoute) -> Result<MixtureOfDepthsOutput> {
        let n = route.chosen().len();
        let inside = self.block.forward(&route.gather(x)?)?;
        self.depth.finish(x, route, &inside, self.block.forward_flops(n))
    }
}

mod depth_router;

use depth_router::bce_with_logits;
pub use depth_router::{DepthRoute, DepthRouter};

#[cfg(test)]
mod tests;
