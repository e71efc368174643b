//! Packing: copying blocks of A and B into the layouts the micro-kernel streams through.
//!
//! This is where gathered views cost nothing extra: the packing reads every element once
//! anyway, so reading row `index[i]` instead of row `i` is the whole price of a gather.

use super::view::MatRef;
use crate::simd::{prefetch_run, with_simd, Simd, SimdTask};
use crate::Isa;

/// Packs `a[rows, cols]` for `rows = row0..row0+mc`, `cols = col0..col0+kc` into `mr`-row
/// panels: panel `q` holds element `(q·mr + i, p)` at `q·kc·mr + p·mr + i`. Rows past `mc` in the
/// last panel are zero.
pub(crate) fn pack_a(dst: &mut [f32], a: &MatRef<'_>, row0: usize, mc: usize, col0: usize, kc: usize, mr: usize) {
    let panels = mc.div_ceil(mr);
    debug_assert!(dst.len() >= panels * kc * mr);
    if a.row_index.is_none() && a.row_stride == 1 && a.col_index.is_some() && mc > 0 {
        // Column-major source with gathered K (`Xᵀ` of the rows routed to an expert: its weight
        // gradient): each step is a row of X somewhere in memory, so read it once, fetched
        // ahead, and deal it out MR at a time. Panel by panel, every panel looked the row up
        // and waited on it again: a quarter of a 64-expert layer's `Xᵀ·dZ` (6.6 -> 5.6 ms).
        // (Those rows are too short a read for the hardware prefetcher. Without a gather, the
        // panel-by-panel copy below measured slightly faster.)
        const AHEAD: usize = 8;
        for p in 0..kc {
            if p + AHEAD < kc {
                let next = a.col_offset(col0 + p + AHEAD) + row0;
                prefetch_run(&a.data[next..next + mc]);
            }
            let co = a.col_offset(col0 + p) + row0;
            let column = &a.data[co..co + mc];
            for (q, rows) in column.chunks(mr).enumerate() {
                let out = &mut dst[q * kc * mr + p * mr..q * kc * mr + (p + 1) * mr];
                if rows.len() == mr {
                    copy_short(out, rows);
                } else {
                    out[..rows.len()].copy_from_slice(rows);
                    out[rows.len()..].fill(0.0);
                }
            }
        }
        return;
    }
    let mut row_offsets = [0usize; 32];
    for q in 0..panels {
        let dst = &mut dst[q * kc * mr..(q + 1) * kc * mr];
        let valid = mr.min(mc - q * mr);
        for (i, off) in row_offsets.iter_mut().enumerate().take(valid) {
            *off = a.row_offset(row0 + q * mr + i);
        }
        if a.col_index.is_none() && a.col_stride == 1 && kc <= ZEROS.len() {
            // Row-major source (gathered or not): interleave MR contiguous rows.
            let row = |i: usize| {
                if i < valid {
                    &a.data[row_offsets[i] + col0..row_offsets[i] + col0 + kc]
                } else {
                    &ZEROS[..kc]
                }
            };
            match mr {
                2 => interleave::<2>(dst, std::array::from_fn(row), kc),
                4 => interleave::<4>(dst, std::array::from_fn(row), kc),
                6 => interleave::<6>(dst, std::array::from_fn(row), kc),
                8 => interleave::<8>(dst, std::array::from_fn(row), kc),
                12 => interleave::<12>(dst, std::array::from_fn(row), kc),
                14 => interleave::<14>(dst, std::array::from_fn(row), kc),
                _ => {
                    for i in 0..mr {
                        for (p, &x) in row(i).iter().enumerate() {
                            dst[p * mr + i] = x;
                        }
                    }
                }
            }
            continue;
        }
        if a.row_index.is_none() && a.row_stride == 1 && valid == mr {
            // Column-major source (Xᵀ): each step's MR values are contiguous, so copy them as
            // one short block instead of MR strided reads.
            let base = row_offsets[0];
            for p in 0..kc {
                let co = base + a.col_offset(col0 + p);
                copy_short(&mut dst[p * mr..(p + 1) * mr], &a.data[co..co + mr]);
            }
            continue;
        }
        for p in 0..kc {
            let co = a.col_offset(col0 + p);
            for (i, &off) in row_offsets.iter().enumerate().take(valid) {
                dst[p * mr + i] = a.data[off + co];
            }
        }
        if valid < mr {
            for p in 0..kc {
                dst[p * mr + valid..(p + 1) * mr].fill(0.0);
            }
        }
    }
}

