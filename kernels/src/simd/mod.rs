//! A small SIMD vocabulary that every vectorised kernel is written against once.
//!
//! Each implementation is a zero-sized *token*: holding one proves the CPU runs its
//! instructions, because the only way to get one is [`with_simd`], which checks
//! [`Isa::is_supported`]. Kernels are generic `#[inline(always)]` functions over [`Simd`];
//! [`with_simd`] calls them from a `#[target_feature]` entry point so the intrinsics inline
//! with the right instruction set, without `-C target-cpu=native`.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::Isa;
pub(crate) use portable::Portable;

/// An f32 SIMD instruction set. All arithmetic is lane-wise.
pub(crate) trait Simd: Copy + Send + Sync + 'static {
    /// The vector type.
    type V: Copy;
    /// Number of f32 lanes in [`Simd::V`].
    const LANES: usize;
    /// Machine registers one [`Simd::V`] occupies (2 for the portable `f32x8` on SSE2, else 1):
    /// register-tiled kernels size their tiles by it.
    const REGISTERS_PER_VECTOR: usize;
    /// The GEMM register tiles `(MR, NV)` this path has micro-kernels for (`NR = NV · LANES`),
    /// the default first.
    const GEMM_TILES: &'static [(usize, usize)];

    /// Runs `task` with the tile `(mr, nv)` as compile-time constants. A tile not in
    /// [`Simd::GEMM_TILES`] runs the default tile (callers pass only listed ones).
    fn with_tile<T: TileTask>(self, mr: usize, nv: usize, task: T) -> T::Output;

    fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` floats.
    ///
    /// # Safety
    /// `p` must be valid for reading `LANES` floats (no alignment needed).
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Stores `LANES` floats.
    ///
    /// # Safety
    /// `p` must be valid for writing `LANES` floats (no alignment needed).
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Loads the `n` floats at `p` (`n ≤ LANES`) into the first lanes, the others `pad`: a
    /// row's tail. Through a buffer here; the x86 paths mask the load, which reads only those
    /// floats and costs no store-forwarding stall (a short router row is all tail).
    ///
    /// # Safety
    /// `p` must be valid for reading `n` floats, `n ≤ LANES`.
    #[inline(always)]
    unsafe fn load_first(self, p: *const f32, n: usize, pad: f32) -> Self::V {
        let mut buf = [pad; crate::lanes::MAX_LANES];
        // SAFETY: the caller guarantees `n` readable floats at `p`, n ≤ LANES ≤ MAX_LANES.
        unsafe {
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            self.load(buf.as_ptr())
        }
    }
    /// Stores the first `n` lanes of `v` at `p` (`n ≤ LANES`), writing nothing past them.
    ///
    /// # Safety
    /// `p` must be valid for writing `n` floats, `n ≤ LANES`.
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize, v: Self::V) {
        let mut buf = [0.0; crate::lanes::MAX_LANES];
        // SAFETY: `buf` holds MAX_LANES ≥ LANES floats; the caller guarantees `n` writable
        // floats at `p`, n ≤ LANES.
        unsafe {
            self.store(buf.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
        }
    }
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the instruction set has FMA.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn sqrt(self, a: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for lanes holding integral values in `[-126, 127]`.
    fn pow2i(self, n: Self::V) -> Self::V;
    /// Hints the CPU to bring the cache line holding `p` into L1 (no effect where unsupported).
    /// Any address is allowed: a prefetch never faults.
    fn prefetch(self, p: *const f32);
    /// Sum of the lanes, always in the same order.
    fn reduce_sum(self, v: Self::V) -> f32;
    /// Largest lane.
    fn reduce_max(self, v: Self::V) -> f32;
    /// Lane-wise `|a|` (clears the sign bit).
    fn abs(self, a: Self::V) -> Self::V;
    /// Lane-wise `if a < b { if_lt } else { otherwise }`; a NaN in `a` or `b` takes `otherwise`.
    fn select_lt(self, a: Self::V, b: Self::V, if_lt: Self::V, otherwise: Self::V) -> Self::V;
    /// Splits positive normal floats as `x = m·2^e` with `m` in `[1, 2)` and returns `(m, e)`.
    /// Zero, subnormal, negative, infinite and NaN lanes give meaningless values.
    fn split_exponent(self, x: Self::V) -> (Self::V, Self::V);

    /// Transposes an 8 × 8 block: `dst[r·dst_stride + c] = src[c][r]` for `r, c < 8`. (The
    /// x86 paths do it in registers; the portable one element by element.)
    ///
    /// # Safety
    /// Each `src[c]` must be valid for reading 8 floats, and `dst` for writing 8 floats at
    /// each of `dst + r·dst_stride`, `r < 8`.
    #[inline(always)]
    unsafe fn transpose8(self, src: [*const f32; 8], dst: *mut f32, dst_stride: usize) {
        for (c, &column) in src.iter().enumerate() {
            for r in 0..8 {
                // SAFETY: within the 8 floats of each row and column (caller's contract).
                unsafe { *dst.add(r * dst_stride + c) = *column.add(r) };
            }
        }
    }

    /// Lane-wise `if a is NaN { a } else { b }`: carries a NaN past a max, min or clamp that
    /// would drop it.
    #[inline(always)]
    fn keep_nan(self, a: Self::V, b: Self::V) -> Self::V {
        // A lane neither below +inf nor above -inf is NaN.
        let unless_above_neg_inf = self.select_lt(self.splat(f32::NEG_INFINITY), a, b, a);
        self.select_lt(a, self.splat(f32::INFINITY), b, unless_above_neg_inf)
    }

    /// Lane-wise natural log, relative error about 1e-7 (Cephes `logf`): `x = m·2^e` with `m`
    /// in `[√½, √2)`, then `ln m = f - f²/2 + f³·P(f)` for `f = m - 1`. Subnormals are scaled
    /// into range first; `ln 0 = -inf`, `ln(x < 0) = NaN`, `ln inf = inf`, NaN stays NaN.
    #[inline(always)]
    fn ln(self, x: Self::V) -> Self::V {
        let one = self.splat(1.0);
        let zero = self.splat(0.0);
        let min_normal = self.splat(f32::MIN_POSITIVE);
        let scale = self.select_lt(x, min_normal, self.splat(8_388_608.0), one); // 2^23
        let (m, e) = self.split_exponent(self.mul(x, scale));
        let e = self.add(e, self.select_lt(x, min_normal, self.splat(-23.0), zero));
        let sqrt2 = self.splat(std::f32::consts::SQRT_2);
        let e = self.select_lt(m, sqrt2, e, self.add(e, one));
        let f = self.sub(self.select_lt(m, sqrt2, m, self.mul(m, self.splat(0.5))), one);
        let z = self.mul(f, f);
        let mut p = self.splat(7.037_683_6e-2);
        p = self.mul_add(p, f, self.splat(-1.151_461e-1));
        p = self.mul_add(p, f, self.splat(1.167_699_9e-1));
        p = self.mul_add(p, f, self.splat(-1.242_014_1e-1));
        p = self.mul_add(p, f, self.splat(1.424_932_3e-1));
        p = self.mul_add(p, f, self.splat(-1.666_805_8e-1));
        p = self.mul_add(p, f, self.splat(2.000_071_4e-1));
        p = self.mul_add(p, f, self.splat(-2.499_999_4e-1));
        p = self.mul_add(p, f, self.splat(3.333_333e-1));
        let y = self.mul(self.mul(p, f), z);
        // ln2 split in two (Cody–Waite) so e·ln2 adds without rounding away f's low bits.
        let y = self.mul_add(e, self.splat(-2.121_944_4e-4), y);
        let y = self.mul_add(z, self.splat(-0.5), y);
        let r = self.mul_add(e, self.splat(0.693_359_4), self.add(f, y)); // 355/512 exactly
        let r = self.select_lt(x, self.splat(f32::from_bits(1)), self.splat(f32::NEG_INFINITY), r);
        let r = self.select_lt(x, zero, self.splat(f32::NAN), r);
        self.select_lt(x, self.splat(f32::INFINITY), r, x)
    }

    /// Lane-wise `e^x`, relative error below 2e-7 on `[-87, 88]`; saturates outside it.
    ///
    /// Cody–Waite range reduction `x = n·ln2 + r`, then a degree-6 polynomial for `e^r`.
    #[inline(always)]
    fn exp(self, x: Self::V) -> Self::V {
        // x goes second: x86 max/min return their second operand when either is NaN (NEON
        // returns NaN), so a NaN lane passes the clamp and e^NaN = NaN.
        let x = self.min(self.splat(88.37626), self.max(self.splat(-87.33654), x));
        let n = self.round(self.mul(x, self.splat(std::f32::consts::LOG2_E)));
        let r = self.mul_add(n, self.splat(-0.693_145_75), x);
        let r = self.mul_add(n, self.splat(-1.428_606_8e-6), r);
        let mut p = self.splat(1.0 / 720.0);
        p = self.mul_add(p, r, self.splat(1.0 / 120.0));
        p = self.mul_add(p, r, self.splat(1.0 / 24.0));
        p = self.mul_add(p, r, self.splat(1.0 / 6.0));
        p = self.mul_add(p, r, self.splat(0.5));
        p = self.mul_add(p, r, self.splat(1.0));
        p = self.mul_add(p, r, self.splat(1.0));
        // 2^n for n = 128 (x near 88.4) overflows the exponent field: take 2^min(n, 127) and
        // double once more for n = 128. (2^(n-1)·2 would underflow to 0 for n = -126.)
        let capped = self.min(n, self.splat(127.0));
        let extra = self.add(self.splat(1.0), self.sub(n, capped));
        self.mul(self.mul(p, self.pow2i(capped)), extra)
    }

    /// Lane-wise `tanh(x)`, computed as `1 - 2 / (e^{2x} + 1)` (saturates cleanly at ±1).
    /// `x` is first clamped to `[-10, 10]`, beyond which the formula already rounds to exactly
    /// ±1, so results are unchanged; but `e^{2x}` at the ends of its range comes out subnormal
    /// or overflows, and GELU over inputs spread on ±200 ran 1.6x slower on Zen 5.
    #[inline(always)]
    fn tanh(self, x: Self::V) -> Self::V {
        // x goes second, as in `exp`: a NaN lane passes the clamp.
        let x = self.min(self.splat(10.0), self.max(self.splat(-10.0), x));
        let e = self.exp(self.add(x, x));
        let one = self.splat(1.0);
        self.sub(one, self.div(self.splat(2.0), self.add(e, one)))
    }

    /// Lane-wise error function `erf(x)`, absolute and relative error below 4e-7: the odd
    /// rational minimax form `x·P(x²)/Q(x²)` (degrees 13/8) of Eigen's and XLA's `erf`, on
    /// `x` clamped to `[-4, 4]`, and exactly ±1 beyond `|x| = 3.9`, where erf rounds to ±1 in
    /// f32 (so `1 + erf(x)` is exactly 0 in the far tail). NaN stays NaN.
    #[inline(always)]
    fn erf(self, x: Self::V) -> Self::V {
        // x goes second, as in `exp`: a NaN lane passes the clamp.
        let x = self.min(self.splat(4.0), self.max(self.splat(-4.0), x));
        let z = self.mul(x, x);
        let mut p = self.splat(-2.726_142_3e-10);
        p = self.mul_add(p, z, self.splat(2.770_681_4e-8));
        p = self.mul_add(p, z, self.splat(-2.101_024e-6));
        p = self.mul_add(p, z, self.splat(-5.692_506_4e-5));
        p = self.mul_add(p, z, self.splat(-7.349_906_3e-4));
        p = self.mul_add(p, z, self.splat(-2.954_6e-3));
        p = self.mul_add(p, z, self.splat(-1.609_603_3e-2));
        let mut q = self.splat(-1.456_607_2e-5);
        q = self.mul_add(q, z, self.splat(-2.133_740_6e-4));
        q = self.mul_add(q, z, self.splat(-1.682_827e-3));
        q = self.mul_add(q, z, self.splat(-7.373_329e-3));
        q = self.mul_add(q, z, self.splat(-1.426_474e-2));
        let r = self.div(self.mul(x, p), q);
        let sign = self.select_lt(x, self.splat(0.0), self.splat(-1.0), self.splat(1.0));
        // A NaN lane fails the comparison and keeps r (NaN).
        self.select_lt(self.splat(3.9), self.abs(x), sign, r)
    }

    /// Lane-wise logistic sigmoid `1 / (1 + e^{-x})`.
    #[inline(always)]
    fn sigmoid(self, x: Self::V) -> Self::V {
        let one = self.splat(1.0);
        let neg = self.sub(self.splat(0.0), x);
        self.div(one, self.add(one, self.exp(neg)))
    }
}

/// Floats in a 64-byte cache line: the step of a prefetch loop.
pub(crate) const LINE_FLOATS: usize = 16;

/// The prefetch hint that fetches into L1 (`prefetcht0`).
#[cfg(target_arch = "x86_64")]
const HINT_L1: i32 = std::arch::x86_64::_MM_HINT_T0;
/// The prefetch hint that fetches into L2 only (`prefetcht1`).
#[cfg(target_arch = "x86_64")]
const HINT_L2: i32 = std::arch::x86_64::_MM_HINT_T1;
#[cfg(not(target_arch = "x86_64"))]
const HINT_L1: i32 = 0;
#[cfg(not(target_arch = "x86_64"))]
const HINT_L2: i32 = 1;

/// A prefetch of the line holding `p` with `HINT`: prefetch instructions are part of the
/// x86-64 baseline (SSE), so scalar code such as packing can hint too. A no-op elsewhere.
#[inline(always)]
fn prefetch_hint<const HINT: i32>(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64; a prefetch never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<HINT>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch_hint`] of every cache line `run` touches.
#[inline(always)]
fn prefetch_lines<const HINT: i32>(run: &[f32]) {
    for line in (0..run.len()).step_by(LINE_FLOATS) {
        prefetch_hint::<HINT>(run[line..].as_ptr());
    }
}

