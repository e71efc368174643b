//! f32 GEMM on strided, gathered and scattered views:
//! `C ← accum(C, scale_i · act(alpha · A·B + bias))`.
//!
//! One kernel serves every dense and conditional product in elide. Operands are [`MatRef`]
//! views with any row and column strides (a transpose is free) whose rows or columns may be
//! *gathered* through an index list; the output is a [`MatMut`] whose rows may be *scattered*.
//! Gathers happen inside packing, never as a separate copy. A bias, an activation and a per-row
//! scale (a mixture-of-experts gate) are fused into the store ([`Epilogue`]).
//!
//! The structure is BLIS's (see `driver.rs`): NC/KC/MC cache blocking, packed panels of A and
//! B, an MR×NR register micro-kernel per instruction set ([`Isa`]), rayon over a list of tiles.
//! One-row products stream B without packing (`gemv.rs`).
//!
//! ```
//! use elide_kernels::gemm::{Gemm, MatMut, MatRef, Accum};
//! // C (2x2) = A (2x3) · B (3x2), with B read as the transpose of a 2x3 matrix.
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
//! let bt = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0];
//! let mut c = [0.0; 4];
//! Gemm::default().run(
//!     MatMut::row_major(&mut c, 2, 2)?,
//!     MatRef::row_major(&a, 2, 3)?,
//!     MatRef::row_major(&bt, 2, 3)?.t(),
//! )?;
//! assert_eq!(c, [4.0, 2.0, 10.0, 5.0]);
//! # Ok::<(), elide_kernels::KernelError>(())
//! ```

mod blocking;
mod driver;
mod epilogue;
mod gemv;
mod grouped;
mod microkernel;
mod pack;
mod packed;
pub mod reference;
mod shared_b;
mod view;

pub use blocking::{parse_tile, Blocking};
pub use epilogue::{Accum, Activation, Epilogue};
pub(crate) use epilogue::{GELU_A, GELU_C};
pub use grouped::{GroupProblem, OutRows};
pub use packed::PackedB;
pub use view::{MatMut, MatRef};

use crate::error::{KernelError, Result};
use crate::threading::Par;
use crate::Isa;
use driver::StoreMode;

/// A GEMM call's settings. Build one with struct-update syntax and [`Gemm::run`] it:
/// `Gemm { accum: Accum::Add, ..Gemm::default() }`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm<'a> {
    /// Scales the product `A·B` (before the bias).
    pub alpha: f32,
    /// Replace C, or add to it.
    pub accum: Accum,
    /// Bias, activation and row scale fused into the store.
    pub epilogue: Epilogue<'a>,
    /// Whether to use rayon's pool.
    pub par: Par,
    /// The instruction set; defaults to [`Isa::active`].
    pub isa: Isa,
    /// Register tile and cache blocking; `None` (the default) takes [`Blocking::of`] the path.
    /// One made for another path is ignored in favour of that default.
    pub blocking: Option<Blocking>,
}

impl Default for Gemm<'_> {
    fn default() -> Self {
        Gemm {
            alpha: 1.0,
            accum: Accum::Replace,
            epilogue: Epilogue::default(),
            par: Par::Rayon,
            isa: Isa::active(),
            blocking: None,
        }
    }
}

