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
use crate::routing::Routing;
use elide_autodiff::{Param, Scope, Var};
use elide_tensor::{Rng, Tensor};

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
    /// [`expert_choice_capacity`]`(T, E, capacity_factor)` (expert choice, arXiv 2202.09368;
    /// with one destination, the top `ceil(capacity_factor·T)` tokens, as mixture-of-depths).
    /// Destination-major order.
    TopC {
        /// Average number of destinations per token; finite and `> 0`.
        capacity_factor: f32,
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
    /// generator (training), Gaussian noise of a fixed standard deviation [`noise_std`]`(E) =
    /// 1/E` is added to the logits before the softmax and the selection; without one
    /// (inference), no noise. The paper learns a per-token noise scale
    /// (`softplus(x·W_noise)`); a fixed scale needs no second weight and, at the router's
    /// initial scale (logits of order 0.1–1), still breaks near-ties and spreads the load early
    /// in training, its relative effect fading as the logits grow.
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
    /// `C = ceil(T·capacity_factor/E)` clamped to `[1, T]` ([`expert_choice_capacity`]). A token
    /// may be taken by several experts or by none (it then rides the residual). The gate of a
    /// pair is `probs[t, e]`, the probability over experts as in the paper.
    ExpertChoice {
        /// Average number of experts per token; finite and `> 0`.
        capacity_factor: f32,
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

/// The number of tokens each expert takes under expert choice: `ceil(T·capacity_factor/E)`,
/// clamped to `[1, T]` (so an expert always takes at least one token and never more than
/// exist). For `T = 0` it is 0.
pub fn expert_choice_capacity(num_tokens: usize, num_experts: usize, capacity_factor: f32) -> usize {
    if num_tokens == 0 {
        return 0;
    }
    let c = (num_tokens as f64 * capacity_factor as f64 / num_experts.max(1) as f64).ceil();
    // `as` saturates (a huge factor) and maps NaN to 0; the clamp does the rest.
    (c as usize).clamp(1, num_tokens)
}

impl RouterKind {
    /// The score function and selection rule this kind stands for.
    pub fn parts(&self) -> (ScoreFn, Selection) {
        match *self {
            RouterKind::TopK { k, renormalize, .. } => (ScoreFn::Softmax, Selection::TopK { k, renormalize }),
            RouterKind::Switch => (ScoreFn::Softmax, Selection::TopK { k: 1, renormalize: false }),
            RouterKind::ExpertChoice { capacity_factor } => (ScoreFn::Softmax, Selection::TopC { capacity_factor }),
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
            Selection::TopC { capacity_factor } if !(capacity_factor.is_finite() && capacity_factor > 0.0) => {
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
        let (t, e) = (shape[0], shape[1]);
        self.validate(e)?;
        check_finite(logits.value(), e)?;
        if t == 0 {
            return Ok(Routing { logits: logits.clone(), ..Routing::empty(e) });
        }
        let (score, selection) = self.parts();
        let scores = score.apply(logits)?;
        match selection {
            Selection::TopK { k, renormalize } => token_choice(logits, scores, k, renormalize),
            Selection::TopC { capacity_factor } => {
                expert_choice(logits, scores, expert_choice_capacity(t, e, capacity_factor))
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

/// Token choice: the top `k` of each row of the scores `probs` `[T, E]`, token-major.
fn token_choice(logits: &Var, probs: Var, k: usize, renormalize: bool) -> Result<Routing> {
    let (t, e) = (probs.shape()[0], probs.shape()[1]);
    let (gates, experts) = select_top_k(&probs, k, renormalize)?;
    Ok(Routing {
        num_tokens: t,
        num_experts: e,
        tokens: (0..t as u32).flat_map(|token| std::iter::repeat_n(token, k)).collect(),
        experts,
        gates,
        logits: logits.clone(),
        probs,
    })
}

/// The `k` best scores of each row of `scores` `[T, E]` as `[T·k]` gates (best first, ties to
/// the lower index), divided by their row sum when `renormalize`, and their columns: one pass
/// per row instead of a top-k, a sum and a division, each with its own buffers.
///
/// Backward, per row with `S = Σ_selected p`: without renormalisation `dp_j = dg_j`; with it
/// `g_j = p_j/S`, so `dp_j = (dg_j − Σ_i dg_i·g_i)/S`; unselected scores get 0.
fn select_top_k(scores: &Var, k: usize, renormalize: bool) -> Result<(Var, Vec<u32>)> {
    let (t, e) = (scores.shape()[0], scores.shape()[1]);
    let (top, positions) = scores.value().topk(k)?;
    let mut gates = top.to_vec();
    let sums: Vec<f32> = if renormalize {
        gates
            .chunks_mut(k)
            .map(|row| {
                let sum: f32 = row.iter().sum();
                row.iter_mut().for_each(|g| *g /= sum);
                sum
            })
            .collect()
    } else {
        Vec::new()
    };
    let columns = positions.into_vec();
    let value = Tensor::from_vec(gates.clone(), &[t * k])?;
    let cols = columns.clone();
    let var = Var::from_op("select_top_k", value, &[scores], move |dg| {
        let dg = dg.to_vec();
        let mut dp = elide_tensor::pool::take_zeroed(t * e);
        for (row, out) in dp.chunks_mut(e.max(1)).enumerate() {
            let span = row * k..(row + 1) * k;
            let (g, d, c) = (&gates[span.clone()], &dg[span.clone()], &cols[span]);
            if renormalize {
                let dot: f32 = g.iter().zip(d).map(|(g, d)| g * d).sum();
                for j in 0..k {
                    out[c[j] as usize] = (d[j] - dot) / sums[row];
                }
            } else {
                for j in 0..k {
                    out[c[j] as usize] = d[j];
                }
            }
        }
        Ok(vec![Some(Tensor::from_vec(dp, &[t, e])?)])
    });
    Ok((var, columns))
}

/// Expert choice: the top `c` of each column of the scores `probs` `[T, E]`, expert-major.
fn expert_choice(logits: &Var, probs: Var, c: usize) -> Result<Routing> {
    let (t, e) = (probs.shape()[0], probs.shape()[1]);
    // Top-k over tokens is top-k along the last dim of the transposed view.
    let (top, positions) = probs.transpose(0, 1)?.topk(c)?; // [E, C], best first
    Ok(Routing {
        num_tokens: t,
        num_experts: e,
        tokens: positions.into_vec(),
        experts: (0..e as u32).flat_map(|expert| std::iter::repeat_n(expert, c)).collect(),
        gates: top.reshape(&[e * c])?,
        logits: logits.clone(),
        probs,
    })
}

/// Threshold selection: every (token, expert) whose score is at least `threshold`, token-major.
fn above_threshold(logits: &Var, scores: Var, threshold: f32) -> Result<Routing> {
    let (t, e) = (scores.shape()[0], scores.shape()[1]);
    let values = scores.value().to_vec();
    let positions: Vec<u32> = (0..(t * e) as u32).filter(|&i| values[i as usize] >= threshold).collect();
    Ok(Routing {
        num_tokens: t,
        num_experts: e,
        tokens: positions.iter().map(|&i| i / e as u32).collect(),
        experts: positions.iter().map(|&i| i % e as u32).collect(),
        gates: scores.reshape(&[t * e])?.index_select(0, &positions)?,
        logits: logits.clone(),
        probs: scores,
    })
}

/// A learned router: `logits = x · W` with `W` of shape `[d_model, E]`, then a [`RouterKind`]'s
/// selection.
#[derive(Clone, Debug)]
pub struct Router {
    weight: Param,
    kind: RouterKind,
}

impl Router {
    /// A router over `num_experts` experts for inputs of width `d_model`, its weight drawn from
    /// `N(0, 0.02²)` (the GPT-2/Switch scale: near-uniform probabilities at the start) and
    /// registered as `"<scope>.router"`.
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
        if d_model == 0 || num_experts == 0 {
            return Err(Error::argument(
                "Router::new",
                format!(
                    "needs d_model >= 1 and num_experts >= 1, got d_model = {d_model}, num_experts = {num_experts}"
                ),
            ));
        }
        kind.validate(num_experts)?;
        let weight = scope.param("router", Tensor::try_randn(&[d_model, num_experts], rng)?.mul_scalar(0.02))?;
        Ok(Router { weight, kind })
    }

    /// A router around an existing `[d_model, E]` weight (a loaded checkpoint, a test).
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
        Ok(Router { weight, kind })
    }

    /// The `[d_model, E]` weight.
    pub fn weight(&self) -> &Param {
        &self.weight
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

    /// The `[T, E]` router logits `x · W` of `x` `[T, d_model]`.
    ///
    /// # Errors
    /// [`Error::Shape`] naming both shapes if `x` is not `[T, d_model]`.
    pub fn logits(&self, x: &Var) -> Result<Var> {
        let d = self.d_model();
        if x.shape().len() != 2 || x.shape()[1] != d {
            return Err(Error::shape("router", format!("input must be [tokens, d_model = {d}], got {:?}", x.shape())));
        }
        Ok(x.matmul(&self.weight.var())?)
    }

    /// Routes the tokens `x` `[T, d_model]`. `noise_rng` is the training-time noise source of
    /// a noisy top-k router (ignored by the other kinds); `None` routes without noise.
    ///
    /// An empty batch (`T = 0`) gives an empty [`Routing`] (no assignments, `[0, E]` logits).
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[T, d_model]`; [`Error::NonFiniteLogit`] naming the row
    /// if a logit is NaN or infinite.
    pub fn route(&self, x: &Var, noise_rng: Option<&mut Rng>) -> Result<Routing> {
        let logits = self.logits(x)?;
        let (t, e) = (logits.shape()[0], logits.shape()[1]);
        // Checked before the noise, so the error names what the router computed.
        check_finite(logits.value(), e)?;
        let logits = match (self.kind, noise_rng) {
            (RouterKind::TopK { noisy: true, .. }, Some(rng)) if t > 0 => {
                let noise = Tensor::randn(&[t, e], rng).mul_scalar(noise_std(e));
                logits.add(&Var::constant(noise))?
            }
            _ => logits,
        };
        self.kind.route_logits(&logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_clear_choices, assert_clear_choices_many, assert_close, check_grad, check_grad_many, separated_logits,
    };
    use elide_autodiff::ParamStore;

    const TOP2: RouterKind = RouterKind::TopK { k: 2, renormalize: true, noisy: false };

    /// Reference token choice: sort each row of `probs` (descending, ties to the lower expert).
    fn naive_token_choice(probs: &[f32], e: usize, k: usize, renormalize: bool) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        let (mut tokens, mut experts, mut gates) = (Vec::new(), Vec::new(), Vec::new());
        for (t, row) in probs.chunks(e).enumerate() {
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let sum: f32 = order[..k].iter().map(|&i| row[i]).sum();
            for &i in &order[..k] {
                tokens.push(t as u32);
                experts.push(i as u32);
                gates.push(if renormalize { row[i] / sum } else { row[i] });
            }
        }
        (tokens, experts, gates)
    }

    /// Reference expert choice: sort each column of `probs` (descending, ties to the lower token).
    fn naive_expert_choice(probs: &[f32], t: usize, e: usize, c: usize) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        let (mut tokens, mut experts, mut gates) = (Vec::new(), Vec::new(), Vec::new());
        for x in 0..e {
            let col: Vec<f32> = (0..t).map(|i| probs[i * e + x]).collect();
            let mut order: Vec<usize> = (0..t).collect();
            order.sort_by(|&a, &b| col[b].total_cmp(&col[a]).then(a.cmp(&b)));
            for &i in &order[..c] {
                tokens.push(i as u32);
                experts.push(x as u32);
                gates.push(col[i]);
            }
        }
        (tokens, experts, gates)
    }

    fn router(d: usize, e: usize, kind: RouterKind, seed: u64) -> Router {
        let mut store = ParamStore::new();
        Router::new(&mut store.scope("moe"), d, e, kind, &mut Rng::seed(seed)).unwrap()
    }

    fn input(t: usize, d: usize, seed: u64) -> Var {
        Var::constant(Tensor::randn(&[t, d], &mut Rng::seed(seed)))
    }

    #[test]
    fn every_router_matches_the_naive_reference() {
        for (t, e) in [(1, 1), (7, 3), (100, 8), (33, 64)] {
            let x = input(t, 16, t as u64);
            let mut kinds = vec![RouterKind::Switch];
            for k in [1, 2, 8].into_iter().filter(|&k| k <= e) {
                for renormalize in [false, true] {
                    kinds.push(RouterKind::TopK { k, renormalize, noisy: false });
                }
            }
            for capacity_factor in [0.01, 1.0, 2.0, 1e9] {
                kinds.push(RouterKind::ExpertChoice { capacity_factor });
            }
            for kind in kinds {
                let r = router(16, e, kind, e as u64).route(&x, None).unwrap();
                let probs = r.probs.value().to_vec();
                let (tokens, experts, gates) = match kind {
                    RouterKind::TopK { k, renormalize, .. } => naive_token_choice(&probs, e, k, renormalize),
                    RouterKind::Switch => naive_token_choice(&probs, e, 1, false),
                    RouterKind::ExpertChoice { capacity_factor } => {
                        naive_expert_choice(&probs, t, e, expert_choice_capacity(t, e, capacity_factor))
                    }
                    RouterKind::Scored { .. } => unreachable!("only the softmax kinds are listed"),
                };
                assert_eq!((&r.tokens, &r.experts), (&tokens, &experts), "{kind:?}, T = {t}, E = {e}");
                assert_close(&r.gate_values(), &gates, 1e-6, "gates");
                assert_eq!((r.num_tokens, r.num_experts, r.logits.shape()), (t, e, &[t, e][..]));
            }
        }
    }

    /// Reference scores, and the pairs `selection` keeps, one token and one destination at a time.
    fn naive_scored(logits: &[f32], t: usize, e: usize, kind: RouterKind) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        let (score, selection) = kind.parts();
        let scores: Vec<f32> = match score {
            ScoreFn::Softmax => logits
                .chunks(e)
                .flat_map(|row| {
                    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                    let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                    row.iter().map(move |&v| ((v as f64 - m).exp() / z) as f32).collect::<Vec<_>>()
                })
                .collect(),
            ScoreFn::Sigmoid => logits.iter().map(|&v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32).collect(),
            ScoreFn::Raw => logits.to_vec(),
        };
        match selection {
            Selection::TopK { k, renormalize } => naive_token_choice(&scores, e, k, renormalize),
            Selection::TopC { capacity_factor } => {
                naive_expert_choice(&scores, t, e, expert_choice_capacity(t, e, capacity_factor))
            }
            Selection::Threshold { threshold } => {
                let (mut tokens, mut experts, mut gates) = (Vec::new(), Vec::new(), Vec::new());
                for (i, &score) in scores.iter().enumerate().filter(|(_, &v)| v >= threshold) {
                    tokens.push((i / e) as u32);
                    experts.push((i % e) as u32);
                    gates.push(score);
                }
                (tokens, experts, gates)
            }
        }
    }

    fn scored_kinds(e: usize) -> Vec<RouterKind> {
        let mut kinds = Vec::new();
        for score in [ScoreFn::Softmax, ScoreFn::Sigmoid, ScoreFn::Raw] {
            let threshold = if score == ScoreFn::Raw { 0.1 } else { 0.3 };
            let selections = [
                Selection::TopK { k: e.min(2), renormalize: false },
                Selection::TopK { k: 1, renormalize: true },
                Selection::TopC { capacity_factor: 0.125 },
                Selection::TopC { capacity_factor: 1.5 },
                Selection::Threshold { threshold },
            ];
            kinds.extend(selections.into_iter().map(|selection| RouterKind::Scored { score, selection }));
        }
        kinds
    }

    #[test]
    fn every_score_and_selection_matches_the_naive_reference() {
        for (t, e) in [(1, 1), (7, 1), (33, 3), (100, 8)] {
            let logits = Tensor::randn(&[t, e], &mut Rng::seed(t as u64 + 3));
            for kind in scored_kinds(e) {
                let r = kind.route_logits(&Var::constant(logits.clone())).unwrap();
                let (tokens, experts, gates) = naive_scored(&logits.to_vec(), t, e, kind);
                assert_eq!((&r.tokens, &r.experts), (&tokens, &experts), "{kind:?}, T = {t}, E = {e}");
                assert_close(&r.gate_values(), &gates, 1e-6, "gates");
            }
        }
    }

    #[test]
    fn a_one_destination_gate_has_a_real_gradient() {
        // Softmax over one destination is the constant 1; sigmoid and raw scores are not.
        let logits = separated_logits(8, 1, 4);
        for score in [ScoreFn::Sigmoid, ScoreFn::Raw] {
            for selection in [Selection::TopC { capacity_factor: 0.25 }, Selection::TopK { k: 1, renormalize: false }] {
                let kind = RouterKind::Scored { score, selection };
                check_grad(|l| Ok(kind.route_logits(l)?.gates), &logits);
                let leaf = Var::leaf(logits.clone());
                let grads = kind.route_logits(&leaf).unwrap().gates.sum_all().backward().unwrap();
                assert!(grads.of(&leaf).unwrap().to_vec().iter().any(|&g| g != 0.0), "{kind:?}");
            }
        }
        let softmax =
            RouterKind::Scored { score: ScoreFn::Softmax, selection: Selection::TopK { k: 1, renormalize: false } };
        assert!(softmax.route_logits(&Var::constant(logits)).unwrap().gate_values().iter().all(|&g| g == 1.0));
    }

    #[test]
    fn thresholds_are_checked_against_the_score_range() {
        let kind = |score, threshold| RouterKind::Scored { score, selection: Selection::Threshold { threshold } };
        assert_eq!(
            kind(ScoreFn::Sigmoid, 1.5).validate(4).unwrap_err().to_string(),
            "router: threshold 1.5 must be finite, and in [0, 1] for Sigmoid scores"
        );
        assert!(kind(ScoreFn::Softmax, -0.1).validate(4).is_err());
        assert!(kind(ScoreFn::Raw, f32::NAN).validate(4).is_err());
        assert!(kind(ScoreFn::Raw, -3.0).validate(4).is_ok());
        let top_c = RouterKind::Scored { score: ScoreFn::Raw, selection: Selection::TopC { capacity_factor: 0.0 } };
        assert_eq!(
            top_c.validate(1).unwrap_err().to_string(),
            "ExpertChoice: capacity factor 0 must be finite and > 0"
        );
    }

    #[test]
    fn expert_choice_capacity_rounds_up_and_clamps() {
        assert_eq!(expert_choice_capacity(7, 3, 1.0), 3); // ceil(7/3)
        assert_eq!(expert_choice_capacity(100, 8, 2.0), 25);
        assert_eq!(expert_choice_capacity(7, 64, 0.01), 1); // would be 0 slots: clamped to 1
        assert_eq!(expert_choice_capacity(7, 3, 1e30), 7); // never more than T
        assert_eq!(expert_choice_capacity(0, 3, 1.0), 0);
    }

    #[test]
    fn an_empty_batch_gives_an_empty_routing() {
        for kind in [TOP2, RouterKind::Switch, RouterKind::ExpertChoice { capacity_factor: 1.0 }] {
            let r = router(4, 3, kind, 1).route(&input(0, 4, 0), Some(&mut Rng::seed(0))).unwrap();
            assert_eq!((r.num_tokens, r.num_experts, r.len()), (0, 3, 0));
            assert_eq!((r.gates.shape(), r.probs.shape(), r.logits.shape()), (&[0][..], &[0, 3][..], &[0, 3][..]));
        }
    }

    #[test]
    fn noise_is_added_only_when_a_generator_is_given() {
        let noisy = RouterKind::TopK { k: 2, renormalize: false, noisy: true };
        let r = router(8, 6, noisy, 3);
        let x = input(50, 8, 4);
        let clean = r.route(&x, None).unwrap();
        let plain = router(8, 6, RouterKind::TopK { k: 2, renormalize: false, noisy: false }, 3).route(&x, None);
        assert_eq!(clean.experts, plain.unwrap().experts);

        let noised = r.route(&x, Some(&mut Rng::seed(9))).unwrap();
        // The same noise, added by hand, gives the same routing.
        let noise = Tensor::randn(&[50, 6], &mut Rng::seed(9)).mul_scalar(noise_std(6));
        let by_hand = noisy.route_logits(&r.logits(&x).unwrap().add(&Var::constant(noise)).unwrap()).unwrap();
        assert_eq!(noised.experts, by_hand.experts);
        assert_eq!(noised.logits.value().to_vec(), by_hand.logits.value().to_vec());
        assert_ne!(noised.experts, clean.experts, "noise of std 1/E should move some near-tied choice");
        // A non-noisy kind ignores the generator.
        assert_eq!(router(8, 6, TOP2, 3).route(&x, Some(&mut Rng::seed(9))).unwrap().experts, {
            router(8, 6, TOP2, 3).route(&x, None).unwrap().experts
        });
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_message() {
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(0);
        let mut new = |e, kind| Router::new(&mut store.scope("m"), 4, e, kind, &mut rng).map(|_| ()).unwrap_err();
        let k = |k| RouterKind::TopK { k, renormalize: true, noisy: false };
        assert_eq!(new(8, k(0)).to_string(), "top_k: k = 0 must be in 1..=8 experts");
        assert_eq!(new(3, k(4)).to_string(), "top_k: k = 4 must be in 1..=3 experts");
        for factor in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = new(4, RouterKind::ExpertChoice { capacity_factor: factor }).to_string();
            assert_eq!(err, format!("ExpertChoice: capacity factor {factor} must be finite and > 0"));
        }
        assert_eq!(
            new(0, RouterKind::Switch).to_string(),
            "Router::new: needs d_model >= 1 and num_experts >= 1, got d_model = 4, num_experts = 0"
        );

        let r = router(4, 3, TOP2, 0);
        let err = r.route(&input(5, 3, 0), None).unwrap_err();
        assert_eq!(err.to_string(), "router: input must be [tokens, d_model = 4], got [5, 3]");
        let err = r.route(&Var::constant(Tensor::zeros(&[2, 5, 4])), None).unwrap_err();
        assert_eq!(err.to_string(), "router: input must be [tokens, d_model = 4], got [2, 5, 4]");

        let mut x = Tensor::randn(&[5, 4], &mut Rng::seed(1)).to_vec();
        x[3 * 4 + 2] = f32::NAN;
        let err = r.route(&Var::constant(Tensor::from_vec(x, &[5, 4]).unwrap()), None).unwrap_err();
        assert_eq!(err.to_string(), "router: NaN or infinite logit in row 3 (expert 0 is NaN)");
        let mut logits = vec![0.5; 12];
        logits[7] = f32::NEG_INFINITY;
        let err = TOP2.route_logits(&Var::constant(Tensor::from_vec(logits, &[4, 3]).unwrap())).unwrap_err();
        assert_eq!(err.to_string(), "router: NaN or infinite logit in row 2 (expert 1 is -inf)");
        let err = TOP2.route_logits(&Var::constant(Tensor::zeros(&[4]))).unwrap_err();
        assert_eq!(err.to_string(), "router: logits must be [tokens, experts >= 1], got [4]");
        let err = Router::from_weight(Param::new("w", Tensor::zeros(&[4])), TOP2).unwrap_err();
        assert_eq!(err.to_string(), "Router::from_weight: weight must be [d_model, experts], got [4]");
    }

    #[test]
    fn the_weight_is_registered_under_the_scope() {
        let mut store = ParamStore::new();
        let r = Router::new(&mut store.scope("blocks.2.moe"), 6, 5, TOP2, &mut Rng::seed(0)).unwrap();
        assert_eq!((r.weight().name(), r.d_model(), r.num_experts(), r.kind()), ("blocks.2.moe.router", 6, 5, TOP2));
        assert!(store.get("blocks.2.moe.router").is_some());
    }

    #[test]
    fn gates_gradcheck_against_the_logits() {
        let kinds = [
            RouterKind::TopK { k: 2, renormalize: true, noisy: false },
            RouterKind::TopK { k: 2, renormalize: false, noisy: false },
            RouterKind::TopK { k: 3, renormalize: true, noisy: false },
            RouterKind::Switch,
            RouterKind::ExpertChoice { capacity_factor: 1.5 },
        ];
        for kind in kinds {
            let logits = separated_logits(6, 5, 11);
            assert_clear_choices(&logits, |l| kind.route_logits(l));
            check_grad(|l| Ok(kind.route_logits(l)?.gates), &logits);
        }
    }

    #[test]
    fn the_gradient_reaches_the_router_weight() {
        // Through x·W as well: gradcheck the gates against both the input and the weight.
        let (x, w) = (separated_logits(6, 4, 2), Tensor::randn(&[4, 5], &mut Rng::seed(5)));
        for kind in [TOP2, RouterKind::ExpertChoice { capacity_factor: 1.0 }] {
            let route = |v: &[Var]| kind.route_logits(&v[0].matmul(&v[1])?);
            assert_clear_choices_many(&[x.clone(), w.clone()], route);
            check_grad_many(|v| Ok(route(v)?.gates), &[x.clone(), w.clone()]);
        }
        // And `Router::route` hands it to the parameter.
        let r = Router::from_weight(Param::new("router", w.clone()), TOP2).unwrap();
        let gates = r.route(&Var::constant(x.clone()), None).unwrap().gates;
        let grads = gates.square().sum_all().backward().unwrap();
        let g = grads.get(r.weight()).expect("the router weight takes a gradient").to_vec();
        assert!(g.iter().any(|&v| v != 0.0));
    }
}
