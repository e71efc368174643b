//! Mixture-of-depths against a naive reference (full sorts, one row at a time in f64), its
//! gradients by finite differences, 1 vs 2 threads, a toy task, what it runs, and its errors.

use super::depth_router::top_c_per_sequence;
use super::*;
use crate::block::reference::{check_param_grads, naive_mlp};
use crate::block::MlpBlock;
use crate::testing::check_grad;
use elide_autodiff::{AdamW, Optimizer, ParamStore};
use elide_kernels::gemm::Activation;
use std::sync::Mutex;

fn config(selection: RowSelection, gate: ScoreFn) -> MixtureOfDepthsConfig {
    MixtureOfDepthsConfig { d_model: 6, selection, gate, predictor_hidden: Some(5), router_aux_coef: 0.0 }
}

const TOP_QUARTER: RowSelection = RowSelection::TopC { capacity: 0.25, seq_len: 8 };

/// A layer around an MLP block (non-zero biases, a router of readable scale).
fn layer(store: &mut ParamStore, config: MixtureOfDepthsConfig, seed: u64) -> MixtureOfDepths<MlpBlock> {
    let mut rng = Rng::seed(seed);
    let block = MlpBlock::new(&mut store.scope("block"), config.d_model, 7, Activation::Gelu, &mut rng).unwrap();
    for (p, s) in block.params().into_iter().zip(1..) {
        if p.shape().len() == 2 {
            p.set(Tensor::randn(&p.shape(), &mut Rng::seed(seed + s)).mul_scalar(0.5)).unwrap();
        }
    }
    let l = MixtureOfDepths::new(&mut store.scope("mod"), config, block, &mut rng).unwrap();
    l.router().weight().set(Tensor::randn(&[config.d_model, 1], &mut Rng::seed(seed + 9))).unwrap();
    l
}

/// Reference top-C: sort each sequence by logit (descending, ties to the earlier row), keep
/// `c`, list them ascending.
fn naive_top_c(r: &[f32], seq_len: usize, c: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for (b, seq) in r.chunks(seq_len).enumerate() {
        let mut order: Vec<usize> = (0..seq.len()).collect();
        order.sort_by(|&i, &j| seq[j].total_cmp(&seq[i]).then(i.cmp(&j)));
        let mut kept: Vec<u32> = order[..c].iter().map(|&i| (b * seq_len + i) as u32).collect();
        kept.sort();
        out.extend(kept);
    }
    out
}

#[test]
fn top_c_per_sequence_matches_a_full_sort() {
    for (seqs, seq_len) in [(1, 1), (1, 7), (3, 33), (2, 257)] {
        let mut r = Tensor::randn(&[seqs * seq_len], &mut Rng::seed(seq_len as u64)).to_vec();
        // Ties: copy some values onto other rows.
        for i in (0..r.len()).step_by(5).skip(1) {
            r[i] = r[i - 1];
        }
        for capacity in [0.01, 0.125, 0.5, 0.99, 1.0] {
            let c = capacity_rows(seq_len, capacity);
            assert_eq!(top_c_per_sequence(&r, seq_len, c), naive_top_c(&r, seq_len, c), "{seqs}×{seq_len} c={c}");
        }
    }
}

#[test]
fn capacity_rounds_down_with_at_least_one_row() {
    assert_eq!(capacity_rows(1024, 0.125), 128);
    assert_eq!(capacity_rows(7, 0.5), 3); // floor(3.5)
    assert_eq!(capacity_rows(7, 0.01), 1); // floor gives 0: one row still enters
    assert_eq!(capacity_rows(7, 1.0), 7);
    assert_eq!(capacity_rows(0, 0.5), 0);
}

/// The layer's output by hand: chosen rows by a full sort (or the threshold), then
/// `x + g·mlp(x)` per row in f64.
fn naive_forward(l: &MixtureOfDepths<MlpBlock>, x: &Tensor) -> (Vec<u32>, Vec<f32>) {
    let d = l.config().d_model;
    let xs = x.to_vec();
    let w = l.router().weight().value().to_vec();
    let r: Vec<f32> =
        xs.chunks(d).map(|row| row.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32).collect();
    let chosen = match l.config().selection {
        RowSelection::TopC { capacity, seq_len } => naive_top_c(&r, seq_len, capacity_rows(seq_len, capacity)),
        RowSelection::Threshold { threshold } => {
            (0..r.len() as u32).filter(|&i| 1.0 / (1.0 + (-r[i as usize] as f64).exp()) >= threshold as f64).collect()
        }
    };
    let mut out = xs.clone();
    for &i in &chosen {
        let i = i as usize;
        let f = naive_mlp(l.block(), &xs[i * d..(i + 1) * d]);
        let g = match l.config().gate {
            ScoreFn::Raw => r[i] as f64,
            _ => 1.0 / (1.0 + (-r[i] as f64).exp()),
        };
        for j in 0..d {
            out[i * d + j] = (xs[i * d + j] as f64 + g * f[j] as f64) as f32;
        }
    }
    (chosen, out)
}

