//! The gathered ops: the one differentiable conditional computation every layer here is built
//! from.
//!
//! A [`DispatchPlan`] sorts rows by destination (an expert, a sparse-FF unit, a branch of a
//! hierarchical classifier, the one block of a mixture-of-depths layer): destination `g` owns
//! the slots `offsets[g]..offsets[g+1]`, and slot `s` holds source row `tokens[s]`. Three ops run
//! on that plan, each forward and backward, each touching only the planned rows:
//!
//! ```text
//! grouped_linear  Y[s] = act(A[s] · W[g] + b[g])       A[s] = X[token(s)] (Gathered) or H[s] (Slots)
//! combine         out[t] = Σ_{s: token(s)=t} g_s · Y[s]  in slot order: fixed, no atomics
//! gather          Y[s] = X[token(s)]                     for a block that is not a linear map
//! ```
//!
//! `grouped_linear` is one grouped GEMM over every destination at once (the gather happens
//! inside packing, the bias and activation in the store); a destination with no rows costs
//! nothing. Its backward is conditional too (ScatterMoE, arXiv 2403.08245, has the same shape):
//! `dZ = dY ⊙ act'(Z)`, `dW[g] = A_gᵀ·dZ_g` (Aᵀ with its K dimension gathered), `db[g] = Σ dZ_g`,
//! `dA[s] = dZ[s]·W[g]ᵀ`, and for a gathered input each source row sums its slots in slot order.
//! A gradient is computed only for the inputs that take one.
//!
//! Stacked weights are `[G, in, out]` ([`WeightLayout::InOut`], `x·W`) or `[G, out, in]`
//! ([`WeightLayout::OutIn`]: one row per output unit — PyTorch's `Linear` layout, and the
//! unit-major layout of a sparse feed-forward layer, where picking units reads whole rows).

use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use elide_autodiff::Var;
use elide_kernels::gemm::{
    Accum, Activation, Blocking, Epilogue, Gemm, GroupProblem, MatMut, MatRef, OutRows, PackedB,
};
use elide_kernels::{activation_backward, unary, Isa, UnaryOp};
use elide_tensor::{pool, Tensor};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Where each slot's input row comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowSource {
    /// Slot `s` reads row `plan.tokens()[s]` of a `[T, in]` input, gathered inside the GEMM's
    /// packing (no copy).
    Gathered,
    /// Slot `s` reads row `s` of a `[S, in]` input already in slot order (the output of an
    /// earlier gathered op).
    Slots,
}

pub use elide_autodiff::init::WeightLayout;

/// Block `g` of the stacked weight `w` as the `fan_in × fan_out` right operand of `x·W` (a
/// view, no copy).
fn block(layout: WeightLayout, w: &[f32], g: usize, fan_in: usize, fan_out: usize) -> Result<MatRef<'_>> {
    let size = fan_in * fan_out;
    let data = &w[g * size..(g + 1) * size];
    match layout {
        WeightLayout::InOut => view(data, fan_in, fan_out),
        WeightLayout::OutIn => Ok(view(data, fan_out, fan_in)?.t()),
    }
}

/// A stacked weight of `G` blocks, with an optional `[G, out]` bias.
#[derive(Clone, Copy, Debug)]
pub struct GroupedWeight<'a> {
    /// `[G, in, out]` or `[G, out, in]`, as `layout` says.
    pub weight: &'a Var,
    /// `[G, out]`, or none.
    pub bias: Option<&'a Var>,
    /// How `weight` stores each block.
    pub layout: WeightLayout,
    /// Each block already packed for the forward GEMM ([`pack_blocks`] of the same values),
    /// or none (packed per call).
    pub packed: Option<&'a [PackedB]>,
}

