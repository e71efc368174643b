use elide_kernels::gemm::{Gemm, MatMut, MatRef};
use elide_kernels::Par;
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().unwrap()).collect();
    let (m, k, n) = (args[0], args[1], args[2]);
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let mut c2 = vec![0.0f32; m * n];
    let mut best = [f64::MAX; 2];
    for _ in 0..15 {
        let t = Instant::now();
        Gemm { par: Par::Seq, ..Gemm::default() }
            .run(
                MatMut::row_major(&mut c, m, n).unwrap(),
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
            )
            .unwrap();
        best[0] = best[0].min(t.elapsed().as_secs_f64());
        let t = Instant::now();
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
                c2.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        best[1] = best[1].min(t.elapsed().as_secs_f64());
    }
    let f = 2.0 * (m * k * n) as f64 / 1e9;
    println!("ours {:.1} GF/s  mm {:.1} GF/s  ratio {:.2}", f / best[0], f / best[1], best[1] / best[0]);
}
