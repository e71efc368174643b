//! The hierarchical classifier against a naive f64 reference, gradients by finite differences,
//! a toy task it must learn, 1 vs 2 threads, and its error messages.

use super::*;
use crate::testing::check_grad_many;
use elide_autodiff::optim::{AdamW, Optimizer};
use elide_autodiff::ParamStore;

fn config(route: TrainRoute, second: Option<f32>) -> HierarchicalConfig {
    HierarchicalConfig {
        d_in: 5,
        d_trunk: 7,
        num_coarse: 3,
        num_fine: 4,
        branch_hidden: 6,
        train_route: route,
        second_branch_below: second,
    }
}

/// A layer with random (non-zero) biases, so every bias path is exercised.
fn build(cfg: HierarchicalConfig, seed: u64) -> (ParamStore, HierarchicalClassifier) {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(seed);
    let layer = HierarchicalClassifier::new(&mut store.scope("hier"), cfg, &mut rng).unwrap();
    for p in layer.params() {
        if p.shape().len() <= 2 && p.name().contains(".b") {
            p.set(Tensor::randn(&p.shape(), &mut rng).mul_scalar(0.3)).unwrap();
        }
    }
    (store, layer)
}

/// Every sample through every branch, in f64: `(coarse probs [B·C], fine probs [B·C·M])`.
fn naive(layer: &HierarchicalClassifier, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let cfg = layer.config();
    let (d, dt, cc, m, h) = (cfg.d_in, cfg.d_trunk, cfg.num_coarse, cfg.num_fine, cfg.branch_hidden);
    let w: Vec<Vec<f64>> =
        layer.params().iter().map(|p| p.value().to_vec().iter().map(|&v| v as f64).collect()).collect();
    let gelu = |v: f64| Activation::Gelu.reference(v);
    let softmax = |v: &[f64]| {
        let mx = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = v.iter().map(|a| (a - mx).exp()).sum();
        v.iter().map(|a| (a - mx).exp() / z).collect::<Vec<_>>()
    };
    let (mut coarse, mut fine) = (Vec::new(), Vec::new());
    for row in x.chunks(d) {
        let t: Vec<f64> =
            (0..dt).map(|j| gelu((0..d).map(|i| row[i] as f64 * w[0][i * dt + j]).sum::<f64>() + w[1][j])).collect();
        let logits: Vec<f64> =
            (0..cc).map(|c| (0..dt).map(|j| t[j] * w[2][j * cc + c]).sum::<f64>() + w[3][c]).collect();
        coarse.extend(softmax(&logits));
        for c in 0..cc {
            let hid: Vec<f64> = (0..h)
                .map(|k| gelu((0..dt).map(|j| t[j] * w[4][c * dt * h + j * h + k]).sum::<f64>() + w[5][c * h + k]))
                .collect();
            let f: Vec<f64> = (0..m)
                .map(|q| (0..h).map(|k| hid[k] * w[6][c * h * m + k * m + q]).sum::<f64>() + w[7][c * m + q])
                .collect();
            fine.extend(softmax(&f));
        }
    }
    (coarse, fine)
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |a, j| if v[j] > v[a] { j } else { a })
}

