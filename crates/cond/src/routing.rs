//! [`Routing`]: the decision every router produces, as a flat list of (token, expert, gate)
//! assignments plus the router's logits and probabilities.
//!
//! A flat list covers every router with one type: token choice (each token picks `k` experts),
//! expert choice (each expert picks `C` tokens, so a token may get any number of experts,
//! including none), and anything that routes rows to destinations. The
//! [`DispatchPlan`](crate::DispatchPlan) turns it into per-expert row lists.

use elide_autodiff::Var;
use elide_tensor::Tensor;

/// One routing decision list: assignment `i` sends token `tokens[i]` to expert `experts[i]`
/// with gate `gates[i]`.
///
/// Order: token choice is token-major (token `t`'s `j`-th choice, best first, is assignment
/// `t·k + j`); expert choice is expert-major (expert `e`'s `j`-th token, best first, is
/// assignment `e·C + j`).
#[derive(Clone, Debug)]
pub struct Routing {
    /// Number of tokens routed (`T`).
    pub num_tokens: usize,
    /// Number of experts (`E`).
    pub num_experts: usize,
    /// `[S]` the token of each assignment.
    pub tokens: Vec<u32>,
    /// `[S]` the expert of each assignment.
    pub experts: Vec<u32>,
    /// `[S]` the gate weight of each assignment, differentiable: it is derived from `probs`,
    /// so a loss on the gates reaches the router logits (and the router weight).
    pub gates: Var,
    /// `[T, E]` router logits, in f32. For noisy gating in training these are the logits with
    /// the noise added (the ones `probs` and the selection were computed from).
    pub logits: Var,
    /// `[T, E]` the scores the selection ranked and the gates were taken from, in f32: the
    /// softmax of `logits` over the experts for the softmax kinds, else the sigmoid or the raw
    /// logits ([`crate::ScoreFn`]).
    pub probs: Var,
}

impl Routing {
    /// A routing of zero tokens over `num_experts` experts: no assignments, `[0, E]` logits
    /// and probabilities, `[0]` gates. What every router returns for an empty batch.
    pub fn empty(num_experts: usize) -> Routing {
        Routing {
            num_tokens: 0,
            num_experts,
            tokens: Vec::new(),
            experts: Vec::new(),
            gates: Var::constant(Tensor::zeros(&[0])),
            logits: Var::constant(Tensor::zeros(&[0, num_experts])),
            probs: Var::constant(Tensor::zeros(&[0, num_experts])),
        }
    }

    /// The number of assignments `S`.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no assignments.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The gate values (a copy, for inspection and logging).
    pub fn gate_values(&self) -> Vec<f32> {
        self.gates.value().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_routing_has_consistent_shapes() {
        let r = Routing::empty(4);
        assert_eq!((r.num_tokens, r.num_experts, r.len(), r.is_empty()), (0, 4, 0, true));
        assert_eq!((r.gates.shape(), r.logits.shape(), r.probs.shape()), (&[0][..], &[0, 4][..], &[0, 4][..]));
        assert!(r.gate_values().is_empty());
    }
}
