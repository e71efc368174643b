//! A finite-difference gradient check for every differentiable op, on small odd shapes and
//! broadcasting cases.

use crate::gradcheck::{gradcheck, GradcheckOptions};
use crate::{Result, Var};
use elide_tensor::{Rng, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Rng::seed(seed))
}

/// Values bounded away from 0 (for log, sqrt, recip, div).
fn positive(shape: &[usize], seed: u64) -> Tensor {
    randn(shape, seed).abs().add_scalar(0.5)
}

fn check(name: &str, f: impl Fn(&[Var]) -> Result<Var>, inputs: Vec<Tensor>) {
    if let Err(e) = gradcheck(f, &inputs, GradcheckOptions::default()) {
        panic!("{name}: {e}");
    }
}

#[test]
fn arithmetic_with_broadcasting() {
    let shapes: [(&[usize], &[usize]); 4] = [(&[3, 5], &[3, 5]), (&[3, 5], &[5]), (&[2, 1, 4], &[3, 1]), (&[1], &[7])];
    for (sa, sb) in shapes {
        let (a, b) = (randn(sa, 1), randn(sb, 2));
        check("add", |v| v[0].add(&v[1]), vec![a.clone(), b.clone()]);
        check("sub", |v| v[0].sub(&v[1]), vec![a.clone(), b.clone()]);
        check("mul", |v| v[0].mul(&v[1]), vec![a.clone(), b.clone()]);
        check("div", |v| v[0].div(&v[1]), vec![a.clone(), positive(sb, 3)]);
        // Shift one side so no pair sits within a finite-difference step of a tie.
        check("maximum", |v| v[0].maximum(&v[1]), vec![a.clone(), b.add_scalar(0.05)]);
        check("minimum", |v| v[0].minimum(&v[1]), vec![a.clone(), b.add_scalar(0.05)]);
    }
    let a = randn(&[3, 7], 4);
    check("add_scalar", |v| Ok(v[0].add_scalar(1.5)), vec![a.clone()]);
    check("mul_scalar", |v| Ok(v[0].mul_scalar(-2.5)), vec![a.clone()]);
    check("neg", |v| Ok(v[0].neg()), vec![a]);
}

#[test]
fn a_value_used_twice_accumulates() {
    let a = randn(&[4, 3], 5);
    check("x*x + x", |v| v[0].mul(&v[0])?.add(&v[0]), vec![a.clone()]);
    let x = Var::leaf(a.clone());
    let y = x.mul(&x).unwrap().sum_all();
    let g = y.backward().unwrap();
    let want: Vec<f32> = a.to_vec().iter().map(|v| 2.0 * v).collect();
    assert_eq!(g.of(&x).unwrap().to_vec(), want);
}

#[test]
fn unary_maps() {
    let x = randn(&[5, 7], 6);
    let p = positive(&[5, 7], 7);
    check("exp", |v| Ok(v[0].exp()), vec![x.clone()]);
    check("log", |v| Ok(v[0].log()), vec![p.clone()]);
    check("sqrt", |v| Ok(v[0].sqrt()), vec![p.clone()]);
    check("recip", |v| Ok(v[0].recip()), vec![p.clone()]);
    check("square", |v| Ok(v[0].square()), vec![x.clone()]);
    check("tanh", |v| Ok(v[0].tanh()), vec![x.clone()]);
    check("sigmoid", |v| Ok(v[0].sigmoid()), vec![x.clone()]);
    check("gelu", |v| Ok(v[0].gelu()), vec![x.clone()]);
    check("gelu_erf", |v| Ok(v[0].gelu_erf()), vec![x.clone()]);
    check("silu", |v| Ok(v[0].silu()), vec![x.clone()]);
    // Keep relu's inputs away from the kink.
    let away: Vec<f32> = x.to_vec().iter().map(|v| if v.abs() < 0.1 { v + 0.3 } else { *v }).collect();
    check("relu", |v| Ok(v[0].relu()), vec![Tensor::from_vec(away, &[5, 7]).unwrap()]);
}

#[test]
fn matmul_plain_transposed_and_batched() {
    check("matmul", |v| v[0].matmul(&v[1]), vec![randn(&[3, 5], 8), randn(&[5, 7], 9)]);
    check("matmul 1xk", |v| v[0].matmul(&v[1]), vec![randn(&[1, 33], 10), randn(&[33, 3], 11)]);
    check("matmul Aᵀ", |v| v[0].transpose(0, 1)?.matmul(&v[1]), vec![randn(&[5, 3], 12), randn(&[5, 4], 13)]);
    check("batched", |v| v[0].matmul(&v[1]), vec![randn(&[2, 3, 4], 14), randn(&[2, 4, 5], 15)]);
    check("batch-broadcast", |v| v[0].matmul(&v[1]), vec![randn(&[2, 3, 4], 16), randn(&[4, 5], 17)]);
}

