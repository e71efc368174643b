//! Expert feed-forward networks computed only on the rows routed to them.
//!
//! `E` experts share one set of stacked weights (`[E, …]` tensors). Given a [`DispatchPlan`], the
//! forward pass is two (SwiGLU: three) grouped gathered GEMMs and a combine:
//!
//! ```text
//! up    Z[s]  = X[token(s)] · W1[e] + b1[e]     A gathered by the plan, inside packing
//! act   H     = act(Z)                           (fused into the GEMM store at inference)
//! down  Y[s]  = H[s] · W2[e] + b2[e]             contiguous rows, one per (slot, token)
//! combine out[t] = Σ_{s: token(s)=t} g_s · Y[s]  in slot order: fixed, no atomics
//! ```
//!
//! The backward pass is conditional too — four grouped GEMMs over the same rows, so it costs
//! about twice the forward's *active* FLOPs, like a dense layer of the active size:
//! `dY = g ⊙ dOut[token]`, `dW2[e] = H_eᵀ·dY_e`, `dH = dY_e·W2[e]ᵀ`, `dZ = dH ⊙ act'(Z)`,
//! `dW1[e] = X_eᵀ·dZ_e` (Xᵀ with K gathered), `dX_slot = dZ_e·W1[e]ᵀ`, then each token sums its
//! slots in slot order; the gate gradient is `⟨dOut[token], Y[s]⟩` (ScatterMoE, arXiv 2403.08245,
//! has the same shape of backward). An expert with no rows costs nothing in either direction.

use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use elide_autodiff::{init, Param, Scope, Var};
use elide_kernels::gemm::{Accum, Activation, Epilogue, Gemm, GroupProblem, MatMut, MatRef, OutRows};
use elide_kernels::{activation_backward, binary, unary, BinaryOp, Isa, UnaryOp};
use elide_tensor::{Rng, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// What each expert computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertKind {
    /// `act(x·W1 + b1)·W2 + b2` (GELU for Switch/GShard-style experts).
    Mlp(Activation),
    /// `(silu(x·Wg) ⊙ x·Wu)·W2`, no biases (Mixtral; Shazeer, arXiv 2002.05202).
    SwiGlu,
}

/// `E` experts of one kind, with stacked weights registered under a scope.
pub struct Experts {
    kind: ExpertKind,
    num_experts: usize,
    d_model: usize,
    hidden: usize,
    /// Mlp: `w1 [E,d,h]`, `b1 [E,h]`, `w2 [E,h,d]`, `b2 [E,d]`.
    /// SwiGlu: `w_gate [E,d,h]`, `w_up [E,d,h]`, `w2 [E,h,d]`.
    params: Vec<Param>,
    /// Hidden and output buffers of earlier inference passes, reused.
    scratch: Scratch,
}

/// Buffers an inference pass is done with, kept for the next pass: the expert GEMMs overwrite
/// every element they use, so reuse saves the zero-fill (and, with the system allocator, the
/// page faults) of tens of megabytes per call. Training passes keep theirs for the backward.
#[derive(Default)]
struct Scratch(std::sync::Mutex<Vec<Vec<f32>>>);

impl Scratch {
    /// A buffer of `len` floats with unspecified contents (the best-fitting kept one, or new).
    fn take(&self, len: usize) -> Vec<f32> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let best = (0..kept.len()).filter(|&i| kept[i].capacity() >= len).min_by_key(|&i| kept[i].capacity());
        let mut v = best.map(|i| kept.swap_remove(i)).unwrap_or_default();
        v.resize(len, 0.0);
        v
    }

    /// Keeps `v` for a later pass (at most a handful are kept).
    fn put(&self, v: Vec<f32>) {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < 4 && v.capacity() > 0 {
            kept.push(v);
        }
    }
}