#[test]
fn forward_matches_the_naive_reference() {
    let selections = [
        TOP_QUARTER,
        RowSelection::TopC { capacity: 1.0, seq_len: 8 },
        RowSelection::TopC { capacity: 0.125, seq_len: 33 },
        RowSelection::Threshold { threshold: 0.7 },
        RowSelection::Threshold { threshold: 0.0 },
        RowSelection::Threshold { threshold: 1.0 }, // no row passes: the layer is the identity
    ];
    for selection in selections {
        for gate in [ScoreFn::Raw, ScoreFn::Sigmoid] {
            let rows = if matches!(selection, RowSelection::TopC { seq_len: 33, .. }) { 66 } else { 40 };
            let l = layer(&mut ParamStore::new(), config(selection, gate), 3);
            let x = Tensor::randn(&[rows, 6], &mut Rng::seed(4));
            let out = l.forward(&Var::constant(x.clone())).unwrap();
            let (chosen, want) = naive_forward(&l, &x);
            assert_eq!(out.chosen, chosen, "{selection:?} {gate:?}");
            for (i, (g, w)) in out.output.value().to_vec().iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{selection:?} {gate:?} [{i}]: {g} vs {w}");
            }
            let membership: Vec<f32> = (0..rows as u32).map(|i| if chosen.contains(&i) { 1.0 } else { 0.0 }).collect();
            assert_eq!(out.membership, membership);
        }
    }
}

/// A block that records how many rows each call received.
struct Counting {
    inner: MlpBlock,
    rows: Mutex<Vec<usize>>,
}

impl Block for Counting {
    fn d_model(&self) -> usize {
        self.inner.d_model()
    }
    fn forward(&self, x: &Var) -> Result<Var> {
        self.rows.lock().unwrap().push(x.shape()[0]);
        self.inner.forward(x)
    }
    fn forward_flops(&self, rows: usize) -> f64 {
        self.inner.forward_flops(rows)
    }
}

#[test]
fn causal_rules_decide_row_by_row() {
    let l = layer(&mut ParamStore::new(), config(TOP_QUARTER, ScoreFn::Raw), 21);
    let x = Tensor::randn(&[33, 6], &mut Rng::seed(22));
    // The router's rule: r ≥ 0, by hand; the output as the reference computes it for that set.
    let w = l.router().weight().value().to_vec();
    let xs = x.to_vec();
    let want: Vec<u32> = (0..33u32)
        .filter(|&i| xs[i as usize * 6..][..6].iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() >= 0.0)
        .collect();
    let out = l.forward_causal(&Var::constant(x.clone()), Causal::Router).unwrap();
    assert_eq!(out.chosen, want);
    assert!(!want.is_empty() && want.len() < 33);
    // The predictor's rule: its logit ≥ 0, computed by hand in f64.
    let [w1, b1, w2, b2] = l.predictor_params().unwrap().map(|p| p.value().to_vec());
    let h = 5;
    let want: Vec<u32> = (0..33u32)
        .filter(|&i| {
            let row = &xs[i as usize * 6..][..6];
            let z: f64 = (0..h)
                .map(|j| {
                    let a = b1[j] as f64 + (0..6).map(|k| row[k] as f64 * w1[k * h + j] as f64).sum::<f64>();
                    Activation::Gelu.reference(a) * w2[j] as f64
                })
                .sum::<f64>()
                + b2[0] as f64;
            z >= 0.0
        })
        .collect();
    let out = l.forward_causal(&Var::constant(x), Causal::Predictor).unwrap();
    assert_eq!(out.chosen, want);
    // Executed FLOPs: router, predictor, and the block on the chosen rows only.
    let want_flops = 2.0 * 33.0 * 6.0 + 2.0 * (33 * (6 * 5 + 5)) as f64 + 4.0 * (want.len() * 6 * 7) as f64;
    assert_eq!(out.flops, want_flops);
}

