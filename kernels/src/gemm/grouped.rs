//! Grouped GEMM: many independent products into one output buffer, as one parallel work list.
//!
//! This is the mixture-of-experts kernel. Each problem `g` computes
//! `C[rows_g] ← accum(C[rows_g], epilogue_g(alpha · A_g · B_g))`, where `A_g` may gather its rows
//! (the tokens routed to expert `g`) or its K dimension, `B_g` is that expert's weight matrix,
//! and `rows_g` are rows of the one shared output. Every problem's column slices go
//! into one list that rayon shares out, so a thread never idles on a small expert while
//! another works through a large one — and an expert with no rows costs nothing.
//!
//! A work item is one problem's column slice: it packs its slice of B once per KC step and
//! sweeps all of the problem's row blocks over it, as the dense driver does (loops 4 → 1). A
//! problem of at most eight rows whose B has contiguous rows takes the skinny form instead (B
//! streamed once in row order, every B vector shared by the rows); one of at most MR rows with
//! another layout reads B in place. Packing would touch every weight twice for so few uses.
//!
//! An expert's A rows are read in place when their K steps are contiguous (gathered rows
//! included), and while a work item's tiles run they prefetch the weights it, or the item after
//! it (after the last, what the caller names: [`Gemm::run_grouped_then`]), reads next: a
//! layer's expert weights come from memory, faster than the hardware prefetcher fetches them
//! (see the loop in [`GroupBlock`]'s tile task).

use super::driver::{store_tile, with_buffer, CRows, Call, StoreMode, Tile, PACK_A, PACK_B_SLICE, PARALLEL_MIN_MACS};
use super::epilogue::{finish_row, Accum, Activation, Epilogue};
use super::gemv::{self, SKINNY_MAX_ROWS};
use super::microkernel::{APanel, BPanel};
use super::pack::{pack_a, pack_b_block};
use super::packed::PackedB;
use super::view::{MatMut, MatRef, RowOwners};
use super::{empty_product, Gemm};
use crate::error::{KernelError, Result};
use crate::simd::{with_simd, Simd, SimdTask, TileTask, LINE_FLOATS as LINE};
use crate::threading::{Par, SendPtr};
use rayon::prelude::*;

/// Which rows of the shared output a problem writes.
#[derive(Clone, Copy, Debug)]
pub enum OutRows<'a> {
    /// Rows `start .. start + m` (m = the problem's row count): an expert's contiguous range.
    Range(usize),
    /// Row `index[i]` for product row `i`.
    Index(&'a [u32]),
}

/// One product of a grouped GEMM.
#[derive(Clone, Copy, Debug)]
pub struct GroupProblem<'a> {
    /// `m × k` (rows or K may be gathered).
    pub a: MatRef<'a>,
    /// `k × n`, `n` = the output's column count.
    pub b: MatRef<'a>,
    /// Where the `m` result rows go.
    pub rows: OutRows<'a>,
    /// Bias (length `n`), activation and row scale (length `m`) of this problem.
    pub epilogue: Epilogue<'a>,
    /// `b` already packed ([`PackedB::new`] of the same values), read instead of packing `b`
    /// when it was packed for this call's blocking; `None` packs `b` as usual.
    pub packed_b: Option<&'a PackedB>,
}

const OP: &str = "grouped_gemm";

fn shape_error(detail: String) -> KernelError {
    KernelError::Shape { op: OP, detail }
}

