//! The five BLIS loops around the micro-kernel, and how they are split across threads.
//!
//! ```text
//! LOOP 5  jc: split N into NC-wide blocks                     (B block lives in L3)
//! LOOP 4  pc: split K into KC-deep slices; pack B[pc, jc]     (shared by all threads)
//! LOOP 3  ic: split M into MC-tall blocks; pack A[ic, pc]     (per work item, lives in L2)
//! LOOP 2  jr: NR-wide panels of the packed B                  (one panel lives in L1)
//! LOOP 1  ir: MR-tall panels of the packed A -> micro-kernel  (the tile lives in registers)
//! ```
//!
//! Threads share LOOP 3 (and, when M has too few blocks, slices of LOOP 2) as one list of
//! work items. Every element of C is still computed by exactly one micro-kernel call per KC
//! slice, in the same order, so the result is bit-identical for any number of threads.

use super::blocking::{Blocking, MAX_MR, MAX_NR};
use super::epilogue::{finish_row, Accum, Activation, Epilogue};
use super::microkernel::{edge_tile, microkernel, APanel, BPanel};
use super::pack::pack_a;
use super::packed::PackedB;
use super::shared_b::SharedB;
use super::view::{MatMut, MatRef};
use super::Gemm;
use crate::simd::{with_simd, Simd, SimdTask, TileTask};
use crate::threading::{Par, SendPtr};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::atomic::AtomicU8;

/// How results are written, decided once per call from the accumulation mode and epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreMode {
    /// `C ← scale·act(AB + bias)`: C itself accumulates the KC slices, and the epilogue runs on
    /// each tile after its last slice.
    Replace,
    /// `C ← C + scale·(alpha·AB + bias)`: linear, so the row scale folds into alpha and the bias
    /// is added once, after the last slice.
    AddLinear,
    /// `C ← C + scale·act(alpha·AB + bias)` with a single KC slice: each tile is finished in a
    /// buffer, then added. (With several slices the caller goes through a temporary instead.)
    AddActivated,
}

impl StoreMode {
    /// The mode for an accumulation and the activation of the epilogue.
    pub(crate) fn of(accum: Accum, activation: Activation) -> StoreMode {
        match (accum, activation) {
            (Accum::Replace, _) => StoreMode::Replace,
            (Accum::Add, Activation::Identity) => StoreMode::AddLinear,
            (Accum::Add, _) => StoreMode::AddActivated,
        }
    }
}

/// Everything a work item needs; shared read-only by all threads.
pub(crate) struct Call<'a> {
    pub(crate) bl: Blocking,
    pub(crate) a: MatRef<'a>,
    pub(crate) c: SendPtr,
    pub(crate) c_row_stride: usize,
    pub(crate) c_col_stride: usize,
    pub(crate) c_rows: CRows<'a>,
    /// Columns of C.
    pub(crate) n: usize,
    pub(crate) alpha: f32,
    pub(crate) epilogue: Epilogue<'a>,
    pub(crate) mode: StoreMode,
}

/// One KC slice of one (MC rows × some NR panels) block.
#[derive(Clone, Copy)]
struct Item {
    ic: usize,
    mc: usize,
    /// First and one-past-last NR panel of the packed B block.
    panels: (usize, usize),
    /// The panel LOOP 2 starts on (and wraps around from); the order of the panels changes no
    /// element's arithmetic.
    start: usize,
    jc: usize,
    pc: usize,
    kc: usize,
}

thread_local! {
    /// Per-thread buffer for packed A; reused so large GEMMs never allocate per block.
    pub(crate) static PACK_A: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// Per-calling-thread buffer for packed B.
    static PACK_B: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
    /// Per-thread buffer for the packed B slice of a grouped work item.
    pub(crate) static PACK_B_SLICE: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::new()) };
}

/// A growable f32 buffer whose usable part starts on a 64-byte boundary.
pub(crate) struct AlignedBuf {
    raw: Vec<f32>,
}

impl AlignedBuf {
    const fn new() -> Self {
        AlignedBuf { raw: Vec::new() }
    }

    /// A 64-byte-aligned slice of at least `len` floats (contents unspecified).
    fn get(&mut self, len: usize) -> &mut [f32] {
        if self.raw.len() < len + 16 {
            self.raw = vec![0.0; len + 16];
        }
        let skip = self.raw.as_ptr().align_offset(64).min(15);
        &mut self.raw[skip..skip + len]
    }
}

