//! The ops that meet the slot rows of a plan with the token rows: [`combine`] (slot rows,
//! gated, summed back onto their tokens), [`combine_onto`] (the same onto a residual) and
//! [`gather`] (token rows copied out in slot order), forward and backward. Sums run in slot
//! order (fixed, no atomics), so results are bit-identical for any thread count.

use super::{data, dense, kernel_err};
use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use elide_autodiff::Var;
use elide_kernels::gemm::Accum;
use elide_kernels::{gather_rows, weighted_row_sums, weighted_row_sums_backward, Isa};
use elide_tensor::{pool, Tensor};
use std::sync::Arc;

/// `out[t] = Σ_{slots s of t, in order} scale_s · rows[s]` (`scale` empty: 1), `[T, width]`,
/// by the vector kernel [`weighted_row_sums`]: each output row written once, its first slot
/// stored and the others added (no zero-filled buffer read back).
pub(super) fn combine_rows(rows: &[f32], scale: &[f32], plan: &DispatchPlan, width: usize) -> Result<Vec<f32>> {
    let out = pool::take(plan.num_tokens() * width);
    combine_rows_into(out, rows, scale, plan, width, Accum::Replace)
}

/// [`combine_rows`] added onto `out` (`[T, width]`).
fn combine_rows_onto(
    out: Vec<f32>,
    rows: &[f32],
    scale: &[f32],
    plan: &DispatchPlan,
    width: usize,
) -> Result<Vec<f32>> {
    combine_rows_into(out, rows, scale, plan, width, Accum::Add)
}

fn combine_rows_into(
    mut out: Vec<f32>,
    rows: &[f32],
    scale: &[f32],
    plan: &DispatchPlan,
    width: usize,
    accum: Accum,
) -> Result<Vec<f32>> {
    let (start, slots) = plan.slots_by_token();
    let isa = Isa::try_active().map_err(kernel_err)?;
    weighted_row_sums(isa, rows, width, start, slots, scale, &mut out, accum).map_err(kernel_err)?;
    Ok(out)
}

/// `out[t] = Σ_{s: token(s)=t} g_s · rows[s]`, summed in slot order (fixed, so bit-identical for
/// any thread count): `rows` `[S, d]` in slot order, `gates` `[S]` (or none: all 1), `[T, d]`
/// out; a token with no slots gets a zero row. Differentiable in `rows` and the gates
/// (`d rows[s] = g_s · dOut[token(s)]`, `d g_s = ⟨dOut[token(s)], rows[s]⟩`).
///
/// # Errors
/// [`Error::Shape`] if `rows` is not `[S, d]` or the gates are not `[S]` (`S = plan.num_kept()`).
pub fn combine(rows: &Var, gates: Option<&Var>, plan: &Arc<DispatchPlan>) -> Result<Var> {
    combine_impl("combine", None, rows, gates, plan)
}

/// `residual + combine(rows, gates, plan)` in one pass over the output (a mixture-of-depths
/// layer's `x + g·f(x)`: unchosen rows are copied, chosen rows get their gated slot rows added).
/// Differentiable in all three; the residual's gradient is the output's, unchanged.
///
/// # Errors
/// As [`combine`], and [`Error::Shape`] if the residual is not `[T, d]`.
pub fn combine_onto(residual: &Var, rows: &Var, gates: Option<&Var>, plan: &Arc<DispatchPlan>) -> Result<Var> {
    combine_impl("combine_onto", Some(residual), rows, gates, plan)
}

/// [`combine`] of `rows` and `gates` whose value `out` was computed already (by the expert
/// tasks, through a shared output): the same op in the graph, with the same backward.
///
/// # Errors
/// As [`combine`], and [`Error::Shape`] if `out` is not `[T, d]`.
pub(crate) fn combine_with_value(out: Tensor, rows: &Var, gates: &Var, plan: &Arc<DispatchPlan>) -> Result<Var> {
    const OP: &str = "combine";
    let d = check(OP, None, rows, Some(gates), plan)?;
    if out.shape() != [plan.num_tokens(), d] {
        return Err(Error::shape(
            OP,
            format!("the output must be [{}, {d}], got {:?}", plan.num_tokens(), out.shape()),
        ));
    }
    let values = (dense(rows.value()), gates.value().to_vec());
    Ok(recorded(OP, out, values, None, rows, Some(gates), plan))
}

