//! A process-wide pool of large `f32` buffers, so a layer that allocates its activations on
//! every call reuses the memory of the previous call instead of asking the OS for fresh pages.
//!
//! Why: glibc serves allocations above 128 KiB (up to 32 MiB, adaptively) with a fresh `mmap`
//! and returns them with `munmap`, so every call of a layer page-faults and zero-fills all the
//! bytes it writes — measured at 30–40 % of a mixture-of-experts forward pass. The pool keeps
//! freed buffers of 128 KiB and more by size class and hands them out again:
//! - [`take`] / [`take_zeroed`]: a buffer of exactly `len` floats (a pooled one when a large
//!   enough one is free, else a new allocation);
//! - tensors give their storage back when the last view of it is dropped, and any owner of a
//!   `Vec<f32>` may [`give`] it back; a buffer is kept only if its size class has been asked
//!   for, so memory nobody takes from the pool goes straight back to the allocator;
//! - size classes are four per power of two (a request takes a large enough buffer of its own
//!   class or a neighbouring one, so at most about 40 % larger than asked); tensor constructors
//!   and results that go through the fallible allocation take from the pool too; and the pool holds at most [`limit`] bytes (512 MiB unless
//!   `ELIDE_POOL_MIB` or [`set_limit`] says otherwise): a buffer that would exceed it is freed;
//! - [`release`] frees everything pooled; [`set_enabled`]`(false)` turns the pool off.
//!
//! ```
//! use elide_tensor::pool;
//! let a = pool::take_zeroed(1 << 20); // 4 MiB, zeroed
//! assert!(a.iter().all(|&x| x == 0.0));
//! pool::give(a); // kept for the next caller of this size
//! let b = pool::take(1 << 20); // the same memory, contents unspecified
//! assert_eq!(b.len(), 1 << 20);
//! pool::release(); // hand pooled memory back to the allocator
//! ```

use elide_kernels::buffer::zeroed_f32;
use std::sync::Mutex;

/// Buffers below this many floats (128 KiB) are not pooled: the allocator serves them from
/// its heap without page faults.
pub const MIN_POOLED_LEN: usize = 1 << MIN_LOG2;
const MIN_LOG2: usize = 15;
/// Size classes per power of two.
const CLASSES_PER_OCTAVE: usize = 4;
/// Largest buffer pooled (2^40 floats): a bound for the class table, far above any tensor.
const MAX_LOG2: usize = 40;
const CLASSES: usize = (MAX_LOG2 - MIN_LOG2) * CLASSES_PER_OCTAVE;
const DEFAULT_LIMIT_BYTES: usize = 512 << 20;

/// What the pool holds and how often it was asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of capacity held by pooled buffers right now.
    pub pooled_bytes: usize,
    /// Requests served by a pooled buffer.
    pub hits: u64,
    /// Requests of a poolable size that needed a new allocation.
    pub misses: u64,
}

struct Pool {
    classes: Vec<Vec<Vec<f32>>>,
    /// Classes some caller has asked [`take`] for. Only buffers such a request could use are
    /// kept: code that allocates with `vec!` and drops its tensors would otherwise fill the pool
    /// with buffers nobody takes, and its next `vec!` would get fresh pages instead of the
    /// memory it just freed (measured: the combine step of a MoE forward 3–5× slower).
    demanded: Vec<bool>,
    bytes: usize,
    limit: Option<usize>,
    enabled: bool,
    hits: u64,
    misses: u64,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    classes: Vec::new(),
    demanded: Vec::new(),
    bytes: 0,
    limit: None,
    enabled: true,
    hits: 0,
    misses: 0,
});

fn lock() -> std::sync::MutexGuard<'static, Pool> {
    // A panic while holding the lock leaves the pool consistent (every update is one step).
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Pool {
    fn limit(&mut self) -> usize {
        *self.limit.get_or_insert_with(|| {
            std::env::var("ELIDE_POOL_MIB")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map_or(DEFAULT_LIMIT_BYTES, |mib| mib.saturating_mul(1 << 20))
        })
    }

    fn clear(&mut self) {
        self.classes.clear();
        self.bytes = 0;
    }
}

/// The smallest class holding buffers of at least `len` floats: `(index, capacity)`.
fn class_at_least(len: usize) -> Option<(usize, usize)> {
    let len = len.max(MIN_POOLED_LEN);
    let e = (usize::BITS - 1 - len.leading_zeros()) as usize; // 2^e <= len < 2^(e+1)
    let base = 1usize << e;
    let step = base / CLASSES_PER_OCTAVE;
    let q = (len - base).div_ceil(step); // 0 ..= 4; 4 is the next octave's first class
    let index = (e - MIN_LOG2) * CLASSES_PER_OCTAVE + q;
    (index < CLASSES).then_some((index, base + q * step))
}

