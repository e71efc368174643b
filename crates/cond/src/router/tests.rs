use super::*;
use crate::testing::{
    assert_clear_choices, assert_clear_choices_many, assert_close, check_grad, check_grad_many, separated_logits,
};
use elide_autodiff::ParamStore;

const TOP2: RouterKind = RouterKind::TopK { k: 2, renormalize: true, noisy: false };

/// Reference token choice: sort each row of `probs` (descending, ties to the lower expert).
fn naive_token_choice(probs: &[f32], e: usize, k: usize, renormalize: bool) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let (mut tokens, mut experts, mut gates) = (Vec::new(), Vec::new(), Vec::new());
    for (t, row) in probs.chunks(e).enumerate() {
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let sum: f32 = order[..k].iter().map(|&i| row[i]).sum();
        for &i in &order[..k] {
            tokens.push(t as u32);
            experts.push(i as u32);
            gates.push(if renormalize { row[i] / sum } else { row[i] });
        }
    }
    (tokens, experts, gates)
}

/// Reference expert choice: sort each column of `probs` (descending, ties to the lower token).
fn naive_expert_choice(probs: &[f32], t: usize, e: usize, c: usize) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let (mut tokens, mut experts, mut gates) = (Vec::new(), Vec::new(), Vec::new());
    for x in 0..e {
        let col: Vec<f32> = (0..t).map(|i| probs[i * e + x]).collect();
        let mut order: Vec<usize> = (0..t).collect();
        order.sort_by(|&a, &b| col[b].total_cmp(&col[a]).then(a.cmp(&b)));
        for &i in &order[..c] {
            tokens.push(i as u32);
            experts.push(x as u32);
            gates.push(col[i]);
        }
    }
    (tokens, experts, gates)
}

fn router(d: usize, e: usize, kind: RouterKind, seed: u64) -> Router {
    let mut store = ParamStore::new();
    Router::new(&mut store.scope("moe"), d, e, kind, &mut Rng::seed(seed)).unwrap()
}

fn input(t: usize, d: usize, seed: u64) -> Var {
    Var::constant(Tensor::randn(&[t, d], &mut Rng::seed(seed)))
}

#[test]
fn every_router_matches_the_naive_reference() {
    for (t, e) in [(1, 1), (7, 3), (100, 8), (33, 64)] {
        let x = input(t, 16, t as u64);
        let mut kinds = vec![RouterKind::Switch];
        for k in [1, 2, 8].into_iter().filter(|&k| k <= e) {
            for renormalize in [false, true] {
                kinds.push(RouterKind::TopK { k, renormalize, noisy: false });
            }
        }
        for capacity_factor in [0.01, 1.0, 2.0, 1e9] {
            for rounding in [Rounding::Ceil, Rounding::Floor] {
                kinds.push(RouterKind::ExpertChoice { capacity_factor, rounding });
            }
        }
        for kind in kinds {
            let r = router(16, e, kind, e as u64).route(&x, None).unwrap();
            let probs = r.probs.value().to_vec();
            let (tokens, experts, gates) = match kind {
                RouterKind::TopK { k, renormalize, .. } => naive_token_choice(&probs, e, k, renormalize),
                RouterKind::Switch => naive_token_choice(&probs, e, 1, false),
                RouterKind::ExpertChoice { capacity_factor, rounding } => {
                    naive_expert_choice(&probs, t, e, expert_choice_capacity(t, e, capacity_factor, rounding))
                }
                RouterKind::Scored { .. } => unreachable!("only the softmax kinds are listed"),
            };
            assert_eq!((&r.tokens, &r.experts), (&tokens, &experts), "{kind:?}, T = {t}, E = {e}");
            assert_close(&r.gate_values(), &gates, 1e-6, "gates");
            assert_eq!((r.num_tokens, r.num_experts, r.logits.shape()), (t, e, &[t, e][..]));
        }
    }
}

