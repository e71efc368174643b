//! `elide bench gemm` and `elide bench peak`: our GEMM against `matrixmultiply`, against the
//! machine's FMA peak, on 1 and 2 threads, gathered against contiguous, and the batch-1 GEMV.

use super::fill;
use super::report::Report;
use super::timing::{interleaved, time_once, Plan};
use elide::kernels::gemm::{Gemm, MatMut, MatRef};
use elide::kernels::{peak, Isa, Par};

/// A pool of exactly `n` threads (the benchmarks pin 1 and 2 threads explicitly).
fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("a rayon pool")
}

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

/// Peak GFLOP/s of one core on the best path: the median of several register-only FMA loops.
pub fn peak_gflops(plan: Plan) -> f64 {
    let isa = Isa::active();
    let iterations = 20_000_000;
    peak::fma_loop(isa, iterations / 10);
    let samples: Vec<f64> = (0..plan.rounds.max(5))
        .map(|_| {
            let mut flops = 0.0;
            let t = time_once(&mut || flops = peak::fma_loop(isa, iterations));
            flops / t / 1e9
        })
        .collect();
    // The best sample: peak means what the core can do when nothing else is running.
    samples.into_iter().fold(0.0, f64::max)
}

/// `elide bench peak`.
pub fn bench_peak(plan: Plan) -> Report {
    let mut r = Report::new(&format!("peak f32 FMA throughput, one core, {}", Isa::active()), &["GFLOP/s"]);
    let p = peak_gflops(plan);
    r.row(vec![format!("{p:.1}")]);
    r.figure("peak_1t_gflops", p);
    r
}

/// `elide bench gemm`.
pub fn bench_gemm(plan: Plan) -> Report {
    let mut r = Report::new(
        &format!("sgemm, {} path: ours vs matrixmultiply (interleaved, medians)", Isa::active()),
        &["shape m×k×n", "threads", "ours GFLOP/s", "mm GFLOP/s", "ours/mm", "of peak"],
    );
    let peak = peak_gflops(plan);
    r.figure("peak_1t_gflops", peak);
    let one = pool(1);
    let two = pool(2);
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
            ],
        );
        let g = |s: usize| flops / res.medians[s] / 1e9;
        let over_mm = res.ratios_to_first[1];
        let two_over_one = 1.0 / res.ratios_to_first[2];
        let shape = format!("{m}×{k}×{n}");
        r.row(vec![shape.clone(), "1".into(), f1(g(0)), f1(g(1)), f2(over_mm), f2(g(0) / peak)]);
        r.row(vec![shape, "2".into(), f1(g(2)), "".into(), "".into(), f2(g(2) / (2.0 * peak))]);
        if m == k && k == n && (n == 1024 || n == 2048) {
            r.figure(&format!("sgemm_vs_mm_{n}_1t"), over_mm);
        }
        if (m, k, n) == (2048, 2048, 2048) {
            r.figure("sgemm_2048_1t_gflops", g(0));
            r.figure("sgemm_2048_2t_gflops", g(2));
            r.figure("sgemm_peak_fraction_2048_1t", g(0) / peak);
            r.figure("sgemm_2t_over_1t_2048", two_over_one);
        }
    }
    gathered(plan, &mut r);
    gemv(plan, &mut r, &one);
    r.note(format!("peak (one core, register-only FMA loop): {peak:.1} GFLOP/s"));
    r
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
        format!("{} vs copy", f2(ratio)),
        "".into(),
    ]);
    r.figure("gathered_vs_contiguous", ratio);
}

/// The decode case: one row times a 1024×4096 weight matrix.
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
    r.row(vec![
        format!("gemv 1×{k}×{n}"),
        rayon::current_num_threads().to_string(),
        format!("{gbps:.1} GB/s"),
        format!("{:.1} GB/s", bytes / res.medians[1] / 1e9),
        f2(res.ratios_to_first[1]),
        "".into(),
    ]);
    r.row(vec![
        format!("gemv 1×{k}×{n}"),
        "1".into(),
        format!("{:.1} GB/s", bytes / res.medians[2] / 1e9),
        "".into(),
        f2(res.ratios_to_first[1] / res.ratios_to_first[2]),
        "".into(),
    ]);
    r.figure("gemv_1x1024x4096_gbps", gbps);
    r.figure("gemv_vs_mm_1x1024x4096", res.ratios_to_first[1]);
    r.figure("gemv_vs_mm_1x1024x4096_1t", res.ratios_to_first[1] / res.ratios_to_first[2]);
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn f2(x: f64) -> String {
    format!("{x:.2}")
}