/// A prefetch into L2 only (`prefetcht1`), also outside vector code: for data read from memory
/// well ahead of its use, where an L1 prefetch would hold one of L1's few miss buffers for the
/// whole trip (L2 keeps more lines in flight).
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const f32) {
    prefetch_hint::<HINT_L2>(p)
}

/// A prefetch into L1 (as [`Simd::prefetch`], also outside vector code) of every cache line
/// `run` touches: a row read soon, at an address the hardware prefetcher cannot predict
/// (another page, or a gathered row).
#[inline(always)]
pub(crate) fn prefetch_run(run: &[f32]) {
    prefetch_lines::<HINT_L1>(run)
}

/// [`prefetch_l2`] of every cache line `run` touches: a run read from memory a while from now.
#[inline(always)]
pub(crate) fn prefetch_run_l2(run: &[f32]) {
    prefetch_lines::<HINT_L2>(run)
}

/// Something to run with a [`Simd`] token: implement `run` generically, call [`with_simd`].
pub(crate) trait SimdTask {
    type Output;
    fn run<S: Simd>(self, simd: S) -> Self::Output;
}

/// Something to run with a [`Simd`] token and a GEMM register tile: see [`Simd::with_tile`].
pub(crate) trait TileTask {
    type Output;
    fn run<S: Simd, const MR: usize, const NV: usize>(self, simd: S) -> Self::Output;
}