#[test]
fn reductions() {
    let x = randn(&[3, 4, 5], 18);
    // Distinct values 0.1 apart, shuffled: no two within a finite-difference step of a tie.
    let separated: Vec<f32> = (0..60).map(|i| ((i * 37) % 60) as f32 * 0.1 - 3.0).collect();
    let separated = Tensor::from_vec(separated, &[3, 4, 5]).unwrap();
    for dim in 0..3 {
        for keepdim in [false, true] {
            check("sum", |v| v[0].sum(dim, keepdim), vec![x.clone()]);
            check("mean", |v| v[0].mean(dim, keepdim), vec![x.clone()]);
            check("max", |v| v[0].max(dim, keepdim), vec![separated.clone()]);
        }
    }
    check("sum_all", |v| Ok(v[0].sum_all()), vec![x.clone()]);
    check("mean_all", |v| Ok(v[0].mean_all()), vec![x]);
}

#[test]
fn views_and_concat() {
    let x = randn(&[2, 3, 4], 19);
    check("reshape", |v| v[0].reshape(&[6, 4]), vec![x.clone()]);
    check("permute", |v| v[0].permute(&[2, 0, 1]), vec![x.clone()]);
    check("transpose", |v| v[0].transpose(0, 2), vec![x.clone()]);
    check("narrow", |v| v[0].narrow(2, 1, 2), vec![x.clone()]);
    check("unsqueeze", |v| v[0].unsqueeze(1), vec![x.clone()]);
    check("squeeze", |v| v[0].unsqueeze(1)?.squeeze(1), vec![x.clone()]);
    check("broadcast_to", |v| v[0].broadcast_to(&[3, 2, 3, 4]), vec![x.clone()]);
    check("concat", |v| Var::concat(&[&v[0], &v[1]], 1), vec![x, randn(&[2, 5, 4], 20)]);
}

#[test]
fn softmax_norms_and_cross_entropy() {
    let x = randn(&[4, 7], 21);
    check("softmax", |v| v[0].softmax(), vec![x.clone()]);
    check("softmax of softmax_topk", |v| Ok(v[0].softmax_topk(2)?.0), vec![x.clone()]);
    check("log_softmax", |v| v[0].log_softmax(), vec![x.clone()]);
    check("cross_entropy", |v| v[0].cross_entropy(&[0, 6, 3, 3]), vec![x.clone()]);
    let w = randn(&[7], 22);
    let b = randn(&[7], 23);
    check("rms_norm", |v| v[0].rms_norm(Some(&v[1]), 1e-5), vec![x.clone(), w.clone()]);
    check("rms_norm no weight", |v| v[0].rms_norm(None, 1e-5), vec![randn(&[2, 3, 5], 24)]);
    check("layer_norm", |v| v[0].layer_norm(Some(&v[1]), Some(&v[2]), 1e-5), vec![x.clone(), w, b]);
    check("layer_norm bare", |v| v[0].layer_norm(None, None, 1e-5), vec![x]);
}

#[test]
fn gathers_scatters_and_topk() {
    let table = randn(&[6, 3], 25);
    check("index_select", |v| v[0].index_select(0, &[5, 0, 5, 2]), vec![table.clone()]);
    check("index_select dim 1", |v| v[0].index_select(1, &[2, 2, 0]), vec![table.clone()]);
    check("embedding", |v| Var::embedding(&v[0], &[1, 1, 4]), vec![table.clone()]);
    check("scatter_add", |v| v[0].scatter_add(0, &[3, 3, 0], &v[1]), vec![table, randn(&[3, 3], 26)]);
    check("topk", |v| Ok(v[0].topk(2)?.0), vec![randn(&[3, 9], 27)]);
}

#[test]
fn backward_errors_are_clear() {
    let x = Var::leaf(randn(&[2, 2], 28));
    let err = x.backward().unwrap_err();
    assert!(err.to_string().contains("the output has shape [2, 2]"), "{err}");
    let c = Var::constant(randn(&[1], 29));
    assert!(c.backward().unwrap_err().to_string().contains("was not recorded"));
    let err = x.cross_entropy(&[0, 2]).unwrap_err();
    assert_eq!(err.to_string(), "cross_entropy: target 2 at position 1 is out of range for 2 classes");
}