/// Reference scores, and the pairs `selection` keeps, one token and one destination at a time.
fn naive_scored(logits: &[f32], t: usize, e: usize, kind: RouterKind) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let (score, selection) = kind.parts();
    let scores: Vec<f32> = match score {
        ScoreFn::Softmax => logits
            .chunks(e)
            .flat_map(|row| {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
                row.iter().map(move |&v| ((v as f64 - m).exp() / z) as f32).collect::<Vec<_>>()
            })
            .collect(),
        ScoreFn::Sigmoid => logits.iter().map(|&v| (1.0 / (1.0 + (-(v as f64)).exp())) as f32).collect(),
        ScoreFn::Raw => logits.to_vec(),
    };
    match selection {
        Selection::TopK { k, renormalize } => naive_token_choice(&scores, e, k, renormalize),
        Selection::TopC { capacity_factor, rounding } => {
            naive_expert_choice(&scores, t, e, expert_choice_capacity(t, e, capacity_factor, rounding))
        }
        Selection::Threshold { threshold } => {
            let (mut tokens, mut experts, mut gates) = (Vec::new(), Vec::new(), Vec::new());
            for (i, &score) in scores.iter().enumerate().filter(|(_, &v)| v >= threshold) {
                tokens.push((i / e) as u32);
                experts.push((i % e) as u32);
                gates.push(score);
            }
            (tokens, experts, gates)
        }
    }
}

fn scored_kinds(e: usize) -> Vec<RouterKind> {
    let mut kinds = Vec::new();
    for score in [ScoreFn::Softmax, ScoreFn::Sigmoid, ScoreFn::Raw] {
        let threshold = if score == ScoreFn::Raw { 0.1 } else { 0.3 };
        let selections = [
            Selection::TopK { k: e.min(2), renormalize: false },
            Selection::TopK { k: 1, renormalize: true },
            Selection::TopC { capacity_factor: 0.125, rounding: Rounding::Ceil },
            Selection::TopC { capacity_factor: 1.5, rounding: Rounding::Ceil },
            Selection::TopC { capacity_factor: 1.5, rounding: Rounding::Floor },
            Selection::Threshold { threshold },
        ];
        kinds.extend(selections.into_iter().map(|selection| RouterKind::Scored { score, selection }));
    }
    kinds
}

#[test]
fn every_score_and_selection_matches_the_naive_reference() {
    for (t, e) in [(1, 1), (7, 1), (33, 3), (100, 8)] {
        let logits = Tensor::randn(&[t, e], &mut Rng::seed(t as u64 + 3));
        for kind in scored_kinds(e) {
            let r = kind.route_logits(&Var::constant(logits.clone())).unwrap();
            let (tokens, experts, gates) = naive_scored(&logits.to_vec(), t, e, kind);
            assert_eq!((&r.tokens, &r.experts), (&tokens, &experts), "{kind:?}, T = {t}, E = {e}");
            assert_close(&r.gate_values(), &gates, 1e-6, "gates");
        }
    }
}

#[test]
fn a_one_destination_gate_has_a_real_gradient() {
    // Softmax over one destination is the constant 1; sigmoid and raw scores are not.
    let logits = separated_logits(8, 1, 4);
    for score in [ScoreFn::Sigmoid, ScoreFn::Raw] {
        for selection in [
            Selection::TopC { capacity_factor: 0.25, rounding: Rounding::Ceil },
            Selection::TopK { k: 1, renormalize: false },
        ] {
            let kind = RouterKind::Scored { score, selection };
            check_grad(|l| Ok(kind.route_logits(l)?.gates), &logits);
            let leaf = Var::leaf(logits.clone());
            let grads = kind.route_logits(&leaf).unwrap().gates.sum_all().backward().unwrap();
            assert!(grads.of(&leaf).unwrap().to_vec().iter().any(|&g| g != 0.0), "{kind:?}");
        }
    }
    let softmax =
        RouterKind::Scored { score: ScoreFn::Softmax, selection: Selection::TopK { k: 1, renormalize: false } };
    assert!(softmax.route_logits(&Var::constant(logits)).unwrap().gate_values().iter().all(|&g| g == 1.0));
}

