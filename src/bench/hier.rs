//! `elide bench hier`: a hierarchical classifier running each sample through its predicted
//! branch only, against the same layer running every sample through every branch.

use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{ParamStore, Var};
use elide::cond::{HierarchicalClassifier, HierarchicalConfig, TrainRoute};
use elide::tensor::{Rng, Tensor};

/// `elide bench hier`.
pub fn bench_hier(plan: Plan) -> Report {
    let mut r = Report::new(
        "hierarchical classifier: predicted branch only vs every branch (interleaved medians)",
        &["measurement", "ms", "ratio", "executed GFLOP"],
    );
    let config = HierarchicalConfig {
        d_in: 256,
        d_trunk: 256,
        num_coarse: 4,
        num_fine: 16,
        branch_hidden: 2048,
        train_route: TrainRoute::TrueClass,
        second_branch_below: None,
    };
    let batch = 4096;
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(5);
    let layer = HierarchicalClassifier::new(&mut store.scope("hier"), config, &mut rng).expect("valid config");
    let x = Var::constant(Tensor::randn(&[batch, config.d_in], &mut rng));
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                std::hint::black_box(layer.predict_all_branches(&x).expect("predict"));
            },
            &mut || {
                std::hint::black_box(layer.predict(&x).expect("predict"));
            },
        ],
    );
    let all = layer.predict_all_branches(&x).expect("predict");
    let one = layer.predict(&x).expect("predict");
    let ratio = res.ratios_to_first[1];
    let shape =
        format!("B={batch} d={} C={} M={} h={}", config.d_in, config.num_coarse, config.num_fine, config.branch_hidden);
    r.row(vec![format!("every branch, {shape}"), ms(res.medians[0]), "1.000".into(), gflop(all.flops)]);
    r.row(vec!["predicted branch only".into(), ms(res.medians[1]), format!("{ratio:.3}"), gflop(one.flops)]);
    r.figure("hier_vs_all_branches", ratio);
    r.figure("hier_flops_fraction", one.flops / all.flops);
    r
}

fn ms(seconds: f64) -> String {
    format!("{:.2}", seconds * 1e3)
}

fn gflop(flops: f64) -> String {
    format!("{:.2}", flops / 1e9)
}
