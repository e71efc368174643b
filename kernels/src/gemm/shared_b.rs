//! One KC slice of B's NC block, shared by every work item of the slice and packed on first
//! use: one group of panels per thread, each packed by the first item that needs one of its
//! panels.
//!
//! Packing the whole block before the items start (BLIS's order) puts a fork/join around the
//! packing alone. For the products of about a millisecond that a mixture-of-experts layer is
//! made of, that phase cost more on two threads than on one (config A's `X·W1`, 1024 × 512 ×
//! 1024: 0.4 ms of a 3.1 ms call on 2 threads, 0.22 ms of 5.5 on 1). Packed on first use, each
//! thread packs its share at the start of its first work item and goes on multiplying, and the
//! block needs no fork/join of its own. Packing is a copy with no arithmetic, so which thread
//! packs a panel never changes a result.

use super::pack::pack_b_block;
use super::view::MatRef;
use crate::Isa;
use std::sync::atomic::{AtomicU8, Ordering};

/// A group's panels are not packed yet.
const EMPTY: u8 = 0;
/// A thread is packing the group.
const PACKING: u8 = 1;
/// The group is packed; its panels are only read from now on.
const READY: u8 = 2;
/// The thread packing the group panicked.
const POISONED: u8 = 3;

/// Spins of a thread waiting for another's group between yields of its core.
const SPINS_PER_YIELD: u32 = 64;

/// The packed panels of `B[pc..pc+kc, jc..jc+panels·nr]`, in a caller's buffer, claimed and
/// packed `group` panels at a time: a row-major B is then read a group's width of each row at
/// once (see [`pack_b_block`]; one panel at a time, every 256-byte read started a new page and
/// 2048³ ran 3–7 % slower).
pub(crate) struct SharedB<'a> {
    buf: *mut f32,
    /// One state per group of panels.
    state: &'a [AtomicU8],
    panels: usize,
    group: usize,
    b: MatRef<'a>,
    isa: Isa,
    pc: usize,
    kc: usize,
    jc: usize,
    nr: usize,
}

// SAFETY: each group's slots are written by the one thread that claimed the group
// (EMPTY -> PACKING) and read by any thread only after that thread published them (READY,
// release/acquire); `b` is a shared view of immutable data.
unsafe impl Sync for SharedB<'_> {}

impl<'a> SharedB<'a> {
    /// A block of `panels` panels of `kc × nr` floats over `buf`, claimed in groups of `group`
    /// panels, none packed yet (the first `⌈panels / group⌉` states are reset here). Panics if
    /// `buf` or `state` is too short, `group` is 0, or a panel would start past B's last column
    /// (internal invariants of the driver).
    pub(crate) fn new(
        buf: &'a mut [f32],
        state: &'a [AtomicU8],
        b: MatRef<'a>,
        isa: Isa,
        (pc, kc): (usize, usize),
        (jc, nr, panels, group): (usize, usize, usize, usize),
    ) -> SharedB<'a> {
        assert!(group > 0, "B panels claimed in groups of none");
        let state = &state[..panels.div_ceil(group)];
        assert!(buf.len() >= panels * kc * nr, "B packing buffer too short");
        assert!(panels == 0 || jc + (panels - 1) * nr < b.cols, "a B panel starts past the matrix");
        assert!(pc + kc <= b.rows, "a KC slice ends past B's rows");
        for s in state {
            s.store(EMPTY, Ordering::Relaxed);
        }
        SharedB { buf: buf.as_mut_ptr(), state, panels, group, b, isa, pc, kc, jc, nr }
    }

    /// Panel `q`, packed now with its group by this thread if no thread has claimed the group
    /// yet, or once the thread that did has finished. Panics if `q` is out of range, or if the
    /// thread packing its group panicked.
    pub(crate) fn panel(&self, q: usize) -> &[f32] {
        assert!(q < self.panels, "B panel {q} of {}", self.panels);
        let len = self.kc * self.nr;
        let g = q / self.group;
        let state = &self.state[g];
        if state.load(Ordering::Acquire) != READY {
            if state.compare_exchange(EMPTY, PACKING, Ordering::Acquire, Ordering::Acquire).is_ok() {
                let (first, count) = (g * self.group, self.group.min(self.panels - g * self.group));
                // SAFETY: the group's panels are below `panels`, all inside the buffer (checked
                // in `new`); this thread won the claim, so it alone touches them until READY.
                let slots = unsafe { std::slice::from_raw_parts_mut(self.buf.add(first * len), count * len) };
                let poison = PoisonOnUnwind(state);
                pack_b_block(self.isa, slots, &self.b, self.pc, self.kc, self.jc + first * self.nr, count, self.nr);
                std::mem::forget(poison);
                state.store(READY, Ordering::Release);
            } else {
                wait_ready(state);
            }
        }
        // SAFETY: the panel's group is READY (seen with acquire ordering, or packed by this
        // thread), so no thread writes it any more; q < panels keeps it inside the buffer.
        unsafe { std::slice::from_raw_parts(self.buf.add(q * len), len) }
    }
}

