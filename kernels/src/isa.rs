//! Which instruction set the kernels run on, detected once at run time.
//!
//! elide is a library: it cannot assume `-C target-cpu=native`. The CPU is probed once
//! (`is_x86_feature_detected!`), the best path is cached, and every kernel dispatches on the
//! [`Isa`] value it is given. `ELIDE_ISA=portable|avx2|avx512` forces a lower path (never a higher
//! one than the CPU has), so one machine can test every path it can run.

use std::sync::OnceLock;

/// An instruction-set path of the kernels, from slowest to fastest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable SIMD through the `wide` crate (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// x86-64 AVX2 with FMA: 8-lane f32 vectors.
    Avx2,
    /// x86-64 AVX-512F: 16-lane f32 vectors.
    Avx512,
}

impl Isa {
    /// The path every kernel uses by default: the best the CPU supports, lowered by
    /// `ELIDE_ISA` if it is set. Detected once and cached.
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let best = Isa::best_supported();
            match std::env::var("ELIDE_ISA").ok().and_then(|s| Isa::parse(&s)) {
                Some(forced) => forced.min(best),
                None => best,
            }
        })
    }

    /// The fastest path this CPU can run, ignoring `ELIDE_ISA`.
    pub fn best_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
            if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every path this CPU can run, slowest first. Tests loop over it.
    pub fn supported() -> Vec<Isa> {
        let best = Isa::best_supported();
        [Isa::Portable, Isa::Avx2, Isa::Avx512].into_iter().filter(|isa| *isa <= best).collect()
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        self <= Isa::best_supported()
    }

    /// Parses `portable`, `avx2` or `avx512` (the values of `ELIDE_ISA`).
    pub fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    /// The lower-case name used by `ELIDE_ISA` and in benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_supported_is_ordered() {
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse("sse9"), None);
        let supported = Isa::supported();
        assert_eq!(supported[0], Isa::Portable);
        assert!(supported.windows(2).all(|w| w[0] < w[1]));
        assert!(Isa::active().is_supported());
    }
}
