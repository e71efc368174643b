//! The x86-64 paths: AVX2+FMA (8 lanes) and AVX-512F (16 lanes).

use super::{Simd, SimdTask};
use std::arch::x86_64::*;

/// All-ones in the first `n` of 8 lanes (`n ≤ 8`), for AVX2's masked loads and stores.
///
/// # Safety
/// The CPU must run AVX2 (the [`Avx2`] token proves it).
#[inline(always)]
unsafe fn first_lanes_avx2(n: usize) -> __m256i {
    // SAFETY: AVX2 is present (caller's contract).
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// The first `n` of 16 lanes (`n ≤ 16`), as an AVX-512 mask.
#[inline(always)]
fn first_lanes_avx512(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// Token for AVX2+FMA. Only [`super::with_simd`] creates it, after checking the CPU.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

/// Token for AVX-512F. Only [`super::with_simd`] creates it, after checking the CPU.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

/// [`Simd::transpose8`] in eight AVX registers (both x86 paths have AVX): unpack pairs of rows,
/// shuffle pairs of pairs, then swap 128-bit halves.
///
/// # Safety
/// As [`Simd::transpose8`], on a CPU with AVX (both tokens prove it).
#[inline(always)]
unsafe fn transpose8_avx(src: [*const f32; 8], dst: *mut f32, dst_stride: usize) {
    // SAFETY: the loads read 8 floats at each `src[c]` and the stores write 8 at each of
    // `dst + r·dst_stride`, as the caller guarantees; AVX is present (see above).
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|c| _mm256_loadu_ps(src[c]));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        // Rows 0–3 (then 4–7) of the block's elements 0, 1, 2, 3 | 4, 5, 6, 7.
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, v) in out.into_iter().enumerate() {
            _mm256_storeu_ps(dst.add(i * dst_stride), v);
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn run_avx2<T: SimdTask>(task: T) -> T::Output {
    task.run(Avx2(()))
}

/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn run_avx512<T: SimdTask>(task: T) -> T::Output {
    task.run(Avx512(()))
}

// SAFETY (for every `unsafe` block in the two impls below): a token of the type exists only
// after the CPU was checked for the instruction set, so the intrinsics can run; pointer
// arguments are the caller's responsibility as documented on `Simd::load`/`Simd::store`.
impl Simd for Avx2 {
    type V = __m256;
    const LANES: usize = 8;
    const REGISTERS_PER_VECTOR: usize = 1;
    // 16 ymm registers: MR·NV accumulators + NV B vectors + 1 broadcast A (6×2 is BLIS's
    // Haswell tile).
    super::gemm_tiles!((6, 2), (4, 3));

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_first(self, p: *const f32, n: usize, pad: f32) -> __m256 {
        // SAFETY: masked-off lanes are not read (they cannot fault); the caller guarantees the
        // first n floats; the token proves AVX2.
        unsafe {
            let mask = first_lanes_avx2(n);
            _mm256_blendv_ps(_mm256_set1_ps(pad), _mm256_maskload_ps(p, mask), _mm256_castsi256_ps(mask))
        }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize, v: __m256) {
        // SAFETY: masked-off lanes are not written; the caller guarantees the first n floats;
        // the token proves AVX2.
        unsafe { _mm256_maskstore_ps(p, first_lanes_avx2(n), v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m256) -> __m256 {
        unsafe { _mm256_sqrt_ps(a) }
    }
    #[inline(always)]
    fn round(self, a: __m256) -> __m256 {
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn pow2i(self, n: __m256) -> __m256 {
        unsafe {
            let i = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(i))
        }
    }
    #[inline(always)]
    fn prefetch(self, p: *const f32) {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m256) -> f32 {
        unsafe {
            let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_max_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }
    #[inline(always)]
    fn abs(self, a: __m256) -> __m256 {
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn select_lt(self, a: __m256, b: __m256, if_lt: __m256, otherwise: __m256) -> __m256 {
        unsafe { _mm256_blendv_ps(otherwise, if_lt, _mm256_cmp_ps::<_CMP_LT_OQ>(a, b)) }
    }
    #[inline(always)]
    fn split_exponent(self, x: __m256) -> (__m256, __m256) {
        unsafe {
            let bits = _mm256_castps_si256(x);
            let e = _mm256_sub_epi32(_mm256_srli_epi32::<23>(bits), _mm256_set1_epi32(127));
            let m = _mm256_and_si256(bits, _mm256_set1_epi32(0x007f_ffff));
            let m = _mm256_or_si256(m, _mm256_set1_epi32(0x3f80_0000));
            (_mm256_castsi256_ps(m), _mm256_cvtepi32_ps(e))
        }
    }
    #[inline(always)]
    unsafe fn transpose8(self, src: [*const f32; 8], dst: *mut f32, dst_stride: usize) {
        unsafe { transpose8_avx(src, dst, dst_stride) }
    }
}

impl Simd for Avx512 {
    type V = __m512;
    const LANES: usize = 16;
    const REGISTERS_PER_VECTOR: usize = 1;
    // 32 zmm registers: MR·NV accumulators + NV B vectors + 1 broadcast A.
    super::gemm_tiles!((6, 4), (8, 3), (12, 2), (14, 2));

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn load_first(self, p: *const f32, n: usize, pad: f32) -> __m512 {
        // SAFETY: masked-off lanes are not read (they cannot fault); the caller guarantees the
        // first n ≤ 16 floats.
        unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(pad), first_lanes_avx512(n), p) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize, v: __m512) {
        // SAFETY: masked-off lanes are not written; the caller guarantees the first n floats.
        unsafe { _mm512_mask_storeu_ps(p, first_lanes_avx512(n), v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn sqrt(self, a: __m512) -> __m512 {
        unsafe { _mm512_sqrt_ps(a) }
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn pow2i(self, n: __m512) -> __m512 {
        unsafe {
            let i = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(i))
        }
    }
    #[inline(always)]
    fn prefetch(self, p: *const f32) {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m512) -> f32 {
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            Avx2(()).reduce_sum(_mm256_add_ps(lo, hi))
        }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m512) -> f32 {
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            Avx2(()).reduce_max(_mm256_max_ps(lo, hi))
        }
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    fn select_lt(self, a: __m512, b: __m512, if_lt: __m512, otherwise: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b), otherwise, if_lt) }
    }
    #[inline(always)]
    fn split_exponent(self, x: __m512) -> (__m512, __m512) {
        unsafe {
            let bits = _mm512_castps_si512(x);
            let e = _mm512_sub_epi32(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(127));
            let m = _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff));
            let m = _mm512_or_si512(m, _mm512_set1_epi32(0x3f80_0000));
            (_mm512_castsi512_ps(m), _mm512_cvtepi32_ps(e))
        }
    }
    #[inline(always)]
    unsafe fn transpose8(self, src: [*const f32; 8], dst: *mut f32, dst_stride: usize) {
        unsafe { transpose8_avx(src, dst, dst_stride) }
    }
}
