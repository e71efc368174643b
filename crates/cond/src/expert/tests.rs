//! The experts against a naive reference (each token through its experts one by one, in f64),
//! gradients by finite differences, and 1 vs 2 threads.

use super::*;
use crate::plan::Capacity;
use elide_autodiff::gradcheck::{gradcheck, GradcheckOptions};
use elide_autodiff::ParamStore;

/// A random routing of `t` tokens to `k` distinct experts each, with positive gates.
fn routing(t: usize, e: usize, k: usize, seed: u64) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let mut rng = Rng::seed(seed);
    let (mut tokens, mut experts, mut gates) = (vec![], vec![], vec![]);
    for tok in 0..t {
        let mut chosen: Vec<u32> = vec![];
        while chosen.len() < k {
            let c = rng.below(e as u64) as u32;
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        for c in chosen {
            tokens.push(tok as u32);
            experts.push(c);
            gates.push(0.25 + rng.next_f32());
        }
    }
    (tokens, experts, gates)
}

fn act64(a: Activation, x: f64) -> f64 {
    a.reference(x)
}

/// `out[t] = Σ_kept g · expert(x[t])`, one token and one expert at a time.
fn naive(
    kind: ExpertKind,
    x: &[f32],
    w: &[Vec<f32>],
    plan: &DispatchPlan,
    gates: &[f32],
    d: usize,
    h: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f64; plan.num_tokens() * d];
    for e in 0..plan.num_experts() {
        for s in plan.expert_range(e) {
            let t = plan.tokens()[s] as usize;
            let xr = &x[t * d..(t + 1) * d];
            let proj =
                |wm: &[f32], j: usize| -> f64 { (0..d).map(|i| xr[i] as f64 * wm[e * d * h + i * h + j] as f64).sum() };
            let hidden: Vec<f64> = (0..h)
                .map(|j| match kind {
                    ExpertKind::Mlp(a) => act64(a, proj(&w[0], j) + w[1][e * h + j] as f64),
                    ExpertKind::SwiGlu => act64(Activation::Silu, proj(&w[0], j)) * proj(&w[1], j),
                })
                .collect();
            let w2 = &w[2];
            for c in 0..d {
                let mut y: f64 = (0..h).map(|j| hidden[j] * w2[e * h * d + j * d + c] as f64).sum();
                if let ExpertKind::Mlp(_) = kind {
                    y += w[3][e * d + c] as f64;
                }
                out[t * d + c] += gates[s] as f64 * y;
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}

fn build(kind: ExpertKind, e: usize, d: usize, h: usize, seed: u64) -> (ParamStore, Experts) {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(seed);
    let experts = Experts::new(&mut store.scope("moe"), kind, e, d, h, &mut rng).unwrap();
    // Non-zero biases, so the bias paths are exercised.
    for p in experts.params() {
        if p.name().contains(".b") {
            p.set(Tensor::randn(&p.shape(), &mut rng).mul_scalar(0.1)).unwrap();
        }
    }
    (store, experts)
}

#[test]
fn matches_the_naive_reference() {
    let kinds = [ExpertKind::Mlp(Activation::Gelu), ExpertKind::Mlp(Activation::Relu), ExpertKind::SwiGlu];
    for kind in kinds {
        for (t, e, k) in [(1, 1, 1), (7, 3, 2), (100, 8, 2), (33, 64, 3)] {
            for capacity in [Capacity::Dropless, Capacity::factor(1.0)] {
                let (d, h) = (9, 17);
                let (_, experts) = build(kind, e, d, h, 3);
                let (tokens, ex, g) = routing(t, e, k, 5);
                let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, capacity).unwrap());
                let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[a as usize]).collect();
                let x = Tensor::randn(&[t, d], &mut Rng::seed(7));
                let gates = Var::constant(Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap());
                let got = experts.forward(&Var::constant(x.clone()), &gates, &plan).unwrap().value().to_vec();
                let w: Vec<Vec<f32>> = experts.params().iter().map(|p| p.value().to_vec()).collect();
                let want = naive(kind, &x.to_vec(), &w, &plan, &slot_g, d, h);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{kind:?} t={t} e={e} k={k} {capacity:?}: [{i}] {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    for kind in [ExpertKind::Mlp(Activation::Gelu), ExpertKind::SwiGlu] {
        let (t, e, k, d, h) = (6, 3, 2, 4, 5);
        let (_, experts) = build(kind, e, d, h, 11);
        let (tokens, ex, g) = routing(t, e, k, 13);
        // One expert gets nothing: its gradients must be exactly zero.
        let keep: Vec<usize> = (0..tokens.len()).filter(|&i| ex[i] != 2).collect();
        let tokens: Vec<u32> = keep.iter().map(|&i| tokens[i]).collect();
        let ex: Vec<u32> = keep.iter().map(|&i| ex[i]).collect();
        let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
        let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[keep[a as usize]]).collect();
        let mut inputs = vec![
            Tensor::randn(&[t, d], &mut Rng::seed(17)),
            Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap(),
        ];
        inputs.extend(experts.params().iter().map(|p| p.value()));
        let kind_of = experts.kind();
        let f = |v: &[Var]| -> elide_autodiff::Result<Var> {
            apply(kind_of, &v[0], &v[1], &v[2..], None, &plan)
                .map(|(out, _)| out)
                .map_err(|e| elide_autodiff::Error::Backward(e.to_string()))
        };
        gradcheck(f, &inputs, GradcheckOptions::default()).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        // The idle expert's weight gradient is exactly zero.
        let leaves: Vec<Var> = inputs.iter().map(|t| Var::leaf(t.clone())).collect();
        let (out, _) = apply(kind_of, &leaves[0], &leaves[1], &leaves[2..], None, &plan).unwrap();
        let grads = out.sum_all().backward().unwrap();
        let dw = grads.of(&leaves[2]).unwrap().to_vec();
        assert!(dw[2 * d * h..].iter().all(|&v| v == 0.0));
    }
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    let (t, e, k, d, h) = (300, 8, 2, 64, 96);
    let (_, experts) = build(ExpertKind::Mlp(Activation::Gelu), e, d, h, 19);
    let (tokens, ex, g) = routing(t, e, k, 23);
    let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
    let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[a as usize]).collect();
    let x = Tensor::randn(&[t, d], &mut Rng::seed(29));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let xv = Var::leaf(x.clone());
            let gv = Var::leaf(Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap());
            let out = experts.forward(&xv, &gv, &plan).unwrap();
            let grads = out.square().sum_all().backward().unwrap();
            let mut bits: Vec<u32> = out.value().to_vec().iter().map(|v| v.to_bits()).collect();
            for v in [&xv, &gv] {
                bits.extend(grads.of(v).unwrap().to_vec().iter().map(|v| v.to_bits()));
            }
            for p in experts.params() {
                bits.extend(grads.get(p).unwrap().to_vec().iter().map(|v| v.to_bits()));
            }
            bits
        })
    };
    assert_eq!(run(1), run(2));
}

