//! Inference of an MLP expert block with each destination's two products back to back in one
//! task, instead of two [`grouped_linear`](super::grouped_linear) ops.

use super::{active, block, data, dense, kernel_err, source_rows, view, RowSource};
use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use elide_autodiff::init::WeightLayout;
use elide_kernels::gemm::{Activation, Epilogue, Gemm, GroupProblem, MatMut, OutRows, PackedB};
use elide_kernels::threading::Par;
use elide_tensor::{pool, Tensor};
use rayon::prelude::*;
use std::ops::Range;

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

/// One destination's work: its slot rows of the output, in slot order, and the destination
/// after it, whose weights its task fetches last.
struct Task<'a> {
    e: usize,
    rows: Range<usize>,
    out: &'a mut [f32],
    next: Option<usize>,
}

/// `Y[s] = act(X[token(s)]·W1[g] + b1[g])·W2[g] + b2[g]`, `[S, out]` slot rows out, with each
/// destination's up- and down-projection back to back in one task, its hidden rows in a buffer
/// of its own.
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
pub(crate) fn expert_mlp(x: &Tensor, plan: &DispatchPlan, w: &MlpWeights<'_>, act: Activation) -> Result<Tensor> {
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
    let mut out = pool::take(plan.num_kept() * fo);
    let mut tasks: Vec<Task<'_>> = Vec::new();
    let mut rest = &mut out[..];
    let mut at = 0;
    for (e, r) in active(plan) {
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut((r.start - at) * fo);
        let (mine, tail) = tail.split_at_mut(r.len() * fo);
        (rest, at) = (tail, r.end);
        if let Some(prev) = tasks.last_mut() {
            prev.next = Some(e);
        }
        tasks.push(Task { e, rows: r, out: mine, next: None });
    }
    // Each destination's GEMMs run on its task's thread. Below the GEMM driver's threshold for
    // a fork (a small model's decode step), one thread runs them all: waking the pool would
    // cost more than the work (measured 2× slower at d 64, 8 experts of 128).
    let gemm = Gemm { par: Par::Seq, ..Gemm::default() };
    let macs: usize = tasks.iter().map(|task| task.rows.len() * hidden * (fi + fo)).sum();
    let first_panel = |which: usize, e: usize| -> &[f32] {
        w.packed.map_or(&[], |p| if which == 0 { p.0[e].first_panel() } else { p.1[e].first_panel() })
    };
    let run = |Task { e, rows: r, out: mine, next }: Task<'_>| -> Result<()> {
        let m = r.len();
        let mut h = pool::take(m * hidden);
        let up = GroupProblem {
            a: source_rows(RowSource::Gathered, xd, fi, plan, r)?,
            b: block(WeightLayout::InOut, w1d, e, fi, hidden)?,
            rows: OutRows::Range(0),
            epilogue: Epilogue { bias: Some(&b1d[e * hidden..(e + 1) * hidden]), activation: act, row_scale: None },
            packed_b: w.packed.map(|p| &p.0[e]),
        };
        let h_out = MatMut::row_major(&mut h, m, hidden).map_err(kernel_err)?;
        gemm.run_grouped_then(h_out, &[up], first_panel(1, e)).map_err(kernel_err)?;
        let down = GroupProblem {
            a: view(&h, m, hidden)?,
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
        gemm.run_grouped_then(y_out, &[down], next.map_or(&[], |n| first_panel(0, n))).map_err(kernel_err)?;
        pool::give(h);
        Ok(())
    };
    if macs < PAR_MIN_MACS {
        tasks.into_iter().try_for_each(run)?;
    } else {
        tasks.into_par_iter().try_for_each(run)?;
    }
    Ok(Tensor::from_vec(out, &[plan.num_kept(), fo])?)
}
