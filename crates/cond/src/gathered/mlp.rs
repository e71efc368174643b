//! An MLP expert block with each destination's two products back to back in one task, instead
//! of two [`grouped_linear`](super::grouped_linear) ops: at inference, and while recording
//! (keeping the hidden rows for those two ops' backward).

use super::{
    active, block, combine_rows, data, dense, kernel_err, recorded_linear, source_rows, unary_of, view, GroupedWeight,
    LinearShape, RowSource,
};
use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use elide_autodiff::init::WeightLayout;
use elide_autodiff::Var;
use elide_kernels::gemm::{Activation, Epilogue, Gemm, GroupProblem, MatMut, MatRef, OutRows, PackedB};
use elide_kernels::shared_rows::SharedRowSums;
use elide_kernels::threading::{for_each_task, Par};
use elide_kernels::{activation_backward, unary, Isa};
use elide_tensor::{pool, Tensor};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// Multiply-adds below which [`expert_mlp`] runs on the calling thread: the GEMM driver's own
/// threshold for forking.
const PAR_MIN_MACS: usize = 1 << 20;

/// Multiply-adds below which [`expert_mlp`]'s calling thread runs tasks itself
/// ([`for_each_task`]) instead of handing them all to rayon's pool: a decode step, whose
/// weights stream from memory in a few hundred microseconds, of which the pool's wake-ups took
/// about a tenth (config A at one token: 0.26 → 0.23 ms a call, wall-clock and CPU time alike,
/// interleaved in one process). Larger calls keep rayon's loop: they follow phases that leave
/// both of the pool's workers awake, so a working caller made three threads on two cores (at
/// config A's 4096 tokens a helper started 2–3 ms late and the forward took 1.1× as long).
const CALLER_TAKES_PART_MAX_MACS: usize = 1 << 26;

/// The weights of an MLP expert block: `[G, in, hidden]` and `[G, hidden, out]` with their
/// `[G, ·]` biases, and each destination's blocks packed ([`super::pack_blocks`]), if they are.
pub(crate) struct MlpWeights<'a> {
    pub(crate) w1: &'a Tensor,
    pub(crate) b1: &'a Tensor,
    pub(crate) w2: &'a Tensor,
    pub(crate) b2: &'a Tensor,
    pub(crate) packed: Option<(&'a [PackedB], &'a [PackedB])>,
}

/// Where [`expert_mlp`] puts the slot rows it computes.
#[derive(Clone, Copy)]
pub(crate) enum MlpSink<'s, 'o> {
    /// Returned as `[S, out]` slot rows; with `keep`, the hidden rows too.
    Slots {
        /// Whether to return the hidden rows (and pre-activations) for a backward pass.
        keep: bool,
    },
    /// Each slot row times its gate (`gates`, `[S]`) added onto its token's row of `out` by the
    /// task that computed it, while the row is still in that task's cache: the combine, with
    /// its bits when no token has more than two slots (see [`SharedRowSums`]).
    Combine {
        /// The `[T, out]` output the tasks add into.
        out: &'s SharedRowSums<'o>,
        /// Each slot's gate.
        gates: &'s [f32],
        /// Whether to return the slot rows and the hidden rows too, for a backward pass.
        keep: bool,
    },
}

/// One destination's work: its slot rows of the output (none when they only go to a combine),
/// and when they are kept, of the hidden activations and pre-activations, in slot order; and
/// the destination after it, whose weights its task fetches last.
struct Task<'a> {
    e: usize,
    rows: Range<usize>,
    out: Option<&'a mut [f32]>,
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