impl Gemm<'_> {
    /// The blocking used on `isa` (the path actually run).
    pub(crate) fn blocking_for(&self, isa: Isa) -> Blocking {
        self.blocking.filter(|b| b.isa == isa).unwrap_or_else(|| Blocking::of(isa))
    }

    /// Computes `C ← accum(C, scale_i · act(alpha · (A·B)_ij + bias_j))` for `A: m×k`, `B: k×n`,
    /// `C: m×n`.
    ///
    /// # Errors
    /// [`KernelError::Shape`] when the shapes do not chain or the bias/row scale have the
    /// wrong length. Views were already checked for bounds when they were built.
    pub fn run(&self, c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>) -> Result<()> {
        self.run_impl(c, a, b, None)
    }

    /// [`Gemm::run`] with B's panels read from `packed` (B packed once, for weights reused
    /// across calls) instead of packed from `b` on every call. `packed` must hold `b`'s values
    /// ([`PackedB::new`] of the same matrix): the paths that stream B unpacked (one row, a
    /// few rows) still read `b`, and a call whose blocking differs from `packed`'s packs `b`
    /// itself. Results are bit-identical to [`Gemm::run`].
    ///
    /// # Errors
    /// As [`Gemm::run`], and [`KernelError::Shape`] when `packed` is not `b`'s shape.
    pub fn run_packed(&self, c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, packed: &PackedB) -> Result<()> {
        if (packed.rows(), packed.cols()) != (b.rows, b.cols) {
            return Err(KernelError::Shape {
                op: "gemm",
                detail: format!("packed B is {}x{}, B is {}x{}", packed.rows(), packed.cols(), b.rows, b.cols),
            });
        }
        self.run_impl(c, a, b, Some(packed))
    }

    fn run_impl(&self, mut c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, packed: Option<&PackedB>) -> Result<()> {
        const OP: &str = "gemm";
        let (m, k, n) = (a.rows, a.cols, b.cols);
        if b.rows != k || c.rows != m || c.cols != n {
            return Err(KernelError::Shape {
                op: OP,
                detail: format!("A is {m}x{k}, B is {}x{n}, C is {}x{}", b.rows, c.rows, c.cols),
            });
        }
        let epi = &self.epilogue;
        if let Some(bias) = epi.bias.filter(|b| b.len() != n) {
            return Err(KernelError::Shape {
                op: OP,
                detail: format!("bias has {} elements, C has {n} columns", bias.len()),
            });
        }
        if let Some(scale) = epi.row_scale.filter(|s| s.len() != m) {
            return Err(KernelError::Shape {
                op: OP,
                detail: format!("row scale has {} elements, C has {m} rows", scale.len()),
            });
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let isa = self.isa.min(Isa::best_supported());
        if k == 0 {
            empty_product(c, self.accum, epi);
            return Ok(());
        }
        if m == 1 {
            if let Some(form) = gemv::form_of(&b) {
                gemv::run(isa, c, self.accum, a, b, self.alpha, epi, form, self.par);
                return Ok(());
            }
        }
        let bl = self.blocking_for(isa);
        let skinny = m <= gemv::SKINNY_MAX_ROWS && gemv::form_of(&b) == Some(gemv::GemvForm::Rows);
        // A few rows: each weight is used once per row, so stream B in place (the skinny form in
        // grouped.rs, up to SKINNY_MAX_ROWS rows of a row-major B) rather than packing all of
        // it, as the packed kernel would for more rows than one register tile: 7 and 8 rows
        // times 1024 × 4096 weights from memory took 1.79 and 1.42 ms that way, 0.76 and
        // 0.85 ms streamed (2 threads, side by side). Up to 512 rows (64 over one panel) whose K steps
        // are contiguous: the grouped path reads them in place and packs each work item's
        // slice of B just before using it, where the dense driver packs all of B first and
        // splits few row blocks poorly over the threads (see `few_rows_for_grouped`).
        let few_rows = m <= bl.mr || skinny || (a_rows_read_in_place(&a) && few_rows_for_grouped(m, n.div_ceil(bl.nr)));
        if few_rows && c.row_index.is_none() && mode_allows_grouped(self.accum, epi, k, bl.kc) {
            let settings = Gemm { isa, epilogue: Epilogue::default(), ..*self };
            let problem = GroupProblem { a, b, rows: OutRows::Range(0), epilogue: *epi, packed_b: packed };
            return settings.run_grouped(c, &[problem]);
        }
        let mode = StoreMode::of(self.accum, epi.activation);
        if mode == StoreMode::AddActivated && k > bl.kc {
            // The activation needs the whole sum before it meets C: finish the product in a
            // temporary, then add it. (Rare: activations usually go with Accum::Replace.)
            let mut tmp = vec![0.0f32; m * n];
            let replace = Gemm { accum: Accum::Replace, isa, ..*self };
            replace.run_impl(MatMut::row_major(&mut tmp, m, n)?, a, b, packed)?;
            add_rows(c.rb_mut(), &tmp);
            return Ok(());
        }
        driver::run(&Gemm { isa, ..*self }, mode, c, a, b, packed.filter(|p| p.serves(&bl)));
        Ok(())
    }
}