/// Spins until another thread publishes the group behind `state`; panics if it panicked.
fn wait_ready(state: &AtomicU8) {
    let mut spins = 0u32;
    loop {
        match state.load(Ordering::Acquire) {
            READY => return,
            POISONED => panic!("the thread packing a group of B panels panicked"),
            _ => {}
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(SPINS_PER_YIELD) {
            std::thread::yield_now();
        }
    }
}

/// Marks a group poisoned if its packing unwinds, so that no other thread waits for it forever.
struct PoisonOnUnwind<'a>(&'a AtomicU8);

impl Drop for PoisonOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.store(POISONED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Layout, Operand};

    /// Every panel of every layout, claimed in groups of every size, by one thread or by
    /// several asking in different orders, equals the panel packed directly (a value-by-value
    /// check against B keeps that reference honest).
    #[test]
    fn panels_equal_the_directly_packed_block() {
        let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Padded, Layout::Gathered, Layout::GatheredCols];
        for isa in Isa::supported() {
            for (k, n, nr) in [(7, 33, 8), (33, 257, 16), (1, 1, 8), (20, 130, 64)] {
                for layout in layouts {
                    let b = Operand::new(k, n, layout, 5);
                    let (pc, kc, jc) = (k / 3, k - k / 3, if n > 40 { 16 } else { 0 });
                    let panels = (n - jc).div_ceil(nr);
                    let mut want = vec![f32::NAN; panels * kc * nr];
                    pack_b_block(isa, &mut want, &b.view(), pc, kc, jc, panels, nr);
                    for (q, panel) in want.chunks(kc * nr).enumerate() {
                        for (i, &x) in panel.iter().enumerate() {
                            let (p, j) = (pc + i / nr, jc + q * nr + i % nr);
                            let expected = if j < n { b.get(p, j) as f32 } else { 0.0 };
                            assert_eq!(x, expected, "{isa} {layout:?} panel {q} element {i}");
                        }
                    }
                    for group in [1, 2, panels.div_ceil(2).max(1), panels] {
                        for threads in [1, 3] {
                            let states: Vec<AtomicU8> = (0..panels).map(|_| AtomicU8::new(READY)).collect();
                            let mut buf = vec![f32::NAN; panels * kc * nr];
                            let shared =
                                SharedB::new(&mut buf, &states, b.view(), isa, (pc, kc), (jc, nr, panels, group));
                            std::thread::scope(|s| {
                                for t in 0..threads {
                                    let (shared, want) = (&shared, &want);
                                    s.spawn(move || {
                                        // Thread t walks the panels from its own start, as the
                                        // driver's work items do.
                                        for step in 0..panels {
                                            let q = (step + t * panels / threads) % panels;
                                            let got = shared.panel(q);
                                            let what = format!("{isa} {layout:?} group {group} panel {q}");
                                            assert_eq!(got, &want[q * kc * nr..(q + 1) * kc * nr], "{what}");
                                        }
                                    });
                                }
                            });
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_thread_waiting_on_a_group_whose_packer_panicked_panics_too() {
        let state = AtomicU8::new(PACKING);
        std::thread::scope(|s| {
            s.spawn(|| {
                let caught = std::panic::catch_unwind(|| {
                    let _poison = PoisonOnUnwind(&state);
                    panic!("packing fails");
                });
                assert!(caught.is_err());
            });
        });
        let waited = std::panic::catch_unwind(|| wait_ready(&state));
        assert!(waited.is_err(), "the waiter gave up instead of spinning forever");
    }
}