#[test]
fn predictions_match_the_naive_reference() {
    let x = Tensor::randn(&[33, 5], &mut Rng::seed(3));
    for second in [None, Some(0.5), Some(1.0)] {
        let (_, layer) = build(config(TrainRoute::TrueClass, second), 1);
        let (coarse, fine) = naive(&layer, &x.to_vec());
        let (cc, m) = (3, 4);
        let (mut want_c, mut want_f, mut rows) = (Vec::new(), Vec::new(), 0);
        for i in 0..33 {
            let p = &coarse[i * cc..(i + 1) * cc];
            let mut order: Vec<usize> = (0..cc).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            let take = if second.is_some_and(|th| p[order[0]] < th as f64) { 2 } else { 1 };
            rows += take;
            let best = order[..take]
                .iter()
                .map(|&c| {
                    let f = &fine[(i * cc + c) * m..(i * cc + c + 1) * m];
                    let q = argmax(f);
                    (p[c] * f[q], c, q)
                })
                .fold((f64::NEG_INFINITY, 0, 0), |a, b| if b.0 > a.0 { b } else { a });
            want_c.push(best.1 as u32);
            want_f.push(best.2 as u32);
        }
        let got = layer.predict(&Var::constant(x.clone())).unwrap();
        assert_eq!(
            (&got.coarse, &got.fine, got.branch_rows),
            (&want_c, &want_f, rows),
            "second branch below {second:?}"
        );
        // Every branch: the best joint probability over all of them.
        let all = layer.predict_all_branches(&Var::constant(x.clone())).unwrap();
        for i in 0..33 {
            let joint: Vec<f64> =
                (0..cc * m).map(|j| coarse[i * cc + j / m] * fine[(i * cc + j / m) * m + j % m]).collect();
            assert_eq!(all.classes(m)[i], argmax(&joint) as u32, "sample {i}");
        }
        assert_eq!(all.branch_rows, 33 * cc);
    }
}

#[test]
fn the_loss_matches_the_naive_reference() {
    let (_, layer) = build(config(TrainRoute::TrueClass, None), 2);
    let x = Tensor::randn(&[9, 5], &mut Rng::seed(4));
    let coarse_labels = [0, 1, 2, 2, 1, 0, 0, 2, 1];
    let fine_labels = [3, 0, 1, 2, 3, 0, 1, 1, 2];
    let (coarse, fine) = naive(&layer, &x.to_vec());
    let mut want_coarse = 0.0;
    let mut want_fine = 0.0;
    for i in 0..9 {
        let c = coarse_labels[i] as usize;
        want_coarse -= coarse[i * 3 + c].ln() / 9.0;
        want_fine -= fine[(i * 3 + c) * 4 + fine_labels[i] as usize].ln() / 9.0;
    }
    let got = layer.loss(&Var::constant(x), &coarse_labels, &fine_labels).unwrap();
    assert!((got.coarse as f64 - want_coarse).abs() < 1e-5, "{} vs {want_coarse}", got.coarse);
    assert!((got.fine as f64 - want_fine).abs() < 1e-5, "{} vs {want_fine}", got.fine);
    assert!((got.total.value().item().unwrap() as f64 - want_coarse - want_fine).abs() < 1e-5);
    assert_eq!(got.branch_rows, 9);
}

#[test]
fn loss_gradients_match_finite_differences() {
    for route in [TrainRoute::TrueClass, TrainRoute::Predicted] {
        let (_, layer) = build(config(route, None), 5);
        let x = Tensor::randn(&[6, 5], &mut Rng::seed(6));
        let (coarse_labels, fine_labels) = ([0, 1, 2, 1, 0, 2], [1, 2, 3, 0, 1, 2]);
        // Coarse logits spread far apart, so no finite-difference step flips a prediction
        // (the predicted route's branch choice is piecewise constant).
        let coarse_w = &layer.params()[2];
        coarse_w.set(coarse_w.value().mul_scalar(20.0)).unwrap();
        let (_, logits) = layer.weights().trunk_and_coarse(&Var::constant(x.clone())).unwrap();
        let margin = logits.value().to_vec().chunks(3).fold(f32::INFINITY, |m, row| {
            let mut r = row.to_vec();
            r.sort_by(|a, b| b.total_cmp(a));
            m.min(r[0] - r[1])
        });
        assert!(margin > 0.5, "pick another seed: coarse margin {margin}");
        let mut inputs = vec![x];
        inputs.extend(layer.params().iter().map(|p| p.value()));
        let f = |v: &[Var]| {
            let w = Weights(std::array::from_fn(|i| v[i + 1].clone()));
            Ok(layer.loss_with(&w, &v[0], &coarse_labels, &fine_labels)?.total)
        };
        check_grad_many(f, &inputs);
    }
}

