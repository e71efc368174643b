//! `elide bench moe`: the mixture-of-experts layer against its dense twins (equal active
//! FLOPs, equal parameters), forward and forward+backward, across expert counts, and at decode
//! batch sizes. Every ratio is measured interleaved in one run.

use super::dense_ffn::DenseFfn;
use super::fill;
use super::report::Report;
use super::timing::{interleaved, median, Plan};
use elide::autodiff::{no_grad, ParamStore, Var};
use elide::cond::{ExpertKind, MoeConfig, MoeLayer, RouterKind};
use elide::kernels::buffer::set_huge_pages;
use elide::kernels::gemm::Activation;
use elide::kernels::{peak, softmax_rows, softmax_topk_rows, topk_rows, CacheSizes, Isa};
use elide::tensor::{pool, Rng, Tensor};

/// A GELU-expert, top-2, dropless layer of the given sizes.
fn layer(d: usize, hidden: usize, experts: usize) -> MoeLayer {
    let mut store = ParamStore::new();
    let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
    let config = MoeConfig::new(d, hidden, experts, top2, ExpertKind::Mlp(Activation::Gelu));
    MoeLayer::new(&mut store.scope("moe"), config, &mut Rng::seed(7)).expect("valid config")
}

/// Inputs for `t` tokens of width `d`, and an output gradient.
fn inputs(t: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    (fill(t * d, 1), fill(t * d, 2))
}

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1e3)
}

/// What [`measure`] found: ratios to the dense twins and the MoE's median times.
struct Measured {
    fwd_vs_active: f64,
    fwdbwd_vs_active: f64,
    params_over_moe: Option<f64>,
    fwd_s: f64,
    fwdbwd_s: f64,
    /// (fwd+bwd) ÷ fwd of the MoE and of its equal-active dense twin, interleaved.
    moe_bwd_ratio: f64,
    dense_bwd_ratio: f64,
}

/// One measured configuration: `t` tokens of width `d` through `e` experts of hidden size
/// `hidden`, against the equal-active dense FFN (and the equal-parameter one if asked).
#[derive(Clone, Copy)]
struct Case<'a> {
    name: &'a str,
    t: usize,
    d: usize,
    hidden: usize,
    e: usize,
    with_params: bool,
    backward: bool,
}

