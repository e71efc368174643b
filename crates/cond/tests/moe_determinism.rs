//! Determinism: a [`MoeLayer`] forward and backward give bit-identical outputs, auxiliary
//! losses and gradients on rayon pools of 1 and 2 threads, for every router and both expert
//! kinds (the combine sums each token's slots in a fixed order, with no atomics).

use elide_autodiff::{ParamStore, Var};
use elide_cond::{Capacity, ExpertKind, MoeConfig, MoeLayer, NoiseScale, Rounding, RouterKind, RouterOptions};
use elide_kernels::gemm::Activation;
use elide_tensor::{Rng, Tensor};

/// Every output, loss and gradient of one training step, as bits.
fn step_bits(layer: &MoeLayer, x: &Tensor, r: &Tensor, threads: usize) -> Vec<u32> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let xv = Var::leaf(x.clone());
        // A noisy router draws the same noise on every run.
        let out = layer.forward_with_noise(&xv, Some(&mut Rng::seed(5))).unwrap();
        let loss = out.output.mul(&Var::constant(r.clone())).unwrap().sum_all().add(&out.aux_loss().unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let mut bits: Vec<u32> = out.output.value().to_vec().iter().map(|v| v.to_bits()).collect();
        bits.push(loss.value().item().unwrap().to_bits());
        bits.extend(grads.of(&xv).unwrap().to_vec().iter().map(|v| v.to_bits()));
        for p in layer.experts().params().iter().chain(layer.router().params()) {
            let g = grads.get(p).unwrap_or_else(|| panic!("no gradient for {}", p.name()));
            bits.extend(g.to_vec().iter().map(|v| v.to_bits()));
        }
        bits
    })
}

#[test]
fn forward_and_backward_are_bit_identical_on_one_and_two_threads() {
    let (t, e, d, h) = (200, 8, 32, 48);
    // At these sizes top-2 routes 400 rows, 400·32·48 ≈ 0.6M multiply-adds per grouped GEMM,
    // under the kernels' threshold for forking (2^20 today); the cases routing 800 rows (top-4,
    // expert choice with factor 4) cross it, so the parallel GEMM paths are compared too.
    let gelu = ExpertKind::Mlp(Activation::Gelu);
    let cases = [
        (RouterKind::TopK { k: 2, renormalize: true, noisy: false }, Capacity::Dropless, ExpertKind::SwiGlu),
        (RouterKind::TopK { k: 4, renormalize: false, noisy: true }, Capacity::factor(1.0), gelu),
        (RouterKind::Switch, Capacity::factor(1.25), ExpertKind::SwiGlu),
        (RouterKind::ExpertChoice { capacity_factor: 4.0, rounding: Rounding::Ceil }, Capacity::Dropless, gelu),
        (
            RouterKind::ExpertChoice { capacity_factor: 4.0, rounding: Rounding::Ceil },
            Capacity::factor(0.75),
            ExpertKind::SwiGlu,
        ),
    ];
    let plain = RouterOptions::default();
    let cases = cases.into_iter().map(|(r, c, x)| (r, c, x, plain)).chain([(
        // Learned noise and a bias on the router, exact-GELU experts, floor capacity.
        RouterKind::TopK { k: 4, renormalize: true, noisy: true },
        Capacity::factor(1.0).rounded(Rounding::Floor),
        ExpertKind::Mlp(Activation::GeluErf),
        RouterOptions { bias: true, noise: NoiseScale::Learned },
    )]);
    for (router, capacity, expert, router_options) in cases {
        let config = MoeConfig { capacity, router_options, ..MoeConfig::new(d, h, e, router, expert) };
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(3);
        let layer = MoeLayer::new(&mut store.scope("moe"), config, &mut rng).unwrap();
        let x = Tensor::randn(&[t, d], &mut rng);
        let r = Tensor::randn(&[t, d], &mut rng);
        let one = step_bits(&layer, &x, &r, 1);
        assert_eq!(one, step_bits(&layer, &x, &r, 2), "{router:?}, {capacity:?}, {expert:?}");
        // And a repeat on the same pool size reproduces itself.
        assert_eq!(one, step_bits(&layer, &x, &r, 2), "{router:?}: two runs on 2 threads differ");
    }
}
