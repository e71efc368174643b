//! Optimizers and learning-rate schedules.
//!
//! An optimizer reads the [`Gradients`] a backward pass returned and writes new values into the
//! parameters; its own state (momentum, Adam moments) is keyed by parameter id, and saved and
//! restored under parameter names so it can be checkpointed. Every update is an elementwise loop in a fixed order: the same seed and the
//! same steps give bit-identical parameters on any number of threads.

mod adamw;
mod schedule;
mod sgd;

pub use adamw::{AdamW, DecayFilter};
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
    /// [`Error::Optimizer`] when a hyperparameter is out of range (NaN, a negative rate, ...)
    /// or no parameter of `store` has a gradient in `grads` (gradients of another store's
    /// parameters); [`Error::Param`] when a gradient's shape differs from its parameter's.
    /// Nothing is updated then.
    fn step(&mut self, store: &ParamStore, grads: &Gradients) -> Result<()>;

    /// The optimizer's name in checkpoints (`"adamw"`, `"sgd"`): a checkpoint's state loads
    /// only into an optimizer of the same kind.
    fn kind(&self) -> &'static str;

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

/// Checks a hyperparameter: `ok` says whether `value` is acceptable, `want` what is.
pub(crate) fn check_hyper(op: &'static str, name: &str, value: f32, ok: bool, want: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Optimizer { op, detail: format!("{name} must be {want}, got {value}") })
    }
}

/// Checks that at least one parameter of `store` has a gradient in `grads`: a step whose
/// gradients all belong to other parameters (another store's) would silently do nothing.
pub(crate) fn check_grads_match(op: &'static str, store: &ParamStore, grads: &Gradients) -> Result<()> {
    if store.iter().any(|p| grads.get(p).is_some()) {
        return Ok(());
    }
    Err(Error::Optimizer {
        op,
        detail: format!(
            "no parameter of the store ({} parameters) has a gradient among the {} given; \
             were the gradients computed from another store's parameters?",
            store.len(),
            grads.len()
        ),
    })
}

/// Checks that every state tensor of a checkpoint is named `<prefix>.…` for one of `prefixes`,
/// so the state of another kind of optimizer is refused instead of dropped.
pub(crate) fn check_state_names(kind: &str, tensors: &HashMap<String, Tensor>, prefixes: &[&str]) -> Result<()> {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    match names.into_iter().find(|n| !prefixes.iter().any(|p| n.strip_prefix(p).is_some_and(|r| r.starts_with('.')))) {
        None => Ok(()),
        Some(name) => Err(Error::Param {
            op: "Optimizer::load_state",
            detail: format!("state tensor {name} is not {kind} state"),
        }),
    }
}

/// `β^t` for a step count `t` of any size. For `t` beyond `i32::MAX`, `β^t` is 0 in f32 for
/// every `β < 1` (even the largest, `1 − 2⁻²⁴`, gives `e^−128`), and `powi` would take a
/// negative exponent after the cast: a bias correction of infinity, parameters of NaN.
pub(crate) fn beta_power(beta: f32, t: u64) -> f32 {
    i32::try_from(t).map_or(0.0, |t| beta.powi(t))
}

/// Checks that the gradient of the parameter `name` has the parameter's shape.
pub(crate) fn check_grad_shape(op: &'static str, value: &Tensor, grad: &Tensor, name: &str) -> Result<()> {
    if grad.shape() != value.shape() {
        return Err(Error::Param {
            op,
            detail: format!("{name} has shape {:?}, its gradient {:?}", value.shape(), grad.shape()),
        });
    }
    Ok(())
}