/// Runs `f` with a per-thread packing buffer of `len` floats (a fresh one if the thread's buffer
/// is already in use, which only happens for a GEMM called from inside another).
pub(crate) fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<AlignedBuf>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(buf.get(len)),
        Err(_) => f(AlignedBuf::new().get(len)),
    })
}

/// Below this many multiply-adds a GEMM runs on the calling thread: a fork/join costs more
/// than it saves.
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 20;

/// `C ← accum(C, epilogue(alpha·A·B))` with shapes already checked, `k ≥ 1`, `settings.isa`
/// supported, and, for [`StoreMode::AddActivated`], `k ≤ KC`. `packed`, if given, is B packed
/// for this call's blocking: its panels are read instead of packing B.
pub(crate) fn run(
    settings: &Gemm<'_>,
    mode: StoreMode,
    c: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    packed: Option<&PackedB>,
) {
    let Gemm { alpha, epilogue, par, isa, .. } = *settings;
    let bl = settings.blocking_for(isa);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let k_slice = bl.kc_for(k);
    let threads = match par {
        Par::Rayon if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_MACS => rayon::current_num_threads(),
        _ => 1,
    };
    let mc = row_block_height(&bl, m, n.min(bl.nc), threads);
    let call = Call {
        bl,
        a,
        c: SendPtr(c.data.as_mut_ptr()),
        c_row_stride: c.row_stride,
        c_col_stride: c.col_stride,
        c_rows: match c.row_index {
            Some(index) => CRows::Index(index),
            None => CRows::Offset(0),
        },
        n,
        alpha,
        epilogue,
        mode,
    };
    let m_blocks = m.div_ceil(mc);
    // One group of B panels per thread, at most MAX_GROUPS (on a stack array: no allocation per
    // call).
    let groups = threads.min(MAX_GROUPS);
    let group_states: [AtomicU8; MAX_GROUPS] = std::array::from_fn(|_| AtomicU8::new(0));
    // LOOP 5
    for jc in (0..n).step_by(bl.nc) {
        let nc = bl.nc.min(n - jc);
        let n_panels = nc.div_ceil(bl.nr);
        let n_chunks = if threads > 1 { column_chunks(m_blocks, threads).min(n_panels) } else { 1 };
        let panels_per_chunk = n_panels.div_ceil(n_chunks);
        // LOOP 4
        for pc in (0..k).step_by(k_slice) {
            let kc = k_slice.min(k - pc);
            // LOOP 3 over one B block (packed ahead in `packed`, or packed here as it is used).
            let sweep = |b_block: BBlock<'_>| {
                // Item i is row block i / chunks, column chunk i % chunks (none of them empty).
                let chunks = n_panels.div_ceil(panels_per_chunk);
                let n_items = m_blocks * chunks;
                // The packing buffer is taken outside the SIMD code: a closure is compiled without
                // the caller's target features, so none may sit between `with_simd` and the kernel.
                let work = |i: usize| {
                    let (ic, ch) = (i / chunks * mc, i % chunks);
                    let panels = (ch * panels_per_chunk, ((ch + 1) * panels_per_chunk).min(n_panels));
                    // Each thread's first item starts on its own share of the panels, so that
                    // the threads pack different groups of a shared block while they multiply.
                    let start = panels.0 + (panels.1 - panels.0) * (i * threads / n_items) / threads;
                    let item = Item { ic, mc: mc.min(m - ic), panels, start, jc, pc, kc };
                    with_buffer(&PACK_A, item.mc.div_ceil(bl.mr) * bl.mr * item.kc, |packed_a| {
                        with_simd(isa, Block { call: &call, item, packed_a, b_block, k })
                    })
                };
                if threads > 1 {
                    (0..n_items).into_par_iter().for_each(work);
                } else {
                    (0..n_items).for_each(work);
                }
            };
            if let Some(packed) = packed {
                sweep(BBlock::Packed(packed.panels(pc, kc, jc / bl.nr, n_panels)));
                continue;
            }
            with_buffer(&PACK_B, n_panels * kc * bl.nr, |buf| {
                // One group per thread: each packs its share of the block once, at the start of
                // its first work item (whose panels begin there), as BLIS's threads pack theirs.
                let group = n_panels.div_ceil(groups);
                let shared = SharedB::new(buf, &group_states, b, isa, (pc, kc), (jc, bl.nr, n_panels, group));
                sweep(BBlock::Shared(&shared));
            });
        }
    }
}