/// Checks shapes, bounds and that no output row is written by two problems.
fn validate(c: &MatMut<'_>, problems: &[GroupProblem<'_>], settings: &Gemm<'_>) -> Result<()> {
    if !settings.epilogue.is_identity() {
        return Err(KernelError::Argument {
            op: OP,
            detail: "put the epilogue on each problem, not on the settings".into(),
        });
    }
    if c.row_index.is_some() {
        return Err(KernelError::Argument { op: OP, detail: "the shared output cannot itself be scattered".into() });
    }
    let claims = problems.iter().fold(0usize, |acc, p| acc.saturating_add(p.a.rows));
    let mut owner = RowOwners::new(c.rows, claims);
    for (g, p) in problems.iter().enumerate() {
        let (m, k, n) = (p.a.rows, p.a.cols, p.b.cols);
        if p.b.rows != k || n != c.cols {
            return Err(shape_error(format!(
                "problem {g}: A is {m}x{k}, B is {}x{n}, output has {} columns",
                p.b.rows, c.cols
            )));
        }
        if let Some(bias) = p.epilogue.bias.filter(|b| b.len() != n) {
            return Err(shape_error(format!("problem {g}: bias has {} elements, output has {n} columns", bias.len())));
        }
        if let Some(packed) = p.packed_b.filter(|pb| (pb.rows(), pb.cols()) != (k, n)) {
            return Err(shape_error(format!(
                "problem {g}: packed B is {}x{}, B is {k}x{n}",
                packed.rows(),
                packed.cols()
            )));
        }
        if let Some(scale) = p.epilogue.row_scale.filter(|s| s.len() != m) {
            return Err(shape_error(format!("problem {g}: row scale has {} elements, A has {m} rows", scale.len())));
        }
        if settings.accum == Accum::Add
            && p.epilogue.activation != Activation::Identity
            && k > settings.blocking_for(settings.isa).kc
        {
            return Err(KernelError::Argument {
                op: OP,
                detail: format!("problem {g}: Accum::Add with an activation needs k <= KC, got k = {k}"),
            });
        }
        let mut claim = |row: usize, position: usize| -> Result<()> {
            if row >= c.rows {
                return Err(KernelError::Index {
                    op: OP,
                    index: row as u64,
                    position,
                    bound: c.rows,
                    note: format!(" (output row of problem {g})"),
                });
            }
            match owner.claim(row, g as u32) {
                Some(first) => Err(KernelError::Argument {
                    op: OP,
                    detail: format!("output row {row} is written by problems {first} and {g}"),
                }),
                None => Ok(()),
            }
        };
        match p.rows {
            OutRows::Range(start) => {
                if start.checked_add(m).is_none_or(|end| end > c.rows) {
                    // Name the first row past the output (and do not overflow computing it).
                    let first_bad = c.rows.max(start);
                    return claim(first_bad, first_bad - start);
                }
                (0..m).try_for_each(|i| claim(start + i, i))?
            }
            OutRows::Index(index) => {
                if index.len() != m {
                    return Err(shape_error(format!("problem {g}: {} output rows for {m} rows of A", index.len())));
                }
                index.iter().enumerate().try_for_each(|(i, &r)| claim(r as usize, i))?
            }
        }
    }
    Ok(())
}

/// One work item: every row of problem `g`, NR panels `panels.0 .. panels.1`.
#[derive(Clone, Copy)]
struct Item {
    g: usize,
    panels: (usize, usize),
}

/// Work items per thread to aim for: enough that uneven experts still share out evenly.
const ITEMS_PER_THREAD: usize = 8;

