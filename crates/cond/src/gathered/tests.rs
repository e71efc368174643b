//! The gathered ops against naive references (one row and one destination at a time, in f64),
//! gradients by finite differences, 1 vs 2 threads, and their error messages.

use super::*;
use crate::plan::Capacity;
use crate::testing::{assert_close, check_grad_many, random_token_choice};
use elide_tensor::Rng;

const ACTIVATIONS: [Activation; 5] =
    [Activation::Identity, Activation::Relu, Activation::Gelu, Activation::GeluErf, Activation::Silu];

fn plan(t: usize, g: usize, k: usize, seed: u64) -> Arc<DispatchPlan> {
    let (tokens, dest) = random_token_choice(t, g, k, seed);
    Arc::new(DispatchPlan::new(&tokens, &dest, t, g, Capacity::Dropless).unwrap())
}

/// `W[g](i, j)` of a stacked weight in `layout`.
fn weight_at(w: &[f32], layout: WeightLayout, g: usize, i: usize, j: usize, fi: usize, fo: usize) -> f64 {
    match layout {
        WeightLayout::InOut => w[g * fi * fo + i * fo + j] as f64,
        WeightLayout::OutIn => w[g * fi * fo + j * fi + i] as f64,
    }
}

/// `Y[s] = act(A[s]·W[g] + b[g])`, one slot and one output at a time.
#[allow(clippy::too_many_arguments)]
fn naive_linear(
    x: &[f32],
    source: RowSource,
    plan: &DispatchPlan,
    w: &[f32],
    layout: WeightLayout,
    b: Option<&[f32]>,
    act: Activation,
    fi: usize,
    fo: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; plan.num_kept() * fo];
    for g in 0..plan.num_experts() {
        for s in plan.expert_range(g) {
            let row = match source {
                RowSource::Gathered => plan.tokens()[s] as usize,
                RowSource::Slots => s,
            };
            for j in 0..fo {
                let mut acc: f64 =
                    (0..fi).map(|i| x[row * fi + i] as f64 * weight_at(w, layout, g, i, j, fi, fo)).sum();
                acc += b.map_or(0.0, |b| b[g * fo + j] as f64);
                out[s * fo + j] = act.reference(acc) as f32;
            }
        }
    }
    out
}

#[test]
fn grouped_linear_matches_the_naive_reference() {
    // Odd sizes, a destination with no rows (g = 64 > t·k for t = 7), and both input kinds;
    // all on the grouped work list (the dense driver's test follows).
    for (t, g, k) in [(1, 1, 1), (7, 3, 2), (33, 64, 3), (257, 5, 2), (1100, 2, 1)] {
        let p = plan(t, g, k, t as u64);
        for (fi, fo) in [(1, 7), (9, 17), (33, 5)] {
            for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
                let mut rng = Rng::seed((fi * fo) as u64);
                let w = Tensor::randn(&layout.shape(g, fi, fo), &mut rng);
                let b = Tensor::randn(&[g, fo], &mut rng);
                for source in [RowSource::Gathered, RowSource::Slots] {
                    let rows = if source == RowSource::Gathered { t } else { p.num_kept() };
                    let x = Tensor::randn(&[rows, fi], &mut rng);
                    for act in ACTIVATIONS {
                        for bias in [false, true] {
                            let (wv, bv) = (Var::constant(w.clone()), Var::constant(b.clone()));
                            let gw = GroupedWeight::new(&wv, layout);
                            let gw = if bias { gw.with_bias(&bv) } else { gw };
                            let got = grouped_linear(&Var::constant(x.clone()), source, &p, gw, act).unwrap();
                            let b_data = b.to_vec();
                            let want = naive_linear(
                                &x.to_vec(),
                                source,
                                &p,
                                &w.to_vec(),
                                layout,
                                bias.then_some(&b_data[..]),
                                act,
                                fi,
                                fo,
                            );
                            assert_eq!(got.shape(), &[p.num_kept(), fo]);
                            let what = format!("t={t} g={g} k={k} {fi}x{fo} {layout:?} {source:?} {act:?} bias={bias}");
                            assert_close(&got.value().to_vec(), &want, 1e-5, &what);
                        }
                    }
                }
            }
        }
    }
}

