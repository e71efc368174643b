//! Grouped GEMM: many independent products into one output buffer, as one parallel work list.
//!
//! This is the mixture-of-experts kernel. Each problem `g` computes
//! `C[rows_g] ← accum(C[rows_g], epilogue_g(alpha · A_g · B_g))`, where `A_g` may gather its rows
//! (the tokens routed to expert `g`) or its K dimension, `B_g` is that expert's weight matrix,
//! and `rows_g` are rows of the one shared output. Every problem's (row block × column slice)
//! tiles go into one list that rayon shares out, so a thread never idles on a small expert while
//! another works through a large one — and an expert with no rows costs nothing.
//!
//! Unlike the dense driver, B is packed panel by panel inside each work item (an expert's
//! weights are used by few row blocks, so there is little to share), and a problem with at most
//! MR rows reads B in place: packing would touch every weight twice for a single use.

use super::driver::{
    column_chunks, store_tile, with_buffer, CRows, Call, StoreMode, Tile, PACK_A, PACK_B_PANEL, PARALLEL_MIN_MACS,
};
use super::epilogue::{Accum, Activation, Epilogue};
use super::microkernel::{BPanel, Blocking};
use super::pack::{pack_a, pack_b_panel};
use super::view::{MatMut, MatRef};
use super::Gemm;
use crate::error::{KernelError, Result};
use crate::simd::{with_simd, Simd, SimdTask};
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
    let mut owner = vec![u32::MAX; c.rows];
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
        if let Some(scale) = p.epilogue.row_scale.filter(|s| s.len() != m) {
            return Err(shape_error(format!("problem {g}: row scale has {} elements, A has {m} rows", scale.len())));
        }
        if settings.accum == Accum::Add
            && p.epilogue.activation != Activation::Identity
            && k > Blocking::of(settings.isa).kc
        {
            return Err(KernelError::Argument {
                op: OP,
                detail: format!("problem {g}: Accum::Add with an activation needs k <= KC, got k = {k}"),
            });
        }
        let mut claim = |row: usize, position: usize| -> Result<()> {
            match owner.get_mut(row) {
                None => Err(KernelError::Index {
                    op: OP,
                    index: row as u64,
                    position,
                    bound: c.rows,
                    note: format!(" (output row of problem {g})"),
                }),
                Some(o) if *o != u32::MAX => Err(KernelError::Argument {
                    op: OP,
                    detail: format!("output row {row} is written by problems {} and {g}", *o),
                }),
                Some(o) => {
                    *o = g as u32;
                    Ok(())
                }
            }
        };
        match p.rows {
            OutRows::Range(start) => (0..m).try_for_each(|i| claim(start + i, i))?,
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

/// One work item: rows `ic .. ic+mc` of problem `g`, NR panels `panels.0 .. panels.1`.
#[derive(Clone, Copy)]
struct Item {
    g: usize,
    ic: usize,
    mc: usize,
    panels: (usize, usize),
}

impl Gemm<'_> {
    /// Runs every problem into the shared output `c` (see the module docs). Results are
    /// bit-identical for any number of threads.
    ///
    /// # Errors
    /// [`KernelError`] for shapes that do not chain, an epilogue of the wrong length, an output
    /// row outside `c` or claimed by two problems, an epilogue on the settings instead of the
    /// problems, or a scattered `c`.
    pub fn run_grouped(&self, c: MatMut<'_>, problems: &[GroupProblem<'_>]) -> Result<()> {
        let isa = self.isa.min(crate::Isa::best_supported());
        let settings = Gemm { isa, ..*self };
        validate(&c, problems, &settings)?;
        let bl = Blocking::of(isa);
        let n = c.cols;
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
                mode: match (self.accum, p.epilogue.activation) {
                    (Accum::Replace, _) => StoreMode::Replace,
                    (Accum::Add, Activation::Identity) => StoreMode::AddLinear,
                    (Accum::Add, _) => StoreMode::AddActivated,
                },
            })
            .collect();
        for (call, p) in calls.iter().zip(problems) {
            if p.a.cols == 0 && p.a.rows > 0 {
                empty_rows(call, p.a.rows, self.accum);
            }
        }
        let macs: usize = problems.iter().map(|p| p.a.rows * p.a.cols * n).sum();
        let threads = match self.par {
            Par::Rayon if macs >= PARALLEL_MIN_MACS => rayon::current_num_threads(),
            _ => 1,
        };
        let n_panels = n.div_ceil(bl.nr);
        let m_blocks: usize = problems.iter().filter(|p| p.a.cols > 0).map(|p| p.a.rows.div_ceil(bl.mc)).sum();
        let n_chunks = if threads > 1 { column_chunks(m_blocks.max(1), threads).min(n_panels.max(1)) } else { 1 };
        let per_chunk = n_panels.div_ceil(n_chunks.max(1)).max(1);
        let items: Vec<Item> = problems
            .iter()
            .enumerate()
            .filter(|(_, p)| p.a.cols > 0)
            .flat_map(|(g, p)| {
                (0..p.a.rows).step_by(bl.mc).flat_map(move |ic| {
                    (0..n_chunks).filter_map(move |ch| {
                        let (first, last) = (ch * per_chunk, ((ch + 1) * per_chunk).min(n_panels));
                        (first < last).then_some(Item { g, ic, mc: bl.mc.min(p.a.rows - ic), panels: (first, last) })
                    })
                })
            })
            .collect();
        let work = |item: &Item| {
            let k = problems[item.g].a.cols;
            with_buffer(&PACK_A, item.mc.div_ceil(bl.mr) * bl.mr * bl.kc.min(k), |packed_a| {
                with_buffer(&PACK_B_PANEL, bl.kc.min(k) * bl.nr, |packed_b| {
                    let task =
                        GroupBlock { call: &calls[item.g], b: &problems[item.g].b, item: *item, packed_a, packed_b };
                    with_simd(isa, task)
                })
            })
        };
        if threads > 1 {
            items.par_iter().for_each(work);
        } else {
            items.iter().for_each(work);
        }
        Ok(())
    }
}

