//! A right operand packed once and reused: the B panels the drivers would otherwise pack on
//! every call. Inference weights do not change between calls, so packing them per call is
//! pure overhead — for a 64-expert layer, where each expert's weights meet only ~128 rows, it
//! was a tenth of the forward pass. oneDNN's weight reorder and MKL's packed-GEMM API
//! (`cblas_sgemm_pack`) keep weights the same way.
//!
//! The layout is exactly what the drivers pack into (`pack_b_block`): K cut into the slices
//! [`Blocking::kc_for`] gives for `k`, each slice holding every NR-column panel of B (`kc × NR`
//! floats, step by step, the last panel zero-padded). Reading a panel from here or from a
//! freshly packed buffer gives the micro-kernel the same values in the same order, so results
//! are bit-identical with and without it.

use super::blocking::Blocking;
use super::pack::pack_b_block;
use super::view::MatRef;
use crate::buffer::zeroed_f32;
use std::sync::Arc;

/// A `k × n` matrix packed for one [`Blocking`] (see the module docs), to pass as
/// [`GroupProblem::packed_b`](super::GroupProblem::packed_b) or to
/// [`Gemm::run_packed`](super::Gemm::run_packed). A call whose blocking differs (another
/// instruction set forced, another tile) packs B itself instead.
///
/// ```
/// use elide_kernels::gemm::{Blocking, Gemm, MatMut, MatRef, PackedB};
/// use elide_kernels::Isa;
/// let (a, w) = ([1.0, 2.0, 3.0, 4.0], [1.0, 0.0, 0.0, 1.0, 2.0, 2.0]);
/// let w = MatRef::row_major(&w, 2, 3)?;
/// let packed = PackedB::new(w, Blocking::of(Isa::active())); // once per weight value
/// let mut c = [0.0; 6];
/// Gemm::default().run_packed(MatMut::row_major(&mut c, 2, 3)?, MatRef::row_major(&a, 2, 2)?, w, &packed)?;
/// assert_eq!(c, [3.0, 4.0, 4.0, 7.0, 8.0, 8.0]);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PackedB {
    blocking: Blocking,
    k: usize,
    n: usize,
    /// Backing store, shared by matrices packed together ([`PackedB::new_each`]); this one's
    /// panels start `offset` floats in, on a 64-byte boundary.
    raw: Arc<Vec<f32>>,
    offset: usize,
}

/// Floats of one matrix's panels: every NR-column panel (the last zero-padded) over all of K.
fn packed_len(b: &MatRef<'_>, nr: usize) -> usize {
    packed_len_of(b.rows, b.cols, nr)
}

fn packed_len_of(k: usize, n: usize, nr: usize) -> usize {
    n.div_ceil(nr) * nr * k
}

impl PackedB {
    /// Packs `b` (any view: strided, transposed, gathered) for `blocking`.
    pub fn new(b: MatRef<'_>, blocking: Blocking) -> PackedB {
        PackedB::new_each(&[b], blocking).pop().expect("one matrix in, one out")
    }

    /// Packs each of `bs` for `blocking`, all into one allocation, each matrix starting on a
    /// 64-byte boundary: a layer's expert weights (128 matrices of 512 KiB for 64 experts of
    /// config B) in one buffer, which gets huge pages ([`advise_huge_pages`]), where blocks
    /// allocated one by one, each smaller than a huge page, could not. Streaming them then
    /// costs a TLB miss per 2 MiB instead of per 4 KiB.
    ///
    /// [`advise_huge_pages`]: crate::buffer::advise_huge_pages
    pub fn new_each(bs: &[MatRef<'_>], blocking: Blocking) -> Vec<PackedB> {
        const ALIGN: usize = 16; // floats in 64 bytes
        let nr = blocking.nr;
        let total: usize = bs.iter().map(|b| packed_len(b, nr).next_multiple_of(ALIGN)).sum();
        let mut raw = zeroed_f32(total + ALIGN);
        let mut at = raw.as_ptr().align_offset(64).min(ALIGN - 1);
        let mut offsets = Vec::with_capacity(bs.len());
        for b in bs {
            let (k, len) = (b.rows, packed_len(b, nr));
            let panels = b.cols.div_ceil(nr);
            let data = &mut raw[at..at + len];
            let k_slice = blocking.kc_for(k);
            for pc in (0..k).step_by(k_slice.max(1)) {
                let kc = k_slice.min(k - pc);
                pack_b_block(
                    blocking.isa,
                    &mut data[pc * panels * nr..(pc + kc) * panels * nr],
                    b,
                    pc,
                    kc,
                    0,
                    panels,
                    nr,
                );
            }
            offsets.push(at);
            at += len.next_multiple_of(ALIGN);
        }
        let raw = Arc::new(raw);
        bs.iter()
            .zip(offsets)
            .map(|(b, offset)| PackedB { blocking, k: b.rows, n: b.cols, raw: raw.clone(), offset })
            .collect()
    }

    /// The panel a product over this matrix reads first (the first NR columns of its first K
    /// slice), to prefetch ahead of that product ([`Gemm::run_grouped_then`](super::Gemm::run_grouped_then)).
    pub fn first_panel(&self) -> &[f32] {
        if self.k == 0 || self.n == 0 {
            return &[];
        }
        self.panels(0, self.blocking.kc_for(self.k).min(self.k), 0, 1)
    }

    /// The blocking it was packed for.
    pub fn blocking(&self) -> Blocking {
        self.blocking
    }

    /// Rows (K) of the packed matrix.
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Columns (N) of the packed matrix.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Bytes of its panels (matrices packed together share one allocation; each counts its
    /// own panels).
    pub fn bytes(&self) -> usize {
        packed_len_of(self.k, self.n, self.blocking.nr) * 4
    }

    /// Whether a call with blocking `bl` can read its panels from here.
    pub(crate) fn serves(&self, bl: &Blocking) -> bool {
        self.blocking == *bl
    }

    /// Panels `first .. first + count` of the K slice starting at `pc` (depth `kc`, as
    /// `kc_for(k)` cut it), contiguous, `kc × NR` floats each.
    pub(crate) fn panels(&self, pc: usize, kc: usize, first: usize, count: usize) -> &[f32] {
        let (nr, panels) = (self.blocking.nr, self.n.div_ceil(self.blocking.nr));
        let start = self.offset + pc * panels * nr + first * kc * nr;
        &self.raw[start..start + count * kc * nr]
    }
}