impl Experts {
    /// Registers the experts' weights under `scope` (`w1`, `b1`, `w2`, `b2`, or `w_gate`,
    /// `w_up`, `w2`), initialised N(0, 1/fan_in) with zero biases.
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
        if num_experts == 0 || d_model == 0 || hidden == 0 {
            return Err(Error::argument(
                "Experts::new",
                format!("{num_experts} experts of width {d_model} and hidden size {hidden}: every size must be > 0"),
            ));
        }
        let (e, d, h) = (num_experts, d_model, hidden);
        let normal =
            |shape: &[usize], fan_in: usize, rng: &mut Rng| init::normal(shape, (1.0 / fan_in as f32).sqrt(), rng);
        let params = match kind {
            ExpertKind::Mlp(_) => vec![
                scope.param("w1", normal(&[e, d, h], d, rng))?,
                scope.param("b1", Tensor::zeros(&[e, h]))?,
                scope.param("w2", normal(&[e, h, d], h, rng))?,
                scope.param("b2", Tensor::zeros(&[e, d]))?,
            ],
            ExpertKind::SwiGlu => vec![
                scope.param("w_gate", normal(&[e, d, h], d, rng))?,
                scope.param("w_up", normal(&[e, d, h], d, rng))?,
                scope.param("w2", normal(&[e, h, d], h, rng))?,
            ],
        };
        Ok(Experts { kind, num_experts, d_model, hidden, params, scratch: Scratch::default() })
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
    /// If `x` is not `[plan.num_tokens, d_model]`, the gates are not `[S_kept]`, or the plan has
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
        let (t, d) = (plan.num_tokens, self.d_model);
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
        if plan.num_experts != self.num_experts {
            return Err(Error::shape(
                OP,
                format!("the plan routes to {} experts, the layer has {}", plan.num_experts, self.num_experts),
            ));
        }
        let weight_vars: Vec<Var> = self.params.iter().map(Param::var).collect();
        apply(self.shape(), x, slot_gates, &weight_vars, plan, Some(&self.scratch))
    }

    fn shape(&self) -> Shape {
        Shape { kind: self.kind, e: self.num_experts, d: self.d_model, h: self.hidden }
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

/// The expert op on explicit weight values (the parameters' vars, or test leaves).
fn apply(
    shape: Shape,
    x: &Var,
    slot_gates: &Var,
    weight_vars: &[Var],
    plan: &Arc<DispatchPlan>,
    scratch: Option<&Scratch>,
) -> Result<(Var, ExpertTimes)> {
    let (t, d) = (plan.num_tokens, shape.d);
    let weights: Vec<Tensor> = weight_vars.iter().map(|w| w.value().contiguous()).collect();
    let mut parents: Vec<&Var> = vec![x, slot_gates];
    parents.extend(weight_vars.iter());
    let training = Var::records(&parents);
    let xs = x.value().contiguous();
    let x_data = xs.as_slice().expect("contiguous");
    let gates = slot_gates.value().to_vec();
    let start = std::time::Instant::now();
    let scratch = scratch.filter(|_| !training);
    let fwd = forward_pass(shape, x_data, &weights, plan, training, scratch)?;
    let multiplied = std::time::Instant::now();
    let out = Tensor::from_vec(combine_scaled(&fwd.y, &gates, plan, d), &[t, d])?;
    let times = ExpertTimes { gemms: multiplied - start, combine: multiplied.elapsed() };
    if !training {
        if let Some(scratch) = scratch {
            [fwd.z, fwd.zu, fwd.h, fwd.y].into_iter().for_each(|v| scratch.put(v));
        }
        return Ok((Var::constant(out), times));
    }
    let plan = plan.clone();
    let out = Var::from_op("experts", out, &parents, move |dout| {
        let dout = dout.contiguous();
        let x_data = xs.as_slice().expect("contiguous");
        Ok(backward_pass(shape, x_data, &gates, &weights, &plan, &fwd, dout.as_slice().expect("contiguous"))?)
    });
    Ok((out, times))
}

/// The sizes a pass needs.
#[derive(Clone, Copy)]
struct Shape {
    kind: ExpertKind,
    e: usize,
    d: usize,
    h: usize,
}

/// What the forward pass keeps for the backward one (`[S, h]` / `[S, d]` row-major, sorted slots).
struct Saved {
    /// Pre-activations: `Z` (Mlp) or `Zg` (SwiGlu); empty at inference.
    z: Vec<f32>,
    /// SwiGlu: `Zu = x·Wu` (empty otherwise).
    zu: Vec<f32>,
    /// Hidden rows `H`.
    h: Vec<f32>,
    /// Expert outputs `Y`, before the gate.
    y: Vec<f32>,
}

fn settings(accum: Accum) -> Gemm<'static> {
    Gemm { accum, ..Gemm::default() }
}

fn kernel_err(e: elide_kernels::KernelError) -> Error {
    Error::Tensor(e.into())
}

/// `[rows, cols]` row-major view of `data`.
fn view(data: &[f32], rows: usize, cols: usize) -> Result<MatRef<'_>> {
    MatRef::row_major(data, rows, cols).map_err(kernel_err)
}