/// A problem with `k = 0`: its rows are `scale_i · act(bias)` (added in `Accum::Add`).
fn empty_rows(call: &Call<'_>, m: usize, accum: Accum) {
    let epi = &call.epilogue;
    for i in 0..m {
        let r = match call.c_rows {
            CRows::Offset(start) => start + i,
            CRows::Index(index) => index[i] as usize,
        };
        let scale = epi.row_scale.map_or(1.0, |s| s[i]);
        for j in 0..call.n {
            let v = scale * epi.activation.reference(epi.bias.map_or(0.0, |b| b[j]) as f64) as f32;
            // SAFETY: `validate` checked row r < c.rows, and j < n = c.cols; one thread writes.
            let dst = unsafe { &mut *call.c.0.add(r * call.c_row_stride + j * call.c_col_stride) };
            *dst = if accum == Accum::Add { *dst + v } else { v };
        }
    }
}

/// LOOPs 4 → 1 for one work item: K slices outside, then B panels, then MR tiles.
struct GroupBlock<'a, 'c> {
    call: &'a Call<'c>,
    b: &'a MatRef<'c>,
    item: Item,
    packed_a: &'a mut [f32],
    packed_b: &'a mut [f32],
}

impl SimdTask for GroupBlock<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let GroupBlock { call, b, item, packed_a, packed_b } = self;
        let (mr, nr, k) = (call.bl.mr, call.bl.nr, call.a.cols);
        for pc in (0..k).step_by(call.bl.kc) {
            let kc = call.bl.kc.min(k - pc);
            pack_a(packed_a, &call.a, item.ic, item.mc, pc, kc, mr);
            let (first, last) = (pc == 0, pc + kc == k);
            for q in item.panels.0..item.panels.1 {
                let j0 = q * nr;
                // One row tile uses the panel once: read B where it lives instead of packing it.
                let direct = if item.mc <= mr { BPanel::direct(b, pc, kc, j0, nr) } else { None };
                let panel = direct.unwrap_or_else(|| {
                    pack_b_panel(packed_b, b, pc, kc, j0, nr);
                    BPanel::packed(packed_b, kc, nr)
                });
                for ir in (0..item.mc).step_by(mr) {
                    let a_panel = &packed_a[(ir / mr) * kc * mr..(ir / mr + 1) * kc * mr];
                    let tile = Tile { i0: item.ic + ir, j0, rows: mr.min(item.mc - ir), first, last };
                    store_tile(s, call, tile, kc, a_panel, panel);
                }
            }
        }
    }
}