impl Gemm<'_> {
    /// Runs every problem into the shared output `c` (see the module docs). Results are
    /// bit-identical for any number of threads.
    ///
    /// # Errors
    /// [`KernelError`] for shapes that do not chain, an epilogue of the wrong length, an output
    /// row outside `c` or claimed by two problems, an epilogue on the settings instead of the
    /// problems, or a scattered `c`.
    pub fn run_grouped(&self, c: MatMut<'_>, problems: &[GroupProblem<'_>]) -> Result<()> {
        self.run_grouped_then(c, problems, &[])
    }

    /// The memory a grouped product over `b` (unpacked) reads first: its rows of the first K
    /// slice, when they are one block of memory (a row-major view, or the transpose of one
    /// whose K fits one slice), else nothing. What to pass to [`Gemm::run_grouped_then`]
    /// ahead of that product; for packed weights, [`PackedB::first_panel`].
    pub fn first_read<'b>(&self, b: MatRef<'b>) -> &'b [f32] {
        let bl = self.blocking_for(self.isa.min(crate::Isa::best_supported()));
        leading_rows(&b, bl.kc_for(b.rows).min(b.rows))
    }

    /// [`Gemm::run_grouped`], fetching `next` into cache while the last work item's final
    /// tiles run: memory the caller reads next, so that its misses overlap this call's
    /// multiply-adds instead of stalling the next product. Pass the weights the next product
    /// starts on ([`PackedB::first_panel`]) when running one small product after another, as a
    /// mixture-of-experts layer does with each expert's two projections. Only prefetch
    /// instructions touch `next`; the results are those of [`Gemm::run_grouped`].
    ///
    /// # Errors
    /// As [`Gemm::run_grouped`].
    pub fn run_grouped_then(&self, c: MatMut<'_>, problems: &[GroupProblem<'_>], next: &[f32]) -> Result<()> {
        let isa = self.isa.min(crate::Isa::best_supported());
        let settings = Gemm { isa, ..*self };
        validate(&c, problems, &settings)?;
        let bl = settings.blocking_for(isa);
        let n = c.cols;
        let (row_stride, col_stride) = (c.row_stride, c.col_stride);
        for p in problems.iter().filter(|p| p.a.cols == 0 && p.a.rows > 0) {
            // `validate` checked these rows lie inside `c`.
            let rows = match p.rows {
                OutRows::Range(start) => MatMut {
                    data: &mut c.data[start * row_stride..],
                    rows: p.a.rows,
                    cols: n,
                    row_stride,
                    col_stride,
                    row_index: None,
                },
                OutRows::Index(index) => MatMut {
                    data: &mut *c.data,
                    rows: p.a.rows,
                    cols: n,
                    row_stride,
                    col_stride,
                    row_index: Some(index),
                },
            };
            empty_product(rows, self.accum, &p.epilogue);
        }
        let (c_ptr, c_row_stride, c_col_stride) = (SendPtr(c.data.as_mut_ptr()), c.row_stride, c.col_stride);
        let calls: Vec<Call<'_>> = problems
            .iter()
            .map(|p| Call {
                bl,
                a: p.a,
                c: c_ptr,
                c_row_stride,
                c_col_stride,
                c_rows: match p.rows {
                    OutRows::Range(start) => CRows::Offset(start),
                    OutRows::Index(index) => CRows::Index(index),
                },
                n,
                alpha: self.alpha,
                epilogue: p.epilogue,
                mode: StoreMode::of(self.accum, p.epilogue.activation),
            })
            .collect();
        let macs = problems
            .iter()
            .fold(0usize, |acc, p| acc.saturating_add(p.a.rows.saturating_mul(p.a.cols).saturating_mul(n)));
        let threads = match self.par {
            Par::Rayon if macs >= PARALLEL_MIN_MACS => rayon::current_num_threads(),
            _ => 1,
        };
        let n_panels = n.div_ceil(bl.nr);
        let active = problems.iter().filter(|p| p.a.cols > 0 && p.a.rows > 0).count().max(1);
        let n_chunks =
            if threads > 1 { (ITEMS_PER_THREAD * threads).div_ceil(active).clamp(1, n_panels.max(1)) } else { 1 };
        let per_chunk = n_panels.div_ceil(n_chunks).max(1);
        // A skinny problem streams B; wide column slices keep those streams long.
        let skinny_chunks = threads.div_ceil(active).clamp(1, n_panels.max(1));
        let skinny_per_chunk = n_panels.div_ceil(skinny_chunks).max(1);
        let items: Vec<Item> = problems
            .iter()
            .enumerate()
            .filter(|(_, p)| p.a.cols > 0 && p.a.rows > 0)
            .flat_map(|(g, p)| {
                let (chunks, per) =
                    if is_skinny(p) { (skinny_chunks, skinny_per_chunk) } else { (n_chunks, per_chunk) };
                (0..chunks).filter_map(move |ch| {
                    let (first, last) = (ch * per, ((ch + 1) * per).min(n_panels));
                    (first < last).then_some(Item { g, panels: (first, last) })
                })
            })
            .collect();
        // What an item first reads from memory: the item listed before it (which, under rayon's
        // splitting of a list into contiguous runs, is usually the one its thread ran last)
        // prefetches it.
        let first_read = |i: usize| -> &[f32] {
            let Some(item) = items.get(i) else {
                return if i == items.len() { next } else { &[] };
            };
            let p = &problems[item.g];
            if is_skinny(p) {
                return &[];
            }
            // The first K slice: `kc_for` rounds up to a multiple of 8, the slice stops at K.
            let kc = bl.kc_for(p.a.cols).min(p.a.cols);
            match p.packed_b.filter(|pb| pb.serves(&bl)) {
                Some(pb) => pb.panels(0, kc, item.panels.0, 1),
                None => leading_rows(&p.b, kc),
            }
        };
        let work = |(i, item): (usize, &Item)| {
            let p = &problems[item.g];
            let next_first_read = first_read(i + 1);
            let kc = bl.kc_for(p.a.cols);
            let mc = bl.mc_for(p.a.rows);
            with_buffer(&PACK_A, mc.div_ceil(bl.mr) * bl.mr * kc, |packed_a| {
                with_buffer(&PACK_B_SLICE, (item.panels.1 - item.panels.0) * kc * bl.nr, |packed_b| {
                    let prepacked = p.packed_b.filter(|pb| pb.serves(&bl));
                    let task = GroupBlock {
                        call: &calls[item.g],
                        b: &p.b,
                        prepacked,
                        item: *item,
                        packed_a,
                        packed_b,
                        next_first_read,
                    };
                    with_simd(isa, task)
                })
            })
        };
        if threads > 1 {
            items.par_iter().enumerate().for_each(work);
        } else {
            items.iter().enumerate().for_each(work);
        }
        Ok(())
    }
}

