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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Var;
    use elide_tensor::Rng;

    /// Trains a small two-layer net for a few steps and returns its parameters' bits.
    fn train(opt: &mut dyn Optimizer) -> Vec<u32> {
        let mut rng = Rng::seed(11);
        let mut store = ParamStore::new();
        let w1 = store.register("w1", Tensor::randn(&[64, 96], &mut rng).mul_scalar(0.1)).unwrap();
        let w2 = store.register("w2", Tensor::randn(&[96, 10], &mut rng).mul_scalar(0.1)).unwrap();
        let x = Var::constant(Tensor::randn(&[300, 64], &mut rng));
        let targets: Vec<u32> = (0..300).map(|i| (i * 7 % 10) as u32).collect();
        for step in 0..4 {
            opt.set_lr(LrSchedule::WarmupCosine { warmup: 2, total: 4, min_factor: 0.1 }.lr(0.05, step));
            let loss = x.matmul(&w1.var()).unwrap().gelu().matmul(&w2.var()).unwrap().cross_entropy(&targets).unwrap();
            let mut grads = loss.backward().unwrap();
            grads.clip_global_norm(1.0);
            opt.step(&store, &grads).unwrap();
        }
        store.iter().flat_map(|p| p.value().to_vec()).map(f32::to_bits).collect()
    }

    #[test]
    fn training_is_bit_identical_on_one_and_two_threads() {
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        for make in [
            || Box::new(AdamW::new(0.05)) as Box<dyn Optimizer>,
            || Box::new(Sgd::new(0.05, 0.9)) as Box<dyn Optimizer>,
        ] {
            let one = pool(1).install(|| train(make().as_mut()));
            let two = pool(2).install(|| train(make().as_mut()));
            assert_eq!(one, two);
        }
    }

    #[test]
    fn sgd_momentum_matches_the_recurrence() {
        let mut store = ParamStore::new();
        let p = store.register("p", Tensor::from_vec(vec![1.0, -2.0], &[2]).unwrap()).unwrap();
        let mut opt = Sgd::new(0.1, 0.5);
        // Loss Σ 3·p has gradient 3 everywhere: b1 = 3, b2 = 0.5·3 + 3 = 4.5.
        for _ in 0..2 {
            let loss = p.var().mul_scalar(3.0).sum_all();
            opt.step(&store, &loss.backward().unwrap()).unwrap();
        }
        let want = [1.0 - 0.1 * 3.0 - 0.1 * 4.5, -2.0 - 0.1 * 3.0 - 0.1 * 4.5];
        for (got, want) in p.value().to_vec().iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