/// Runs one grouped product per expert with rows: `out[range_e] = A_e · B_e (+ epilogue)`.
fn grouped<'a>(
    accum: Accum,
    out: &mut [f32],
    out_rows: usize,
    cols: usize,
    problems: impl Iterator<Item = Result<GroupProblem<'a>>>,
) -> Result<()> {
    let problems = problems.collect::<Result<Vec<_>>>()?;
    settings(accum)
        .run_grouped(MatMut::row_major(out, out_rows, cols).map_err(kernel_err)?, &problems)
        .map_err(kernel_err)
}

/// Experts that received rows, with their slot ranges.
fn active(plan: &DispatchPlan) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    (0..plan.num_experts).map(|e| (e, plan.expert_range(e))).filter(|(_, r)| !r.is_empty())
}

/// The forward GEMMs; `training` keeps the pre-activations. Buffers come from `scratch` when one
/// is given (inference only: the caller returns them to it afterwards).
fn forward_pass(
    sh: Shape,
    x: &[f32],
    w: &[Tensor],
    plan: &DispatchPlan,
    training: bool,
    scratch: Option<&Scratch>,
) -> Result<Saved> {
    let (t, d, h, s) = (plan.num_tokens, sh.d, sh.h, plan.num_kept());
    let alloc = |len: usize| match scratch {
        Some(scratch) => scratch.take(len),
        None => vec![0.0; len],
    };
    let xv = view(x, t, d)?;
    let w_of = |i: usize| w[i].as_slice().expect("contiguous");
    // Up-projection(s): rows of X gathered by the plan, written to the expert's slot range.
    let up = |wi: usize, bias: Option<usize>, act: Activation, out: &mut Vec<f32>| -> Result<()> {
        *out = alloc(s * h);
        let (wd, bd) = (w_of(wi), bias.map(w_of));
        grouped(
            Accum::Replace,
            out,
            s,
            h,
            active(plan).map(|(e, r)| {
                Ok(GroupProblem {
                    a: xv.gather_rows(&plan.tokens[r.clone()]).map_err(kernel_err)?,
                    b: view(&wd[e * d * h..(e + 1) * d * h], d, h)?,
                    rows: OutRows::Range(r.start),
                    epilogue: Epilogue { bias: bd.map(|b| &b[e * h..(e + 1) * h]), activation: act, row_scale: None },
                })
            }),
        )
    };
    let isa = Isa::active();
    let mut saved = Saved { z: Vec::new(), zu: Vec::new(), h: Vec::new(), y: Vec::new() };
    match sh.kind {
        ExpertKind::Mlp(act) if training => {
            up(0, Some(1), Activation::Identity, &mut saved.z)?;
            saved.h = match unary_of(act) {
                Some(op) => {
                    let mut hidden = vec![0.0; s * h];
                    unary(isa, op, &saved.z, &mut hidden).map_err(kernel_err)?;
                    hidden
                }
                None => saved.z.clone(),
            };
        }
        ExpertKind::Mlp(act) => up(0, Some(1), act, &mut saved.h)?,
        ExpertKind::SwiGlu => {
            up(0, None, Activation::Identity, &mut saved.z)?;
            up(1, None, Activation::Identity, &mut saved.zu)?;
            let mut gate = alloc(s * h);
            unary(isa, UnaryOp::Silu, &saved.z, &mut gate).map_err(kernel_err)?;
            saved.h = alloc(s * h);
            binary(isa, BinaryOp::Mul, &gate, &saved.zu, &mut saved.h).map_err(kernel_err)?;
            if !training {
                (saved.z, saved.zu) = (Vec::new(), Vec::new());
            }
        }
    }
    // Down-projection: contiguous slot rows in, contiguous slot rows out.
    let (w2, b2) = match sh.kind {
        ExpertKind::Mlp(_) => (w_of(2), Some(w_of(3))),
        ExpertKind::SwiGlu => (w_of(2), None),
    };
    saved.y = alloc(s * d);
    grouped(
        Accum::Replace,
        &mut saved.y,
        s,
        d,
        active(plan).map(|(e, r)| {
            Ok(GroupProblem {
                a: view(&saved.h[r.start * h..r.end * h], r.len(), h)?,
                b: view(&w2[e * h * d..(e + 1) * h * d], h, d)?,
                rows: OutRows::Range(r.start),
                epilogue: Epilogue { bias: b2.map(|b| &b[e * d..(e + 1) * d]), ..Epilogue::default() },
            })
        }),
    )?;
    Ok(saved)
}

