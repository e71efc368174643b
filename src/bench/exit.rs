//! `elide bench exit`: early exit from a 12-block residual MLP stack (exits after blocks
//! 3/6/9/12) against the same stack run to full depth, with an exit distribution of mean depth 6
//! (40 / 30 / 20 / 10 % of rows leaving at the four exits). The distribution is set by per-exit
//! max-probability thresholds taken as quantiles of the heads' confidences on the benchmark
//! batch itself (the confidence rule is the real one; only the thresholds are chosen to give
//! the distribution). Measured interleaved in one run.

use super::fill;
use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{no_grad, ParamStore, Var};
use elide::cond::{Confidence, EarlyExit, ExitRule, MlpBlock, Residual};
use elide::kernels::gemm::Activation;
use elide::tensor::{Rng, Tensor};

const ROWS: usize = 4096;
const D: usize = 512;
const HIDDEN: usize = 2048;
const BLOCKS: usize = 12;
const CLASSES: usize = 10;
const EXITS: [usize; 4] = [3, 6, 9, 12];
/// Fraction of all rows leaving at each exit: mean depth 0.4·3 + 0.3·6 + 0.2·9 + 0.1·12 = 6.
const EXIT_FRACTIONS: [f64; 4] = [0.4, 0.3, 0.2, 0.1];

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1e3)
}

/// Per-early-exit max-probability thresholds that send `EXIT_FRACTIONS` of the rows out at each
/// exit: at exit `e`, the confidence of the `k`-th most confident row still active.
fn quantile_thresholds(conf: &[Vec<f32>]) -> Vec<f32> {
    let rows = conf[0].len();
    let mut active: Vec<usize> = (0..rows).collect();
    let mut thresholds = Vec::new();
    for (e, c) in conf.iter().enumerate() {
        let k = ((EXIT_FRACTIONS[e] * rows as f64).round() as usize).clamp(1, active.len());
        let mut sorted: Vec<f32> = active.iter().map(|&r| c[r]).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let t = sorted[k - 1];
        thresholds.push(t);
        active.retain(|&r| c[r] < t);
    }
    thresholds
}

/// `elide bench exit`.
pub fn bench_exit(plan: Plan) -> Report {
    let mut r = Report::new(
        "early exit, 12-block residual MLP stack, exits after 3/6/9/12 (batch compaction)",
        &["measurement", "ms", "ratio to full depth", "target"],
    );
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(5);
    let blocks: Vec<Residual<MlpBlock>> = (0..BLOCKS)
        .map(|l| {
            let b = MlpBlock::new(&mut store.scope(&format!("block{l}")), D, HIDDEN, Activation::Gelu, &mut rng)
                .expect("valid block");
            // Keep the residual stream's scale steady over 12 blocks (as a trained stack would).
            let w2 = b.params()[2];
            w2.set(w2.value().mul_scalar(0.3)).expect("same shape");
            Residual(b)
        })
        .collect();
    let stack = EarlyExit::new(&mut store.scope("exit"), blocks, &EXITS, CLASSES, &mut rng).expect("valid stack");
    let x = Var::constant(Tensor::from_vec(fill(ROWS * D, 1), &[ROWS, D]).expect("shape"));

    let logits = no_grad(|| stack.exit_logits(&x)).expect("forward");
    let conf: Vec<Vec<f32>> = logits[..EXITS.len() - 1]
        .iter()
        .map(|l| l.value().to_vec().chunks(CLASSES).map(|row| Confidence::MaxProb.of(row)).collect())
        .collect();
    let rule = ExitRule { confidence: Confidence::MaxProb, thresholds: quantile_thresholds(&conf) };
    let run = stack.infer(&x, &rule).expect("inference");
    let depth = run.mean_depth();

    let mut full = || {
        no_grad(|| std::hint::black_box(stack.exit_logits(&x).expect("forward")));
    };
    let mut early = || {
        std::hint::black_box(stack.infer(&x, &rule).expect("inference"));
    };
    let res = interleaved(plan, &mut [&mut full, &mut early]);
    let ratio = res.ratios_to_first[1];
    r.row(vec![format!("full depth, {ROWS} rows d={D} h={HIDDEN}"), ms(res.medians[0]), "1".into(), "".into()]);
    r.row(vec![
        format!("early exit, mean depth {depth:.2}, rows per block {:?}", run.rows_per_block),
        ms(res.medians[1]),
        format!("{ratio:.3}"),
        "≤ 0.55".into(),
    ]);
    r.figure("exit_ratio_depth6", ratio);
    r.figure("exit_mean_depth", depth);
    r.figure("exit_flops_ratio", run.flops / (BLOCKS as f64 * 4.0 * (ROWS * D * HIDDEN) as f64));
    r.note(format!("thresholds (max prob) per early exit: {:?}", rule.thresholds));
    r.note("ideal ratio at mean depth 6 of 12: 0.5 (exit heads and compaction are the rest)".into());
    r
}
