//! Criterion benchmarks of the mixture-of-experts layer (config A of the MoE issue: T=4096,
//! d=512, 8 experts of hidden 1024, top-2) forward and forward+backward, and of its grouped
//! GEMM alone. `cargo bench --bench moe`; the ratios against dense twins come from
//! `elide bench moe --json`.

use criterion::{criterion_group, criterion_main, Criterion};
use elide::autodiff::{no_grad, ParamStore, Var};
use elide::cond::{ExpertKind, MoeConfig, MoeLayer, RouterKind};
use elide::kernels::gemm::Activation;
use elide::tensor::{Rng, Tensor};
use std::hint::black_box;
use std::time::Duration;

fn moe(c: &mut Criterion) {
    let (t, d) = (4096, 512);
    let mut store = ParamStore::new();
    let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
    let config = MoeConfig::new(d, 1024, 8, top2, ExpertKind::Mlp(Activation::Gelu));
    let layer = MoeLayer::new(&mut store.scope("moe"), config, &mut Rng::seed(0)).unwrap();
    let x = Tensor::randn(&[t, d], &mut Rng::seed(1));
    let dy = Tensor::randn(&[t, d], &mut Rng::seed(2));
    let mut group = c.benchmark_group("moe_config_a");
    group.sample_size(10).measurement_time(Duration::from_secs(5));
    let xc = Var::constant(x.clone());
    group.bench_function("forward", |b| b.iter(|| no_grad(|| black_box(layer.forward(&xc).unwrap().output))));
    let xl = Var::leaf(x);
    group.bench_function("forward_backward", |b| {
        b.iter(|| black_box(layer.forward(&xl).unwrap().output.backward_with(&dy).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, moe);
criterion_main!(benches);
