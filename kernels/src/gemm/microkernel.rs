//! The register-tile micro-kernel: `MR × NR` of C from an `MR`-row tile of A (packed, or read
//! in place by rows or by columns: [`APanel`]) and an `NR`-column panel of B (packed, or read in
//! place: [`BPanel`]), over `kc` steps of K; and the edge kernel for tiles of fewer rows.
//!
//! Written once over [`Simd`] and the tile's `MR` and `NV` as const generics, so every tile of
//! every instruction set is its own monomorphised kernel that keeps exactly `MR × NV` vectors
//! in registers (`Simd::GEMM_TILES` lists them; `blocking.rs` picks one).

use super::blocking::MAX_MR;
use super::pack::ZEROS;
use super::view::MatRef;
use crate::simd::{Simd, LINE_FLOATS as LINE};

/// `kc` steps of an NR-wide panel of B as the micro-kernel reads it: step `p` is the `NR`
/// floats at `ptr + p·stride`. Built only by the two checked constructors below.
#[derive(Clone, Copy)]
pub(crate) struct BPanel {
    ptr: *const f32,
    stride: usize,
    /// Memory to fetch while the kernel runs, a cache line every four steps: `ahead_lines`
    /// lines from `ahead`. Only ever passed to prefetch instructions, which never fault.
    ahead: *const f32,
    ahead_lines: usize,
}

impl BPanel {
    /// A packed panel (`stride = NR`). Panics if the slice is shorter than `kc·nr` (an internal
    /// invariant of the drivers, not user input).
    #[inline(always)]
    pub(crate) fn packed(panel: &[f32], kc: usize, nr: usize) -> BPanel {
        assert!(panel.len() >= kc * nr, "packed B panel too short");
        BPanel { ptr: panel.as_ptr(), stride: nr, ahead: std::ptr::null(), ahead_lines: 0 }
    }

    /// The same panel, prefetching `region` while the kernel runs (from its start, a cache
    /// line per four steps): data the caller reads next, so that its misses overlap this
    /// tile's multiply-adds.
    #[inline(always)]
    pub(crate) fn fetching(self, region: &[f32]) -> BPanel {
        BPanel { ahead: region.as_ptr(), ahead_lines: region.len().div_ceil(LINE), ..self }
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
        (last_end <= b.data.len()).then(|| BPanel {
            ptr: b.data[first..].as_ptr(),
            stride: b.row_stride,
            ahead: std::ptr::null(),
            ahead_lines: 0,
        })
    }
}

/// Computes `c_i ← alpha_i · Σ_p a(i, p) · b[p·b_stride + ·]  (+ c_i if accumulate)` for the
/// `MR` row pointers `c` (each `NR = NV·LANES` contiguous floats), `a(i, p)` as [`APanel`]
/// says. `b_stride` is `NR` for a packed panel, or B's row stride when B is read in place
/// (small-M products, where packing B would cost more than it saves).
///
/// # Safety
/// `a` must address `kc` steps of `MR` rows (packed: `kc·MR` floats; rows: each of the first
/// `MR` pointers valid for `kc` floats; columns: `(kc − 1)·ld + MR` floats from `ptr`, as
/// [`APanel::cols`] checks); `b` must describe `kc` readable steps (its constructors check
/// that); each of the first `MR` pointers in `c` must be valid for reading and writing `NR`
/// floats, with no two rows overlapping.
#[inline(always)]
pub(crate) unsafe fn microkernel<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    a: APanel,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller: all MR rows, from row 0.
    unsafe { rows_from::<S, MR, MR, NV>(s, kc, a, 0, b, c, alpha, accumulate) }
}

/// Rows `first .. first + R` of an `MR`-row A tile, whichever form it takes, through the
/// `R`-row kernel: the whole tile (`R = MR`, `first = 0`) or a piece of an edge tile.
///
/// # Safety
/// As [`microkernel`] for those rows: `first + R ≤ MR`, and `c`/`alpha` already start at row
/// `first`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_from<S: Simd, const MR: usize, const R: usize, const NV: usize>(
    s: S,
    kc: usize,
    a: APanel,
    first: usize,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller; the packed tile keeps its MR-float step, offset to
    // row `first`; the row form takes the pointers of rows `first ..`.
    unsafe {
        match a {
            APanel::Packed(ptr) => kernel::<S, R, NV, _>(s, kc, PackedA::<MR>(ptr.add(first)), b, c, alpha, accumulate),
            APanel::Rows(rows) => {
                let rows = RowsA::<R>(std::array::from_fn(|r| rows.row(first + r)));
                kernel::<S, R, NV, _>(s, kc, rows, b, c, alpha, accumulate)
            }
            APanel::Cols { ptr, ld } => {
                kernel::<S, R, NV, _>(s, kc, ColsA { ptr: ptr.add(first), ld }, b, c, alpha, accumulate)
            }
        }
    }
}

