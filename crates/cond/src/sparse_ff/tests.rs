//! The sparse feed-forward layer against an f64 reference (inference and seeded training
//! steps), its gradients against finite differences and against trax's straight-through
//! formulation, inference against the training-mode hard forward, thread-count bit identity,
//! a toy task, and its errors.

use super::*;
use crate::testing::{assert_close, check_grad_many};
use elide_autodiff::{no_grad, AdamW, Optimizer, ParamStore};

/// Weights and an input of a small layer. Controller weights are scaled by `ctrl`: large for
/// clear choices, small for a softmax far from saturation.
struct Case {
    cfg: SparseFfConfig,
    x: Tensor,
    c1: Tensor,
    c2: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

fn config(d: usize, f: usize, n: usize, r: usize) -> SparseFfConfig {
    SparseFfConfig { block_size: n, rank: r, ..SparseFfConfig::new(d, f) }
}

impl Case {
    fn new(cfg: SparseFfConfig, t: usize, ctrl: f32, seed: u64) -> Case {
        let mut rng = Rng::seed(seed);
        let (d, f, r) = (cfg.d_model, cfg.d_ff, cfg.rank);
        let mut randn = |shape: &[usize], scale: f32| Tensor::randn(shape, &mut rng).mul_scalar(scale);
        let x = randn(&[t, d], 1.0);
        let c1 = randn(&[d, r], ctrl);
        let c2 = randn(&[r, f], ctrl);
        let w1 = randn(&[f, d], 0.1 / (d as f32).sqrt());
        let w2 = randn(&[f, d], 0.5);
        let b2 = randn(&[d], 0.1);
        // Biases of ±0.6 keep every pre-activation at least 0.3 from ReLU's kink (checked by
        // `assert_clear_of_relu_kink`), so finite differences never straddle it.
        let b1 = Tensor::from_vec((0..f).map(|u| if u % 3 == 0 { -0.6 } else { 0.6 }).collect(), &[f]).unwrap();
        Case { cfg, x, c1, c2, w1, b1, w2, b2 }
    }

    fn tensors(&self) -> [Tensor; 7] {
        [&self.x, &self.c1, &self.c2, &self.w1, &self.b1, &self.w2, &self.b2].map(Tensor::clone)
    }