/// Whether A's K steps are contiguous (column stride 1, columns not gathered; rows may be), so
/// that the micro-kernel reads its rows in place and the grouped path never packs A (it would
/// pack it again for every column slice).
fn a_rows_read_in_place(a: &MatRef<'_>) -> bool {
    a.col_stride == 1 && a.col_index.is_none()
}

/// Rows up to which [`Gemm::run`] sends a product whose A is read in place to the grouped path.
const GROUPED_MAX_ROWS: usize = 512;

/// Rows up to which it does so when B is one NR panel wide: the grouped path then has one work
/// item, run by one thread.
const GROUPED_ONE_PANEL_MAX_ROWS: usize = 64;

/// Whether a product of `m` rows over `panels` NR-column panels of B runs faster on the grouped
/// path (one problem) than on the dense driver. Measured side by side on 2 threads (Zen 5,
/// AVX-512, session 8), the grouped path's time ÷ the dense driver's at 16–512 rows, B
/// row-major / transposed, weights from memory: 2048 × 512 weights 0.40–0.87 / 0.67–0.99,
/// 2048 × 128 0.36–0.83 / 0.48–0.84, 512 × 256 0.54–0.85 / 0.78–1.00, 1024 × 4096
/// 0.98–1.03 / 0.83–0.93; with B packed ahead, 0.83–0.99 in most cases, 1.04–1.09 in a few.
/// One panel (4096 × 64, row-major): 0.46–0.68 at 16–64 rows, 1.20–1.40 at 256–512. (At 1024
/// rows over several panels it still measured 0.81–0.98; the cut stays where more shapes were
/// measured.)
fn few_rows_for_grouped(m: usize, panels: usize) -> bool {
    m <= if panels > 1 { GROUPED_MAX_ROWS } else { GROUPED_ONE_PANEL_MAX_ROWS }
}

/// Whether the grouped driver takes this product (it refuses an activation after `Accum::Add`
/// when K spans several KC slices; the dense driver handles that through a temporary).
fn mode_allows_grouped(accum: Accum, epi: &Epilogue<'_>, k: usize, kc: usize) -> bool {
    !(accum == Accum::Add && epi.activation != Activation::Identity && k > kc)
}

/// `k = 0`: the product is zero, so each row is `scale_i · act(bias)`. The one place this
/// case is written, for the dense and the grouped GEMM.
pub(crate) fn empty_product(c: MatMut<'_>, accum: Accum, epi: &Epilogue<'_>) {
    let (m, n) = (c.rows, c.cols);
    for i in 0..m {
        let row = c.row_offset(i);
        let scale = epi.row_scale.map_or(1.0, |s| s[i]);
        for j in 0..n {
            let bias = epi.bias.map_or(0.0, |b| b[j]);
            let v = scale * epi.activation.reference(bias as f64) as f32;
            let dst = &mut c.data[row + j * c.col_stride];
            *dst = if accum == Accum::Add { *dst + v } else { v };
        }
    }
}

/// `C ← C + T` for a contiguous `T` of C's shape.
fn add_rows(c: MatMut<'_>, t: &[f32]) {
    let (m, n) = (c.rows, c.cols);
    for i in 0..m {
        let row = c.row_offset(i);
        for j in 0..n {
            c.data[row + j * c.col_stride] += t[i * n + j];
        }
    }
}

#[cfg(test)]
mod grouped_tests;
#[cfg(test)]
mod tests;