/// [`microkernel`] for only the first `rows` rows of an `MR`-row A tile (`rows < MR`, the
/// edge of a product whose row count MR does not divide): pieces of 4, 2 and 1 rows, so an
/// edge tile of 2 rows costs 2 rows of multiply-adds, not MR. Each row's sum is taken in the
/// same order as in a full tile, so results do not depend on where the edge falls.
///
/// The rows are stored, not accumulated: a tile that is added to C goes through a buffer.
///
/// # Safety
/// As [`microkernel`] (which this reads only the first `rows` rows of), `rows < MR`.
#[inline(always)]
unsafe fn edge_microkernel<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    rows: usize,
    a: APanel,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
) {
    debug_assert!(rows < MR);
    let mut i = 0;
    // Only the first piece prefetches what comes next; the others would fetch it again.
    let quiet = BPanel { ahead_lines: 0, ..b };
    while i < rows {
        let b = if i == 0 { b } else { quiet };
        let left = rows - i;
        // SAFETY: rows i.. of the tile are among its first `rows` (caller's contract); the
        // piece reads A rows, and writes C rows, i .. i + piece only.
        i += unsafe {
            if left >= 4 {
                rows_piece::<S, MR, NV, 4>(s, kc, i, a, b, c, alpha)
            } else if left >= 2 {
                rows_piece::<S, MR, NV, 2>(s, kc, i, a, b, c, alpha)
            } else {
                rows_piece::<S, MR, NV, 1>(s, kc, i, a, b, c, alpha)
            }
        };
    }
}

/// The tile for the first `rows` rows (at most `MR`) and `vectors` column vectors (at most
/// `NV`) of an `MR × NV` tile: the edge of a product that `MR` or `NR` does not divide. Only
/// the vectors that hold columns are computed, so an 8-column product (the router of 8
/// experts) costs one vector of multiply-adds per step on a 4-vector tile, not four. Each
/// element's sum is taken in the same order as in a full tile, so results do not depend on
/// where the edge falls.
///
/// # Safety
/// As [`microkernel`] (which this reads the first `rows` rows and `vectors` vectors of).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn edge_tile<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    rows: usize,
    vectors: usize,
    a: APanel,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
) {
    debug_assert!(rows <= MR && (1..=NV).contains(&vectors));
    // SAFETY: forwarded from the caller; each narrower kernel reads and writes a prefix of what
    // the full tile would.
    unsafe {
        match vectors {
            1 if NV > 1 => tile_rows::<S, MR, 1>(s, kc, rows, a, b, c, alpha),
            2 if NV > 2 => tile_rows::<S, MR, 2>(s, kc, rows, a, b, c, alpha),
            3 if NV > 3 => tile_rows::<S, MR, 3>(s, kc, rows, a, b, c, alpha),
            _ => tile_rows::<S, MR, NV>(s, kc, rows, a, b, c, alpha),
        }
    }
}

/// The first `rows` rows of an `MR × NV` tile, stored (not accumulated) into `c`.
///
/// # Safety
/// As [`edge_tile`] with `vectors = NV`.
#[inline(always)]
unsafe fn tile_rows<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    kc: usize,
    rows: usize,
    a: APanel,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if rows < MR {
            edge_microkernel::<S, MR, NV>(s, kc, rows, a, b, c, alpha)
        } else {
            microkernel::<S, MR, NV>(s, kc, a, b, c, alpha, false)
        }
    }
}

/// Rows `i .. i + R` of an `MR`-row tile through an `R`-row kernel, stored; returns `R`.
///
/// # Safety
/// As [`edge_microkernel`], `i + R` at most the rows it was given.
#[inline(always)]
unsafe fn rows_piece<S: Simd, const MR: usize, const NV: usize, const R: usize>(
    s: S,
    kc: usize,
    i: usize,
    a: APanel,
    b: BPanel,
    c: &[*mut f32; MAX_MR],
    alpha: &[f32; MAX_MR],
) -> usize {
    let c: [*mut f32; MAX_MR] = std::array::from_fn(|r| c.get(i + r).copied().unwrap_or(std::ptr::null_mut()));
    let alpha: [f32; MAX_MR] = std::array::from_fn(|r| alpha.get(i + r).copied().unwrap_or(0.0));
    // SAFETY: forwarded from the caller; `c` and `alpha` now start at row i.
    unsafe { rows_from::<S, MR, R, NV>(s, kc, a, i, b, &c, &alpha, false) };
    R
}

