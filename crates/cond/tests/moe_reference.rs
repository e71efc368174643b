//! [`MoeLayer`] against a naive reference: every router, capacity mode and expert kind, with odd
//! sizes, values within 1e-5 relative; gradients of a scalar loss (output and auxiliary losses)
//! by gradcheck and by finite differences of the reference; and the edge cases (an idle expert,
//! every token on one expert, duplicates, bad `k`, bad widths, non-finite logits, no tokens,
//! a capacity that computes to zero slots).
//!
//! The reference lives in `naive_moe/`.

use elide_autodiff::{gradcheck, no_grad, GradcheckOptions, ParamStore, Var};
use elide_cond::{Capacity, DispatchPlan, ExpertKind, MoeConfig, MoeLayer, Rounding, RouterKind};
use elide_kernels::gemm::Activation;
use elide_tensor::{Rng, Tensor};
use naive_moe::{build, f64s, reference, short, weights, Case, Reference, GELU};
use std::sync::Arc;

mod naive_moe;

/// Relative agreement, measured against the tensor's scale so entries near zero do not turn
/// rounding noise into a huge relative error.
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let tol = rtol * b.abs().max(0.1 * scale).max(1e-30);
        assert!((a as f64 - b).abs() <= tol, "{what}[{i}]: elide {a}, reference {b} (scale {scale})");
    }
}

/// Per expert, the tokens the plan computed, in slot order.
fn plan_kept(plan: &DispatchPlan) -> Vec<Vec<u32>> {
    (0..plan.num_experts()).map(|e| plan.tokens()[plan.expert_range(e)].to_vec()).collect()
}

/// A layer and an input `[T, d]` whose routing sits clear of ties: the first of the seeds
/// `seed, seed + 1000, ...` whose data passes `clear`. Near a tie, f32 (the layer) and f64 (the
/// reference) may legitimately choose differently, and finite differences would straddle a
/// change of selection.
fn clear_data(
    case: &Case,
    seed: u64,
    clear: impl Fn(&MoeLayer, &Tensor, &Reference) -> bool,
) -> (ParamStore, MoeLayer, Tensor) {
    for attempt in 0..20 {
        let seed = seed + 1000 * attempt;
        let (store, layer) = build(case, seed);
        let x = Tensor::randn(&[case.t, case.d], &mut Rng::seed(seed + 1));
        if clear(&layer, &x, &reference(case, &f64s(&x), &weights(&store))) {
            return (store, layer, x);
        }
    }
    panic!("{case:?}: no seed from {seed} gave data clear of ties");
}

/// Runs the layer and the reference on one case and compares everything they both report.
#[track_caller]
fn check_forward(case: &Case, seed: u64) {
    let (store, layer, x) = clear_data(case, seed, |_, _, r| r.margin > 1e-5);
    let got = layer.forward(&Var::constant(x.clone())).unwrap();
    let want = reference(case, &f64s(&x), &weights(&store));
    assert_eq!(plan_kept(&got.plan), want.kept, "{case:?}: kept (token, expert) pairs");
    assert_eq!(got.stats.dropped_assignments, want.dropped, "{case:?}: dropped");
    let tokens_per_expert: Vec<usize> = want.kept.iter().map(Vec::len).collect();
    assert_eq!(got.stats.tokens_per_expert, tokens_per_expert, "{case:?}");
    assert_eq!(got.output.shape(), &[case.t, case.d]);
    assert_close(&format!("{case:?}: output"), &got.output.value().to_vec(), &want.out, 1e-5);
    assert_close(
        &format!("{case:?}: balance"),
        &[got.balance_loss().unwrap().value().item().unwrap()],
        &[want.balance],
        1e-5,
    );
    assert_close(&format!("{case:?}: z"), &[got.z_loss().unwrap().value().item().unwrap()], &[want.z], 1e-5);
    // A token no expert computed gets exactly zero (it rides the residual outside the layer).
    let out = got.output.value().to_vec();
    for tok in 0..case.t as u32 {
        if !want.kept.iter().any(|k| k.contains(&tok)) {
            assert!(out[tok as usize * case.d..][..case.d].iter().all(|&v| v == 0.0), "{case:?}: token {tok}");
        }
    }
}

