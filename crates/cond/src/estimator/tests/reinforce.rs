//! REINFORCE: log-probabilities, unbiasedness against exact gradients, the baseline.

use super::*;

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
