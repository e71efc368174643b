//! AdamW: Adam with decoupled weight decay (arXiv 1711.05101), as `torch.optim.AdamW`.

use super::{
    beta_power, check_grad_shape, check_grads_match, check_hyper, check_state_names, load_slot, save_slot, Optimizer,
};
use crate::error::Result;
use crate::{Gradients, Param, ParamStore};
use elide_tensor::Tensor;
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Parameters of fewer elements are updated on the calling thread (a fork costs about what
/// 32K element updates do).
const PAR_MIN_ELEMS: usize = 32 * 1024;
/// Elements per parallel task.
const PAR_CHUNK: usize = 16 * 1024;

/// Which parameters AdamW's weight decay applies to: `true` decays. Shared, so AdamW stays
/// cheap to clone.
pub type DecayFilter = Arc<dyn Fn(&Param) -> bool + Send + Sync>;

/// AdamW, following PyTorch's arithmetic step for step (so fixtures agree to rounding):
///
/// ```text
/// p ← p·(1 − lr·λ)
/// m ← m + (1 − β1)(g − m)          v ← β2·v + (1 − β2)·g²
/// p ← p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
/// ```
///
/// By default every parameter is decayed (as PyTorch's `AdamW` with one parameter group); with
/// [`AdamW::with_decay_filter`], parameters the filter rejects skip the `p·(1 − lr·λ)` factor
/// and take only the Adam update — the two parameter groups of common practice (no decay on
/// biases, norm gains and embeddings; elide-models' `NoDecay` is that rule).
///
/// ```
/// use elide_autodiff::{AdamW, Optimizer, ParamStore};
/// use elide_tensor::Tensor;
///
/// let mut store = ParamStore::new();
/// let w = store.register("w", Tensor::ones(&[2, 2]))?;
/// let b = store.register("b", Tensor::ones(&[2]))?;
/// // The gradient of 0·Σw + 0·Σb is zero: only weight decay moves a parameter.
/// let loss = w.var().sum_all().mul_scalar(0.0).add(&b.var().sum_all().mul_scalar(0.0))?;
/// let mut opt = AdamW::new(0.1).with_decay_filter(|p| p.shape().len() >= 2);
/// opt.step(&store, &loss.backward()?)?;
/// assert_eq!(w.value().to_vec(), vec![1.0 - 0.1 * 0.01; 4]); // decayed
/// assert_eq!(b.value().to_vec(), vec![1.0; 2]); // not decayed
/// # Ok::<(), elide_autodiff::Error>(())
/// ```
#[derive(Clone)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// `β1`, `β2`.
    pub betas: (f32, f32),
    /// `ε`.
    pub eps: f32,
    /// Decoupled weight decay `λ`.
    pub weight_decay: f32,
    decay_filter: Option<DecayFilter>,
    m: HashMap<u64, Vec<f32>>,
    v: HashMap<u64, Vec<f32>>,
    steps: u64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("lr", &self.lr)
            .field("betas", &self.betas)
            .field("eps", &self.eps)
            .field("weight_decay", &self.weight_decay)
            .field("decay_filter", &self.decay_filter.as_ref().map(|_| "custom"))
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl AdamW {
    /// AdamW with PyTorch's defaults but the learning rate: β = (0.9, 0.999), ε = 1e-8, λ = 0.01,
    /// every parameter decayed.
    pub fn new(lr: f32) -> AdamW {
        AdamW {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
            decay_filter: None,
            m: HashMap::new(),
            v: HashMap::new(),
            steps: 0,
        }
    }

    /// Decays only the parameters `decays` accepts; the others take the Adam update without
    /// the weight-decay factor (a second parameter group with `λ = 0`).
    pub fn with_decay_filter(mut self, decays: impl Fn(&Param) -> bool + Send + Sync + 'static) -> AdamW {
        self.decay_filter = Some(Arc::new(decays));
        self
    }

    /// Whether a step decays `param`.
    pub fn decays(&self, param: &Param) -> bool {
        self.decay_filter.as_ref().is_none_or(|f| f(param))
    }
}

impl AdamW {
    /// Checks the hyperparameters (public fields, so checked at every step).
    fn validate(&self) -> Result<()> {
        const OP: &str = "AdamW::step";
        let (lr, wd, eps, (b1, b2)) = (self.lr, self.weight_decay, self.eps, self.betas);
        check_hyper(OP, "lr", lr, lr.is_finite() && lr >= 0.0, "finite and >= 0")?;
        check_hyper(OP, "weight_decay", wd, wd.is_finite() && wd >= 0.0, "finite and >= 0")?;
        check_hyper(OP, "betas.0", b1, (0.0..1.0).contains(&b1), "in [0, 1)")?;
        check_hyper(OP, "betas.1", b2, (0.0..1.0).contains(&b2), "in [0, 1)")?;
        check_hyper(OP, "eps", eps, eps.is_finite() && eps > 0.0, "finite and > 0")
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, store: &ParamStore, grads: &Gradients) -> Result<()> {
        const OP: &str = "AdamW::step";
        self.validate()?;
        check_grads_match(OP, store, grads)?;
        for p in store.iter() {
            if let Some(g) = grads.get(p) {
                check_grad_shape(OP, &p.value(), g, p.name())?;
            }
        }
        let t = self.steps.saturating_add(1);
        let (b1, b2) = self.betas;
        let bias1 = 1.0 - beta_power(b1, t);
        let bias2_sqrt = (1.0 - beta_power(b2, t)).sqrt();
        let step_size = self.lr / bias1;
        for p in store.iter() {
            let Some(g) = grads.get(p) else { continue };
            let value = p.value();
            let g = g.contiguous();
            let g = g.as_slice().expect("a contiguous tensor has a slice");
            let mut x = value.to_vec();
            let decay = if self.decays(p) { 1.0 - self.lr * self.weight_decay } else { 1.0 };
            let m = self.m.entry(p.id()).or_insert_with(|| vec![0.0; g.len()]);
            let v = self.v.entry(p.id()).or_insert_with(|| vec![0.0; g.len()]);
            let update = |x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
                for (((x, &g), m), v) in x.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *x *= decay;
                    *m += (1.0 - b1) * (g - *m);
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    let denom = v.sqrt() / bias2_sqrt + self.eps;
                    *x -= step_size * (*m / denom);
                }
            };
            // Each element's update reads only its own values: chunks may run on any thread
            // and give the same bits.
            if x.len() < PAR_MIN_ELEMS || rayon::current_num_threads() < 2 {
                update(&mut x, g, m, v);
            } else {
                x.par_chunks_mut(PAR_CHUNK)
                    .zip(g.par_chunks(PAR_CHUNK))
                    .zip(m.par_chunks_mut(PAR_CHUNK))
                    .zip(v.par_chunks_mut(PAR_CHUNK))
                    .for_each(|(((x, g), m), v)| update(x, g, m, v));
            }
            p.set(Tensor::from_vec(x, value.shape())?)?;
        }
        self.steps = t;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "adamw"
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self, store: &ParamStore) -> Vec<(String, Tensor)> {
        let mut state = save_slot(store, &self.m, "adamw.m");
        state.extend(save_slot(store, &self.v, "adamw.v"));
        state
    }

    fn load_state(&mut self, store: &ParamStore, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        check_state_names("AdamW", tensors, &["adamw.m", "adamw.v"])?;
        let (m, v) = (load_slot(store, tensors, "adamw.m")?, load_slot(store, tensors, "adamw.v")?);
        (self.m, self.v, self.steps) = (m, v, steps);
        Ok(())
    }
}
