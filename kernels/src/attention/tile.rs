//! The register-tiled product every attention tile goes through, and the buffers it works on.
//!
//! `C (+)= A·B` with `A` read one element at a time (so it may be strided either way: a
//! transpose such as `Pᵀ` or `dSᵀ` costs nothing) and `B`, `C` read a vector at a time along
//! their rows. `R` rows of `C` by `NV` vectors are held in registers while the inner dimension
//! streams past: per step, `NV` loads of `B`, `R` broadcasts of `A`, `R·NV` fused multiply-adds.

use crate::simd::Simd;

/// Rows of `C` per register tile.
pub(super) const TILE_ROWS: usize = 4;

/// Columns of `C` per register tile on the instruction set `S` (`NV · LANES`): padded widths of
/// every tile buffer are multiples of it.
#[inline(always)]
pub(super) fn tile_cols<S: Simd>() -> usize {
    vectors::<S>() * S::LANES
}

/// Vectors per register-tile row: 4 of 16 lanes on AVX-512 (16 of its 32 registers hold the
/// tile), 2 of 8 on AVX2 (8 of 16), 1 on the portable path (whose `f32x8` takes two SSE
/// registers).
#[inline(always)]
fn vectors<S: Simd>() -> usize {
    match (S::LANES, S::REGISTERS_PER_VECTOR) {
        (16, _) => 4,
        (_, 2) => 1,
        _ => 2,
    }
}

/// `x` rounded up to a multiple of `to`.
#[inline(always)]
pub(super) fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// An operand read one element at a time: element `(r, p)` is `data[r·row_stride + p·col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub(super) data: &'a [f32],
    pub(super) row_stride: usize,
    pub(super) col_stride: usize,
}

impl<'a> Strided<'a> {
    /// A row-major operand with rows `row_stride` apart.
    pub(super) fn rows(data: &'a [f32], row_stride: usize) -> Self {
        Strided { data, row_stride, col_stride: 1 }
    }

    /// The transpose of a row-major matrix with rows `row_stride` apart.
    pub(super) fn transposed(data: &'a [f32], row_stride: usize) -> Self {
        Strided { data, row_stride: 1, col_stride: row_stride }
    }
}

/// Whether a product replaces `C` or adds to it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Store {
    Replace,
    Add,
}

/// `C[m × n] (+)= A[m × k] · B[k × n]`, where row `p` of `B` is `b[p·b_stride..][..n]` and row `r`
/// of `C` is `c[r·c_stride..][..n]`. `m` must be a multiple of [`TILE_ROWS`] and `n` of
/// [`tile_cols`]; the sum over `p` runs in order `0, 1, …, k-1` for every element, whatever the
/// caller's threading. Panics (a kernel bug) if an operand is too short for the product.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn product<S: Simd>(
    s: S,
    store: Store,
    c: &mut [f32],
    c_stride: usize,
    (m, n, k): (usize, usize, usize),
    a: Strided<'_>,
    b: &[f32],
    b_stride: usize,
) {
    match vectors::<S>() {
        4 => product_nv::<S, 4>(s, store, c, c_stride, (m, n, k), a, b, b_stride),
        2 => product_nv::<S, 2>(s, store, c, c_stride, (m, n, k), a, b, b_stride),
        _ => product_nv::<S, 1>(s, store, c, c_stride, (m, n, k), a, b, b_stride),
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn product_nv<S: Simd, const NV: usize>(
    s: S,
    store: Store,
    c: &mut [f32],
    c_stride: usize,
    (m, n, k): (usize, usize, usize),
    a: Strided<'_>,
    b: &[f32],
    b_stride: usize,
) {
    const R: usize = TILE_ROWS;
    let cols = NV * S::LANES;
    assert!(
        m.is_multiple_of(R) && n.is_multiple_of(cols),
        "tile product: {m}x{n} is not a whole number of {R}x{cols} tiles"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * c_stride + n <= c.len(), "tile product: C too short");
    if k > 0 {
        assert!((m - 1) * a.row_stride + (k - 1) * a.col_stride < a.data.len(), "tile product: A too short");
        assert!((k - 1) * b_stride + n <= b.len(), "tile product: B too short");
    }
    let zero = s.splat(0.0);
    for r0 in (0..m).step_by(R) {
        for j0 in (0..n).step_by(cols) {
            let mut acc = [[zero; NV]; R];
            if store == Store::Add {
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: r0 + r < m and j0 + (v+1)·LANES <= n, so the LANES floats lie
                        // within the C extent checked above.
                        *acc = unsafe { s.load(c.as_ptr().add((r0 + r) * c_stride + j0 + v * S::LANES)) };
                    }
                }
            }
            for p in 0..k {
                let mut bv = [zero; NV];
                for (v, bv) in bv.iter_mut().enumerate() {
                    // SAFETY: p < k and j0 + (v+1)·LANES <= n: within the B extent checked above.
                    *bv = unsafe { s.load(b.as_ptr().add(p * b_stride + j0 + v * S::LANES)) };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: r0 + r < m and p < k: within the A extent checked above.
                    let av = s.splat(unsafe { *a.data.get_unchecked((r0 + r) * a.row_stride + p * a.col_stride) });
                    for (acc, &bv) in acc.iter_mut().zip(&bv) {
                        *acc = s.mul_add(av, bv, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (v, &acc) in acc.iter().enumerate() {
                    // SAFETY: as for the loads of C above.
                    unsafe { s.store(c.as_mut_ptr().add((r0 + r) * c_stride + j0 + v * S::LANES), acc) };
                }
            }
        }
    }
}

/// Copies rows `[row0, row0 + rows)` of a `[_, width]` row-major matrix into `dst`
/// (`[_, dst_stride]`), multiplied by `scale`, zero-filling each row's padding and every row
/// from `rows` up to `dst.len() / dst_stride`.
pub(super) fn copy_rows(
    src: &[f32],
    width: usize,
    row0: usize,
    rows: usize,
    scale: f32,
    dst: &mut [f32],
    dst_stride: usize,
) {
    let src = &src[row0 * width..(row0 + rows) * width];
    for (i, dst) in dst.chunks_exact_mut(dst_stride).enumerate() {
        if i < rows {
            for (d, &x) in dst[..width].iter_mut().zip(&src[i * width..(i + 1) * width]) {
                *d = x * scale;
            }
            dst[width..].fill(0.0);
        } else {
            dst.fill(0.0);
        }
    }
}

/// Writes the transpose of rows `[row0, row0 + rows)` of a `[_, width]` row-major matrix into
/// `dst` (`[width, dst_stride]`): `dst[c, j] = src[row0 + j, c]`, zero for `j >= rows`.
pub(super) fn transpose_rows(src: &[f32], width: usize, row0: usize, rows: usize, dst: &mut [f32], dst_stride: usize) {
    let src = &src[row0 * width..(row0 + rows) * width];
    for (col, dst) in dst.chunks_exact_mut(dst_stride).take(width).enumerate() {
        for (j, d) in dst.iter_mut().enumerate() {
            *d = if j < rows { src[j * width + col] } else { 0.0 };
        }
    }
}