/// Most groups a shared B block is packed in (one per thread, up to this many threads).
const MAX_GROUPS: usize = 64;

/// What packing an element of A costs, in elements of packed B read from L3: a round figure
/// that picks the faster of the two splits at the products measured for [`row_block_height`].
const A_PACK_COST: usize = 8;

/// The row-block height for an `m`-row product `n` columns wide (one NC block) on `threads`
/// threads: [`Blocking::mc_for`], or the highest lower one (down to about half) with which the
/// row blocks alone share out evenly, when that costs less than the alternative. Otherwise the
/// threads also split the NR panels ([`column_chunks`]), and every slice packs its A block
/// again: with few columns per A element (`H·W2` of 4096 × 2048 × 512 at 17 row blocks, two
/// slices) that packing took 8 % of the product, and 17–20 % for a column-major A (`Hᵀ·dY`).
/// Each extra row block instead reads the packed B block once more (from L3). Measured on 2
/// threads against each other, lower blocks won at 4096 × 512 × 2048 (+4 %), slices at
/// 256 × 32000 × 256 (a language model's output layer, +5 %) and 100 × 4096 × 512 (+5 % in one
/// of two runs), and at 600 × 4096 × 512 they were within 3 %: an extra packed A element costs
/// about as much as [`A_PACK_COST`] extra B elements read. Which rows share a block does not
/// change any element's arithmetic, so results stay bit-identical across thread counts.
pub(crate) fn row_block_height(bl: &Blocking, m: usize, n: usize, threads: usize) -> usize {
    let mc = bl.mc_for(m);
    if threads <= 1 {
        return mc;
    }
    let fewest = m.div_ceil(mc);
    let slices = column_chunks(fewest, threads);
    // Up to twice the fewest blocks, i.e. blocks at least about half as high.
    (fewest..=2 * fewest)
        .map(|blocks| m.div_ceil(blocks).next_multiple_of(bl.mr).min(mc))
        .find(|&h| column_chunks(m.div_ceil(h), threads) == 1)
        .filter(|&h| (m.div_ceil(h) - fewest) * n < A_PACK_COST * (slices - 1) * m)
        .unwrap_or(mc)
}

/// How many slices to cut the NR panels into, so that `m_blocks × slices` work items share out
/// evenly over `threads` (within 5 %). Each extra slice repacks the A block once more, so the
/// smallest such count wins.
pub(crate) fn column_chunks(m_blocks: usize, threads: usize) -> usize {
    (1..=8)
        .find(|&c| {
            let items = m_blocks * c;
            (items.div_ceil(threads) * threads) as f64 <= 1.05 * items as f64
        })
        .unwrap_or(8)
}

/// LOOPs 2 and 1 for one work item, on one instruction set.
struct Block<'a, 'c> {
    call: &'a Call<'c>,
    item: Item,
    packed_a: &'a mut [f32],
    b_block: BBlock<'a>,
    k: usize,
}

/// Where a work item finds the packed panels of its KC slice of B.
#[derive(Clone, Copy)]
enum BBlock<'a> {
    /// Packed ahead, all panels contiguous.
    Packed(&'a [f32]),
    /// Packed on first use, shared with the other work items.
    Shared(&'a SharedB<'a>),
}

impl BBlock<'_> {
    /// Panel `q` of `kc × nr` floats.
    #[inline(always)]
    fn panel(&self, q: usize, kc: usize, nr: usize) -> &[f32] {
        match self {
            BBlock::Packed(block) => &block[q * kc * nr..(q + 1) * kc * nr],
            BBlock::Shared(shared) => shared.panel(q),
        }
    }
}

impl SimdTask for Block<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        s.with_tile(self.call.bl.mr, self.call.bl.nv, self)
    }
}