fn routers() -> [RouterKind; 5] {
    [
        RouterKind::TopK { k: 2, renormalize: true, noisy: false },
        RouterKind::TopK { k: 2, renormalize: false, noisy: false },
        RouterKind::Switch,
        RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Ceil },
        RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Floor },
    ]
}

#[test]
fn every_router_capacity_and_expert_matches_the_naive_reference() {
    let mut checked = 0;
    for router in routers() {
        let floor = Capacity::factor(1.0).rounded(Rounding::Floor);
        for capacity in [Capacity::Dropless, Capacity::factor(0.5), Capacity::factor(1.0), floor] {
            for expert in [GELU, ExpertKind::Mlp(Activation::GeluErf), ExpertKind::SwiGlu] {
                for t in [1, 7, 100] {
                    for e in [1, 3, 8, 64] {
                        if matches!(router, RouterKind::TopK { k, .. } if k > e) {
                            continue;
                        }
                        let case = Case { t, e, d: 6, h: 10, router, capacity, expert };
                        check_forward(&case, (t * 100 + e) as u64);
                        checked += 1;
                    }
                }
            }
        }
    }
    // 5 routers × 4 capacities × 3 experts × 3 T × 4 E, less top-2 over one expert (two kinds).
    assert_eq!(checked, 5 * 4 * 3 * 3 * 4 - 2 * 4 * 3 * 3);
}

/// One small configuration per router; the capacity modes that drop are among them.
fn gradient_cases() -> [Case; 4] {
    let case = |router, capacity, expert| Case { t: 6, e: 4, d: 4, h: 5, router, capacity, expert };
    [
        case(RouterKind::TopK { k: 2, renormalize: true, noisy: false }, Capacity::Dropless, ExpertKind::SwiGlu),
        // Capacity ceil(0.5·12/4) = 2 per expert for 12 assignments: something drops.
        case(RouterKind::TopK { k: 2, renormalize: false, noisy: false }, Capacity::factor(0.5), GELU),
        // Capacity 1 per expert for 6 tokens over 4 experts: something drops.
        case(RouterKind::Switch, Capacity::factor(0.5), GELU),
        // C = 2 tokens per expert, capacity 1: each expert keeps its best token.
        case(
            RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Ceil },
            Capacity::factor(0.5),
            ExpertKind::SwiGlu,
        ),
    ]
}

/// The data of gradient case `n`: clear of ties by a wide margin (the selection survives moving
/// any input element by 1.5 gradcheck steps), dropping something when it has a capacity; and the
/// loss weights `R`.
fn gradient_data(case: &Case, n: usize) -> (ParamStore, MoeLayer, Tensor, Tensor) {
    let step = GradcheckOptions::default().step;
    let (store, layer, x) = clear_data(case, 40 + n as u64, |layer, x, r| {
        let plan_at = |x: Tensor| no_grad(|| layer.forward(&Var::constant(x)).unwrap().plan);
        let base = plan_at(x.clone());
        let stable = (0..x.numel()).all(|i| {
            [-1.5 * step, 1.5 * step].iter().all(|delta| {
                let mut moved = x.to_vec();
                moved[i] += delta;
                plan_at(Tensor::from_vec(moved, x.shape()).unwrap()) == base
            })
        });
        r.margin > 1e-3 && (case.capacity == Capacity::Dropless || r.dropped > 0) && stable
    });
    let r = Tensor::randn(&[case.t, case.d], &mut Rng::seed(99 + n as u64));
    (store, layer, x, r)
}

/// `Σ out ⊙ r + aux_loss` through the layer.
fn layer_loss(layer: &MoeLayer, x: &Var, r: &Tensor) -> elide_cond::Result<Var> {
    let out = layer.forward(x)?;
    Ok(out.output.mul(&Var::constant(r.clone()))?.sum_all().add(&out.aux_loss()?)?)
}