/// The elementwise op of an activation (`None` for the identity).
fn unary_of(act: Activation) -> Option<UnaryOp> {
    match act {
        Activation::Relu => Some(UnaryOp::Relu),
        Activation::Gelu => Some(UnaryOp::Gelu),
        Activation::Silu => Some(UnaryOp::Silu),
        Activation::Identity => None,
    }
}

/// For each token, its slots in increasing order (a CSR built by one counting pass).
fn slots_by_token(plan: &DispatchPlan) -> (Vec<usize>, Vec<u32>) {
    let mut start = vec![0usize; plan.num_tokens + 1];
    for &t in &plan.tokens {
        start[t as usize + 1] += 1;
    }
    for i in 0..plan.num_tokens {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut slots = vec![0u32; plan.tokens.len()];
    for (s, &t) in plan.tokens.iter().enumerate() {
        slots[fill[t as usize]] = s as u32;
        fill[t as usize] += 1;
    }
    (start, slots)
}

/// `out[t] = Σ_{slots s of t, in order} scale_s · rows[s]` (`scale` empty: 1), `[T, width]`.
fn combine_scaled(rows: &[f32], scale: &[f32], plan: &DispatchPlan, width: usize) -> Vec<f32> {
    let (start, slots) = slots_by_token(plan);
    let mut out = vec![0.0f32; plan.num_tokens * width];
    out.par_chunks_mut(width.max(1)).enumerate().with_min_len(64).for_each(|(t, row)| {
        for &s in &slots[start[t]..start[t + 1]] {
            let s = s as usize;
            let g = scale.get(s).copied().unwrap_or(1.0);
            for (o, &y) in row.iter_mut().zip(&rows[s * width..(s + 1) * width]) {
                *o += g * y;
            }
        }
    });
    out
}

fn backward_pass(
    sh: Shape,
    x: &[f32],
    gates: &[f32],
    w: &[Tensor],
    plan: &DispatchPlan,
    fwd: &Saved,
    dout: &[f32],
) -> Result<Vec<Option<Tensor>>> {
    let (t, e_count, d, h, s) = (plan.num_tokens, sh.e, sh.d, sh.h, plan.num_kept());
    let isa = Isa::active();
    let w_of = |i: usize| w[i].as_slice().expect("contiguous");
    // Gate gradient and the gated output gradient, per slot.
    let mut dgate = vec![0.0f32; s];
    let mut dy = vec![0.0f32; s * d];
    dy.par_chunks_mut(d).zip(dgate.par_iter_mut()).enumerate().with_min_len(64).for_each(|(slot, (row, dg))| {
        let tok = plan.tokens[slot] as usize;
        let src = &dout[tok * d..(tok + 1) * d];
        *dg = src.iter().zip(&fwd.y[slot * d..(slot + 1) * d]).map(|(a, b)| a * b).sum();
        for (o, &v) in row.iter_mut().zip(src) {
            *o = gates[slot] * v;
        }
    });
    let w2 = w_of(2);
    // dW2[e] = H_eᵀ · dY_e  (K = the expert's rows);  dH = dY_e · W2[e]ᵀ.
    let dw2 = weight_grad(plan, e_count, h, d, |r| Ok(view(&fwd.h[r.start * h..r.end * h], r.len(), h)?.t()), &dy)?;
    let mut dh = vec![0.0f32; s * h];
    slots_times_weight_t(Accum::Replace, &mut dh, plan, &dy, d, w2, h)?;
    // Through the activation: one or two pre-activation gradients, each with its up weight.
    let ups: Vec<(usize, Vec<f32>)> = match sh.kind {
        ExpertKind::Mlp(act) => {
            let mut dz = vec![0.0f32; s * h];
            activation_backward(isa, act, &fwd.z, &dh, &mut dz).map_err(kernel_err)?;
            vec![(0, dz)]
        }
        ExpertKind::SwiGlu => {
            // H = silu(Zg) ⊙ Zu:  dZu = dH ⊙ silu(Zg),  dZg = (dH ⊙ Zu) ⊙ silu'(Zg).
            let mut gate = vec![0.0f32; s * h];
            unary(isa, UnaryOp::Silu, &fwd.z, &mut gate).map_err(kernel_err)?;
            let mut dzu = vec![0.0f32; s * h];
            binary(isa, BinaryOp::Mul, &dh, &gate, &mut dzu).map_err(kernel_err)?;
            let mut dh_zu = vec![0.0f32; s * h];
            binary(isa, BinaryOp::Mul, &dh, &fwd.zu, &mut dh_zu).map_err(kernel_err)?;
            let mut dzg = vec![0.0f32; s * h];
            activation_backward(isa, Activation::Silu, &fwd.z, &dh_zu, &mut dzg).map_err(kernel_err)?;
            vec![(0, dzg), (1, dzu)]
        }
    };
    let xv = view(x, t, d)?;
    let mut dx_slots = vec![0.0f32; s * d];
    let mut up_grads = Vec::new();
    for (n, (wi, dz)) in ups.iter().enumerate() {
        // dW_up[e] = X_eᵀ · dZ_e: Xᵀ with its K dimension gathered by the plan.
        let x_t = |r: std::ops::Range<usize>| Ok(xv.gather_rows(&plan.tokens[r]).map_err(kernel_err)?.t());
        let dw = weight_grad(plan, e_count, d, h, x_t, dz)?;
        // dX per slot = dZ_e · W_up[e]ᵀ (the second up projection adds to the first).
        let accum = if n == 0 { Accum::Replace } else { Accum::Add };
        slots_times_weight_t(accum, &mut dx_slots, plan, dz, h, w_of(*wi), d)?;
        up_grads.push(Tensor::from_vec(dw, &[e_count, d, h])?);
    }
    let dx = Tensor::from_vec(combine_scaled(&dx_slots, &[], plan, d), &[t, d])?;
    let dgate = Tensor::from_vec(dgate, &[s])?;
    let dw2 = Tensor::from_vec(dw2, &[e_count, h, d])?;
    let mut grads = vec![Some(dx), Some(dgate)];
    match sh.kind {
        ExpertKind::Mlp(_) => {
            let db1 = bias_grad(&ups[0].1, plan, e_count, h);
            let db2 = bias_grad(&dy, plan, e_count, d);
            grads.push(Some(up_grads.remove(0)));
            grads.push(Some(Tensor::from_vec(db1, &[e_count, h])?));
            grads.push(Some(dw2));
            grads.push(Some(Tensor::from_vec(db2, &[e_count, d])?));
        }
        ExpertKind::SwiGlu => {
            grads.push(Some(up_grads.remove(0)));
            grads.push(Some(up_grads.remove(0)));
            grads.push(Some(dw2));
        }
    }
    Ok(grads)
}

/// `dW[e] = lhs(e)ᵀ · rhs_e` for every expert (`[E·rows, cols]`, zero for idle experts): a weight
/// gradient, with `lhs(range)` the expert's `[rows, n_e]` left operand (already transposed) and
/// `rhs` the `[S, cols]` slot rows whose range `e` owns.
fn weight_grad<'a>(
    plan: &DispatchPlan,
    e_count: usize,
    rows: usize,
    cols: usize,
    lhs: impl Fn(std::ops::Range<usize>) -> Result<MatRef<'a>>,
    rhs: &[f32],
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; e_count * rows * cols];
    grouped(
        Accum::Replace,
        &mut out,
        e_count * rows,
        cols,
        active(plan).map(|(e, r)| {
            Ok(GroupProblem {
                a: lhs(r.clone())?,
                b: view(&rhs[r.start * cols..r.end * cols], r.len(), cols)?,
                rows: OutRows::Range(e * rows),
                epilogue: Epilogue::default(),
            })
        }),
    )?;
    Ok(out)
}

