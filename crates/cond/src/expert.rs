//! Expert feed-forward networks computed only on the rows routed to them.
//!
//! `E` experts share one set of stacked weights (`[E, …]` tensors). Given a [`DispatchPlan`], the
//! forward pass is two (SwiGLU: three) [`grouped_linear`] ops and a [`combine`], the gathered
//! ops of [`crate::gathered`]:
//!
//! ```text
//! up    H[s]  = act(X[token(s)] · W1[e] + b1[e])  A gathered by the plan, inside packing
//! down  Y[s]  = H[s] · W2[e] + b2[e]              contiguous rows, one per (slot, token)
//! combine out[t] = Σ_{s: token(s)=t} g_s · Y[s]   in slot order: fixed, no atomics
//! ```
//!
//! The backward pass is conditional too: each grouped op's backward runs two grouped GEMMs
//! over the same rows (weight gradient, input gradient), so it costs about twice the forward's
//! *active* FLOPs, like a dense layer of the active size; the gate gradient is
//! `⟨dOut[token], Y[s]⟩`. An expert with no rows costs nothing in either direction.

use crate::error::{Error, Result};
use crate::gathered::{combine, grouped_linear, GroupedWeight, RowSource, WeightLayout};
use crate::plan::DispatchPlan;
use crate::weights::ParamSource;
use elide_autodiff::{init, Param, Scope, Var};
use elide_kernels::gemm::Activation;
use elide_tensor::{Rng, Tensor};
use std::sync::Arc;
use std::time::Instant;

/// What each expert computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertKind {
    /// `act(x·W1 + b1)·W2 + b2` (GELU for Switch/GShard-style experts).
    Mlp(Activation),
    /// `(silu(x·Wg) ⊙ x·Wu)·W2`, no biases (Mixtral; Shazeer, arXiv 2002.05202).
    SwiGlu,
}

/// `E` experts of one kind, with stacked weights registered under a scope.
///
/// Parameters (names under the experts' scope, `<layer>.experts` in a [`crate::MoeLayer`]), all
/// in the `[E, in, out]` layout of `x·W`:
///
/// | kind | name | shape |
/// |---|---|---|
/// | `Mlp` | `w1`, `b1`, `w2`, `b2` | `[E, d, h]`, `[E, h]`, `[E, h, d]`, `[E, d]` |
/// | `SwiGlu` | `w_gate`, `w_up`, `w2` | `[E, d, h]`, `[E, d, h]`, `[E, h, d]` |
pub struct Experts {
    kind: ExpertKind,
    num_experts: usize,
    d_model: usize,
    hidden: usize,
    /// Mlp: `w1 [E,d,h]`, `b1 [E,h]`, `w2 [E,h,d]`, `b2 [E,d]`.
    /// SwiGlu: `w_gate [E,d,h]`, `w_up [E,d,h]`, `w2 [E,h,d]`.
    params: Vec<Param>,
}

impl Experts {
    /// Registers the experts' weights under `scope` (`w1`, `b1`, `w2`, `b2`, or `w_gate`,
    /// `w_up`, `w2`), initialised LeCun-normal (N(0, 1/fan_in)) with zero biases.
    ///
    /// # Errors
    /// If a name is already registered, or a size is 0.
    pub fn new(
        scope: &mut Scope<'_>,
        kind: ExpertKind,
        num_experts: usize,
        d_model: usize,
        hidden: usize,
        rng: &mut Rng,
    ) -> Result<Experts> {
        Experts::check(num_experts, d_model, hidden)?;
        Experts::build(scope, kind, num_experts, d_model, hidden, &mut ParamSource::Random(rng), "")
    }

    /// Refuses a size of 0.
    pub(crate) fn check(num_experts: usize, d_model: usize, hidden: usize) -> Result<()> {
        if num_experts == 0 || d_model == 0 || hidden == 0 {
            return Err(Error::argument(
                "Experts::new",
                format!("{num_experts} experts of width {d_model} and hidden size {hidden}: every size must be > 0"),
            ));
        }
        Ok(())
    }

    /// The parameters of `E` experts of `kind`: names (relative to the experts' scope) and
    /// shapes, in registration order.
    pub fn parameters(
        kind: ExpertKind,
        num_experts: usize,
        d_model: usize,
        hidden: usize,
    ) -> Vec<(String, Vec<usize>)> {
        let (e, d, h) = (num_experts, d_model, hidden);
        let list: &[(&str, Vec<usize>)] = match kind {
            ExpertKind::Mlp(_) => {
                &[("w1", vec![e, d, h]), ("b1", vec![e, h]), ("w2", vec![e, h, d]), ("b2", vec![e, d])]
            }
            ExpertKind::SwiGlu => &[("w_gate", vec![e, d, h]), ("w_up", vec![e, d, h]), ("w2", vec![e, h, d])],
        };
        list.iter().map(|(n, s)| (n.to_string(), s.clone())).collect()
    }