#[test]
fn gradients_match_finite_differences_of_the_naive_reference() {
    const STEP: f64 = 1e-6;
    for (n, case) in gradient_cases().iter().enumerate() {
        let (store, layer, x, r) = gradient_data(case, n);
        let xv = Var::leaf(x.clone());
        let grads = layer_loss(&layer, &xv, &r).unwrap().backward().unwrap();

        let (x64, r64, w) = (f64s(&x), f64s(&r), weights(&store));
        let base = reference(case, &x64, &w);
        // Central differences of the reference loss; the selection must not move.
        let central = |what: &str, at: &mut dyn FnMut(f64) -> Reference| {
            let (plus, minus) = (at(STEP), at(-STEP));
            assert_eq!((&plus.kept, &minus.kept), (&base.kept, &base.kept), "{case:?}: {what} moves the selection");
            (plus.loss(&r64) - minus.loss(&r64)) / (2.0 * STEP)
        };
        let want: Vec<f64> = (0..x64.len())
            .map(|i| {
                central(&format!("x[{i}]"), &mut |delta| {
                    let mut x = x64.clone();
                    x[i] += delta;
                    reference(case, &x, &w)
                })
            })
            .collect();
        assert_close(&format!("{case:?}: grad x"), &grads.of(&xv).unwrap().to_vec(), &want, 1e-5);
        // Every element of every parameter.
        for p in store.iter() {
            let name = short(p.name());
            let want: Vec<f64> = (0..w[&name].len())
                .map(|i| {
                    central(&format!("{name}[{i}]"), &mut |delta| {
                        let mut moved = w.clone();
                        moved.get_mut(&name).unwrap()[i] += delta;
                        reference(case, &x64, &moved)
                    })
                })
                .collect();
            let got = grads.get(p).unwrap_or_else(|| panic!("{case:?}: no gradient for {}", p.name()));
            // The router's gradient leaves the softmax backward `p ⊙ (g − Σ p·g)`, which cancels
            // in f32 when one probability is near 1: its absolute error is about ε·|g|, measured
            // at 1.2e-5 of the entry on the Switch case (a tenth of that elsewhere).
            let rtol = if name == "router" { 2e-5 } else { 1e-5 };
            assert_close(&format!("{case:?}: grad {name}"), &got.to_vec(), &want, rtol);
        }
    }
}

#[test]
fn input_gradient_passes_gradcheck_through_the_layer() {
    for (n, case) in gradient_cases().iter().enumerate() {
        // `gradient_data` made sure the finite differences never straddle a change of selection.
        let (_store, layer, x, r) = gradient_data(case, n);
        let f = |v: &[Var]| {
            layer_loss(&layer, &v[0], &r).map_err(|e| elide_autodiff::Error::Gradcheck(format!("forward failed: {e}")))
        };
        let report = gradcheck(f, &[x], GradcheckOptions::default()).unwrap_or_else(|e| panic!("{case:?}: {e}"));
        assert_eq!(report.checked, case.t * case.d);
    }
}

/// `x` `[t, d]` whose first feature is 1: a router weight row `W_r[0]` then acts as a per-expert
/// logit bias, which the edge-case tests use to force routing decisions.
fn biased_input(t: usize, d: usize, seed: u64) -> Tensor {
    let mut v = Tensor::randn(&[t, d], &mut Rng::seed(seed)).to_vec();
    for row in v.chunks_mut(d) {
        row[0] = 1.0;
    }
    Tensor::from_vec(v, &[t, d]).unwrap()
}

/// Adds `bias[j]` to the router's logit for expert `j` (through the constant first feature).
fn bias_router(layer: &MoeLayer, bias: &[f32]) {
    let w = layer.router().weight();
    let mut v = w.value().to_vec();
    for (j, b) in bias.iter().enumerate() {
        v[j] += b;
    }
    w.set(Tensor::from_vec(v, &w.shape()).unwrap()).unwrap();
}