/// Whether a problem takes the skinny form: few rows, B's rows contiguous.
fn is_skinny(p: &GroupProblem<'_>) -> bool {
    p.a.rows <= SKINNY_MAX_ROWS && gemv::form_of(&p.b) == Some(gemv::GemvForm::Rows)
}

/// A problem of at most [`SKINNY_MAX_ROWS`] rows, columns `j_start..j_end`: B streamed once in
/// row order (`gemv.rs`), each chunk of rows finished through the epilogue and stored.
#[inline(always)]
fn skinny<S: Simd>(s: S, call: &Call<'_>, b: &MatRef<'_>, j_start: usize, j_end: usize) {
    let (m, k, a) = (call.a.rows, call.a.cols, &call.a);
    let in_place = a.col_stride == 1 && a.col_index.is_none();
    // The few rows of A as one `m × k` block: read where they lie when they already are one (a
    // decode step's tokens), else gathered once per work item (m·k floats, m ≤ 8: small), a
    // row copied whole when its K steps are contiguous.
    let block = (in_place && a.row_index.is_none() && (m == 1 || a.row_stride == k))
        .then(|| a.data.get(a.row_offset(0)..a.row_offset(0) + m * k))
        .flatten();
    let gathered;
    let x: &[f32] = match block {
        Some(block) => block,
        None => {
            let mut x = vec![0.0f32; m * k];
            for (i, row) in x.chunks_exact_mut(k).enumerate() {
                let start = a.row_offset(i);
                match a.data.get(start..start + k).filter(|_| in_place) {
                    Some(src) => row.copy_from_slice(src),
                    None => row.iter_mut().enumerate().for_each(|(p, v)| *v = a.get(i, p)),
                }
            }
            gathered = x;
            &gathered
        }
    };
    skinny_rows(s, call, b, x, j_start, j_end);
}