/// Problems of at least `DENSE_MIN_MACS` multiply-adds run one after another on the dense
/// driver (here two destinations of ~550 rows × 352 × 384, out of slot order in the output).
#[test]
fn large_problems_run_on_the_dense_driver_and_match_the_naive_reference() {
    let (t, g, fi, fo) = (1100, 2, 352, 384);
    let p = plan(t, g, 1, 5);
    assert!((0..g).all(|e| p.expert_range(e).len() * fi * fo >= DENSE_MIN_MACS));
    let mut rng = Rng::seed(9);
    let w = Tensor::randn(&WeightLayout::InOut.shape(g, fi, fo), &mut rng);
    let b = Tensor::randn(&[g, fo], &mut rng);
    let x = Tensor::randn(&[t, fi], &mut rng);
    let (wv, bv) = (Var::constant(w.clone()), Var::constant(b.clone()));
    let gw = GroupedWeight::new(&wv, WeightLayout::InOut).with_bias(&bv);
    let got = grouped_linear(&Var::constant(x.clone()), RowSource::Gathered, &p, gw, Activation::Gelu).unwrap();
    let b_data = b.to_vec();
    let want = naive_linear(
        &x.to_vec(),
        RowSource::Gathered,
        &p,
        &w.to_vec(),
        WeightLayout::InOut,
        Some(&b_data),
        Activation::Gelu,
        fi,
        fo,
    );
    assert_close(&got.value().to_vec(), &want, 1e-4, "dense driver (K = 352)");
}

#[test]
fn grouped_linear_reads_strided_inputs() {
    // A transposed (strided) x and weight give the same result as their contiguous copies.
    let p = plan(7, 3, 2, 1);
    let mut rng = Rng::seed(2);
    let x_t = Tensor::randn(&[5, 7], &mut rng); // x = x_tᵀ, [7, 5]
    let w = Tensor::randn(&[3, 4, 5], &mut rng); // OutIn [G, out 4, in 5], also seen as a view
    let x = Var::constant(x_t.transpose(0, 1).unwrap());
    let xc = Var::constant(x.value().contiguous());
    let w_view = Var::constant(w.permute(&[0, 2, 1]).unwrap().permute(&[0, 2, 1]).unwrap());
    let a =
        grouped_linear(&x, RowSource::Gathered, &p, GroupedWeight::new(&w_view, WeightLayout::OutIn), Activation::Gelu);
    let wc = Var::constant(w);
    let b =
        grouped_linear(&xc, RowSource::Gathered, &p, GroupedWeight::new(&wc, WeightLayout::OutIn), Activation::Gelu);
    assert_eq!(a.unwrap().value().to_vec(), b.unwrap().value().to_vec());
}

#[test]
fn grouped_linear_gradients_match_finite_differences() {
    let (t, g, k, fi, fo) = (6, 3, 2, 4, 5);
    // Destination 2 gets no rows: its weight and bias gradients must be exactly zero.
    let (tokens, dest) = random_token_choice(t, g, k, 3);
    let keep: Vec<usize> = (0..tokens.len()).filter(|&i| dest[i] != 2).collect();
    let tokens: Vec<u32> = keep.iter().map(|&i| tokens[i]).collect();
    let dest: Vec<u32> = keep.iter().map(|&i| dest[i]).collect();
    let p = Arc::new(DispatchPlan::new(&tokens, &dest, t, g, Capacity::Dropless).unwrap());
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        for source in [RowSource::Gathered, RowSource::Slots] {
            for act in ACTIVATIONS {
                let mut rng = Rng::seed(5);
                let rows = if source == RowSource::Gathered { t } else { p.num_kept() };
                let inputs = [
                    Tensor::randn(&[rows, fi], &mut rng),
                    Tensor::randn(&layout.shape(g, fi, fo), &mut rng),
                    Tensor::randn(&[g, fo], &mut rng),
                ];
                let f = |v: &[Var]| {
                    grouped_linear(&v[0], source, &p, GroupedWeight::new(&v[1], layout).with_bias(&v[2]), act)
                };
                check_grad_many(f, &inputs);
                let leaves: Vec<Var> = inputs.iter().map(|x| Var::leaf(x.clone())).collect();
                let grads = f(&leaves).unwrap().square().sum_all().backward().unwrap();
                let dw = grads.of(&leaves[1]).unwrap().to_vec();
                assert!(dw[2 * fi * fo..].iter().all(|&v| v == 0.0), "{layout:?} {source:?} {act:?}");
                let db = grads.of(&leaves[2]).unwrap().to_vec();
                assert!(db[2 * fo..].iter().all(|&v| v == 0.0));
                assert!(dw[..2 * fi * fo].iter().any(|&v| v != 0.0));
            }
        }
    }
}

