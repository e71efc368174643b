//! [`Var`]: a tensor value and, while gradients are recorded, the node that made it.
//!
//! The graph is define-by-run: an op on `Var`s computes its value with the tensor op, and — only
//! when recording is on and some input takes part in differentiation — attaches a node holding
//! its inputs and its backward rule. With recording off (inference, or inside [`no_grad`]), a
//! `Var` is a tensor plus one `None`, so a layer has one forward path for training and
//! inference at no cost.

use crate::error::Result;
use elide_tensor::Tensor;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A backward rule: given the gradient of the op's output, the gradients of its inputs (one per
/// parent, `None` where an input takes no gradient).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// A node of the recorded graph.
pub(crate) struct Node {
    /// Unique per node; for a parameter leaf, the parameter's id (so every use of one parameter
    /// is one leaf).
    pub(crate) id: u64,
    pub(crate) kind: NodeKind,
}

pub(crate) enum NodeKind {
    /// A leaf that receives a gradient: a parameter, or an input marked with [`Var::leaf`].
    Leaf,
    /// The result of an op.
    Op {
        /// The op's name, for error messages and debugging.
        name: &'static str,
        parents: Vec<Var>,
        backward: BackwardFn,
    },
}

/// A value in a differentiable computation: a [`Tensor`] and, when recorded, its graph node.
///
/// Cloning is cheap (two reference counts). `Var` is `Send + Sync`.
#[derive(Clone)]
pub struct Var {
    pub(crate) value: Tensor,
    pub(crate) node: Option<Arc<Node>>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var").field("shape", &self.value.shape()).field("recorded", &self.node.is_some()).finish()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh node or parameter id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    static RECORDING: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record their backward rules (on by default).
pub fn is_recording() -> bool {
    RECORDING.with(Cell::get)
}

/// Runs `f` with recording off on this thread: the result carries no graph and costs what the
/// same tensor ops cost. Nests; recording is restored afterwards, even if `f` panics.
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            RECORDING.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(RECORDING.with(|r| r.replace(false)));
    f()
}

impl Var {
    /// A value that takes no gradient (data, targets, masks).
    pub fn constant(value: Tensor) -> Var {
        Var { value, node: None }
    }

    /// A leaf that receives a gradient: [`crate::Gradients::of`] returns it after `backward`.
    /// (Parameters make their leaves through [`crate::Param::var`].)
    pub fn leaf(value: Tensor) -> Var {
        Var { value, node: Some(Arc::new(Node { id: next_id(), kind: NodeKind::Leaf })) }
    }

    /// A leaf with a given id (a parameter's).
    pub(crate) fn leaf_with_id(value: Tensor, id: u64) -> Var {
        Var { value, node: Some(Arc::new(Node { id, kind: NodeKind::Leaf })) }
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value's shape.
    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    /// Whether this value is part of a recorded graph (a gradient can flow to it).
    pub fn requires_grad(&self) -> bool {
        self.node.is_some()
    }

    /// The id under which [`crate::Gradients`] stores this leaf's gradient, if it is recorded.
    pub fn id(&self) -> Option<u64> {
        self.node.as_ref().map(|n| n.id)
    }

    /// A constant with the same value: gradients stop here.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    /// The result of a differentiable op: `value`, computed from `parents`, whose
    /// vector-Jacobian product is `backward` (given the output's gradient, one gradient per
    /// parent, `None` where a parent takes none). This is the extension point for ops defined
    /// outside this crate (the mixture-of-experts layer is one). `backward` is recorded only
    /// when recording is on and a parent takes part; otherwise the result is a constant.
    pub fn from_op(
        name: &'static str,
        value: Tensor,
        parents: &[&Var],
        backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
    ) -> Var {
        if !is_recording() || parents.iter().all(|p| p.node.is_none()) {
            return Var::constant(value);
        }
        let parents = parents.iter().map(|p| (*p).clone()).collect();
        let node = Node { id: next_id(), kind: NodeKind::Op { name, parents, backward: Box::new(backward) } };
        Var { value, node: Some(Arc::new(node)) }
    }

    /// Whether an op with these inputs will record: build saved tensors only when it does.
    pub fn records(parents: &[&Var]) -> bool {
        is_recording() && parents.iter().any(|p| p.node.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_grad_turns_recording_off_and_restores_it() {
        let x = Var::leaf(Tensor::ones(&[2]));
        assert!(is_recording());
        let y = no_grad(|| {
            assert!(!is_recording());
            Var::from_op("id", x.value().clone(), &[&x], |g| Ok(vec![Some(g.clone())]))
        });
        assert!(is_recording());
        assert!(!y.requires_grad());
        let z = Var::from_op("id", x.value().clone(), &[&x], |g| Ok(vec![Some(g.clone())]));
        assert!(z.requires_grad());
    }

    #[test]
    fn a_backward_rule_with_the_wrong_number_or_shape_of_gradients_is_an_error() {
        let (x, y) = (Var::leaf(Tensor::ones(&[2])), Var::leaf(Tensor::ones(&[3])));
        let too_few = Var::from_op("too_few", Tensor::ones(&[2]), &[&x, &y], |g| Ok(vec![Some(g.clone())]));
        let err = too_few.backward_with(&Tensor::ones(&[2])).unwrap_err();
        assert_eq!(err.to_string(), "backward: too_few: backward rule gave 1 gradients for 2 inputs");
        let too_many = Var::from_op("too_many", Tensor::ones(&[2]), &[&x], |g| Ok(vec![Some(g.clone()), None]));
        let err = too_many.backward_with(&Tensor::ones(&[2])).unwrap_err();
        assert_eq!(err.to_string(), "backward: too_many: backward rule gave 2 gradients for 1 inputs");
        // A wrong shape for an input that takes no gradient is still a wrong rule.
        let c = Var::constant(Tensor::ones(&[4]));
        let misshaped = Var::from_op("misshaped", Tensor::ones(&[2]), &[&x, &c], |g| {
            Ok(vec![Some(g.clone()), Some(Tensor::ones(&[5]))])
        });
        let err = misshaped.backward_with(&Tensor::ones(&[2])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backward: misshaped: backward rule gave a gradient of shape [5] for input 1 of shape [4]"
        );
    }
}
