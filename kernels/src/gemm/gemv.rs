//! Batch-1 products (`m = 1`), the decode case: `y = alpha · a · B`.
//!
//! A GEMM would pack all of B for one row of output, reading and writing every weight once more
//! than needed. Here B is streamed exactly once, straight from where it lives, in one of two
//! forms depending on its layout:
//! - *row form* (B's rows contiguous, `[k, n]` weights): `y += a_p · B[p, ·]`, four rows of B at a
//!   time into a cache-resident chunk of `y`;
//! - *column form* (B's columns contiguous, unit-major `[n, k]` weights, i.e. `x · Wᵀ`):
//!   `y_j = ⟨a, B[·, j]⟩`, four columns at a time.
//!
//! Threads split the columns; every `y_j` is summed in the same order whatever the split.

use super::driver::PARALLEL_MIN_MACS;
use super::epilogue::{finish_row, Accum, Epilogue};
use super::view::{MatMut, MatRef};
use crate::simd::{prefetch_l2, with_simd, Simd, SimdTask};
use crate::threading::{for_each_task, Par, SendPtr};
use crate::Isa;

/// Columns of `y` per chunk of the skinny form (`SKINNY_MAX_ROWS` rows of 2 KiB stay in L1
/// while B streams past).
pub(crate) const CHUNK: usize = 512;
/// Columns per chunk of the skinny form for `m` rows: the `SKINNY_MAX_ROWS × CHUNK` floats of
/// `y` shared out, so fewer rows take wider chunks (a multiple of 64 columns). Each row of B is
/// read as one run of this many floats, so an expert's 1024-wide up-projection at one or two
/// rows reads each 4 KiB row whole instead of as two 2 KiB halves (about 2 % less CPU time per
/// decode call, measured interleaved). Which columns share a chunk does not change any `y_j`'s
/// arithmetic.
pub(crate) fn skinny_chunk(m: usize) -> usize {
    (SKINNY_MAX_ROWS * CHUNK / m.max(1)) / 64 * 64
}
/// Below this many multiply-adds a GEMV runs on the calling thread: a quarter of the GEMM's
/// [`PARALLEL_MIN_MACS`], because a GEMV reads every weight from memory for a single
/// multiply-add, so each of its multiply-adds costs several of a packed GEMM's and a fork/join
/// pays off on a smaller product.
const GEMV_PARALLEL_MIN_MACS: usize = PARALLEL_MIN_MACS / 4;
/// Columns of `y` per work item of the one-row form (8 KiB of `y` in L1). Wide, because each
/// row of B is read as one run of this many floats: with 2 KiB runs 16 KiB apart the hardware
/// prefetcher kept restarting, and a GEMV from memory reached about 0.7 of the stream
/// bandwidth. Which columns share a chunk does not change any `y_j`'s arithmetic.
const GEMV_CHUNK: usize = 2048;

/// Which streaming form fits B's layout, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemvForm {
    Rows,
    Cols,
}

/// The form for `b`, or `None` when B is strided both ways (then the packed GEMM is used).
pub(crate) fn form_of(b: &MatRef<'_>) -> Option<GemvForm> {
    if b.col_stride == 1 && b.col_index.is_none() {
        Some(GemvForm::Rows)
    } else if b.row_stride == 1 && b.row_index.is_none() {
        Some(GemvForm::Cols)
    } else {
        None
    }
}

/// `c ← accum(c, epilogue(alpha · a · b))` for a one-row `a`; shapes already checked.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    isa: Isa,
    c: MatMut<'_>,
    accum: Accum,
    a: MatRef<'_>,
    b: MatRef<'_>,
    alpha: f32,
    epilogue: &Epilogue<'_>,
    form: GemvForm,
    par: Par,
) {
    let (n, k) = (b.cols, b.rows);
    let x: Vec<f32> = (0..k).map(|p| a.get(0, p)).collect();
    let c_row = c.row_offset(0);
    let task = Gemv {
        x: &x,
        b,
        c: SendPtr(c.data.as_mut_ptr()),
        c_row,
        c_col_stride: c.col_stride,
        accum,
        alpha,
        epilogue,
        form,
        scale: epilogue.row_scale.map(|s| s[0]),
    };
    let chunks = n.div_ceil(GEMV_CHUNK);
    let work = |ch: usize| {
        with_simd(isa, ChunkTask { gemv: &task, j0: ch * GEMV_CHUNK, len: GEMV_CHUNK.min(n - ch * GEMV_CHUNK) })
    };
    if par == Par::Rayon && n * k >= GEMV_PARALLEL_MIN_MACS && chunks > 1 {
        // A GEMV streams its weights in well under a millisecond: the calling thread takes
        // part rather than sleeping through the pool's wake-ups (`for_each_task`). From
        // memory, 1×1024×4096 weights in a ring interleaved with a plain read in one process:
        // 1.06–1.14 → 1.11–1.24 of the read's rate, wall-clock.
        let _ = for_each_task(chunks, |ch| {
            work(ch);
            Ok::<(), ()>(())
        });
    } else {
        (0..chunks).for_each(work);
    }
}

