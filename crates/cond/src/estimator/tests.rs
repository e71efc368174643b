//! The estimators: forward values and backward rules against their definitions computed
//! independently in f64, finite differences where the op is differentiable, statistical
//! properties with fixed seeds (unbiasedness, sampling frequencies, how the biases behave), errors,
//! and 1 vs 2 threads.

use super::*;
use crate::testing::{check_grad, check_grad_many};
use elide_tensor::Rng;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax of one row, in f64.
fn softmax64(row: &[f64]) -> Vec<f64> {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| v / sum).collect()
}

/// `p ⊙ (g − ⟨g, p⟩)` for one row, in f64.
fn softmax_vjp64(p: &[f64], g: &[f64]) -> Vec<f64> {
    let dot: f64 = p.iter().zip(g).map(|(a, b)| a * b).sum();
    p.iter().zip(g).map(|(pi, gi)| pi * (gi - dot)).collect()
}

/// The first position of the row maximum.
fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
}

#[track_caller]
fn assert_close64(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
    }
}

fn projection(shape: &[usize], seed: u64) -> Tensor {
    Tensor::uniform(shape, -1.0, 1.0, &mut Rng::seed(seed)).unwrap()
}

fn to64(t: &Tensor) -> Vec<f64> {
    t.to_vec().iter().map(|&v| v as f64).collect()
}

// ---------------------------------------------------------------- straight-through

#[test]
fn threshold_forward_and_both_backward_rules_follow_their_definitions() {
    let mut x = to64(&Tensor::randn(&[3, 7], &mut Rng::seed(1)));
    x[4] = 0.25; // exactly at the threshold: off
    let t = 0.25;
    let xt = Tensor::from_vec(x.iter().map(|&v| v as f32).collect(), &[3, 7]).unwrap();
    let r = projection(&[3, 7], 2);
    for grad in [StraightThroughGrad::Identity, StraightThroughGrad::Soft] {
        let leaf = Var::leaf(xt.clone());
        let y = straight_through_threshold(&leaf, t as f32, grad).unwrap();
        let want: Vec<f64> = x.iter().map(|&v| if v > t { 1.0 } else { 0.0 }).collect();
        assert_close64(&y.value().to_vec(), &want, 0.0);
        let g = y.backward_with(&r).unwrap();
        let want: Vec<f64> = match grad {
            StraightThroughGrad::Identity => to64(&r),
            StraightThroughGrad::Soft => {
                x.iter().zip(to64(&r)).map(|(&v, r)| r * sigmoid(v - t) * (1.0 - sigmoid(v - t))).collect()
            }
        };
        assert_close64(&g.of(&leaf).unwrap().to_vec(), &want, 1e-6);
    }
}

#[test]
fn one_hot_forward_and_both_backward_rules_follow_their_definitions() {
    for shape in [&[5, 6][..], &[2, 3, 4], &[1, 1], &[7]] {
        let x = Tensor::randn(shape, &mut Rng::seed(3));
        let n = *shape.last().unwrap();
        let (x64, r) = (to64(&x), projection(shape, 4));
        let r64 = to64(&r);
        for grad in [StraightThroughGrad::Identity, StraightThroughGrad::Soft] {
            let leaf = Var::leaf(x.clone());
            let choice = straight_through_one_hot(&leaf, grad).unwrap();
            let (mut hard, mut want_grad, mut index) = (vec![], vec![], vec![]);
            for (row, rrow) in x64.chunks(n).zip(r64.chunks(n)) {
                let best = argmax(row);
                index.push(best as u32);
                hard.extend((0..n).map(|j| if j == best { 1.0 } else { 0.0 }));
                match grad {
                    StraightThroughGrad::Identity => want_grad.extend_from_slice(rrow),
                    StraightThroughGrad::Soft => want_grad.extend(softmax_vjp64(&softmax64(row), rrow)),
                }
            }
            assert_eq!(choice.index.as_slice(), &index[..], "{shape:?}");
            assert_eq!(choice.index.shape(), &shape[..shape.len() - 1]);
            assert_close64(&choice.value.value().to_vec(), &hard, 0.0);
            let g = choice.value.backward_with(&r).unwrap();
            assert_close64(&g.of(&leaf).unwrap().to_vec(), &want_grad, 1e-6);
        }
    }
}

