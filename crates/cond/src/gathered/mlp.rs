//! An MLP expert block with each destination's two products back to back in one task, instead
//! of two [`grouped_linear`](super::grouped_linear) ops: at inference, and while recording
//! (keeping the hidden rows for those two ops' backward).

use super::{
    active, block, data, dense, kernel_err, recorded_linear, source_rows, unary_of, view, GroupedWeight, LinearShape,
    RowSource,
};
use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use elide_autodiff::init::WeightLayout;
use elide_autodiff::Var;
use elide_kernels::gemm::{Activation, Epilogue, Gemm, GroupProblem, MatMut, OutRows, PackedB};
use elide_kernels::threading::Par;
use elide_kernels::{unary, Isa};
use elide_tensor::{pool, Tensor};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Arc;

/// Multiply-adds below which [`expert_mlp`] runs on the calling thread: the GEMM driver's own
/// threshold for forking.
const PAR_MIN_MACS: usize = 1 << 20;

/// The weights of an MLP expert block: `[G, in, hidden]` and `[G, hidden, out]` with their
/// `[G, ·]` biases, and each destination's blocks packed ([`super::pack_blocks`]), if they are.
pub(crate) struct MlpWeights<'a> {
    pub(crate) w1: &'a Tensor,
    pub(crate) b1: &'a Tensor,
    pub(crate) w2: &'a Tensor,
    pub(crate) b2: &'a Tensor,
    pub(crate) packed: Option<(&'a [PackedB], &'a [PackedB])>,
}

/// One destination's work: its slot rows of the output (and, when they are kept, of the hidden
/// activations and pre-activations), in slot order, and the destination after it, whose
/// weights its task fetches last.
struct Task<'a> {
    e: usize,
    rows: Range<usize>,
    out: &'a mut [f32],
    hidden: Option<&'a mut [f32]>,
    pre: Option<&'a mut [f32]>,
    next: Option<usize>,
}

/// [`split_rows`] of a buffer that may not be kept: `None` for every range then.
fn split_kept<'a>(buf: Option<&'a mut [f32]>, width: usize, ranges: &[Range<usize>]) -> Vec<Option<&'a mut [f32]>> {
    match buf {
        Some(buf) => split_rows(buf, width, ranges).into_iter().map(Some).collect(),
        None => ranges.iter().map(|_| None).collect(),
    }
}

/// What [`expert_mlp`] returns: the `[S, out]` slot rows, and when asked to keep them, the
/// `[S, hidden]` activations and, for an activation other than the identity, pre-activations.
pub(crate) struct MlpOutput {
    pub(crate) y: Tensor,
    pub(crate) hidden: Option<Tensor>,
    pub(crate) pre: Option<Tensor>,
}

/// `buf` (`[Σ rows, width]` in slot order) cut into the rows of each range, which are
/// increasing and disjoint.
fn split_rows<'a>(buf: &'a mut [f32], width: usize, ranges: &[Range<usize>]) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(ranges.len());
    let (mut rest, mut at) = (buf, 0);
    for r in ranges {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((r.start - at) * width);
        let (mine, tail) = tail.split_at_mut(r.len() * width);
        (rest, at) = (tail, r.end);
        parts.push(mine);
    }
    parts
}

