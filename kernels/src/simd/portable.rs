//! The portable path: `wide::f32x8` (SSE2 pairs on x86-64, NEON on aarch64).

use super::Simd;
use wide::{f32x8, i32x8};

/// Token for the portable path; always available.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Portable;

impl Simd for Portable {
    type V = f32x8;
    const LANES: usize = 8;
    const REGISTERS_PER_VECTOR: usize = 2;
    // 16 vector registers on SSE2, each f32x8 taking two: 2 rows × 2 vectors or 4 × 1 of
    // accumulators. 2 × 2 measured 2–9 % ahead (docs/kernels.md).
    super::gemm_tiles!((2, 2), (4, 1));

    #[inline(always)]
    fn splat(self, x: f32) -> f32x8 {
        f32x8::splat(x)
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32x8 {
        // SAFETY: the caller guarantees 8 readable floats; read_unaligned needs no alignment.
        f32x8::from(unsafe { std::ptr::read_unaligned(p as *const [f32; 8]) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32x8) {
        // SAFETY: the caller guarantees 8 writable floats.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; 8], v.to_array()) }
    }
    #[inline(always)]
    fn add(self, a: f32x8, b: f32x8) -> f32x8 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32x8, b: f32x8) -> f32x8 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32x8, b: f32x8) -> f32x8 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32x8, b: f32x8) -> f32x8 {
        a / b
    }
    #[inline(always)]
    fn max(self, a: f32x8, b: f32x8) -> f32x8 {
        a.fast_max(b)
    }
    #[inline(always)]
    fn min(self, a: f32x8, b: f32x8) -> f32x8 {
        a.fast_min(b)
    }
    #[inline(always)]
    fn mul_add(self, a: f32x8, b: f32x8, c: f32x8) -> f32x8 {
        a.mul_add(b, c)
    }
    #[inline(always)]
    fn sqrt(self, a: f32x8) -> f32x8 {
        a.sqrt()
    }
    #[inline(always)]
    fn round(self, a: f32x8) -> f32x8 {
        a.round()
    }
    #[inline(always)]
    fn pow2i(self, n: f32x8) -> f32x8 {
        let bits: i32x8 = (n.round_int() + i32x8::splat(127)) << 23;
        wide::bytemuck::cast(bits)
    }
    #[inline(always)]
    fn prefetch(self, _p: *const f32) {}
    #[inline(always)]
    fn reduce_sum(self, v: f32x8) -> f32 {
        let a = v.to_array();
        ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    }
    #[inline(always)]
    fn reduce_max(self, v: f32x8) -> f32 {
        v.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
    }
    #[inline(always)]
    fn abs(self, a: f32x8) -> f32x8 {
        a.abs()
    }
    #[inline(always)]
    fn select_lt(self, a: f32x8, b: f32x8, if_lt: f32x8, otherwise: f32x8) -> f32x8 {
        a.simd_lt(b).select(if_lt, otherwise)
    }
    #[inline(always)]
    fn split_exponent(self, x: f32x8) -> (f32x8, f32x8) {
        let bits: i32x8 = wide::bytemuck::cast(x);
        let e: i32x8 = (bits >> 23_u32) - i32x8::splat(127);
        let m = (bits & i32x8::splat(0x007f_ffff)) | i32x8::splat(0x3f80_0000);
        (wide::bytemuck::cast(m), e.round_float())
    }
}
