//! A parallel loop in which the calling thread takes part: [`for_each_task`].
//!
//! A rayon call from a thread outside the pool (a program's main thread) hands all of its work
//! to the pool and puts the caller to sleep until the pool is done: the caller's core idles,
//! the pool's workers are woken one after the other, and the caller must be woken again at the
//! end. For work of a few hundred microseconds, such as one decode step of a mixture-of-experts
//! layer, those wake-ups are a tenth of the call. Here the caller runs tasks itself from the
//! start and only the remaining threads come from the pool, as an OpenMP team's master thread
//! does; it waits for the last task by spinning, not sleeping.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Spins of the caller's wait (`spin_loop` hints) between yields of its core.
const SPINS_PER_YIELD: u32 = 256;

/// Runs `task(i)` once for every `i` in `0..n`, on the calling thread and up to
/// `rayon::current_num_threads() - 1` of the pool's workers. The indices are split into
/// contiguous ranges, one per thread, each run in order (so a task may prefetch what the next
/// index reads); a thread that finishes its range takes tasks from the front of the others'.
/// Which thread runs a task thus varies, so each task's arithmetic must not depend on it
/// (then results are the same for any thread count).
///
/// From inside the pool (a worker thread, e.g. under `ThreadPool::install`) this is rayon's
/// own parallel loop, in which the calling worker also takes part.
///
/// # Errors
/// The error of the lowest-indexed task that failed. After a failure, tasks not yet started
/// are skipped, so which tasks fail besides the first one to do so can vary from run to run.
///
/// # Panics
/// If a task panics, the panic is resumed on the calling thread once every running task has
/// finished.
///
/// ```
/// use elide_kernels::threading::for_each_task;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// let sum = AtomicUsize::new(0);
/// for_each_task(100, |i| {
///     sum.fetch_add(i, Ordering::Relaxed);
///     Ok::<(), ()>(())
/// })?;
/// assert_eq!(sum.into_inner(), 4950);
/// # Ok::<(), ()>(())
/// ```
pub fn for_each_task<E: Send>(n: usize, task: impl Fn(usize) -> Result<(), E> + Sync) -> Result<(), E> {
    let threads = rayon::current_num_threads();
    if n <= 1 || threads <= 1 {
        return (0..n).try_for_each(task);
    }
    let first_error: Mutex<Option<(usize, E)>> = Mutex::new(None);
    let run = |i: usize| {
        let Err(e) = task(i) else { return false };
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
            *slot = Some((i, e));
        }
        true
    };
    if rayon::current_thread_index().is_some() {
        use rayon::prelude::*;
        let failed = AtomicBool::new(false);
        (0..n).into_par_iter().for_each(|i| {
            if !failed.load(Ordering::Relaxed) && run(i) {
                failed.store(true, Ordering::Relaxed);
            }
        });
    } else {
        let team = threads.min(n);
        let shared = Arc::new(Shared::new(n, team, &run));
        for slot in 1..team {
            let helper = Arc::clone(&shared);
            rayon::spawn(move || helper.work(slot));
        }
        shared.work(0);
        shared.wait();
        let panicked = shared.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(payload) = panicked {
            resume_unwind(payload);
        }
    }
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A task as the helpers see it: returns whether it failed.
type Erased = dyn Fn(usize) -> bool + Sync;