/// Inference packs the expert weights once, gives the bits of packing per call, and packs
/// again after `Param::set` and after an optimizer step (a stale copy would give the old
/// experts' outputs).
#[test]
fn inference_reuses_packed_weights_until_a_parameter_changes() {
    use elide_autodiff::{no_grad, Optimizer, Sgd};
    for kind in [ExpertKind::Mlp(Activation::Gelu), ExpertKind::SwiGlu] {
        // Expert 0 takes 600 rows, experts 1-3 a few each, expert 4 none.
        let (t, e, d, h) = (700, 5, 24, 40);
        let tokens: Vec<u32> = (0..t as u32).collect();
        let ex: Vec<u32> = (0..t as u32).map(|i| if i < 600 { 0 } else { 1 + i % 3 }).collect();
        let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
        let x = Var::constant(Tensor::randn(&[t, d], &mut Rng::seed(37)));
        let gates = Var::constant(Tensor::randn(&[t], &mut Rng::seed(41)));
        let (store, experts) = build(kind, e, d, h, 31);
        let infer = |experts: &Experts| {
            let out = no_grad(|| experts.forward(&x, &gates, &plan).unwrap());
            out.value().to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let unpacked = |experts: &Experts| {
            experts.set_weight_packing(false);
            let bits = infer(experts);
            experts.set_weight_packing(true);
            bits
        };
        // A decode batch (a few rows per expert) streams the weights: nothing is packed.
        let few = Arc::new(DispatchPlan::new(&tokens[..6], &ex[595..601], 6, e, Capacity::Dropless).unwrap());
        let (x6, g6) = (Var::constant(Tensor::randn(&[6, d], &mut Rng::seed(43))), Var::constant(Tensor::ones(&[6])));
        no_grad(|| experts.forward(&x6, &g6, &few).unwrap());
        assert_eq!(experts.packed_weight_bytes(), 0, "{kind:?}: decode");
        let first = infer(&experts);
        let bytes = experts.packed_weight_bytes();
        assert!(bytes >= 4 * e * d * h * if kind == ExpertKind::SwiGlu { 3 } else { 2 }, "{kind:?}: {bytes}");
        assert_eq!(infer(&experts), first, "{kind:?}: reused");
        assert_eq!(unpacked(&experts), first, "{kind:?}: packed vs per call");
        assert_eq!(experts.packed_weight_bytes(), 0, "{kind:?}: packing off drops the copy");

        infer(&experts);
        for p in experts.params() {
            p.set(p.value().mul_scalar(-0.5)).unwrap();
        }
        let after_set = infer(&experts);
        assert_ne!(after_set, first, "{kind:?}");
        assert_eq!(after_set, unpacked(&experts), "{kind:?}: after Param::set");

        infer(&experts);
        let out = experts.forward(&x, &gates, &plan).unwrap();
        let grads = out.square().sum_all().backward().unwrap();
        Sgd::new(0.1, 0.0).step(&store, &grads).unwrap();
        let after_step = infer(&experts);
        assert_ne!(after_step, after_set, "{kind:?}");
        assert_eq!(after_step, unpacked(&experts), "{kind:?}: after an optimizer step");
    }
}

/// Decode (every expert a few rows, not recording) runs each expert's two projections in one
/// task: it matches the naive reference, gives the bits of the two grouped ops it replaces,
/// and the same bits on one and two threads.
#[test]
fn decode_runs_each_expert_in_one_task() {
    use elide_autodiff::no_grad;
    for act in [Activation::Gelu, Activation::Relu] {
        let kind = ExpertKind::Mlp(act);
        // The last two cases' hidden width takes more than one chunk of the streamed form; the
        // last is above the threshold (1M multiply-adds) at which the experts run in parallel.
        let cases = [(1, 8, 2, 33, 70), (8, 8, 2, 33, 70), (5, 3, 1, 9, 17), (8, 4, 2, 16, 1100), (8, 4, 2, 64, 1100)];
        for (t, e, k, d, h) in cases {
            let (_, experts) = build(kind, e, d, h, 47);
            let (tokens, ex, g) = routing(t, e, k, 53);
            let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
            assert!(active(&plan).all(|(_, r)| r.len() <= STREAMED_MAX_ROWS));
            let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[a as usize]).collect();
            let x = Tensor::randn(&[t, d], &mut Rng::seed(59));
            let (xv, gv) =
                (Var::constant(x.clone()), Var::constant(Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap()));
            let bits = |v: Var| v.value().to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| bits(no_grad(|| experts.forward(&xv, &gv, &plan).unwrap())))
            };
            let got = run(2);
            assert_eq!(got, run(1), "{kind:?} t={t} e={e}: 1 vs 2 threads");
            // From this thread, outside any pool: the calling thread runs experts too.
            let outside = bits(no_grad(|| experts.forward(&xv, &gv, &plan).unwrap()));
            assert_eq!(got, outside, "{kind:?} t={t} e={e}: called from outside the pool");
            let vars: Vec<Var> = experts.params().iter().map(Param::var).collect();
            let two_ops = no_grad(|| apply(kind, &xv, &gv, &vars, None, &plan).unwrap().0);
            assert_eq!(got, bits(two_ops), "{kind:?} t={t} e={e}: two grouped ops");
            let w: Vec<Vec<f32>> = experts.params().iter().map(|p| p.value().to_vec()).collect();
            let want = naive(kind, &x.to_vec(), &w, &plan, &slot_g, d, h);
            for (i, (a, b)) in got.iter().map(|&a| f32::from_bits(a)).zip(&want).enumerate() {
                let tol = 1e-5 * (h as f32).sqrt() * (1.0 + b.abs());
                assert!((a - b).abs() <= tol, "{kind:?} t={t} e={e}: [{i}] {a} vs {b}");
            }
        }
    }
}