/// What [`expert_mlp`] returns: the `[S, out]` slot rows (none when they only went to a
/// combine, [`MlpSink::Combine`] without `keep`), and when asked to keep them, the
/// `[S, hidden]` activations and, for an activation other than the identity, pre-activations.
pub(crate) struct MlpOutput {
    pub(crate) y: Option<Tensor>,
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

/// `Y[s] = act(X[token(s)]·W1[g] + b1[g])·W2[g] + b2[g]`, with each destination's up- and
/// down-projection back to back in one task, its hidden rows in a buffer of its own, or, with
/// `keep` (either sink), in `[S, hidden]` buffers returned for a backward pass
/// (the pre-activations stored by the GEMM, the activation applied to the task's rows after it,
/// as [`super::grouped_linear`] does while recording). The `[S, out]` slot rows are returned
/// ([`MlpSink::Slots`]), or each task adds its gated rows onto their tokens' rows of a shared
/// output while they are still in its cache ([`MlpSink::Combine`]), which saves writing all
/// `S` rows out and reading them back.
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
/// [`Error::Shape`] if the weights or `x` (`[T, in]`) do not fit the plan and each other, packed
/// blocks are not one per destination, or a combine's output or gates do not fit the plan; the
/// combine's [`SharedRowSums::add_scaled`] errors (a token with more than two slots).
pub(crate) fn expert_mlp(
    x: &Tensor,
    plan: &DispatchPlan,
    w: &MlpWeights<'_>,
    act: Activation,
    sink: MlpSink<'_, '_>,
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
    let keep = matches!(sink, MlpSink::Slots { keep: true } | MlpSink::Combine { keep: true, .. });
    if let MlpSink::Combine { out, gates, .. } = sink {
        if out.num_rows() != plan.num_tokens() || out.cols() != fo || gates.len() != s_rows {
            let detail = format!(
                "a combine into [{}, {}] with {} gates for {} tokens of width {fo} and {s_rows} slots",
                out.num_rows(),
                out.cols(),
                gates.len(),
                plan.num_tokens()
            );
            return Err(Error::shape(OP, detail));
        }
    }
    let mut out = (keep || matches!(sink, MlpSink::Slots { .. })).then(|| pool::take(s_rows * fo));
    let mut hidden_rows = keep.then(|| pool::take(s_rows * hidden));
    let unary_op = unary_of(act);
    let mut pre_rows = (keep && unary_op.is_some()).then(|| pool::take(s_rows * hidden));
    let ranges: Vec<(usize, Range<usize>)> = active(plan).collect();
    let slots: Vec<Range<usize>> = ranges.iter().map(|(_, r)| r.clone()).collect();
    let (hidden_parts, pre_parts) =
        (split_kept(hidden_rows.as_deref_mut(), hidden, &slots), split_kept(pre_rows.as_deref_mut(), hidden, &slots));
    let mut tasks: Vec<Task<'_>> = Vec::with_capacity(ranges.len());
    let outs = split_kept(out.as_deref_mut(), fo, &slots);
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
            a: source_rows(RowSource::Gathered, xd, fi, plan, r.clone())?,
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
        let mut local_y = None;
        let y: &mut [f32] = match mine {
            Some(y) => y,
            None => local_y.insert(pool::take(m * fo)),
        };
        let y_out = MatMut::row_major(y, m, fo).map_err(kernel_err)?;
        gemm.run_grouped_then(y_out, &[down], next.map_or(&[], |n| first_read(0, n))).map_err(kernel_err)?;
        if let MlpSink::Combine { out, gates, .. } = sink {
            out.add_scaled(isa, y, &plan.tokens()[r.clone()], &gates[r]).map_err(kernel_err)?;
        }
        for buf in [local, local_y].into_iter().flatten() {
            pool::give(buf);
        }
        Ok(())
    };
    if macs < PAR_MIN_MACS {
        tasks.into_iter().try_for_each(run)?;
    } else if macs < CALLER_TAKES_PART_MAX_MACS {
        run_each(tasks, run)?;
    } else {
        tasks.into_par_iter().try_for_each(run)?;
    }
    let rows_of = |buf: Option<Vec<f32>>| buf.map(|b| Tensor::from_vec(b, &[s_rows, hidden])).transpose();
    let y = out.map(|out| Tensor::from_vec(out, &[s_rows, fo])).transpose()?;
    Ok(MlpOutput { y, hidden: rows_of(hidden_rows)?, pre: rows_of(pre_rows)? })
}

/// Mean rows per active destination from which [`expert_mlp_recorded`] also runs the backward
/// pass per destination. Against the two ops' backward (`elide bench moe --cpu-time`, three
/// alternating pairs): 0.96–0.97 of config A's training step (~1024 rows per expert), but
/// 0.97–1.05 of config B's (~128 rows), whose many small products share out better as grouped
/// lists.
const FUSED_BACKWARD_MIN_ROWS: usize = 512;

