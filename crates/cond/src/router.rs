//! Routers: a linear map of each token to one logit per destination, a **score function**
//! ([`ScoreFn`]: softmax over destinations, per-destination sigmoid, or the raw logit) and a
//! **selection rule** ([`Selection`]: top-k per token, top-C per destination, or a threshold)
//! that turns the scores into a [`Routing`].
//!
//! The matmul and the score function are `Var` ops in f32, and every gate is *selected out of*
//! the scores (top-k values, or a gather), never recomputed from indices, so the gradient of
//! anything computed from the gates flows back through the score function to the logits and the
//! router weight: the softmax-gate estimator of Shazeer et al. (arXiv 1701.06538) and Switch
//! (arXiv 2101.03961). The selection itself is piecewise constant and takes no gradient. A
//! one-destination router (a mixture-of-depths block, a skip gate, an exit decision) uses a
//! sigmoid or raw score, whose gate has a real gradient — a softmax over one destination is the
//! constant 1.

use crate::error::{Error, Result};
use crate::plan::Rounding;
use crate::routing::Routing;
use crate::weights::ParamSource;
use elide_autodiff::{Param, Scope, Var};
use elide_tensor::{Rng, Tensor};
use selection::{above_threshold, expert_choice, token_choice};

mod selection;

/// How a router turns its `[T, E]` logits into scores: the values the selection ranks and the
/// gates are taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreFn {
    /// Softmax over the destinations of each token (probabilities summing to 1 per token).
    Softmax,
    /// `sigmoid(logit)` per (token, destination): independent probabilities in `(0, 1)`.
    Sigmoid,
    /// The logit itself (mixture-of-depths scales the block output by the raw router weight,
    /// arXiv 2404.02258).
    Raw,
}

impl ScoreFn {
    /// The scores of `logits`, differentiable.
    ///
    /// # Errors
    /// Only for a tensor error (never for `[T, E]` logits).
    pub fn apply(self, logits: &Var) -> Result<Var> {
        Ok(match self {
            ScoreFn::Softmax => logits.softmax()?,
            ScoreFn::Sigmoid => logits.sigmoid(),
            ScoreFn::Raw => logits.clone(),
        })
    }
}

/// Which (token, destination) pairs a router keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// Token choice: each token keeps its `k` highest-scoring destinations (ties to the lower
    /// index); `renormalize` divides a token's `k` gates by their sum. Token-major order.
    TopK {
        /// Destinations per token, in `1..=E`.
        k: usize,
        /// Whether a token's `k` gates are divided by their sum.
        renormalize: bool,
    },
    /// Destination choice: each destination keeps its `C` highest-scoring tokens, `C =`
    /// [`expert_choice_capacity`]`(T, E, capacity_factor, rounding)` (expert choice, arXiv
    /// 2202.09368; with one destination and ceil, the top `⌈capacity_factor·T⌉` tokens, as
    /// mixture-of-depths). Destination-major order.
    TopC {
        /// Average number of destinations per token; finite and `> 0`.
        capacity_factor: f32,
        /// How `T·capacity_factor/E` becomes a whole number of tokens.
        rounding: Rounding,
    },
    /// Every (token, destination) whose score is at least `threshold` (SkipNet-style gating,
    /// arXiv 1711.09485). Token-major order. A token may get no destination.
    Threshold {
        /// In `[0, 1]` for softmax and sigmoid scores; any finite value for raw ones.
        threshold: f32,
    },
}