/// Checks the shapes of a combine's operands; returns the row width.
fn check(
    op: &'static str,
    residual: Option<&Var>,
    rows: &Var,
    gates: Option<&Var>,
    plan: &DispatchPlan,
) -> Result<usize> {
    let (t, s) = (plan.num_tokens(), plan.num_kept());
    let shape = rows.shape();
    if shape.len() != 2 || shape[0] != s {
        return Err(Error::shape(op, format!("rows must be [{s}, d] (one per slot of the plan), got {shape:?}")));
    }
    if let Some(g) = gates.filter(|g| g.shape() != [s]) {
        return Err(Error::shape(op, format!("gates must be [{s}] (one per slot of the plan), got {:?}", g.shape())));
    }
    let d = shape[1];
    if let Some(r) = residual.filter(|r| r.shape() != [t, d]) {
        return Err(Error::shape(op, format!("the residual must be [{t}, {d}], got {:?}", r.shape())));
    }
    Ok(d)
}

fn combine_impl(
    op: &'static str,
    residual: Option<&Var>,
    rows: &Var,
    gates: Option<&Var>,
    plan: &Arc<DispatchPlan>,
) -> Result<Var> {
    let t = plan.num_tokens();
    let d = check(op, residual, rows, gates, plan)?;
    let rv = dense(rows.value());
    let gv = gates.map(|g| g.value().to_vec()).unwrap_or_default();
    let sums = match residual {
        Some(r) => {
            let mut base = pool::take(t * d);
            base.copy_from_slice(data(&dense(r.value())));
            combine_rows_onto(base, data(&rv), &gv, plan, d)?
        }
        None => combine_rows(data(&rv), &gv, plan, d)?,
    };
    Ok(recorded(op, Tensor::from_vec(sums, &[t, d])?, (rv, gv), residual, rows, gates, plan))
}

/// The combine's value `out` as a var recording its backward (a constant when no operand
/// records); `values` are the rows, contiguous, and the gates' values (empty without gates).
fn recorded(
    op: &'static str,
    out: Tensor,
    values: (Tensor, Vec<f32>),
    residual: Option<&Var>,
    rows: &Var,
    gates: Option<&Var>,
    plan: &Arc<DispatchPlan>,
) -> Var {
    let mut parents = vec![rows];
    parents.extend(gates);
    parents.extend(residual);
    if !Var::records(&parents) {
        return Var::constant(out);
    }
    let (t, s, d) = (plan.num_tokens(), plan.num_kept(), rows.shape()[1]);
    let (rv, gv) = values;
    let (has_gates, has_residual) = (gates.is_some(), residual.is_some());
    let plan = plan.clone();
    Var::from_op(op, out, &parents, move |dout_view| {
        let dout = dense(dout_view);
        let dout = data(&dout);
        let tokens = plan.tokens();
        let mut drows = pool::take(s * d);
        let mut dgate = vec![0.0f32; if has_gates { s } else { 0 }];
        let isa = Isa::try_active().map_err(kernel_err)?;
        if has_gates {
            weighted_row_sums_backward(isa, dout, d, tokens, data(&rv), &gv, &mut drows, &mut dgate)
        } else {
            gather_rows(isa, dout, t, d, tokens, &mut drows)
        }
        .map_err(kernel_err)?;
        let mut grads = vec![Some(Tensor::from_vec(drows, &[s, d])?)];
        if has_gates {
            grads.push(Some(Tensor::from_vec(dgate, &[s])?));
        }
        if has_residual {
            grads.push(Some(dout_view.clone()));
        }
        Ok(grads)
    })
}

/// `Y[s] = x[token(s)]`: the planned rows of `x` `[T, d]` in slot order, `[S, d]`, for a block
/// that is not a linear map (a mixture-of-depths block runs on them). Differentiable in `x`
/// (each token sums the gradients of its slots, in slot order).
///
/// # Errors
/// [`Error::Shape`] if `x` is not `[T, d]` with `T = plan.num_tokens()`.
pub fn gather(x: &Var, plan: &Arc<DispatchPlan>) -> Result<Var> {
    const OP: &str = "gather";
    let (t, s) = (plan.num_tokens(), plan.num_kept());
    let shape = x.shape();
    if shape.len() != 2 || shape[0] != t {
        return Err(Error::shape(OP, format!("x must be [{t}, d] (tokens of the plan), got {shape:?}")));
    }
    let d = shape[1];
    let xv = dense(x.value());
    let src = data(&xv);
    let mut out = pool::take(s * d);
    gather_rows(Isa::try_active().map_err(kernel_err)?, src, t, d, plan.tokens(), &mut out).map_err(kernel_err)?;
    let out = Tensor::from_vec(out, &[s, d])?;
    let plan = plan.clone();
    Ok(Var::from_op(OP, out, &[x], move |dy| {
        let dy = dense(dy);
        Ok(vec![Some(Tensor::from_vec(combine_rows(data(&dy), &[], &plan, d)?, &[t, d])?)])
    }))
}