#[test]
fn an_expert_that_receives_no_tokens_costs_nothing_and_takes_zero_gradient() {
    const IDLE: usize = 2;
    for expert in [GELU, ExpertKind::SwiGlu] {
        let case = Case {
            t: 20,
            e: 4,
            d: 6,
            h: 10,
            router: RouterKind::TopK { k: 2, renormalize: true, noisy: false },
            capacity: Capacity::Dropless,
            expert,
        };
        let (store, layer) = build(&case, 3);
        bias_router(&layer, &[0.0, 0.0, -50.0, 0.0]);
        let x = biased_input(case.t, case.d, 4);
        let xv = Var::leaf(x.clone());
        let out = layer.forward(&xv).unwrap();
        assert_eq!(out.stats.tokens_per_expert[IDLE], 0, "{expert:?}");
        assert_eq!(out.plan.expert_range(IDLE).len(), 0);
        let want = reference(&case, &f64s(&x), &weights(&store));
        assert_close("output", &out.output.value().to_vec(), &want.out, 1e-5);
        // The FLOPs count only routed rows: the idle expert adds nothing. Written out for these
        // sizes (not through the layer's own formula): the router is a [20, 6] x [6, 4] product;
        // each of the 20·2 routed rows runs two [6, 10]-sized GEMMs (MLP: up, down) or three
        // (SwiGLU: gate, up, down), 2 FLOPs per multiply-add.
        let router_flops = 2.0 * 20.0 * 6.0 * 4.0;
        let gemms_per_row = if expert == ExpertKind::SwiGlu { 3.0 } else { 2.0 };
        let expert_flops = 2.0 * 40.0 * gemms_per_row * 6.0 * 10.0;
        assert_eq!((case.t, case.d, case.e, case.h), (20, 6, 4, 10));
        assert_eq!(out.flops, router_flops + expert_flops, "{expert:?}");
        let grads = out.output.square().sum_all().backward().unwrap();
        for p in layer.experts().params() {
            let g = grads.get(p).unwrap().to_vec();
            let per_expert = g.len() / case.e;
            let idle = &g[IDLE * per_expert..(IDLE + 1) * per_expert];
            assert!(idle.iter().all(|&v| v == 0.0), "{expert:?}: {} of the idle expert", p.name());
            assert!(g.iter().any(|&v| v != 0.0), "{expert:?}: {} has no gradient at all", p.name());
        }
    }
}

#[test]
fn all_tokens_to_one_expert() {
    const HOT: usize = 1;
    for expert in [GELU, ExpertKind::SwiGlu] {
        for capacity in [Capacity::Dropless, Capacity::factor(1.0)] {
            let case = Case { t: 10, e: 4, d: 6, h: 10, router: RouterKind::Switch, capacity, expert };
            let (store, layer) = build(&case, 5);
            bias_router(&layer, &[0.0, 50.0, 0.0, 0.0]);
            let x = biased_input(case.t, case.d, 6);
            let out = layer.forward(&Var::constant(x.clone())).unwrap();
            let want = reference(&case, &f64s(&x), &weights(&store));
            assert_close("output", &out.output.value().to_vec(), &want.out, 1e-5);
            let all: Vec<u32> = (0..10).collect();
            match capacity {
                Capacity::Dropless => {
                    assert_eq!(out.stats.tokens_per_expert, vec![0, 10, 0, 0]);
                    assert_eq!(out.plan.tokens(), all);
                    assert!(out.plan.dropped().is_empty());
                }
                Capacity::Factor { .. } => {
                    // ceil(1.0·10/4) = 3 slots: the first three tokens stay, the others drop
                    // and get a zero output (their residual carries them).
                    assert_eq!(out.plan.capacity(), Some(3));
                    assert_eq!(out.stats.tokens_per_expert, vec![0, 3, 0, 0]);
                    assert_eq!(out.plan.dropped_tokens(), all[3..].to_vec());
                    assert_eq!((out.stats.dropped_assignments, out.stats.dropped_tokens), (7, 7));
                    assert!(out.output.value().to_vec()[3 * case.d..].iter().all(|&v| v == 0.0));
                }
            }
            assert_eq!(out.stats.max_load_over_mean, 4.0);
            assert!(out.plan.expert_range(HOT).len() == out.plan.num_kept());
        }
    }
}

#[test]
fn duplicate_expert_ids_are_refused() {
    let err = DispatchPlan::new(&[0, 1, 0], &[2, 0, 2], 2, 3, Capacity::Dropless).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DispatchPlan: token 0 is assigned to expert 2 twice (assignments 0 and 2); duplicate expert ids refused"
    );
}