#[test]
fn straight_through_on_a_stochastic_gate_is_biased_and_the_bias_shrinks_as_the_gate_concentrates() {
    // Gates h_i ~ Bernoulli(σ(a_i)) at four logits, cost f(h) = Σ_i (h_i − t)². Exact gradient of
    // E[f]: (f(1) − f(0))·σ'(a) = (1 − 2t)·σ'(a). Sigmoid-adjusted straight-through averages
    // f'(h)·σ'(a) = 2(h − t)·σ'(a), whose mean is 2(p − t)·σ'(a): bias (2p − 1)·σ'(a), which
    // vanishes with the gate's variance σ'(a) = p(1 − p) as p → 1.
    let (a, t, rows) = ([1.0f64, 2.5, 4.0, 5.5], 0.25, 20_000);
    let logits: Vec<f32> = (0..rows).flat_map(|_| a.iter().map(|&v| v as f32)).collect();
    let logits = Tensor::from_vec(logits, &[rows, 4]).unwrap();
    let mean_grad = |grad: StraightThroughGrad| -> Vec<f64> {
        let leaf = Var::leaf(logits.clone());
        let h = bernoulli_straight_through(&leaf, grad, &mut Rng::seed(5)).unwrap();
        let cost = h.add_scalar(-t as f32).square().sum_all();
        let g = cost.backward().unwrap().of(&leaf).unwrap().to_vec();
        (0..4).map(|i| (0..rows).map(|r| g[r * 4 + i] as f64).sum::<f64>() / rows as f64).collect()
    };
    let soft = mean_grad(StraightThroughGrad::Soft);
    let mut last_bias = f64::INFINITY;
    for (i, &ai) in a.iter().enumerate() {
        let (p, slope) = (sigmoid(ai), sigmoid(ai) * (1.0 - sigmoid(ai)));
        let exact = (1.0 - 2.0 * t) * slope;
        let bias = soft[i] - exact;
        // Standard error of the mean of 2(h − t)σ'(a): 2σ'(a)·√(p(1 − p)/rows).
        let se = 2.0 * slope * (p * (1.0 - p) / rows as f64).sqrt();
        let want_bias = (2.0 * p - 1.0) * slope;
        assert!((bias - want_bias).abs() < 4.5 * se, "a = {ai}: bias {bias}, predicted {want_bias} (se {se})");
        assert!(bias > 10.0 * se, "a = {ai}: the bias {bias} should stand clear of the noise {se}");
        assert!(bias < 0.75 * last_bias, "a = {ai}: bias {bias} did not shrink from {last_bias}");
        last_bias = bias;
    }
    // The identity variant's mean 2(p − t) does not shrink at all: it is off by 1/σ'(a).
    let identity = mean_grad(StraightThroughGrad::Identity);
    for (i, &ai) in a.iter().enumerate() {
        let p = sigmoid(ai);
        let se = 2.0 * (p * (1.0 - p) / rows as f64).sqrt();
        assert!((identity[i] - 2.0 * (p - t)).abs() < 4.5 * se, "a = {ai}: identity mean {}", identity[i]);
    }
}

#[test]
fn bernoulli_draws_follow_the_sigmoid_of_the_logit() {
    let (a, rows) = ([-2.0f32, -0.3, 0.0, 1.2, 3.0], 20_000);
    let logits: Vec<f32> = (0..rows).flat_map(|_| a).collect();
    let logits = Var::constant(Tensor::from_vec(logits, &[rows, 5]).unwrap());
    let gates = BernoulliGates::sample(&logits, &mut Rng::seed(6)).unwrap().gates().to_vec();
    let st = bernoulli_straight_through(&logits, StraightThroughGrad::Soft, &mut Rng::seed(6)).unwrap();
    assert_eq!(st.value().to_vec(), gates, "both draw the same way from the same seed");
    for (i, &ai) in a.iter().enumerate() {
        let freq = (0..rows).map(|r| gates[r * 5 + i] as f64).sum::<f64>() / rows as f64;
        let p = sigmoid(ai as f64);
        let se = (p * (1.0 - p) / rows as f64).sqrt();
        assert!((freq - p).abs() < 4.5 * se, "logit {ai}: frequency {freq}, σ = {p}");
    }
}

// ---------------------------------------------------------------- Gumbel-softmax