#[test]
fn thresholds_are_checked_against_the_score_range() {
    let kind = |score, threshold| RouterKind::Scored { score, selection: Selection::Threshold { threshold } };
    assert_eq!(
        kind(ScoreFn::Sigmoid, 1.5).validate(4).unwrap_err().to_string(),
        "router: threshold 1.5 must be finite, and in [0, 1] for Sigmoid scores"
    );
    assert!(kind(ScoreFn::Softmax, -0.1).validate(4).is_err());
    assert!(kind(ScoreFn::Raw, f32::NAN).validate(4).is_err());
    assert!(kind(ScoreFn::Raw, -3.0).validate(4).is_ok());
    let top_c = RouterKind::Scored {
        score: ScoreFn::Raw,
        selection: Selection::TopC { capacity_factor: 0.0, rounding: Rounding::Ceil },
    };
    assert_eq!(top_c.validate(1).unwrap_err().to_string(), "ExpertChoice: capacity factor 0 must be finite and > 0");
}

#[test]
fn expert_choice_capacity_rounds_as_asked_and_clamps() {
    let (ceil, floor) = (Rounding::Ceil, Rounding::Floor);
    assert_eq!(expert_choice_capacity(7, 3, 1.0, ceil), 3); // ⌈7/3⌉
    assert_eq!(expert_choice_capacity(7, 3, 1.0, floor), 2); // ⌊7/3⌋
    assert_eq!(expert_choice_capacity(37, 8, 1.0, ceil), 5); // ⌈4.625⌉
    assert_eq!(expert_choice_capacity(37, 8, 1.0, floor), 4); // ⌊4.625⌋
    assert_eq!(expert_choice_capacity(100, 8, 2.0, floor), 25); // exact: both agree
    assert_eq!(expert_choice_capacity(100, 8, 2.0, ceil), 25);
    assert_eq!(expert_choice_capacity(7, 64, 0.01, ceil), 1); // would be 0 slots: clamped to 1
    assert_eq!(expert_choice_capacity(7, 3, 0.1, floor), 1); // ⌊0.23⌋ = 0: clamped to 1
    assert_eq!(expert_choice_capacity(7, 3, 1e30, floor), 7); // never more than T
    assert_eq!(expert_choice_capacity(0, 3, 1.0, ceil), 0);
}

#[test]
fn expert_choice_takes_floor_or_ceil_tokens_at_t37_e8() {
    // T = 37, E = 8, cf = 1: T·cf/E = 4.625, so each expert takes 5 tokens (ceil) or 4 (floor).
    let x = input(37, 6, 3);
    for (rounding, c) in [(Rounding::Ceil, 5usize), (Rounding::Floor, 4)] {
        let r = router(6, 8, RouterKind::ExpertChoice { capacity_factor: 1.0, rounding }, 1).route(&x, None).unwrap();
        assert_eq!(r.len(), 8 * c, "{rounding:?}");
        for expert in 0..8u32 {
            assert_eq!(r.experts.iter().filter(|&&e| e == expert).count(), c, "{rounding:?}, expert {expert}");
        }
    }
}

#[test]
fn an_empty_batch_gives_an_empty_routing() {
    for kind in [TOP2, RouterKind::Switch, RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Ceil }]
    {
        let r = router(4, 3, kind, 1).route(&input(0, 4, 0), Some(&mut Rng::seed(0))).unwrap();
        assert_eq!((r.num_tokens, r.num_experts, r.len()), (0, 3, 0));
        assert_eq!((r.gates.shape(), r.probs.shape(), r.logits.shape()), (&[0][..], &[0, 3][..], &[0, 3][..]));
    }
}