/// `kc` steps of an MR-row tile of A as the micro-kernel reads it: packed (row `i` of step `p`
/// at `ptr + p·MR + i`), in place from MR rows whose K steps are contiguous (row `i` of step
/// `p` at `rows.row(i) + p`; rows past the tile's last read zeros), or in place from a
/// column-major view (row `i` of step `p` at `ptr + p·ld + i`). Built only by the checked
/// constructors [`APanel::rows`] and [`APanel::cols`] or from a packed buffer the driver sized.
#[derive(Clone, Copy)]
pub(crate) enum APanel {
    Packed(*const f32),
    Rows(TileRows),
    /// In place from a column-major view (`Xᵀ` of a row-major `X`): row `i` of step `p` at
    /// `ptr + p·ld + i`.
    Cols {
        ptr: *const f32,
        ld: usize,
    },
}

/// Where each row of an A tile read in place starts: row `i < rows` at
/// `start + r_i·stride`, with `r_i = index[i]` for gathered rows, else `i`.
///
/// A few words rather than an array of MR pointers: the pointers are computed where the
/// micro-kernel loads them. An array built with scalar stores and then moved as a value
/// (through the `Option` and `match` around each tile) was copied with vector loads that
/// cannot be forwarded from those stores; on Zen 5 the stall took 12 % of the time of every
/// in-place product (a grouped down-projection ran 1.09–1.19× its dense equivalent).
#[derive(Clone, Copy)]
pub(crate) struct TileRows {
    start: *const f32,
    /// The tile's slice of the row index, or null when rows are not gathered.
    index: *const u32,
    stride: usize,
    rows: usize,
}

impl TileRows {
    /// Row `i` of the tile: a pointer into A for `i < rows`, the zeros past them.
    ///
    /// # Safety
    /// The `TileRows` came from [`APanel::rows`], which checked every row below `rows`.
    #[inline(always)]
    unsafe fn row(&self, i: usize) -> *const f32 {
        if i >= self.rows {
            return ZEROS.as_ptr();
        }
        // SAFETY: `APanel::rows` checked index[i] (i < rows) is readable.
        let r = if self.index.is_null() { i } else { unsafe { *self.index.add(i) as usize } };
        // Wrapping: the offset stays inside A's buffer (checked when the tile was built).
        self.start.wrapping_add(r * self.stride)
    }
}

impl APanel {
    /// A read in place: rows `row0..row0+rows` (at most MR; the rest of the tile reads zeros),
    /// steps `col0..col0+kc`, of a view whose K steps are contiguous (column stride 1, columns
    /// not gathered; rows may be). `None` for any other view, so the caller packs instead.
    /// Every row is checked against A's buffer here, so the rows the tile reads are in bounds.
    #[inline(always)]
    pub(crate) fn rows(a: &MatRef<'_>, row0: usize, rows: usize, col0: usize, kc: usize) -> Option<APanel> {
        if a.col_stride != 1 || a.col_index.is_some() || kc > ZEROS.len() || rows > MAX_MR {
            return None;
        }
        let (start, index) = match a.row_index {
            Some(index) => (col0, index.get(row0..row0 + rows)?.as_ptr()),
            None => (row0 * a.row_stride + col0, std::ptr::null()),
        };
        for i in 0..rows {
            let start = a.row_offset(row0 + i) + col0;
            a.data.get(start..start + kc)?;
        }
        Some(APanel::Rows(TileRows { start: a.data.as_ptr().wrapping_add(start), index, stride: a.row_stride, rows }))
    }

    /// A read in place from a column-major view (row stride 1, no index lists: `Xᵀ`): the tile
    /// of `mr` rows from `row0` (inside the view), steps `col0..col0+kc`, each step's values
    /// contiguous. The kernel reads all `mr` rows of each step, so this is `None` unless they
    /// all lie inside the view's buffer: the last is `(row0 + mr − 1) + (col0 + kc − 1)·ld`.
    /// Rows of an edge tile past the view's last read other floats of the buffer, which the
    /// edge kernel ([`edge_microkernel`]) never uses.
    #[inline(always)]
    pub(crate) fn cols(a: &MatRef<'_>, row0: usize, mr: usize, col0: usize, kc: usize) -> Option<APanel> {
        if a.row_stride != 1 || a.row_index.is_some() || a.col_index.is_some() || kc == 0 || row0 >= a.rows {
            return None;
        }
        let (first, ld) = (row0 + col0 * a.col_stride, a.col_stride);
        let last = row0 + mr - 1 + (col0 + kc - 1) * ld;
        (last < a.data.len()).then(|| APanel::Cols { ptr: a.data[first..].as_ptr(), ld })
    }
}

