//! `elide bench autodiff`: what recording costs when it is off, and what a backward pass costs
//! next to its forward.

use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{no_grad, Var};
use elide::tensor::{Rng, Tensor};

/// The MLP both sides run: `gelu(layer_norm(x·w1 + b1))·w2 + b2`.
struct Mlp {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

impl Mlp {
    fn tensors(&self, x: &Tensor) -> Tensor {
        let h = x.matmul(&self.w1).and_then(|h| h.add(&self.b1)).expect("shapes");
        let h = h.layer_norm(None, None, 1e-5).expect("norm").gelu();
        h.matmul(&self.w2).and_then(|y| y.add(&self.b2)).expect("shapes")
    }

    fn vars(&self, x: &Var, p: &[Var; 4]) -> Var {
        let h = x.matmul(&p[0]).and_then(|h| h.add(&p[1])).expect("shapes");
        let h = h.layer_norm(None, None, 1e-5).expect("norm").gelu();
        h.matmul(&p[2]).and_then(|y| y.add(&p[3])).expect("shapes")
    }
}

/// `elide bench autodiff`.
pub fn bench_autodiff(plan: Plan) -> Report {
    let mut r = Report::new("autodiff overheads (interleaved, medians)", &["measurement", "ms", "ratio"]);
    let mut rng = Rng::seed(0);
    let (batch, d, hidden) = (256, 512, 2048);
    let mlp = Mlp {
        w1: Tensor::randn(&[d, hidden], &mut rng).mul_scalar(0.05),
        b1: Tensor::zeros(&[hidden]),
        w2: Tensor::randn(&[hidden, d], &mut rng).mul_scalar(0.05),
        b2: Tensor::zeros(&[d]),
    };
    let x = Tensor::randn(&[batch, d], &mut rng);
    let xv = Var::constant(x.clone());
    let params = [&mlp.w1, &mlp.b1, &mlp.w2, &mlp.b2].map(|t| Var::leaf(t.clone()));
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                std::hint::black_box(mlp.tensors(&x));
            },
            &mut || {
                no_grad(|| std::hint::black_box(mlp.vars(&xv, &params)));
            },
        ],
    );
    let overhead = res.ratios_to_first[1];
    r.row(vec![format!("MLP {batch}×{d}→{hidden}→{d} forward, tensors"), ms(res.medians[0]), "1.00".into()]);
    r.row(vec!["same through Var, recording off".into(), ms(res.medians[1]), format!("{overhead:.3}")]);
    r.figure("autodiff_nograd_overhead", overhead);

    let n = 1024;
    let a = Var::leaf(Tensor::randn(&[n, n], &mut rng));
    let b = Var::leaf(Tensor::randn(&[n, n], &mut rng));
    let seed = Tensor::ones(&[n, n]);
    let c = a.matmul(&b).expect("square");
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                std::hint::black_box(a.value().matmul(b.value()).expect("square"));
            },
            &mut || {
                std::hint::black_box(c.backward_with(&seed).expect("backward"));
            },
        ],
    );
    let ratio = res.ratios_to_first[1];
    r.row(vec![format!("matmul {n}³ forward"), ms(res.medians[0]), "1.00".into()]);
    r.row(vec![format!("matmul {n}³ backward (dA, dB)"), ms(res.medians[1]), format!("{ratio:.2}")]);
    r.figure("matmul_bwd_over_fwd", ratio);
    r
}

fn ms(seconds: f64) -> String {
    format!("{:.3}", seconds * 1e3)
}