#[test]
fn top_k_out_of_range_is_refused() {
    for (k, e) in [(0, 4), (5, 4), (2, 1)] {
        let case = Case {
            t: 1,
            e,
            d: 6,
            h: 10,
            router: RouterKind::TopK { k, renormalize: true, noisy: false },
            capacity: Capacity::Dropless,
            expert: GELU,
        };
        let mut store = ParamStore::new();
        let err = MoeLayer::new(&mut store.scope("moe"), case.config(), &mut Rng::seed(0)).err().unwrap();
        assert_eq!(err.to_string(), format!("top_k: k = {k} must be in 1..={e} experts"));
        assert!(store.is_empty(), "a refused layer registers nothing");
    }
}

#[test]
fn a_refused_layer_registers_nothing() {
    // Bad capacity factors and zero sizes are refused; the store must be left as it was so the
    // caller can retry under the same scope (a bad `k` already is: `top_k_out_of_range_is_refused`).
    let case = Case { t: 1, e: 4, d: 6, h: 10, router: RouterKind::Switch, capacity: Capacity::Dropless, expert: GELU };
    let bad = [
        MoeConfig { capacity: Capacity::factor(0.0), ..case.config() },
        MoeConfig { capacity: Capacity::factor(f32::NAN), ..case.config() },
        MoeConfig { hidden: 0, ..case.config() },
    ];
    for config in bad {
        let mut store = ParamStore::new();
        assert!(MoeLayer::new(&mut store.scope("moe"), config, &mut Rng::seed(0)).is_err());
        assert!(
            store.is_empty(),
            "{config:?}: left {:?} registered",
            store.iter().map(|p| p.name()).collect::<Vec<_>>()
        );
    }
}

#[test]
fn mismatched_widths_are_refused() {
    let case = Case {
        t: 3,
        e: 4,
        d: 6,
        h: 10,
        router: RouterKind::TopK { k: 2, renormalize: true, noisy: false },
        capacity: Capacity::Dropless,
        expert: GELU,
    };
    let (_store, layer) = build(&case, 7);
    for shape in [&[3, 7][..], &[3, 5], &[6], &[2, 3, 6]] {
        let err = layer.forward(&Var::constant(Tensor::zeros(shape))).err().unwrap();
        assert_eq!(err.to_string(), format!("router: input must be [tokens, d_model = 6], got {shape:?}"));
    }
    // The experts refuse a plan, an input or gates that do not fit them.
    let experts = layer.experts();
    let plan = Arc::new(DispatchPlan::new(&[0, 1], &[0, 1], 3, 2, Capacity::Dropless).unwrap());
    let gates = Var::constant(Tensor::full(&[2], 0.5));
    let err = experts.forward(&Var::constant(Tensor::zeros(&[3, 6])), &gates, &plan).err().unwrap();
    assert_eq!(err.to_string(), "Experts::forward: the plan routes to 2 experts, the layer has 4");
    let plan = Arc::new(DispatchPlan::new(&[0, 1], &[0, 3], 3, 4, Capacity::Dropless).unwrap());
    let err = experts.forward(&Var::constant(Tensor::zeros(&[3, 5])), &gates, &plan).err().unwrap();
    assert_eq!(err.to_string(), "Experts::forward: x must be [3, 6] (tokens of the plan, d_model), got [3, 5]");
    let err = experts.forward(&Var::constant(Tensor::zeros(&[3, 6])), &Var::constant(Tensor::zeros(&[3])), &plan);
    assert_eq!(err.err().unwrap().to_string(), "Experts::forward: slot gates must be [2], got [3]");
}

