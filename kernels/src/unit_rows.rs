//! Unit-row products: the two halves of a unit-sparse feed-forward layer at inference, reading
//! only the chosen rows of unit-major weights.
//!
//! A unit-sparse feed-forward layer (Terraformer, arXiv 2111.12763) keeps its weights
//! unit-major, `W1, W2: [units, d]`, one row per hidden unit, and runs for each token only the
//! units its controller chose. Grouped by unit ([`UnitGroups`]: the `g`-th chosen unit
//! `units[g]` serves the slots `offsets[g]..offsets[g+1]`, slot `s` belongs to token
//! `tokens[s]`), the layer is two streams over the chosen rows, each row read once however many
//! tokens chose it:
//!
//! ```text
//! unit_row_dots          h[s]         = act(⟨x[token(s)], W1[u]⟩ + b1[u])   (a gathered GEMV, column form)
//! accumulate_unit_rows   y[token(s)] += h[s] · W2[u]                        (a gathered GEMV, row form)
//! ```
//!
//! Only the listed units are read, and the groups list the chosen units only, so a call does
//! no work at all for the units nobody chose. At batch 1 these are a GEMV over `1/N` of the
//! weights; at batch `T` each chosen unit's two rows are read once for all the tokens that chose
//! it. They are the streaming path for gathered unit rows: the GEMM's one-row path
//! (`gemm/gemv.rs`) streams B in place only when B is not gathered, and packs it otherwise.
//!
//! Determinism: every `h[s]` is one dot product summed in a fixed order (four vector
//! accumulators, then a fixed pairwise sum), and every element of `y` sums its slots in unit
//! order (then slot order) whatever thread computes it: threads split `y` by fixed column
//! chunks, never a sum. Results are bit-identical for any number of threads.
//!
//! ```
//! use elide_kernels::gemm::{Activation, MatMut, MatRef};
//! use elide_kernels::unit_rows::{accumulate_unit_rows, unit_row_dots, UnitGroups};
//! use elide_kernels::{Isa, Par};
//! // Three units of width 2; token 0 chose unit 2, token 1 chose units 0 and 2.
//! let w1 = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
//! let w2 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let x = [1.0, 2.0, -3.0, 1.0];
//! let groups = UnitGroups::new(&[0, 2], &[0, 1, 3], &[1, 0, 1], 3, 2)?;
//! let mut h = [0.0; 3];
//! let xv = MatRef::row_major(&x, 2, 2)?;
//! unit_row_dots(Isa::active(), &groups, xv, MatRef::row_major(&w1, 3, 2)?, None, Activation::Relu, &mut h, Par::Seq)?;
//! assert_eq!(h, [0.0, 3.0, 0.0]); // relu(-3), relu(1 + 2), relu(-3 + 1)
//! let mut y = [0.0; 4];
//! accumulate_unit_rows(Isa::active(), &groups, &h, MatRef::row_major(&w2, 3, 2)?, MatMut::row_major(&mut y, 2, 2)?, Par::Seq)?;
//! assert_eq!(y, [15.0, 18.0, 0.0, 0.0]);
//! # Ok::<(), elide_kernels::KernelError>(())
//! ```

use crate::error::{KernelError, Result};
use crate::gemm::{Activation, MatMut, MatRef};
use crate::lanes;
use crate::simd::{prefetch_run, with_simd, Simd, SimdTask};
use crate::threading::{Par, SendPtr};
use crate::Isa;
use rayon::prelude::*;

/// Columns of `y` per work item of [`accumulate_unit_rows`]: fixed (never derived from the
/// thread count) so the split cannot change a result; 1 KiB of each chosen row per item.
const COL_CHUNK: usize = 256;
/// Below this many multiply-adds a call runs on the calling thread, as the GEMM's one-row path
/// does: at batch 1 of a d_ff 4096, N 32 layer (131K per kernel) one thread streaming the 0.5 MB
/// of chosen rows beat a fork/join (sparse layer 0.105 → 0.08 ms, interleaved bench runs).
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// Slots grouped by chosen unit: the `g`-th chosen unit `units[g]` (ascending) serves the slots
/// `offsets[g]..offsets[g+1]`, slot `s` belongs to token `tokens[s]`. Built by
/// [`UnitGroups::new`], which checks every index.
#[derive(Clone, Copy, Debug)]
pub struct UnitGroups<'a> {
    units: &'a [u32],
    offsets: &'a [usize],
    tokens: &'a [u32],
    num_units: usize,
    num_tokens: usize,
}

