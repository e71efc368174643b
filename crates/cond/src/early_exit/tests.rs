//! Early exit against naive references (every row to full depth, then the rule one row at a
//! time; calibration by trying every candidate threshold), gradients, 1 vs 2 threads, a toy
//! task, what runs, and the errors.

use super::*;
use crate::block::reference::{check_param_grads, naive_mlp};
use crate::block::{MlpBlock, Residual};
use crate::testing::check_grad;
use elide_autodiff::{AdamW, Optimizer, ParamStore};
use elide_kernels::gemm::Activation;

const D: usize = 6;
const H: usize = 10;
const CLASSES: usize = 4;

/// Four residual MLP blocks with exits after blocks 1, 3 and 4; heads scaled so confidences
/// spread over `(1/4, 1)`.
fn stack(store: &mut ParamStore, seed: u64) -> EarlyExit<Residual<MlpBlock>> {
    let mut rng = Rng::seed(seed);
    let blocks = (0..4)
        .map(|l| Residual(MlpBlock::new(&mut store.scope(&format!("b{l}")), D, H, Activation::Gelu, &mut rng).unwrap()))
        .collect();
    let s = EarlyExit::new(&mut store.scope("exit"), blocks, &[1, 3, 4], CLASSES, &mut rng).unwrap();
    for (w, b) in s.head_params() {
        w.set(w.value().mul_scalar(3.0)).unwrap();
        b.set(Tensor::randn(&[CLASSES], &mut rng).mul_scalar(0.3)).unwrap();
    }
    s
}

/// Confidence in f64, independently of [`Confidence::of`].
fn naive_confidence(measure: Confidence, row: &[f32]) -> f64 {
    let m = row.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
    let p: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp() / z).collect();
    match measure {
        Confidence::MaxProb => p.iter().cloned().fold(0.0, f64::max),
        Confidence::Entropy => -p.iter().map(|&q| q * q.ln()).sum::<f64>() / (row.len() as f64).ln(),
    }
}

/// Every exit's logits, one row at a time in f64 through the blocks.
fn naive_exit_logits(s: &EarlyExit<Residual<MlpBlock>>, x: &[f32]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for row in x.chunks(D) {
        let mut h = row.to_vec();
        let mut per_exit = Vec::new();
        for (l, block) in s.blocks().iter().enumerate() {
            let f = naive_mlp(&block.0, &h);
            h.iter_mut().zip(f).for_each(|(a, b)| *a += b);
            if let Some(e) = s.exit_depths().iter().position(|&d| d == l + 1) {
                let (w, b) = s.head_params()[e];
                let (w, b) = (w.value().to_vec(), b.value().to_vec());
                per_exit.push(
                    (0..CLASSES)
                        .map(|c| {
                            (b[c] as f64 + (0..D).map(|i| h[i] as f64 * w[i * CLASSES + c] as f64).sum::<f64>()) as f32
                        })
                        .collect::<Vec<f32>>(),
                );
            }
        }
        out.push(per_exit);
    }
    // [exit][row·classes]
    (0..s.exit_depths().len()).map(|e| out.iter().flat_map(|r| r[e].clone()).collect()).collect()
}

#[test]
fn confidence_measures_match_their_definitions() {
    for row in [vec![0.0f32, 0.0, 0.0, 0.0], vec![5.0, -1.0, 0.3, 2.0], vec![80.0, -80.0, 0.0, 1.0]] {
        for m in [Confidence::MaxProb, Confidence::Entropy] {
            let (got, want) = (m.of(&row) as f64, naive_confidence(m, &row));
            assert!((got - want).abs() < 1e-6, "{m:?} {row:?}: {got} vs {want}");
        }
    }
    assert_eq!(Confidence::MaxProb.of(&[0.0; 4]), 0.25);
    assert_eq!(Confidence::Entropy.of(&[0.0; 4]), 1.0);
}

