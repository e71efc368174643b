//! Allocation that returns an error instead of aborting the process.
//!
//! `vec![x; n]` panics when `n` elements overflow `usize` or `isize::MAX` bytes, and aborts the
//! whole process when the allocator refuses (a shape of 4 TiB). Every buffer whose size a caller
//! controls — constructors, and results larger than their inputs (a reduction over an empty dim,
//! a broadcast, a product with an empty inner dim) — comes from here, through the kernels'
//! fallible zeroed allocation.

use crate::error::{Error, Result};
use crate::tensor::checked_numel;
use elide_kernels::buffer::try_zeroed_f32;

/// A vector of `shape`'s element count, every element `value`: a buffer from the
/// [pool](crate::pool) when one of that size is free, else memory that comes zeroed from the
/// allocator (`calloc`, as `vec![0.0; n]` would), so a zero fill costs no extra pass.
///
/// # Errors
/// [`Error::Alloc`] naming `op` and `shape` when the element count overflows `usize` or the
/// memory cannot be allocated.
pub(crate) fn filled(op: &'static str, shape: &[usize], value: f32) -> Result<Vec<f32>> {
    let numel = checked_numel(shape).ok_or_else(|| Error::Alloc {
        op,
        shape: shape.to_vec(),
        detail: "has more elements than fit in usize".into(),
    })?;
    if let Some(mut out) = crate::pool::take_pooled(numel) {
        out.fill(value);
        return Ok(out);
    }
    let mut out = try_zeroed_f32(numel).ok_or_else(|| Error::Alloc {
        op,
        shape: shape.to_vec(),
        detail: format!("needs {}, which could not be allocated", describe_bytes(numel, size_of::<f32>())),
    })?;
    if value.to_bits() != 0 {
        out.fill(value);
    }
    Ok(out)
}

/// `numel · size` bytes, written out (the product may not fit in `usize`), with a binary-unit
/// summary: `4398046511104 bytes (4.0 TiB)`.
fn describe_bytes(numel: usize, size: usize) -> String {
    let bytes = numel as u128 * size as u128;
    let units = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let (mut value, mut unit) = (bytes as f64, "B");
    for u in units {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "B" {
        format!("{bytes} bytes")
    } else {
        format!("{bytes} bytes ({value:.1} {unit})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_overflow_or_cannot_be_allocated_are_errors() {
        let err = filled("test", &[1 << 40, 1 << 40], 0.0).unwrap_err();
        assert_eq!(err.to_string(), "test: shape [1099511627776, 1099511627776] has more elements than fit in usize");
        // 2^61 floats: the byte count overflows isize, so the reservation itself fails.
        let err = filled("test", &[1 << 61], 0.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test: shape [2305843009213693952] needs 9223372036854775808 bytes (8.0 EiB), which could not be allocated"
        );
        assert_eq!(filled("test", &[2, 0, 3], 1.0).unwrap(), Vec::<f32>::new());
        assert_eq!(filled("test", &[2, 2], 1.5).unwrap(), vec![1.5; 4]);
    }
}