impl<'a> UnitGroups<'a> {
    /// Groups of the chosen `units` out of `num_units`, over `num_tokens` tokens.
    ///
    /// # Errors
    /// [`KernelError::Argument`] if `units` is not strictly ascending, or `offsets` does not
    /// hold one more entry than `units`, start at 0, never decrease and end at `tokens.len()`;
    /// [`KernelError::Index`] for a unit `>= num_units` or a token `>= num_tokens`.
    pub fn new(
        units: &'a [u32],
        offsets: &'a [usize],
        tokens: &'a [u32],
        num_units: usize,
        num_tokens: usize,
    ) -> Result<UnitGroups<'a>> {
        const OP: &str = "UnitGroups";
        let bad = |detail: String| Err(KernelError::Argument { op: OP, detail });
        if offsets.len() != units.len() + 1 || offsets[0] != 0 || offsets[units.len()] != tokens.len() {
            let (first, last) = (offsets.first().copied().unwrap_or(0), offsets.last().copied().unwrap_or(0));
            return bad(format!(
                "offsets must run from 0 to the {} slots with one entry per unit and one more ({} units), \
                 got {} offsets from {first} to {last}",
                tokens.len(),
                units.len(),
                offsets.len()
            ));
        }
        if let Some(g) = offsets.windows(2).position(|w| w[1] < w[0]) {
            return bad(format!("offsets decrease at unit {g}: {} then {}", offsets[g], offsets[g + 1]));
        }
        if let Some(g) = units.windows(2).position(|w| w[1] <= w[0]) {
            return bad(format!("units must be strictly ascending: {} then {} at {g}", units[g], units[g + 1]));
        }
        if let Some(position) = units.iter().position(|&u| u as usize >= num_units) {
            let index = units[position] as u64;
            return Err(KernelError::Index { op: OP, index, position, bound: num_units, note: " (units)".into() });
        }
        if let Some(position) = tokens.iter().position(|&t| t as usize >= num_tokens) {
            let index = tokens[position] as u64;
            return Err(KernelError::Index { op: OP, index, position, bound: num_tokens, note: " (tokens)".into() });
        }
        Ok(UnitGroups { units, offsets, tokens, num_units, num_tokens })
    }

    /// Number of units of the weights (chosen or not).
    pub fn num_units(&self) -> usize {
        self.num_units
    }

    /// Number of slots.
    pub fn num_slots(&self) -> usize {
        self.tokens.len()
    }

    /// The chosen units, ascending: the rows that are read.
    pub fn units(&self) -> &[u32] {
        self.units
    }

    /// The slots of the `g`-th chosen unit.
    fn slots(&self, g: usize) -> std::ops::Range<usize> {
        self.offsets[g]..self.offsets[g + 1]
    }
}

/// Checks that `w` is `[units, d]` with contiguous rows and returns `d`.
fn check_weight(op: &'static str, w: &MatRef<'_>, groups: &UnitGroups<'_>) -> Result<usize> {
    if w.rows != groups.num_units() {
        return Err(KernelError::Shape {
            op,
            detail: format!("the weight has {} unit rows, the groups {} units", w.rows, groups.num_units()),
        });
    }
    if w.cols > 1 && (w.col_stride != 1 || w.col_index.is_some()) {
        return Err(KernelError::Argument {
            op,
            detail: "each unit's row must be contiguous (a unit-major [units, d] weight)".into(),
        });
    }
    Ok(w.cols)
}

/// Unit `u`'s row of a checked weight.
#[inline(always)]
fn unit_row<'a>(w: &MatRef<'a>, u: usize) -> &'a [f32] {
    let start = w.row_offset(u);
    &w.data[start..start + w.cols]
}