impl TileTask for Block<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let Block { call, item, packed_a, b_block, k } = self;
        let (mr, nr) = (MR, NV * S::LANES);
        // A work item of one NR panel uses each A tile once: a row-major A (gathered rows
        // included) is then read where it lives rather than copied first (a router's
        // 4096×512×64 logits: 1.0 -> 0.9 ms on 2 threads).
        let one_panel = item.panels.1 - item.panels.0 == 1;
        let in_place = one_panel && APanel::rows(&call.a, item.ic, mr.min(item.mc), item.pc, item.kc).is_some();
        // The same for a column-major A (`Xᵀ·dY`, a weight gradient of few output columns), if
        // its last tile, and so every tile, lies inside the buffer: packing it cost as much as
        // the product (a router's 512×4096×64 weight gradient: 2.9 -> 1.45 ms on 2 threads).
        let last_tile = (item.mc - 1) / mr * mr;
        let in_place_cols =
            one_panel && !in_place && APanel::cols(&call.a, item.ic + last_tile, mr, item.pc, item.kc).is_some();
        if !in_place && !in_place_cols {
            pack_a(packed_a, &call.a, item.ic, item.mc, item.pc, item.kc, mr);
        }
        let first = item.pc == 0;
        let last = item.pc + item.kc == k;
        // LOOP 2
        for q in (item.start..item.panels.1).chain(item.panels.0..item.start) {
            let j0 = item.jc + q * nr;
            let b_panel = BPanel::packed(b_block.panel(q, item.kc, nr), item.kc, nr);
            // LOOP 1
            for ir in (0..item.mc).step_by(mr) {
                let rows = mr.min(item.mc - ir);
                let in_place_tile = match (in_place, in_place_cols) {
                    (true, _) => APanel::rows(&call.a, item.ic + ir, rows, item.pc, item.kc),
                    (_, true) => APanel::cols(&call.a, item.ic + ir, mr, item.pc, item.kc),
                    _ => None,
                };
                let a_panel = match in_place_tile {
                    Some(a_panel) => a_panel,
                    None => APanel::Packed(packed_a[(ir / mr) * item.kc * mr..(ir / mr + 1) * item.kc * mr].as_ptr()),
                };
                let tile = Tile { i0: item.ic + ir, j0, rows, first, last };
                store_tile::<S, MR, NV>(s, call, tile, item.kc, a_panel, b_panel);
            }
        }
    }
}

/// Which rows of the output buffer a product writes: row `i` of the product is row
/// `start + i`, or row `index[i]`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CRows<'a> {
    Offset(usize),
    Index(&'a [u32]),
}

/// Where a register tile lands in C.
#[derive(Clone, Copy)]
pub(crate) struct Tile {
    pub(crate) i0: usize,
    pub(crate) j0: usize,
    pub(crate) rows: usize,
    pub(crate) first: bool,
    pub(crate) last: bool,
}

