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
//! MLP experts run both products of each expert in one task instead (`expert_mlp`; while
//! recording, `expert_mlp_recorded`, which keeps the hidden rows and, for experts of 512 rows
//! or more, runs the backward per expert too), with the same bits, when the threads can share
//! whole experts: at inference, a decode batch (a few rows per expert); at inference or in
//! training, several experts per thread of similar sizes. When no token has more than two
//! slots (top-1, top-2), each task also adds its gated rows onto their tokens' output rows while
//! they are still in its cache, instead of a combine pass reading them all back: a two-term sum
//! does not depend on which task gets there first, so the bits are the combine's
//! ([`elide_kernels::shared_rows`]).
//!
//! The backward pass is conditional too: each grouped op's backward runs two grouped GEMMs
//! over the same rows (weight gradient, input gradient), so it costs about twice the forward's
//! *active* FLOPs, like a dense layer of the active size; the gate gradient is
//! `⟨dOut[token], Y[s]⟩`. An expert with no rows costs nothing in either direction.

use crate::error::{Error, Result};
use crate::gathered::{
    active, combine, combine_with_value, expert_mlp, expert_mlp_recorded, grouped_linear, kernel_err, pack_blocks,
    GroupedWeight, MlpSink, MlpWeights, RowSource, WeightLayout,
};
use crate::plan::DispatchPlan;
use crate::weights::ParamSource;
use elide_autodiff::{init, is_recording, Param, Scope, Var};
use elide_kernels::gemm::{Activation, Blocking, PackedB};
use elide_kernels::shared_rows::{SharedRowSums, MAX_ADDS_PER_ROW};
use elide_kernels::Isa;
use elide_tensor::{pool, Rng, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// The weights packed for inference, and whether to keep them (see
    /// [`Experts::set_weight_packing`]).
    packed: Mutex<Option<Arc<PackedExperts>>>,
    packing: AtomicBool,
}

/// Rows up to which the grouped GEMM streams an expert's weights instead of packing them (its
/// skinny form).
const STREAMED_MAX_ROWS: usize = 8;

/// Active experts per thread from which each expert's two products run in one task
/// ([`expert_mlp`]): the threads then share whole experts, so they need several each.
const PER_EXPERT_MIN_PER_THREAD: usize = 4;

/// Whether no token of `plan` has more slots than the expert tasks can combine themselves
/// ([`MAX_ADDS_PER_ROW`]).
fn at_most_two_slots_per_token(plan: &DispatchPlan) -> bool {
    let (start, _) = plan.slots_by_token();
    start.windows(2).all(|w| w[1] - w[0] <= MAX_ADDS_PER_ROW)
}