/// Prefill with several experts per thread of similar sizes (not recording) also runs each
/// expert's two projections in one task, from the packed weights, and (up to two slots a token)
/// combines each expert's rows in its task: it matches the naive reference and gives the bits
/// of the two grouped ops and the combine, packed or not, on one and two threads, and after
/// `Param::set` it reads the new weights.
#[test]
fn prefill_with_many_even_experts_runs_each_expert_in_one_task() {
    use elide_autodiff::no_grad;
    let kind = ExpertKind::Mlp(Activation::Gelu);
    // 16 experts of ~25 rows; the second case is above the threshold (1M multiply-adds) at
    // which the experts run in parallel, and its hidden width is several NR panels plus an edge.
    // The third has three slots a token (a separate combine); in the last, every fifth token
    // has no slot (a zero row).
    let cases = [(200, 16, 2, 33, 70, 0), (400, 16, 2, 64, 300, 0), (300, 16, 3, 33, 70, 0), (200, 16, 2, 33, 70, 5)];
    for (t, e, k, d, h, unrouted_every) in cases {
        let (_, experts) = build(kind, e, d, h, 61);
        let (mut tokens, mut ex, mut g) = routing(t, e, k, 67);
        if unrouted_every > 0 {
            let keep: Vec<usize> =
                (0..tokens.len()).filter(|&i| !(tokens[i] as usize).is_multiple_of(unrouted_every)).collect();
            (tokens, ex, g) = (
                keep.iter().map(|&i| tokens[i]).collect(),
                keep.iter().map(|&i| ex[i]).collect(),
                keep.iter().map(|&i| g[i]).collect(),
            );
        }
        let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
        assert!(active(&plan).all(|(_, r)| r.len() > STREAMED_MAX_ROWS));
        let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[a as usize]).collect();
        let x = Tensor::randn(&[t, d], &mut Rng::seed(71));
        let (xv, gv) =
            (Var::constant(x.clone()), Var::constant(Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap()));
        let bits = |v: Var| v.value().to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                assert!(shares_evenly(&plan), "t={t}: the plan takes the per-expert path");
                bits(no_grad(|| experts.forward(&xv, &gv, &plan).unwrap()))
            })
        };
        let two_ops = || {
            let vars: Vec<Var> = experts.params().iter().map(Param::var).collect();
            bits(no_grad(|| apply(kind, &xv, &gv, &vars, None, &plan).unwrap().0))
        };
        let got = run(2);
        assert!(experts.packed_weight_bytes() > 0, "t={t}: packed");
        assert_eq!(got, run(1), "t={t}: 1 vs 2 threads");
        assert_eq!(got, two_ops(), "t={t}: two grouped ops");
        experts.set_weight_packing(false);
        assert_eq!(run(2), got, "t={t}: unpacked");
        experts.set_weight_packing(true);
        let w: Vec<Vec<f32>> = experts.params().iter().map(|p| p.value().to_vec()).collect();
        let want = naive(kind, &x.to_vec(), &w, &plan, &slot_g, d, h);
        for (i, (a, b)) in got.iter().map(|&a| f32::from_bits(a)).zip(&want).enumerate() {
            let tol = 1e-5 * (h as f32).sqrt() * (1.0 + b.abs());
            assert!((a - b).abs() <= tol, "t={t}: [{i}] {a} vs {b}");
        }
        for p in experts.params() {
            p.set(p.value().mul_scalar(-0.5)).unwrap();
        }
        let after_set = run(2);
        assert_ne!(after_set, got, "t={t}");
        assert_eq!(after_set, two_ops(), "t={t}: after Param::set");
    }
}