/// Runs the micro-kernel for one tile and writes it through the epilogue.
#[inline(always)]
pub(crate) fn store_tile<S: Simd, const MR: usize, const NV: usize>(
    s: S,
    call: &Call<'_>,
    t: Tile,
    kc: usize,
    a_panel: APanel,
    b_panel: BPanel,
) {
    let (mr, nr) = (MR, NV * S::LANES);
    let n = call.n;
    let cols = nr.min(n - t.j0);
    let epi = &call.epilogue;
    let scale = |i: usize| epi.row_scale.map(|rs| rs[t.i0 + i]);
    let mut alpha = [call.alpha; MAX_MR];
    if call.mode == StoreMode::AddLinear {
        for (i, al) in alpha.iter_mut().enumerate().take(t.rows) {
            *al *= scale(i).unwrap_or(1.0);
        }
    }
    let c_row = |i: usize| -> *mut f32 {
        let r = match call.c_rows {
            CRows::Index(index) => index[t.i0 + i] as usize,
            CRows::Offset(start) => start + t.i0 + i,
        };
        // SAFETY: (r, j0) is inside the C view checked at the entry point.
        unsafe { call.c.0.add(r * call.c_row_stride + t.j0 * call.c_col_stride) }
    };
    let bias = epi.bias.map(|b| b[t.j0..t.j0 + cols].as_ptr());
    let direct = t.rows == mr && cols == nr && call.c_col_stride == 1 && call.mode != StoreMode::AddActivated;
    if direct {
        let mut rows = [std::ptr::null_mut(); MAX_MR];
        for (i, row) in rows.iter_mut().enumerate().take(mr) {
            *row = c_row(i);
        }
        let accumulate = call.mode == StoreMode::AddLinear || !t.first;
        // SAFETY: the A tile addresses kc steps of MR rows and the B panel kc·NR floats (their
        // constructors check it); each row pointer addresses NR contiguous elements of C
        // (col stride 1, full tile), distinct rows by the view check.
        unsafe { microkernel::<S, MR, NV>(s, kc, a_panel, b_panel, &rows, &alpha, accumulate) };
        if t.last {
            for (i, &row) in rows.iter().enumerate().take(mr) {
                // SAFETY: row is valid for NR floats; bias for `cols` = NR floats.
                unsafe { finish_direct(s, call.mode, epi, row, nr, bias, scale(i)) };
            }
        }
        return;
    }
    // Edge tile, strided C, or a tile finished before it is added: go through a buffer.
    let mut buf = [0.0f32; MAX_MR * MAX_NR];
    let mut rows = [std::ptr::null_mut(); MAX_MR];
    for (i, row) in rows.iter_mut().enumerate().take(mr) {
        // SAFETY: buf holds MAX_MR rows of MAX_NR >= NR floats.
        *row = unsafe { buf.as_mut_ptr().add(i * MAX_NR) };
    }
    // SAFETY: as above; the first t.rows row pointers address disjoint NR-float rows of `buf`,
    // and `cols` columns take at least one and at most NV vectors.
    unsafe { edge_tile::<S, MR, NV>(s, kc, t.rows, cols.div_ceil(S::LANES), a_panel, b_panel, &rows, &alpha) };
    for i in 0..t.rows {
        let row = &mut buf[i * MAX_NR..i * MAX_NR + cols];
        let dst = c_row(i);
        let at = |j: usize| {
            // SAFETY: j < cols keeps (row, j0 + j) inside the checked C view.
            unsafe { dst.add(j * call.c_col_stride) }
        };
        match call.mode {
            StoreMode::Replace => {
                if !t.first {
                    for (j, x) in row.iter_mut().enumerate() {
                        // SAFETY: see `at`.
                        *x += unsafe { *at(j) };
                    }
                }
                if t.last && !epi.is_identity() {
                    // SAFETY: row has `cols` floats, bias too.
                    unsafe { finish_row(s, row.as_mut_ptr(), cols, bias, epi.activation, scale(i)) };
                }
            }
            StoreMode::AddLinear => {
                if let (true, Some(b)) = (t.last, epi.bias) {
                    let sc = scale(i).unwrap_or(1.0);
                    for (j, x) in row.iter_mut().enumerate() {
                        *x += sc * b[t.j0 + j];
                    }
                }
                for (j, x) in row.iter_mut().enumerate() {
                    // SAFETY: see `at`.
                    *x += unsafe { *at(j) };
                }
            }
            StoreMode::AddActivated => {
                // SAFETY: row has `cols` floats, bias too.
                unsafe { finish_row(s, row.as_mut_ptr(), cols, bias, epi.activation, scale(i)) };
                for (j, x) in row.iter_mut().enumerate() {
                    // SAFETY: see `at`.
                    *x += unsafe { *at(j) };
                }
            }
        }
        for (j, &x) in row.iter().enumerate() {
            // SAFETY: see `at`; this thread owns the tile.
            unsafe { *at(j) = x };
        }
    }
}

/// Epilogue of a full, contiguous tile row after its last KC slice.
///
/// # Safety
/// `row` valid for `len` floats; `bias` (if any) for `len` floats.
#[inline(always)]
unsafe fn finish_direct<S: Simd>(
    s: S,
    mode: StoreMode,
    epi: &Epilogue<'_>,
    row: *mut f32,
    len: usize,
    bias: Option<*const f32>,
    scale: Option<f32>,
) {
    match mode {
        StoreMode::Replace if !epi.is_identity() => {
            // SAFETY: forwarded from the caller.
            unsafe { finish_row(s, row, len, bias, epi.activation, scale) }
        }
        StoreMode::AddLinear => {
            if let Some(b) = bias {
                let sc = s.splat(scale.unwrap_or(1.0));
                for j in (0..len).step_by(S::LANES) {
                    // SAFETY: len is a multiple of LANES (a full tile row), within the contract.
                    unsafe { s.store(row.add(j), s.mul_add(s.load(b.add(j)), sc, s.load(row.add(j)))) };
                }
            }
        }
        _ => {}
    }
}