/// Zero padding for the missing rows of a partial A tile, packed or read in place (KC never
/// exceeds this).
pub(crate) static ZEROS: [f32; super::blocking::MAX_KC] = [0.0; super::blocking::MAX_KC];

/// `dst[p·MR + i] = rows[i][p]`: MR rows of length `kc`, interleaved. With the row count a
/// constant and every row sliced to `kc`, the compiler drops the bounds checks and keeps the
/// MR read streams in registers.
#[inline(always)]
fn interleave<const MR: usize>(dst: &mut [f32], rows: [&[f32]; MR], kc: usize) {
    let rows = rows.map(|r| &r[..kc]);
    for (p, out) in dst[..kc * MR].chunks_exact_mut(MR).enumerate() {
        for i in 0..MR {
            out[i] = rows[i][p];
        }
    }
}

/// Packs one `nr`-column panel of `b`: rows `row0..row0+kc`, columns `col0..col0+nr`, into the
/// first `kc·nr` floats of `dst`, element `(p, j)` at `p·nr + j`, with `isa`'s vector code
/// where it transposes. Columns past the matrix are zero.
pub(crate) fn pack_b_panel(isa: Isa, dst: &mut [f32], b: &MatRef<'_>, row0: usize, kc: usize, col0: usize, nr: usize) {
    let valid = nr.min(b.cols - col0);
    debug_assert!(dst.len() >= kc * nr);
    if b.col_index.is_none() && b.col_stride == 1 {
        for (p, out) in dst[..kc * nr].chunks_exact_mut(nr).enumerate() {
            let off = b.row_offset(row0 + p) + col0;
            copy_short(&mut out[..valid], &b.data[off..off + valid]);
            out[valid..].fill(0.0);
        }
    } else {
        let mut col_offsets = [0usize; 64];
        for (j, off) in col_offsets.iter_mut().enumerate().take(valid) {
            *off = b.col_offset(col0 + j);
        }
        if b.row_index.is_none() && b.row_stride == 1 {
            pack_b_columns(isa, dst, b.data, row0, kc, &col_offsets[..valid], nr);
            return;
        }
        for p in 0..kc {
            let ro = b.row_offset(row0 + p);
            let row = &mut dst[p * nr..(p + 1) * nr];
            for (d, &co) in row.iter_mut().zip(&col_offsets[..valid]) {
                *d = b.data[ro + co];
            }
            row[valid..].fill(0.0);
        }
    }
}

/// [`pack_b_panel`] for a B whose columns are contiguous (`Wᵀ` of a row-major `W`, as in
/// `dH·W1ᵀ`): column `j` of the panel is `data[col_offsets[j] + row0 ..][..kc]`. Read row by
/// row, every element would come from a different column — 4 KiB apart for 1024-float rows,
/// all in one L1 set, so each read missed (measured: 16 % of `dH·W1ᵀ`). Instead the panel is
/// copied in blocks of 16 steps × 8 columns (8 lines read, each used 16 times), each block as
/// two 8 × 8 transposes in registers: element by element, the one store per float was a third
/// of a 64-expert layer's `dZ·Wᵀ`.
fn pack_b_columns(isa: Isa, dst: &mut [f32], data: &[f32], row0: usize, kc: usize, col_offsets: &[usize], nr: usize) {
    with_simd(isa, PackColumns { dst, data, row0, kc, col_offsets, nr })
}

/// One [`pack_b_columns`] call, run on an instruction set's vector code.
struct PackColumns<'a> {
    dst: &'a mut [f32],
    data: &'a [f32],
    row0: usize,
    kc: usize,
    col_offsets: &'a [usize],
    nr: usize,
}

impl SimdTask for PackColumns<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        const STEPS: usize = 16;
        const COLS: usize = 8;
        let PackColumns { dst, data, row0, kc, col_offsets, nr } = self;
        let valid = col_offsets.len();
        assert!(dst.len() >= kc * nr && valid <= nr, "pack_b_columns: panel buffer too small");
        for p0 in (0..kc).step_by(STEPS) {
            let steps = STEPS.min(kc - p0);
            for j0 in (0..valid).step_by(COLS) {
                let cols = COLS.min(valid - j0);
                let columns: [&[f32]; COLS] = std::array::from_fn(|jj| match col_offsets.get(j0 + jj) {
                    Some(&off) if jj < cols => &data[off + row0 + p0..off + row0 + p0 + steps],
                    _ => &[],
                });
                let mut p = 0;
                if cols == COLS {
                    while p + 8 <= steps {
                        let src = columns.map(|c| c[p..p + 8].as_ptr());
                        let at = (p0 + p) * nr + j0;
                        // SAFETY: each column slice was cut to `steps` floats and p + 8 <=
                        // steps; dst rows p0 + p .. p0 + p + 8 end at (p0 + p + 7)·nr + j0 + 8
                        // <= kc·nr <= dst.len(), as j0 + 8 <= valid <= nr.
                        unsafe { s.transpose8(src, dst[at..].as_mut_ptr(), nr) };
                        p += 8;
                    }
                }
                for (jj, column) in columns.iter().enumerate().take(cols) {
                    for (pp, &x) in column.iter().enumerate().skip(p) {
                        dst[(p0 + pp) * nr + j0 + jj] = x;
                    }
                }
            }
            for p in p0..p0 + steps {
                dst[p * nr + valid..(p + 1) * nr].fill(0.0);
            }
        }
    }
}