/// How the micro-kernel reads one element of its A tile; one implementation per [`APanel`]
/// form, so each is its own monomorphised loop.
trait ATile: Copy {
    /// Row `i` of step `p` from the current position.
    ///
    /// # Safety
    /// The position plus `p` must be inside the tile's `kc` steps.
    unsafe fn at(&self, i: usize, p: usize) -> f32;
    /// The position `steps` further on.
    ///
    /// # Safety
    /// As for [`ATile::at`].
    unsafe fn advanced(self, steps: usize) -> Self;
}

#[derive(Clone, Copy)]
struct PackedA<const MR: usize>(*const f32);

impl<const MR: usize> ATile for PackedA<MR> {
    #[inline(always)]
    unsafe fn at(&self, i: usize, p: usize) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { *self.0.add(p * MR + i) }
    }
    #[inline(always)]
    unsafe fn advanced(self, steps: usize) -> Self {
        // SAFETY: forwarded from the caller.
        PackedA(unsafe { self.0.add(steps * MR) })
    }
}

#[derive(Clone, Copy)]
struct RowsA<const MR: usize>([*const f32; MR]);

impl<const MR: usize> ATile for RowsA<MR> {
    #[inline(always)]
    unsafe fn at(&self, i: usize, p: usize) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { *self.0[i].add(p) }
    }
    #[inline(always)]
    unsafe fn advanced(self, steps: usize) -> Self {
        // SAFETY: forwarded from the caller (each row pointer stays inside its row).
        RowsA(self.0.map(|r| unsafe { r.add(steps) }))
    }
}

#[derive(Clone, Copy)]
struct ColsA {
    ptr: *const f32,
    ld: usize,
}

impl ATile for ColsA {
    #[inline(always)]
    unsafe fn at(&self, i: usize, p: usize) -> f32 {
        // SAFETY: forwarded from the caller.
        unsafe { *self.ptr.add(p * self.ld + i) }
    }
    #[inline(always)]
    unsafe fn advanced(self, steps: usize) -> Self {
        // Wrapping: after the last step this points up to `ld` floats past the view's buffer,
        // where it is never read.
        ColsA { ptr: self.ptr.wrapping_add(steps * self.ld), ld: self.ld }
    }
}

/// [`microkernel`] for one form of A.
///
/// # Safety
/// As [`microkernel`].
#[inline(always)]
unsafe fn kernel<S: Simd, const MR: usize, const NV: usize, A: ATile>(
    s: S,
    kc: usize,
    a: A,
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
    let (mut ahead, mut ahead_lines) = (b.ahead, b.ahead_lines);
    let (mut a, mut b, b_stride) = (a, b.ptr, b.stride);
    // One step of K (step `p` from A's position): NV loads of B, MR broadcasts of A, MR·NV FMAs.
    #[inline(always)]
    unsafe fn step<S: Simd, const MR: usize, const NV: usize, A: ATile>(
        s: S,
        a: A,
        p: usize,
        b: *const f32,
        acc: &mut [[S::V; NV]; MR],
    ) {
        // SAFETY: b points at one step (NR floats) of a B panel.
        let bv: [S::V; NV] = std::array::from_fn(|v| unsafe { s.load(b.add(v * S::LANES)) });
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: step p of the A tile is inside its kc steps.
            let av = s.splat(unsafe { a.at(i, p) });
            for (r, &bv) in row.iter_mut().zip(&bv) {
                *r = s.mul_add(av, bv, *r);
            }
        }
    }
    // Unrolled by 4 so the loop branch and pointer updates are amortised. (Software prefetch
    // of B 8 or 16 steps ahead measured no different on Zen 5: the hardware prefetcher follows
    // the packed panels once they are in L2. What it cannot do is fetch the next panel from
    // memory in time, a page at a time; that is `ahead`.)
    for _ in 0..kc / 4 {
        if ahead_lines > 0 {
            s.prefetch(ahead);
            ahead = ahead.wrapping_add(LINE);
            ahead_lines -= 1;
        }
        // SAFETY: four steps remain in both panels.
        unsafe {
            step::<S, MR, NV, A>(s, a, 0, b, &mut acc);
            step::<S, MR, NV, A>(s, a, 1, b.add(b_stride), &mut acc);
            step::<S, MR, NV, A>(s, a, 2, b.add(2 * b_stride), &mut acc);
            step::<S, MR, NV, A>(s, a, 3, b.add(3 * b_stride), &mut acc);
            a = a.advanced(4);
            // Wrapping: after the last step an in-place panel's pointer can pass its buffer.
            b = b.wrapping_add(4 * b_stride);
        }
    }
    for _ in 0..kc % 4 {
        // SAFETY: one step remains in both panels.
        unsafe {
            step::<S, MR, NV, A>(s, a, 0, b, &mut acc);
            a = a.advanced(1);
            b = b.wrapping_add(b_stride);
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