    /// A layer holding these weights.
    fn layer(&self, store: &mut ParamStore) -> SparseFeedForward {
        let layer = SparseFeedForward::new(&mut store.scope("ff"), self.cfg, &mut Rng::seed(0)).unwrap();
        for (p, v) in layer.params().into_iter().zip(&self.tensors()[1..]) {
            p.set(v.clone()).unwrap();
        }
        layer
    }
}

fn weights(v: &[Var]) -> Weights {
    Weights {
        c1: v[0].clone(),
        c2: v[1].clone(),
        w1: v[2].clone(),
        b1: v[3].clone(),
        w2: v[4].clone(),
        b2: v[5].clone(),
    }
}

/// How the reference picks units.
#[derive(Clone, Copy)]
enum RefDraw {
    Argmax,
    /// The documented draw order of a training step from `Rng::seed(seed)`.
    Seed(u64),
}

/// What the reference computed: output `[T, d]`, choices, soft flag, pre-activations `[T, f]`.
struct Reference {
    y: Vec<f64>,
    choices: Vec<u32>,
    soft: bool,
    z: Vec<f64>,
}

/// The layer in f64, straight from the definition.
fn reference(c: &Case, draw: RefDraw) -> Reference {
    let SparseFfConfig { d_model: d, d_ff: f, block_size: n, rank: r, temperature, soft_fraction } = c.cfg;
    let t = c.x.shape()[0];
    let [x, c1, c2, w1, b1, w2, b2] = c.tensors().map(|v| v.to_vec().into_iter().map(f64::from).collect::<Vec<_>>());
    let mut rng = match draw {
        RefDraw::Seed(s) => Some(Rng::seed(s)),
        RefDraw::Argmax => None,
    };
    let soft = rng.as_mut().is_some_and(|g| g.next_f32() < soft_fraction);
    let mut logits = vec![0.0; t * f];
    for i in 0..t {
        for u in 0..f {
            logits[i * f + u] =
                (0..r).map(|k| (0..d).map(|p| x[i * d + p] * c1[p * r + k]).sum::<f64>() * c2[k * f + u]).sum();
        }
    }
    let scores: Vec<f64> = match rng.as_mut() {
        Some(g) => logits
            .iter()
            .map(|l| {
                let u = 1e-6 + (1.0 - 2e-6) * g.next_f64();
                l + temperature as f64 * -(-u.ln()).ln()
            })
            .collect(),
        None => logits.clone(),
    };
    let mut mask = vec![0.0; t * f];
    let mut choices = Vec::new();
    for (b, (block, score)) in logits.chunks(n).zip(scores.chunks(n)).enumerate() {
        let pick = (0..n).fold(0, |best, j| if score[j] > score[best] { j } else { best });
        choices.push((b * n + pick) as u32 % f as u32);
        let max = block.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = block.iter().map(|l| (l - max).exp()).sum();
        for j in 0..n {
            mask[b * n + j] = if soft { (block[j] - max).exp() / total } else { (j == pick) as u8 as f64 };
        }
    }
    let mut z = vec![0.0; t * f];
    let mut y = vec![0.0; t * d];
    for i in 0..t {
        for u in 0..f {
            z[i * f + u] = (0..d).map(|p| x[i * d + p] * w1[u * d + p]).sum::<f64>() + b1[u];
            let h = z[i * f + u].max(0.0) * mask[i * f + u];
            for j in 0..d {
                y[i * d + j] += h * w2[u * d + j];
            }
        }
        for j in 0..d {
            y[i * d + j] += b2[j];
        }
    }
    Reference { y, choices, soft, z }
}

/// The f64 reference values rounded to f32, for [`assert_close`].
fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn assert_clear_of_relu_kink(r: &Reference) {
    assert!(r.z.iter().all(|z| z.abs() > 0.3), "a pre-activation sits near ReLU's kink: pick other test data");
}

#[test]
fn inference_matches_the_reference() {
    for (cfg, t) in [(config(7, 12, 4, 3), 1), (config(7, 12, 4, 3), 6), (config(33, 96, 32, 5), 5)] {
        let case = Case::new(cfg, t, 1.0, t as u64);
        let mut store = ParamStore::new();
        let layer = case.layer(&mut store);
        let out = no_grad(|| layer.forward(&Var::constant(case.x.clone()), SparseFfMode::Eval)).unwrap();
        let want = reference(&case, RefDraw::Argmax);
        assert_eq!(out.choices, want.choices, "T={t}");
        assert_close(&out.output.value().to_vec(), &f32s(&want.y), 1e-5, &format!("inference T={t}"));
        assert!(!out.output.requires_grad() && !out.soft_mask);
    }
}

#[test]
fn training_steps_match_the_reference_draw_for_draw() {
    let cfg = SparseFfConfig { soft_fraction: 0.5, temperature: 0.5, ..config(7, 12, 4, 3) };
    let case = Case::new(cfg, 4, 0.3, 11);
    let mut store = ParamStore::new();
    let layer = case.layer(&mut store);
    let x = Var::constant(case.x.clone());
    let argmax = reference(&case, RefDraw::Argmax).choices;
    let (mut softs, mut noisy_picks) = (0, 0);
    for seed in 0..8 {
        let out = layer.forward(&x, SparseFfMode::Train(&mut Rng::seed(seed))).unwrap();
        let want = reference(&case, RefDraw::Seed(seed));
        assert_eq!((out.soft_mask, &out.choices), (want.soft, &want.choices), "seed {seed}");
        assert_close(&out.output.value().to_vec(), &f32s(&want.y), 1e-5, &format!("training seed {seed}"));
        softs += want.soft as usize;
        noisy_picks += (want.choices != argmax) as usize;
    }
    // Both kinds of step occurred, and the noise moved some picks off the argmax.
    assert!(softs > 0 && softs < 8, "{softs} soft steps of 8");
    assert!(noisy_picks > 0);
}

#[test]
fn soft_step_gradients_match_finite_differences() {
    let cfg = SparseFfConfig { soft_fraction: 1.0, ..config(5, 8, 4, 3) };
    let case = Case::new(cfg, 3, 0.5, 21);
    assert_clear_of_relu_kink(&reference(&case, RefDraw::Seed(4)));
    check_grad_many(
        |v| Ok(dense_masked(&v[0], &weights(&v[1..]), &cfg, MaskDraw::Sample(&mut Rng::seed(4)))?.output),
        &case.tensors(),
    );
}

#[test]
fn hard_step_gradients_match_finite_differences_in_the_unit_weights() {
    // The hard mask is piecewise constant in x and the controller: their gradient is the
    // straight-through estimate (tested below), not the finite difference. In the unit weights
    // the mask is fixed, so the gradient is exact.
    let cfg = SparseFfConfig { soft_fraction: 0.0, ..config(5, 8, 4, 3) };
    let case = Case::new(cfg, 3, 1.0, 22);
    assert_clear_of_relu_kink(&reference(&case, RefDraw::Seed(5)));
    let [x, c1, c2, w1, b1, w2, b2] = case.tensors();
    check_grad_many(
        |v| {
            let all = [x.clone(), c1.clone(), c2.clone()].map(Var::constant);
            let w = Weights {
                c1: all[1].clone(),
                c2: all[2].clone(),
                ..weights(&[all[1].clone(), all[2].clone(), v[0].clone(), v[1].clone(), v[2].clone(), v[3].clone()])
            };
            Ok(dense_masked(&all[0], &w, &cfg, MaskDraw::Sample(&mut Rng::seed(5)))?.output)
        },
        &[w1, b1, w2, b2],
    );
}

#[test]
fn hard_step_controller_gradient_is_the_straight_through_estimate() {
    // trax writes the straight-through mask as one_hot + p − stop_gradient(p); the layer's
    // gradient into x and the controller must be that formulation's.
    let cfg = SparseFfConfig { soft_fraction: 0.0, ..config(6, 12, 4, 3) };
    let case = Case::new(cfg, 3, 0.5, 23);
    let leaves = case.tensors().map(Var::leaf);
    let w = weights(&leaves[1..]);
    let out = dense_masked(&leaves[0], &w, &cfg, MaskDraw::Sample(&mut Rng::seed(6))).unwrap();
    assert!(!out.soft_mask);
    let grads = out.output.square().sum_all().backward().unwrap();

    let (t, f, n) = (3, 12, 4);
    let probs =
        leaves[0].matmul(&w.c1).unwrap().matmul(&w.c2).unwrap().reshape(&[t * f / n, n]).unwrap().softmax().unwrap();
    let mut one_hot = vec![0.0f32; t * f];
    for (i, &u) in out.choices.iter().enumerate() {
        one_hot[(i / (f / n)) * f + u as usize] = 1.0;
    }
    let one_hot = Var::constant(Tensor::from_vec(one_hot, &[t * f / n, n]).unwrap());
    let mask = one_hot.add(&probs).unwrap().sub(&probs.detach()).unwrap().reshape(&[t, f]).unwrap();
    let z = leaves[0].matmul(&w.w1.transpose(0, 1).unwrap()).unwrap().add(&w.b1).unwrap();
    let y = z.relu().mul(&mask).unwrap().matmul(&w.w2).unwrap().add(&w.b2).unwrap();
    let want = y.square().sum_all().backward().unwrap();
    for (name, v) in [("x", &leaves[0]), ("c1", &leaves[1]), ("c2", &leaves[2])] {
        let got = grads.of(v).unwrap().to_vec();
        let want = want.of(v).unwrap().to_vec();
        assert!(want.iter().any(|g| g.abs() > 1e-3), "{name}: the straight-through gradient vanished");
        assert_close(&got, &want, 1e-4, name);
    }
}

#[test]
fn inference_equals_the_hard_training_forward_on_the_same_choices() {
    // Temperature 0 and no soft steps: a training step picks the argmax, dense and masked.
    let cfg = SparseFfConfig { soft_fraction: 0.0, temperature: 0.0, ..config(33, 96, 8, 5) };
    for t in [1, 7] {
        let case = Case::new(cfg, t, 1.0, 30 + t as u64);
        let mut store = ParamStore::new();
        let layer = case.layer(&mut store);
        let x = Var::constant(case.x.clone());
        let train = layer.forward(&x, SparseFfMode::Train(&mut Rng::seed(1))).unwrap();
        let eval_recorded = layer.forward(&x, SparseFfMode::Eval).unwrap();
        let sparse = no_grad(|| layer.forward(&x, SparseFfMode::Eval)).unwrap();
        assert!(train.output.requires_grad() && eval_recorded.output.requires_grad());
        assert_eq!(sparse.choices, train.choices, "T={t}");
        assert_eq!(sparse.choices, eval_recorded.choices, "T={t}");
        let dense = train.output.value().to_vec();
        assert_close(&sparse.output.value().to_vec(), &dense, 1e-5, &format!("T={t}"));
        assert_eq!(train.output.value().to_vec(), eval_recorded.output.value().to_vec());
    }
}

#[test]
fn inference_is_bit_identical_on_one_and_two_threads() {
    // At T = 9 large enough for the unit-row kernels to split the work (T·d_ff/N·d_model ≥ 2^18).
    let cfg = config(256, 1024, 8, 16);
    for t in [1, 9] {
        let case = Case::new(cfg, t, 1.0, 40 + t as u64);
        let mut store = ParamStore::new();
        let layer = case.layer(&mut store);
        let x = Var::constant(case.x.clone());
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| no_grad(|| layer.forward(&x, SparseFfMode::Eval)).unwrap())
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.choices, two.choices);
        let bits = |o: &SparseFfOutput| o.output.value().to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one), bits(&two), "T={t}");
    }
}