/// `out[s] = act(⟨x[token(s)], W[u]⟩ + bias[u])` for every slot `s` of every unit `u`: `x` is
/// `[T, d]` (any view: strided, gathered), `W` is `[units, d]` with contiguous rows (strided or
/// gathered rows are fine), `bias` is `[units]`, `out` is `[slots]`. Only the chosen units'
/// rows are read.
///
/// # Errors
/// [`KernelError::Shape`] if `x`, `W`, `bias` or `out` do not fit the groups and each other;
/// [`KernelError::Argument`] if `W`'s rows are not contiguous.
#[allow(clippy::too_many_arguments)]
pub fn unit_row_dots(
    isa: Isa,
    groups: &UnitGroups<'_>,
    x: MatRef<'_>,
    w: MatRef<'_>,
    bias: Option<&[f32]>,
    activation: Activation,
    out: &mut [f32],
    par: Par,
) -> Result<()> {
    const OP: &str = "unit_row_dots";
    let d = check_weight(OP, &w, groups)?;
    if x.rows != groups.num_tokens || x.cols != d {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("x is {}x{}, expected {}x{d} (tokens x unit width)", x.rows, x.cols, groups.num_tokens),
        });
    }
    if let Some(b) = bias.filter(|b| b.len() != groups.num_units()) {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("bias has {} elements, expected {} (one per unit)", b.len(), groups.num_units()),
        });
    }
    if out.len() != groups.num_slots() {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("out has {} elements, expected {} (one per slot)", out.len(), groups.num_slots()),
        });
    }
    if d == 0 {
        // Empty rows: every dot product is 0.
        for (g, &u) in groups.units.iter().enumerate() {
            let v = activation.reference(bias.map_or(0.0, |b| b[u as usize]) as f64) as f32;
            out[groups.slots(g)].fill(v);
        }
        return Ok(());
    }
    // x's rows as contiguous slices: in place when they are, else one copy of the T·d inputs.
    let packed: Vec<f32>;
    let x_rows: Vec<&[f32]> = if x.col_index.is_none() && (d == 1 || x.col_stride == 1) {
        (0..x.rows).map(|t| &x.data[x.row_offset(t)..x.row_offset(t) + d]).collect()
    } else {
        packed = (0..x.rows).flat_map(|t| (0..d).map(move |p| x.get(t, p))).collect();
        packed.chunks(d).collect()
    };
    // The g-th chosen unit owns the contiguous slots offsets[g]..offsets[g+1] of `out`: hand out
    // disjoint sub-slices, a run of units per work item.
    let macs = groups.num_slots().saturating_mul(d);
    let threads = if par == Par::Rayon && macs >= PARALLEL_MIN_MACS { rayon::current_num_threads() } else { 1 };
    let n_units = groups.units.len();
    let per_item = n_units.div_ceil(4 * threads).max(1);
    let mut items: Vec<(usize, usize, &mut [f32])> = Vec::new();
    let mut rest = out;
    for g0 in (0..n_units).step_by(per_item) {
        let g1 = (g0 + per_item).min(n_units);
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(groups.offsets[g1] - groups.offsets[g0]);
        rest = tail;
        items.push((g0, g1, mine));
    }
    let run_item = |(g0, g1, out): (usize, usize, &mut [f32])| {
        with_simd(isa, DotUnits { groups, x_rows: &x_rows, w: &w, bias, activation, units: g0..g1, out })
    };
    if threads > 1 {
        items.into_par_iter().for_each(run_item);
    } else {
        items.into_iter().for_each(run_item);
    }
    Ok(())
}

/// `y[token(s)] += h[s] · W[u]` for every slot `s` of every unit `u`: `h` is `[slots]`, `W` is
/// `[units, d]` with contiguous rows, `y` is `[T, d]` with contiguous rows (its rows may be
/// strided or scattered). Each row of `y` adds its slots in unit order, then slot order. Only
/// the rows of units with slots are read, each once per call.
///
/// # Errors
/// [`KernelError::Shape`] if `h`, `W` or `y` do not fit the groups and each other;
/// [`KernelError::Argument`] if `W`'s or `y`'s rows are not contiguous.
pub fn accumulate_unit_rows(
    isa: Isa,
    groups: &UnitGroups<'_>,
    h: &[f32],
    w: MatRef<'_>,
    y: MatMut<'_>,
    par: Par,
) -> Result<()> {
    const OP: &str = "accumulate_unit_rows";
    let d = check_weight(OP, &w, groups)?;
    if h.len() != groups.num_slots() {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("h has {} elements, expected {} (one per slot)", h.len(), groups.num_slots()),
        });
    }
    if y.rows != groups.num_tokens || y.cols != d {
        return Err(KernelError::Shape {
            op: OP,
            detail: format!("y is {}x{}, expected {}x{d} (tokens x unit width)", y.rows, y.cols, groups.num_tokens),
        });
    }
    if d > 1 && y.col_stride != 1 {
        return Err(KernelError::Argument { op: OP, detail: "y's rows must be contiguous".into() });
    }
    if d == 0 || groups.num_slots() == 0 {
        return Ok(());
    }
    let y_rows: Vec<usize> = (0..y.rows).map(|t| y.row_offset(t)).collect();
    let task = Accumulate { groups, h, w: &w, y: SendPtr(y.data.as_mut_ptr()), y_rows: &y_rows };
    let chunks = d.div_ceil(COL_CHUNK);
    let work = |c: usize| {
        let j0 = c * COL_CHUNK;
        with_simd(isa, AccumulateChunk { task: &task, j0, len: COL_CHUNK.min(d - j0) })
    };
    let macs = groups.num_slots().saturating_mul(d);
    if par == Par::Rayon && macs >= PARALLEL_MIN_MACS && chunks > 1 && rayon::current_num_threads() > 1 {
        (0..chunks).into_par_iter().for_each(work);
    } else {
        (0..chunks).for_each(work);
    }
    Ok(())
}