/// The threads share whole experts only when there are several per thread and none is much
/// larger than the rest.
#[test]
fn whole_experts_are_shared_only_when_they_balance() {
    let plan_of = |ex: &[u32], e: usize| {
        let tokens: Vec<u32> = (0..ex.len() as u32).collect();
        DispatchPlan::new(&tokens, ex, ex.len(), e, Capacity::Dropless).unwrap()
    };
    let even: Vec<u32> = (0..640).map(|i| i % 16).collect();
    let skewed: Vec<u32> = (0..640).map(|i| if i < 320 { 0 } else { 1 + i % 15 }).collect();
    let few: Vec<u32> = (0..640).map(|i| i % 3).collect();
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            assert!(shares_evenly(&plan_of(&even, 16)), "{threads} threads: even");
            assert!(!shares_evenly(&plan_of(&skewed, 16)), "{threads} threads: one expert takes half");
            assert!(!shares_evenly(&plan_of(&few, 3)), "{threads} threads: 3 experts");
        });
    }
}

/// Training with several experts per thread of similar sizes runs the same per-expert tasks,
/// keeping the hidden rows for the backward pass: output and every gradient have the bits of
/// the two grouped ops, on one and two threads.
#[test]
fn training_with_many_even_experts_runs_each_expert_in_one_task() {
    for act in [Activation::Gelu, Activation::Identity] {
        let kind = ExpertKind::Mlp(act);
        let (t, e, k, d, h) = (300, 16, 2, 33, 70);
        let (_, experts) = build(kind, e, d, h, 73);
        let (tokens, ex, g) = routing(t, e, k, 79);
        // The last expert gets nothing: its weight and bias gradients must be zero.
        let keep: Vec<usize> = (0..tokens.len()).filter(|&i| ex[i] as usize != e - 1).collect();
        let (tokens, ex, g): (Vec<u32>, Vec<u32>, Vec<f32>) = (
            keep.iter().map(|&i| tokens[i]).collect(),
            keep.iter().map(|&i| ex[i]).collect(),
            keep.iter().map(|&i| g[i]).collect(),
        );
        let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
        assert!(plan.expert_range(e - 1).is_empty());
        let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[a as usize]).collect();
        let x = Tensor::randn(&[t, d], &mut Rng::seed(83));
        let dy = Tensor::randn(&[t, d], &mut Rng::seed(89));
        let bits = |t: &Tensor| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        #[derive(Clone, Copy)]
        enum Path {
            Layer,
            TwoOps,
            PerExpertBackward,
            PerExpertBackwardCombinedInTasks,
        }
        let run = |threads: usize, path: Path| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                assert!(shares_evenly(&plan), "{act:?}: the plan takes the per-expert path");
                let xv = Var::leaf(x.clone());
                let gv = Var::leaf(Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap());
                let vars: Vec<Var> = experts.params().iter().map(Param::var).collect();
                let out = match path {
                    Path::Layer => experts.forward(&xv, &gv, &plan).unwrap(),
                    Path::TwoOps => apply(kind, &xv, &gv, &vars, None, &plan).unwrap().0,
                    Path::PerExpertBackward => {
                        let w = [&vars[0], &vars[1], &vars[2], &vars[3]];
                        let y = crate::gathered::recorded_mlp(&xv, &plan, w, act, true, None).unwrap();
                        combine(&y, Some(&gv), &plan).unwrap()
                    }
                    Path::PerExpertBackwardCombinedInTasks => {
                        let w = [&vars[0], &vars[1], &vars[2], &vars[3]];
                        let (out, y, _) = combined_in_tasks(t, d, &gv, |sums, gates| {
                            crate::gathered::recorded_mlp(&xv, &plan, w, act, true, Some((sums, gates)))
                        })
                        .unwrap();
                        combine_with_value(out, &y, &gv, &plan).unwrap()
                    }
                };
                let grads = out.backward_with(&dy).unwrap();
                let mut all = bits(out.value());
                for v in [&xv, &gv] {
                    all.extend(bits(grads.of(v).unwrap()));
                }
                for p in experts.params() {
                    all.extend(bits(grads.get(p).unwrap()));
                }
                all
            })
        };
        let got = run(2, Path::Layer);
        assert_eq!(got, run(1, Path::Layer), "{act:?}: 1 vs 2 threads");
        assert_eq!(got, run(2, Path::TwoOps), "{act:?}: two grouped ops");
        // The backward per expert (the layer takes it from 512 rows per expert on average).
        for threads in [1, 2] {
            assert_eq!(run(threads, Path::PerExpertBackward), got, "{act:?}: per-expert backward, {threads} threads");
            let combined = run(threads, Path::PerExpertBackwardCombinedInTasks);
            assert_eq!(combined, got, "{act:?}: per-expert backward, combined in the tasks, {threads} threads");
        }
        // The idle expert's block of dW1 (after the output, dx and the gates' gradient) is zero.
        let dw1_start = 2 * t * d + slot_g.len();
        let idle = &got[dw1_start + (e - 1) * d * h..dw1_start + e * d * h];
        assert!(idle.iter().all(|&b| b == 0), "{act:?}: idle expert's dW1");
    }
}

