//! The machine's peak f32 FMA throughput, from a loop that never touches memory.
//!
//! Every GEMM figure is reported as a fraction of this number, measured on the same machine
//! in the same run, so "0.8 of peak" means the same thing on any CPU.

use crate::simd::{with_simd, Simd, SimdTask};
use crate::Isa;

/// Independent accumulator chains: enough to cover FMA latency × FMA ports on current cores.
const CHAINS: usize = 12;

/// Runs `iterations` rounds of `CHAINS` independent vector FMAs on `isa` and returns the number
/// of floating-point operations performed (2 per lane per FMA). Time it to get FLOP/s.
pub fn fma_loop(isa: Isa, iterations: usize) -> f64 {
    struct Loop(usize);
    impl SimdTask for Loop {
        type Output = f64;
        #[inline(always)]
        fn run<S: Simd>(self, s: S) -> f64 {
            let mut acc = [s.splat(0.0); CHAINS];
            for (i, a) in acc.iter_mut().enumerate() {
                *a = s.splat(i as f32 * 1e-3);
            }
            let x = s.splat(std::hint::black_box(0.999_999));
            let y = s.splat(std::hint::black_box(1e-7));
            for _ in 0..self.0 {
                for a in acc.iter_mut() {
                    *a = s.mul_add(*a, x, y);
                }
            }
            let mut sum = s.splat(0.0);
            for a in acc {
                sum = s.add(sum, a);
            }
            std::hint::black_box(s.reduce_sum(sum));
            (self.0 * CHAINS * S::LANES * 2) as f64
        }
    }
    with_simd(isa, Loop(iterations))
}