#[test]
fn the_block_sees_only_the_chosen_rows_and_the_rest_pass_unchanged() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(5);
    let inner = MlpBlock::new(&mut store.scope("b"), 6, 7, Activation::Gelu, &mut rng).unwrap();
    let block = Counting { inner, rows: Mutex::new(Vec::new()) };
    let l = MixtureOfDepths::new(&mut store.scope("mod"), config(TOP_QUARTER, ScoreFn::Raw), block, &mut rng).unwrap();
    let x = Var::leaf(Tensor::randn(&[32, 6], &mut rng));
    let out = l.forward(&x).unwrap();
    assert_eq!(*l.block().rows.lock().unwrap(), vec![8]); // 4 sequences × floor(0.25·8)
    assert_eq!(out.flops, 2.0 * 32.0 * 6.0 + 4.0 * (8 * 6 * 7) as f64);
    let (xs, ys) = (x.value().to_vec(), out.output.value().to_vec());
    let dy = Tensor::randn(&[32, 6], &mut rng);
    let grads = out.output.backward_with(&dy).unwrap();
    let (dx, dyv) = (grads.of(&x).unwrap().to_vec(), dy.to_vec());
    for i in (0..32).filter(|i| !out.chosen.contains(&(*i as u32))) {
        // Forward: the row itself; backward: the output gradient itself, bit for bit.
        assert_eq!(&ys[i * 6..(i + 1) * 6], &xs[i * 6..(i + 1) * 6], "row {i}");
        assert_eq!(&dx[i * 6..(i + 1) * 6], &dyv[i * 6..(i + 1) * 6], "row {i}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    for gate in [ScoreFn::Raw, ScoreFn::Sigmoid] {
        for selection in [TOP_QUARTER, RowSelection::Threshold { threshold: 0.6 }] {
            let l = layer(&mut ParamStore::new(), config(selection, gate), 7);
            let x = Tensor::randn(&[16, 6], &mut Rng::seed(8));
            // The finite differences must not move a row across the selection boundary.
            let base = l.forward(&Var::constant(x.clone())).unwrap().chosen;
            let xs = x.to_vec();
            for i in 0..xs.len() {
                for delta in [-1.5e-2, 1.5e-2] {
                    let mut moved = xs.clone();
                    moved[i] += delta;
                    let y = Var::constant(Tensor::from_vec(moved, &[16, 6]).unwrap());
                    assert_eq!(l.forward(&y).unwrap().chosen, base, "element {i}: pick another seed");
                }
            }
            check_grad(|v| Ok(l.forward(v)?.output), &x);
            let r = Tensor::randn(&[16, 6], &mut Rng::seed(10));
            let xc = Var::constant(x.clone());
            let loss = || Ok(l.forward(&xc)?.output.mul(&Var::constant(r.clone()))?.sum_all());
            let mut params = vec![l.router().weight()];
            params.extend(l.block().params());
            check_param_grads(loss, &params);
        }
    }
}

#[test]
fn the_causal_losses_gradcheck_and_reach_only_their_own_weights() {
    let mut config = config(TOP_QUARTER, ScoreFn::Raw);
    config.router_aux_coef = 0.5;
    let l = layer(&mut ParamStore::new(), config, 11);
    let x = Var::constant(Tensor::randn(&[16, 6], &mut Rng::seed(12)));
    let out = l.forward(&x).unwrap();
    // BCE against membership, by hand in f64.
    let r = out.router_logits.value().to_vec();
    let want: f64 = r
        .iter()
        .zip(&out.membership)
        .map(|(&z, &y)| {
            let p = 1.0 / (1.0 + (-z as f64).exp());
            -(y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / 16.0;
    let got = out.router_aux_loss().unwrap().value().item().unwrap() as f64;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    assert!((out.aux_loss().unwrap().value().item().unwrap() as f64 - 0.5 * want).abs() < 1e-5);
    let targets = out.membership.clone();
    check_grad(|z| bce_with_logits(z, &targets), out.router_logits.value());

    let pred = l.predictor_params().unwrap();
    let loss = || l.predictor_loss(&x, &out);
    check_param_grads(loss, &pred);
    // The predictor reads a stop-gradient copy: nothing reaches x, the router or the block.
    let xl = Var::leaf(x.value().clone());
    let grads = l.predictor_loss(&xl, &out).unwrap().backward().unwrap();
    assert!(grads.of(&xl).is_none() && grads.get(l.router().weight()).is_none());
    assert!(pred.iter().all(|p| grads.get(p).is_some()));
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    // 4 sequences of 300 rows, 75 chosen from each: the block's GEMMs (300 × 64 × 128) are
    // large enough to be split over threads.
    let cfg = MixtureOfDepthsConfig {
        d_model: 64,
        selection: RowSelection::TopC { capacity: 0.25, seq_len: 300 },
        gate: ScoreFn::Raw,
        predictor_hidden: Some(16),
        router_aux_coef: 0.1,
    };
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(13);
    let block = MlpBlock::new(&mut store.scope("b"), 64, 128, Activation::Gelu, &mut rng).unwrap();
    let l = MixtureOfDepths::new(&mut store.scope("mod"), cfg, block, &mut rng).unwrap();
    let x = Tensor::randn(&[1200, 64], &mut rng);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let xl = Var::leaf(x.clone());
            let out = l.forward(&xl).unwrap();
            let loss = out.output.square().mean_all().add(&out.aux_loss().unwrap()).unwrap();
            let loss = loss.add(&l.predictor_loss(&xl, &out).unwrap()).unwrap();
            let grads = loss.backward().unwrap();
            let mut bits: Vec<u32> = out.output.value().to_vec().iter().map(|v| v.to_bits()).collect();
            bits.extend(grads.of(&xl).unwrap().to_vec().iter().map(|v| v.to_bits()));
            for p in store.iter() {
                bits.extend(grads.get(p).unwrap().to_vec().iter().map(|v| v.to_bits()));
            }
            let causal = l.forward_causal(&Var::constant(x.clone()), Causal::Predictor).unwrap();
            bits.extend(causal.output.value().to_vec().iter().map(|v| v.to_bits()));
            bits
        })
    };
    assert_eq!(run(1), run(2));
}