#[test]
fn exit_logits_match_the_naive_reference() {
    let s = stack(&mut ParamStore::new(), 1);
    for rows in [1, 7, 33] {
        let x = Tensor::randn(&[rows, D], &mut Rng::seed(rows as u64));
        let got = s.exit_logits(&Var::constant(x.clone())).unwrap();
        let want = naive_exit_logits(&s, &x.to_vec());
        for (e, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.shape(), &[rows, CLASSES]);
            for (i, (a, b)) in g.value().to_vec().iter().zip(w).enumerate() {
                assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "exit {e} [{i}]: {a} vs {b}");
            }
        }
    }
}

/// A threshold for `measure` half-way between two neighbouring observed confidences near the
/// given quantile, so no row sits within rounding of it.
fn clear_threshold(measure: Confidence, conf: &[f64], quantile: f64) -> f32 {
    let mut sorted = conf.to_vec();
    sorted.sort_by(f64::total_cmp);
    let i = ((quantile * sorted.len() as f64) as usize).clamp(1, sorted.len() - 1);
    let (lo, hi) = (sorted[i - 1], sorted[i]);
    assert!(hi - lo > 1e-4, "{measure:?}: confidences {lo} and {hi} too close: pick another seed");
    (0.5 * (lo + hi)) as f32
}

#[test]
fn inference_matches_the_rule_applied_to_full_depth_logits() {
    let s = stack(&mut ParamStore::new(), 2);
    let rows = 257;
    let x = Tensor::randn(&[rows, D], &mut Rng::seed(3));
    let full = naive_exit_logits(&s, &x.to_vec());
    for measure in [Confidence::MaxProb, Confidence::Entropy] {
        let conf: Vec<Vec<f64>> =
            full.iter().map(|l| l.chunks(CLASSES).map(|r| naive_confidence(measure, r)).collect()).collect();
        let per_exit = ExitRule {
            confidence: measure,
            thresholds: vec![clear_threshold(measure, &conf[0], 0.6), clear_threshold(measure, &conf[1], 0.5)],
        };
        let shared = ExitRule::new(measure, clear_threshold(measure, &conf[0], 0.4));
        for rule in [per_exit, shared, ExitRule::new(measure, Confidence::strictest(measure))] {
            let got = s.infer(&Var::constant(x.clone()), &rule).unwrap();
            let got_logits = got.logits.to_vec();
            let mut rows_per_block = [0usize; 4];
            for r in 0..rows {
                let passes = |e: usize| measure.passes(conf[e][r] as f32, rule.threshold(e));
                let want = (0..2).find(|&e| passes(e)).unwrap_or(2);
                assert_eq!(got.exit[r], want, "{rule:?} row {r}");
                for (a, b) in got_logits[r * CLASSES..][..CLASSES].iter().zip(&full[want][r * CLASSES..]) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{rule:?} row {r}: {a} vs {b}");
                }
                (0..s.exit_depths()[want]).for_each(|l| rows_per_block[l] += 1);
            }
            // Compaction: block l ran on exactly the rows that had not left before it.
            assert_eq!(got.rows_per_block, rows_per_block, "{rule:?}");
            let head_rows: usize = s.exit_depths().iter().map(|&d| rows_per_block[d - 1]).sum();
            let want_flops = rows_per_block.iter().map(|&n| (4 * n * D * H + n * D) as f64).sum::<f64>()
                + (2 * head_rows * D * CLASSES) as f64;
            assert_eq!(got.flops, want_flops);
        }
    }
}