impl<'a> GroupedWeight<'a> {
    /// `weight` in `layout`, without a bias.
    pub fn new(weight: &'a Var, layout: WeightLayout) -> GroupedWeight<'a> {
        GroupedWeight { weight, bias: None, layout, packed: None }
    }

    /// The same weight with a `[G, out]` bias.
    pub fn with_bias(self, bias: &'a Var) -> GroupedWeight<'a> {
        GroupedWeight { bias: Some(bias), ..self }
    }

    /// The same weight with its blocks packed once ([`pack_blocks`] of its current value), so
    /// the forward GEMM reads them instead of packing the weight on every call (inference).
    /// Giving packed blocks of other values gives wrong results.
    pub fn with_packed(self, packed: &'a [PackedB]) -> GroupedWeight<'a> {
        GroupedWeight { packed: Some(packed), ..self }
    }
}

/// Every block of a stacked weight `w` (`[G, in, out]` or `[G, out, in]` as `layout` says)
/// packed as the right operand of the forward GEMM for `blocking`, all in one allocation
/// ([`PackedB::new_each`]): what [`GroupedWeight::with_packed`] takes.
///
/// # Errors
/// [`Error::Shape`] if `w` is not three-dimensional.
pub fn pack_blocks(w: &Tensor, layout: WeightLayout, blocking: Blocking) -> Result<Vec<PackedB>> {
    let shape = w.shape();
    if shape.len() != 3 {
        return Err(Error::shape("pack_blocks", format!("the weight must be [G, ·, ·], got {shape:?}")));
    }
    let (fan_in, fan_out) = layout.fans(shape);
    let w = dense(w);
    let blocks = (0..shape[0]).map(|g| block(layout, data(&w), g, fan_in, fan_out)).collect::<Result<Vec<_>>>()?;
    Ok(PackedB::new_each(&blocks, blocking))
}

pub(crate) fn kernel_err(e: elide_kernels::KernelError) -> Error {
    Error::Tensor(e.into())
}

/// `[rows, cols]` row-major view of `data`.
pub(crate) fn view(data: &[f32], rows: usize, cols: usize) -> Result<MatRef<'_>> {
    MatRef::row_major(data, rows, cols).map_err(kernel_err)
}

/// Destinations that received rows, with their slot ranges.
pub(crate) fn active(plan: &DispatchPlan) -> impl Iterator<Item = (usize, Range<usize>)> + '_ {
    (0..plan.num_experts()).map(|g| (g, plan.expert_range(g))).filter(|(_, r)| !r.is_empty())
}

/// Runs one grouped product per problem into `out` (`[out_rows, cols]` row-major).
fn grouped<'a>(
    accum: Accum,
    out: &mut [f32],
    out_rows: usize,
    cols: usize,
    problems: impl Iterator<Item = Result<GroupProblem<'a>>>,
) -> Result<()> {
    let problems = problems.collect::<Result<Vec<_>>>()?;
    // One problem, or large problems whose A the GEMM packs (a weight gradient's Aᵀ), writing
    // contiguous row ranges, run one after another on the dense driver, which splits each
    // one's rows over the threads and packs A once per row block; the grouped work list splits
    // columns, and each slice would pack all of its problem's A again. An A whose rows are
    // contiguous (tokens, gathered or not; hidden rows) is read in place by either driver, so
    // those problems stay in the grouped list, which shares the threads without a fork per
    // problem: config A's training step (8 experts of ~1024 tokens) took 0.97 of the time it
    // took with every large problem on the dense driver (measured before its forward moved to
    // per-expert tasks, `mlp.rs`; its backward still runs here). The choice depends on the shapes
    // alone, never on the thread count.
    let single = problems.len() == 1;
    let ranges: Option<Vec<usize>> = problems
        .iter()
        .map(|p| match p.rows {
            OutRows::Range(start)
                if (single
                    || (p.a.rows().saturating_mul(p.a.cols()).saturating_mul(cols) >= DENSE_MIN_MACS
                        && !p.a.rows_contiguous()))
                    && start + p.a.rows() <= out_rows =>
            {
                Some(start)
            }
            _ => None,
        })
        .collect();
    if let Some(starts) = ranges {
        let mut order: Vec<usize> = (0..problems.len()).collect();
        order.sort_by_key(|&i| starts[i]);
        let mut rest = &mut out[..];
        let mut at = 0;
        for i in order {
            let (p, start) = (&problems[i], starts[i]);
            if start < at {
                // Overlapping ranges: let the grouped driver refuse them by name.
                return run_grouped(accum, out_rows, cols, out, &problems);
            }
            let tail = std::mem::take(&mut rest);
            let (_, tail) = tail.split_at_mut((start - at) * cols);
            let (mine, tail) = tail.split_at_mut(p.a.rows() * cols);
            rest = tail;
            at = start + p.a.rows();
            let c = MatMut::row_major(mine, p.a.rows(), cols).map_err(kernel_err)?;
            let gemm = Gemm { accum, epilogue: p.epilogue, ..Gemm::default() };
            match p.packed_b {
                Some(packed) => gemm.run_packed(c, p.a, p.b, packed),
                None => gemm.run(c, p.a, p.b),
            }
            .map_err(kernel_err)?;
        }
        return Ok(());
    }
    run_grouped(accum, out_rows, cols, out, &problems)
}