/// How a router turns its probabilities into assignments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RouterKind {
    /// Token choice: each token takes its `k` most probable experts (softmax → top-k).
    ///
    /// `renormalize`: the `k` gates are divided by their sum, so they add up to 1 per token
    /// (Mixtral, arXiv 2401.04088; equal to a softmax over the `k` kept logits, as in
    /// arXiv 1701.06538). Otherwise the gates are the probabilities as they are (Switch,
    /// GShard arXiv 2006.16668).
    ///
    /// `noisy`: noisy top-k gating (arXiv 1701.06538). When [`Router::route`] is given a noise
    /// generator (training), Gaussian noise `ε ~ N(0, 1)` times a scale is added to the logits
    /// before the softmax and the selection; without one (inference), no noise. The scale is
    /// the router's [`NoiseScale`]: fixed at [`noise_std`]`(E) = 1/E` (the default: no second
    /// weight; at the router's initial scale it breaks near-ties and spreads the load early in
    /// training, its relative effect fading as the logits grow), or learned per token and
    /// expert as in the paper, `H(x) = x·W_g + ε ⊙ softplus(x·W_noise)`.
    TopK {
        /// Experts per token, in `1..=E`.
        k: usize,
        /// Whether the `k` gates of a token are renormalised to sum to 1.
        renormalize: bool,
        /// Whether training adds Gaussian noise to the logits before the selection.
        noisy: bool,
    },
    /// Switch routing (arXiv 2101.03961): top-1, the gate is the chosen expert's probability
    /// (not renormalised, or it would be 1 and carry no gradient).
    Switch,
    /// Expert choice (arXiv 2202.09368): each expert takes its `C` most probable tokens, with
    /// `C = rounding(T·capacity_factor/E)` clamped to `[1, T]` ([`expert_choice_capacity`]). A
    /// token may be taken by several experts or by none (it then rides the residual). The gate
    /// of a pair is `probs[t, e]`, the probability over experts as in the paper.
    ExpertChoice {
        /// Average number of experts per token; finite and `> 0`.
        capacity_factor: f32,
        /// How `T·capacity_factor/E` becomes a whole number of tokens ([`Rounding::Ceil`]:
        /// `⌈·⌉`, or [`Rounding::Floor`]).
        rounding: Rounding,
    },
    /// Any score function with any selection rule. The kinds above are the common pairings
    /// with a softmax score: `TopK` is `(Softmax, TopK)`, `Switch` is `(Softmax, TopK { k: 1,
    /// renormalize: false })`, `ExpertChoice` is `(Softmax, TopC)`.
    Scored {
        /// How logits become scores.
        score: ScoreFn,
        /// Which pairs are kept.
        selection: Selection,
    },
}

/// The standard deviation of the routing noise of a noisy top-k router over `num_experts`
/// experts: `1/E`.
pub fn noise_std(num_experts: usize) -> f32 {
    1.0 / num_experts.max(1) as f32
}

/// The number of tokens each expert takes under expert choice: `rounding(T·capacity_factor/E)`
/// (`⌈·⌉` or `⌊·⌋`), clamped to `[1, T]` (so an expert always takes at least one token and
/// never more than exist). For `T = 0` it is 0.
pub fn expert_choice_capacity(
    num_tokens: usize,
    num_experts: usize,
    capacity_factor: f32,
    rounding: Rounding,
) -> usize {
    if num_tokens == 0 {
        return 0;
    }
    let c = rounding.apply(num_tokens as f64 * capacity_factor as f64 / num_experts.max(1) as f64);
    // `as` saturates (a huge factor) and maps NaN to 0; the clamp does the rest.
    (c as usize).clamp(1, num_tokens)
}

impl RouterKind {
    /// The score function and selection rule this kind stands for.
    pub fn parts(&self) -> (ScoreFn, Selection) {
        match *self {
            RouterKind::TopK { k, renormalize, .. } => (ScoreFn::Softmax, Selection::TopK { k, renormalize }),
            RouterKind::Switch => (ScoreFn::Softmax, Selection::TopK { k: 1, renormalize: false }),
            RouterKind::ExpertChoice { capacity_factor, rounding } => {
                (ScoreFn::Softmax, Selection::TopC { capacity_factor, rounding })
            }
            RouterKind::Scored { score, selection } => (score, selection),
        }
    }