/// The state the caller shares with its helpers. Helpers may outlive the call (one that wakes
/// after every task was claimed finds nothing to do), so this lives in an `Arc`, and `task`
/// points into the caller's frame: it is only followed for a claimed index below `n`, and the
/// caller does not return before every claimed task has finished.
struct Shared {
    /// Per thread of the team: the next index of its range to claim, and the range's end.
    ranges: Vec<(AtomicUsize, usize)>,
    /// Tasks finished (or skipped after a failure).
    done: AtomicUsize,
    n: usize,
    task: *const Erased,
    failed: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

// SAFETY: `task` points to a `Sync` closure, followed only while the caller waits in
// `for_each_task` for the task to finish (see `Shared`); the other fields are thread-safe.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn new<'a>(n: usize, team: usize, task: &'a (dyn Fn(usize) -> bool + Sync + 'a)) -> Self {
        let task: *const (dyn Fn(usize) -> bool + Sync + 'a) = task;
        // SAFETY: only the lifetime is erased; `work` follows the pointer only for claimed
        // indices, all of which finish before `for_each_task` returns (it waits in `wait`).
        let task: *const Erased = unsafe { std::mem::transmute(task) };
        Shared {
            ranges: (0..team).map(|t| (AtomicUsize::new(t * n / team), (t + 1) * n / team)).collect(),
            done: AtomicUsize::new(0),
            n,
            task,
            failed: Default::default(),
            panic: Mutex::new(None),
        }
    }

    /// Claims and runs tasks until none are left: those of range `slot` first, then those left
    /// in the others.
    fn work(&self, slot: usize) {
        let team = self.ranges.len();
        for r in (slot..team).chain(0..slot) {
            let (next, end) = &self.ranges[r];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= *end {
                    break;
                }
                self.run(i);
            }
        }
    }

    /// Runs claimed task `i` (unless an earlier one failed) and counts it done.
    fn run(&self, i: usize) {
        if !self.failed.load(Ordering::Relaxed) {
            // SAFETY: `i < n` was claimed and is not yet counted in `done`, so the caller is
            // still in `for_each_task` and the closure behind `task` is alive.
            let task = unsafe { &*self.task };
            match catch_unwind(AssertUnwindSafe(|| task(i))) {
                Ok(false) => {}
                Ok(true) => self.failed.store(true, Ordering::Relaxed),
                Err(payload) => {
                    self.failed.store(true, Ordering::Relaxed);
                    self.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
                }
            }
        }
        // Release: the task's writes happen before the caller sees it counted.
        self.done.fetch_add(1, Ordering::Release);
    }

    /// Returns once every task has finished: spins, yielding the core now and then.
    fn wait(&self) {
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < self.n {
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(SPINS_PER_YIELD) {
                std::thread::yield_now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Runs `for_each_task` from this thread (outside any pool: the caller takes part), from
    /// inside a pool of 1, 2 and 3 threads, and from a fresh thread, for `body`.
    fn everywhere(body: impl Fn() + Sync + Send) {
        body();
        for threads in 1..=3 {
            pool(threads).install(&body);
        }
        std::thread::scope(|s| {
            s.spawn(&body);
        });
    }

    #[test]
    fn every_task_runs_once() {
        everywhere(|| {
            for n in [0, 1, 2, 3, 7, 33, 257] {
                let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each_task(n, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    Ok::<(), ()>(())
                })
                .unwrap();
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "n={n}");
            }
        });
    }

    #[test]
    fn a_failing_task_gives_its_error() {
        everywhere(|| {
            for (n, bad) in [(1, 0), (2, 1), (7, 0), (7, 6), (33, 20)] {
                let got = for_each_task(n, |i| if i == bad { Err(i) } else { Ok(()) });
                assert_eq!(got, Err(bad), "n={n}");
            }
        });
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_others_finish() {
        everywhere(|| {
            let finished = AtomicUsize::new(0);
            let caught = catch_unwind(AssertUnwindSafe(|| {
                for_each_task(8, |i| {
                    assert!(i != 5, "task 5 panics");
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    finished.fetch_add(1, Ordering::Relaxed);
                    Ok::<(), ()>(())
                })
            }));
            let payload = caught.expect_err("the panic reaches the caller");
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or_default();
            assert!(message.contains("task 5 panics"), "{message}");
            // No task is still running: the count no longer changes.
            let now = finished.load(Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(finished.load(Ordering::Relaxed), now);
        });
    }
}