    /// Registers [`Experts::parameters`] under `scope`, from `source` (keys `prefix + name`):
    /// weights drawn LeCun-normal (N(0, 1/fan_in)), biases zero.
    pub(crate) fn build(
        scope: &mut Scope<'_>,
        kind: ExpertKind,
        num_experts: usize,
        d_model: usize,
        hidden: usize,
        source: &mut ParamSource<'_>,
        prefix: &str,
    ) -> Result<Experts> {
        let mut params = Vec::new();
        for (name, shape) in Experts::parameters(kind, num_experts, d_model, hidden) {
            // Weights are [E, fan_in, fan_out]; biases [E, out] start at zero.
            let draw = |rng: &mut Rng| match shape.len() {
                3 => Ok(init::lecun_normal(&shape, WeightLayout::InOut, rng)?),
                _ => Ok(Tensor::try_zeros(&shape)?),
            };
            params.push(source.param(scope, prefix, &name, &shape, draw)?);
        }
        Ok(Experts { kind, num_experts, d_model, hidden, params })
    }

    /// The parameters, in the order documented on the struct.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The expert kind.
    pub fn kind(&self) -> ExpertKind {
        self.kind
    }

    /// Multiply-adds ×2 of a forward pass over `rows` routed rows (the FLOPs actually run).
    pub fn forward_flops(&self, rows: usize) -> f64 {
        let per_row = match self.kind {
            ExpertKind::Mlp(_) => 2,
            ExpertKind::SwiGlu => 3,
        };
        2.0 * (rows * per_row * self.d_model * self.hidden) as f64
    }

    /// `out[t] = Σ_{slots s of token t} g_s · expert_{e(s)}(x[t])`, `x: [T, d]`, `slot_gates:
    /// [S_kept]` in the plan's sorted slot order ([`DispatchPlan::slot_gates`]). Differentiable
    /// in `x`, the gates and every expert weight; records only while gradients are recorded.
    ///
    /// # Errors
    /// If `x` is not `[plan.num_tokens(), d_model]`, the gates are not `[S_kept]`, or the plan has
    /// a different number of experts.
    pub fn forward(&self, x: &Var, slot_gates: &Var, plan: &Arc<DispatchPlan>) -> Result<Var> {
        Ok(self.forward_timed(x, slot_gates, plan)?.0)
    }

    /// [`Experts::forward`], also reporting how long the expert GEMMs and the combine took.
    ///
    /// # Errors
    /// As [`Experts::forward`].
    pub fn forward_timed(&self, x: &Var, slot_gates: &Var, plan: &Arc<DispatchPlan>) -> Result<(Var, ExpertTimes)> {
        const OP: &str = "Experts::forward";
        let (t, d) = (plan.num_tokens(), self.d_model);
        if x.shape() != [t, d] {
            return Err(Error::shape(
                OP,
                format!("x must be [{t}, {d}] (tokens of the plan, d_model), got {:?}", x.shape()),
            ));
        }
        if slot_gates.shape() != [plan.num_kept()] {
            return Err(Error::shape(
                OP,
                format!("slot gates must be [{}], got {:?}", plan.num_kept(), slot_gates.shape()),
            ));
        }
        if plan.num_experts() != self.num_experts {
            return Err(Error::shape(
                OP,
                format!("the plan routes to {} experts, the layer has {}", plan.num_experts(), self.num_experts),
            ));
        }
        let weight_vars: Vec<Var> = self.params.iter().map(Param::var).collect();
        apply(self.kind, x, slot_gates, &weight_vars, plan)
    }
}

/// Wall-clock time of the two halves of an expert forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpertTimes {
    /// The grouped GEMMs (and the activation between them).
    pub gemms: std::time::Duration,
    /// Summing each token's gated slot rows.
    pub combine: std::time::Duration,
}

/// The expert op on explicit weight values (the parameters' vars, or test leaves), in the
/// order documented on [`Experts`].
fn apply(
    kind: ExpertKind,
    x: &Var,
    slot_gates: &Var,
    w: &[Var],
    plan: &Arc<DispatchPlan>,
) -> Result<(Var, ExpertTimes)> {
    let start = Instant::now();
    let stacked = |i: usize| GroupedWeight::new(&w[i], WeightLayout::InOut);
    let y = match kind {
        ExpertKind::Mlp(act) => {
            let h = grouped_linear(x, RowSource::Gathered, plan, stacked(0).with_bias(&w[1]), act)?;
            grouped_linear(&h, RowSource::Slots, plan, stacked(2).with_bias(&w[3]), Activation::Identity)?
        }
        ExpertKind::SwiGlu => {
            let gate = grouped_linear(x, RowSource::Gathered, plan, stacked(0), Activation::Silu)?;
            let up = grouped_linear(x, RowSource::Gathered, plan, stacked(1), Activation::Identity)?;
            grouped_linear(&gate.mul(&up)?, RowSource::Slots, plan, stacked(2), Activation::Identity)?
        }
    };
    let multiplied = Instant::now();
    let out = combine(&y, Some(slot_gates), plan)?;
    Ok((out, ExpertTimes { gemms: multiplied - start, combine: multiplied.elapsed() }))
}

#[cfg(test)]
mod tests;
