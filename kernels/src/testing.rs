//! Helpers shared by the kernels' unit tests: deterministic data, tolerance checks, thread pools,
//! matrix operands in every layout a caller may hand over.

use crate::gemm::MatRef;

/// Vector lengths every elementwise test sweeps: around and across the 8- and 16-lane widths.
pub(crate) const SIZES: [usize; 6] = [1, 3, 7, 33, 65, 257];

/// `(rows, cols)` shapes every row-wise test sweeps.
pub(crate) const SHAPES: [(usize, usize); 6] = [(1, 1), (1, 257), (5, 257), (33, 7), (3, 65), (7, 33)];

/// `len` pseudo-random floats in `[lo, hi)`, the same for the same seed (splitmix64).
pub(crate) fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// Asserts `|got - want| <= rtol·|want| + atol` element by element (NaN must match NaN,
/// infinities must match exactly).
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let ok = if w.is_nan() || w.is_infinite() {
            g.is_nan() == w.is_nan() && (w.is_nan() || g == w)
        } else {
            (g - w).abs() <= rtol * w.abs() + atol
        };
        assert!(ok, "{what}: element {i}: got {g:e}, want {w:e}");
    }
}

/// Runs `f` inside a fresh rayon pool of each size in `threads`, returning the results in order.
pub(crate) fn in_pools<R: Send>(threads: &[usize], f: impl Fn() -> R + Sync) -> Vec<R> {
    threads
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("thread pool").install(&f))
        .collect()
}

/// Bit patterns of a float slice, for exact comparisons that treat NaN as equal to itself.
pub(crate) fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Layout of an operand in a test case.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Layout {
    RowMajor,
    /// Stored transposed (column-major), read through `.t()`.
    Transposed,
    /// Row-major inside a wider buffer (row stride > cols).
    Padded,
    /// Rows gathered from a larger matrix through a shuffled index list.
    Gathered,
    /// Columns gathered: the transpose of a row-gathered matrix (Xᵀ with K gathered, as in a
    /// mixture-of-experts weight gradient).
    GatheredCols,
}

/// Backing storage for an `r × c` operand in `layout`.
pub(crate) struct Operand {
    pub(crate) data: Vec<f32>,
    pub(crate) index: Vec<u32>,
    pub(crate) layout: Layout,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Operand {
    pub(crate) fn new(rows: usize, cols: usize, layout: Layout, seed: u64) -> Self {
        let (len, index) = match layout {
            Layout::RowMajor | Layout::Transposed => (rows * cols, vec![]),
            Layout::Padded => (rows * (cols + 3), vec![]),
            Layout::Gathered => {
                let src_rows = 2 * rows + 1;
                let index = (0..rows).map(|i| ((i * 7 + 3) % src_rows) as u32).collect();
                (src_rows * cols, index)
            }
            Layout::GatheredCols => {
                let src_cols = 2 * cols + 1;
                let index = (0..cols).map(|j| ((j * 5 + 1) % src_cols) as u32).collect();
                (src_cols * rows, index)
            }
        };
        Operand { data: data(len, seed, -1.0, 1.0), index, layout, rows, cols }
    }

    pub(crate) fn view(&self) -> MatRef<'_> {
        let (r, c) = (self.rows, self.cols);
        match self.layout {
            Layout::RowMajor => MatRef::row_major(&self.data, r, c).unwrap(),
            Layout::Transposed => MatRef::row_major(&self.data, c, r).unwrap().t(),
            Layout::Padded => MatRef::new(&self.data, r, c, c + 3, 1).unwrap(),
            Layout::Gathered => MatRef::row_major(&self.data, 2 * r + 1, c).unwrap().gather_rows(&self.index).unwrap(),
            Layout::GatheredCols => {
                MatRef::row_major(&self.data, 2 * c + 1, r).unwrap().gather_rows(&self.index).unwrap().t()
            }
        }
    }

    /// Element `(i, j)` through the view, in f64.
    pub(crate) fn get(&self, i: usize, j: usize) -> f64 {
        self.view().get(i, j) as f64
    }
}
