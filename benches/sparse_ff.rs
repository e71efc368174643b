//! Criterion benchmarks of the unit-sparse feed-forward layer at inference (d_model 1024,
//! d_ff 4096, blocks of 32, rank 64, controller included) at batch 1, 8 and 64.
//! `cargo bench --bench sparse_ff`; the ratios against the dense layer come from
//! `elide bench sparse-ff --json`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use elide::autodiff::{no_grad, ParamStore, Var};
use elide::cond::{SparseFeedForward, SparseFfConfig, SparseFfMode};
use elide::tensor::{Rng, Tensor};
use std::hint::black_box;
use std::time::Duration;

fn sparse_ff(c: &mut Criterion) {
    let mut store = ParamStore::new();
    let layer =
        SparseFeedForward::new(&mut store.scope("ff"), SparseFfConfig::new(1024, 4096), &mut Rng::seed(0)).unwrap();
    let mut group = c.benchmark_group("sparse_ff_inference");
    group.sample_size(20).measurement_time(Duration::from_secs(3));
    for t in [1, 8, 64] {
        let x = Var::constant(Tensor::randn(&[t, 1024], &mut Rng::seed(t as u64)));
        group.bench_with_input(BenchmarkId::from_parameter(t), &x, |b, x| {
            b.iter(|| no_grad(|| black_box(layer.forward(x, SparseFfMode::Eval).unwrap().output)))
        });
    }
    group.finish();
}

criterion_group!(benches, sparse_ff);
criterion_main!(benches);
