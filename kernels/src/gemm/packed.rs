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
    /// Backing store; the panels start `offset` floats in, on a 64-byte boundary.
    raw: Vec<f32>,
    offset: usize,
}

impl PackedB {
    /// Packs `b` (any view: strided, transposed, gathered) for `blocking`.
    pub fn new(b: MatRef<'_>, blocking: Blocking) -> PackedB {
        let (k, n, nr) = (b.rows, b.cols, blocking.nr);
        let panels = n.div_ceil(nr);
        let len = panels * nr * k;
        let mut raw = vec![0.0f32; len + 16];
        let offset = raw.as_ptr().align_offset(64).min(15);
        let data = &mut raw[offset..offset + len];
        let k_slice = blocking.kc_for(k);
        for pc in (0..k).step_by(k_slice.max(1)) {
            let kc = k_slice.min(k - pc);
            pack_b_block(blocking.isa, &mut data[pc * panels * nr..(pc + kc) * panels * nr], &b, pc, kc, 0, panels, nr);
        }
        PackedB { blocking, k, n, raw, offset }
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

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.raw.len() * 4
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