#[test]
fn the_joint_loss_gradchecks_and_weights_each_exit() {
    let s = stack(&mut ParamStore::new(), 4);
    let x = Tensor::randn(&[9, D], &mut Rng::seed(5));
    let targets: Vec<u32> = (0..9).map(|i| i % CLASSES as u32).collect();
    let weights = [0.3, 0.0, 1.0];
    let out = s.loss(&Var::constant(x.clone()), &targets, &weights).unwrap();
    let want: f32 = out.per_exit.iter().zip(&weights).map(|(l, w)| l * w).sum();
    assert!((out.total.value().item().unwrap() - want).abs() < 1e-5);
    // Each exit's CE by hand from the naive logits.
    let full = naive_exit_logits(&s, &x.to_vec());
    for (e, logits) in full.iter().enumerate() {
        let ce: f64 = logits
            .chunks(CLASSES)
            .zip(&targets)
            .map(|(row, &t)| {
                let m = row.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                lse - row[t as usize] as f64
            })
            .sum::<f64>()
            / 9.0;
        assert!((out.per_exit[e] as f64 - ce).abs() < 1e-4, "exit {e}: {} vs {ce}", out.per_exit[e]);
    }
    check_grad(|v| Ok(s.loss(v, &targets, &weights)?.total), &x);
    let xc = Var::constant(x);
    let (w, b) = s.head_params()[0];
    let mut params = vec![w, b];
    params.extend(s.blocks()[0].0.params());
    check_param_grads(|| Ok(s.loss(&xc, &targets, &weights)?.total), &params);
    // An exit of weight 0 trains nothing: its head gets no gradient... of any size.
    let grads = s.loss(&xc, &targets, &weights).unwrap().total.backward().unwrap();
    let (w1, _) = s.head_params()[1];
    assert!(grads.get(w1).is_none_or(|g| g.to_vec().iter().all(|&v| v == 0.0)));
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(6);
    let blocks = (0..3)
        .map(|l| {
            Residual(MlpBlock::new(&mut store.scope(&format!("b{l}")), 64, 128, Activation::Gelu, &mut rng).unwrap())
        })
        .collect();
    let s = EarlyExit::new(&mut store.scope("exit"), blocks, &[1, 2, 3], 10, &mut rng).unwrap();
    let x = Tensor::randn(&[300, 64], &mut rng);
    let targets: Vec<u32> = (0..300).map(|i| (i * 7 % 10) as u32).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let xv = Var::constant(x.clone());
            let grads = s.loss(&xv, &targets, &[0.5, 0.5, 1.0]).unwrap().total.backward().unwrap();
            let mut bits: Vec<u32> = Vec::new();
            for p in store.iter() {
                bits.extend(grads.get(p).unwrap().to_vec().iter().map(|v| v.to_bits()));
            }
            let run = s.infer(&xv, &ExitRule::new(Confidence::MaxProb, 0.2)).unwrap();
            assert!(run.rows_per_block[2] < 300, "some rows should exit early");
            bits.extend(run.logits.to_vec().iter().map(|v| v.to_bits()));
            bits
        })
    };
    assert_eq!(run(1), run(2));
}

/// The naive calibration: every candidate threshold, strictest first, the rule applied row by
/// row, stopping at the first that misses the target.
fn naive_calibration(logits: &[Vec<f32>], depths: &[usize], m: Confidence, target: f64) -> Option<Calibration> {
    let rows = logits[0].len() / CLASSES;
    let pred = |e: usize, r: usize| argmax_rows(&logits[e][r * CLASSES..(r + 1) * CLASSES], CLASSES)[0];
    let conf: Vec<Vec<f32>> = logits.iter().map(|l| l.chunks(CLASSES).map(|r| m.of(r)).collect()).collect();
    let mut candidates: Vec<f32> = conf[..logits.len() - 1].iter().flatten().cloned().collect();
    candidates.push(m.strictest());
    // Strictest first: descending max-prob, ascending entropy.
    candidates.sort_by(|a, b| match m {
        Confidence::MaxProb => b.total_cmp(a),
        Confidence::Entropy => a.total_cmp(b),
    });
    candidates.dedup();
    let start = candidates.iter().position(|&t| t == m.strictest()).unwrap();
    let mut best = None;
    for &t in &candidates[start..] {
        let exits: Vec<usize> = (0..rows)
            .map(|r| (0..logits.len() - 1).find(|&e| m.passes(conf[e][r], t)).unwrap_or(logits.len() - 1))
            .collect();
        let agree = (0..rows).filter(|&r| pred(exits[r], r) == pred(logits.len() - 1, r)).count() as f64 / rows as f64;
        if agree < target {
            break;
        }
        let exit_fraction =
            (0..logits.len()).map(|e| exits.iter().filter(|&&x| x == e).count() as f64 / rows as f64).collect();
        let mean_depth = exits.iter().map(|&e| depths[e] as f64).sum::<f64>() / rows as f64;
        best = Some(Calibration { threshold: t, agreement: agree, exit_fraction, mean_depth });
    }
    best
}