/// Floats between the rows of the skinny form's `y`, so that rows 4 KiB long do not alias the
/// B rows streamed past them (4K aliasing stalls each load behind the stores).
const SKINNY_PAD: usize = 16;

#[inline(always)]
fn skinny_rows<S: Simd>(s: S, call: &Call<'_>, b: &MatRef<'_>, x: &[f32], j_start: usize, j_end: usize) {
    let m = call.a.rows;
    let epi = &call.epilogue;
    let mut y = [0.0f32; SKINNY_MAX_ROWS * (gemv::CHUNK + SKINNY_PAD)];
    let width = gemv::skinny_chunk(m);
    for j0 in (j_start..j_end).step_by(width) {
        let len = width.min(j_end - j0);
        let ld = len + SKINNY_PAD;
        let y = &mut y[..m * ld];
        y.fill(0.0);
        gemv::rows_form_multi(s, x, m, b, j0, len, ld, y);
        for (i, row) in y.chunks_mut(ld).map(|r| &mut r[..len]).enumerate() {
            if call.alpha != 1.0 {
                row.iter_mut().for_each(|v| *v *= call.alpha);
            }
            if !epi.is_identity() {
                let bias = epi.bias.map(|bias| bias[j0..j0 + len].as_ptr());
                let scale = epi.row_scale.map(|sc| sc[i]);
                // SAFETY: row has len floats; bias[j0..j0+len] was sliced above.
                unsafe { finish_row(s, row.as_mut_ptr(), len, bias, epi.activation, scale) };
            }
            let r = match call.c_rows {
                CRows::Offset(start) => start + i,
                CRows::Index(index) => index[i] as usize,
            };
            for (j, &v) in row.iter().enumerate() {
                // SAFETY: `validate` checked row r < c.rows; j0 + j < n = c.cols; this item
                // owns these columns of the problem's rows.
                let dst = unsafe { &mut *call.c.0.add(r * call.c_row_stride + (j0 + j) * call.c_col_stride) };
                *dst = if call.mode == StoreMode::Replace { v } else { *dst + v };
            }
        }
    }
}

/// LOOPs 4 → 1 for one work item: K slices, then row blocks over the packed B slice, then
/// NR panels, then MR tiles.
struct GroupBlock<'a, 'c> {
    call: &'a Call<'c>,
    b: &'a MatRef<'c>,
    /// B packed before the call, if it fits this call's blocking.
    prepacked: Option<&'a PackedB>,
    item: Item,
    packed_a: &'a mut [f32],
    packed_b: &'a mut [f32],
    /// What the next work item reads first from memory (see `first_read`), prefetched while
    /// this item's last tiles run.
    next_first_read: &'a [f32],
}

impl SimdTask for GroupBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let (call, b, (q0, q1)) = (self.call, self.b, self.item.panels);
        if call.a.rows <= SKINNY_MAX_ROWS && gemv::form_of(b) == Some(gemv::GemvForm::Rows) {
            skinny(s, call, b, q0 * call.bl.nr, (q1 * call.bl.nr).min(call.n));
            return;
        }
        s.with_tile(call.bl.mr, call.bl.nv, self)
    }
}