#[test]
fn soft_gumbel_sample_passes_the_gradient_check() {
    let noise = |shape: &[usize]| {
        let mut rng = Rng::seed(8);
        let n: usize = shape.iter().product();
        Tensor::from_vec((0..n).map(|_| rng.gumbel()).collect(), shape).unwrap()
    };
    for (shape, tau) in [(&[3, 5][..], 0.7), (&[2, 3, 4], 2.0), (&[1, 1], 0.5), (&[6], 1.0)] {
        let sampler = GumbelSoftmax::new(tau, GumbelOutput::Soft).unwrap();
        let g = noise(shape);
        check_grad(|x| Ok(sampler.sample_with_noise(x, &g)?.value), &Tensor::randn(shape, &mut Rng::seed(9)));
    }
    // The per-block form, noise replayed from the same seed on every evaluation.
    let sampler = GumbelSoftmax::new(0.8, GumbelOutput::Soft).unwrap();
    check_grad_many(
        |v| Ok(sampler.sample_blocks(&v[0], 4, &mut Rng::seed(10))?.value),
        &[Tensor::randn(&[3, 12], &mut Rng::seed(11))],
    );
}

#[test]
fn gumbel_forward_is_the_noisy_argmax_and_backward_the_soft_samples_gradient() {
    let (shape, tau) = ([4usize, 7], 0.6f64);
    let logits = Tensor::randn(&shape, &mut Rng::seed(12));
    let r = projection(&shape, 13);
    let (l64, r64) = (to64(&logits), to64(&r));
    // The draws `sample` makes, in row-major order.
    let mut rng = Rng::seed(14);
    let g64: Vec<f64> = (0..28).map(|_| rng.gumbel() as f64).collect();
    for output in [GumbelOutput::Soft, GumbelOutput::Hard] {
        let sampler = GumbelSoftmax::new(tau as f32, output).unwrap();
        let leaf = Var::leaf(logits.clone());
        let choice = sampler.sample(&leaf, &mut Rng::seed(14)).unwrap();
        let (mut value, mut grad, mut index) = (vec![], vec![], vec![]);
        for row in 0..4 {
            let s: Vec<f64> = (0..7).map(|j| (l64[row * 7 + j] + g64[row * 7 + j]) / tau).collect();
            let y = softmax64(&s);
            let best = argmax(&s);
            index.push(best as u32);
            match output {
                GumbelOutput::Soft => value.extend_from_slice(&y),
                GumbelOutput::Hard => value.extend((0..7).map(|j| if j == best { 1.0 } else { 0.0 })),
            }
            grad.extend(softmax_vjp64(&y, &r64[row * 7..row * 7 + 7]).iter().map(|v| v / tau));
        }
        assert_eq!(choice.index.as_slice(), &index[..]);
        assert_close64(&choice.value.value().to_vec(), &value, 1e-5);
        let g = choice.value.backward_with(&r).unwrap();
        assert_close64(&g.of(&leaf).unwrap().to_vec(), &grad, 1e-5);
    }
}

/// Pearson's χ² of `counts` against `probs` over `total` draws.
fn chi_square(counts: &[usize], probs: &[f64], total: usize) -> f64 {
    counts.iter().zip(probs).map(|(&c, &p)| (c as f64 - p * total as f64).powi(2) / (p * total as f64)).sum()
}