#[test]
fn calibration_matches_trying_every_threshold() {
    let s = stack(&mut ParamStore::new(), 7);
    let x = Var::constant(Tensor::randn(&[200, D], &mut Rng::seed(8)));
    let logits: Vec<Vec<f32>> = s.exit_logits(&x).unwrap().iter().map(|l| l.value().to_vec()).collect();
    for m in [Confidence::MaxProb, Confidence::Entropy] {
        for target in [0.5, 0.8, 0.95] {
            let got = s.calibrate(&x, m, target).unwrap();
            let want = naive_calibration(&logits, &s.exit_depths(), m, target).unwrap();
            assert_eq!(got.threshold, want.threshold, "{m:?} {target}");
            assert_eq!(got.agreement, want.agreement, "{m:?} {target}");
            assert_eq!(got.mean_depth, want.mean_depth);
            assert_eq!(got.exit_fraction, want.exit_fraction);
            assert!(got.agreement >= target);
            // Inference at that threshold agrees with full depth at the calibrated rate.
            let run = s.infer(&x, &ExitRule::new(m, got.threshold)).unwrap();
            let full = argmax_rows(&logits[2], CLASSES);
            let agree = run.predictions().iter().zip(&full).filter(|(a, b)| a == b).count() as f64 / 200.0;
            assert!((agree - got.agreement).abs() <= 0.01, "{m:?} {target}: {agree} vs {}", got.agreement);
        }
        // Rows whose early head is saturated (max prob rounds to 1) exit even at the strictest
        // threshold; here some disagree with full depth, so 100 % agreement is out of reach.
        // (Their normalised entropy stays above 0, so entropy's strictest threshold exits none.)
        match m {
            Confidence::MaxProb => {
                let err = s.calibrate(&x, m, 1.0).unwrap_err().to_string();
                assert!(err.starts_with("EarlyExit::calibrate: no threshold reaches agreement 1: at the strictest"));
                assert!(naive_calibration(&logits, &s.exit_depths(), m, 1.0).is_none());
            }
            Confidence::Entropy => assert_eq!(s.calibrate(&x, m, 1.0).unwrap().mean_depth, 4.0),
        }
        // A loose target lets more rows out early than a strict one.
        let (loose, strict) = (s.calibrate(&x, m, 0.5).unwrap(), s.calibrate(&x, m, 0.95).unwrap());
        assert!(loose.mean_depth < strict.mean_depth, "{m:?}: {} vs {}", loose.mean_depth, strict.mean_depth);
    }
}

/// Points in 6-d whose class is the sign pattern of two coordinates: 4 classes.
fn quadrants(rows: usize, rng: &mut Rng) -> (Tensor, Vec<u32>) {
    let x = Tensor::randn(&[rows, D], rng);
    let v = x.to_vec();
    let t = v.chunks(D).map(|r| (r[0] > 0.0) as u32 * 2 + (r[1] > 0.0) as u32).collect();
    (x, t)
}

#[test]
fn a_toy_task_trains_every_exit_and_exits_early_at_inference() {
    let mut store = ParamStore::new();
    let s = stack(&mut store, 9);
    let mut rng = Rng::seed(10);
    let mut opt = AdamW::new(1e-2);
    let mut losses = Vec::new();
    for _ in 0..200 {
        let (x, t) = quadrants(64, &mut rng);
        let out = s.loss(&Var::constant(x), &t, &[1.0, 1.0, 1.0]).unwrap();
        losses.push(out.total.value().item().unwrap());
        opt.step(&store, &out.total.backward().unwrap()).unwrap();
    }
    let first: f32 = losses[..10].iter().sum::<f32>() / 10.0;
    let last: f32 = losses[190..].iter().sum::<f32>() / 10.0;
    assert!(last < 0.3 * first, "loss {first} → {last}");
    let (x, t) = quadrants(512, &mut rng);
    let x = Var::constant(x);
    let cal = s.calibrate(&x, Confidence::MaxProb, 0.97).unwrap();
    let run = s.infer(&x, &ExitRule::new(Confidence::MaxProb, cal.threshold)).unwrap();
    let accuracy = run.predictions().iter().zip(&t).filter(|(a, b)| a == b).count() as f64 / 512.0;
    assert!(accuracy > 0.85, "accuracy {accuracy}");
    assert!(run.mean_depth() < 3.0, "mean depth {} of 4", run.mean_depth());
}