#[test]
fn noise_is_added_only_when_a_generator_is_given() {
    let noisy = RouterKind::TopK { k: 2, renormalize: false, noisy: true };
    let r = router(8, 6, noisy, 3);
    let x = input(50, 8, 4);
    let clean = r.route(&x, None).unwrap();
    let plain = router(8, 6, RouterKind::TopK { k: 2, renormalize: false, noisy: false }, 3).route(&x, None);
    assert_eq!(clean.experts, plain.unwrap().experts);

    let noised = r.route(&x, Some(&mut Rng::seed(9))).unwrap();
    // The same noise, added by hand, gives the same routing.
    let noise = Tensor::randn(&[50, 6], &mut Rng::seed(9)).mul_scalar(noise_std(6));
    let by_hand = noisy.route_logits(&r.logits(&x).unwrap().add(&Var::constant(noise)).unwrap()).unwrap();
    assert_eq!(noised.experts, by_hand.experts);
    assert_eq!(noised.logits.value().to_vec(), by_hand.logits.value().to_vec());
    assert_ne!(noised.experts, clean.experts, "noise of std 1/E should move some near-tied choice");
    // A non-noisy kind ignores the generator.
    assert_eq!(router(8, 6, TOP2, 3).route(&x, Some(&mut Rng::seed(9))).unwrap().experts, {
        router(8, 6, TOP2, 3).route(&x, None).unwrap().experts
    });
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(0);
    let mut new = |e, kind| Router::new(&mut store.scope("m"), 4, e, kind, &mut rng).map(|_| ()).unwrap_err();
    let k = |k| RouterKind::TopK { k, renormalize: true, noisy: false };
    assert_eq!(new(8, k(0)).to_string(), "top_k: k = 0 must be in 1..=8 experts");
    assert_eq!(new(3, k(4)).to_string(), "top_k: k = 4 must be in 1..=3 experts");
    for factor in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = new(4, RouterKind::ExpertChoice { capacity_factor: factor, rounding: Rounding::Ceil }).to_string();
        assert_eq!(err, format!("ExpertChoice: capacity factor {factor} must be finite and > 0"));
    }
    assert_eq!(
        new(0, RouterKind::Switch).to_string(),
        "Router::new: needs d_model >= 1 and num_experts >= 1, got d_model = 4, num_experts = 0"
    );

    let r = router(4, 3, TOP2, 0);
    let err = r.route(&input(5, 3, 0), None).unwrap_err();
    assert_eq!(err.to_string(), "router: input must be [tokens, d_model = 4], got [5, 3]");
    let err = r.route(&Var::constant(Tensor::zeros(&[2, 5, 4])), None).unwrap_err();
    assert_eq!(err.to_string(), "router: input must be [tokens, d_model = 4], got [2, 5, 4]");

    let mut x = Tensor::randn(&[5, 4], &mut Rng::seed(1)).to_vec();
    x[3 * 4 + 2] = f32::NAN;
    let x = Var::constant(Tensor::from_vec(x, &[5, 4]).unwrap());
    let err = r.route(&x, None).unwrap_err();
    assert_eq!(err.to_string(), "router: NaN or infinite logit in row 3 (expert 0 is NaN)");
    // Training with noise: the error names the logit the router computed, before the noise.
    let noisy = router(4, 3, RouterKind::TopK { k: 2, renormalize: true, noisy: true }, 0);
    let err = noisy.route(&x, Some(&mut Rng::seed(2))).unwrap_err();
    assert_eq!(err.to_string(), "router: NaN or infinite logit in row 3 (expert 0 is NaN)");
    // An infinite logit, which the noise cannot make finite.
    let mut big = vec![0.5f32; 5 * 4];
    big[4 + 1] = f32::INFINITY;
    let err = noisy.route(&Var::constant(Tensor::from_vec(big, &[5, 4]).unwrap()), Some(&mut Rng::seed(2)));
    assert!(err.unwrap_err().to_string().starts_with("router: NaN or infinite logit in row 1 (expert "));
    let mut logits = vec![0.5; 12];
    logits[7] = f32::NEG_INFINITY;
    let err = TOP2.route_logits(&Var::constant(Tensor::from_vec(logits, &[4, 3]).unwrap())).unwrap_err();
    assert_eq!(err.to_string(), "router: NaN or infinite logit in row 2 (expert 1 is -inf)");
    let err = TOP2.route_logits(&Var::constant(Tensor::zeros(&[4]))).unwrap_err();
    assert_eq!(err.to_string(), "router: logits must be [tokens, experts >= 1], got [4]");
    let err = Router::from_weight(Param::new("w", Tensor::zeros(&[4])), TOP2).unwrap_err();
    assert_eq!(err.to_string(), "Router::from_weight: weight must be [d_model, experts], got [4]");
}

#[test]
fn the_weight_is_registered_under_the_scope() {
    let mut store = ParamStore::new();
    let r = Router::new(&mut store.scope("blocks.2.moe"), 6, 5, TOP2, &mut Rng::seed(0)).unwrap();
    assert_eq!((r.weight().name(), r.d_model(), r.num_experts(), r.kind()), ("blocks.2.moe.router", 6, 5, TOP2));
    assert!(store.get("blocks.2.moe.router").is_some());
}