impl TileTask for GroupBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let GroupBlock { call, b, prepacked, item, packed_a, packed_b, next_first_read } = self;
        let (mr, nr, m, k) = (MR, NV * S::LANES, call.a.rows, call.a.cols);
        let (q0, q1) = item.panels;
        // One row tile uses each panel once: read B where it lives instead of packing it.
        let direct = prepacked.is_none() && m <= mr && (q0..q1).all(|q| BPanel::direct(b, 0, k, q * nr, nr).is_some());
        let k_slice = call.bl.kc_for(k);
        for pc in (0..k).step_by(k_slice) {
            let kc = k_slice.min(k - pc);
            let (first, last) = (pc == 0, pc + kc == k);
            let packed_b: &[f32] = match prepacked {
                Some(pb) => pb.panels(pc, kc, q0, q1 - q0),
                None => {
                    if !direct {
                        pack_b_block(call.bl.isa, packed_b, b, pc, kc, q0 * nr, q1 - q0, nr);
                    }
                    packed_b
                }
            };
            let mc_block = call.bl.mc_for(m);
            for ic in (0..m).step_by(mc_block) {
                let mc = mc_block.min(m - ic);
                let tiles = mc.div_ceil(mr);
                // Rows whose K steps are contiguous (gathered or not) are read in place: the
                // micro-kernel broadcasts from them as well as from a packed copy, and an
                // expert's few panels would not repay the copy.
                let in_place = APanel::rows(&call.a, ic, mr.min(mc), pc, kc).is_some();
                if !in_place {
                    pack_a(packed_a, &call.a, ic, mc, pc, kc, mr);
                }
                for q in q0..q1 {
                    let panel = match BPanel::direct(b, pc, kc, q * nr, nr).filter(|_| direct) {
                        Some(panel) => panel,
                        None => BPanel::packed(&packed_b[(q - q0) * kc * nr..(q - q0 + 1) * kc * nr], kc, nr),
                    };
                    // Weights reach a panel from memory on their first use, and the hardware
                    // prefetcher, which stops at every 4 KiB page, cannot run ahead of a
                    // panel read this fast. So the tiles fetch what comes next while they run,
                    // spread over them (at most a line per four steps of each tile, so a
                    // region larger than that is fetched in part): with B packed ahead, the
                    // next panel of this item, else the first panel of its next K slice, else
                    // the next item's first panel; packing B per slice, in the item's last
                    // slice, the next item's B rows of its first K slice (all columns, when
                    // they are one block of memory), a share per panel.
                    let (ahead, spread) = match prepacked {
                        _ if ic != 0 => (&[][..], 1),
                        Some(pb) if q + 1 < q1 => (pb.panels(pc, kc, q + 1, 1), tiles),
                        Some(pb) if !last => (pb.panels(pc + kc, k_slice.min(k - pc - kc), q0, 1), tiles),
                        Some(_) => (next_first_read, tiles),
                        None if last => {
                            let share = next_first_read.len().div_ceil(q1 - q0);
                            let start = (q - q0) * share;
                            (
                                next_first_read.get(start..(start + share).min(next_first_read.len())).unwrap_or(&[]),
                                tiles,
                            )
                        }
                        None => (&[][..], 1),
                    };
                    let per_tile = ahead.len().div_ceil(spread).next_multiple_of(LINE);
                    for ir in (0..mc).step_by(mr) {
                        let fetch = ahead.get((ir / mr) * per_tile..).unwrap_or(&[]);
                        let panel = panel.fetching(&fetch[..per_tile.min(fetch.len()).min(kc / 4 * LINE)]);
                        let rows = mr.min(mc - ir);
                        let a_panel = match APanel::rows(&call.a, ic + ir, rows, pc, kc).filter(|_| in_place) {
                            Some(a_panel) => a_panel,
                            None => APanel::Packed(packed_a[(ir / mr) * kc * mr..(ir / mr + 1) * kc * mr].as_ptr()),
                        };
                        let tile = Tile { i0: ic + ir, j0: q * nr, rows, first, last };
                        store_tile::<S, MR, NV>(s, call, tile, kc, a_panel, panel);
                    }
                }
            }
        }
    }
}

/// The memory rows `0..kc` of `b` occupy, when it is one block with no gaps (a row-major view
/// whose rows follow each other, or the transpose of one when `kc` covers all of its K), else
/// nothing.
fn leading_rows<'a>(b: &MatRef<'a>, kc: usize) -> &'a [f32] {
    if b.row_index.is_some() || b.col_index.is_some() || kc == 0 || b.cols == 0 {
        return &[];
    }
    let span = (kc - 1) * b.row_stride + (b.cols - 1) * b.col_stride + 1;
    match span == kc * b.cols {
        true => b.data.get(..span).unwrap_or(&[]),
        false => &[],
    }
}
