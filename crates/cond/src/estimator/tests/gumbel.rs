//! Gumbel-softmax: finite differences, the sample against its definition, χ² against the
//! softmax, and the bias–variance trade-off in the temperature.

use super::*;

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