/// Runs `tasks` with a `[t, d]` output that they add their gated rows into (the slot gates'
/// values, in slot order, given to them): returns the output, finished (tokens no task reached
/// are zero), what `tasks` returned, and when they ended (the rest is the combine's time).
fn combined_in_tasks<R>(
    t: usize,
    d: usize,
    slot_gates: &Var,
    tasks: impl FnOnce(&SharedRowSums<'_>, &[f32]) -> Result<R>,
) -> Result<(Tensor, R, Instant)> {
    let gates = slot_gates.value().to_vec();
    let mut out = pool::take(t * d);
    let sums = SharedRowSums::new(&mut out, t, d).map_err(kernel_err)?;
    let result = tasks(&sums, &gates)?;
    let ended = Instant::now();
    sums.finish();
    Ok((Tensor::from_vec(out, &[t, d])?, result, ended))
}

/// Whether the threads can share out whole experts evenly: at least
/// [`PER_EXPERT_MIN_PER_THREAD`] active experts per thread, none with more than twice the mean
/// rows. Otherwise the grouped ops, which cut large experts into column slices, share the work
/// better. Against the grouped ops on 2 threads, interleaved in one process: 0.98 of a layer
/// forward's CPU time at 64 experts of ~128 rows (config B), 0.97 at 8 experts of ~1024
/// (config A).
fn shares_evenly(plan: &DispatchPlan) -> bool {
    let (count, total, largest) =
        active(plan).fold((0, 0, 0), |(n, sum, max), (_, rows)| (n + 1, sum + rows.len(), max.max(rows.len())));
    count >= PER_EXPERT_MIN_PER_THREAD * rayon::current_num_threads() && largest * count <= 2 * total
}

/// The experts' parameter values at one version, each weight's blocks packed for the forward
/// GEMMs: what an inference call reuses until a parameter is replaced (`Param::set`, an
/// optimizer step) or another instruction set is active.
struct PackedExperts {
    /// `(id, version)` of every parameter, in order.
    versions: Vec<(u64, u64)>,
    blocking: Blocking,
    /// The values at those versions (a forward computes from these, so its packed and unpacked
    /// reads agree even if a parameter is replaced meanwhile).
    values: Vec<Tensor>,
    /// Per parameter: its blocks packed (three-dimensional weights), or empty (biases).
    blocks: Vec<Vec<PackedB>>,
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
        let (packed, packing) = (Mutex::new(None), AtomicBool::new(true));
        Ok(Experts { kind, num_experts, d_model, hidden, params, packed, packing })
    }

    /// Whether inference (a forward pass while gradients are not recorded) packs the expert
    /// weights once and reuses them until a parameter changes (on by default). The packed copy
    /// takes about as much memory as the weights; `false` drops it and packs per call.
    pub fn set_weight_packing(&self, enabled: bool) {
        self.packing.store(enabled, Ordering::Relaxed);
        if !enabled {
            *self.packed.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Bytes held by the packed weights (0 before the first inference call, or with packing
    /// off).
    pub fn packed_weight_bytes(&self) -> usize {
        let slot = self.packed.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map_or(0, |p| p.blocks.iter().flatten().map(PackedB::bytes).sum())
    }

    /// The packed weights of the parameters' current versions for the active instruction set,
    /// packing them if they are missing or stale.
    fn packed_weights(&self) -> Result<Arc<PackedExperts>> {
        let blocking = Blocking::of(Isa::try_active().map_err(|e| Error::Tensor(e.into()))?);
        let mut slot = self.packed.lock().unwrap_or_else(|e| e.into_inner());
        let current = || self.params.iter().map(|p| (p.id(), p.version()));
        if let Some(p) = slot.as_ref().filter(|p| p.blocking == blocking && p.versions.iter().copied().eq(current())) {
            return Ok(p.clone());
        }
        *slot = None; // free the stale copy before packing the new one
        let (mut versions, mut values, mut blocks) = (Vec::new(), Vec::new(), Vec::new());
        for p in &self.params {
            let (value, version) = p.versioned_value();
            let packed = match value.shape().len() {
                3 => pack_blocks(&value, WeightLayout::InOut, blocking)?,
                _ => Vec::new(),
            };
            versions.push((p.id(), version));
            values.push(value);
            blocks.push(packed);
        }
        let packed = Arc::new(PackedExperts { versions, blocking, values, blocks });
        *slot = Some(packed.clone());
        Ok(packed)
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
        // Training packs per call (the weights change every step); a batch whose every expert
        // has a few rows (decode) streams the weights unpacked (the kernels' skinny form), so
        // packing them would only cost memory.
        let streamed = active(plan).all(|(_, rows)| rows.len() <= STREAMED_MAX_ROWS);
        let packing = !is_recording() && self.packing.load(Ordering::Relaxed) && !streamed;
        let evenly = shares_evenly(plan);
        // Inference of MLP experts: each expert's two projections back to back in one task,
        // with the bits of the two grouped ops, when the threads can share whole experts.
        if let (ExpertKind::Mlp(act), false, true) = (self.kind, is_recording(), streamed || evenly) {
            let start = Instant::now();
            let packed = packing.then(|| self.packed_weights()).transpose()?;
            let values: Vec<Tensor> = match &packed {
                Some(p) => p.values.clone(),
                None => self.params.iter().map(Param::value).collect(),
            };
            let weights = MlpWeights {
                w1: &values[0],
                b1: &values[1],
                w2: &values[2],
                b2: &values[3],
                packed: packed.as_ref().map(|p| (&p.blocks[0][..], &p.blocks[2][..])),
            };
            if at_most_two_slots_per_token(plan) {
                let (out, _, multiplied) = combined_in_tasks(t, d, slot_gates, |sums, gates| {
                    expert_mlp(x.value(), plan, &weights, act, MlpSink::Combine { out: sums, gates, keep: false })
                })?;
                let out = Var::constant(out);
                return Ok((out, ExpertTimes { gemms: multiplied - start, combine: multiplied.elapsed() }));
            }
            let slot_rows = expert_mlp(x.value(), plan, &weights, act, MlpSink::Slots { keep: false })?.y;
            let y = Var::constant(slot_rows.expect("slot rows when asked"));
            let multiplied = Instant::now();
            let out = combine(&y, Some(slot_gates), plan)?;
            return Ok((out, ExpertTimes { gemms: multiplied - start, combine: multiplied.elapsed() }));
        }
        if !packing {
            let weight_vars: Vec<Var> = self.params.iter().map(Param::var).collect();
            if let (ExpertKind::Mlp(act), true) = (self.kind, is_recording() && evenly) {
                // Training: the same per-expert tasks, keeping what the backward pass needs, and
                // up to two slots a token, combining their rows as at inference.
                let start = Instant::now();
                let w = [&weight_vars[0], &weight_vars[1], &weight_vars[2], &weight_vars[3]];
                if at_most_two_slots_per_token(plan) {
                    let (out, y, multiplied) = combined_in_tasks(t, d, slot_gates, |sums, gates| {
                        expert_mlp_recorded(x, plan, w, act, Some((sums, gates)))
                    })?;
                    let out = combine_with_value(out, &y, slot_gates, plan)?;
                    return Ok((out, ExpertTimes { gemms: multiplied - start, combine: multiplied.elapsed() }));
                }
                let y = expert_mlp_recorded(x, plan, w, act, None)?;
                let multiplied = Instant::now();
                let out = combine(&y, Some(slot_gates), plan)?;
                return Ok((out, ExpertTimes { gemms: multiplied - start, combine: multiplied.elapsed() }));
            }
            return apply(self.kind, x, slot_gates, &weight_vars, None, plan);
        }
        let packed = self.packed_weights()?;
        let weight_vars: Vec<Var> = packed.values.iter().cloned().map(Var::constant).collect();
        apply(self.kind, x, slot_gates, &weight_vars, Some(&packed.blocks), plan)
    }
}

/// Wall-clock time of the two halves of an expert forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExpertTimes {
    /// The grouped GEMMs (and the activation between them); when the expert tasks combine their
    /// own rows, the combine too.
    pub gemms: std::time::Duration,
    /// Summing each token's gated slot rows; when the expert tasks did that, only finishing their
    /// shared output (zeroing the rows of tokens no expert took) and, in training, recording it
    /// as the combine.
    pub combine: std::time::Duration,
}

/// The expert op on explicit weight values (the parameters' vars, or test leaves), in the
/// order documented on [`Experts`], with each weight's blocks packed (`packed[i]` for `w[i]`)
/// when given.
fn apply(
    kind: ExpertKind,
    x: &Var,
    slot_gates: &Var,
    w: &[Var],
    packed: Option<&[Vec<PackedB>]>,
    plan: &Arc<DispatchPlan>,
) -> Result<(Var, ExpertTimes)> {
    let start = Instant::now();
    let stacked = |i: usize| {
        let weight = GroupedWeight::new(&w[i], WeightLayout::InOut);
        match packed {
            Some(p) => weight.with_packed(&p[i]),
            None => weight,
        }
    };
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
