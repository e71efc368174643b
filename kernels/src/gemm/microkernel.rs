//! The register-tile micro-kernel: `MR × NR` of C from an `MR`-row panel of A and an
//! `NR`-column panel of B, both packed, over `kc` steps of K.
//!
//! Written once over [`Simd`]; each instruction set picks its tile through `Simd::GEMM_MR` and
//! `Simd::GEMM_NV`. The accumulator array has the largest size any path needs; loops run to the
//! path's own constants, so the compiler unrolls them and keeps exactly `MR × NV` vectors in
//! registers.

use super::view::MatRef;
use crate::simd::Simd;
use crate::Isa;

/// Largest `GEMM_MR` of any path.
pub(crate) const MAX_MR: usize = 12;
/// Largest `GEMM_NV` of any path.
pub(crate) const MAX_NV: usize = 2;
/// Largest `NR` of any path (in floats).
pub(crate) const MAX_NR: usize = 32;

/// The cache blocking of one instruction set (BLIS notation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Rows of the register tile.
    pub mr: usize,
    /// Columns of the register tile.
    pub nr: usize,
    /// Depth of a packed panel: an `NR`-column panel of B (`KC·NR` floats) stays in L1.
    pub kc: usize,
    /// Rows of a packed A block (`MC·KC` floats) that stays in L2.
    pub mc: usize,
    /// Columns of a packed B block (`KC·NC` floats) that stays in L3.
    pub nc: usize,
}

impl Blocking {
    /// The blocking of `isa`. Fixed per path, never per thread count: this is what keeps the
    /// summation order (and so every bit of the result) independent of the number of threads.
    pub(crate) fn of(isa: Isa) -> Blocking {
        struct Query;
        impl crate::simd::SimdTask for Query {
            type Output = Blocking;
            fn run<S: Simd>(self, _: S) -> Blocking {
                let mr = S::GEMM_MR;
                let nr = S::GEMM_NV * S::LANES;
                // KC·NR·4 bytes of B ≈ 16 KiB (half of a 32 KiB L1d); MC·KC·4 of A ≈ 150 KiB of L2
                // (MC = 144 measured a few per cent ahead of 96 and 192 on this Zen 3).
                let kc = 256;
                let mc = mr * (144 / mr);
                Blocking { mr, nr, kc, mc, nc: 4096 }
            }
        }
        crate::simd::with_simd(isa, Query)
    }
}

/// `kc` steps of an NR-wide panel of B as the micro-kernel reads it: step `p` is the `NR`
/// floats at `ptr + p·stride`. Built only by the two checked constructors below.
#[derive(Clone, Copy)]
pub(crate) struct BPanel {
    ptr: *const f32,
    stride: usize,
}

impl BPanel {
    /// A packed panel (`stride = NR`). Panics if the slice is shorter than `kc·nr` (an internal
    /// invariant of the drivers, not user input).
    #[inline(always)]
    pub(crate) fn packed(panel: &[f32], kc: usize, nr: usize) -> BPanel {
        assert!(panel.len() >= kc * nr, "packed B panel too short");
        BPanel { ptr: panel.as_ptr(), stride: nr }
    }

    /// B read in place: rows `row0..row0+kc`, columns `col0..col0+nr` of a plain row-major view
    /// (column stride 1, no index lists). `None` when B is not such a view or the panel would
    /// reach past its buffer (a partial last panel), so the caller packs instead.
    #[inline(always)]
    pub(crate) fn direct(b: &MatRef<'_>, row0: usize, kc: usize, col0: usize, nr: usize) -> Option<BPanel> {
        if b.col_stride != 1 || b.row_index.is_some() || b.col_index.is_some() || col0 + nr > b.cols || kc == 0 {
            return None;
        }
        let first = row0 * b.row_stride + col0;
        let last_end = (row0 + kc - 1) * b.row_stride + col0 + nr;
        (last_end <= b.data.len()).then(|| BPanel { ptr: b.data[first..].as_ptr(), stride: b.row_stride })
    }
}

/// Computes `c_i ← alpha_i · Σ_p a[p·MR + i] · b[p·b_stride + ·]  (+ c_i if accumulate)` for
/// the `MR` row pointers `c` (each `NR` contiguous floats). `b_stride` is `NR` for a packed
/// panel, or B's row stride when B is read in place (small-M products, where packing B would
/// cost more than it saves).
///
/// # Safety
/// `a` must hold `kc·MR` floats; `b` must describe `kc` readable steps (its constructors
/// check that); each of the first `MR` pointers in `c` must be valid for reading and writing
/// `NR` floats, with no two rows overlapping.
#[inline(always)]
pub(crate) unsafe fn microkernel<S: Simd>(
    s: S,
    kc: usize,
    a: *const f32,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
    accumulate: bool,
) {
    let mr = S::GEMM_MR;
    let nv = S::GEMM_NV;
    let nr = nv * S::LANES;
    // C is needed only at the end; start fetching it now so its misses overlap the FMAs.
    for row in c.iter().take(mr) {
        s.prefetch(*row);
        s.prefetch(row.wrapping_add(nr - 1));
    }
    let mut acc = [[s.splat(0.0); MAX_NV]; MAX_MR];
    let (mut a, mut b, b_stride) = (a, b.ptr, b.stride);
    // One step of K: NV loads of B, MR broadcasts of A, MR·NV FMAs.
    #[inline(always)]
    unsafe fn step<S: Simd>(s: S, a: *const f32, b: *const f32, acc: &mut [[S::V; MAX_NV]; MAX_MR]) {
        let mut bv = [s.splat(0.0); MAX_NV];
        for (v, slot) in bv.iter_mut().enumerate().take(S::GEMM_NV) {
            // SAFETY: b points at one step (NR floats) of a packed B panel.
            *slot = unsafe { s.load(b.add(v * S::LANES)) };
        }
        for (i, row) in acc.iter_mut().enumerate().take(S::GEMM_MR) {
            // SAFETY: a points at one step (MR floats) of a packed A panel.
            let av = s.splat(unsafe { *a.add(i) });
            for v in 0..S::GEMM_NV {
                row[v] = s.mul_add(av, bv[v], row[v]);
            }
        }
    }
    // Unrolled by 4 so the loop branch and pointer updates are amortised.
    for _ in 0..kc / 4 {
        // SAFETY: four steps remain in both panels.
        unsafe {
            step(s, a, b, &mut acc);
            step(s, a.add(mr), b.add(b_stride), &mut acc);
            step(s, a.add(2 * mr), b.add(2 * b_stride), &mut acc);
            step(s, a.add(3 * mr), b.add(3 * b_stride), &mut acc);
            a = a.add(4 * mr);
            b = b.add(4 * b_stride);
        }
    }
    for _ in 0..kc % 4 {
        // SAFETY: one step remains in both panels.
        unsafe {
            step(s, a, b, &mut acc);
            a = a.add(mr);
            b = b.add(b_stride);
        }
    }
    for ((row, &al), &dst) in acc.iter().zip(alpha).zip(c).take(mr) {
        let al = s.splat(al);
        for (v, &sum) in row.iter().enumerate().take(nv) {
            // SAFETY: each row pointer is valid for NR floats (caller's contract).
            unsafe {
                let p = dst.add(v * S::LANES);
                let r = if accumulate { s.mul_add(sum, al, s.load(p)) } else { s.mul(sum, al) };
                s.store(p, r);
            }
        }
    }
}
