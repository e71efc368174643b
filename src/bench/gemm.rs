//! `elide bench gemm`: our GEMM against `matrixmultiply` and against the machine's FMA peak, on
//! 1 and 2 threads, on square shapes and on the three GEMM shapes of one mixture-of-experts
//! expert, gathered against contiguous, and the batch-1 GEMV against memory bandwidth.

use super::fill;
use super::peak::{peak_call, pool};
use super::report::Report;
use super::timing::{interleaved, Plan};
use elide::kernels::gemm::{Blocking, Gemm, MatMut, MatRef};
use elide::kernels::{peak, CacheSizes, Isa, Par};

/// `C = A·B` with row-major A (m×k), B (k×n) through our GEMM.
fn ours(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    Gemm { par: Par::Rayon, ..Gemm::default() }
        .run(
            MatMut::row_major(c, m, n).expect("shape"),
            MatRef::row_major(a, m, k).expect("shape"),
            MatRef::row_major(b, k, n).expect("shape"),
        )
        .expect("gemm");
}

/// The same through `matrixmultiply` (single-threaded: its default features).
fn theirs(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the asserts above show each buffer covers its row-major matrix.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    }
}

/// The three GEMMs of one expert of MoE config A (T = 1024 tokens, d = 512, hidden 1024):
/// forward X·W1, weight gradient Xᵀ·dH (A transposed), input gradient dH·W1ᵀ (B transposed).
pub struct ExpertShapes {
    x: Vec<f32>,
    w1: Vec<f32>,
    dh: Vec<f32>,
    out: [Vec<f32>; 3],
}

impl ExpertShapes {
    pub const T: usize = 1024;
    pub const D: usize = 512;
    pub const H: usize = 1024;
    /// Names and (m, k, n) of the three products.
    pub const SHAPES: [(&'static str, usize, usize, usize); 3] = [
        ("X·W1", Self::T, Self::D, Self::H),
        ("Xᵀ·dH", Self::D, Self::T, Self::H),
        ("dH·W1ᵀ", Self::T, Self::H, Self::D),
    ];

    pub fn new() -> ExpertShapes {
        let (t, d, h) = (Self::T, Self::D, Self::H);
        ExpertShapes {
            x: fill(t * d, 21),
            w1: fill(d * h, 22),
            dh: fill(t * h, 23),
            out: [vec![0.0; t * h], vec![0.0; d * h], vec![0.0; t * d]],
        }
    }

    /// Runs product `which` (0, 1 or 2) with `gemm`'s settings.
    pub fn run(&mut self, which: usize, gemm: Gemm<'_>) {
        let (t, d, h) = (Self::T, Self::D, Self::H);
        let x = MatRef::row_major(&self.x, t, d).expect("shape");
        let w1 = MatRef::row_major(&self.w1, d, h).expect("shape");
        let dh = MatRef::row_major(&self.dh, t, h).expect("shape");
        let (a, b, (m, n)) = match which {
            0 => (x, w1, (t, h)),
            1 => (x.t(), dh, (d, h)),
            _ => (dh, w1.t(), (t, d)),
        };
        let c = MatMut::row_major(&mut self.out[which], m, n).expect("shape");
        gemm.run(c, a, b).expect("gemm");
    }

    /// FLOPs of product `which`.
    pub fn flops(which: usize) -> f64 {
        let (_, m, k, n) = Self::SHAPES[which];
        2.0 * (m * k * n) as f64
    }
}

/// `elide bench gemm`.
pub fn bench_gemm(plan: Plan) -> Report {
    let bl = Blocking::of(Isa::active());
    let mut r = Report::new(
        &format!("sgemm, {} path, tile {bl}: ours vs matrixmultiply (interleaved, medians)", Isa::active()),
        &["shape m×k×n", "threads", "ours GFLOP/s", "mm GFLOP/s", "ours/mm", "vs copy", "of peak"],
    );
    let one = pool(1);
    let two = pool(2);
    // FLOPs of one FMA-loop call on one and on two cores (deterministic counts).
    let (peak_flops_1, peak_flops_2) = (peak_call(&one), peak_call(&two));
    let shapes = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 512, 2048)];
    for (m, k, n) in shapes {
        let a = fill(m * k, 1);
        let b = fill(k * n, 2);
        let mut c1 = vec![0.0; m * n];
        let mut c2 = vec![0.0; m * n];
        let mut c3 = vec![0.0; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let res = interleaved(
            plan,
            &mut [
                &mut || one.install(|| ours(&a, &b, &mut c1, m, k, n)),
                &mut || theirs(&a, &b, &mut c2, m, k, n),
                &mut || two.install(|| ours(&a, &b, &mut c3, m, k, n)),
                &mut || {
                    peak_call(&one);
                },
                &mut || {
                    peak_call(&two);
                },
            ],
        );
        let g = |s: usize| flops / res.medians[s] / 1e9;
        let over_mm = res.ratios_to_first[1];
        let two_over_one = 1.0 / res.ratios_to_first[2];
        // Peak fractions against the FMA loop timed in the same rounds on as many cores.
        let frac_1t = flops / peak_flops_1 * res.ratio(3, 0);
        let frac_2t = flops / peak_flops_2 * res.ratio(4, 2);
        let shape = format!("{m}×{k}×{n}");
        r.row(vec![shape.clone(), "1".into(), f1(g(0)), f1(g(1)), f2(over_mm), "".into(), of_peak(frac_1t, 1)]);
        r.row(vec![shape, "2".into(), f1(g(2)), "".into(), "".into(), "".into(), of_peak(frac_2t, 2)]);
        if m == k && k == n && (n == 1024 || n == 2048) {
            r.figure(&format!("sgemm_vs_mm_{n}_1t"), over_mm);
        }
        if (m, k, n) == (2048, 2048, 2048) {
            r.figure("sgemm_2048_1t_gflops", g(0));
            r.figure("sgemm_2048_2t_gflops", g(2));
            r.figure("sgemm_peak_fraction_2048_1t", frac_1t);
            r.figure("sgemm_peak_fraction_2048_2t", frac_2t);
            r.figure("sgemm_2t_over_1t_2048", two_over_one);
            r.figure("peak_1t_gflops", peak_flops_1 / res.medians[3] / 1e9);
            r.figure("peak_2t_gflops", peak_flops_2 / res.medians[4] / 1e9);
        }
    }
    expert_shapes(plan, &mut r, &one, &two, (peak_flops_1, peak_flops_2));
    gathered(plan, &mut r);
    gemv(plan, &mut r, &one);
    r.note(
        "of peak: against a register-only FMA loop on as many cores, timed in the same rounds (so a busy \
         machine slows both sides alike)."
            .into(),
    );
    r
}

