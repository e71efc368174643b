//! A training step of a mixture-of-experts layer reuses the buffers of the previous step: once
//! warm, it asks the allocator for nothing the pool could serve. (Its own test binary: the pool
//! is process-wide, and no other test may allocate while the counts are read.)

use elide_autodiff::{ParamStore, Var};
use elide_cond::{ExpertKind, MoeConfig, MoeLayer, RouterKind};
use elide_kernels::gemm::Activation;
use elide_tensor::{pool, Rng, Tensor};

#[test]
fn a_warm_training_step_takes_every_large_buffer_from_the_pool() {
    // Sizes whose activations and gradients pass the pool's 128 KiB floor.
    let (t, d, hidden, experts) = (256, 64, 192, 4);
    let mut store = ParamStore::new();
    let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
    let config = MoeConfig::new(d, hidden, experts, top2, ExpertKind::Mlp(Activation::Gelu));
    let layer = MoeLayer::new(&mut store.scope("moe"), config, &mut Rng::seed(1)).unwrap();
    let x = Var::leaf(Tensor::randn(&[t, d], &mut Rng::seed(2)));
    let dy = Tensor::randn(&[t, d], &mut Rng::seed(3));
    let step = || {
        let out = layer.forward(&x).unwrap();
        drop(out.output.backward_with(&dy).unwrap());
    };
    step();
    step();
    let before = pool::stats();
    step();
    let after = pool::stats();
    assert!(after.hits > before.hits, "the step takes pooled buffers: {before:?} -> {after:?}");
    assert_eq!(after.misses, before.misses, "a warm step allocated afresh: {before:?} -> {after:?}");
}