#[test]
fn gates_gradcheck_against_the_logits() {
    let kinds = [
        RouterKind::TopK { k: 2, renormalize: true, noisy: false },
        RouterKind::TopK { k: 2, renormalize: false, noisy: false },
        RouterKind::TopK { k: 3, renormalize: true, noisy: false },
        RouterKind::Switch,
        RouterKind::ExpertChoice { capacity_factor: 1.5, rounding: Rounding::Ceil },
    ];
    for kind in kinds {
        let logits = separated_logits(6, 5, 11);
        assert_clear_choices(&logits, |l| kind.route_logits(l));
        check_grad(|l| Ok(kind.route_logits(l)?.gates), &logits);
    }
}

#[test]
fn the_gradient_reaches_the_router_weight() {
    // Through x·W as well: gradcheck the gates against both the input and the weight.
    let (x, w) = (separated_logits(6, 4, 2), Tensor::randn(&[4, 5], &mut Rng::seed(5)));
    for kind in [TOP2, RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Ceil }] {
        let route = |v: &[Var]| kind.route_logits(&v[0].matmul(&v[1])?);
        assert_clear_choices_many(&[x.clone(), w.clone()], route);
        check_grad_many(|v| Ok(route(v)?.gates), &[x.clone(), w.clone()]);
    }
    // And `Router::route` hands it to the parameter.
    let r = Router::from_weight(Param::new("router", w.clone()), TOP2).unwrap();
    let gates = r.route(&Var::constant(x.clone()), None).unwrap().gates;
    let grads = gates.square().sum_all().backward().unwrap();
    let g = grads.get(r.weight()).expect("the router weight takes a gradient").to_vec();
    assert!(g.iter().any(|&v| v != 0.0));
}

/// A router with the given options, its weight and (if learned) noise weight drawn at scale 1.
fn router_with(d: usize, e: usize, kind: RouterKind, options: RouterOptions, seed: u64) -> Router {
    let mut store = ParamStore::new();
    let r = Router::with_options(&mut store.scope("moe"), d, e, kind, options, &mut Rng::seed(seed)).unwrap();
    let mut rng = Rng::seed(seed + 100);
    r.weight().set(Tensor::randn(&[d, e], &mut rng)).unwrap();
    if let Some(w) = r.noise_weight() {
        w.set(Tensor::randn(&[d, e], &mut rng).mul_scalar(0.5)).unwrap();
    }
    r
}

/// `[t, n]` rows of `a` `[t, d]` times `b` `[d, n]`, in f64.
fn matmul64(a: &[f32], b: &[f32], t: usize, d: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; t * n];
    for i in 0..t {
        for j in 0..n {
            out[i * n + j] = (0..d).map(|k| a[i * d + k] as f64 * b[k * n + j] as f64).sum();
        }
    }
    out
}

#[test]
fn learned_noise_routes_as_shazeer_et_al_under_a_fixed_seed() {
    // H(x) = x·W_g + ε ⊙ softplus(x·W_noise) (arXiv 1701.06538 eq. 3–4), ε the [T, E] N(0, 1)
    // draw of the generator; then softmax, top-2, renormalised gates — in f64, one token at a time.
    let (t, d, e, k) = (40, 6, 5, 2);
    let kind = RouterKind::TopK { k, renormalize: true, noisy: true };
    let options = RouterOptions { bias: false, noise: NoiseScale::Learned };
    let r = router_with(d, e, kind, options, 4);
    let x = input(t, d, 5);
    let routed = r.route(&x, Some(&mut Rng::seed(9))).unwrap();

    let xv = x.value().to_vec();
    let clean = matmul64(&xv, &r.weight().value().to_vec(), t, d, e);
    let noise_in = matmul64(&xv, &r.noise_weight().unwrap().value().to_vec(), t, d, e);
    let eps = Tensor::randn(&[t, e], &mut Rng::seed(9)).to_vec();
    let (mut experts, mut gates, mut margin) = (Vec::new(), Vec::new(), f64::INFINITY);
    for tok in 0..t {
        let h: Vec<f64> = (0..e)
            .map(|j| clean[tok * e + j] + eps[tok * e + j] as f64 * noise_in[tok * e + j].exp().ln_1p())
            .collect();
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| h[b].total_cmp(&h[a]));
        margin = margin.min(h[order[k - 1]] - h[order[k]]);
        let z: f64 = order[..k].iter().map(|&j| h[j].exp()).sum();
        for &j in &order[..k] {
            experts.push(j as u32);
            gates.push((h[j].exp() / z) as f32);
        }
    }
    assert!(margin > 1e-3, "the reference's choices must be clear of ties (margin {margin})");
    assert_eq!(routed.experts, experts);
    assert_close(&routed.gate_values(), &gates, 1e-6, "gates");
    // The noise matters: without it, or with the fixed scale, the choices differ.
    assert_ne!(routed.experts, r.route(&x, None).unwrap().experts);
    let fixed = router_with(d, e, kind, RouterOptions::default(), 4).route(&x, Some(&mut Rng::seed(9))).unwrap();
    assert_ne!(routed.experts, fixed.experts);
}