#[test]
fn non_finite_router_input_is_refused_naming_the_row() {
    let case = Case {
        t: 5,
        e: 4,
        d: 6,
        h: 10,
        router: RouterKind::TopK { k: 2, renormalize: true, noisy: false },
        capacity: Capacity::Dropless,
        expert: ExpertKind::SwiGlu,
    };
    let (_store, layer) = build(&case, 8);
    let x = Tensor::randn(&[5, 6], &mut Rng::seed(9)).to_vec();
    // NaN and ±inf inputs, and a finite input so large that its logits overflow.
    for (row, value) in [(3, f32::NAN), (1, f32::INFINITY), (4, f32::NEG_INFINITY), (2, 3e38)] {
        let mut bad = x.clone();
        bad[row * 6..(row + 1) * 6].fill(value);
        let err = layer.forward(&Var::constant(Tensor::from_vec(bad, &[5, 6]).unwrap())).err().unwrap().to_string();
        assert!(err.starts_with(&format!("router: NaN or infinite logit in row {row} (")), "{value}: {err}");
    }
    // A non-finite router weight is caught the same way.
    let w = layer.router().weight();
    let mut v = w.value().to_vec();
    v[0] = f32::NAN;
    w.set(Tensor::from_vec(v, &w.shape()).unwrap()).unwrap();
    let err = layer.forward(&Var::constant(Tensor::from_vec(x, &[5, 6]).unwrap())).err().unwrap().to_string();
    assert_eq!(err, "router: NaN or infinite logit in row 0 (expert 0 is NaN)");
}

#[test]
fn an_empty_batch_gives_an_empty_output_and_zero_losses() {
    for router in routers() {
        for capacity in [Capacity::Dropless, Capacity::factor(0.5)] {
            for expert in [GELU, ExpertKind::SwiGlu] {
                let case = Case { t: 0, e: 3, d: 6, h: 10, router, capacity, expert };
                let (_store, layer) = build(&case, 10);
                let x = Var::leaf(Tensor::zeros(&[0, 6]));
                let out = layer.forward(&x).unwrap();
                assert_eq!(out.output.shape(), &[0, 6], "{case:?}");
                assert_eq!(out.aux_loss().unwrap().value().item().unwrap(), 0.0);
                assert_eq!((out.stats.tokens_per_expert.clone(), out.plan.num_kept(), out.flops), (vec![0; 3], 0, 0.0));
                // Training on an empty batch works and changes nothing.
                let grads = out.output.sum_all().add(&out.aux_loss().unwrap()).unwrap().backward().unwrap();
                if let Some(g) = grads.of(&x) {
                    assert_eq!(g.shape(), &[0, 6]);
                }
                for p in layer.experts().params().iter().chain([layer.router().weight()]) {
                    if let Some(g) = grads.get(p) {
                        assert!(g.to_vec().iter().all(|&v| v == 0.0), "{case:?}: {}", p.name());
                    }
                }
            }
        }
    }
}

#[test]
fn a_capacity_that_computes_to_zero_slots_keeps_one() {
    // ceil(1e-9·S/E) = 1 for any S > 0: each expert keeps its first assignment (documented on
    // `Capacity::Factor`), and the output still matches the reference.
    for router in routers() {
        let case = Case { t: 7, e: 3, d: 6, h: 10, router, capacity: Capacity::factor(1e-9), expert: GELU };
        let (store, layer) = build(&case, 11);
        let x = Tensor::randn(&[7, 6], &mut Rng::seed(12));
        let out = layer.forward(&Var::constant(x.clone())).unwrap();
        assert_eq!(out.plan.capacity(), Some(1), "{router:?}");
        assert_eq!(out.stats.tokens_per_expert.iter().sum::<usize>(), out.plan.num_kept());
        assert!(out.stats.tokens_per_expert.iter().all(|&n| n <= 1));
        let want = reference(&case, &f64s(&x), &weights(&store));
        assert_eq!(plan_kept(&out.plan), want.kept);
        assert_close("output", &out.output.value().to_vec(), &want.out, 1e-5);
    }
    // The same for expert choice's own capacity: C = ceil(7·1e-9/3) clamps to 1 token per expert.
    let router = RouterKind::ExpertChoice { capacity_factor: 1e-9, rounding: Rounding::Ceil };
    let case = Case { t: 7, e: 3, d: 6, h: 10, router, capacity: Capacity::Dropless, expert: GELU };
    let (_store, layer) = build(&case, 13);
    let out = layer.forward(&Var::constant(Tensor::randn(&[7, 6], &mut Rng::seed(14)))).unwrap();
    assert_eq!(out.stats.tokens_per_expert, vec![1, 1, 1]);
}
