//! The algorithmic reference: a triple loop in f64, kept on purpose as the oracle that every
//! GEMM path is tested against.

use super::epilogue::{Accum, Epilogue};
use super::view::{MatMut, MatRef};

/// `C ← accum(C, scale_i · act(alpha · A·B + bias))`, one element at a time, summed in f64.
/// Panics on mismatched shapes (it is a test oracle, not an API).
pub fn gemm_reference(
    c: &mut MatMut<'_>,
    accum: Accum,
    a: &MatRef<'_>,
    b: &MatRef<'_>,
    alpha: f32,
    epi: &Epilogue<'_>,
) {
    assert!(a.cols == b.rows && c.rows == a.rows && c.cols == b.cols, "gemm_reference: shapes do not chain");
    for i in 0..a.rows {
        for j in 0..b.cols {
            let dot: f64 = (0..a.cols).map(|p| a.get(i, p) as f64 * b.get(p, j) as f64).sum();
            let mut v = alpha as f64 * dot + epi.bias.map_or(0.0, |bias| bias[j] as f64);
            v = epi.activation.reference(v) * epi.row_scale.map_or(1.0, |s| s[i] as f64);
            let at = c.row_offset(i) + j * c.col_stride;
            c.data[at] = match accum {
                Accum::Replace => v as f32,
                Accum::Add => (c.data[at] as f64 + v) as f32,
            };
        }
    }
}