#[test]
fn the_predicted_route_trains_the_coarse_head_through_the_fine_loss() {
    // With the straight-through gate, the fine loss alone reaches the coarse weights.
    let (_, layer) = build(config(TrainRoute::Predicted, None), 7);
    let x = Tensor::randn(&[12, 5], &mut Rng::seed(8));
    let leaves: Vec<Var> = layer.params().iter().map(|p| Var::leaf(p.value())).collect();
    let w = Weights(std::array::from_fn(|i| leaves[i].clone()));
    let (_, coarse) = w.trunk_and_coarse(&Var::constant(x.clone())).unwrap();
    // Labels equal to the predictions, so every sample reaches the right branch.
    let predicted = argmax_rows(coarse.value()).unwrap();
    let loss = layer.loss_with(&w, &Var::constant(x), &predicted, &[1; 12]).unwrap();
    let fine_only = loss.total.sub(&Var::constant(Tensor::scalar(loss.coarse))).unwrap();
    let grads = fine_only.backward().unwrap();
    let fine_grad_of_coarse_w = grads.of(&leaves[2]).unwrap().to_vec();
    let (_, teacher) = build(config(TrainRoute::TrueClass, None), 7);
    let leaves2: Vec<Var> = teacher.params().iter().map(|p| Var::leaf(p.value())).collect();
    let w2 = Weights(std::array::from_fn(|i| leaves2[i].clone()));
    let x2 = Tensor::randn(&[12, 5], &mut Rng::seed(8));
    let teacher_loss = teacher.loss_with(&w2, &Var::constant(x2), &predicted, &[1; 12]).unwrap();
    let coarse_only = teacher_loss.total.sub(&Var::constant(Tensor::scalar(teacher_loss.fine))).unwrap();
    let coarse_grad = coarse_only.backward().unwrap().of(&leaves2[2]).unwrap().to_vec();
    // Teacher forcing: d(coarse CE)/dWc only; the predicted route adds the fine loss's share.
    let total_grad = loss.total.backward().unwrap().of(&leaves[2]).unwrap().to_vec();
    let differs = total_grad.iter().zip(&coarse_grad).any(|(a, b)| (a - b).abs() > 1e-6);
    assert!(differs && fine_grad_of_coarse_w.iter().any(|&g| g.abs() > 1e-6));
}

/// Fine classes that need class-specific features: class (c, f) has prototype `P[c] + Q[c][f]`,
/// where the `Q[c]` of different coarse classes use different input directions.
fn toy_batch(n: usize, rng: &mut Rng, protos: &[Vec<f32>]) -> (Tensor, Vec<u32>, Vec<u32>) {
    let (mut x, mut coarse, mut fine) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let class = rng.below(protos.len() as u64) as usize;
        x.extend(protos[class].iter().map(|&p| p + 0.3 * rng.normal()));
        coarse.push((class / 4) as u32);
        fine.push((class % 4) as u32);
    }
    (Tensor::from_vec(x, &[n, 5]).unwrap(), coarse, fine)
}