/// The gradient of `param` as a vector, checked against the parameter's shape.
pub(crate) fn grad_values(op: &'static str, value: &Tensor, grad: &Tensor, name: &str) -> Result<Vec<f32>> {
    check_grad_shape(op, value, grad, name)?;
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
    use crate::{Param, Var};
    use elide_tensor::Rng;

    /// Trains a small two-layer net for a few steps and returns its parameters' bits. `w1` has
    /// more elements than AdamW updates on one thread (38 400 > 32K), `w2` fewer.
    fn train(opt: &mut dyn Optimizer) -> Vec<u32> {
        let mut rng = Rng::seed(11);
        let mut store = ParamStore::new();
        let w1 = store.register("w1", Tensor::randn(&[64, 600], &mut rng).mul_scalar(0.1)).unwrap();
        let w2 = store.register("w2", Tensor::randn(&[600, 10], &mut rng).mul_scalar(0.1)).unwrap();
        let x = Var::constant(Tensor::randn(&[300, 64], &mut rng));
        let targets: Vec<u32> = (0..300).map(|i| (i * 7 % 10) as u32).collect();
        for step in 0..4 {
            opt.set_lr(LrSchedule::WarmupCosine { warmup: 2, total: 4, min_factor: 0.1 }.lr(0.05, step));
            let loss = x.matmul(&w1.var()).unwrap().gelu().matmul(&w2.var()).unwrap().cross_entropy(&targets).unwrap();
            let mut grads = loss.backward().unwrap();
            grads.clip_global_norm(1.0).unwrap();
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

    /// A store with one parameter `[1, -2]` and the gradients of `Σ 3·p` (3 everywhere).
    fn one_param() -> (ParamStore, Param, Gradients) {
        let mut store = ParamStore::new();
        let p = store.register("p", Tensor::from_vec(vec![1.0, -2.0], &[2]).unwrap()).unwrap();
        let grads = p.var().mul_scalar(3.0).sum_all().backward().unwrap();
        (store, p, grads)
    }

    #[test]
    fn out_of_range_hyperparameters_are_refused_before_any_update() {
        let (store, p, grads) = one_param();
        let before = p.value().to_vec();
        let adamw = |f: fn(&mut AdamW)| {
            let mut opt = AdamW::new(0.1);
            f(&mut opt);
            opt.step(&store, &grads).unwrap_err().to_string()
        };
        assert_eq!(adamw(|o| o.lr = f32::NAN), "AdamW::step: lr must be finite and >= 0, got NaN");
        assert_eq!(adamw(|o| o.lr = -0.1), "AdamW::step: lr must be finite and >= 0, got -0.1");
        assert_eq!(adamw(|o| o.weight_decay = f32::NAN), "AdamW::step: weight_decay must be finite and >= 0, got NaN");
        assert_eq!(adamw(|o| o.betas.0 = 1.0), "AdamW::step: betas.0 must be in [0, 1), got 1");
        assert_eq!(adamw(|o| o.betas.1 = -0.5), "AdamW::step: betas.1 must be in [0, 1), got -0.5");
        assert_eq!(adamw(|o| o.eps = 0.0), "AdamW::step: eps must be finite and > 0, got 0");
        let sgd = |f: fn(&mut Sgd)| {
            let mut opt = Sgd::new(0.1, 0.0);
            f(&mut opt);
            opt.step(&store, &grads).unwrap_err().to_string()
        };
        assert_eq!(sgd(|o| o.lr = f32::INFINITY), "Sgd::step: lr must be finite and >= 0, got inf");
        assert_eq!(sgd(|o| o.momentum = -1.0), "Sgd::step: momentum must be finite and >= 0, got -1");
        assert_eq!(sgd(|o| o.weight_decay = f32::NAN), "Sgd::step: weight_decay must be finite and >= 0, got NaN");
        assert_eq!(sgd(|o| o.nesterov = true), "Sgd::step: momentum (with nesterov) must be > 0, got 0");
        assert_eq!(p.value().to_vec(), before);
    }

    #[test]
    fn adamw_bias_correction_survives_step_counts_past_i32() {
        for steps in [1u64 << 31, u64::MAX] {
            let (store, p, grads) = one_param();
            let mut opt = AdamW::new(0.01);
            opt.load_state(&store, &HashMap::new(), steps).unwrap();
            opt.step(&store, &grads).unwrap();
            // Both bias corrections are 1 this late: m = 0.1·3, v = 0.001·9, and
            // p ← p·(1 − lr·λ) − lr·m / (√v + ε).
            let update = 0.01 * 0.3 / (0.009f64.sqrt() + 1e-8);
            let want = [1.0 * (1.0 - 0.01 * 0.01) - update, -2.0 * (1.0 - 0.01 * 0.01) - update];
            for (got, want) in p.value().to_vec().iter().zip(want) {
                assert!((*got as f64 - want).abs() < 1e-6, "steps {steps}: {got} vs {want}");
            }
            assert_eq!(opt.steps(), steps.saturating_add(1));
        }
    }

    #[test]
    fn adamw_skips_the_decay_of_filtered_out_parameters_only() {
        let mut store = ParamStore::new();
        let w = store.register("layer.weight", Tensor::from_vec(vec![2.0, -4.0], &[1, 2]).unwrap()).unwrap();
        let b = store.register("layer.bias", Tensor::from_vec(vec![2.0, -4.0], &[2]).unwrap()).unwrap();
        let mut opt = AdamW::new(0.1).with_decay_filter(|p| !p.name().ends_with("bias"));
        opt.weight_decay = 0.5;
        assert!(opt.decays(&w) && !opt.decays(&b));
        for _ in 0..3 {
            // Zero gradients: Adam's update is 0/(0 + ε), only decay can move a parameter.
            let loss = w.var().sum_all().add(&b.var().sum_all()).unwrap().mul_scalar(0.0);
            opt.step(&store, &loss.backward().unwrap()).unwrap();
        }
        assert_eq!(b.value().to_vec(), vec![2.0, -4.0], "the excluded bias moved");
        // Three decays by 1 − 0.1·0.5 = 0.95: 0.857375 of the start.
        let want = [2.0 * 0.857375, -4.0 * 0.857375];
        for (got, want) in w.value().to_vec().iter().zip(want) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Without a filter both shrink, as PyTorch's single group.
        let mut all = AdamW::new(0.1);
        all.weight_decay = 0.5;
        let loss = b.var().sum_all().mul_scalar(0.0);
        all.step(&store, &loss.backward().unwrap()).unwrap();
        assert_eq!(b.value().to_vec(), vec![2.0 * 0.95, -4.0 * 0.95]);
    }

    #[test]
    fn a_step_with_another_stores_gradients_is_an_error() {
        let (store, p, _) = one_param();
        let (_, _, foreign) = one_param();
        for opt in [&mut AdamW::new(0.1) as &mut dyn Optimizer, &mut Sgd::new(0.1, 0.9)] {
            let err = opt.step(&store, &foreign).unwrap_err().to_string();
            assert!(err.ends_with("no parameter of the store (1 parameters) has a gradient among the 1 given; were the gradients computed from another store's parameters?"), "{err}");
            assert_eq!(opt.steps(), 0);
        }
        assert_eq!(p.value().to_vec(), vec![1.0, -2.0]);
    }

    #[test]
    fn state_of_another_optimizer_kind_is_refused() {
        let (store, _, grads) = one_param();
        let mut adamw = AdamW::new(0.1);
        adamw.step(&store, &grads).unwrap();
        let state: HashMap<String, Tensor> = adamw.state(&store).into_iter().collect();
        let err = Sgd::new(0.1, 0.9).load_state(&store, &state, 1).unwrap_err();
        assert_eq!(err.to_string(), "Optimizer::load_state: state tensor adamw.m.p is not SGD state");
        let mut sgd = Sgd::new(0.1, 0.9);
        sgd.step(&store, &grads).unwrap();
        let state: HashMap<String, Tensor> = sgd.state(&store).into_iter().collect();
        let err = AdamW::new(0.1).load_state(&store, &state, 1).unwrap_err();
        assert_eq!(err.to_string(), "Optimizer::load_state: state tensor sgd.momentum.p is not AdamW state");
    }

    #[test]
    fn clipping_refuses_bad_limits_and_non_finite_norms() {
        let (_, p, mut grads) = one_param();
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let err = grads.clip_global_norm(bad).unwrap_err().to_string();
            assert_eq!(err, format!("Gradients::clip_global_norm: max_norm must be finite and > 0, got {bad}"));
        }
        assert_eq!(grads.get(&p).unwrap().to_vec(), vec![3.0, 3.0], "a refused clip changed the gradients");
        let norm = grads.clip_global_norm(1.0).unwrap();
        assert!((norm - 18f32.sqrt()).abs() < 1e-6);
        let g = grads.get(&p).unwrap().to_vec();
        assert!((g[0] - 1.0 / 2f32.sqrt()).abs() < 1e-5, "{g:?}");
        let x = Var::leaf(Tensor::from_vec(vec![f32::NAN, 1.0], &[2]).unwrap());
        let mut nan = x.mul_scalar(1.0).sum_all().backward_with(&Tensor::scalar(f32::NAN)).unwrap();
        let err = nan.clip_global_norm(1.0).unwrap_err().to_string();
        assert_eq!(
            err,
            "Gradients::clip_global_norm: the gradients' global norm is NaN: some gradient is NaN or infinite"
        );
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
