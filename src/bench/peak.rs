//! `elide bench peak`: the two limits every kernel figure is a fraction of — the FMA peak of
//! one core (and of two cores together), and the streaming read bandwidth of memory.

use super::report::Report;
use super::timing::{median, Clock, Plan};
use elide::kernels::{peak, CacheSizes, Isa};

/// A pool of exactly `n` threads (the benchmarks pin 1 and 2 threads explicitly).
pub fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("a rayon pool")
}

/// Peak GFLOP/s of `threads` cores together on the best path: the best of several
/// register-only FMA loops, one per thread, run at the same time.
pub fn peak_gflops(plan: Plan, threads: usize) -> f64 {
    let isa = Isa::active();
    let iterations = 20_000_000;
    let pool = pool(threads);
    let run = |iterations: usize| -> f64 {
        pool.install(|| {
            use rayon::prelude::*;
            (0..threads).into_par_iter().map(|_| peak::fma_loop(isa, iterations)).sum::<f64>()
        })
    };
    run(iterations / 10);
    let samples: Vec<f64> = (0..plan.rounds.max(5))
        .map(|_| {
            let mut flops = 0.0;
            let t = plan.time(&mut || flops = run(iterations));
            flops / t / 1e9
        })
        .collect();
    // The best sample: peak means what the cores can do when nothing else is running.
    samples.into_iter().fold(0.0, f64::max)
}

/// Iterations of one timed FMA-loop call (about 10 ms on a 4 GHz AVX-512 core).
const PEAK_CALL_ITERATIONS: usize = 5_000_000;

/// One call of the FMA loop on every thread of `pool` at once, for interleaving with the
/// GEMMs whose peak fraction it measures; returns the FLOPs it performed.
pub fn peak_call(pool: &rayon::ThreadPool) -> f64 {
    use rayon::prelude::*;
    let isa = Isa::active();
    let threads = pool.current_num_threads();
    pool.install(|| (0..threads).into_par_iter().map(|_| peak::fma_loop(isa, PEAK_CALL_ITERATIONS)).sum())
}

/// Bytes of the stream buffer: four times the last-level cache, at least 64 MiB.
pub fn stream_bytes() -> usize {
    (4 * CacheSizes::get().l3).max(64 << 20)
}

/// Streaming read bandwidth in GB/s on `threads` threads (each reads its half, at once): the
/// median over rounds of one pass over a buffer four times the size of L3.
pub fn stream_read_gbps(plan: Plan, threads: usize) -> f64 {
    let isa = Isa::active();
    let data = super::ones(stream_bytes() / 4);
    let pool = pool(threads);
    let chunk = data.len().div_ceil(threads);
    let mut pass = || {
        let sum: f32 = pool.install(|| {
            use rayon::prelude::*;
            data.par_chunks(chunk).map(|c| peak::stream_read(isa, c)).sum()
        });
        std::hint::black_box(sum);
    };
    pass();
    let times: Vec<f64> = (0..plan.rounds.max(5)).map(|_| plan.time(&mut pass)).collect();
    (data.len() * 4) as f64 / median(times) / 1e9
}

/// `elide bench peak`.
pub fn bench_peak(plan: Plan) -> Report {
    let caches = CacheSizes::get();
    let mut r = Report::new(
        &format!(
            "machine limits, {} path (L1d {} KiB, L2 {} KiB, L3 {} MiB)",
            Isa::active(),
            caches.l1d >> 10,
            caches.l2 >> 10,
            caches.l3 >> 20
        ),
        &["measurement", "threads", "value"],
    );
    let p1 = peak_gflops(plan, 1);
    r.row(vec!["FMA peak".into(), "1".into(), format!("{p1:.1} GFLOP/s")]);
    let p2 = peak_gflops(plan, 2);
    let per = match plan.clock {
        Clock::Wall => format!("{:.2} of 2 × 1-core", p2 / (2.0 * p1)),
        Clock::Process => "per CPU-second".into(),
    };
    r.row(vec!["FMA peak".into(), "2".into(), format!("{p2:.1} GFLOP/s ({per})")]);
    let s1 = stream_read_gbps(plan, 1);
    r.row(vec![format!("stream read {} MiB", stream_bytes() >> 20), "1".into(), format!("{s1:.1} GB/s")]);
    let s2 = stream_read_gbps(plan, 2);
    r.row(vec![format!("stream read {} MiB", stream_bytes() >> 20), "2".into(), format!("{s2:.1} GB/s")]);
    r.figure("peak_1t_gflops", p1);
    r.figure("peak_2t_gflops", p2);
    r.figure("stream_read_1t_gbps", s1);
    r.figure("stream_read_gbps", s2.max(s1));
    r.note("stream_read_gbps: the better of 1 and 2 threads (what a memory-bound kernel can reach).".into());
    r
}
