//! `elide bench skip`: row skip (mixture-of-depths) around an MLP block against the same block
//! run on every row, forward at capacities 12.5 / 25 / 50 % and forward+backward at 12.5 %.
//! Both sides are the same `Residual(MlpBlock)` weights on the same grouped GEMM; the skip side
//! adds the router, the per-sequence top-C, the gather and the gated combine onto the residual.
//! Every ratio is measured interleaved in one run.

use super::dense_ffn::DenseFfn;
use super::fill;
use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{no_grad, ParamStore, Var};
use elide::cond::{Block, MixtureOfDepths, MixtureOfDepthsConfig, MlpBlock, Residual, RowSelection, ScoreFn};
use elide::kernels::gemm::Activation;
use elide::tensor::{Rng, Tensor};

const T: usize = 4096;
const D: usize = 512;
const HIDDEN: usize = 2048;
/// Four sequences of 1024 rows in the `[batch·seq, d]` batch.
const SEQ_LEN: usize = 1024;

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1e3)
}

/// A row-skip layer at `capacity` around (a borrow of) `block`.
fn layer<'b>(store: &mut ParamStore, block: &'b MlpBlock, capacity: f32) -> MixtureOfDepths<&'b MlpBlock> {
    let config = MixtureOfDepthsConfig {
        d_model: D,
        selection: RowSelection::TopC { capacity, seq_len: SEQ_LEN },
        gate: ScoreFn::Raw,
        predictor_hidden: None,
        router_aux_coef: 0.0,
    };
    let name = format!("skip{}", (capacity * 1000.0) as u32);
    MixtureOfDepths::new(&mut store.scope(&name), config, block, &mut Rng::seed(3)).expect("valid config")
}

/// `elide bench skip`.
pub fn bench_skip(plan: Plan) -> Report {
    let mut r = Report::new(
        "row skip (mixture-of-depths, top-C per sequence of 1024) around an MLP block vs the block on every row",
        &["measurement", "ms", "ratio to dense", "target", "GFLOP/s run"],
    );
    let mut store = ParamStore::new();
    let block =
        MlpBlock::new(&mut store.scope("block"), D, HIDDEN, Activation::Gelu, &mut Rng::seed(1)).expect("valid block");
    let dense = Residual(&block);
    let capacities = [0.125f32, 0.25, 0.5];
    let layers: Vec<_> = capacities.iter().map(|&c| layer(&mut store, &block, c)).collect();
    let x = Tensor::from_vec(fill(T * D, 1), &[T, D]).expect("shape");
    let dy = Tensor::from_vec(fill(T * D, 2), &[T, D]).expect("shape");
    let xc = Var::constant(x.clone());

    // Forward: the dense block, then each capacity, interleaved.
    let mut dense_fwd = || {
        no_grad(|| std::hint::black_box(dense.forward(&xc).expect("forward")));
    };
    let mut skip_fwd: Vec<Box<dyn FnMut() + '_>> = layers
        .iter()
        .map(|l| {
            let xc = xc.clone();
            Box::new(move || {
                no_grad(|| std::hint::black_box(l.forward(&xc).expect("forward")));
            }) as Box<dyn FnMut()>
        })
        .collect();
    let mut sides: Vec<&mut dyn FnMut()> = vec![&mut dense_fwd];
    sides.extend(skip_fwd.iter_mut().map(|f| f.as_mut() as &mut dyn FnMut()));
    let res = interleaved(plan, &mut sides);
    drop(sides);
    let dense_flops = dense.forward_flops(T);
    r.row(vec![
        format!("dense block fwd T={T} d={D} h={HIDDEN}"),
        ms(res.medians[0]),
        "1".into(),
        "".into(),
        format!("{:.1}", dense_flops / res.medians[0] / 1e9),
    ]);
    for (i, (&c, l)) in capacities.iter().zip(&layers).enumerate() {
        let ratio = res.ratios_to_first[i + 1];
        let out = no_grad(|| l.forward(&xc).expect("forward"));
        r.row(vec![
            format!("row skip fwd c={c} ({} rows)", out.chosen.len()),
            ms(res.medians[i + 1]),
            format!("{ratio:.3}"),
            format!("≤ {:.3}", c + 0.05),
            format!("{:.1}", out.flops / res.medians[i + 1] / 1e9),
        ]);
        r.figure(&format!("rowskip_c{}_ratio", (c * 100.0) as u32), ratio);
    }

    // Forward + backward at 12.5 %: every gradient (input, block weights, router).
    let xl = Var::leaf(x.clone());
    let mut dense_train = || {
        let y = dense.forward(&xl).expect("forward");
        std::hint::black_box(y.backward_with(&dy).expect("backward"));
    };
    let mut skip_train = || {
        let out = layers[0].forward(&xl).expect("forward");
        std::hint::black_box(out.output.backward_with(&dy).expect("backward"));
    };
    let res = interleaved(plan, &mut [&mut dense_train, &mut skip_train]);
    let ratio = res.ratios_to_first[1];
    r.row(vec!["dense block fwd+bwd".into(), ms(res.medians[0]), "1".into(), "".into(), "".into()]);
    r.row(vec![
        "row skip fwd+bwd c=0.125".into(),
        ms(res.medians[1]),
        format!("{ratio:.3}"),
        "≤ 0.205".into(),
        "".into(),
    ]);
    r.figure("rowskip_c12_fwdbwd_ratio", ratio);

    // The block on the grouped GEMM against the same FFN written directly on the GEMM.
    let ffn = DenseFfn::new(D, HIDDEN, fill);
    let xs = fill(T * D, 1);
    let mut direct = || {
        std::hint::black_box(ffn.forward(&xs, T));
    };
    let mut blockf = || {
        no_grad(|| std::hint::black_box(block.forward(&xc).expect("forward")));
    };
    let res = interleaved(plan, &mut [&mut direct, &mut blockf]);
    r.row(vec![
        "MlpBlock fwd vs the FFN written on the GEMM".into(),
        ms(res.medians[1]),
        format!("{:.3}", res.ratios_to_first[1]),
        "".into(),
        "".into(),
    ]);
    r.figure("rowskip_block_vs_direct_gemm", res.ratios_to_first[1]);
    r.note(format!(
        "threads: {}; the ratio is time(row skip) / time(dense block), median over interleaved rounds",
        rayon::current_num_threads()
    ));
    r
}