#[test]
fn learned_noise_weight_takes_a_gradient() {
    let kind = RouterKind::TopK { k: 2, renormalize: false, noisy: true };
    let r = router_with(4, 3, kind, RouterOptions { bias: true, noise: NoiseScale::Learned }, 2);
    let routed = r.route(&input(9, 4, 1), Some(&mut Rng::seed(3))).unwrap();
    let grads = routed.gates.square().sum_all().backward().unwrap();
    for p in r.params() {
        let g = grads.get(p).unwrap_or_else(|| panic!("no gradient for {}", p.name())).to_vec();
        assert!(g.iter().any(|&v| v != 0.0), "{}: zero gradient", p.name());
    }
    // softplus itself, including where e^z would overflow.
    check_grad(softplus, &Tensor::from_vec(vec![-30.0, -2.0, -0.3, 0.4, 1.7, 25.0], &[2, 3]).unwrap());
    let big = softplus(&Var::constant(Tensor::from_vec(vec![100.0, -100.0, 0.0], &[3]).unwrap())).unwrap();
    let want = [100.0, (-100f64).exp().ln_1p() as f32, std::f32::consts::LN_2];
    assert_close(&big.value().to_vec(), &want, 1e-6, "gates");
}

#[test]
fn the_bias_shifts_the_logits_and_is_registered() {
    let mut store = ParamStore::new();
    let options = RouterOptions { bias: true, noise: NoiseScale::Fixed };
    let r =
        Router::with_options(&mut store.scope("moe"), 4, 3, RouterKind::Switch, options, &mut Rng::seed(0)).unwrap();
    let names: Vec<&str> = store.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["moe.router", "moe.router_bias"]);
    assert_eq!(r.bias().unwrap().value().to_vec(), vec![0.0; 3], "zero-initialised");
    r.bias().unwrap().set(Tensor::from_vec(vec![0.0, 0.0, 50.0], &[3]).unwrap()).unwrap();
    let x = input(6, 4, 2);
    assert_eq!(r.route(&x, None).unwrap().experts, vec![2; 6], "a bias of 50 wins every token");
    let plain: Vec<f32> = x.matmul(&r.weight().var()).unwrap().value().to_vec();
    let biased = r.logits(&x).unwrap().value().to_vec();
    for (i, (b, p)) in biased.iter().zip(&plain).enumerate() {
        assert_eq!(*b, p + if i % 3 == 2 { 50.0 } else { 0.0 });
    }
    // Off by default: no bias, no noise weight.
    let r = router(4, 3, TOP2, 0);
    assert!(r.bias().is_none() && r.noise_weight().is_none());
}

#[test]
fn learned_noise_needs_a_noisy_router() {
    let mut store = ParamStore::new();
    let options = RouterOptions { bias: false, noise: NoiseScale::Learned };
    let err = Router::with_options(&mut store.scope("m"), 4, 3, TOP2, options, &mut Rng::seed(0)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "router: learned noise needs a noisy top-k router (RouterKind::TopK { noisy: true, .. }), got TopK { k: 2, \
         renormalize: true, noisy: false }"
    );
    assert!(store.is_empty());
}