#[test]
fn gumbel_choices_are_distributed_as_the_softmax() {
    // χ² critical values at p = 0.001: 20.52 (5 degrees of freedom), 24.32 (7).
    let rows = 20_000;
    let l = [1.0f64, 0.2, -0.5, 0.0, 1.5, -1.0];
    let logits: Vec<f32> = (0..rows).flat_map(|_| l.iter().map(|&v| v as f32)).collect();
    let logits = Var::constant(Tensor::from_vec(logits, &[rows, 6]).unwrap());
    let sampler = GumbelSoftmax::new(0.5, GumbelOutput::Hard).unwrap();
    let choice = sampler.sample(&logits, &mut Rng::seed(15)).unwrap();
    let mut counts = [0usize; 6];
    choice.index.as_slice().iter().for_each(|&k| counts[k as usize] += 1);
    let chi2 = chi_square(&counts, &softmax64(&l), rows);
    assert!(chi2 < 20.52, "χ² = {chi2}, counts {counts:?}");
    // The same logits with the wrong probabilities fail the test: it can tell.
    assert!(chi_square(&counts, &softmax64(&[1.0, 0.2, -0.5, 0.0, 1.3, -1.0]), rows) > 20.52);

    // Per block: two blocks of 8 with different logits, one choice each per row.
    let blocks = [[0.5f64, -1.0, 2.0, 0.0, 0.3, -0.2, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, -1.0, 3.0]];
    let row: Vec<f32> = blocks.iter().flatten().map(|&v| v as f32).collect();
    let logits = Var::constant(Tensor::from_vec(row.repeat(rows), &[rows, 16]).unwrap());
    let choice = sampler.sample_blocks(&logits, 8, &mut Rng::seed(16)).unwrap();
    assert_eq!(choice.index.shape(), &[rows, 2]);
    let mask = choice.value.value().to_vec();
    for (b, block) in blocks.iter().enumerate() {
        let mut counts = [0usize; 8];
        for r in 0..rows {
            let k = choice.index.as_slice()[r * 2 + b] as usize;
            counts[k] += 1;
            let ones: Vec<usize> = (0..8).filter(|&j| mask[r * 16 + b * 8 + j] == 1.0).collect();
            assert_eq!(ones, [k], "row {r} block {b}: the mask is the one-hot of the choice");
        }
        let chi2 = chi_square(&counts, &softmax64(block), rows);
        assert!(chi2 < 24.32, "block {b}: χ² = {chi2}, counts {counts:?}");
    }
}

#[test]
fn gumbel_softmax_bias_shrinks_and_variance_grows_as_the_temperature_falls() {
    // Linear cost f(y) = ⟨c, y⟩ of the relaxed sample. The discrete objective E_k[c_k] = ⟨c, p⟩,
    // p = softmax(ℓ), has the exact gradient p ⊙ (c − ⟨c, p⟩). The relaxed sample's mean is not p
    // for τ > 0, so its gradient is biased; as τ → 0 the relaxation tends to the one-hot sample.
    let (l, c, rows) = ([0.5f64, -0.3, 1.0, 0.0, -1.2], [1.0f64, -2.0, 0.5, 2.0, -1.0], 40_000);
    let p = softmax64(&l);
    let exact = softmax_vjp64(&p, &c);
    let logits: Vec<f32> = (0..rows).flat_map(|_| l.iter().map(|&v| v as f32)).collect();
    let logits = Tensor::from_vec(logits, &[rows, 5]).unwrap();
    let weights = Var::constant(Tensor::from_vec(c.iter().map(|&v| v as f32).collect(), &[5]).unwrap());
    let (mut last_bias, mut last_var) = (f64::INFINITY, 0.0);
    for tau in [2.0f32, 1.0, 0.5, 0.25] {
        let leaf = Var::leaf(logits.clone());
        let sampler = GumbelSoftmax::new(tau, GumbelOutput::Soft).unwrap();
        let y = sampler.sample(&leaf, &mut Rng::seed(17)).unwrap().value;
        let g = y.mul(&weights).unwrap().sum_all().backward().unwrap().of(&leaf).unwrap().to_vec();
        // One gradient sample per row: the mean estimates the relaxed gradient, the spread its noise.
        let mean: Vec<f64> =
            (0..5).map(|i| (0..rows).map(|r| g[r * 5 + i] as f64).sum::<f64>() / rows as f64).collect();
        let var: f64 =
            (0..rows).map(|r| (0..5).map(|i| (g[r * 5 + i] as f64 - mean[i]).powi(2)).sum::<f64>()).sum::<f64>()
                / rows as f64;
        let bias = mean.iter().zip(&exact).map(|(m, e)| (m - e).powi(2)).sum::<f64>().sqrt();
        let se = (var / rows as f64).sqrt();
        assert!(bias < 0.7 * last_bias, "τ = {tau}: bias {bias} did not shrink from {last_bias}");
        assert!(var > last_var, "τ = {tau}: variance {var} did not grow from {last_var}");
        if tau == 2.0 {
            assert!(bias > 20.0 * se, "τ = 2: the bias {bias} should stand clear of the noise {se}");
        }
        (last_bias, last_var) = (bias, var);
    }
    let scale = exact.iter().map(|e| e * e).sum::<f64>().sqrt();
    assert!(last_bias < 0.1 * scale, "τ = 0.25: bias {last_bias} against a gradient of norm {scale}");
}