/// The largest class whose requests a buffer of `capacity` floats can serve.
fn class_at_most(capacity: usize) -> Option<usize> {
    if capacity < MIN_POOLED_LEN {
        return None;
    }
    let e = (usize::BITS - 1 - capacity.leading_zeros()) as usize;
    let base = 1usize << e;
    let q = (capacity - base) / (base / CLASSES_PER_OCTAVE);
    let index = (e - MIN_LOG2) * CLASSES_PER_OCTAVE + q;
    (index < CLASSES).then_some(index)
}

/// A buffer of exactly `len` floats whose contents are unspecified (but initialised): a
/// pooled buffer if one of its size class is free, else a new one.
pub fn take(len: usize) -> Vec<f32> {
    take_from_pool(len).unwrap_or_else(|| zeroed_f32(len))
}

/// A buffer of exactly `len` zeros (a pooled buffer, cleared, if one is free).
pub fn take_zeroed(len: usize) -> Vec<f32> {
    match take_from_pool(len) {
        Some(mut v) => {
            v.fill(0.0);
            v
        }
        None => zeroed_f32(len),
    }
}

/// A pooled buffer of exactly `len` floats (contents unspecified) if one is free; never
/// allocates. Marks the size as wanted, so buffers of it are kept from now on.
pub(crate) fn take_pooled(len: usize) -> Option<Vec<f32>> {
    if len < MIN_POOLED_LEN {
        return None;
    }
    let (index, _) = class_at_least(len)?;
    let mut pool = lock();
    if !pool.enabled {
        return None;
    }
    mark_demanded(&mut pool, index);
    let found = pop_fitting(&mut pool, index, len);
    drop(pool);
    found.map(|mut v| {
        v.truncate(len);
        v.resize(len, 0.0);
        v
    })
}

fn mark_demanded(pool: &mut Pool, index: usize) {
    if pool.demanded.len() <= index {
        pool.demanded.resize(index + 1, false);
    }
    pool.demanded[index] = true;
}

/// Pops a buffer of at least `len` floats from the class of `len` (`index`), the one below
/// (buffers allocated at exactly their length sit there) or the one above; updates the counts.
fn pop_fitting(pool: &mut Pool, index: usize, len: usize) -> Option<Vec<f32>> {
    let found = (index.saturating_sub(1)..index + 2).find_map(|i| {
        let class = pool.classes.get_mut(i)?;
        let at = class.iter().position(|v| v.capacity() >= len)?;
        Some(class.swap_remove(at))
    });
    match &found {
        Some(v) => {
            pool.bytes -= v.capacity() * 4;
            pool.hits += 1;
        }
        None => pool.misses += 1,
    }
    found
}

fn take_from_pool(len: usize) -> Option<Vec<f32>> {
    let (index, capacity) = class_at_least(len).filter(|_| len >= MIN_POOLED_LEN)?;
    let found = {
        let mut pool = lock();
        if !pool.enabled {
            return None;
        }
        mark_demanded(&mut pool, index);
        pop_fitting(&mut pool, index, len)
    };
    Some(match found {
        Some(mut v) => {
            // Shrinking keeps the initialised prefix; growing writes only the new tail.
            v.truncate(len);
            v.resize(len, 0.0);
            v
        }
        None => {
            // Allocate the class's full capacity so the buffer serves its whole class later:
            // zeroed by the allocator (fresh pages are not written here, so a large buffer's
            // huge-page advice comes before its first write).
            let mut v = zeroed_f32(capacity);
            v.truncate(len);
            v
        }
    })
}

/// Gives a buffer back for reuse. Small buffers, buffers past the pool's byte limit, and
/// everything while the pool is disabled are simply freed.
pub fn give(buffer: Vec<f32>) {
    let Some(index) = class_at_most(buffer.capacity()) else { return };
    let bytes = buffer.capacity() * 4;
    let mut pool = lock();
    // A request of class i takes from classes i - 1, i and i + 1 (see `pop_fitting`).
    let wanted = |i: usize| pool.demanded.get(i).copied().unwrap_or(false);
    let useful = wanted(index) || wanted(index + 1) || index.checked_sub(1).is_some_and(wanted);
    if !pool.enabled || !useful || pool.bytes + bytes > pool.limit() {
        drop(pool);
        return; // `buffer` is freed here, outside the lock
    }
    if pool.classes.len() <= index {
        pool.classes.resize_with(index + 1, Vec::new);
    }
    pool.classes[index].push(buffer);
    pool.bytes += bytes;
}