struct Gemv<'a> {
    x: &'a [f32],
    b: MatRef<'a>,
    c: SendPtr,
    c_row: usize,
    c_col_stride: usize,
    accum: Accum,
    alpha: f32,
    epilogue: &'a Epilogue<'a>,
    form: GemvForm,
    scale: Option<f32>,
}

struct ChunkTask<'a> {
    gemv: &'a Gemv<'a>,
    j0: usize,
    len: usize,
}

impl SimdTask for ChunkTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let ChunkTask { gemv: g, j0, len } = self;
        let mut y = [0.0f32; GEMV_CHUNK];
        let y = &mut y[..len];
        match g.form {
            GemvForm::Rows => rows_form(s, g.x, &g.b, j0, y),
            GemvForm::Cols => cols_form(s, g.x, &g.b, j0, y),
        }
        if g.alpha != 1.0 {
            y.iter_mut().for_each(|v| *v *= g.alpha);
        }
        let epi = g.epilogue;
        if !epi.is_identity() {
            let bias = epi.bias.map(|b| b[j0..j0 + len].as_ptr());
            // SAFETY: y has `len` floats; bias[j0..j0+len] was sliced above.
            unsafe { finish_row(s, y.as_mut_ptr(), len, bias, epi.activation, g.scale) };
        }
        for (j, &v) in y.iter().enumerate() {
            // SAFETY: (0, j0 + j) is inside the C view checked at the entry point; chunks are
            // disjoint, so no other thread writes this element.
            let dst = unsafe { &mut *g.c.0.add(g.c_row + (j0 + j) * g.c_col_stride) };
            *dst = match g.accum {
                Accum::Replace => v,
                Accum::Add => *dst + v,
            };
        }
    }
}

/// `y = x · B[:, j0..j0+len]` with B's rows contiguous.
#[inline(always)]
fn rows_form<S: Simd>(s: S, x: &[f32], b: &MatRef<'_>, j0: usize, y: &mut [f32]) {
    let len = y.len();
    let lanes = S::LANES;
    let full = len - len % lanes;
    let row = |p: usize| &b.data[b.row_offset(p) + j0..b.row_offset(p) + j0 + len];
    let k = x.len();
    let mut p = 0;
    while p < k {
        let group = 4.min(k - p);
        let rows: [&[f32]; 4] = std::array::from_fn(|g| row(p + g.min(group - 1)));
        let xs: [f32; 4] = std::array::from_fn(|g| if g < group { x[p + g] } else { 0.0 });
        let xv = xs.map(|v| s.splat(v));
        // A row of B here is a run of up to 8 KiB, the next row's run 16 KiB further on.
        // From memory (1×1024×4096 weights, a ring four times L3, against a plain read of the
        // same bytes, interleaved; Zen 4, builds before and after alternating): 0.84-0.86 of
        // the read without prefetching, 0.90-0.92 with [`prefetch_ahead`].
        let (next, after_next) = (rows_ahead(&row, &rows, p, 4, k), rows_ahead(&row, &rows, p, 8, k));
        for j in (0..full).step_by(lanes) {
            prefetch_ahead(s, &next, &after_next, j);
            // SAFETY: j + lanes <= full <= len, and every row slice and y have len floats.
            unsafe {
                let mut acc = s.load(y.as_ptr().add(j));
                for g in 0..group {
                    acc = s.mul_add(xv[g], s.load(rows[g].as_ptr().add(j)), acc);
                }
                s.store(y.as_mut_ptr().add(j), acc);
            }
        }
        for j in full..len {
            for g in 0..group {
                y[j] = xs[g].mul_add(rows[g][j], y[j]);
            }
        }
        p += group;
    }
}

/// The four rows of B from `p + d` on, as `rows` (the group at `p`) stands for the rows past `k`
/// (fetching a row already read costs nothing): the group `d` rows ahead.
#[inline(always)]
fn rows_ahead<'a>(
    row: &impl Fn(usize) -> &'a [f32],
    rows: &[&'a [f32]; 4],
    p: usize,
    d: usize,
    k: usize,
) -> [&'a [f32]; 4] {
    std::array::from_fn(|g| if p + d + g < k { row(p + d + g) } else { rows[g] })
}

/// Fetches column `j` onwards (one cache line) of the next group's rows from L2 into L1 and of
/// the group after's from memory into L2, while the current group streams. A row of weights
/// is a few KiB at most and hardware prefetchers do not cross pages, so without this every
/// group of rows would begin with demand misses. The two steps measured well ahead of an L1
/// prefetch of the next group alone on Zen 4 ([`rows_form_multi`]); the likely reason is that
/// an L1 prefetch holds one of L1's few miss buffers until its line arrives from memory.
#[inline(always)]
fn prefetch_ahead<S: Simd>(s: S, next: &[&[f32]; 4], after_next: &[&[f32]; 4], j: usize) {
    for (near, far) in next.iter().zip(after_next) {
        s.prefetch(near.as_ptr().wrapping_add(j));
        prefetch_l2(far.as_ptr().wrapping_add(j));
    }
}