/// How many rows ahead [`pack_b_block`] fetches a row-major B. A row of a thread's share of a
/// wide B is often a page or less, and the hardware prefetcher starts over on every page, so
/// without this the copy waits on memory row after row: in a dense layer's weight gradient
/// `Xᵀ·dZ` (512 × 4096 × 2048 on 2 threads) the packing took 8–9 % of the product under perf,
/// 6 % with it, and the product ran 2–5 % faster; 32 rows measured the same as 16.
const B_ROWS_AHEAD: usize = 16;

/// Packs `panels` consecutive NR-column panels of `b` (rows `row0..row0+kc`, columns from
/// `col0`) into `dst`, panel `q` at `q·kc·nr`. A row-major B is read row by row, each row
/// contiguously: panel by panel, every 64-byte read would start a new row — a new page when the
/// row stride is 4 KiB or more — and hardware prefetchers do not cross pages (measured: a
/// 64-expert layer spent a fifth of its time waiting on those reads). Every panel must start
/// inside the matrix (`col0 + (panels − 1)·nr < cols`), as the drivers' panel counts ensure.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_b_block(
    isa: Isa,
    dst: &mut [f32],
    b: &MatRef<'_>,
    row0: usize,
    kc: usize,
    col0: usize,
    panels: usize,
    nr: usize,
) {
    debug_assert!(dst.len() >= panels * kc * nr);
    debug_assert!(panels == 0 || col0 + (panels - 1) * nr < b.cols, "a panel starts past the matrix");
    if b.col_index.is_some() || b.col_stride != 1 {
        for (q, panel) in dst.chunks_mut(kc * nr).take(panels).enumerate() {
            pack_b_panel(isa, panel, b, row0, kc, col0 + q * nr, nr);
        }
        return;
    }
    let width = (panels * nr).min(b.cols - col0);
    for p in 0..kc {
        if p + B_ROWS_AHEAD < kc {
            let next = b.row_offset(row0 + p + B_ROWS_AHEAD) + col0;
            prefetch_run(&b.data[next..next + width]);
        }
        let off = b.row_offset(row0 + p) + col0;
        let src = &b.data[off..off + width];
        for (q, seg) in src.chunks(nr).enumerate() {
            let out = &mut dst[q * kc * nr + p * nr..q * kc * nr + (p + 1) * nr];
            copy_short(&mut out[..seg.len()], seg);
            out[seg.len()..].fill(0.0);
        }
    }
}

/// `dst.copy_from_slice(src)` for one panel row (NR = 8 … 64 floats) or one step of an A panel
/// (MR = 2 … 14 floats). With the length a constant in each arm the copy is a few vector moves;
/// a plain copy — or an element loop, which the compiler turns back into one — is a call to
/// `memcpy` (measured: 6 % of a 64-expert forward, two million calls; and 2.5 % of a GEMM with
/// NR = 64, whose 256-byte array copy also became a call, hence 16-float pieces).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn fixed<const N: usize>(dst: &mut [f32], src: &[f32]) {
        let d: &mut [f32; N] = dst.try_into().expect("length matched by the caller");
        *d = <[f32; N]>::try_from(src).expect("length matched by the caller");
    }
    match src.len() {
        2 => fixed::<2>(dst, src),
        4 => fixed::<4>(dst, src),
        6 => fixed::<6>(dst, src),
        8 => fixed::<8>(dst, src),
        12 => fixed::<12>(dst, src),
        14 => fixed::<14>(dst, src),
        len if len % 16 == 0 && len <= 64 => {
            for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
                fixed::<16>(d, s);
            }
        }
        24 => {
            fixed::<16>(&mut dst[..16], &src[..16]);
            fixed::<8>(&mut dst[16..], &src[16..]);
        }
        _ => dst.copy_from_slice(src),
    }
}