fn measure(plan: Plan, r: &mut Report, case: Case<'_>) -> Measured {
    let Case { name, t, d, hidden, e, with_params, backward } = case;
    let moe = layer(d, hidden, e);
    let active = DenseFfn::new(d, 2 * hidden, fill);
    let params = with_params.then(|| DenseFfn::new(d, e * hidden, fill));
    let (x, dy) = inputs(t, d);
    let xt = Tensor::from_vec(x.clone(), &[t, d]).expect("shape");
    let dyt = Tensor::from_vec(dy.clone(), &[t, d]).expect("shape");
    let xc = Var::constant(xt.clone());
    // Every timed forward's phase times, so the split printed is the median of the timed runs.
    let phases = std::cell::RefCell::new(Vec::new());
    let mut moe_fwd = || {
        let out = no_grad(|| moe.forward(&xc).expect("forward"));
        let p = &out.phases;
        phases.borrow_mut().push([p.routing, p.plan, p.expert_gemms, p.combine].map(|d| d.as_secs_f64()));
        std::hint::black_box(out);
    };
    let mut dense_fwd = || {
        pool::give(std::hint::black_box(active.forward(&x, t)));
    };
    let mut params_fwd = || {
        if let Some(p) = &params {
            pool::give(std::hint::black_box(p.forward(&x, t)));
        }
    };
    let res = if with_params {
        interleaved(plan, &mut [&mut moe_fwd, &mut dense_fwd, &mut params_fwd])
    } else {
        interleaved(plan, &mut [&mut moe_fwd, &mut dense_fwd])
    };
    let out = no_grad(|| moe.forward(&xc).expect("forward"));
    let phases = phases.into_inner();
    let phase = |i: usize| ms(median(phases.iter().map(|p| p[i]).collect()));
    let moe_gflops = out.flops / res.medians[0] / 1e9;
    let dense_gflops = active.forward_flops(t) / res.medians[1] / 1e9;
    let fwd_vs_active = 1.0 / res.ratios_to_first[1];
    let params_over_moe = with_params.then(|| res.ratios_to_first[2]);
    r.row(vec![
        format!("{name} fwd"),
        format!("T={t} E={e} h={hidden}"),
        ms(res.medians[0]),
        ms(res.medians[1]),
        format!("{fwd_vs_active:.3}"),
        format!("{moe_gflops:.1} / {dense_gflops:.1}"),
        format!("route {} plan {} GEMMs {} combine {}", phase(0), phase(1), phase(2), phase(3)),
    ]);
    if let Some(p) = params_over_moe {
        r.row(vec![
            format!("{name} dense equal-params fwd"),
            format!("h={}", e * hidden),
            ms(res.medians[2]),
            "".into(),
            format!("{p:.2}× the MoE"),
            "".into(),
            "".into(),
        ]);
    }
    let (mut fwdbwd_vs_active, mut fwdbwd_s) = (f64::NAN, f64::NAN);
    let (mut moe_bwd_ratio, mut dense_bwd_ratio) = (f64::NAN, f64::NAN);
    if backward {
        let xl = Var::leaf(xt.clone());
        let mut moe_train = || {
            let out = moe.forward(&xl).expect("forward");
            std::hint::black_box(out.output.backward_with(&dyt).expect("backward"));
        };
        let mut dense_train = || {
            pool::give(std::hint::black_box(active.forward_backward(&x, t, &dy)));
        };
        // The forwards again, in the same rounds: (fwd+bwd) ÷ fwd side by side. These forwards
        // pack the weights per call, as a training step's forward does (weights change every
        // step), so the ratio compares the backward with the forward it follows.
        moe.experts().set_weight_packing(false);
        let mut moe_fwd = || {
            no_grad(|| std::hint::black_box(moe.forward(&xc).expect("forward")));
        };
        let mut dense_fwd = || {
            pool::give(std::hint::black_box(active.forward_packing(&x, t)));
        };
        let res = interleaved(plan, &mut [&mut moe_train, &mut dense_train, &mut moe_fwd, &mut dense_fwd]);
        moe.experts().set_weight_packing(true);
        fwdbwd_vs_active = 1.0 / res.ratios_to_first[1];
        fwdbwd_s = res.medians[0];
        moe_bwd_ratio = res.ratio(0, 2);
        dense_bwd_ratio = res.ratio(1, 3);
        r.row(vec![
            format!("{name} (fwd+bwd) ÷ fwd"),
            format!("T={t} E={e} h={hidden}"),
            format!("{moe_bwd_ratio:.3}"),
            format!("{dense_bwd_ratio:.3}"),
            "".into(),
            "".into(),
            "FLOP ratio 3.0".into(),
        ]);
        let moe_gflops = 3.0 * out.flops / res.medians[0] / 1e9;
        let dense_gflops = 3.0 * active.forward_flops(t) / res.medians[1] / 1e9;
        r.row(vec![
            format!("{name} fwd+bwd"),
            format!("T={t} E={e} h={hidden}"),
            ms(res.medians[0]),
            ms(res.medians[1]),
            format!("{fwdbwd_vs_active:.3}"),
            format!("{moe_gflops:.1} / {dense_gflops:.1}"),
            "".into(),
        ]);
    }
    Measured {
        fwd_vs_active,
        fwdbwd_vs_active,
        params_over_moe,
        fwd_s: res.medians[0],
        fwdbwd_s,
        moe_bwd_ratio,
        dense_bwd_ratio,
    }
}

/// Config A's forward with elide's buffer pool on and off, interleaved (glibc's default
/// allocator settings either way: the `elide` binary does not tune them).
fn pool_speedup(plan: Plan, r: &mut Report, t: usize, d: usize) {
    let moe = layer(d, 1024, 8);
    let xc = Var::constant(Tensor::from_vec(fill(t * d, 1), &[t, d]).expect("shape"));
    let fwd = |enabled: bool| {
        pool::set_enabled(enabled);
        no_grad(|| std::hint::black_box(moe.forward(&xc).expect("forward")));
    };
    let res = interleaved(plan, &mut [&mut || fwd(true), &mut || fwd(false)]);
    pool::set_enabled(true);
    let speedup = res.ratios_to_first[1];
    r.row(vec![
        "A fwd, buffer pool on vs off".into(),
        format!("T={t} E=8 h=1024"),
        ms(res.medians[0]),
        ms(res.medians[1]),
        format!("{speedup:.3}× faster with the pool"),
        "".into(),
        "".into(),
    ]);
    r.figure("pool_speedup_moe_a_fwd", speedup);
}

