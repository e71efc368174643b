//! Zeroed `f32` buffers whose allocation may fail without aborting the process.

use std::alloc::{alloc_zeroed, Layout};

/// A vector of `len` zeros, or `None` when `len` floats cannot be allocated (the allocator
/// refuses, or the byte count overflows `isize`). Like `vec![0.0; len]` it asks for zeroed
/// memory (`calloc`), so fresh pages are not written twice; unlike it, a refusal comes back as
/// `None` instead of aborting the process.
pub fn try_zeroed_f32(len: usize) -> Option<Vec<f32>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = Layout::array::<f32>(len).ok()?;
    // SAFETY: the layout has a non-zero size (len > 0 floats of 4 bytes).
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<f32>();
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` comes from the global allocator with the layout of `len` f32s — the layout a
    // `Vec<f32>` of capacity `len` uses — every byte is zero (a valid f32: 0.0), and the length
    // equals the capacity.
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_buffers_or_none() {
        assert_eq!(try_zeroed_f32(0), Some(Vec::new()));
        let v = try_zeroed_f32(1000).unwrap();
        assert_eq!((v.len(), v.capacity()), (1000, 1000));
        assert!(v.iter().all(|&x| x.to_bits() == 0));
        assert_eq!(try_zeroed_f32(usize::MAX), None); // the byte count overflows
        assert_eq!(try_zeroed_f32(1 << 61), None); // 8 EiB: more than isize::MAX bytes
                                                   // 4 EiB: below isize::MAX bytes, but more than any 64-bit address space.
        assert_eq!(try_zeroed_f32(1 << 60), None);
    }
}
