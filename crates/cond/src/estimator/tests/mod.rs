//! The estimators: forward values and backward rules against their definitions computed
//! independently in f64, finite differences where the op is differentiable, statistical
//! properties with fixed seeds (unbiasedness, sampling frequencies, how the biases behave), one
//! toy descent per estimator, errors, and 1 vs 2 threads. The helpers here are shared by the
//! per-estimator files.

use super::*;
use crate::testing::{check_grad, check_grad_many};
use elide_tensor::Rng;

mod gumbel;
mod reinforce;
mod straight_through;

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

#[test]
fn descending_each_estimator_lowers_the_expected_cost() {
    // Options with costs c: as gates (cost Σ c_i z_i, best: on where c_i < 0, expected −3) and as
    // one choice of four (cost c_k, best: option 3). Each estimator's descent, from logits 0,
    // must find the cheap options; this also pins the sign conventions (costs are minimised).
    let c = [1.0f32, -1.0, 0.5, -2.0];
    let (steps, batch, lr) = (150, 64, 0.5);
    let cost_weights = Var::constant(Tensor::from_vec(c.to_vec(), &[4]).unwrap());
    let gate_cost = |l: &[f32]| l.iter().zip(&c).map(|(&l, &c)| sigmoid(l as f64) * c as f64).sum::<f64>();
    // One step: the gradient of `loss(rows)` with respect to the 4 logits shared by `batch` rows.
    let step = |logits: &mut Vec<f32>, loss: &mut dyn FnMut(&Var) -> Result<Var>| {
        let leaf = Var::leaf(Tensor::from_vec(logits.clone(), &[1, 4]).unwrap());
        let rows = leaf.broadcast_to(&[batch, 4]).unwrap();
        let g = loss(&rows).unwrap().backward().unwrap().of(&leaf).unwrap().to_vec();
        logits.iter_mut().zip(g).for_each(|(l, g)| *l -= lr * g);
    };
    let mut rng = Rng::seed(30);
    let (mut reinforce, mut straight, mut gumbel) = (vec![0.0f32; 4], vec![0.0f32; 4], vec![0.0f32; 4]);
    let mut baseline = MovingAverageBaseline::new(0.9).unwrap();
    let sampler = GumbelSoftmax::new(0.5, GumbelOutput::Hard).unwrap();
    for _ in 0..steps {
        step(&mut reinforce, &mut |rows| {
            let gates = BernoulliGates::sample(rows, &mut rng)?;
            let z = gates.gates().to_vec();
            let costs: Vec<f32> = z.chunks(4).map(|z| z.iter().zip(&c).map(|(z, c)| z * c).sum()).collect();
            gates.reinforce_loss(&costs, &mut baseline)
        });
        step(&mut straight, &mut |rows| {
            let h = bernoulli_straight_through(rows, StraightThroughGrad::Soft, &mut rng)?;
            Ok(h.mul(&cost_weights)?.sum_all().mul_scalar(1.0 / batch as f32))
        });
        step(&mut gumbel, &mut |rows| {
            let y = sampler.sample(rows, &mut rng)?.value;
            Ok(y.mul(&cost_weights)?.sum_all().mul_scalar(1.0 / batch as f32))
        });
    }
    assert!(gate_cost(&reinforce) < -2.5, "REINFORCE: expected cost {} (from −0.75)", gate_cost(&reinforce));
    assert!(gate_cost(&straight) < -2.5, "straight-through: expected cost {} (from −0.75)", gate_cost(&straight));
    let p = softmax64(&gumbel.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(p[3] > 0.9, "Gumbel-softmax: probability of the cheapest option {} (from 0.25)", p[3]);
}

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