/// Config B's routing after the logits (4096 tokens, 64 experts, top-2): the softmax, top-k
/// and finiteness check as one pass (`softmax_topk_rows`) against the three separate passes
/// it replaced. Returns separate ÷ fused.
fn router_fusion(plan: Plan, r: &mut Report) -> f64 {
    let (t, e, k) = (4096, 64, 2);
    let logits: Vec<f32> = fill(t * e, 3).iter().map(|v| 4.0 * v).collect();
    let isa = Isa::active();
    let (mut probs, mut values, mut indices) = (vec![0.0; t * e], vec![0.0; t * k], vec![0u32; t * k]);
    let (mut probs2, mut values2, mut indices2) = (probs.clone(), values.clone(), indices.clone());
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                assert!(logits.iter().all(|v| v.is_finite()), "bench logits are finite");
                softmax_rows(isa, &logits, t, e, &mut probs).expect("shapes");
                topk_rows(isa, &probs, t, e, k, &mut values, &mut indices).expect("shapes");
            },
            &mut || {
                softmax_topk_rows(isa, &logits, t, e, k, &mut probs2, &mut values2, &mut indices2).expect("shapes");
            },
        ],
    );
    let speedup = res.ratios_to_first[1].recip();
    r.row(vec![
        "B route: softmax, top-2".into(),
        format!("T={t} E={e}"),
        ms(res.medians[1]),
        "".into(),
        format!("separate passes {} ms: {speedup:.2}× fused", ms(res.medians[0])),
        "".into(),
        "".into(),
    ]);
    speedup
}

/// What [`decode_bandwidth`] measures.
struct Decode {
    /// Bytes of weights touched ÷ time ÷ stream bandwidth.
    fraction: f64,
    /// Milliseconds per layer call.
    ms: f64,
    /// Time of a ring whose buffers have 4 KiB pages ÷ time of the ring with huge pages.
    huge_pages_speedup: f64,
}

/// Decode (config A's sizes, `t` tokens) against the memory bandwidth: a ring of layers (the
/// same weights, in separate memory) through which the weights touched total at least four
/// times L3, so every call reads them from memory; each call counts the bytes of the weights it
/// touches (the router, and W1, b1, W2, b2 of every expert given a token), and the ring is
/// interleaved with a plain read of as many bytes on the same threads, and with a second ring
/// whose weights were allocated with the huge-page advice off.
fn decode_bandwidth(plan: Plan, r: &mut Report, t: usize, d: usize) -> Decode {
    let (hidden, e) = (1024, 8);
    let x = Var::constant(Tensor::from_vec(fill(t * d, 1), &[t, d]).expect("shape"));
    let first = layer(d, hidden, e);
    let out = no_grad(|| first.forward(&x).expect("forward"));
    let used = out.plan.tokens_per_expert().iter().filter(|&&n| n > 0).count();
    let per_call = 4 * (d * e + used * (2 * d * hidden + hidden + d));
    let count = (4 * CacheSizes::get().l3).div_ceil(per_call).max(4);
    let ring: Vec<MoeLayer> = std::iter::once(first).chain((1..count).map(|_| layer(d, hidden, e))).collect();
    // The same ring again with 4 KiB pages, its weights packed (on the first forward) while
    // the advice is off; the pool is emptied first, so that no parameter of it reuses a
    // pooled buffer that got the advice.
    pool::release();
    set_huge_pages(false);
    let small_pages: Vec<MoeLayer> = (0..count).map(|_| layer(d, hidden, e)).collect();
    for l in &small_pages {
        no_grad(|| l.forward(&x).expect("forward"));
    }
    set_huge_pages(true);
    let touched = (per_call * count) as f64;
    let stream = super::ones(per_call * count / 4);
    let chunk = stream.len().div_ceil(rayon::current_num_threads());
    let run = |ring: &[MoeLayer]| {
        for l in ring {
            no_grad(|| std::hint::black_box(l.forward(&x).expect("forward")));
        }
    };
    let res = interleaved(
        plan,
        &mut [
            &mut || run(&ring),
            &mut || {
                use rayon::prelude::*;
                let sum: f32 = stream.par_chunks(chunk).map(|c| peak::stream_read(Isa::active(), c)).sum();
                std::hint::black_box(sum);
            },
            &mut || run(&small_pages),
        ],
    );
    // time(stream) ÷ time(MoE) over the same bytes: the MoE's share of the stream's rate.
    let fraction = res.ratios_to_first[1];
    let huge_pages_speedup = res.ratio(2, 0);
    let (gbps, stream_gbps) = (touched / res.medians[0] / 1e9, touched / res.medians[1] / 1e9);
    let per_call_ms = res.medians[0] / count as f64 * 1e3;
    r.row(vec![
        format!("D fwd, {count} layers from DRAM"),
        format!("T={t} E={e} h={hidden}"),
        ms(res.medians[0] / count as f64),
        "".into(),
        format!("{fraction:.3} of stream"),
        format!("{gbps:.1} / {stream_gbps:.1} GB/s"),
        format!("{:.1} MiB of weights per call", touched / count as f64 / (1 << 20) as f64),
    ]);
    r.row(vec![
        "D fwd, huge pages vs 4 KiB".into(),
        format!("T={t} E={e} h={hidden}"),
        ms(res.medians[0] / count as f64),
        ms(res.medians[2] / count as f64),
        format!("{huge_pages_speedup:.3}× faster on huge pages"),
        "".into(),
        "".into(),
    ]);
    Decode { fraction, ms: per_call_ms, huge_pages_speedup }
}