// ---------------------------------------------------------------- REINFORCE

#[test]
fn log_prob_matches_its_definition_and_passes_the_gradient_check() {
    let logits = Tensor::from_vec(vec![0.0, 2.0, -3.0, 1.0, 100.0, -100.0], &[3, 2]).unwrap();
    let gates = Tensor::from_vec(vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[3, 2]).unwrap();
    let lp = BernoulliGates::from_gates(&Var::constant(logits), gates.clone()).unwrap().log_prob().unwrap();
    let l = |x: f64| sigmoid(x).ln();
    // ln(1 − σ(100)) = −100 − ln(1 + e^−100): finite, where σ would round to 1.
    let want = [l(0.0) + l(-2.0), l(3.0) + l(1.0), -100.0 + l(100.0)];
    assert_close64(&lp.value().to_vec(), &want, 1e-6);

    let logits = Tensor::randn(&[4, 3], &mut Rng::seed(18));
    let gates = BernoulliGates::sample(&Var::constant(logits.clone()), &mut Rng::seed(19)).unwrap().gates().clone();
    let costs = [1.5f32, -0.5, 2.0, 0.25];
    check_grad(|x| BernoulliGates::from_gates(x, gates.clone())?.log_prob(), &logits);
    check_grad(|x| BernoulliGates::from_gates(x, gates.clone())?.surrogate_loss(&costs, 0.75), &logits);
}

/// The mean over rows of a `[rows, n]` gradient, per column.
fn column_means(g: &[f32], n: usize) -> Vec<f64> {
    let rows = g.len() / n;
    (0..n).map(|i| (0..rows).map(|r| g[r * n + i] as f64).sum::<f64>() / rows as f64).collect()
}

#[test]
fn reinforce_is_unbiased_for_a_linear_cost_with_any_fixed_baseline() {
    // f(z) = Σ c_i z_i, E[f] = Σ c_i σ(ℓ_i), exact gradient c_i σ'(ℓ_i).
    let (l, c, rows) = ([0.3f64, -1.0, 2.0, 0.0, -0.4], [1.0f64, -0.5, 2.0, 1.5, -1.0], 40_000);
    let logits: Vec<f32> = (0..rows).flat_map(|_| l.iter().map(|&v| v as f32)).collect();
    let logits = Tensor::from_vec(logits, &[rows, 5]).unwrap();
    for (baseline, seed) in [(0.0f32, 20), (2.5, 21)] {
        let leaf = Var::leaf(logits.clone());
        let gates = BernoulliGates::sample(&leaf, &mut Rng::seed(seed)).unwrap();
        let z = gates.gates().to_vec();
        let costs: Vec<f32> =
            z.chunks(5).map(|row| row.iter().zip(&c).map(|(&z, &c)| z as f64 * c).sum::<f64>() as f32).collect();
        let grads = gates.surrogate_loss(&costs, baseline).unwrap().backward().unwrap();
        // Each row contributes (f − b)(z_i − σ_i)/rows; ×rows recovers the per-row estimates.
        let g: Vec<f32> = grads.of(&leaf).unwrap().to_vec().iter().map(|v| v * rows as f32).collect();
        let mean = column_means(&g, 5);
        for i in 0..5 {
            let exact = c[i] * sigmoid(l[i]) * (1.0 - sigmoid(l[i]));
            let var = (0..rows).map(|r| (g[r * 5 + i] as f64 - mean[i]).powi(2)).sum::<f64>() / rows as f64;
            let se = (var / rows as f64).sqrt();
            assert!(
                (mean[i] - exact).abs() < 4.5 * se,
                "b = {baseline}, gate {i}: {} vs exact {exact} (se {se})",
                mean[i]
            );
        }
    }
}

