//! Fuzzing the public constructors of the conditional layer: random routings at
//! `DispatchPlan::new` (tokens and experts in and out of range, duplicates, capacities including
//! NaN and negative factors) and random configurations at `MoeLayer::new` followed by a forward
//! pass. Nothing may panic: every call returns a value or an error, and a plan that is built
//! keeps or drops each assignment exactly once. A few hundred cases run in CI; the ignored
//! `…_long` twins run 100,000 each:
//! `cargo test --release -p elide-cond --test fuzz_constructors -- --ignored`.

use elide_autodiff::{no_grad, ParamStore, Var};
use elide_cond::{
    Activation, Capacity, DispatchPlan, ExpertKind, MoeConfig, MoeLayer, NoiseScale, Rounding, RouterKind,
    RouterOptions, ScoreFn, Selection,
};
use elide_tensor::{Rng, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Floats a configuration may hold: ordinary values and the ones that break arithmetic.
fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -2.0f32..4.0,
        1 => Just(0.0f32),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(-f32::INFINITY),
        1 => Just(f32::MAX),
    ]
}

fn capacity() -> impl Strategy<Value = Capacity> {
    let factor = (float(), rounding()).prop_map(|(factor, rounding)| Capacity::Factor { factor, rounding });
    prop_oneof![Just(Capacity::Dropless), factor]
}

fn rounding() -> impl Strategy<Value = Rounding> {
    prop_oneof![Just(Rounding::Ceil), Just(Rounding::Floor)]
}

fn check_plan(
    pairs: Vec<(u32, u32)>,
    num_tokens: usize,
    num_experts: usize,
    capacity: Capacity,
) -> Result<(), TestCaseError> {
    let (tokens, experts): (Vec<u32>, Vec<u32>) = pairs.into_iter().unzip();
    if let Ok(plan) = DispatchPlan::new(&tokens, &experts, num_tokens, num_experts, capacity) {
        // Every assignment is either kept in exactly one expert's slots or dropped.
        prop_assert_eq!(plan.num_kept() + plan.dropped().len(), tokens.len());
        prop_assert_eq!(plan.tokens_per_expert().iter().sum::<usize>(), plan.num_kept());
        for e in 0..num_experts {
            for &t in &plan.tokens()[plan.expert_range(e)] {
                prop_assert!((t as usize) < num_tokens);
            }
        }
    }
    Ok(())
}

fn router() -> impl Strategy<Value = RouterKind> {
    prop_oneof![
        (0usize..6, any::<bool>(), any::<bool>()).prop_map(|(k, renormalize, noisy)| RouterKind::TopK {
            k,
            renormalize,
            noisy
        }),
        Just(RouterKind::Switch),
        (float(), rounding())
            .prop_map(|(capacity_factor, rounding)| RouterKind::ExpertChoice { capacity_factor, rounding }),
        (
            prop_oneof![Just(ScoreFn::Softmax), Just(ScoreFn::Sigmoid), Just(ScoreFn::Raw)],
            prop_oneof![
                (0usize..6, any::<bool>()).prop_map(|(k, renormalize)| Selection::TopK { k, renormalize }),
                (float(), rounding())
                    .prop_map(|(capacity_factor, rounding)| Selection::TopC { capacity_factor, rounding }),
                float().prop_map(|threshold| Selection::Threshold { threshold }),
            ]
        )
            .prop_map(|(score, selection)| RouterKind::Scored { score, selection }),
    ]
}

fn expert() -> impl Strategy<Value = ExpertKind> {
    prop_oneof![
        Just(ExpertKind::SwiGlu),
        prop_oneof![
            Just(Activation::Identity),
            Just(Activation::Relu),
            Just(Activation::Gelu),
            Just(Activation::GeluErf),
            Just(Activation::Silu)
        ]
        .prop_map(ExpertKind::Mlp),
    ]
}

prop_compose! {
    fn config()(
        d_model in 0usize..9,
        hidden in 0usize..9,
        num_experts in 0usize..7,
        router in router(),
        expert in expert(),
        capacity in capacity(),
        router_options in (any::<bool>(), any::<bool>()).prop_map(|(bias, learned)| RouterOptions {
            bias,
            noise: if learned { NoiseScale::Learned } else { NoiseScale::Fixed },
        }),
        balance_coef in float(),
        z_loss_coef in float(),
    ) -> MoeConfig {
        MoeConfig {
            capacity,
            balance_coef,
            z_loss_coef,
            router_options,
            ..MoeConfig::new(d_model, hidden, num_experts, router, expert)
        }
    }
}

fn check_layer(config: MoeConfig, tokens: usize, seed: u64, train: bool) -> Result<(), TestCaseError> {
    let mut store = ParamStore::new();
    let Ok(layer) = MoeLayer::new(&mut store.scope("moe"), config, &mut Rng::seed(seed)) else { return Ok(()) };
    let x = Var::constant(Tensor::randn(&[tokens, config.d_model], &mut Rng::seed(seed + 1)));
    let out = if train { layer.forward(&x) } else { no_grad(|| layer.forward(&x)) };
    if let Ok(out) = out {
        prop_assert_eq!(out.output.shape(), &[tokens, config.d_model][..]);
        if train {
            // A backward pass may refuse (nothing recorded), but must not panic.
            if let Ok(loss) =
                out.output.square().sum_all().add(&out.aux_loss().map_err(|e| TestCaseError::fail(e.to_string()))?)
            {
                let _ = loss.backward();
            }
        }
    }
    Ok(())
}

fn pairs() -> impl Strategy<Value = Vec<(u32, u32)>> {
    proptest::collection::vec((0u32..12, 0u32..12), 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn fuzz_dispatch_plan(pairs in pairs(), t in 0usize..12, e in 0usize..12, cap in capacity()) {
        check_plan(pairs, t, e, cap)?;
    }

    #[test]
    fn fuzz_moe_layer(config in config(), tokens in 0usize..7, seed in 0u64..1000, train in any::<bool>()) {
        check_layer(config, tokens, seed, train)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100_000))]

    #[test]
    #[ignore = "long fuzzing run; see README.md"]
    fn fuzz_dispatch_plan_long(pairs in pairs(), t in 0usize..12, e in 0usize..12, cap in capacity()) {
        check_plan(pairs, t, e, cap)?;
    }

    #[test]
    #[ignore = "long fuzzing run; see README.md"]
    fn fuzz_moe_layer_long(config in config(), tokens in 0usize..7, seed in 0u64..1000, train in any::<bool>()) {
        check_layer(config, tokens, seed, train)?;
    }
}