/// `elide bench moe`.
pub fn bench_moe(plan: Plan) -> Report {
    let mut r = Report::new(
        "mixture-of-experts vs dense twins (top-2, GELU experts, dropless; interleaved medians)",
        &[
            "measurement",
            "shape",
            "MoE ms",
            "dense ms",
            "MoE/dense",
            "GFLOP/s active MoE / dense",
            "MoE time split (ms)",
        ],
    );
    let (t, d) = (4096, 512);
    // Config A: E=8, expert hidden 1024; dense twins: hidden 2048 (equal active), 8192 (equal params).
    let a = measure(plan, &mut r, Case { name: "A", t, d, hidden: 1024, e: 8, with_params: true, backward: true });
    r.figure("moe_a_fwd_vs_dense_active", a.fwd_vs_active);
    r.figure("moe_a_fwdbwd_vs_dense_active", a.fwdbwd_vs_active);
    r.figure("moe_a_dense_params_over_moe", a.params_over_moe.unwrap_or(f64::NAN));
    r.figure("moe_a_fwd_ms", a.fwd_s * 1e3);
    r.figure("moe_a_fwdbwd_over_fwd", a.moe_bwd_ratio);
    r.figure("dense_a_fwdbwd_over_fwd", a.dense_bwd_ratio);
    pool_speedup(plan, &mut r, t, d);
    r.figure("moe_a_fwdbwd_ms", a.fwdbwd_s * 1e3);
    // Config B, fine-grained: E=64, expert hidden 256; dense twin hidden 512.
    let b = measure(plan, &mut r, Case { name: "B", t, d, hidden: 256, e: 64, with_params: false, backward: true });
    r.figure("moe_b_fwd_vs_dense_active", b.fwd_vs_active);
    r.figure("moe_b_fwdbwd_vs_dense_active", b.fwdbwd_vs_active);
    r.figure("moe_b_fwd_ms", b.fwd_s * 1e3);
    r.figure("moe_b_fwdbwd_ms", b.fwdbwd_s * 1e3);
    let router_speedup = router_fusion(plan, &mut r);
    r.figure("router_softmax_topk_fused_speedup", router_speedup);
    // Config C: skipped experts cost nothing — forward time across E at fixed T and top-2.
    let layers: Vec<(usize, MoeLayer)> = [8, 16, 32, 64].into_iter().map(|e| (e, layer(d, 1024, e))).collect();
    let xc = Var::constant(Tensor::from_vec(fill(t * d, 1), &[t, d]).expect("shape"));
    let mut sides: Vec<Box<dyn FnMut()>> = layers
        .iter()
        .map(|(_, l)| {
            let xc = xc.clone();
            Box::new(move || {
                no_grad(|| std::hint::black_box(l.forward(&xc).expect("forward")));
            }) as Box<dyn FnMut()>
        })
        .collect();
    let mut refs: Vec<&mut dyn FnMut()> = sides.iter_mut().map(|b| b.as_mut() as &mut dyn FnMut()).collect();
    let res = interleaved(plan, &mut refs);
    for (i, (e, _)) in layers.iter().enumerate() {
        r.row(vec![
            format!("C fwd E={e}"),
            format!("T={t} h=1024"),
            ms(res.medians[i]),
            "".into(),
            format!("{:.3} of E=8", res.ratios_to_first[i]),
            "".into(),
            "".into(),
        ]);
    }
    r.figure("moe_c_e64_over_e8", res.ratios_to_first[3]);
    drop(refs);
    drop(sides);
    drop(layers);
    // Config D, decode: config A's sizes at T=1 and T=8, against memory bandwidth.
    for td in [1, 8] {
        let decode = decode_bandwidth(plan, &mut r, td, d);
        r.figure(&format!("moe_d_t{td}_bandwidth_fraction"), decode.fraction);
        r.figure(&format!("huge_pages_speedup_moe_d_t{td}"), decode.huge_pages_speedup);
        if td == 1 {
            r.figure("moe_d_t1_ms", decode.ms);
        }
    }
    r.note(
        "MoE/dense: time ratio against the dense FFN with the same active FLOPs (hidden = 2 × expert hidden).".into(),
    );
    r
}
