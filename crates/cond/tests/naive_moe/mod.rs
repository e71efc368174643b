//! The naive mixture-of-experts reference the layer is checked against, written from the papers'
//! definitions and sharing no code with the layer: f64 throughout, the router logits `x·W_r`, a
//! softmax, the selection rule by sorting (each row for token choice, each column for expert
//! choice, arXiv 2202.09368), capacity by assignment order per expert (Switch, arXiv 2101.03961),
//! then each token through each of its kept experts one at a time, `out[t] = Σ gate · expert(x[t])`,
//! and the two auxiliary losses.

use elide_autodiff::ParamStore;
use elide_cond::{Capacity, ExpertKind, MoeConfig, MoeLayer, Rounding, RouterKind};
use elide_kernels::gemm::Activation;
use elide_tensor::{Rng, Tensor};
use std::collections::HashMap;

pub const GELU: ExpertKind = ExpertKind::Mlp(Activation::Gelu);
/// Loss weights of the auxiliary losses: large enough that their gradients matter in the checks.
pub const BALANCE_COEF: f32 = 0.1;
pub const Z_LOSS_COEF: f32 = 0.01;

/// One configuration of the layer, with the batch size `t`.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub t: usize,
    pub e: usize,
    pub d: usize,
    pub h: usize,
    pub router: RouterKind,
    pub capacity: Capacity,
    pub expert: ExpertKind,
}

impl Case {
    pub fn config(&self) -> MoeConfig {
        MoeConfig {
            capacity: self.capacity,
            balance_coef: BALANCE_COEF,
            z_loss_coef: Z_LOSS_COEF,
            ..MoeConfig::new(self.d, self.h, self.e, self.router, self.expert)
        }
    }
}

/// A layer registered under `moe`, with a router weight of scale 1 (logits of order `√d`, so
/// the choices sit far from ties in f32 and f64 alike) and non-zero biases.
pub fn build(case: &Case, seed: u64) -> (ParamStore, MoeLayer) {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(seed);
    let layer = MoeLayer::new(&mut store.scope("moe"), case.config(), &mut rng).unwrap();
    layer.router().weight().set(Tensor::randn(&[case.d, case.e], &mut rng)).unwrap();
    for p in layer.experts().params() {
        if p.name().contains(".b") {
            p.set(Tensor::randn(&p.shape(), &mut rng).mul_scalar(0.1)).unwrap();
        }
    }
    (store, layer)
}

/// Every parameter of the store in f64, by its last name segment (`router`, `w1`, `w_gate`, ...).
pub fn weights(store: &ParamStore) -> HashMap<String, Vec<f64>> {
    store.iter().map(|p| (short(p.name()), f64s(&p.value()))).collect()
}

pub fn short(name: &str) -> String {
    name.rsplit('.').next().unwrap().to_string()
}

pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().iter().map(|&v| v as f64).collect()
}

pub fn act(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Identity => x,
        Activation::Relu => x.max(0.0),
        // The tanh form, as elide's GELU.
        Activation::Gelu => 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh()),
        // The exact form x·Φ(x), from libm's f64 erf.
        Activation::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Silu => x / (1.0 + (-x).exp()),
    }
}

/// What the reference computes.
pub struct Reference {
    /// `[T, d]`.
    pub out: Vec<f64>,
    /// Per expert, the tokens it computed, in assignment order.
    pub kept: Vec<Vec<u32>>,
    pub dropped: usize,
    /// Unweighted Switch load-balancing loss `E·Σ f_i·P_i`, `f` over the router's choices.
    pub balance: f64,
    /// Unweighted router z-loss `mean_t logsumexp(logits_t)²`.
    pub z: f64,
    /// The smallest probability gap the selection depends on (order of the chosen entries and
    /// the first one left out), `inf` if none.
    pub margin: f64,
}

impl Reference {
    /// `Σ out ⊙ r + balance_coef·balance + z_coef·z`, the scalar the gradient checks use.
    pub fn loss(&self, r: &[f64]) -> f64 {
        let main: f64 = self.out.iter().zip(r).map(|(o, r)| o * r).sum();
        main + BALANCE_COEF as f64 * self.balance + Z_LOSS_COEF as f64 * self.z
    }
}

/// Indices `0..n` by `key` descending, ties to the lower index (as elide's top-k); and the
/// smallest non-zero gap among the first `take + 1` (the order of the chosen ones, and the first
/// one left out). Exact ties are left out of the margin: they come only from a single expert
/// (every probability exactly 1), which f32 and f64 both break toward the lower index.
pub fn ranked(n: usize, take: usize, key: impl Fn(usize) -> f64) -> (Vec<usize>, f64) {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    let upto = (take + 1).min(n);
    let gaps = order[..upto].windows(2).map(|w| key(w[0]) - key(w[1]));
    let margin = gaps.filter(|&g| g != 0.0).fold(f64::INFINITY, f64::min);
    (order, margin)
}