    /// Checks the kind's settings against the number of experts.
    ///
    /// # Errors
    /// [`Error::TopK`] for `k = 0` or `k > E`; [`Error::CapacityFactor`] for a top-C factor that
    /// is not finite or not positive; [`Error::Argument`] for a threshold that is not finite, or
    /// outside `[0, 1]` for softmax or sigmoid scores.
    pub fn validate(&self, num_experts: usize) -> Result<()> {
        let (score, selection) = self.parts();
        match selection {
            Selection::TopK { k, .. } if k == 0 || k > num_experts => Err(Error::TopK { k, num_experts }),
            Selection::TopC { capacity_factor, .. } if !(capacity_factor.is_finite() && capacity_factor > 0.0) => {
                Err(Error::CapacityFactor { op: "ExpertChoice", factor: capacity_factor })
            }
            Selection::Threshold { threshold }
                if !threshold.is_finite() || (score != ScoreFn::Raw && !(0.0..=1.0).contains(&threshold)) =>
            {
                Err(Error::argument(
                    "router",
                    format!("threshold {threshold} must be finite, and in [0, 1] for {score:?} scores"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Routes tokens given their `[T, E]` router logits: this kind's score function, then its
    /// selection. The gates are differentiable with respect to `logits`. For `T = 0` the result
    /// is an empty routing (no assignments).
    ///
    /// # Errors
    /// [`Error::Shape`] if `logits` is not `[T, E]` with `E ≥ 1`; the errors of
    /// [`RouterKind::validate`]; [`Error::NonFiniteLogit`] naming the first row holding a NaN
    /// or an infinity.
    pub fn route_logits(&self, logits: &Var) -> Result<Routing> {
        let shape = logits.shape();
        if shape.len() != 2 || shape[1] == 0 {
            return Err(Error::shape("router", format!("logits must be [tokens, experts >= 1], got {shape:?}")));
        }
        self.select(logits)
    }

    /// [`RouterKind::route_logits`] for `[T, E]` logits, checking that they are finite.
    fn select(&self, logits: &Var) -> Result<Routing> {
        let (t, e) = (logits.shape()[0], logits.shape()[1]);
        self.validate(e)?;
        if t == 0 {
            return Ok(Routing { logits: logits.clone(), ..Routing::empty(e) });
        }
        let (score, selection) = self.parts();
        if let (ScoreFn::Softmax, Selection::TopK { k, renormalize }) = (score, selection) {
            // One pass computes the softmax, takes its top k and checks the logits.
            let (probs, top, positions) = match logits.softmax_topk(k) {
                Ok(selected) => selected,
                Err(err) => {
                    check_finite(logits.value(), e)?; // names the row, expert and value
                    return Err(err.into());
                }
            };
            return token_choice(logits, probs, (top, positions.into_vec()), k, renormalize);
        }
        check_finite(logits.value(), e)?;
        let scores = score.apply(logits)?;
        match selection {
            Selection::TopK { k, renormalize } => {
                let (top, positions) = scores.value().topk(k)?;
                token_choice(logits, scores, (top, positions.into_vec()), k, renormalize)
            }
            Selection::TopC { capacity_factor, rounding } => {
                expert_choice(logits, scores, expert_choice_capacity(t, e, capacity_factor, rounding))
            }
            Selection::Threshold { threshold } => above_threshold(logits, scores, threshold),
        }
    }
}

/// The first non-finite logit, as an error naming its row.
fn check_finite(logits: &Tensor, num_experts: usize) -> Result<()> {
    let logits = logits.contiguous();
    let values = logits.as_slice().expect("contiguous");
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFiniteLogit { row: i / num_experts, expert: i % num_experts, value: values[i] }),
    }
}

/// The scale of a noisy top-k router's training noise (see [`RouterKind::TopK`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NoiseScale {
    /// `ε · `[`noise_std`]`(E)`: a fixed standard deviation of `1/E`, no extra weight.
    #[default]
    Fixed,
    /// `ε ⊙ softplus(x·W_noise)` (arXiv 1701.06538, eq. 4): a learned `[d_model, E]` weight,
    /// registered as `<scope>.router_noise` and zero-initialised as in the paper (a noise
    /// standard deviation of `ln 2` at the start). It learns through the gates: the noise
    /// moves the logits the softmax gates are computed from.
    Learned,
}

/// What a [`Router`] has besides its `[d_model, E]` weight. The default is neither a bias nor
/// a learned noise weight (Switch, Mixtral).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouterOptions {
    /// A learned `[E]` bias added to the logits, `<scope>.router_bias`, zero-initialised.
    pub bias: bool,
    /// The noise scale of a noisy top-k router; [`NoiseScale::Learned`] needs a kind with
    /// `noisy: true`.
    pub noise: NoiseScale,
}

impl RouterOptions {
    /// Checks that the options fit `kind`.
    ///
    /// # Errors
    /// [`Error::Argument`] for learned noise on a router that adds no noise (its weight would
    /// never be used).
    pub fn validate(&self, kind: RouterKind) -> Result<()> {
        if self.noise == NoiseScale::Learned && !matches!(kind, RouterKind::TopK { noisy: true, .. }) {
            return Err(Error::argument(
                "router",
                format!(
                    "learned noise needs a noisy top-k router (RouterKind::TopK {{ noisy: true, .. }}), got {kind:?}"
                ),
            ));
        }
        Ok(())
    }

    /// The router's parameters for `d_model` and `num_experts`: names relative to the layer's
    /// scope, and shapes, in registration order.
    pub fn parameters(&self, d_model: usize, num_experts: usize) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("router".to_string(), vec![d_model, num_experts])];
        if self.bias {
            out.push(("router_bias".to_string(), vec![num_experts]));
        }
        if self.noise == NoiseScale::Learned {
            out.push(("router_noise".to_string(), vec![d_model, num_experts]));
        }
        out
    }
}

