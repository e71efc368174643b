//! Optimizers and learning-rate schedules.
//!
//! An optimizer reads the [`Gradients`] a backward pass returned and writes new values into the
//! parameters; its own state (momentum, Adam moments) is keyed by parameter name so it can be
//! checkpointed. Every update is an elementwise loop in a fixed order: the same seed and the
//! same steps give bit-identical parameters on any number of threads.

mod adamw;
mod schedule;
mod sgd;

pub use adamw::AdamW;
pub use schedule::LrSchedule;
pub use sgd::Sgd;

use crate::error::{Error, Result};
use crate::{Gradients, ParamStore};
use elide_tensor::Tensor;
use std::collections::HashMap;

/// Something that updates parameters from gradients.
pub trait Optimizer {
    /// One update of every parameter of `store` that has a gradient in `grads`.
    ///
    /// # Errors
    /// If a gradient's shape differs from its parameter's.
    fn step(&mut self, store: &ParamStore, grads: &Gradients) -> Result<()>;

    /// The learning rate the next step will use.
    fn lr(&self) -> f32;

    /// Sets the learning rate (a schedule calls this before each step).
    fn set_lr(&mut self, lr: f32);

    /// Steps taken so far.
    fn steps(&self) -> u64;

    /// The state to checkpoint, as named tensors (`"<kind>.<slot>.<param name>"`, in the
    /// store's order).
    fn state(&self, store: &ParamStore) -> Vec<(String, Tensor)>;

    /// Restores what [`Optimizer::state`] returned.
    ///
    /// # Errors
    /// If a tensor's name is not one this optimizer writes, or a shape differs from its
    /// parameter's.
    fn load_state(&mut self, store: &ParamStore, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()>;
}

/// The gradient of `param` as a vector, checked against the parameter's shape.
pub(crate) fn grad_values(op: &'static str, value: &Tensor, grad: &Tensor, name: &str) -> Result<Vec<f32>> {
    if grad.shape() != value.shape() {
        return Err(Error::Param {
            op,
            detail: format!("{name} has shape {:?}, its gradient {:?}", value.shape(), grad.shape()),
        });
    }
    Ok(grad.to_vec())
}

/// Restores one slot (e.g. Adam's `m`) of every parameter from `tensors`, by
/// `"<prefix>.<param name>"`; a parameter without an entry keeps an empty slot.
pub(crate) fn load_slot(
    store: &ParamStore,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<HashMap<u64, Vec<f32>>> {
    let mut slot = HashMap::new();
    for p in store.iter() {
        if let Some(t) = tensors.get(&format!("{prefix}.{}", p.name())) {
            if t.shape() != p.value().shape() {
                return Err(Error::Param {
                    op: "Optimizer::load_state",
                    detail: format!("{prefix}.{} has shape {:?}, the parameter {:?}", p.name(), t.shape(), p.shape()),
                });
            }
            slot.insert(p.id(), t.to_vec());
        }
    }
    let known = store.iter().map(|p| format!("{prefix}.{}", p.name())).collect::<std::collections::HashSet<_>>();
    if let Some(extra) = tensors.keys().find(|k| k.starts_with(&format!("{prefix}.")) && !known.contains(*k)) {
        return Err(Error::Param { op: "Optimizer::load_state", detail: format!("{extra} names no parameter") });
    }
    Ok(slot)
}

/// Named tensors for one slot, in the store's order.
pub(crate) fn save_slot(store: &ParamStore, slot: &HashMap<u64, Vec<f32>>, prefix: &str) -> Vec<(String, Tensor)> {
    store
        .iter()
        .filter_map(|p| {
            let values = slot.get(&p.id())?;
            let t = Tensor::from_vec(values.clone(), p.value().shape()).ok()?;
            Some((format!("{prefix}.{}", p.name()), t))
        })
        .collect()
}