/// `0.85 of 1-core peak`, `0.80 of 2-core peak`.
fn of_peak(fraction: f64, threads: usize) -> String {
    format!("{fraction:.2} of {threads}-core")
}

/// The expert's three products on 1 and 2 threads, interleaved with the FMA loops.
fn expert_shapes(plan: Plan, r: &mut Report, one: &rayon::ThreadPool, two: &rayon::ThreadPool, peak: (f64, f64)) {
    let mut ex = ExpertShapes::new();
    let mut fractions = (Vec::new(), Vec::new());
    for (which, &(name, m, k, n)) in ExpertShapes::SHAPES.iter().enumerate() {
        let ex = std::sync::Mutex::new(&mut ex);
        let res = interleaved(
            plan,
            &mut [
                &mut || one.install(|| ex.lock().expect("not poisoned").run(which, Gemm::default())),
                &mut || two.install(|| ex.lock().expect("not poisoned").run(which, Gemm::default())),
                &mut || {
                    peak_call(one);
                },
                &mut || {
                    peak_call(two);
                },
            ],
        );
        let flops = ExpertShapes::flops(which);
        let g = |s: usize| flops / res.medians[s] / 1e9;
        let (f1t, f2t) = (flops / peak.0 * res.ratio(2, 0), flops / peak.1 * res.ratio(3, 1));
        let shape = format!("expert {name} {m}×{k}×{n}");
        r.row(vec![shape.clone(), "1".into(), f1(g(0)), "".into(), "".into(), "".into(), of_peak(f1t, 1)]);
        r.row(vec![shape, "2".into(), f1(g(1)), "".into(), "".into(), "".into(), of_peak(f2t, 2)]);
        fractions.0.push(f1t);
        fractions.1.push(f2t);
    }
    r.figure("sgemm_peak_fraction_expert_1t", fractions.0.iter().sum::<f64>() / 3.0);
    r.figure("sgemm_peak_fraction_expert_2t", fractions.1.iter().sum::<f64>() / 3.0);
}

