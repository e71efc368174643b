//! [`DepthRouter`]: the routing half of a mixture-of-depths layer — the router (and the causal
//! predictor), the choice of rows, and putting the gated block output back on the residual.

use super::{capacity_rows, Causal, MixtureOfDepthsConfig, MixtureOfDepthsOutput, RowSelection};
use crate::error::{Error, Result};
use crate::gathered::{combine_onto, gather};
use crate::plan::{Capacity, DispatchPlan};
use crate::router::{Router, RouterKind, Selection};
use elide_autodiff::{init, Param, Scope, Var};
use elide_tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The routing half of a [`MixtureOfDepths`](super::MixtureOfDepths) layer, for a block the caller runs itself (one that
/// needs more than [`Block`](crate::Block) gives it, such as a transformer block that reads the chosen rows
/// of each sequence as a shorter sequence): [`DepthRouter::route`] picks the rows,
/// [`DepthRoute::gather`] hands them over, and [`DepthRouter::finish`] puts the gated block
/// output back on the residual.
///
/// ```
/// use elide_autodiff::{ParamStore, Var};
/// use elide_cond::{DepthRouter, MixtureOfDepthsConfig, RowSelection, ScoreFn};
/// use elide_tensor::{Rng, Tensor};
///
/// let mut rng = Rng::seed(0);
/// let mut store = ParamStore::new();
/// let config = MixtureOfDepthsConfig {
///     d_model: 8,
///     selection: RowSelection::TopC { capacity: 0.25, seq_len: 8 },
///     gate: ScoreFn::Sigmoid,
///     predictor_hidden: None,
///     router_aux_coef: 0.0,
/// };
/// let depth = DepthRouter::new(&mut store.scope("blocks.1.depth"), config, &mut rng)?;
/// let x = Var::constant(Tensor::randn(&[2 * 4, 8], &mut rng)); // 2 sequences of 4 rows
/// let route = depth.route(&x, RowSelection::TopC { capacity: 0.25, seq_len: 4 })?;
/// let inside = route.gather(&x)?.tanh(); // [2, 8]: one row of each sequence
/// let out = depth.finish(&x, route, &inside, 0.0)?;
/// assert_eq!(out.chosen.len(), 2);
/// # Ok::<(), elide_cond::Error>(())
/// ```
pub struct DepthRouter {
    config: MixtureOfDepthsConfig,
    router: Router,
    predictor: Option<Predictor>,
}

/// The rows one pass of a [`DepthRouter`] chose, before the block runs on them.
pub struct DepthRoute {
    logits: Var,
    chosen: Vec<u32>,
    plan: Arc<DispatchPlan>,
    extra_flops: f64,
}

impl DepthRoute {
    /// The chosen rows, ascending.
    pub fn chosen(&self) -> &[u32] {
        &self.chosen
    }

    /// `[T]` router logits.
    pub fn logits(&self) -> &Var {
        &self.logits
    }

    /// The chosen rows of `x` (`[T, d]`, the input routed), `[n, d]` in ascending order; the
    /// backward pass scatters into the chosen rows only.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` does not have the routed row count.
    pub fn gather(&self, x: &Var) -> Result<Var> {
        gather(x, &self.plan)
    }
}

impl DepthRouter {
    /// Registers the router (`<scope>.router`, `[d, 1]`, `N(0, 0.02²)`) and, if configured, the
    /// predictor (`<scope>.predictor.{w1,b1,w2,b2}`).
    ///
    /// # Errors
    /// The errors of [`MixtureOfDepthsConfig::validate`]; a registration error if a name is
    /// taken.
    pub fn new(scope: &mut Scope<'_>, config: MixtureOfDepthsConfig, rng: &mut Rng) -> Result<DepthRouter> {
        config.validate()?;
        // The router's own selection is not used (top-C here is per sequence); the kind records
        // the score function.
        let kind = RouterKind::Scored { score: config.gate, selection: Selection::TopK { k: 1, renormalize: false } };
        let router = Router::new(scope, config.d_model, 1, kind, rng)?;
        let predictor = match config.predictor_hidden {
            Some(h) => Some(Predictor::new(&mut scope.scope("predictor"), config.d_model, h, rng)?),
            None => None,
        };
        Ok(DepthRouter { config, router, predictor })
    }

    /// The configuration.
    pub fn config(&self) -> &MixtureOfDepthsConfig {
        &self.config
    }

    /// The router (weight `[d, 1]`).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The predictor's parameters `w1 [d, h]`, `b1 [h]`, `w2 [h, 1]`, `b2 [1]`, if it has one.
    pub fn predictor_params(&self) -> Option<[&Param; 4]> {
        self.predictor.as_ref().map(|p| [&p.w1, &p.b1, &p.w2, &p.b2])
    }

    /// Every parameter: the router's weight, then the predictor's.
    pub fn params(&self) -> Vec<&Param> {
        let mut p = vec![self.router.weight()];
        p.extend(self.predictor_params().into_iter().flatten());
        p
    }

    /// Picks the rows of `x: [T, d]` that enter the block by `selection` (which need not be the
    /// config's: a caller whose sequence length varies passes its own).
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` is not `[T, d_model]` or, under top-C, `T` is not a multiple of
    /// `seq_len`; [`Error::Argument`] for a selection that fails the config's checks;
    /// [`Error::NonFiniteLogit`] naming the first row whose router logit is NaN or infinite.
    pub fn route(&self, x: &Var, selection: RowSelection) -> Result<DepthRoute> {
        MixtureOfDepthsConfig { selection, ..self.config }.validate()?;
        let logits = self.logits(x)?;
        let r = logits.value().to_vec();
        let chosen = match selection {
            RowSelection::TopC { capacity, seq_len } => {
                let t = r.len();
                if t % seq_len != 0 {
                    return Err(Error::shape(
                        "MixtureOfDepths",
                        format!("{t} rows are not a whole number of sequences of length {seq_len}"),
                    ));
                }
                top_c_per_sequence(&r, seq_len, capacity_rows(seq_len, capacity))
            }
            RowSelection::Threshold { threshold } => {
                (0..r.len() as u32).filter(|&i| sigmoid(r[i as usize]) >= threshold).collect()
            }
        };
        DepthRoute::new(logits, chosen, 0.0)
    }

    /// Picks rows at decode time: each row decides alone (no look at other rows), by the
    /// router's sign or the predictor's ([`Causal`]).
    ///
    /// # Errors
    /// As [`DepthRouter::route`] (no sequence-length check); [`Error::Argument`] for
    /// [`Causal::Predictor`] on a router without one.
    pub fn route_causal(&self, x: &Var, rule: Causal) -> Result<DepthRoute> {
        let logits = self.logits(x)?;
        let (decider, extra_flops) = match rule {
            Causal::Router => (logits.value().to_vec(), 0.0),
            Causal::Predictor => {
                let p = self.predictor.as_ref().ok_or_else(|| {
                    Error::argument(
                        "MixtureOfDepths::forward_causal",
                        "Causal::Predictor on a layer without a predictor",
                    )
                })?;
                let t = x.shape()[0];
                (check_finite_rows(p.logits(&x.detach())?.value())?, p.flops(t))
            }
        };
        let chosen = (0..decider.len() as u32).filter(|&i| decider[i as usize] >= 0.0).collect();
        DepthRoute::new(logits, chosen, extra_flops)
    }

    /// `x + g ⊙ inside` on the chosen rows of `route`, `x` elsewhere, where `inside` (`[n, d]`)
    /// is the block's output on [`DepthRoute::gather`] and `inside_flops` what running it cost.
    ///
    /// # Errors
    /// [`Error::Shape`] if `inside` is not `[n, d]` for the route's `n` chosen rows or `x` is
    /// not the input routed.
    pub fn finish(&self, x: &Var, route: DepthRoute, inside: &Var, inside_flops: f64) -> Result<MixtureOfDepthsOutput> {
        let (t, d) = (x.shape()[0], self.config.d_model);
        let DepthRoute { logits, chosen, plan, extra_flops } = route;
        if inside.shape() != [chosen.len(), d] || logits.shape() != [t] {
            return Err(Error::shape(
                "MixtureOfDepths",
                format!(
                    "the block returned {:?} for [{}, {d}] rows of x {:?}",
                    inside.shape(),
                    chosen.len(),
                    x.shape()
                ),
            ));
        }
        let gates = self.config.gate.apply(&logits)?.index_select(0, &chosen)?;
        let output = combine_onto(x, inside, Some(&gates), &plan)?;
        let mut membership = vec![0.0f32; t];
        chosen.iter().for_each(|&i| membership[i as usize] = 1.0);
        let flops = 2.0 * (t * d) as f64 + extra_flops + inside_flops;
        Ok(MixtureOfDepthsOutput {
            output,
            router_logits: logits,
            chosen,
            membership,
            plan,
            flops,
            router_aux_coef: self.config.router_aux_coef,
        })
    }

    /// Mean BCE of the predictor on a stop-gradient copy of `x` against `out`'s membership
    /// (the top-C decision on the same `x`). Its gradient reaches the predictor only.
    ///
    /// # Errors
    /// [`Error::Argument`] on a router without a predictor; [`Error::Shape`] if `x` does not
    /// match `out`.
    pub fn predictor_loss(&self, x: &Var, out: &MixtureOfDepthsOutput) -> Result<Var> {
        let p = self
            .predictor
            .as_ref()
            .ok_or_else(|| Error::argument("MixtureOfDepths::predictor_loss", "the layer has no predictor"))?;
        let d = self.config.d_model;
        if x.shape() != [out.membership.len(), d] {
            return Err(Error::shape(
                "MixtureOfDepths::predictor_loss",
                format!("x must be [{}, {d}] (the rows of the output), got {:?}", out.membership.len(), x.shape()),
            ));
        }
        bce_with_logits(&p.logits(&x.detach())?, &out.membership)
    }

    /// `[T]` router logits of `x`, after checking `x`'s shape and the logits' finiteness.
    fn logits(&self, x: &Var) -> Result<Var> {
        let d = self.config.d_model;
        if x.shape().len() != 2 || x.shape()[1] != d {
            return Err(Error::shape("router", format!("input must be [tokens, d_model = {d}], got {:?}", x.shape())));
        }
        let logits = row_dots(x, &self.router.weight().var())?;
        check_finite_rows(logits.value())?;
        Ok(logits)
    }
}

impl DepthRoute {
    fn new(logits: Var, chosen: Vec<u32>, extra_flops: f64) -> Result<DepthRoute> {
        let t = logits.shape()[0];
        let plan = Arc::new(DispatchPlan::new(&chosen, &vec![0; chosen.len()], t, 1, Capacity::Dropless)?);
        Ok(DepthRoute { logits, chosen, plan, extra_flops })
    }
}

/// The causal predictor: `gelu(x·W1 + b1)·w2 + b2`, one logit per row.
struct Predictor {
    w1: Param,
    b1: Param,
    w2: Param,
    b2: Param,
}

impl Predictor {
    fn new(scope: &mut Scope<'_>, d: usize, h: usize, rng: &mut Rng) -> Result<Predictor> {
        Ok(Predictor {
            w1: scope.param("w1", init::normal(&[d, h], (1.0 / d as f32).sqrt(), rng)?)?,
            b1: scope.param("b1", Tensor::zeros(&[h]))?,
            w2: scope.param("w2", init::normal(&[h, 1], (1.0 / h as f32).sqrt(), rng)?)?,
            b2: scope.param("b2", Tensor::zeros(&[1]))?,
        })
    }

    /// `[T]` logits of `x` `[T, d]`.
    fn logits(&self, x: &Var) -> Result<Var> {
        let h = x.matmul(&self.w1.var())?.add(&self.b1.var())?.gelu();
        Ok(row_dots(&h, &self.w2.var())?.add(&self.b2.var())?)
    }

    fn flops(&self, rows: usize) -> f64 {
        let (d, h) = (self.w1.shape()[0], self.w1.shape()[1]);
        2.0 * (rows * (d * h + h)) as f64
    }
}

/// `r_i = ⟨x_i, w⟩`: `[T]` dot products of the rows of `x` `[T, k]` with `w` `[k, 1]`.
///
/// Forward as the one-row product `wᵀ·xᵀ`, so the GEMM's batch-1 path streams `x` once (as
/// `x·w`, a product with one output column, it would pack all of `x` first: measured 3–5 ms
/// against 0.3 ms at 4096 × 512). Backward `dx_i = dr_i · wᵀ`, written only for rows with
/// `dr_i ≠ 0` (a router's gradient is non-zero only on the chosen rows), and `dw = xᵀ·dr`, again
/// one row out.
fn row_dots(x: &Var, w: &Var) -> Result<Var> {
    let (t, k) = (x.shape()[0], x.shape()[1]);
    let (xv, wv) = (x.value().clone(), w.value().clone());
    let r = wv.transpose(0, 1)?.matmul(&xv.transpose(0, 1)?)?.reshape(&[t])?;
    let wants = (Var::records(&[x]), Var::records(&[w]));
    Ok(Var::from_op("row_dots", r, &[x, w], move |dr| {
        let dx = if wants.0 {
            let (d, wd) = (dr.to_vec(), wv.to_vec());
            let mut dx = vec![0.0f32; t * k];
            dx.par_chunks_mut(k.max(1)).zip(d.par_iter()).with_min_len(64).for_each(|(row, &di)| {
                if di != 0.0 {
                    row.iter_mut().zip(&wd).for_each(|(o, &wj)| *o = di * wj);
                }
            });
            Some(Tensor::from_vec(dx, &[t, k])?)
        } else {
            None
        };
        let dw = if wants.1 { Some(dr.reshape(&[1, t])?.matmul(&xv)?.reshape(&[k, 1])?) } else { None };
        Ok(vec![dx, dw])
    }))
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// The values of `[T]` logits, or an error naming the first non-finite one.
fn check_finite_rows(logits: &Tensor) -> Result<Vec<f32>> {
    let r = logits.to_vec();
    match r.iter().position(|v| !v.is_finite()) {
        Some(row) => Err(Error::NonFiniteLogit { row, expert: 0, value: r[row] }),
        None => Ok(r),
    }
}

/// The `c` highest of each run of `seq_len` logits (ties to the earlier row), as ascending row
/// indices: `O(T)` selection per sequence, then a sort of the `c` chosen.
pub(crate) fn top_c_per_sequence(logits: &[f32], seq_len: usize, c: usize) -> Vec<u32> {
    let mut chosen = Vec::with_capacity(logits.len() / seq_len.max(1) * c);
    let mut order: Vec<u32> = Vec::with_capacity(seq_len);
    for (b, seq) in logits.chunks(seq_len).enumerate() {
        order.clear();
        order.extend(0..seq.len() as u32);
        // A total order (value descending, then index), so the selection is deterministic.
        let by_rank = |a: &u32, b: &u32| seq[*b as usize].total_cmp(&seq[*a as usize]).then(a.cmp(b));
        if c < seq.len() {
            order.select_nth_unstable_by(c, by_rank);
        }
        let first = chosen.len();
        chosen.extend(order[..c.min(seq.len())].iter().map(|&i| (b * seq_len) as u32 + i));
        chosen[first..].sort_unstable();
    }
    chosen
}

/// Mean binary cross-entropy of `sigmoid(z)` against `targets` in `[0, 1]`, fused and stable:
/// `mean(max(z, 0) − z·y + log(1 + e^{−|z|}))`; backward `(sigmoid(z) − y)/n`.
pub(crate) fn bce_with_logits(logits: &Var, targets: &[f32]) -> Result<Var> {
    let n = targets.len();
    if logits.shape() != [n] {
        return Err(Error::shape("bce_with_logits", format!("logits must be [{n}], got {:?}", logits.shape())));
    }
    let z = logits.value().to_vec();
    let sum: f64 = z
        .iter()
        .zip(targets)
        .map(|(&z, &y)| {
            let z = z as f64;
            z.max(0.0) - z * y as f64 + (-z.abs()).exp().ln_1p()
        })
        .sum();
    let loss = Tensor::scalar((sum / n.max(1) as f64) as f32);
    let targets = targets.to_vec();
    Ok(Var::from_op("bce_with_logits", loss, &[logits], move |g| {
        let scale = g.item()? / n.max(1) as f32;
        let grad = z.iter().zip(&targets).map(|(&z, &y)| (sigmoid(z) - y) * scale).collect();
        Ok(vec![Some(Tensor::from_vec(grad, &[n])?)])
    }))
}