/// Most rows the skinny (few-row) form takes: `m` rows of `y` share each load of B.
pub(crate) const SKINNY_MAX_ROWS: usize = 8;

/// `y_i = x_i · B[:, j0..j0+len]` for `m ≤ SKINNY_MAX_ROWS` rows `x_i` (row-major `[m, k]`),
/// B's rows contiguous: the row form with every B vector reused across the `m` rows, so B is
/// streamed once, in row order, however many rows there are. `y` holds `m` rows of `len`
/// floats, row `i` at `i · ld` (`ld ≥ len`), zeroed.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_form_multi<S: Simd>(
    s: S,
    x: &[f32],
    m: usize,
    b: &MatRef<'_>,
    j0: usize,
    len: usize,
    ld: usize,
    y: &mut [f32],
) {
    assert!(ld >= len && y.len() >= m.saturating_sub(1) * ld + len, "rows_form_multi: y too short");
    let k = x.len() / m.max(1);
    let lanes = S::LANES;
    let full = len - len % lanes;
    let row = |p: usize| &b.data[b.row_offset(p) + j0..b.row_offset(p) + j0 + len];
    let mut p = 0;
    while p < k {
        let group = 4.min(k - p);
        let rows: [&[f32]; 4] = std::array::from_fn(|g| row(p + g.min(group - 1)));
        // Rows ahead are fetched while this group streams ([`prefetch_ahead`]). Against a
        // read of the same bytes (config A's decode, medians of 7 rounds, interleaved): on Zen
        // 5 with an L1 prefetch of the next group alone, fetching 4, 8 or 16 rows ahead, 0.63,
        // 0.63, 0.59 of the read, no prefetch 0.35-0.39; on Zen 4 that L1 prefetch reached
        // 0.62-0.65 and the two steps 0.90-0.95 (T=1; at T=8 the call took 0.70 of the time),
        // an L2-only hint 4, 8 or 16 rows ahead 0.85-0.92.
        let (next, after_next) = (rows_ahead(&row, &rows, p, 4, k), rows_ahead(&row, &rows, p, 8, k));
        let mut xv = [[s.splat(0.0); 4]; SKINNY_MAX_ROWS];
        for (i, xi) in xv.iter_mut().enumerate().take(m) {
            for g in 0..group {
                xi[g] = s.splat(x[i * k + p + g]);
            }
        }
        for j in (0..full).step_by(lanes) {
            // SAFETY: j + lanes <= full <= len; every row slice has len floats and every row of
            // y (i·len .. (i+1)·len, i < m) lies inside y.
            unsafe {
                // A loop, not `array::from_fn`: SIMD inside a closure loses the target features.
                let mut bv = [s.splat(0.0); 4];
                for g in 0..4 {
                    bv[g] = s.load(rows[g].as_ptr().add(j));
                }
                prefetch_ahead(s, &next, &after_next, j);
                for (i, xi) in xv.iter().enumerate().take(m) {
                    let at = y.as_mut_ptr().add(i * ld + j);
                    let mut acc = s.load(at);
                    for g in 0..group {
                        acc = s.mul_add(xi[g], bv[g], acc);
                    }
                    s.store(at, acc);
                }
            }
        }
        for i in 0..m {
            for j in full..len {
                for g in 0..group {
                    y[i * ld + j] = x[i * k + p + g].mul_add(rows[g][j], y[i * ld + j]);
                }
            }
        }
        p += group;
    }
}

/// `y_j = ⟨x, B[:, j0 + j]⟩` with B's columns contiguous.
#[inline(always)]
fn cols_form<S: Simd>(s: S, x: &[f32], b: &MatRef<'_>, j0: usize, y: &mut [f32]) {
    let k = x.len();
    let lanes = S::LANES;
    let full = k - k % lanes;
    let col = |j: usize| &b.data[b.col_offset(j0 + j)..b.col_offset(j0 + j) + k];
    let mut j = 0;
    while j < y.len() {
        let group = 4.min(y.len() - j);
        let cols: [&[f32]; 4] = std::array::from_fn(|g| col(j + g.min(group - 1)));
        let mut acc = [s.splat(0.0); 4];
        for p in (0..full).step_by(lanes) {
            // SAFETY: p + lanes <= full <= k; x and every column slice have k floats.
            unsafe {
                let xv = s.load(x.as_ptr().add(p));
                for g in 0..4 {
                    acc[g] = s.mul_add(xv, s.load(cols[g].as_ptr().add(p)), acc[g]);
                }
            }
        }
        for g in 0..group {
            let mut sum = s.reduce_sum(acc[g]);
            for p in full..k {
                sum = x[p].mul_add(cols[g][p], sum);
            }
            y[j + g] = sum;
        }
        j += group;
    }
}