#[test]
fn reinforce_with_a_moving_average_baseline_is_unbiased_and_has_lower_variance() {
    // A nonlinear cost of 3 gates; the exact gradient by enumerating the 8 outcomes:
    // ∂E[f]/∂ℓ_i = Σ_z p(z) f(z) (z_i − σ_i).
    let l = [0.5f64, -0.8, 1.2];
    let f = |z: &[f64]| 3.0 + (z[0] + 2.0 * z[1] - z[2] - 0.5).powi(2) + z[0] * z[2];
    let s: Vec<f64> = l.iter().map(|&v| sigmoid(v)).collect();
    let mut exact = [0.0f64; 3];
    for bits in 0..8 {
        let z: Vec<f64> = (0..3).map(|i| ((bits >> i) & 1) as f64).collect();
        let p: f64 = (0..3).map(|i| if z[i] == 1.0 { s[i] } else { 1.0 - s[i] }).product();
        (0..3).for_each(|i| exact[i] += p * f(&z) * (z[i] - s[i]));
    }
    let (batches, rows) = (200, 500);
    let logits: Vec<f32> = (0..rows).flat_map(|_| l.iter().map(|&v| v as f32)).collect();
    let logits = Tensor::from_vec(logits, &[rows, 3]).unwrap();
    // Per-batch gradient estimates with the moving average and with no baseline, same samples.
    let mut estimates = [vec![], vec![]];
    let mut baseline = MovingAverageBaseline::new(0.9).unwrap();
    let mut rng = Rng::seed(22);
    for _ in 0..batches {
        let leaf = Var::leaf(logits.clone());
        let gates = BernoulliGates::sample(&leaf, &mut rng).unwrap();
        let costs: Vec<f32> = gates
            .gates()
            .to_vec()
            .chunks(3)
            .map(|z| f(&z.iter().map(|&v| v as f64).collect::<Vec<_>>()) as f32)
            .collect();
        let with = gates.reinforce_loss(&costs, &mut baseline).unwrap().backward().unwrap();
        let without = gates.surrogate_loss(&costs, 0.0).unwrap().backward().unwrap();
        estimates[0].push(
            column_means(&with.of(&leaf).unwrap().to_vec(), 3).iter().map(|v| v * rows as f64).collect::<Vec<_>>(),
        );
        estimates[1].push(
            column_means(&without.of(&leaf).unwrap().to_vec(), 3).iter().map(|v| v * rows as f64).collect::<Vec<_>>(),
        );
    }
    let mean_cost = (0..8)
        .map(|bits| {
            let z: Vec<f64> = (0..3).map(|i| ((bits >> i) & 1) as f64).collect();
            (0..3).map(|i| if z[i] == 1.0 { s[i] } else { 1.0 - s[i] }).product::<f64>() * f(&z)
        })
        .sum::<f64>();
    assert!((baseline.value() as f64 - mean_cost).abs() < 0.1, "baseline {} vs E[f] = {mean_cost}", baseline.value());
    let mut variances = [0.0f64; 2];
    for (which, est) in estimates.iter().enumerate() {
        for i in 0..3 {
            let mean = est.iter().map(|e| e[i]).sum::<f64>() / batches as f64;
            let var = est.iter().map(|e| (e[i] - mean).powi(2)).sum::<f64>() / (batches - 1) as f64;
            let se = (var / batches as f64).sqrt();
            assert!(
                (mean - exact[i]).abs() < 4.5 * se,
                "estimator {which}, gate {i}: {mean} vs exact {} (se {se})",
                exact[i]
            );
            variances[which] += var;
        }
    }
    assert!(
        variances[0] < 0.25 * variances[1],
        "variance with the baseline {} vs without {}",
        variances[0],
        variances[1]
    );
}

#[test]
fn moving_average_baseline_follows_its_recurrence_and_refuses_bad_input() {
    let mut b = MovingAverageBaseline::new(0.75).unwrap();
    assert_eq!((b.value(), b.updates(), b.decay()), (0.0, 0, 0.75));
    assert_eq!(b.update(&[1.0, 3.0]).unwrap(), 2.0); // the first batch's mean
    assert_eq!(b.update(&[6.0]).unwrap(), 3.0); // 0.75·2 + 0.25·6
    assert_eq!(b.update(&[0.0, 0.0, 0.0]).unwrap(), 2.25);
    assert_eq!(b.updates(), 3);
    let err = b.update(&[1.0, f32::NAN]).unwrap_err();
    assert_eq!(err.to_string(), "MovingAverageBaseline::update: cost NaN of row 1 is not finite");
    assert!(b.update(&[]).is_err());
    assert_eq!((b.value(), b.updates()), (2.25, 3), "a refused update changes nothing");
    for decay in [-0.1, 1.0, f32::NAN] {
        let err = MovingAverageBaseline::new(decay).unwrap_err();
        assert_eq!(err.to_string(), format!("MovingAverageBaseline: decay {decay} must be in [0, 1)"));
    }
    assert_eq!(MovingAverageBaseline::new(0.0).unwrap().update(&[4.0, 2.0]).unwrap(), 3.0);
}