/// Multiply-adds each problem needs before the problems run one by one on the dense driver
/// instead of as one grouped work list: a thousand-token expert's 512 × 1024 weight (2^29),
/// not a 64-expert layer's weight gradient of 512 rows but 128 tokens of K (2^24), which
/// forked and joined the threads once per expert (1.6x slower: 9.3 -> 5.8 ms).
const DENSE_MIN_MACS: usize = 1 << 26;

fn run_grouped(
    accum: Accum,
    out_rows: usize,
    cols: usize,
    out: &mut [f32],
    problems: &[GroupProblem<'_>],
) -> Result<()> {
    let out = MatMut::row_major(out, out_rows, cols).map_err(kernel_err)?;
    Gemm { accum, ..Gemm::default() }.run_grouped(out, problems).map_err(kernel_err)
}

/// The contiguous data of a tensor (a copy only if it is a strided view).
fn dense(t: &Tensor) -> Tensor {
    t.contiguous()
}

fn data(t: &Tensor) -> &[f32] {
    t.as_slice().expect("made contiguous by `dense`")
}

/// The shapes [`grouped_linear`] checked, and what it saves for the backward pass.
#[derive(Clone, Copy)]
pub(crate) struct LinearShape {
    pub(crate) source: RowSource,
    pub(crate) layout: WeightLayout,
    pub(crate) activation: Activation,
    pub(crate) fan_in: usize,
    pub(crate) fan_out: usize,
}

/// `Y[s] = act(A[s]·W[g(s)] + b[g(s)])` for every planned slot: one grouped GEMM over all
/// destinations, `[S, out]` slot rows out. `x` is `[T, in]` for [`RowSource::Gathered`]
/// (`T = plan.num_tokens()`) or `[S, in]` for [`RowSource::Slots`] (`S = plan.num_kept()`).
///
/// At inference the activation is fused into the GEMM's store; while recording, the
/// pre-activation is kept for the backward pass. Differentiable in `x`, the weight and the bias.
///
/// # Errors
/// [`Error::Shape`] naming the shapes if `x`, the weight (`[G, in, out]` or `[G, out, in]` with
/// `G = plan.num_experts()`) or the bias (`[G, out]`) do not fit the plan and each other.
pub fn grouped_linear(
    x: &Var,
    source: RowSource,
    plan: &Arc<DispatchPlan>,
    w: GroupedWeight<'_>,
    activation: Activation,
) -> Result<Var> {
    const OP: &str = "grouped_linear";
    let (g, s) = (plan.num_experts(), plan.num_kept());
    let ws = w.weight.shape();
    if ws.len() != 3 || ws[0] != g {
        return Err(Error::shape(
            OP,
            format!("the weight must be [{g}, ·, ·] (one block per destination of the plan), got {ws:?}"),
        ));
    }
    let (fan_in, fan_out) = w.layout.fans(ws);
    let rows = match source {
        RowSource::Gathered => plan.num_tokens(),
        RowSource::Slots => s,
    };
    if x.shape() != [rows, fan_in] {
        let what = match source {
            RowSource::Gathered => "tokens of the plan",
            RowSource::Slots => "slots of the plan",
        };
        return Err(Error::shape(
            OP,
            format!("x must be [{rows}, {fan_in}] ({what}, the weight's input width), got {:?}", x.shape()),
        ));
    }
    if let Some(b) = w.bias.filter(|b| b.shape() != [g, fan_out]) {
        return Err(Error::shape(OP, format!("the bias must be [{g}, {fan_out}], got {:?}", b.shape())));
    }
    if let Some(p) = w.packed.filter(|p| p.len() != g) {
        return Err(Error::shape(OP, format!("{} packed blocks for a weight of {g} blocks", p.len())));
    }
    let shape = LinearShape { source, layout: w.layout, activation, fan_in, fan_out };
    let mut parents = vec![x, w.weight];
    parents.extend(w.bias);
    let training = Var::records(&parents);
    let (xv, wv) = (dense(x.value()), dense(w.weight.value()));
    let bv = w.bias.map(|b| dense(b.value()));
    // While recording, the GEMM stores the pre-activation and the activation runs after it.
    let store_act = if training { Activation::Identity } else { activation };
    // Pooled buffers (`pool::take`: contents unspecified) wherever the GEMM or a kernel writes
    // every element; zeroed ones where a sum accumulates.
    let mut z = pool::take(s * fan_out);
    linear_forward(&shape, data(&xv), data(&wv), bv.as_ref().map(data), w.packed, plan, store_act, &mut z)?;
    let (out, saved_z) = match (training, unary_of(activation)) {
        (true, Some(op)) => {
            let mut h = pool::take(s * fan_out);
            unary(Isa::try_active().map_err(kernel_err)?, op, &z, &mut h).map_err(kernel_err)?;
            // Kept as a tensor so its buffer returns to the pool when the tape drops it.
            (h, Some(Tensor::from_vec(z, &[s, fan_out])?))
        }
        _ => (z, None),
    };
    let out = Tensor::from_vec(out, &[s, fan_out])?;
    recorded_linear(x, plan, &w, shape, out, saved_z, (xv, wv))
}

/// The output of [`grouped_linear`] (computed by its caller, `[S, out]`, with the
/// pre-activation `saved_z` when there is an activation, from the contiguous values `xv`, `wv`
/// of `x` and the weight) as a `Var` whose backward is that op's, or a constant when none of
/// `x`, the weight and the bias records.
pub(crate) fn recorded_linear(
    x: &Var,
    plan: &Arc<DispatchPlan>,
    w: &GroupedWeight<'_>,
    shape: LinearShape,
    out: Tensor,
    saved_z: Option<Tensor>,
    (xv, wv): (Tensor, Tensor),
) -> Result<Var> {
    const OP: &str = "grouped_linear";
    let mut parents = vec![x, w.weight];
    parents.extend(w.bias);
    if !Var::records(&parents) {
        return Ok(Var::constant(out));
    }
    let wants = (Var::records(&[x]), Var::records(&[w.weight]), w.bias.is_some_and(|b| Var::records(&[b])));
    let has_bias = w.bias.is_some();
    let plan = plan.clone();
    Ok(Var::from_op(OP, out, &parents, move |dy| {
        let dy = dense(dy);
        let through_act = match &saved_z {
            Some(z) => {
                let mut dz = pool::take(z.numel());
                activation_backward(
                    Isa::try_active().map_err(kernel_err)?,
                    shape.activation,
                    data(z),
                    data(&dy),
                    &mut dz,
                )
                .map_err(kernel_err)?;
                Some(dz)
            }
            None => None,
        };
        let dz = through_act.as_deref().unwrap_or(data(&dy));
        let grads = linear_backward(&shape, data(&xv), data(&wv), &plan, dz, wants)?;
        if let Some(dz) = through_act {
            pool::give(dz);
        }
        let mut out = vec![grads.dx, grads.dw];
        if has_bias {
            out.push(grads.db);
        }
        Ok(out)
    }))
}

/// The forward grouped GEMM of [`grouped_linear`] into `out` (`[S, out]`).
#[allow(clippy::too_many_arguments)]
fn linear_forward(
    sh: &LinearShape,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    packed: Option<&[PackedB]>,
    plan: &DispatchPlan,
    act: Activation,
    out: &mut [f32],
) -> Result<()> {
    let (fi, fo) = (sh.fan_in, sh.fan_out);
    grouped(
        Accum::Replace,
        out,
        plan.num_kept(),
        fo,
        active(plan).map(|(g, r)| {
            Ok(GroupProblem {
                a: source_rows(sh.source, x, fi, plan, r.clone())?,
                b: block(sh.layout, w, g, fi, fo)?,
                rows: OutRows::Range(r.start),
                epilogue: Epilogue { bias: b.map(|b| &b[g * fo..(g + 1) * fo]), activation: act, row_scale: None },
                packed_b: packed.map(|p| &p[g]),
            })
        }),
    )
}

/// The rows of the slots `r` as a left operand `[r.len(), width]`: rows of `x` gathered by the
/// plan (inside packing), or the slot range of `x` itself.
fn source_rows<'a>(
    source: RowSource,
    x: &'a [f32],
    width: usize,
    plan: &'a DispatchPlan,
    r: Range<usize>,
) -> Result<MatRef<'a>> {
    match source {
        RowSource::Gathered => view(x, plan.num_tokens(), width)?.gather_rows(&plan.tokens()[r]).map_err(kernel_err),
        RowSource::Slots => view(&x[r.start * width..r.end * width], r.len(), width),
    }
}