/// [`expert_mlp`] while recording: the same per-destination tasks forward. Backward, for
/// destinations of [`FUSED_BACKWARD_MIN_ROWS`] rows or more on average, each destination's
/// gradients in one task too (`dH = dY·W2ᵀ`, `dZ = act'(Z) ⊙ dH`, the two weight gradients,
/// the two bias gradients and `dZ·W1ᵀ`), so `dH` and `dZ` stay in the task's cache instead of
/// making a round trip to memory between separate passes; for smaller ones, the backward of
/// the two [`super::grouped_linear`] ops. The result is the `[S, out]` slot rows; every GEMM and
/// sum runs in the order of those two ops, so forward and gradients have their bits either way.
/// `w` is `[w1, b1, w2, b2]`, weights packed per call (they change every training step). With
/// `combine` (an output and the slots' gates), each task also adds its gated slot rows onto
/// their tokens' rows of it ([`MlpSink::Combine`]).
///
/// # Errors
/// As [`expert_mlp`].
pub(crate) fn expert_mlp_recorded(
    x: &Var,
    plan: &Arc<DispatchPlan>,
    w: [&Var; 4],
    act: Activation,
    combine: Option<(&SharedRowSums<'_>, &[f32])>,
) -> Result<Var> {
    let (active_count, slots) = active(plan).fold((0, 0), |(n, s), (_, r)| (n + 1, s + r.len()));
    recorded_mlp(x, plan, w, act, slots >= FUSED_BACKWARD_MIN_ROWS * active_count, combine)
}

/// [`expert_mlp_recorded`] with the choice of backward made by the caller: per destination
/// (`per_destination`), or the two ops' backward.
pub(crate) fn recorded_mlp(
    x: &Var,
    plan: &Arc<DispatchPlan>,
    w: [&Var; 4],
    act: Activation,
    per_destination: bool,
    combine: Option<(&SharedRowSums<'_>, &[f32])>,
) -> Result<Var> {
    let [w1, b1, w2, b2] = w;
    let values = MlpWeights { w1: w1.value(), b1: b1.value(), w2: w2.value(), b2: b2.value(), packed: None };
    let sink = match combine {
        Some((out, gates)) => MlpSink::Combine { out, gates, keep: true },
        None => MlpSink::Slots { keep: true },
    };
    let MlpOutput { y, hidden, pre } = expert_mlp(x.value(), plan, &values, act, sink)?;
    let y = y.expect("slot rows when asked");
    let parents = [x, w1, b1, w2, b2];
    if !Var::records(&parents) {
        return Ok(Var::constant(y));
    }
    let hidden = hidden.expect("kept when asked");
    if !per_destination {
        // Small experts: the two ops' backward, which share each product out over the threads.
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
        return recorded_linear(&h, plan, &down, shape, y, None, (hidden, dense(w2.value())));
    }
    let wants = parents.map(|p| Var::records(&[p]));
    let saved = Saved {
        x: dense(x.value()),
        w1: dense(w1.value()),
        w2: dense(w2.value()),
        hidden,
        pre,
        act,
        plan: plan.clone(),
    };
    Ok(Var::from_op("expert_mlp", y, &parents, move |dy| Ok(saved.backward(&dense(dy), wants)?)))
}

/// What the backward pass of [`expert_mlp_recorded`] reads.
struct Saved {
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    /// `[S, hidden]` activations and (for an activation other than the identity) pre-activations.
    hidden: Tensor,
    pre: Option<Tensor>,
    act: Activation,
    plan: Arc<DispatchPlan>,
}

/// One destination's gradient work: its slot rows of `dA` and its blocks of the weight and bias
/// gradients (each `None` when not asked for).
struct GradTask<'a> {
    e: usize,
    rows: Range<usize>,
    da: Option<&'a mut [f32]>,
    dw1: Option<&'a mut [f32]>,
    db1: Option<&'a mut [f32]>,
    dw2: Option<&'a mut [f32]>,
    db2: Option<&'a mut [f32]>,
}

/// Runs `run` on every task, in parallel with the calling thread taking part
/// ([`for_each_task`]): each task is taken by exactly one thread.
fn run_each<T: Send>(tasks: Vec<T>, run: impl Fn(T) -> Result<()> + Sync) -> Result<()> {
    let slots: Vec<Mutex<Option<T>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    for_each_task(slots.len(), |i| {
        let task = slots[i].lock().unwrap_or_else(|p| p.into_inner()).take();
        task.map_or(Ok(()), &run)
    })
}

/// `C = A·B` into a buffer of its own, no epilogue.
fn problem<'a>(a: MatRef<'a>, b: MatRef<'a>) -> GroupProblem<'a> {
    GroupProblem { a, b, rows: OutRows::Range(0), epilogue: Epilogue::default(), packed_b: None }
}

/// `acc[j] = Σ rows[s][j]` over the rows in order: a bias gradient, summed as the grouped op
/// sums it.
fn column_sums(acc: &mut [f32], rows: &[f32]) {
    acc.fill(0.0);
    for row in rows.chunks(acc.len().max(1)) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

/// Blocks of a `[G, block]` gradient for each active destination, in order; idle destinations'
/// blocks are zeroed (they take no gradient).
fn blocks_of<'a>(buf: Option<&'a mut [f32]>, block: usize, plan: &DispatchPlan) -> Vec<Option<&'a mut [f32]>> {
    let Some(buf) = buf else { return active(plan).map(|_| None).collect() };
    let mut out = Vec::new();
    for (g, chunk) in buf.chunks_mut(block.max(1)).enumerate().take(plan.num_experts()) {
        if plan.expert_range(g).is_empty() {
            chunk.fill(0.0);
        } else {
            out.push(Some(chunk));
        }
    }
    out
}