#[test]
fn flops_and_bytes_count_what_ran() {
    // d 7, d_ff 12 in 3 blocks of 4, rank 3, T 5: controller 2·5·(7·3 + 3·12) = 570 FLOPs;
    // inference 4·5·3·7 = 420 more, the dense training forward 4·5·12·7 = 1680 more.
    let cfg = config(7, 12, 4, 3);
    let case = Case::new(cfg, 5, 1.0, 50);
    let mut store = ParamStore::new();
    let layer = case.layer(&mut store);
    let x = Var::constant(case.x.clone());
    let sparse = no_grad(|| layer.forward(&x, SparseFfMode::Eval)).unwrap();
    assert_eq!(sparse.flops, 990.0);
    let mut distinct = sparse.choices.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // Controller 57 floats, each distinct unit 7 + 7 + 1, b2 7.
    assert_eq!(sparse.weight_bytes, 4.0 * (57 + 15 * distinct.len() + 7) as f64);
    let dense = layer.forward(&x, SparseFfMode::Train(&mut Rng::seed(0))).unwrap();
    assert_eq!(dense.flops, 2250.0);
    assert_eq!(dense.weight_bytes, 4.0 * (57 + 12 * 15 + 7) as f64);
}

#[test]
fn loss_falls_on_a_toy_task() {
    // Regress the output of a fixed random ReLU network; train with Gumbel noise and the
    // soft/hard mix, evaluate on the sparse inference path.
    let (d, t) = (8, 64);
    let mut rng = Rng::seed(60);
    let x = Var::constant(Tensor::randn(&[t, d], &mut rng));
    let teacher = Tensor::randn(&[d, d], &mut rng).mul_scalar(0.5);
    let target = Var::constant(x.value().matmul(&teacher).unwrap().relu());
    let mut store = ParamStore::new();
    let cfg = SparseFfConfig { block_size: 4, rank: 4, ..SparseFfConfig::new(d, 64) };
    let layer = SparseFeedForward::new(&mut store.scope("ff"), cfg, &mut rng).unwrap();
    let eval_loss = || {
        no_grad(|| {
            let y = layer.forward(&x, SparseFfMode::Eval).unwrap().output;
            y.sub(&target).unwrap().square().mean_all().value().item().unwrap()
        })
    };
    let before = eval_loss();
    let mut opt = AdamW::new(0.01);
    let mut noise = Rng::seed(61);
    for _ in 0..150 {
        let y = layer.forward(&x, SparseFfMode::Train(&mut noise)).unwrap().output;
        let grads = y.sub(&target).unwrap().square().mean_all().backward().unwrap();
        opt.step(&store, &grads).unwrap();
    }
    let after = eval_loss();
    assert!(after < 0.3 * before, "eval loss {before} -> {after}");
}