/// The gradients of [`grouped_linear`] (each `None` when not asked for).
struct LinearGrads {
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    db: Option<Tensor>,
}

/// `dW[g] = A_gᵀ·dZ_g`, `db[g] = Σ dZ_g`, `dA[s] = dZ[s]·W[g]ᵀ` (summed per source row for a
/// gathered input), for the inputs `wants = (x, w, b)` that take a gradient.
fn linear_backward(
    sh: &LinearShape,
    x: &[f32],
    w: &[f32],
    plan: &DispatchPlan,
    dz: &[f32],
    wants: (bool, bool, bool),
) -> Result<LinearGrads> {
    let (g_count, s, fi, fo) = (plan.num_experts(), plan.num_kept(), sh.fan_in, sh.fan_out);
    let dz_of = |r: Range<usize>| view(&dz[r.start * fo..r.end * fo], r.len(), fo);
    let mut grads = LinearGrads { dx: None, dw: None, db: None };
    if wants.1 {
        // Every active destination's block is overwritten (Accum::Replace over all its
        // elements), so only idle destinations' blocks are zeroed: zero-filling the whole
        // gradient first was 64 MiB of writes per step at 64 experts.
        let mut dw = pool::take(g_count * fi * fo);
        for (g, block) in dw.chunks_mut((fi * fo).max(1)).enumerate() {
            if plan.expert_range(g).is_empty() {
                block.fill(0.0);
            }
        }
        match sh.layout {
            // [G, in, out]: dW[g] = A_gᵀ · dZ_g, written to rows g·in.. of a [G·in, out] buffer.
            WeightLayout::InOut => grouped(
                Accum::Replace,
                &mut dw,
                g_count * fi,
                fo,
                active(plan).map(|(g, r)| {
                    Ok(GroupProblem {
                        a: source_rows(sh.source, x, fi, plan, r.clone())?.t(),
                        b: dz_of(r)?,
                        rows: OutRows::Range(g * fi),
                        epilogue: Epilogue::default(),
                        packed_b: None,
                    })
                }),
            )?,
            // [G, out, in]: dW[g] = dZ_gᵀ · A_g, rows g·out.. of a [G·out, in] buffer.
            WeightLayout::OutIn => grouped(
                Accum::Replace,
                &mut dw,
                g_count * fo,
                fi,
                active(plan).map(|(g, r)| {
                    Ok(GroupProblem {
                        a: dz_of(r.clone())?.t(),
                        b: source_rows(sh.source, x, fi, plan, r)?,
                        rows: OutRows::Range(g * fo),
                        epilogue: Epilogue::default(),
                        packed_b: None,
                    })
                }),
            )?,
        }
        let shape = sh.layout.shape(g_count, fi, fo);
        grads.dw = Some(Tensor::from_vec(dw, &shape)?);
    }
    if wants.2 {
        grads.db = Some(Tensor::from_vec(bias_grad(dz, plan, fo), &[g_count, fo])?);
    }
    if wants.0 {
        // dA[s] = dZ[s] · W[g]ᵀ: W's block read transposed, whatever its layout.
        let mut da = pool::take(s * fi);
        grouped(
            Accum::Replace,
            &mut da,
            s,
            fi,
            active(plan).map(|(g, r)| {
                Ok(GroupProblem {
                    a: dz_of(r.clone())?,
                    b: block(sh.layout, w, g, fi, fo)?.t(),
                    rows: OutRows::Range(r.start),
                    epilogue: Epilogue::default(),
                    packed_b: None,
                })
            }),
        )?;
        grads.dx = Some(match sh.source {
            RowSource::Gathered => {
                let dx = combine_rows(&da, &[], plan, fi)?;
                pool::give(da);
                Tensor::from_vec(dx, &[plan.num_tokens(), fi])?
            }
            RowSource::Slots => Tensor::from_vec(da, &[s, fi])?,
        });
    }
    Ok(grads)
}