impl Saved {
    /// The gradients of `[x, w1, b1, w2, b2]` from `dy` (`[S, out]`), `None` where `wants` is
    /// false.
    fn backward(&self, dy: &Tensor, wants: [bool; 5]) -> Result<Vec<Option<Tensor>>> {
        let plan = &*self.plan;
        let (g, s) = (plan.num_experts(), plan.num_kept());
        let (fi, hidden, fo) = (self.w1.shape()[1], self.w1.shape()[2], self.w2.shape()[2]);
        let (xd, w1d, w2d, hd, dyd) = (data(&self.x), data(&self.w1), data(&self.w2), data(&self.hidden), data(dy));
        let zd = self.pre.as_ref().map(data);
        let take = |want: bool, len: usize| want.then(|| pool::take(len));
        let mut da = take(wants[0], s * fi);
        let (mut dw1, mut db1) = (take(wants[1], g * fi * hidden), take(wants[2], g * hidden));
        let (mut dw2, mut db2) = (take(wants[3], g * hidden * fo), take(wants[4], g * fo));
        let slots: Vec<Range<usize>> = active(plan).map(|(_, r)| r).collect();
        let da_parts = split_kept(da.as_deref_mut(), fi, &slots);
        let dw1_parts = blocks_of(dw1.as_deref_mut(), fi * hidden, plan);
        let db1_parts = blocks_of(db1.as_deref_mut(), hidden, plan);
        let dw2_parts = blocks_of(dw2.as_deref_mut(), hidden * fo, plan);
        let db2_parts = blocks_of(db2.as_deref_mut(), fo, plan);
        let tasks: Vec<GradTask<'_>> = active(plan)
            .zip(da_parts)
            .zip(dw1_parts.into_iter().zip(db1_parts))
            .zip(dw2_parts.into_iter().zip(db2_parts))
            .map(|((((e, rows), da), (dw1, db1)), (dw2, db2))| GradTask { e, rows, da, dw1, db1, dw2, db2 })
            .collect();
        let isa = Isa::try_active().map_err(kernel_err)?;
        let gemm = Gemm { par: Par::Seq, ..Gemm::default() };
        let product = |c: &mut [f32], rows: usize, cols: usize, problem: GroupProblem<'_>| -> Result<()> {
            let c = MatMut::row_major(c, rows, cols).map_err(kernel_err)?;
            gemm.run_grouped(c, &[problem]).map_err(kernel_err)
        };
        let run = |GradTask { e, rows: r, da, dw1, db1, dw2, db2 }: GradTask<'_>| -> Result<()> {
            let m = r.len();
            let dy_e = &dyd[r.start * fo..r.end * fo];
            let h_e = &hd[r.start * hidden..r.end * hidden];
            // dH = dY·W2ᵀ, then dZ = act'(Z) ⊙ dH.
            let mut dh = pool::take(m * hidden);
            product(
                &mut dh,
                m,
                hidden,
                problem(view(dy_e, m, fo)?, block(WeightLayout::InOut, w2d, e, hidden, fo)?.t()),
            )?;
            let dz = match zd {
                Some(z) => {
                    let mut dz = pool::take(m * hidden);
                    activation_backward(isa, self.act, &z[r.start * hidden..r.end * hidden], &dh, &mut dz)
                        .map_err(kernel_err)?;
                    pool::give(dh);
                    dz
                }
                None => dh,
            };
            if let Some(dw2) = dw2 {
                product(dw2, hidden, fo, problem(view(h_e, m, hidden)?.t(), view(dy_e, m, fo)?))?;
            }
            if let Some(db2) = db2 {
                column_sums(db2, dy_e);
            }
            if let Some(dw1) = dw1 {
                let x_e = source_rows(RowSource::Gathered, xd, fi, plan, r.clone())?.t();
                product(dw1, fi, hidden, problem(x_e, view(&dz, m, hidden)?))?;
            }
            if let Some(db1) = db1 {
                column_sums(db1, &dz);
            }
            if let Some(da) = da {
                product(
                    da,
                    m,
                    fi,
                    problem(view(&dz, m, hidden)?, block(WeightLayout::InOut, w1d, e, fi, hidden)?.t()),
                )?;
            }
            pool::give(dz);
            Ok(())
        };
        tasks.into_par_iter().try_for_each(run)?;
        let dx = match da {
            Some(da) => {
                let dx = combine_rows(&da, &[], plan, fi)?;
                pool::give(da);
                Some(Tensor::from_vec(dx, &[plan.num_tokens(), fi])?)
            }
            None => None,
        };
        let tensor = |buf: Option<Vec<f32>>, shape: &[usize]| buf.map(|b| Tensor::from_vec(b, shape)).transpose();
        Ok(vec![
            dx,
            tensor(dw1, &[g, fi, hidden])?,
            tensor(db1, &[g, hidden])?,
            tensor(dw2, &[g, hidden, fo])?,
            tensor(db2, &[g, fo])?,
        ])
    }
}