#[test]
fn only_inputs_that_take_a_gradient_get_one() {
    let p = plan(5, 2, 1, 7);
    let mut rng = Rng::seed(8);
    let x = Var::constant(Tensor::randn(&[5, 3], &mut rng));
    let w = Var::leaf(Tensor::randn(&[2, 3, 4], &mut rng));
    let y = grouped_linear(&x, RowSource::Gathered, &p, GroupedWeight::new(&w, WeightLayout::InOut), Activation::Relu);
    let grads = y.unwrap().sum_all().backward().unwrap();
    assert!(grads.of(&w).is_some());
    assert!(grads.of(&x).is_none());
}

#[test]
fn combine_and_gather_match_the_naive_reference_and_gradcheck() {
    for (t, g, k) in [(1, 1, 1), (7, 3, 2), (33, 8, 3)] {
        let p = plan(t, g, k, 11 + t as u64);
        let d = 5;
        let mut rng = Rng::seed(13);
        let rows = Tensor::randn(&[p.num_kept(), d], &mut rng);
        let gates = Tensor::randn(&[p.num_kept()], &mut rng);
        let x = Tensor::randn(&[t, d], &mut rng);
        let (r, gv) = (rows.to_vec(), gates.to_vec());
        let mut want = vec![0.0f64; t * d];
        for s in 0..p.num_kept() {
            let tok = p.tokens()[s] as usize;
            for j in 0..d {
                want[tok * d + j] += gv[s] as f64 * r[s * d + j] as f64;
            }
        }
        let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
        let got = combine(&Var::constant(rows.clone()), Some(&Var::constant(gates.clone())), &p).unwrap();
        assert_close(&got.value().to_vec(), &want, 1e-5, "combine");
        let gathered = gather(&Var::constant(x.clone()), &p).unwrap().value().to_vec();
        let xs = x.to_vec();
        let want: Vec<f32> = p.tokens().iter().flat_map(|&tok| xs[tok as usize * d..][..d].to_vec()).collect();
        assert_eq!(gathered, want);

        check_grad_many(|v| combine(&v[0], Some(&v[1]), &p), &[rows.clone(), gates]);
        check_grad_many(|v| combine(&v[0], None, &p), std::slice::from_ref(&rows));
        check_grad_many(|v| gather(&v[0], &p), &[x]);
    }
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    for (t, g) in [(300, 8), (1200, 2)] {
        bit_identical_case(t, g);
    }
}