/// The elementwise op of an activation (`None` for the identity).
pub(crate) fn unary_of(act: Activation) -> Option<UnaryOp> {
    match act {
        Activation::Relu => Some(UnaryOp::Relu),
        Activation::Gelu => Some(UnaryOp::Gelu),
        Activation::GeluErf => Some(UnaryOp::GeluErf),
        Activation::Silu => Some(UnaryOp::Silu),
        Activation::Identity => None,
    }
}

/// Per-destination column sums of slot rows: the gradient of a per-destination bias.
fn bias_grad(rows: &[f32], plan: &DispatchPlan, width: usize) -> Vec<f32> {
    let mut out = pool::take_zeroed(plan.num_experts() * width);
    out.par_chunks_mut(width.max(1)).enumerate().for_each(|(g, acc)| {
        for s in plan.expert_range(g) {
            for (a, &v) in acc.iter_mut().zip(&rows[s * width..(s + 1) * width]) {
                *a += v;
            }
        }
    });
    out
}

mod combine;
mod mlp;

use combine::combine_rows;
pub(crate) use combine::combine_with_value;
pub use combine::{combine, combine_onto, gather};
#[cfg(test)]
pub(crate) use mlp::recorded_mlp;
pub(crate) use mlp::{expert_mlp, expert_mlp_recorded, MlpSink, MlpWeights};

#[cfg(test)]
mod tests;