/// Rows `[B·8, 6]` where two rows per sequence carry a marker (`x₀ = 2`) and need `v` added,
/// the others only `v/5`: the block helps every row, the marked ones most. Returns
/// `(x, target, marked)`.
fn marked_rows(seqs: usize, rng: &mut Rng) -> (Tensor, Tensor, Vec<u32>) {
    let v = [0.5f32, -0.4, 0.3, 0.2, -0.3, 0.4];
    let mut x = Tensor::randn(&[seqs * 8, 6], rng).mul_scalar(0.5).to_vec();
    let mut target = x.clone();
    for (i, t) in target.iter_mut().enumerate() {
        *t += 0.2 * v[i % 6];
    }
    let mut marked = Vec::new();
    for b in 0..seqs {
        let first = rng.below(8) as usize;
        let second = (first + 1 + rng.below(7) as usize) % 8;
        for i in [first, second] {
            let row = b * 8 + i;
            x[row * 6] = 2.0;
            target[row * 6] = 2.0;
            for j in 0..6 {
                target[row * 6 + j] += 0.8 * v[j];
            }
            marked.push(row as u32);
        }
    }
    marked.sort();
    let t = |v: Vec<f32>| Tensor::from_vec(v, &[seqs * 8, 6]).unwrap();
    (t(x), t(target), marked)
}

#[test]
fn a_toy_task_trains_the_router_the_block_and_the_predictor() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(17);
    let block = MlpBlock::new(&mut store.scope("b"), 6, 16, Activation::Gelu, &mut rng).unwrap();
    // The residual branch starts at zero (a common init): the router then learns from what the
    // block has learnt to contribute, not from its random initial output.
    block.params()[2].set(Tensor::zeros(&[1, 16, 6])).unwrap();
    let mut cfg = config(TOP_QUARTER, ScoreFn::Sigmoid);
    cfg.predictor_hidden = Some(8);
    let l = MixtureOfDepths::new(&mut store.scope("mod"), cfg, block, &mut rng).unwrap();
    let mut opt = AdamW::new(2e-2);
    let mut losses = Vec::new();
    for _ in 0..400 {
        let (x, target, _) = marked_rows(8, &mut rng);
        let x = Var::constant(x);
        let out = l.forward(&x).unwrap();
        let mse = out.output.sub(&Var::constant(target)).unwrap().square().mean_all();
        losses.push(mse.value().item().unwrap());
        let loss = mse.add(&out.aux_loss().unwrap()).unwrap().add(&l.predictor_loss(&x, &out).unwrap()).unwrap();
        opt.step(&store, &loss.backward().unwrap()).unwrap();
    }
    let first: f32 = losses[..20].iter().sum::<f32>() / 20.0;
    let last: f32 = losses[380..].iter().sum::<f32>() / 20.0;
    // The floor is 0.0040: unmarked rows (3/4 of them) still miss v/5 when skipped.
    assert!(last < 0.3 * first && last < 0.006, "loss {first} → {last}");
    // On fresh data the router picks the marked rows (the best top-C), and the causal predictor,
    // which sees one row at a time, agrees with the router's choice.
    let (x, _, marked) = marked_rows(32, &mut rng);
    let x = Var::constant(x);
    let chosen = l.forward(&x).unwrap().chosen;
    let hits = chosen.iter().filter(|c| marked.contains(c)).count();
    assert!(hits >= 58, "{hits} of 64 marked rows chosen");
    let causal = l.forward_causal(&x, Causal::Predictor).unwrap();
    let agree = (0..256u32).filter(|i| chosen.contains(i) == causal.chosen.contains(i)).count();
    assert!(agree >= 243, "the predictor agrees with top-C on {agree} of 256 rows");
    assert!(causal.flops > l.forward(&x).unwrap().flops, "the predictor's FLOPs are counted");
}

