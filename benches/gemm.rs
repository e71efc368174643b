//! Criterion benchmarks of elide's sgemm against `matrixmultiply`, on 1 and 2 threads.
//!
//! `cargo bench --bench gemm`. For the figures the issues quote (ratios measured interleaved in
//! one run), use `elide bench gemm` instead; this is for criterion's history and plots.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use elide::kernels::gemm::{Gemm, MatMut, MatRef};
use std::hint::black_box;
use std::time::Duration;

fn fill(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0 - 0.5)
        .collect()
}

fn sgemm(c: &mut Criterion) {
    let shapes = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048), (4096, 512, 2048)];
    let mut group = c.benchmark_group("sgemm");
    group.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (m, k, n) in shapes {
        let a = fill(m * k, 1);
        let b = fill(k * n, 2);
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let id = format!("{m}x{k}x{n}");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            group.bench_function(BenchmarkId::new(format!("elide_{threads}t"), &id), |bench| {
                bench.iter(|| {
                    pool.install(|| {
                        Gemm::default()
                            .run(
                                MatMut::row_major(&mut out, m, n).unwrap(),
                                MatRef::row_major(black_box(&a), m, k).unwrap(),
                                MatRef::row_major(black_box(&b), k, n).unwrap(),
                            )
                            .unwrap()
                    })
                })
            });
        }
        group.bench_function(BenchmarkId::new("matrixmultiply_1t", &id), |bench| {
            bench.iter(|| {
                // SAFETY: a, b and out are row-major m×k, k×n and m×n buffers.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        black_box(a.as_ptr()),
                        k as isize,
                        1,
                        black_box(b.as_ptr()),
                        n as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, sgemm);
criterion_main!(benches);
