//! Straight-through: both backward rules against their definitions, and the bias of the
//! stochastic gate as the paper describes it.

use super::*;

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