#[test]
fn bad_settings_and_inputs_are_refused_by_name() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(0);
    let mut mk = |n: usize, d: usize| -> Vec<MlpBlock> {
        (0..n)
            .map(|_| MlpBlock::new(&mut store.scope("x"), d, 3, Activation::Gelu, &mut rng))
            .filter_map(|b| b.ok())
            .collect()
    };
    let blocks = mk(1, 4);
    let mut other = ParamStore::new();
    let mut new = |blocks: Vec<MlpBlock>, exits: &[usize], classes| {
        EarlyExit::new(&mut other.scope("e"), blocks, exits, classes, &mut Rng::seed(0)).err().unwrap().to_string()
    };
    assert_eq!(new(Vec::new(), &[1], 3), "EarlyExit::new: needs at least one block");
    assert_eq!(new(blocks, &[1], 1), "EarlyExit::new: 1 classes: a classifier needs at least 2");
    let mut store2 = ParamStore::new();
    let two = vec![
        MlpBlock::new(&mut store2.scope("a"), 4, 3, Activation::Gelu, &mut Rng::seed(0)).unwrap(),
        MlpBlock::new(&mut store2.scope("b"), 4, 3, Activation::Gelu, &mut Rng::seed(0)).unwrap(),
    ];
    assert_eq!(
        new(two, &[1], 3),
        "EarlyExit::new: exit depths [1] must increase within 1..=2 and end at the last block (2)"
    );

    let s = stack(&mut ParamStore::new(), 1);
    let x = Var::constant(Tensor::zeros(&[3, D]));
    let infer = |rule: ExitRule| s.infer(&x, &rule).err().unwrap().to_string();
    for t in [-0.1, 1.5, f32::NAN] {
        assert_eq!(
            infer(ExitRule::new(Confidence::MaxProb, t)),
            format!("EarlyExit::infer: threshold {t} must be in [0, 1]")
        );
    }
    assert_eq!(
        infer(ExitRule { confidence: Confidence::Entropy, thresholds: vec![0.1, 0.2, 0.3] }),
        "EarlyExit::infer: 3 thresholds: give 1, or one per early exit (2)"
    );
    assert_eq!(
        s.infer(&Var::constant(Tensor::zeros(&[3, 5])), &ExitRule::new(Confidence::MaxProb, 0.5))
            .unwrap_err()
            .to_string(),
        "EarlyExit::exit_logits: x must be [rows, 6], got [3, 5]".replace("exit_logits", "infer")
    );
    let nan = Var::constant(Tensor::from_vec(vec![f32::NAN; D], &[1, D]).unwrap());
    let err = s.infer(&nan, &ExitRule::new(Confidence::MaxProb, 0.5)).unwrap_err().to_string();
    assert_eq!(err, "EarlyExit::infer: NaN or infinite logit at exit 0 in row 0 (class 0 is NaN)");
    assert_eq!(
        s.loss(&x, &[0, 1, 2], &[1.0, 1.0]).err().unwrap().to_string(),
        "EarlyExit::loss: [1.0, 1.0]: need one finite weight >= 0 per exit (3)"
    );
    assert!(s.loss(&x, &[0, 1, 2], &[1.0, -1.0, 1.0]).is_err());
    for target in [0.0, 1.5, f64::NAN] {
        assert_eq!(
            s.calibrate(&x, Confidence::MaxProb, target).unwrap_err().to_string(),
            format!("EarlyExit::calibrate: target agreement {target} must be in (0, 1]")
        );
    }
    let empty = s.infer(&Var::constant(Tensor::zeros(&[0, D])), &ExitRule::new(Confidence::MaxProb, 0.5)).unwrap();
    assert_eq!((empty.logits.shape(), empty.rows_per_block.clone(), empty.flops), (&[0, CLASSES][..], vec![0; 4], 0.0));
}