pub fn reference(case: &Case, x: &[f64], w: &HashMap<String, Vec<f64>>) -> Reference {
    let Case { t, e, d, .. } = *case;
    // Router: logits = x·W_r, probs = softmax over the experts.
    let wr = &w["router"];
    let logits: Vec<f64> = (0..t * e).map(|i| (0..d).map(|c| x[(i / e) * d + c] * wr[c * e + i % e]).sum()).collect();
    let mut probs = vec![0.0; t * e];
    let mut z = 0.0;
    for tok in 0..t {
        let row = &logits[tok * e..(tok + 1) * e];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|l| (l - m).exp()).sum();
        for j in 0..e {
            probs[tok * e + j] = (row[j] - m).exp() / sum;
        }
        z += (m + sum.ln()).powi(2);
    }
    let z = if t == 0 { 0.0 } else { z / t as f64 };

    // Selection: (token, expert, gate) in the router's assignment order.
    let mut assignments: Vec<(usize, usize, f64)> = Vec::new();
    let mut margin = f64::INFINITY;
    let token_choice = |k: usize, renormalize: bool, assignments: &mut Vec<_>, margin: &mut f64| {
        for tok in 0..t {
            let p = &probs[tok * e..(tok + 1) * e];
            let (order, m) = ranked(e, k, |j| p[j]);
            *margin = margin.min(m);
            let sum: f64 = order[..k].iter().map(|&j| p[j]).sum();
            for &j in &order[..k] {
                assignments.push((tok, j, if renormalize { p[j] / sum } else { p[j] }));
            }
        }
    };
    match case.router {
        RouterKind::TopK { k, renormalize, .. } => token_choice(k, renormalize, &mut assignments, &mut margin),
        RouterKind::Switch => token_choice(1, false, &mut assignments, &mut margin),
        RouterKind::ExpertChoice { capacity_factor, rounding } => {
            // C = ceil or floor of T·cf/E, clamped to [1, T] (arXiv 2202.09368).
            let c = t as f64 * capacity_factor as f64 / e as f64;
            let c = if rounding == Rounding::Floor { c.floor() } else { c.ceil() };
            let c = if t == 0 { 0 } else { (c as usize).clamp(1, t) };
            for j in 0..e {
                let (order, m) = ranked(t, c, |tok| probs[tok * e + j]);
                margin = margin.min(m);
                assignments.extend(order[..c].iter().map(|&tok| (tok, j, probs[tok * e + j])));
            }
        }
        RouterKind::Scored { .. } => panic!("this reference covers the softmax kinds (router.rs tests the others)"),
    }

    // Capacity: per expert, the first `cap` assignments in assignment order are kept.
    let s = assignments.len();
    let cap = match case.capacity {
        Capacity::Dropless => usize::MAX,
        Capacity::Factor { factor, rounding } => {
            let c = factor as f64 * s as f64 / e as f64;
            let c = if rounding == Rounding::Floor { c.floor() } else { c.ceil() };
            (c as usize).clamp(1, s.max(1))
        }
    };
    let mut kept = vec![Vec::new(); e];
    let mut out = vec![0.0; t * d];
    let mut dropped = 0;
    for &(tok, j, gate) in &assignments {
        if kept[j].len() >= cap {
            dropped += 1;
            continue;
        }
        kept[j].push(tok as u32);
        let y = expert(case, w, j, &x[tok * d..(tok + 1) * d]);
        for (o, y) in out[tok * d..(tok + 1) * d].iter_mut().zip(y) {
            *o += gate * y;
        }
    }

    // Load balancing (arXiv 2101.03961 eq. 4–6): f_i = expert i's share of the router's
    // choices (before capacity), P_i = mean_t probs.
    let mut chosen = vec![0usize; e];
    assignments.iter().for_each(|&(_, j, _)| chosen[j] += 1);
    let total = assignments.len();
    let balance = if t == 0 || total == 0 {
        0.0
    } else {
        (0..e)
            .map(|j| chosen[j] as f64 / total as f64 * (0..t).map(|tok| probs[tok * e + j]).sum::<f64>() / t as f64)
            .sum::<f64>()
            * e as f64
    };
    Reference { out, kept, dropped, balance, z, margin }
}

/// Expert `j` on one token row, in f64.
pub fn expert(case: &Case, w: &HashMap<String, Vec<f64>>, j: usize, xr: &[f64]) -> Vec<f64> {
    let (d, h) = (case.d, case.h);
    let proj = |m: &[f64], col: usize| -> f64 { (0..d).map(|i| xr[i] * m[j * d * h + i * h + col]).sum() };
    let hidden: Vec<f64> = (0..h)
        .map(|col| match case.expert {
            ExpertKind::Mlp(a) => act(a, proj(&w["w1"], col) + w["b1"][j * h + col]),
            ExpertKind::SwiGlu => act(Activation::Silu, proj(&w["w_gate"], col)) * proj(&w["w_up"], col),
        })
        .collect();
    let w2 = &w["w2"];
    (0..d)
        .map(|c| {
            let y: f64 = (0..h).map(|i| hidden[i] * w2[j * h * d + i * d + c]).sum();
            match case.expert {
                ExpertKind::Mlp(_) => y + w["b2"][j * d + c],
                ExpertKind::SwiGlu => y,
            }
        })
        .collect()
}