#[test]
fn bad_settings_and_inputs_are_refused_by_name() {
    let err = |selection, gate| {
        let mut store = ParamStore::new();
        let block = MlpBlock::new(&mut store.scope("b"), 6, 7, Activation::Gelu, &mut Rng::seed(0)).unwrap();
        MixtureOfDepths::new(&mut store.scope("m"), config(selection, gate), block, &mut Rng::seed(0))
            .err()
            .unwrap()
            .to_string()
    };
    for capacity in [0.0, -0.5, 1.5, f32::NAN] {
        assert_eq!(
            err(RowSelection::TopC { capacity, seq_len: 8 }, ScoreFn::Raw),
            format!("MixtureOfDepths: capacity {capacity} must be in (0, 1]")
        );
    }
    assert_eq!(
        err(RowSelection::TopC { capacity: 0.5, seq_len: 0 }, ScoreFn::Raw),
        "MixtureOfDepths: seq_len must be > 0"
    );
    for threshold in [-0.1, 1.1, f32::NAN] {
        assert_eq!(
            err(RowSelection::Threshold { threshold }, ScoreFn::Sigmoid),
            format!("MixtureOfDepths: threshold {threshold} must be in [0, 1]")
        );
    }
    assert!(err(TOP_QUARTER, ScoreFn::Softmax).contains("softmax over one destination"));
    let mut bad = config(TOP_QUARTER, ScoreFn::Raw);
    bad.predictor_hidden = Some(0);
    assert_eq!(bad.validate().unwrap_err().to_string(), "MixtureOfDepths: the predictor's hidden width must be > 0");
    bad = config(TOP_QUARTER, ScoreFn::Raw);
    bad.d_model = 5;
    let mut store = ParamStore::new();
    let block = MlpBlock::new(&mut store.scope("b"), 6, 7, Activation::Gelu, &mut Rng::seed(0)).unwrap();
    let e = MixtureOfDepths::new(&mut store.scope("m"), bad, block, &mut Rng::seed(0)).err().unwrap();
    assert_eq!(e.to_string(), "MixtureOfDepths: the block's width 6 differs from d_model = 5");

    let l = layer(&mut ParamStore::new(), config(TOP_QUARTER, ScoreFn::Raw), 1);
    let e = |x: Tensor| l.forward(&Var::constant(x)).err().unwrap().to_string();
    assert_eq!(e(Tensor::zeros(&[12, 6])), "MixtureOfDepths: 12 rows are not a whole number of sequences of length 8");
    assert_eq!(e(Tensor::zeros(&[8, 5])), "router: input must be [tokens, d_model = 6], got [8, 5]");
    let mut v = vec![0.5; 48];
    v[3 * 6 + 1] = f32::NAN;
    assert_eq!(e(Tensor::from_vec(v, &[8, 6]).unwrap()), "router: NaN or infinite logit in row 3 (expert 0 is NaN)");
    let mut no_pred = config(TOP_QUARTER, ScoreFn::Raw);
    no_pred.predictor_hidden = None;
    let l = layer(&mut ParamStore::new(), no_pred, 1);
    let x = Var::constant(Tensor::zeros(&[8, 6]));
    assert_eq!(
        l.forward_causal(&x, Causal::Predictor).err().unwrap().to_string(),
        "MixtureOfDepths::forward_causal: Causal::Predictor on a layer without a predictor"
    );
    let out = l.forward(&x).unwrap();
    assert!(l.predictor_loss(&x, &out).is_err());
}

#[test]
fn an_empty_batch_runs_the_block_on_nothing() {
    let l = layer(&mut ParamStore::new(), config(TOP_QUARTER, ScoreFn::Raw), 2);
    let out = l.forward(&Var::constant(Tensor::zeros(&[0, 6]))).unwrap();
    assert_eq!((out.output.shape(), out.chosen.len(), out.flops), (&[0, 6][..], 0, 0.0));
}