/// A learned router: `logits = x · W (+ b)` with `W` of shape `[d_model, E]`, then a
/// [`RouterKind`]'s selection.
///
/// Parameters, under the scope it is built in: `router` `[d_model, E]`; with
/// [`RouterOptions::bias`], `router_bias` `[E]`; with [`NoiseScale::Learned`], `router_noise`
/// `[d_model, E]`.
#[derive(Clone, Debug)]
pub struct Router {
    weight: Param,
    bias: Option<Param>,
    noise_weight: Option<Param>,
    kind: RouterKind,
}

impl Router {
    /// A router over `num_experts` experts for inputs of width `d_model`, its weight drawn from
    /// `N(0, 0.02²)` (the GPT-2/Switch scale: near-uniform probabilities at the start) and
    /// registered as `"<scope>.router"`; no bias, fixed-scale noise.
    ///
    /// # Errors
    /// [`Error::Argument`] for `d_model = 0` or `num_experts = 0`; the errors of
    /// [`RouterKind::validate`]; a registration error if the name is taken.
    pub fn new(
        scope: &mut Scope,
        d_model: usize,
        num_experts: usize,
        kind: RouterKind,
        rng: &mut Rng,
    ) -> Result<Router> {
        Router::with_options(scope, d_model, num_experts, kind, RouterOptions::default(), rng)
    }

    /// As [`Router::new`], with a bias and/or a learned noise weight as `options` ask (both
    /// zero-initialised, registered as `<scope>.router_bias` and `<scope>.router_noise`).
    ///
    /// # Errors
    /// As [`Router::new`], and those of [`RouterOptions::validate`].
    pub fn with_options(
        scope: &mut Scope,
        d_model: usize,
        num_experts: usize,
        kind: RouterKind,
        options: RouterOptions,
        rng: &mut Rng,
    ) -> Result<Router> {
        Router::check(d_model, num_experts, kind, options)?;
        Router::build(scope, d_model, num_experts, kind, options, &mut ParamSource::Random(rng), "")
    }

    /// Checks sizes, kind and options before anything is registered.
    pub(crate) fn check(d_model: usize, num_experts: usize, kind: RouterKind, options: RouterOptions) -> Result<()> {
        if d_model == 0 || num_experts == 0 {
            return Err(Error::argument(
                "Router::new",
                format!(
                    "needs d_model >= 1 and num_experts >= 1, got d_model = {d_model}, num_experts = {num_experts}"
                ),
            ));
        }
        kind.validate(num_experts)?;
        options.validate(kind)
    }

    /// Registers the parameters [`RouterOptions::parameters`] lists, from `source` (keys
    /// `prefix + name`).
    pub(crate) fn build(
        scope: &mut Scope,
        d_model: usize,
        num_experts: usize,
        kind: RouterKind,
        options: RouterOptions,
        source: &mut ParamSource<'_>,
        prefix: &str,
    ) -> Result<Router> {
        let (d, e) = (d_model, num_experts);
        let weight = source
            .param(scope, prefix, "router", &[d, e], |rng| Ok(Tensor::try_randn(&[d, e], rng)?.mul_scalar(0.02)))?;
        let bias = match options.bias {
            true => Some(source.param(scope, prefix, "router_bias", &[e], |_| Ok(Tensor::try_zeros(&[e])?))?),
            false => None,
        };
        let noise_weight = match options.noise {
            NoiseScale::Learned => {
                Some(source.param(scope, prefix, "router_noise", &[d, e], |_| Ok(Tensor::try_zeros(&[d, e])?))?)
            }
            NoiseScale::Fixed => None,
        };
        Ok(Router { weight, bias, noise_weight, kind })
    }