// ---------------------------------------------------------------- errors and threads

#[test]
fn bad_input_is_refused_with_the_op_and_the_shapes() {
    let msg = |r: Result<DiscreteChoice>| r.map(|_| ()).unwrap_err().to_string();
    for tau in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err = GumbelSoftmax::new(tau, GumbelOutput::Hard).unwrap_err();
        assert_eq!(err.to_string(), format!("GumbelSoftmax: temperature {tau} must be finite and > 0"));
    }
    let sampler = GumbelSoftmax::new(0.5, GumbelOutput::Hard).unwrap();
    let mut nan = vec![0.0f32; 6];
    nan[4] = f32::NAN;
    let nan = Var::constant(Tensor::from_vec(nan, &[2, 3]).unwrap());
    let rng = &mut Rng::seed(0);
    assert_eq!(
        msg(sampler.sample(&nan, rng)),
        "gumbel_softmax: logit NaN at row 1, column 1 (shape [2, 3]) is not finite"
    );
    assert_eq!(
        msg(straight_through_one_hot(&nan, StraightThroughGrad::Soft)),
        "straight_through_one_hot: score NaN at row 1, column 1 (shape [2, 3]) is not finite"
    );
    let err = straight_through_threshold(&nan, 0.0, StraightThroughGrad::Identity).unwrap_err();
    assert_eq!(
        err.to_string(),
        "straight_through_threshold: input NaN at row 1, column 1 (shape [2, 3]) is not finite"
    );
    let ok = Var::constant(Tensor::zeros(&[2, 3]));
    assert!(straight_through_threshold(&ok, f32::NAN, StraightThroughGrad::Identity).is_err());
    assert!(bernoulli_straight_through(&nan, StraightThroughGrad::Soft, rng).is_err());
    assert_eq!(
        BernoulliGates::sample(&nan, rng).unwrap_err().to_string(),
        "BernoulliGates::sample: logit NaN at row 1, column 1 (shape [2, 3]) is not finite"
    );

    let scalar = Var::constant(Tensor::scalar(1.0));
    assert_eq!(
        msg(sampler.sample(&scalar, rng)),
        "gumbel_softmax: scores must have at least 1 dim (choices along the last), got shape []"
    );
    let empty = Var::constant(Tensor::zeros(&[2, 0]));
    assert_eq!(
        msg(straight_through_one_hot(&empty, StraightThroughGrad::Identity)),
        "straight_through_one_hot: the last dim of shape [2, 0] is empty: nothing to choose from"
    );
    assert_eq!(
        msg(sampler.sample_with_noise(&ok, &Tensor::zeros(&[3, 2]))),
        "gumbel_softmax: noise of shape [3, 2] for logits of shape [2, 3]"
    );
    let wide = Var::constant(Tensor::zeros(&[2, 12]));
    assert_eq!(
        msg(sampler.sample_blocks(&wide, 5, rng)),
        "gumbel_softmax_blocks: logits must be [rows, d] with d a multiple of the block size 5, got [2, 12]"
    );
    assert!(sampler.sample_blocks(&wide, 0, rng).is_err());
    assert!(sampler.sample_blocks(&Var::constant(Tensor::zeros(&[2, 3, 4])), 4, rng).is_err());
    let tiny = GumbelSoftmax::new(1e-38, GumbelOutput::Soft).unwrap();
    let big = Var::constant(Tensor::full(&[1, 2], 50.0));
    assert_eq!(
        msg(tiny.sample_with_noise(&big, &Tensor::zeros(&[1, 2]))),
        "gumbel_softmax: temperature 0.00000000000000000000000000000000000001 is too small: (logit + noise)/τ overflows at row 0, column 0"
    );

    // An empty batch is not an error for the samplers: nothing is chosen.
    let no_rows = Var::leaf(Tensor::zeros(&[0, 4]));
    let choice = sampler.sample(&no_rows, rng).unwrap();
    assert_eq!((choice.value.shape(), choice.index.shape()), (&[0, 4][..], &[0][..]));
    assert_eq!(straight_through_one_hot(&no_rows, StraightThroughGrad::Soft).unwrap().index.numel(), 0);
    let no_gates = BernoulliGates::sample(&no_rows, rng).unwrap();
    assert_eq!(no_gates.rows(), 0);
    assert_eq!(
        no_gates.surrogate_loss(&[], 0.0).unwrap_err().to_string(),
        "reinforce: 0 costs for 0 rows of gates (need one per row, rows ≥ 1)"
    );

    let gates = BernoulliGates::sample(&ok, rng).unwrap();
    assert_eq!(
        gates.surrogate_loss(&[1.0], 0.0).unwrap_err().to_string(),
        "reinforce: 1 costs for 2 rows of gates (need one per row, rows ≥ 1)"
    );
    assert_eq!(
        gates.surrogate_loss(&[1.0, f32::INFINITY], 0.0).unwrap_err().to_string(),
        "reinforce: cost inf of row 1 is not finite"
    );
    assert_eq!(
        gates.surrogate_loss(&[1.0, 2.0], f32::NAN).unwrap_err().to_string(),
        "reinforce: baseline NaN is not finite"
    );
    let mut baseline = MovingAverageBaseline::new(0.5).unwrap();
    assert!(gates.reinforce_loss(&[1.0], &mut baseline).is_err());
    assert_eq!(baseline.updates(), 0, "a refused loss leaves the baseline alone");
    assert_eq!(
        BernoulliGates::from_gates(&ok, Tensor::full(&[2, 3], 0.5)).unwrap_err().to_string(),
        "BernoulliGates::from_gates: gate 0.5 at position 0 is neither 0 nor 1"
    );
    assert!(BernoulliGates::from_gates(&ok, Tensor::zeros(&[3, 2])).is_err());
    assert_eq!(
        BernoulliGates::sample(&Var::constant(Tensor::zeros(&[6])), rng).unwrap_err().to_string(),
        "BernoulliGates::sample: logits must be [rows, gates >= 1], got [6]"
    );
}

