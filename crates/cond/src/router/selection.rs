//! The selection rules of [`RouterKind`](super::RouterKind): which (token, destination) pairs
//! a router keeps, given its scores, and their gates (taken out of the scores, so they stay
//! differentiable).

use crate::error::Result;
use crate::routing::Routing;
use elide_autodiff::Var;
use elide_tensor::Tensor;

/// Token choice: the top `k` of each row of the scores `probs` `[T, E]`, token-major, given
/// that top k (values `[T, k]` and their columns).
pub(super) fn token_choice(
    logits: &Var,
    probs: Var,
    top: (Tensor, Vec<u32>),
    k: usize,
    renormalize: bool,
) -> Result<Routing> {
    let (t, e) = (probs.shape()[0], probs.shape()[1]);
    let (gates, experts) = top_k_gates(&probs, top, k, renormalize)?;
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

/// The `k` best scores of each row of `scores` `[T, E]` (`top`: their values `[T, k]`, best
/// first, ties to the lower index, and their columns) as `[T·k]` gates, divided by their row sum
/// when `renormalize`, and their columns: one pass per row instead of a sum and a division,
/// each with its own buffers.
///
/// Backward, per row with `S = Σ_selected p`: without renormalisation `dp_j = dg_j`; with it
/// `g_j = p_j/S`, so `dp_j = (dg_j − Σ_i dg_i·g_i)/S`; unselected scores get 0.
fn top_k_gates(scores: &Var, top: (Tensor, Vec<u32>), k: usize, renormalize: bool) -> Result<(Var, Vec<u32>)> {
    let (t, e) = (scores.shape()[0], scores.shape()[1]);
    let (top, columns) = top;
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
    let value = Tensor::from_vec(gates.clone(), &[t * k])?;
    let cols = columns.clone();
    let var = Var::from_op("top_k_gates", value, &[scores], move |dg| {
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
pub(super) fn expert_choice(logits: &Var, probs: Var, c: usize) -> Result<Routing> {
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
pub(super) fn above_threshold(logits: &Var, scores: Var, threshold: f32) -> Result<Routing> {
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
