//! Stochastic gradient descent with momentum, as `torch.optim.SGD` (dampening 0).

use super::{
    check_grad_shape, check_grads_match, check_hyper, check_state_names, grad_values, load_slot, save_slot, Optimizer,
};
use crate::error::Result;
use crate::{Gradients, ParamStore};
use elide_tensor::Tensor;
use std::collections::HashMap;

/// SGD: `b ← μ·b + g` (`b ← g` on the first step), `p ← p − lr·b` (or `g + μ·b` with Nesterov);
/// `weight_decay` adds `λ·p` to the gradient first (coupled L2).
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum `μ` (0 for plain SGD).
    pub momentum: f32,
    /// Coupled L2 weight decay `λ`.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    buffers: HashMap<u64, Vec<f32>>,
    steps: u64,
}

impl Sgd {
    /// SGD with learning rate `lr` and momentum `momentum`.
    pub fn new(lr: f32, momentum: f32) -> Sgd {
        Sgd { lr, momentum, weight_decay: 0.0, nesterov: false, buffers: HashMap::new(), steps: 0 }
    }
}

impl Sgd {
    /// Checks the hyperparameters (public fields, so checked at every step).
    fn validate(&self) -> Result<()> {
        const OP: &str = "Sgd::step";
        let (lr, mu, wd) = (self.lr, self.momentum, self.weight_decay);
        check_hyper(OP, "lr", lr, lr.is_finite() && lr >= 0.0, "finite and >= 0")?;
        check_hyper(OP, "momentum", mu, mu.is_finite() && mu >= 0.0, "finite and >= 0")?;
        check_hyper(OP, "weight_decay", wd, wd.is_finite() && wd >= 0.0, "finite and >= 0")?;
        check_hyper(OP, "momentum (with nesterov)", mu, !self.nesterov || mu > 0.0, "> 0")
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, store: &ParamStore, grads: &Gradients) -> Result<()> {
        const OP: &str = "Sgd::step";
        self.validate()?;
        check_grads_match(OP, store, grads)?;
        for p in store.iter() {
            if let Some(g) = grads.get(p) {
                check_grad_shape(OP, &p.value(), g, p.name())?;
            }
        }
        for p in store.iter() {
            let Some(g) = grads.get(p) else { continue };
            let value = p.value();
            let mut g = grad_values(OP, &value, g, p.name())?;
            let mut x = value.to_vec();
            if self.weight_decay != 0.0 {
                g.iter_mut().zip(&x).for_each(|(g, &x)| *g += self.weight_decay * x);
            }
            if self.momentum != 0.0 {
                let buf = match self.buffers.get_mut(&p.id()) {
                    Some(buf) => {
                        buf.iter_mut().zip(&g).for_each(|(b, &g)| *b = self.momentum * *b + g);
                        buf
                    }
                    None => self.buffers.entry(p.id()).or_insert_with(|| g.clone()),
                };
                if self.nesterov {
                    g.iter_mut().zip(buf.iter()).for_each(|(g, &b)| *g += self.momentum * b);
                } else {
                    g.copy_from_slice(buf);
                }
            }
            x.iter_mut().zip(&g).for_each(|(x, &g)| *x -= self.lr * g);
            p.set(Tensor::from_vec(x, value.shape())?)?;
        }
        self.steps = self.steps.saturating_add(1);
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sgd"
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
        save_slot(store, &self.buffers, "sgd.momentum")
    }

    fn load_state(&mut self, store: &ParamStore, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        check_state_names("SGD", tensors, &["sgd.momentum"])?;
        self.buffers = load_slot(store, tensors, "sgd.momentum")?;
        self.steps = steps;
        Ok(())
    }
}