/// Frees every pooled buffer (the pool stays enabled and fills again as tensors are dropped).
pub fn release() {
    let classes = {
        let mut pool = lock();
        pool.bytes = 0;
        std::mem::take(&mut pool.classes)
    };
    drop(classes);
}

/// Turns the pool on or off; turning it off frees what it holds. On by default.
pub fn set_enabled(enabled: bool) {
    let mut pool = lock();
    pool.enabled = enabled;
    if !enabled {
        pool.clear();
    }
}

/// Whether the pool is on.
pub fn is_enabled() -> bool {
    lock().enabled
}

/// Sets the most bytes the pool may hold; buffers beyond it are freed when given back.
pub fn set_limit(bytes: usize) {
    lock().limit = Some(bytes);
}

/// The most bytes the pool may hold.
pub fn limit() -> usize {
    lock().limit()
}

/// Current contents and hit counts.
pub fn stats() -> PoolStats {
    let pool = lock();
    PoolStats { pooled_bytes: pool.bytes, hits: pool.hits, misses: pool.misses }
}

/// Tensor storage: a buffer that goes back to the pool when the last tensor viewing it is
/// dropped.
#[derive(Debug, Default)]
pub(crate) struct Storage(pub(crate) Vec<f32>);

impl std::ops::Deref for Storage {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_length_within_a_quarter() {
        for len in [MIN_POOLED_LEN, MIN_POOLED_LEN + 1, 40_000, 65_536, 65_537, 100_000, 1 << 22, (1 << 22) + 3] {
            let (index, capacity) = class_at_least(len).unwrap();
            assert!(capacity >= len && capacity as f64 <= 1.25 * len as f64 + 1.0, "{len} -> {capacity}");
            // A buffer of exactly the class capacity is filed in that class, and serves `len`.
            assert_eq!(class_at_most(capacity), Some(index), "{len}");
            // One float less belongs to the class below.
            assert_eq!(class_at_most(capacity - 1), index.checked_sub(1).filter(|_| capacity > MIN_POOLED_LEN));
        }
        assert_eq!(class_at_most(MIN_POOLED_LEN - 1), None);
    }

    /// Buffers the pool holds whose capacity passes `keep`. The pool is process-wide and other
    /// tests give it their tensors' buffers at any moment, so the test below counts only
    /// buffers of sizes no other test uses, not the total bytes.
    fn held(keep: impl Fn(usize) -> bool) -> usize {
        lock().classes.iter().flatten().filter(|v| keep(v.capacity())).count()
    }

    #[test]
    fn buffers_are_reused_bounded_and_released() {
        release();
        // A size no other test uses.
        let len = (3 << 20) + 5;
        let mine = |capacity: usize| capacity >= len;
        let mut a = take(len);
        assert_eq!(a.len(), len);
        a[0] = 7.0;
        let ptr = a.as_ptr();
        give(a);
        assert!(stats().pooled_bytes >= len * 4);
        assert_eq!(held(mine), 1);
        // A slightly smaller request of the same class gets the same memory back.
        let b = take(len - 100);
        assert_eq!((b.as_ptr(), b.len()), (ptr, len - 100));
        give(b);
        let z = take_zeroed(len);
        assert_eq!(z.as_ptr(), ptr);
        assert!(z.iter().all(|&x| x == 0.0));
        give(z);
        assert_eq!(held(mine), 1);
        // A size nobody has asked for goes back to the allocator.
        let huge = (5 << 22) + 7;
        give(vec![0.0; huge]);
        assert_eq!(held(|capacity| capacity >= huge), 0);
        // Small buffers are not pooled.
        give(vec![1.0; 100]);
        assert_eq!(held(|capacity| capacity < MIN_POOLED_LEN), 0);
        // The byte limit is respected.
        let old_limit = limit();
        set_limit(0);
        give(vec![0.0; len]);
        assert_eq!(held(mine), 1);
        set_limit(old_limit);
        release();
        assert_eq!(held(mine), 0);
        // Disabled: nothing is kept (and nothing another test gives either).
        set_enabled(false);
        give(vec![0.0; len]);
        assert_eq!(stats().pooled_bytes, 0);
        set_enabled(true);
        assert!(is_enabled());
    }
}
