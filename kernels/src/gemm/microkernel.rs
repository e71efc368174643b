//! The register-tile micro-kernel: `MR × NR` of C from an `MR`-row panel of A and an
//! `NR`-column panel of B, both packed, over `kc` steps of K.
//!
//! Written once over [`Simd`] and the tile's `MR` and `NV` as const generics, so every tile of
//! every instruction set is its own monomorphised kernel that keeps exactly `MR × NV` vectors
//! in registers (`Simd::GEMM_TILES` lists them; `blocking.rs` picks one).

use super::blocking::MAX_MR;
use super::view::MatRef;
use crate::simd::Simd;

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
/// the `MR` row pointers `c` (each `NR = NV·LANES` contiguous floats). `b_stride` is `NR` for a
/// packed panel, or B's row stride when B is read in place (small-M products, where packing B
/// would cost more than it saves).
///
/// # Safety
/// `a` must hold `kc·MR` floats; `b` must describe `kc` readable steps (its constructors
/// check that); each of the first `MR` pointers in `c` must be valid for reading and writing
/// `NR` floats, with no two rows overlapping.
#[inline(always)]
pub(crate) unsafe fn microkernel<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a: *const f32,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
    accumulate: bool,
) {
    let nr = NV * S::LANES;
    // C is needed only at the end; start fetching it now so its misses overlap the FMAs.
    for row in c.iter().take(MR) {
        for v in 0..NV {
            s.prefetch(row.wrapping_add(v * S::LANES));
        }
    }
    let mut acc = [[s.splat(0.0); NV]; MR];
    let (mut a, mut b, b_stride) = (a, b.ptr, b.stride);
    // One step of K: NV loads of B, MR broadcasts of A, MR·NV FMAs.
    #[inline(always)]
    unsafe fn step<S: Simd, const MR: usize, const NV: usize>(
        s: S,
        a: *const f32,
        b: *const f32,
        acc: &mut [[S::V; NV]; MR],
    ) {
        // SAFETY: b points at one step (NR floats) of a packed B panel.
        let bv: [S::V; NV] = std::array::from_fn(|v| unsafe { s.load(b.add(v * S::LANES)) });
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: a points at one step (MR floats) of a packed A panel.
            let av = s.splat(unsafe { *a.add(i) });
            for (r, &bv) in row.iter_mut().zip(&bv) {
                *r = s.mul_add(av, bv, *r);
            }
        }
    }
    // Unrolled by 4 so the loop branch and pointer updates are amortised. (Software prefetch
    // of B 8 or 16 steps ahead measured no different on Zen 5: the hardware prefetcher follows
    // the packed panels.)
    for _ in 0..kc / 4 {
        // SAFETY: four steps remain in both panels.
        unsafe {
            step::<S, MR, NV>(s, a, b, &mut acc);
            step::<S, MR, NV>(s, a.add(MR), b.add(b_stride), &mut acc);
            step::<S, MR, NV>(s, a.add(2 * MR), b.add(2 * b_stride), &mut acc);
            step::<S, MR, NV>(s, a.add(3 * MR), b.add(3 * b_stride), &mut acc);
            a = a.add(4 * MR);
            b = b.add(4 * b_stride);
        }
    }
    for _ in 0..kc % 4 {
        // SAFETY: one step remains in both panels.
        unsafe {
            step::<S, MR, NV>(s, a, b, &mut acc);
            a = a.add(MR);
            b = b.add(b_stride);
        }
    }
    debug_assert!(nr <= super::blocking::MAX_NR);
    for ((row, &al), &dst) in acc.iter().zip(alpha).zip(c) {
        let al = s.splat(al);
        for (v, &sum) in row.iter().enumerate() {
            // SAFETY: each row pointer is valid for NR floats (caller's contract).
            unsafe {
                let p = dst.add(v * S::LANES);
                let r = if accumulate { s.mul_add(sum, al, s.load(p)) } else { s.mul(sum, al) };
                s.store(p, r);
            }
        }
    }
}