#[test]
fn per_expert_training_gradients_match_finite_differences() {
    let (t, e, k, d, h) = (12, 4, 2, 4, 5);
    let (_, experts) = build(ExpertKind::Mlp(Activation::Gelu), e, d, h, 97);
    let (tokens, ex, g) = routing(t, e, k, 101);
    let plan = Arc::new(DispatchPlan::new(&tokens, &ex, t, e, Capacity::Dropless).unwrap());
    let slot_g: Vec<f32> = plan.assignment().iter().map(|&a| g[a as usize]).collect();
    let mut inputs =
        vec![Tensor::randn(&[t, d], &mut Rng::seed(103)), Tensor::from_vec(slot_g.clone(), &[slot_g.len()]).unwrap()];
    inputs.extend(experts.params().iter().map(|p| p.value()));
    // Each backward, with the separate combine and with the combine done in the tasks.
    for (per_expert_backward, in_tasks) in [(false, false), (true, false), (false, true), (true, true)] {
        let f = |v: &[Var]| -> elide_autodiff::Result<Var> {
            let err = |e: Error| elide_autodiff::Error::Backward(e.to_string());
            let w = [&v[2], &v[3], &v[4], &v[5]];
            if in_tasks {
                let (out, y, _) = combined_in_tasks(t, d, &v[1], |sums, gates| {
                    crate::gathered::recorded_mlp(
                        &v[0],
                        &plan,
                        w,
                        Activation::Gelu,
                        per_expert_backward,
                        Some((sums, gates)),
                    )
                })
                .map_err(err)?;
                combine_with_value(out, &y, &v[1], &plan).map_err(err)
            } else {
                let y = crate::gathered::recorded_mlp(&v[0], &plan, w, Activation::Gelu, per_expert_backward, None)
                    .map_err(err)?;
                combine(&y, Some(&v[1]), &plan).map_err(err)
            }
        };
        let what = format!("per-expert backward {per_expert_backward}, combined in the tasks {in_tasks}");
        gradcheck(f, &inputs, GradcheckOptions::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}