/// The dot products of the chosen units `units` (a range of positions in the groups), into
/// `out` (their slots).
struct DotUnits<'a> {
    groups: &'a UnitGroups<'a>,
    x_rows: &'a [&'a [f32]],
    w: &'a MatRef<'a>,
    bias: Option<&'a [f32]>,
    activation: Activation,
    units: std::ops::Range<usize>,
    out: &'a mut [f32],
}

impl SimdTask for DotUnits<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let DotUnits { groups, x_rows, w, bias, activation, units, out } = self;
        let base = groups.offsets[units.start];
        for g in units.clone() {
            let u = groups.units[g] as usize;
            if let Some(&next) = groups.units.get(g + 1) {
                // The next chosen row is at an unpredictable address: start fetching it now.
                prefetch_run(unit_row(w, next as usize));
            }
            let row = unit_row(w, u);
            let b = bias.map_or(0.0, |b| b[u]);
            for slot in groups.slots(g) {
                let v = lanes::dot(s, x_rows[groups.tokens[slot] as usize], row) + b;
                out[slot - base] = match activation {
                    Activation::Identity => v,
                    Activation::Relu => v.max(0.0),
                    other => other.reference(v as f64) as f32,
                };
            }
        }
    }
}

/// The shared state of one [`accumulate_unit_rows`] call.
struct Accumulate<'a> {
    groups: &'a UnitGroups<'a>,
    h: &'a [f32],
    w: &'a MatRef<'a>,
    y: SendPtr,
    /// Offset of each row of y in its buffer (checked by the `MatMut` constructor).
    y_rows: &'a [usize],
}

/// Columns `j0..j0+len` of every row of y.
struct AccumulateChunk<'a> {
    task: &'a Accumulate<'a>,
    j0: usize,
    len: usize,
}

impl SimdTask for AccumulateChunk<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let AccumulateChunk { task, j0, len } = self;
        let lanes = S::LANES;
        let full = len - len % lanes;
        let groups = task.groups;
        for (g, &u) in groups.units.iter().enumerate() {
            let u = u as usize;
            if let Some(&next) = groups.units.get(g + 1) {
                // The next chosen row is at an unpredictable address: start its first lines now.
                prefetch_run(&unit_row(task.w, next as usize)[j0..j0 + len]);
            }
            let row = &unit_row(task.w, u)[j0..j0 + len];
            for slot in groups.slots(g) {
                let t = groups.tokens[slot] as usize;
                let hv = task.h[slot];
                let hs = s.splat(hv);
                // SAFETY: row t of y starts at y_rows[t] and holds d >= j0 + len contiguous
                // floats inside y's buffer (checked when the MatMut was built, col_stride 1);
                // this work item is the only writer of columns j0..j0+len.
                unsafe {
                    let dst = task.y.0.add(task.y_rows[t] + j0);
                    for j in (0..full).step_by(lanes) {
                        let acc = s.mul_add(hs, s.load(row.as_ptr().add(j)), s.load(dst.add(j)));
                        s.store(dst.add(j), acc);
                    }
                    for (j, &wv) in row.iter().enumerate().skip(full) {
                        *dst.add(j) = hv.mul_add(wv, *dst.add(j));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
