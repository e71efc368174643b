//! The backward pass: walk the recorded graph from an output back to its leaves, in reverse
//! topological order, applying each op's backward rule once.

use crate::error::{Error, Result};
use crate::var::{Node, NodeKind, Var};
use elide_tensor::Tensor;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Gradients of the leaves of one backward pass, by leaf id. A plain value: nothing is
/// accumulated into parameters behind the caller's back, so there is no `zero_grad`.
#[derive(Clone, Debug, Default)]
pub struct Gradients {
    by_id: HashMap<u64, Tensor>,
}

impl Gradients {
    /// The gradient of a parameter, or `None` if it took no part in the computation.
    pub fn get(&self, param: &crate::Param) -> Option<&Tensor> {
        self.by_id.get(&param.id())
    }

    /// The gradient of a leaf made with [`Var::leaf`] (or a parameter's var).
    pub fn of(&self, var: &Var) -> Option<&Tensor> {
        var.id().and_then(|id| self.by_id.get(&id))
    }

    /// The gradient stored under a leaf id.
    pub fn by_id(&self, id: u64) -> Option<&Tensor> {
        self.by_id.get(&id)
    }

    /// Number of leaves with a gradient.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no leaf received a gradient.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Leaf ids in increasing order (creation order: a deterministic iteration order).
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// `sqrt(Σ g²)` over every gradient, summed in f64 in id order (deterministic).
    pub fn global_norm(&self) -> f32 {
        let sum: f64 =
            self.ids().iter().map(|id| self.by_id[id].to_vec().iter().map(|&g| g as f64 * g as f64).sum::<f64>()).sum();
        sum.sqrt() as f32
    }

    /// Scales every gradient so that the global norm is at most `max_norm` (as
    /// `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
    ///
    /// # Errors
    /// [`Error::Optimizer`] when `max_norm` is not finite and positive (a negative one would
    /// flip every gradient's sign), or when the gradients' norm is NaN or infinite (scaling
    /// cannot repair them; the step should be skipped). The gradients are unchanged then.
    pub fn clip_global_norm(&mut self, max_norm: f32) -> Result<f32> {
        const OP: &str = "Gradients::clip_global_norm";
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(Error::Optimizer {
                op: OP,
                detail: format!("max_norm must be finite and > 0, got {max_norm}"),
            });
        }
        let norm = self.global_norm();
        if !norm.is_finite() {
            return Err(Error::Optimizer {
                op: OP,
                detail: format!("the gradients' global norm is {norm}: some gradient is NaN or infinite"),
            });
        }
        let scale = max_norm / (norm + 1e-6);
        if scale < 1.0 {
            for g in self.by_id.values_mut() {
                *g = g.mul_scalar(scale);
            }
        }
        Ok(norm)
    }

    pub(crate) fn insert(&mut self, id: u64, grad: Tensor) {
        self.by_id.insert(id, grad);
    }
}

impl Var {
    /// Gradients of this scalar (one-element) value with respect to every leaf it depends on.
    ///
    /// # Errors
    /// If the value has more than one element (use [`Var::backward_with`]), if it was not
    /// recorded, or if a backward rule fails.
    pub fn backward(&self) -> Result<Gradients> {
        if self.value.numel() != 1 {
            return Err(Error::Backward(format!(
                "the output has shape {:?}; backward() starts from a one-element value (use backward_with for others)",
                self.value.shape()
            )));
        }
        self.backward_with(&Tensor::ones(self.value.shape()))
    }

    /// Gradients of `Σ seed ⊙ self` with respect to every leaf: a vector-Jacobian product.
    ///
    /// # Errors
    /// If `seed`'s shape differs from the value's, if the value was not recorded, or if a
    /// backward rule fails.
    pub fn backward_with(&self, seed: &Tensor) -> Result<Gradients> {
        if seed.shape() != self.value.shape() {
            return Err(Error::Backward(format!(
                "seed shape {:?} differs from the output shape {:?}",
                seed.shape(),
                self.value.shape()
            )));
        }
        let Some(root) = &self.node else {
            return Err(Error::Backward(
                "the output was not recorded (computed under no_grad, or from constants only)".into(),
            ));
        };
        let order = topological_order(root);
        let mut pending: HashMap<u64, Tensor> = HashMap::new();
        pending.insert(root.id, seed.clone());
        let mut out = Gradients::default();
        // Every node comes after its parents in `order`; walking it backwards, every node's
        // gradient is complete before its rule runs.
        for node in order.iter().rev() {
            let Some(grad) = pending.remove(&node.id) else { continue };
            match &node.kind {
                NodeKind::Leaf => out.insert(node.id, grad),
                NodeKind::Op { name, parents, backward } => {
                    let grads = backward(&grad)?;
                    if grads.len() != parents.len() {
                        return Err(Error::Backward(format!(
                            "{name}: backward rule gave {} gradients for {} inputs",
                            grads.len(),
                            parents.len()
                        )));
                    }
                    for (position, (parent, g)) in parents.iter().zip(grads).enumerate() {
                        let Some(g) = g else { continue };
                        // Checked for every input, recorded or not: a rule that gets one shape
                        // wrong is wrong, whichever inputs happen to take a gradient today.
                        if g.shape() != parent.value.shape() {
                            return Err(Error::Backward(format!(
                                "{name}: backward rule gave a gradient of shape {:?} for input {position} of shape {:?}",
                                g.shape(),
                                parent.value.shape()
                            )));
                        }
                        let Some(pnode) = &parent.node else { continue };
                        match pending.remove(&pnode.id) {
                            // In place when this pass owns the running sum (no new buffer per add).
                            Some(acc) => pending.insert(pnode.id, acc.add_owned(&g)?),
                            None => pending.insert(pnode.id, g),
                        };
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Nodes reachable from `root`, each after all of its parents (iterative post-order DFS, so
/// deep graphs cannot overflow the stack). Leaves shared by id appear once.
fn topological_order(root: &Arc<Node>) -> Vec<Arc<Node>> {
    let mut order = Vec::new();
    let mut visited: HashSet<u64> = HashSet::new();
    let mut stack: Vec<(Arc<Node>, usize)> = vec![(root.clone(), 0)];
    visited.insert(root.id);
    while let Some((node, next_parent)) = stack.pop() {
        let parents: &[Var] = match &node.kind {
            NodeKind::Op { parents, .. } => parents,
            NodeKind::Leaf => &[],
        };
        match parents[next_parent..].iter().position(|p| p.node.as_ref().is_some_and(|n| !visited.contains(&n.id))) {
            Some(offset) => {
                let at = next_parent + offset;
                let parent = parents[at].node.clone().expect("checked above");
                visited.insert(parent.id);
                stack.push((node, at + 1));
                stack.push((parent, 0));
            }
            None => order.push(node),
        }
    }
    order
}
