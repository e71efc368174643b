//! Zeroed `f32` buffers whose allocation may fail without aborting the process, and the
//! transparent-huge-page advice every large buffer of elide gets.
//!
//! Why huge pages: a mixture-of-experts layer streams tens of MiB of expert weights per call
//! and reads its tokens' rows at random. With 4 KiB pages each page of that costs a TLB miss
//! and a page walk, on the micro-kernel's loads and on the prefetches that run ahead of them.
//! Linux backs a region with 2 MiB pages when asked (`madvise(MADV_HUGEPAGE)`; most
//! distributions' default is to do so only when asked), so every buffer of at least one huge
//! page that elide allocates asks, before its pages are first touched. [`set_huge_pages`]
//! turns the advice off (memory is then backed as the system's default says).

use std::alloc::{alloc_zeroed, Layout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Whether large buffers are advised to use huge pages (on unless [`set_huge_pages`] said no).
static HUGE_PAGES: AtomicBool = AtomicBool::new(true);

/// Turns the huge-page advice for buffers allocated from now on on or off (default on).
/// Off, buffers are backed as the system's default says (with Linux's usual `madvise`
/// setting, 4 KiB pages). Buffers already allocated keep what they were given.
pub fn set_huge_pages(enabled: bool) {
    HUGE_PAGES.store(enabled, Ordering::Relaxed);
}

/// Whether buffers allocated now get the huge-page advice ([`set_huge_pages`]).
pub fn huge_pages() -> bool {
    HUGE_PAGES.load(Ordering::Relaxed)
}

/// The size of a transparent huge page, when the system has them (Linux with THP built in:
/// `hpage_pmd_size`, 2 MiB on x86-64), read once.
pub fn huge_page_bytes() -> Option<usize> {
    static BYTES: OnceLock<Option<usize>> = OnceLock::new();
    *BYTES.get_or_init(|| {
        if cfg!(target_os = "linux") {
            let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size").ok()?;
            text.trim().parse::<usize>().ok().filter(|b| b.is_power_of_two() && *b > 4096)
        } else {
            None
        }
    })
}

/// Asks the system to back the whole huge pages that lie inside `buf` with transparent huge
/// pages, and returns how many bytes it advised (0 when the advice is off, the system has no
/// huge pages, `buf` holds no whole huge page, or the system refused). The contents do not
/// change. Call it before the pages are first written, so that the first write faults in a
/// huge page; on pages already written the advice lets the kernel merge them later.
pub fn advise_huge_pages(buf: &mut [f32]) -> usize {
    let Some(page) = huge_page_bytes().filter(|_| huge_pages()) else { return 0 };
    let start = buf.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let (first, past) = (start.next_multiple_of(page), end - end % page);
    if past <= first {
        return 0;
    }
    advise(first, past - first)
}

#[cfg(target_os = "linux")]
fn advise(start: usize, bytes: usize) -> usize {
    // SAFETY: `advise_huge_pages` passes whole pages inside a buffer it borrows mutably;
    // MADV_HUGEPAGE changes how those pages are backed, never their contents, and touches no
    // memory outside the range.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE) };
    if rc == 0 {
        bytes
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: usize, _bytes: usize) -> usize {
    0
}

/// [`try_zeroed_f32`] for sizes the program chose itself: aborts as `vec![0.0; len]` does
/// when the memory cannot be allocated.
pub fn zeroed_f32(len: usize) -> Vec<f32> {
    try_zeroed_f32(len).unwrap_or_else(|| vec![0.0; len])
}

/// A vector of `len` zeros, or `None` when `len` floats cannot be allocated (the allocator
/// refuses, or the byte count overflows `isize`). Like `vec![0.0; len]` it asks for zeroed
/// memory (`calloc`), so fresh pages are not written twice; unlike it, a refusal comes back as
/// `None` instead of aborting the process. A buffer holding a whole huge page gets
/// [`advise_huge_pages`] before anything writes it.
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
    let mut v = unsafe { Vec::from_raw_parts(ptr, len, len) };
    if huge_page_bytes().is_some_and(|page| len * 4 >= page) {
        advise_huge_pages(&mut v);
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advice covers whole huge pages inside the buffer and leaves its contents; it is not
    /// given when turned off or for a buffer holding no whole huge page. (Whether the system
    /// then backs the pages with huge pages is its decision, not checked here.)
    #[test]
    fn huge_page_advice_covers_whole_pages_inside_the_buffer() {
        let Some(page) = huge_page_bytes() else {
            // No transparent huge pages here: nothing is ever advised.
            assert_eq!(advise_huge_pages(&mut vec![0.0; 1 << 22]), 0);
            return;
        };
        let floats = page / 4;
        let mut big: Vec<f32> = (0..3 * floats + 5).map(|i| i as f32).collect();
        let advised = advise_huge_pages(&mut big);
        assert_eq!(advised % page, 0);
        // Three pages and a bit hold at least two whole aligned pages, at most three.
        assert!((2 * page..=3 * page).contains(&advised), "advised {advised} bytes of a {page}-byte page");
        assert!(big.iter().enumerate().all(|(i, &v)| v == i as f32));
        assert_eq!(advise_huge_pages(&mut vec![0.0; floats / 2]), 0);
        assert_eq!(advise_huge_pages(&mut []), 0);
        set_huge_pages(false);
        assert!(!huge_pages());
        assert_eq!(advise_huge_pages(&mut big), 0);
        set_huge_pages(true);
        assert!(huge_pages());
        assert!(zeroed_f32(3 * floats).iter().all(|&v| v.to_bits() == 0));
    }

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
