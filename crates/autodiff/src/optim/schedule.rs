//! Learning-rate schedules: a factor of the base rate for each step.

/// How the learning rate changes with the step (`step` counts from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base rate throughout.
    Constant,
    /// Linear warmup from `base/warmup` to `base` over `warmup` steps, then constant.
    LinearWarmup {
        /// Warmup steps.
        warmup: u64,
    },
    /// Linear warmup, then cosine decay to `min_factor·base` at step `total` (and flat after;
    /// arXiv 1608.03983 without restarts).
    WarmupCosine {
        /// Warmup steps.
        warmup: u64,
        /// Step at which the decay ends.
        total: u64,
        /// The floor, as a fraction of the base rate.
        min_factor: f32,
    },
}

impl LrSchedule {
    /// The multiplier of the base rate at `step`.
    pub fn factor(&self, step: u64) -> f32 {
        let warm = |warmup: u64| if step < warmup { (step + 1) as f32 / warmup as f32 } else { 1.0 };
        match *self {
            LrSchedule::Constant => 1.0,
            LrSchedule::LinearWarmup { warmup } => warm(warmup),
            LrSchedule::WarmupCosine { warmup, total, min_factor } => {
                if step < warmup {
                    return warm(warmup);
                }
                let span = total.saturating_sub(warmup).max(1) as f32;
                let progress = ((step - warmup) as f32 / span).min(1.0);
                min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (std::f32::consts::PI * progress).cos())
            }
        }
    }

    /// `base · factor(step)`.
    pub fn lr(&self, base: f32, step: u64) -> f32 {
        base * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_and_cosine_hit_their_endpoints() {
        let s = LrSchedule::WarmupCosine { warmup: 10, total: 110, min_factor: 0.1 };
        assert_eq!(s.factor(0), 0.1);
        assert_eq!(s.factor(9), 1.0);
        assert_eq!(s.factor(10), 1.0);
        assert!((s.factor(60) - 0.55).abs() < 1e-6);
        assert!((s.factor(110) - 0.1).abs() < 1e-6);
        assert!((s.factor(500) - 0.1).abs() < 1e-6);
        assert_eq!(LrSchedule::LinearWarmup { warmup: 4 }.lr(2.0, 1), 1.0);
        assert_eq!(LrSchedule::Constant.lr(2.0, 99), 2.0);
    }
}