/// `out[range_e] = accum(a[range_e] · W[e]ᵀ)` for every expert: slot rows `a` (`[S, k]`) through
/// the transpose of expert `e`'s `[n, k]` block of the stacked `w`, into `out` (`[S, n]`).
fn slots_times_weight_t(
    accum: Accum,
    out: &mut [f32],
    plan: &DispatchPlan,
    a: &[f32],
    k: usize,
    w: &[f32],
    n: usize,
) -> Result<()> {
    let s = plan.num_kept();
    grouped(
        accum,
        out,
        s,
        n,
        active(plan).map(|(e, r)| {
            Ok(GroupProblem {
                a: view(&a[r.start * k..r.end * k], r.len(), k)?,
                b: view(&w[e * n * k..(e + 1) * n * k], n, k)?.t(),
                rows: OutRows::Range(r.start),
                epilogue: Epilogue::default(),
            })
        }),
    )
}

/// Per-expert column sums of slot rows: the gradient of a per-expert bias.
fn bias_grad(rows: &[f32], plan: &DispatchPlan, e_count: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; e_count * width];
    out.par_chunks_mut(width).enumerate().for_each(|(e, acc)| {
        for s in plan.expert_range(e) {
            for (a, &v) in acc.iter_mut().zip(&rows[s * width..(s + 1) * width]) {
                *a += v;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests;