/// Implements [`Simd::with_tile`] for the listed tiles (the first is the default), and
/// `GEMM_TILES` with the same list, so the two cannot disagree.
macro_rules! gemm_tiles {
    ($(($mr:literal, $nv:literal)),+ $(,)?) => {
        const GEMM_TILES: &'static [(usize, usize)] = &[$(($mr, $nv)),+];

        #[inline(always)]
        fn with_tile<T: $crate::simd::TileTask>(self, mr: usize, nv: usize, task: T) -> T::Output {
            $crate::simd::gemm_tiles!(@dispatch self, mr, nv, task, $(($mr, $nv)),+)
        }
    };
    (@dispatch $s:ident, $m:ident, $n:ident, $task:ident, ($mr0:literal, $nv0:literal) $(, ($mr:literal, $nv:literal))*) => {
        match ($m, $n) {
            $(($mr, $nv) => $task.run::<Self, $mr, $nv>($s),)*
            _ => $task.run::<Self, $mr0, $nv0>($s),
        }
    };
}
pub(crate) use gemm_tiles;

/// Runs `task` on the instruction set `isa` (which the caller has checked is supported; an
/// unsupported `isa` falls back to the best supported path below it).
#[inline]
pub(crate) fn with_simd<T: SimdTask>(isa: Isa, task: T) -> T::Output {
    let isa = isa.min(Isa::best_supported());
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            // SAFETY: `isa <= best_supported()`, so the CPU runs AVX-512F.
            Isa::Avx512 => return unsafe { x86::run_avx512(task) },
            // SAFETY: `isa <= best_supported()`, so the CPU runs AVX2 and FMA.
            Isa::Avx2 => return unsafe { x86::run_avx2(task) },
            Isa::Portable => {}
        }
    }
    task.run(Portable)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Simd::load_first`] and [`Simd::store_first`] for every `n` up to `LANES`: the first `n`
    /// lanes come from memory and the rest are the padding; a store writes the first `n` floats
    /// and nothing after them. Returns whether every case held.
    struct PartialCheck;
    impl SimdTask for PartialCheck {
        type Output = bool;
        fn run<S: Simd>(self, s: S) -> bool {
            let src: Vec<f32> = (0..S::LANES).map(|i| i as f32 + 0.5).collect();
            (0..=S::LANES).all(|n| {
                let mut lanes = vec![0.0f32; S::LANES];
                // SAFETY: `src` holds LANES ≥ n floats; `lanes` holds LANES.
                unsafe { s.store(lanes.as_mut_ptr(), s.load_first(src.as_ptr(), n, -7.0)) };
                let loaded = lanes.iter().enumerate().all(|(i, &v)| v == if i < n { src[i] } else { -7.0 });
                let mut out = vec![f32::NAN; S::LANES + 1];
                // SAFETY: `out` holds LANES + 1 ≥ n floats.
                unsafe { s.store_first(out.as_mut_ptr(), n, s.load(src.as_ptr())) };
                let stored = out.iter().enumerate().all(|(i, &v)| if i < n { v == src[i] } else { v.is_nan() });
                loaded && stored
            })
        }
    }

    #[test]
    fn partial_loads_and_stores_touch_only_their_lanes() {
        for isa in Isa::supported() {
            assert!(with_simd(isa, PartialCheck), "{isa}");
        }
    }

    struct ExpCheck;
    impl SimdTask for ExpCheck {
        type Output = f32;
        fn run<S: Simd>(self, s: S) -> f32 {
            let mut worst = 0.0f32;
            let mut buf = vec![0.0f32; S::LANES];
            let mut x = -87.0f32;
            while x < 88.0 {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = x + i as f32 * 0.001;
                }
                // SAFETY: buf holds LANES floats.
                let v = unsafe { s.load(buf.as_ptr()) };
                let e = s.exp(v);
                // SAFETY: buf holds LANES floats.
                unsafe { s.store(buf.as_mut_ptr(), e) };
                for (i, got) in buf.iter().enumerate() {
                    let want = ((x + i as f32 * 0.001) as f64).exp();
                    worst = worst.max(((*got as f64 - want) / want).abs() as f32);
                }
                x += 0.37;
            }
            worst
        }
    }

    /// `erf` over `[-6, 6]` in steps of about 1e-3 (and a NaN): the worst absolute error against
    /// f64 `erf`, and whether NaN stayed NaN.
    struct ErfCheck;
    impl SimdTask for ErfCheck {
        type Output = (f64, bool);
        fn run<S: Simd>(self, s: S) -> (f64, bool) {
            let mut worst = 0.0f64;
            let mut buf = vec![0.0f32; S::LANES];
            let mut x = -6.0f32;
            while x < 6.0 {
                for (i, b) in buf.iter_mut().enumerate() {
                    *b = x + i as f32 * 1e-3;
                }
                let xs = buf.clone();
                // SAFETY: buf holds LANES floats.
                unsafe { s.store(buf.as_mut_ptr(), s.erf(s.load(buf.as_ptr()))) };
                for (&v, &got) in xs.iter().zip(&buf) {
                    let want = libm::erf(v as f64);
                    // Near 0 erf(x) ≈ 1.13·x: hold it to relative accuracy there too.
                    worst = worst.max((got as f64 - want).abs() / want.abs().clamp(1e-30, 1.0));
                }
                x += S::LANES as f32 * 1e-3 + 7e-6;
            }
            let nan = s.erf(s.splat(f32::NAN));
            buf.fill(0.0);
            // SAFETY: buf holds LANES floats.
            unsafe { s.store(buf.as_mut_ptr(), nan) };
            (worst, buf.iter().all(|v| v.is_nan()))
        }
    }

    #[test]
    fn erf_is_accurate_on_every_path() {
        for isa in Isa::supported() {
            let (worst, nan_stays) = with_simd(isa, ErfCheck);
            assert!(worst < 1e-6, "{isa}: worst error {worst}");
            assert!(nan_stays, "{isa}: erf(NaN) must be NaN");
        }
    }

    #[test]
    fn exp_is_accurate_on_every_path() {
        for isa in Isa::supported() {
            let worst = with_simd(isa, ExpCheck);
            assert!(worst < 4e-7, "{isa}: worst relative error {worst}");
        }
    }

    /// Transposes 8 columns, each 8 floats somewhere in a buffer (strided, out of order), into
    /// rows 11 floats apart.
    struct TransposeCheck<'a>(&'a [f32], [usize; 8]);
    impl SimdTask for TransposeCheck<'_> {
        type Output = Vec<f32>;
        fn run<S: Simd>(self, s: S) -> Vec<f32> {
            let mut out = vec![-1.0f32; 7 * 11 + 8];
            let src = self.1.map(|at| self.0[at..at + 8].as_ptr());
            // SAFETY: each source slice holds 8 floats; out holds rows 0..8 of 8 floats, 11 apart.
            unsafe { s.transpose8(src, out.as_mut_ptr(), 11) };
            out
        }
    }

    #[test]
    fn transpose8_matches_the_definition_on_every_path() {
        let data: Vec<f32> = (0..200).map(|i| i as f32 * 0.5 - 3.0).collect();
        let starts = [100, 3, 57, 9, 180, 120, 31, 77];
        for isa in Isa::supported() {
            let out = with_simd(isa, TransposeCheck(&data, starts));
            for (i, &v) in out.iter().enumerate() {
                let (r, c) = (i / 11, i % 11);
                let want = if c < 8 { data[starts[c] + r] } else { -1.0 };
                assert_eq!(v, want, "{isa}: element {i} (row {r}, column {c})");
            }
        }
    }
}
