//! Criterion benchmarks of autodiff overheads: an MLP forward on plain tensors and through
//! `Var` with recording off, and a 1024³ matmul forward and backward.
//!
//! `cargo bench --bench autodiff`. The ratios the issues quote come from
//! `elide bench autodiff --json` (interleaved in one run).

use criterion::{criterion_group, criterion_main, Criterion};
use elide::autodiff::{no_grad, Var};
use elide::tensor::{Rng, Tensor};
use std::hint::black_box;
use std::time::Duration;

fn autodiff(c: &mut Criterion) {
    let mut rng = Rng::seed(0);
    let x = Tensor::randn(&[256, 512], &mut rng);
    let w1 = Tensor::randn(&[512, 2048], &mut rng).mul_scalar(0.05);
    let w2 = Tensor::randn(&[2048, 512], &mut rng).mul_scalar(0.05);
    let (xv, w1v, w2v) = (Var::constant(x.clone()), Var::leaf(w1.clone()), Var::leaf(w2.clone()));
    let mut group = c.benchmark_group("autodiff");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    group.bench_function("mlp_forward_tensors", |b| {
        b.iter(|| black_box(x.matmul(&w1).unwrap().gelu().matmul(&w2).unwrap()))
    });
    group.bench_function("mlp_forward_var_nograd", |b| {
        b.iter(|| no_grad(|| black_box(xv.matmul(&w1v).unwrap().gelu().matmul(&w2v).unwrap())))
    });
    let a = Var::leaf(Tensor::randn(&[1024, 1024], &mut rng));
    let bm = Var::leaf(Tensor::randn(&[1024, 1024], &mut rng));
    let out = a.matmul(&bm).unwrap();
    let seed = Tensor::ones(&[1024, 1024]);
    group.bench_function("matmul_1024_forward", |b| b.iter(|| black_box(a.value().matmul(bm.value()).unwrap())));
    group.bench_function("matmul_1024_backward", |b| b.iter(|| black_box(out.backward_with(&seed).unwrap())));
    group.finish();
}

criterion_group!(benches, autodiff);
criterion_main!(benches);