fn bit_identical_case(t: usize, g: usize) {
    let (k, fi, fo) = (2, 64, 96);
    let p = plan(t, g, k, 17);
    let mut rng = Rng::seed(19);
    let inputs = [
        Tensor::randn(&[t, fi], &mut rng),
        Tensor::randn(&[g, fo, fi], &mut rng),
        Tensor::randn(&[g, fo], &mut rng),
        Tensor::randn(&[p.num_kept()], &mut rng),
    ];
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let v: Vec<Var> = inputs.iter().map(|x| Var::leaf(x.clone())).collect();
            let w = GroupedWeight::new(&v[1], WeightLayout::OutIn).with_bias(&v[2]);
            let y = grouped_linear(&v[0], RowSource::Gathered, &p, w, Activation::Gelu).unwrap();
            let out = combine(&y, Some(&v[3]), &p).unwrap();
            let grads = out.square().sum_all().backward().unwrap();
            let mut bits: Vec<u32> = out.value().to_vec().iter().map(|x| x.to_bits()).collect();
            for leaf in &v {
                bits.extend(grads.of(leaf).unwrap().to_vec().iter().map(|x| x.to_bits()));
            }
            bits
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn an_empty_plan_gives_empty_rows_and_zero_outputs() {
    let p = Arc::new(DispatchPlan::new(&[], &[], 4, 3, Capacity::Dropless).unwrap());
    let x = Var::leaf(Tensor::ones(&[4, 2]));
    let w = Var::leaf(Tensor::ones(&[3, 2, 5]));
    let y = grouped_linear(&x, RowSource::Gathered, &p, GroupedWeight::new(&w, WeightLayout::InOut), Activation::Gelu);
    let y = y.unwrap();
    assert_eq!(y.shape(), &[0, 5]);
    let out = combine(&y, None, &p).unwrap();
    assert_eq!(out.value().to_vec(), vec![0.0; 20]);
    let grads = out.sum_all().backward().unwrap();
    assert_eq!(grads.of(&w).unwrap().to_vec(), vec![0.0; 30]);
    assert_eq!(grads.of(&x).unwrap().to_vec(), vec![0.0; 8]);
}

#[test]
fn bad_shapes_are_refused_by_name() {
    let p = plan(4, 2, 2, 23);
    let s = p.num_kept();
    let x = Var::constant(Tensor::zeros(&[4, 3]));
    let w = Var::constant(Tensor::zeros(&[2, 3, 5]));
    let err = |r: Result<Var>| r.err().unwrap().to_string();
    let lin = |x: &Var, source, w: &Var, layout| {
        grouped_linear(x, source, &p, GroupedWeight::new(w, layout), Activation::Identity)
    };
    assert_eq!(
        err(lin(&x, RowSource::Gathered, &Var::constant(Tensor::zeros(&[3, 3, 5])), WeightLayout::InOut)),
        "grouped_linear: the weight must be [2, ·, ·] (one block per destination of the plan), got [3, 3, 5]"
    );
    assert_eq!(
        err(lin(&x, RowSource::Gathered, &w, WeightLayout::OutIn)),
        "grouped_linear: x must be [4, 5] (tokens of the plan, the weight's input width), got [4, 3]"
    );
    assert_eq!(
        err(lin(&x, RowSource::Slots, &w, WeightLayout::InOut)),
        format!("grouped_linear: x must be [{s}, 3] (slots of the plan, the weight's input width), got [4, 3]")
    );
    let b = Var::constant(Tensor::zeros(&[2, 4]));
    let with_bias = GroupedWeight::new(&w, WeightLayout::InOut).with_bias(&b);
    assert_eq!(
        err(grouped_linear(&x, RowSource::Gathered, &p, with_bias, Activation::Gelu)),
        "grouped_linear: the bias must be [2, 5], got [2, 4]"
    );
    assert_eq!(
        err(combine(&Var::constant(Tensor::zeros(&[s + 1, 3])), None, &p)),
        format!("combine: rows must be [{s}, d] (one per slot of the plan), got [{}, 3]", s + 1)
    );
    let rows = Var::constant(Tensor::zeros(&[s, 3]));
    assert_eq!(
        err(combine(&rows, Some(&Var::constant(Tensor::zeros(&[s, 1]))), &p)),
        format!("combine: gates must be [{s}] (one per slot of the plan), got [{s}, 1]")
    );
    assert_eq!(
        err(gather(&Var::constant(Tensor::zeros(&[5, 3])), &p)),
        "gather: x must be [4, d] (tokens of the plan), got [5, 3]"
    );
}

#[test]
fn combine_onto_is_the_residual_plus_the_combine_and_gradchecks() {
    for (t, g, k) in [(1, 1, 1), (7, 3, 2), (33, 1, 1)] {
        // Leave some tokens without slots: keep every other assignment.
        let (tokens, dest) = random_token_choice(t, g, k, 29 + t as u64);
        let keep: Vec<usize> = (0..tokens.len()).step_by(2).collect();
        let tokens: Vec<u32> = keep.iter().map(|&i| tokens[i]).collect();
        let dest: Vec<u32> = keep.iter().map(|&i| dest[i]).collect();
        let p = Arc::new(DispatchPlan::new(&tokens, &dest, t, g, Capacity::Dropless).unwrap());
        let d = 5;
        let mut rng = Rng::seed(31);
        let rows = Tensor::randn(&[p.num_kept(), d], &mut rng);
        let gates = Tensor::randn(&[p.num_kept()], &mut rng);
        let x = Tensor::randn(&[t, d], &mut rng);
        let (r, gv, xv) = (rows.to_vec(), gates.to_vec(), x.to_vec());
        let mut want: Vec<f64> = xv.iter().map(|&v| v as f64).collect();
        for s in 0..p.num_kept() {
            let tok = p.tokens()[s] as usize;
            for j in 0..d {
                want[tok * d + j] += gv[s] as f64 * r[s * d + j] as f64;
            }
        }
        let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
        let (xc, rc, gc) = (Var::constant(x.clone()), Var::constant(rows.clone()), Var::constant(gates.clone()));
        let got = combine_onto(&xc, &rc, Some(&gc), &p).unwrap();
        assert_close(&got.value().to_vec(), &want, 1e-5, "combine_onto");
        check_grad_many(|v| combine_onto(&v[2], &v[0], Some(&v[1]), &p), &[rows.clone(), gates, x.clone()]);
        check_grad_many(|v| combine_onto(&v[1], &v[0], None, &p), &[rows, x]);
    }
    let p = plan(4, 2, 1, 37);
    let rows = Var::constant(Tensor::zeros(&[p.num_kept(), 3]));
    let err = combine_onto(&Var::constant(Tensor::zeros(&[4, 2])), &rows, None, &p).unwrap_err();
    assert_eq!(err.to_string(), "combine_onto: the residual must be [4, 3], got [4, 2]");
}

/// The combine writes every output row, including the rows of tokens with no slots, even when
/// its buffer comes from the pool holding old values.
#[test]
fn combine_zeroes_tokens_without_slots_in_a_reused_buffer() {
    let (t, e, d) = (300, 4, 128);
    // Only even tokens are routed (to expert token % 4).
    let tokens: Vec<u32> = (0..t as u32).step_by(2).collect();
    let experts: Vec<u32> = tokens.iter().map(|&tok| tok % e as u32).collect();
    let p = Arc::new(DispatchPlan::new(&tokens, &experts, t, e, Capacity::Dropless).unwrap());
    let rows = Var::constant(Tensor::randn(&[p.num_kept(), d], &mut Rng::seed(3)));
    let mut old = elide_tensor::pool::take(t * d);
    old.fill(f32::NAN);
    elide_tensor::pool::give(old);
    let out = combine(&rows, None, &p).unwrap().value().to_vec();
    for tok in (1..t).step_by(2) {
        assert!(out[tok * d..(tok + 1) * d].iter().all(|&v| v == 0.0), "token {tok}");
    }
    let r = rows.value().to_vec();
    for (s, &tok) in p.tokens().iter().enumerate() {
        assert_eq!(out[tok as usize * d..][..d], r[s * d..(s + 1) * d], "token {tok}");
    }
}

/// The weight gradient of a destination with no rows is exactly zero, also when its buffer comes
/// from the pool holding old values (only idle blocks are zeroed; active ones are overwritten).
#[test]
fn idle_destinations_get_zero_weight_gradients_in_a_reused_buffer() {
    let (t, g, fi, fo) = (50, 3, 64, 256);
    let tokens: Vec<u32> = (0..t as u32).collect();
    let dest: Vec<u32> = (0..t as u32).map(|i| if i % 2 == 0 { 0 } else { 2 }).collect();
    let p = Arc::new(DispatchPlan::new(&tokens, &dest, t, g, Capacity::Dropless).unwrap());
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let x = Var::leaf(Tensor::randn(&[t, fi], &mut Rng::seed(5)));
        let w = Var::leaf(Tensor::randn(&layout.shape(g, fi, fo), &mut Rng::seed(6)));
        let y = grouped_linear(&x, RowSource::Gathered, &p, GroupedWeight::new(&w, layout), Activation::Gelu).unwrap();
        let mut old = elide_tensor::pool::take(g * fi * fo);
        old.fill(f32::NAN);
        elide_tensor::pool::give(old);
        let dw = y.sum_all().backward().unwrap().of(&w).unwrap().to_vec();
        assert!(dw[fi * fo..2 * fi * fo].iter().all(|&v| v == 0.0), "{layout:?}: the idle block");
        assert!(dw.iter().all(|v| v.is_finite()), "{layout:?}: every block written");
        assert!(dw[..fi * fo].iter().any(|&v| v != 0.0), "{layout:?}");
    }
}