    /// A router around an existing `[d_model, E]` weight (a loaded checkpoint, a test), with
    /// no bias and fixed-scale noise.
    ///
    /// # Errors
    /// [`Error::Shape`] unless the weight is 2-D with both dims `≥ 1`; the errors of
    /// [`RouterKind::validate`].
    pub fn from_weight(weight: Param, kind: RouterKind) -> Result<Router> {
        let shape = weight.shape();
        if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 {
            return Err(Error::shape(
                "Router::from_weight",
                format!("weight must be [d_model, experts], got {shape:?}"),
            ));
        }
        kind.validate(shape[1])?;
        Ok(Router { weight, bias: None, noise_weight: None, kind })
    }

    /// The `[d_model, E]` weight.
    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// The `[E]` bias, if the router has one.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }

    /// The `[d_model, E]` learned noise weight `W_noise`, if the noise scale is learned.
    pub fn noise_weight(&self) -> Option<&Param> {
        self.noise_weight.as_ref()
    }

    /// The parameters: the weight, then the bias and the noise weight if present.
    pub fn params(&self) -> Vec<&Param> {
        std::iter::once(&self.weight).chain(&self.bias).chain(&self.noise_weight).collect()
    }

    /// The selection rule.
    pub fn kind(&self) -> RouterKind {
        self.kind
    }

    /// The input width.
    pub fn d_model(&self) -> usize {
        self.weight.shape()[0]
    }

    /// The number of experts.
    pub fn num_experts(&self) -> usize {
        self.weight.shape()[1]
    }

    /// The `[T, E]` router logits `x · W (+ b)` of `x` `[T, d_model]`, without noise.
    ///
    /// # Errors
    /// [`Error::Shape`] naming both shapes if `x` is not `[T, d_model]`.
    pub fn logits(&self, x: &Var) -> Result<Var> {
        let d = self.d_model();
        if x.shape().len() != 2 || x.shape()[1] != d {
            return Err(Error::shape("router", format!("input must be [tokens, d_model = {d}], got {:?}", x.shape())));
        }
        let logits = x.matmul(&self.weight.var())?;
        Ok(match &self.bias {
            Some(b) => logits.add(&b.var())?,
            None => logits,
        })
    }

    /// Routes the tokens `x` `[T, d_model]`. `noise_rng` is the training-time noise source of
    /// a noisy top-k router (ignored by the other kinds); `None` routes without noise. The
    /// noise is `ε ⊙ scale` with `ε` a `[T, E]` draw of `N(0, 1)` from `noise_rng` (row-major)
    /// and the scale `1/E` or `softplus(x·W_noise)` ([`NoiseScale`]).
    ///
    /// An empty batch (`T = 0`) gives an empty [`Routing`] (no assignments, `[0, E]` logits).
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[T, d_model]`; [`Error::NonFiniteLogit`] naming the row
    /// if a logit is NaN or infinite.
    pub fn route(&self, x: &Var, noise_rng: Option<&mut Rng>) -> Result<Routing> {
        let logits = self.logits(x)?;
        let (t, e) = (logits.shape()[0], logits.shape()[1]);
        match (self.kind, noise_rng) {
            (RouterKind::TopK { noisy: true, .. }, Some(rng)) if t > 0 => {
                let eps = Var::constant(Tensor::try_randn(&[t, e], rng)?);
                let noise = match &self.noise_weight {
                    Some(w) => eps.mul(&softplus(&x.matmul(&w.var())?)?)?,
                    None => eps.mul_scalar(noise_std(e)),
                };
                // A logit that is not finite stays so with noise added: when the selection
                // refuses the noised logits, the error names what the router computed, if that
                // was already bad, else the noised value.
                self.kind.select(&logits.add(&noise)?).or_else(|err| {
                    check_finite(logits.value(), e)?;
                    Err(err)
                })
            }
            _ => self.kind.select(&logits),
        }
    }
}

/// `softplus(z) = ln(1 + e^z)`, computed as `max(z, 0) + ln(1 + e^{−|z|})` so a large `|z|`
/// neither overflows nor loses the small term.
fn softplus(z: &Var) -> Result<Var> {
    let neg_abs = z.minimum(&z.neg())?;
    Ok(z.relu().add(&neg_abs.exp().add_scalar(1.0).log())?)
}

#[cfg(test)]
mod tests;
