//! Timing that survives a shared, noisy machine: interleaved rounds, medians, ratios.
//!
//! An absolute time on this kind of machine drifts by a quarter between runs; a ratio of two
//! things measured alternately (A B A B …) in the same run does not. Every figure elide reports
//! is either such a ratio or printed next to one.

use std::time::Instant;

/// Median of a non-empty sample.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        0.5 * (xs[n / 2 - 1] + xs[n / 2])
    }
}

/// How many rounds to run and how long each side should take per round.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Interleaved rounds (each round times every side once).
    pub rounds: usize,
    /// Minimum seconds per timed sample; fast calls are repeated to reach it.
    pub min_sample: f64,
    /// Time with the CPU time of the process instead of the wall clock (see [`Clock`]).
    pub clock: Clock,
}

impl Plan {
    /// The default plan, or a short one for smoke runs.
    pub fn new(quick: bool, clock: Clock) -> Plan {
        if quick {
            Plan { rounds: 3, min_sample: 0.005, clock }
        } else {
            Plan { rounds: 11, min_sample: 0.05, clock }
        }
    }
}

impl Plan {
    /// Seconds taken by one call of `f` on this plan's clock.
    pub fn time(&self, f: &mut dyn FnMut()) -> f64 {
        let start = self.clock.now();
        f();
        self.clock.now() - start
    }
}

/// What a benchmark's seconds are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Clock {
    /// Elapsed time: what a user waits for.
    #[default]
    Wall,
    /// CPU time of the whole process (all threads): on a machine shared with other programs it
    /// leaves out the time this process was not running, so single-thread comparisons stay
    /// sharp under load. On several threads it counts every thread's time, waiting included,
    /// so a rate per CPU-second is the parallel efficiency.
    Process,
}

impl Clock {
    /// Seconds on this clock since an arbitrary start.
    pub fn now(self) -> f64 {
        match self {
            Clock::Wall => {
                static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
                START.get_or_init(Instant::now).elapsed().as_secs_f64()
            }
            Clock::Process => process_cpu_seconds(),
        }
    }
}

#[cfg(unix)]
fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the valid pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_PROCESS_CPUTIME_ID is available on every Unix elide supports");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(not(unix))]
fn process_cpu_seconds() -> f64 {
    panic!("--cpu-time needs a Unix process CPU clock")
}

/// Times every side once per round, in order, for `plan.rounds` rounds, after a warm-up call
/// each and one more call that sets how many calls make a sample (so one-time work in the
/// first call — packing weights, filling the buffer pool — neither counts nor shrinks the
/// samples). Returns per-side medians (seconds per call) and, for each side, the median over
/// rounds of its time divided by side 0's time in the same round.
pub fn interleaved(plan: Plan, sides: &mut [&mut dyn FnMut()]) -> Interleaved {
    let reps: Vec<usize> = sides
        .iter_mut()
        .map(|f| {
            f();
            let t = plan.time(*f).max(1e-9);
            ((plan.min_sample / t).ceil() as usize).clamp(1, 1_000_000)
        })
        .collect();
    let mut times = vec![Vec::with_capacity(plan.rounds); sides.len()];
    for _ in 0..plan.rounds {
        for (s, f) in sides.iter_mut().enumerate() {
            // Let the previous side's thread pool go to sleep: rayon workers spin for a while
            // after their last job, and on a 2-core machine that spin lands on this side's core.
            std::thread::sleep(std::time::Duration::from_millis(20));
            let start = plan.clock.now();
            for _ in 0..reps[s] {
                f();
            }
            times[s].push((plan.clock.now() - start) / reps[s] as f64);
        }
    }
    let ratios_to_first =
        (0..sides.len()).map(|s| median((0..plan.rounds).map(|r| times[s][r] / times[0][r]).collect())).collect();
    Interleaved { medians: times.iter().cloned().map(median).collect(), ratios_to_first, times }
}

/// Result of [`interleaved`].
#[derive(Clone, Debug)]
pub struct Interleaved {
    /// Median seconds per call of each side.
    pub medians: Vec<f64>,
    /// Median over rounds of `time(side) / time(side 0)`.
    pub ratios_to_first: Vec<f64>,
    /// Seconds per call of each side in each round: `times[side][round]`.
    pub times: Vec<Vec<f64>>,
}

impl Interleaved {
    /// Median over rounds of `time(side a) / time(side b)` in the same round.
    pub fn ratio(&self, a: usize, b: usize) -> f64 {
        median(self.times[a].iter().zip(&self.times[b]).map(|(x, y)| x / y).collect())
    }
}