#[test]
fn every_estimator_is_bit_identical_on_one_and_two_threads() {
    // 64 × 1024 = 65 536 scores: above the row kernels' threshold for forking (32 K elements),
    // so the softmax and elementwise kernels run split across threads on the 2-thread pool.
    let (rows, d) = (64, 1024);
    let logits = Tensor::randn(&[rows, d], &mut Rng::seed(23));
    let r = projection(&[rows, d], 24);
    let run = |threads: usize| -> Vec<u32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut bits = vec![];
            let mut push = |v: &Var, leaf: &Var| {
                let g = v.backward_with(&r).unwrap();
                bits.extend(v.value().to_vec().iter().chain(&g.of(leaf).unwrap().to_vec()).map(|x| x.to_bits()));
            };
            for output in [GumbelOutput::Soft, GumbelOutput::Hard] {
                let leaf = Var::leaf(logits.clone());
                let sampler = GumbelSoftmax::new(0.3, output).unwrap();
                push(&sampler.sample_blocks(&leaf, 32, &mut Rng::seed(25)).unwrap().value, &leaf);
            }
            let leaf = Var::leaf(logits.clone());
            push(&straight_through_one_hot(&leaf, StraightThroughGrad::Soft).unwrap().value, &leaf);
            let leaf = Var::leaf(logits.clone());
            push(&straight_through_threshold(&leaf, 0.1, StraightThroughGrad::Soft).unwrap(), &leaf);
            let leaf = Var::leaf(logits.clone());
            push(&bernoulli_straight_through(&leaf, StraightThroughGrad::Soft, &mut Rng::seed(26)).unwrap(), &leaf);
            let leaf = Var::leaf(logits.clone());
            let gates = BernoulliGates::sample(&leaf, &mut Rng::seed(27)).unwrap();
            let costs: Vec<f32> = gates.gates().to_vec().chunks(d).map(|z| z.iter().sum()).collect();
            let g = gates.surrogate_loss(&costs, 500.0).unwrap().backward().unwrap();
            bits.extend(g.of(&leaf).unwrap().to_vec().iter().map(|x| x.to_bits()));
            bits
        })
    };
    let one = run(1);
    assert_eq!(one, run(2));
}
