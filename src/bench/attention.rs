//! `elide bench attention`: the fused causal attention kernel against the unfused composition
//! (scores by matmul, causal mask, softmax, matmul by V) through elide's own ops, forward and
//! backward.

use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{no_grad, Var};
use elide::kernels::attention::{AttentionShape, BLOCK_K, BLOCK_Q};
use elide::models::causal_attention;
use elide::tensor::{Rng, Tensor};

/// Causal attention as separate ops: `softmax(q·kᵀ/√d + mask)·v` with a `[T, T]` additive mask,
/// materialising the `[batch, heads, T, T]` scores and probabilities.
fn unfused(q: &Var, k: &Var, v: &Var, mask: &Var) -> Var {
    let d = q.shape()[3];
    let scores = q.matmul(&k.transpose(2, 3).expect("4-d")).expect("shapes");
    let scores = scores.mul_scalar(1.0 / (d as f32).sqrt()).add(mask).expect("mask broadcasts");
    scores.softmax().expect("softmax").matmul(v).expect("shapes")
}

/// `elide bench attention`.
pub fn bench_attention(plan: Plan) -> Report {
    let mut r =
        Report::new("causal attention, fused vs unfused (interleaved, medians)", &["measurement", "ms", "ratio"]);
    let (batch, heads, t, d) = (1, 8, 1024, 64);
    let shape = AttentionShape::self_attention(batch, heads, t, d);
    let mut rng = Rng::seed(0);
    let dims = [batch, heads, t, d];
    let [q, k, v] = [0, 1, 2].map(|_| Var::leaf(Tensor::randn(&dims, &mut rng)));
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Var::constant(Tensor::from_vec(mask, &[t, t]).expect("t·t"));

    let res = interleaved(
        plan,
        &mut [
            &mut || {
                no_grad(|| std::hint::black_box(unfused(&q, &k, &v, &mask)));
            },
            &mut || {
                no_grad(|| std::hint::black_box(causal_attention(&q, &k, &v).expect("shapes")));
            },
        ],
    );
    let speedup = 1.0 / res.ratios_to_first[1];
    let what = format!("B {batch}, heads {heads}, T {t}, d_head {d}");
    r.row(vec![format!("forward, unfused matmul→mask→softmax→matmul ({what})"), ms(res.medians[0]), "1.00".into()]);
    r.row(vec!["forward, fused (online softmax)".into(), ms(res.medians[1]), format!("{:.3}", res.ratios_to_first[1])]);
    r.figure("attention_fused_speedup", speedup);
    r.figure("attention_fused_gflops", shape.causal_flops() / res.medians[1] / 1e9);

    let seed = Tensor::randn(&dims, &mut rng);
    let (fused_out, unfused_out) = (causal_attention(&q, &k, &v).expect("shapes"), unfused(&q, &k, &v, &mask));
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                std::hint::black_box(unfused_out.backward_with(&seed).expect("backward"));
            },
            &mut || {
                std::hint::black_box(fused_out.backward_with(&seed).expect("backward"));
            },
        ],
    );
    let bwd_speedup = 1.0 / res.ratios_to_first[1];
    r.row(vec!["backward (dq, dk, dv), unfused".into(), ms(res.medians[0]), "1.00".into()]);
    r.row(vec![
        "backward, fused (recomputes P blockwise)".into(),
        ms(res.medians[1]),
        format!("{:.3}", res.ratios_to_first[1]),
    ]);
    r.figure("attention_fused_bwd_speedup", bwd_speedup);

    let mib = |floats: usize| floats as f64 * 4.0 / (1 << 20) as f64;
    let scores = batch * heads * t * t;
    r.note(format!(
        "memory: the unfused forward materialises [B, H, T, T] scores and probabilities ({:.0} MiB each, O(T²)); \
         the fused one keeps a log-sum-exp per row ({:.3} MiB) and {}x{} tiles per thread, O(T·d) like its inputs \
         ({:.0} MiB each)",
        mib(scores),
        mib(shape.lse_elems()),
        BLOCK_Q,
        BLOCK_K,
        mib(shape.q_elems()),
    ));
    r
}

fn ms(seconds: f64) -> String {
    format!("{:.3}", seconds * 1e3)
}