/// `Y[s] = act(X[token(s)]·W1[g] + b1[g])·W2[g] + b2[g]`, `[S, out]` slot rows out, with each
/// destination's up- and down-projection back to back in one task, its hidden rows in a buffer
/// of its own, or, with `keep`, in `[S, hidden]` buffers returned for a backward pass (the
/// pre-activations stored by the GEMM, the activation applied to the task's rows after it, as
/// [`super::grouped_linear`] does while recording).
///
/// Two grouped ops run two parallel phases with a join between them and write every hidden
/// row out before reading it back. Here the threads part once per call (for a decode batch,
/// the wake-ups and idle spinning of the second phase measured about a fifth of a call's CPU
/// time), and a destination's hidden rows are read back while they are still in cache. While
/// one product runs, its last tiles fetch the weights the task reads next (the down-projection
/// during the up-projection, the next destination's up-projection during the down-projection),
/// which the grouped ops do between their own work items.
///
/// Each destination is computed by one task whatever the thread count, with the arithmetic of
/// the two grouped ops, so results are bit-identical to them. The threads share whole
/// destinations, so the caller keeps this for plans with enough destinations of similar sizes.
///
/// # Errors
/// [`Error::Shape`] if the weights or `x` (`[T, in]`) do not fit the plan and each other, or
/// packed blocks are not one per destination.
pub(crate) fn expert_mlp(
    x: &Tensor,
    plan: &DispatchPlan,
    w: &MlpWeights<'_>,
    act: Activation,
    keep: bool,
) -> Result<MlpOutput> {
    const OP: &str = "expert_mlp";
    let g = plan.num_experts();
    let (ws1, ws2) = (w.w1.shape(), w.w2.shape());
    let fits = ws1.len() == 3 && ws2.len() == 3 && ws1[0] == g && ws2[0] == g && ws2[1] == ws1[2];
    let (fi, hidden, fo) = if fits { (ws1[1], ws1[2], ws2[2]) } else { (0, 0, 0) };
    if !fits || x.shape() != [plan.num_tokens(), fi] || w.b1.shape() != [g, hidden] || w.b2.shape() != [g, fo] {
        return Err(Error::shape(
            OP,
            format!(
                "x {:?}, w1 {ws1:?}, b1 {:?}, w2 {ws2:?}, b2 {:?} do not chain for {g} destinations",
                x.shape(),
                w.b1.shape(),
                w.b2.shape()
            ),
        ));
    }
    if let Some((p1, p2)) = w.packed.filter(|(p1, p2)| p1.len() != g || p2.len() != g) {
        return Err(Error::shape(OP, format!("{} and {} packed blocks for {g} destinations", p1.len(), p2.len())));
    }
    let (xv, w1v, b1v, w2v, b2v) = (dense(x), dense(w.w1), dense(w.b1), dense(w.w2), dense(w.b2));
    let (xd, w1d, b1d, w2d, b2d) = (data(&xv), data(&w1v), data(&b1v), data(&w2v), data(&b2v));
    let s_rows = plan.num_kept();
    let mut out = pool::take(s_rows * fo);
    let mut hidden_rows = keep.then(|| pool::take(s_rows * hidden));
    let unary_op = unary_of(act);
    let mut pre_rows = (keep && unary_op.is_some()).then(|| pool::take(s_rows * hidden));
    let ranges: Vec<(usize, Range<usize>)> = active(plan).collect();
    let slots: Vec<Range<usize>> = ranges.iter().map(|(_, r)| r.clone()).collect();
    let (hidden_parts, pre_parts) =
        (split_kept(hidden_rows.as_deref_mut(), hidden, &slots), split_kept(pre_rows.as_deref_mut(), hidden, &slots));
    let mut tasks: Vec<Task<'_>> = Vec::with_capacity(ranges.len());
    let outs = split_rows(&mut out, fo, &slots);
    for ((((e, r), mine), hidden), pre) in ranges.iter().cloned().zip(outs).zip(hidden_parts).zip(pre_parts) {
        if let Some(prev) = tasks.last_mut() {
            prev.next = Some(e);
        }
        tasks.push(Task { e, rows: r, out: mine, hidden, pre, next: None });
    }
    let isa = Isa::try_active().map_err(kernel_err)?;
    // Each destination's GEMMs run on its task's thread. Below the GEMM driver's threshold for
    // a fork (a small model's decode step), one thread runs them all: waking the pool would
    // cost more than the work (measured 2× slower at d 64, 8 experts of 128).
    let gemm = Gemm { par: Par::Seq, ..Gemm::default() };
    let macs: usize = tasks.iter().map(|task| task.rows.len() * hidden * (fi + fo)).sum();
    // What the up- (0) or down-projection (1) of destination `e` reads first.
    let first_read = |which: usize, e: usize| -> &[f32] {
        match (w.packed, which) {
            (Some(p), 0) => p.0[e].first_panel(),
            (Some(p), _) => p.1[e].first_panel(),
            (None, 0) => block(WeightLayout::InOut, w1d, e, fi, hidden).map_or(&[], |b| gemm.first_read(b)),
            (None, _) => block(WeightLayout::InOut, w2d, e, hidden, fo).map_or(&[], |b| gemm.first_read(b)),
        }
    };
    let run = |Task { e, rows: r, out: mine, hidden: kept, pre, next }: Task<'_>| -> Result<()> {
        let m = r.len();
        let mut local = None;
        let h: &mut [f32] = match kept {
            Some(h) => h,
            None => local.insert(pool::take(m * hidden)),
        };
        let stored_act = if pre.is_some() { Activation::Identity } else { act };
        let up = GroupProblem {
            a: source_rows(RowSource::Gathered, xd, fi, plan, r)?,
            b: block(WeightLayout::InOut, w1d, e, fi, hidden)?,
            rows: OutRows::Range(0),
            epilogue: Epilogue {
                bias: Some(&b1d[e * hidden..(e + 1) * hidden]),
                activation: stored_act,
                row_scale: None,
            },
            packed_b: w.packed.map(|p| &p.0[e]),
        };
        match (pre, unary_op) {
            (Some(z), Some(op)) => {
                let z_out = MatMut::row_major(z, m, hidden).map_err(kernel_err)?;
                gemm.run_grouped_then(z_out, &[up], first_read(1, e)).map_err(kernel_err)?;
                unary(isa, op, z, h).map_err(kernel_err)?;
            }
            _ => {
                let h_out = MatMut::row_major(h, m, hidden).map_err(kernel_err)?;
                gemm.run_grouped_then(h_out, &[up], first_read(1, e)).map_err(kernel_err)?;
            }
        }
        let h: &[f32] = h;
        let down = GroupProblem {
            a: view(h, m, hidden)?,
            b: block(WeightLayout::InOut, w2d, e, hidden, fo)?,
            rows: OutRows::Range(0),
            epilogue: Epilogue {
                bias: Some(&b2d[e * fo..(e + 1) * fo]),
                activation: Activation::Identity,
                row_scale: None,
            },
            packed_b: w.packed.map(|p| &p.1[e]),
        };
        let y_out = MatMut::row_major(mine, m, fo).map_err(kernel_err)?;
        gemm.run_grouped_then(y_out, &[down], next.map_or(&[], |n| first_read(0, n))).map_err(kernel_err)?;
        if let Some(h) = local {
            pool::give(h);
        }
        Ok(())
    };
    if macs < PAR_MIN_MACS {
        tasks.into_iter().try_for_each(run)?;
    } else {
        tasks.into_par_iter().try_for_each(run)?;
    }
    let rows_of = |buf: Option<Vec<f32>>| buf.map(|b| Tensor::from_vec(b, &[s_rows, hidden])).transpose();
    Ok(MlpOutput { y: Tensor::from_vec(out, &[s_rows, fo])?, hidden: rows_of(hidden_rows)?, pre: rows_of(pre_rows)? })
}