#[test]
fn it_learns_a_toy_hierarchy() {
    let cfg = HierarchicalConfig { d_trunk: 16, branch_hidden: 16, ..config(TrainRoute::TrueClass, None) };
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(9);
    let layer = HierarchicalClassifier::new(&mut store.scope("hier"), cfg, &mut rng).unwrap();
    let protos: Vec<Vec<f32>> = (0..12).map(|_| (0..5).map(|_| 1.5 * rng.normal()).collect()).collect();
    let mut opt = AdamW::new(0.02);
    let (x_eval, c_eval, f_eval) = toy_batch(200, &mut rng, &protos);
    let accuracy = |layer: &HierarchicalClassifier| {
        let p = layer.predict(&Var::constant(x_eval.clone())).unwrap();
        let right = (0..200).filter(|&i| p.coarse[i] == c_eval[i] && p.fine[i] == f_eval[i]).count();
        right as f32 / 200.0
    };
    let before = accuracy(&layer);
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..150 {
        let (x, c, f) = toy_batch(64, &mut rng, &protos);
        let loss = layer.loss(&Var::constant(x), &c, &f).unwrap();
        let value = loss.total.value().item().unwrap();
        first.get_or_insert(value);
        last = value;
        opt.step(&store, &loss.total.backward().unwrap()).unwrap();
    }
    let after = accuracy(&layer);
    assert!(last < 0.3 * first.unwrap(), "loss {} -> {last}", first.unwrap());
    assert!(after > 0.9 && after > before + 0.3, "accuracy {before} -> {after}");
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    let cfg = HierarchicalConfig {
        d_in: 32,
        d_trunk: 48,
        branch_hidden: 64,
        num_coarse: 4,
        num_fine: 8,
        ..config(TrainRoute::Predicted, Some(0.6))
    };
    let (_, layer) = build(cfg, 10);
    let x = Tensor::randn(&[300, 32], &mut Rng::seed(11));
    let labels: Vec<u32> = (0..300).map(|i| (i % 4) as u32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let p = layer.predict(&Var::constant(x.clone())).unwrap();
            let loss = layer.loss(&Var::constant(x.clone()), &labels, &labels).unwrap();
            let grads = loss.total.backward().unwrap();
            let mut bits: Vec<u32> = loss.total.value().to_vec().iter().map(|v| v.to_bits()).collect();
            for param in layer.params() {
                bits.extend(grads.get(param).unwrap().to_vec().iter().map(|v| v.to_bits()));
            }
            (p, bits)
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_input_is_refused_by_name() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(0);
    let bad = HierarchicalConfig { num_fine: 0, ..config(TrainRoute::TrueClass, None) };
    let err = HierarchicalClassifier::new(&mut store.scope("a"), bad, &mut rng).err().unwrap().to_string();
    assert!(err.starts_with("HierarchicalClassifier::new: ") && err.ends_with("every size must be > 0"), "{err}");
    let bad = config(TrainRoute::TrueClass, Some(1.5));
    let err = HierarchicalClassifier::new(&mut store.scope("b"), bad, &mut rng).err().unwrap().to_string();
    assert_eq!(err, "HierarchicalClassifier::new: second-branch threshold 1.5 must be in [0, 1]");

    let (_, layer) = build(config(TrainRoute::TrueClass, None), 1);
    let x = Var::constant(Tensor::zeros(&[2, 5]));
    let err = |r: Result<HierarchicalLoss>| r.err().unwrap().to_string();
    assert_eq!(
        layer.predict(&Var::constant(Tensor::zeros(&[2, 4]))).err().unwrap().to_string(),
        "HierarchicalClassifier::predict: x must be [batch, d_in = 5], got [2, 4]"
    );
    assert_eq!(
        err(layer.loss(&x, &[0], &[0, 0])),
        "HierarchicalClassifier::loss: 1 coarse and 2 fine labels for a batch of 2"
    );
    assert_eq!(
        err(layer.loss(&x, &[0, 3], &[0, 0])),
        "HierarchicalClassifier::loss: coarse label 3 at position 1 must be < 3"
    );
    assert_eq!(
        err(layer.loss(&x, &[0, 1], &[4, 0])),
        "HierarchicalClassifier::loss: fine label 4 at position 0 must be < 4"
    );
    assert_eq!(
        err(layer.loss(&Var::constant(Tensor::zeros(&[0, 5])), &[], &[])),
        "HierarchicalClassifier::loss: the batch is empty"
    );
    let nan = Var::constant(Tensor::full(&[1, 5], f32::NAN));
    assert!(layer.predict(&nan).err().unwrap().to_string().starts_with("router: NaN or infinite logit in row 0"));
}
