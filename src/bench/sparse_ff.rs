//! `elide bench sparse-ff`: the unit-sparse feed-forward layer at inference (controller
//! included) against the dense ReLU feed-forward layer of the same weights on elide's own
//! GEMV/GEMM (bias and ReLU fused into the first product's store, bias into the second's), at
//! batch 1, 8 and 64. Every ratio is measured interleaved in one run.

use super::fill;
use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::autodiff::{no_grad, ParamStore, Var};
use elide::cond::{SparseFeedForward, SparseFfConfig, SparseFfMode};
use elide::kernels::gemm::{Activation, Epilogue, Gemm, MatMut, MatRef};
use elide::tensor::{Rng, Tensor};

/// The dense layer `ReLU(x·W1ᵀ + b1)·W2 + b2` on the sparse layer's weights, in two layouts:
/// the sparse layer's unit-major `W1 [d_ff, d]` (read as a transpose: the GEMV's column form)
/// and a copy stored `[d, d_ff]` (the GEMV's row form). The faster one is the baseline.
struct DenseTwin {
    d: usize,
    f: usize,
    w1_units: Vec<f32>,
    w1_in_out: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

impl DenseTwin {
    fn of(layer: &SparseFeedForward) -> DenseTwin {
        let [_, _, w1, b1, w2, b2] = layer.params().map(|p| p.value().to_vec());
        let (d, f) = (layer.config().d_model, layer.config().d_ff);
        let mut w1_in_out = vec![0.0f32; d * f];
        for u in 0..f {
            for p in 0..d {
                w1_in_out[p * f + u] = w1[u * d + p];
            }
        }
        DenseTwin { d, f, w1_units: w1, w1_in_out, b1, w2, b2 }
    }

    fn forward(&self, x: &[f32], t: usize, unit_major: bool) -> Vec<f32> {
        let (d, f) = (self.d, self.f);
        let w1 = if unit_major { mat(&self.w1_units, f, d).t() } else { mat(&self.w1_in_out, d, f) };
        let mut h = vec![0.0f32; t * f];
        let epi = Epilogue { bias: Some(&self.b1), activation: Activation::Relu, row_scale: None };
        Gemm { epilogue: epi, ..Gemm::default() }
            .run(MatMut::row_major(&mut h, t, f).expect("bench shapes"), mat(x, t, d), w1)
            .expect("bench shapes");
        let mut y = vec![0.0f32; t * d];
        let epi = Epilogue { bias: Some(&self.b2), ..Epilogue::default() };
        Gemm { epilogue: epi, ..Gemm::default() }
            .run(MatMut::row_major(&mut y, t, d).expect("bench shapes"), mat(&h, t, f), mat(&self.w2, f, d))
            .expect("bench shapes");
        y
    }

    /// Bytes of the dense layer's weights (every one is read per call).
    fn weight_bytes(&self) -> f64 {
        4.0 * (2 * self.f * self.d + self.f + self.d) as f64
    }
}

fn mat(v: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
    MatRef::row_major(v, rows, cols).expect("bench shapes")
}

fn ms(s: f64) -> String {
    format!("{:.3}", s * 1e3)
}

/// `elide bench sparse-ff`.
pub fn bench_sparse_ff(plan: Plan) -> Report {
    let mut r = Report::new(
        "unit-sparse feed-forward (d_model 1024, d_ff 4096, N 32, rank 64, controller included) vs dense ReLU FF \
         on the same weights (interleaved medians)",
        &[
            "batch",
            "sparse ms",
            "dense unit-major ms",
            "dense in-out ms",
            "speedup vs faster dense",
            "bytes dense / sparse",
            "FLOPs dense / sparse",
        ],
    );
    let (d, f) = (1024, 4096);
    let mut store = ParamStore::new();
    let layer = SparseFeedForward::new(&mut store.scope("ff"), SparseFfConfig::new(d, f), &mut Rng::seed(7))
        .expect("valid config");
    let dense = DenseTwin::of(&layer);
    for t in [1, 8, 64] {
        let x = fill(t * d, t as u64);
        let xv = Var::constant(Tensor::from_vec(x.clone(), &[t, d]).expect("shape"));
        let out = no_grad(|| layer.forward(&xv, SparseFfMode::Eval)).expect("forward");
        let mut sparse_side = || {
            no_grad(|| std::hint::black_box(layer.forward(&xv, SparseFfMode::Eval).expect("forward")));
        };
        let mut dense_units = || {
            std::hint::black_box(dense.forward(&x, t, true));
        };
        let mut dense_in_out = || {
            std::hint::black_box(dense.forward(&x, t, false));
        };
        let res = interleaved(plan, &mut [&mut sparse_side, &mut dense_units, &mut dense_in_out]);
        let speedup = res.ratios_to_first[1].min(res.ratios_to_first[2]);
        let bytes = dense.weight_bytes() / out.weight_bytes;
        let dense_flops = 4.0 * (t * d * f) as f64;
        r.row(vec![
            format!("{t}"),
            ms(res.medians[0]),
            ms(res.medians[1]),
            ms(res.medians[2]),
            format!("{speedup:.2}"),
            format!("{bytes:.2}"),
            format!("{:.2}", dense_flops / out.flops),
        ]);
        r.figure(&format!("sparse_ff_speedup_b{t}"), speedup);
        if t == 1 {
            r.figure("sparse_ff_bytes_ratio", bytes);
        }
    }
    r.note(
        "speedup: median over rounds of (faster dense layout time / sparse time), each round timing all three \
         side by side; 2 threads = the default pool on this machine."
            .into(),
    );
    r
}
