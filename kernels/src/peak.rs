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

/// Reads every float of `data` once (a sum over eight independent vector chains) and returns
/// the sum, so the reads cannot be optimised away. Time it over a buffer well past the last
/// cache level to get the machine's streaming read bandwidth: the limit of every
/// memory-bound kernel, such as a batch-1 GEMV over weights that do not fit in cache.
pub fn stream_read(isa: Isa, data: &[f32]) -> f32 {
    struct Read<'a>(&'a [f32]);
    impl SimdTask for Read<'_> {
        type Output = f32;
        #[inline(always)]
        fn run<S: Simd>(self, s: S) -> f32 {
            const CHAINS: usize = 8;
            let step = CHAINS * S::LANES;
            let mut acc = [s.splat(0.0); CHAINS];
            let body = self.0.len() / step * step;
            for block in self.0[..body].chunks_exact(step) {
                for (c, a) in acc.iter_mut().enumerate() {
                    // SAFETY: the block holds CHAINS·LANES floats; chain c reads LANES of them.
                    *a = s.add(*a, unsafe { s.load(block.as_ptr().add(c * S::LANES)) });
                }
            }
            let mut sum = s.splat(0.0);
            for a in acc {
                sum = s.add(sum, a);
            }
            s.reduce_sum(sum) + self.0[body..].iter().sum::<f32>()
        }
    }
    with_simd(isa, Read(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_read_sums_every_element_on_every_path() {
        // Small integers sum exactly in any order; 1000 is not a multiple of any block size.
        let data: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let want: f32 = (0..1000).map(|i| (i % 7) as f32).sum();
        for isa in Isa::supported() {
            assert_eq!(stream_read(isa, &data), want, "{isa}");
            assert_eq!(stream_read(isa, &data[..5]), 10.0, "{isa}");
        }
    }
}