#[test]
fn bad_configs_and_inputs_are_refused_by_name() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(0);
    let mut build = |cfg: SparseFfConfig| {
        SparseFeedForward::new(&mut store.scope(&format!("ff{}", rng.next_u64())), cfg, &mut Rng::seed(1))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        build(config(8, 30, 4, 2)),
        "SparseFeedForward: the block size 4 does not divide d_ff 30 (blocks of N units)"
    );
    assert_eq!(
        build(config(8, 32, 4, 0)),
        "SparseFeedForward: d_model 8, d_ff 32, block size 4 and rank 0: every size must be > 0"
    );
    assert!(build(SparseFfConfig { soft_fraction: 1.5, ..config(8, 32, 4, 2) }).contains("soft fraction 1.5"));
    assert!(build(SparseFfConfig { temperature: -1.0, ..config(8, 32, 4, 2) }).contains("temperature -1"));

    let case = Case::new(config(7, 12, 4, 3), 2, 1.0, 70);
    let mut store = ParamStore::new();
    let layer = case.layer(&mut store);
    let err = layer.forward(&Var::constant(Tensor::zeros(&[2, 6])), SparseFfMode::Eval).unwrap_err().to_string();
    assert_eq!(err, "SparseFeedForward: x must be [T, 7], got [2, 6]");
    let mut nan = case.x.to_vec();
    nan[9] = f32::NAN;
    let nan = Var::constant(Tensor::from_vec(nan, &[2, 7]).unwrap());
    for recording in [false, true] {
        let run = || layer.forward(&nan, SparseFfMode::Eval);
        let err = if recording { run() } else { no_grad(run) }.unwrap_err().to_string();
        assert_eq!(err, "SparseFeedForward: x[1, 2] is NaN: the input must be finite");
    }
    // A diverged controller: its logits overflow to infinity.
    store.get("ff.c2").unwrap().set(Tensor::full(&[3, 12], 1e38)).unwrap();
    let big = Var::constant(Tensor::full(&[1, 7], 1e3));
    let err = no_grad(|| layer.forward(&big, SparseFfMode::Eval)).unwrap_err().to_string();
    assert!(err.contains("the controller has diverged"), "{err}");
}