/// 2048 of 4096 rows gathered through a random index list, × 512×2048, against the same GEMM on
/// a contiguous copy of those rows (made once, outside the timing).
fn gathered(plan: Plan, r: &mut Report) {
    let (src_rows, m, k, n) = (4096, 2048, 512, 2048);
    let x = fill(src_rows * k, 3);
    let w = fill(k * n, 4);
    // A random subset of rows, in random order (a Fisher–Yates shuffle of a seeded sequence).
    let mut rows: Vec<u32> = (0..src_rows as u32).collect();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..rows.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        rows.swap(i, (state % (i as u64 + 1)) as usize);
    }
    rows.truncate(m);
    let copy: Vec<f32> = rows.iter().flat_map(|&i| x[i as usize * k..(i as usize + 1) * k].iter().copied()).collect();
    let mut c1 = vec![0.0; m * n];
    let mut c2 = vec![0.0; m * n];
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                let a = MatRef::row_major(&x, src_rows, k).and_then(|a| a.gather_rows(&rows)).expect("gather");
                Gemm::default()
                    .run(MatMut::row_major(&mut c1, m, n).expect("c"), a, MatRef::row_major(&w, k, n).expect("w"))
                    .expect("gemm")
            },
            &mut || ours(&copy, &w, &mut c2, m, k, n),
        ],
    );
    let flops = 2.0 * (m * k * n) as f64;
    let ratio = res.ratios_to_first[1];
    r.row(vec![
        format!("gathered {m}/{src_rows}×{k}×{n}"),
        rayon::current_num_threads().to_string(),
        f1(flops / res.medians[0] / 1e9),
        "".into(),
        "".into(),
        f2(ratio),
        "".into(),
    ]);
    r.figure("gathered_vs_contiguous", ratio);
}

/// The decode case: one row times 1024×4096 weights. Once on one weight matrix (16 MiB, which
/// may sit in L3), and once cycling through enough such matrices to fill four times L3, as
/// consecutive layers of a decode step do: that one is held against the stream bandwidth.
fn gemv(plan: Plan, r: &mut Report, one: &rayon::ThreadPool) {
    let (k, n) = (1024, 4096);
    let x = fill(k, 5);
    let w = fill(k * n, 6);
    let mut c1 = vec![0.0; n];
    let mut c2 = vec![0.0; n];
    let mut c3 = vec![0.0; n];
    let res = interleaved(
        plan,
        &mut [&mut || ours(&x, &w, &mut c1, 1, k, n), &mut || theirs(&x, &w, &mut c2, 1, k, n), &mut || {
            one.install(|| ours(&x, &w, &mut c3, 1, k, n))
        }],
    );
    let bytes = (k * n * 4) as f64;
    let gbps = bytes / res.medians[0] / 1e9;
    let threads = rayon::current_num_threads().to_string();
    r.row(vec![
        format!("gemv 1×{k}×{n}"),
        threads.clone(),
        format!("{gbps:.1} GB/s"),
        format!("{:.1} GB/s", bytes / res.medians[1] / 1e9),
        f2(res.ratios_to_first[1]),
        "".into(),
        "".into(),
    ]);
    r.row(vec![
        format!("gemv 1×{k}×{n}"),
        "1".into(),
        format!("{:.1} GB/s", bytes / res.medians[2] / 1e9),
        "".into(),
        f2(res.ratios_to_first[1] / res.ratios_to_first[2]),
        "".into(),
        "".into(),
    ]);
    r.figure("gemv_1x1024x4096_gbps", gbps);
    r.figure("gemv_vs_mm_1x1024x4096", res.ratios_to_first[1]);
    r.figure("gemv_vs_mm_1x1024x4096_1t", res.ratios_to_first[1] / res.ratios_to_first[2]);

    // From memory: a ring of weight matrices four times the size of L3, one GEMV per matrix,
    // interleaved with a plain read of a buffer as large on the same threads.
    let layers = (4 * CacheSizes::get().l3).div_ceil(k * n * 4).max(4);
    let ring: Vec<Vec<f32>> = (0..layers).map(|l| fill(k * n, 100 + l as u64)).collect();
    let stream = super::ones(layers * k * n);
    let chunk = stream.len().div_ceil(rayon::current_num_threads());
    let res = interleaved(
        plan,
        &mut [
            &mut || {
                for w in &ring {
                    ours(&x, w, &mut c1, 1, k, n);
                }
            },
            &mut || {
                use rayon::prelude::*;
                let sum: f32 = stream.par_chunks(chunk).map(|c| peak::stream_read(Isa::active(), c)).sum();
                std::hint::black_box(sum);
            },
        ],
    );
    let gbps = bytes * layers as f64 / res.medians[0] / 1e9;
    let stream_gbps = bytes * layers as f64 / res.medians[1] / 1e9;
    // time(stream) ÷ time(GEMV) for the same bytes = the GEMV's share of the stream's rate.
    let fraction = res.ratios_to_first[1];
    r.row(vec![
        format!("gemv 1×{k}×{n} ×{layers} from DRAM"),
        threads,
        format!("{gbps:.1} GB/s"),
        "".into(),
        "".into(),
        "".into(),
        format!("{fraction:.2} of stream"),
    ]);
    r.note(format!("stream read bandwidth (same threads, interleaved with the GEMV): {stream_gbps:.1} GB/s"));
    r.figure("gemv_dram_gbps", gbps);
    r.figure("stream_read_gbps", stream_gbps);
    r.figure("gemv_bandwidth_fraction", fraction);
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}