/// [`expert_mlp`] while recording: the same per-destination tasks, its result a `Var` whose
/// backward is that of the two [`super::grouped_linear`] ops it replaces (bit-identical to
/// them, forward and backward). `w` is `[w1, b1, w2, b2]`, weights packed per call (they
/// change every training step).
///
/// # Errors
/// As [`expert_mlp`].
pub(crate) fn expert_mlp_recorded(x: &Var, plan: &Arc<DispatchPlan>, w: [&Var; 4], act: Activation) -> Result<Var> {
    let [w1, b1, w2, b2] = w;
    let values = MlpWeights { w1: w1.value(), b1: b1.value(), w2: w2.value(), b2: b2.value(), packed: None };
    let MlpOutput { y, hidden, pre } = expert_mlp(x.value(), plan, &values, act, true)?;
    let hidden = hidden.expect("kept when asked");
    let (fi, width, fo) = (w1.shape()[1], w1.shape()[2], w2.shape()[2]);
    let up = GroupedWeight::new(w1, WeightLayout::InOut).with_bias(b1);
    let shape = LinearShape {
        source: RowSource::Gathered,
        layout: WeightLayout::InOut,
        activation: act,
        fan_in: fi,
        fan_out: width,
    };
    let h = recorded_linear(x, plan, &up, shape, hidden.clone(), pre, (dense(x.value()), dense(w1.value())))?;
    let down = GroupedWeight::new(w2, WeightLayout::InOut).with_bias(b2);
    let shape = LinearShape {
        source: RowSource::Slots,
        layout: WeightLayout::InOut,
        activation: Activation::Identity,
        fan_in: width,
        fan_out: fo,
    };
    recorded_linear(&h, plan, &down, shape, y, None, (hidden, dense(w2.value())))
}
