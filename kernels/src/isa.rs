//! Which instruction set the kernels run on, detected once at run time.
//!
//! elide is a library: it cannot assume `-C target-cpu=native`. The CPU is probed once
//! (`is_x86_feature_detected!`), the best path is cached, and every kernel dispatches on the
//! [`Isa`] value it is given. `ELIDE_ISA=portable|avx2|avx512` forces a path no higher than the
//! CPU has, so one machine can test every path it can run. A value that names no path, or a path
//! this CPU cannot run, is an error at first use ([`Isa::try_active`]), never silently ignored.

use crate::error::{KernelError, Result};
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

/// Every path, slowest first.
const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

/// The environment variable that forces a path.
const ISA_ENV: &str = "ELIDE_ISA";

impl Isa {
    /// The path every kernel uses by default: the best the CPU supports, or the one `ELIDE_ISA`
    /// names. Read once and cached, so the variable must be set before the first kernel runs.
    ///
    /// # Errors
    /// [`KernelError::Argument`] when `ELIDE_ISA` names no path, or one this CPU cannot run;
    /// the message lists the valid values. The tensor, autodiff and mixture-of-experts layers
    /// call this, so a bad value reaches their callers as an error.
    pub fn try_active() -> Result<Isa> {
        static ACTIVE: OnceLock<Result<Isa>> = OnceLock::new();
        ACTIVE
            .get_or_init(|| {
                let value = std::env::var_os(ISA_ENV).map(|v| v.to_string_lossy().into_owned());
                Isa::from_env_value(value.as_deref(), Isa::best_supported())
            })
            .clone()
    }

    /// [`Isa::try_active`] for the places that cannot return an error (`Gemm::default()`,
    /// the benchmarks).
    ///
    /// # Panics
    /// When `ELIDE_ISA` is invalid, with the message of [`Isa::try_active`]. A program that
    /// wants the error instead calls [`Isa::try_active`] once at start-up: after that succeeds,
    /// `active` never panics.
    pub fn active() -> Isa {
        match Isa::try_active() {
            Ok(isa) => isa,
            Err(e) => panic!("{e}"),
        }
    }

    /// The path for a value of `ELIDE_ISA` (`None`: unset) on a CPU whose best path is `best`.
    ///
    /// # Errors
    /// [`KernelError::Argument`] for a value naming no path, or a path above `best`.
    pub fn from_env_value(value: Option<&str>, best: Isa) -> Result<Isa> {
        const OP: &str = ISA_ENV;
        let Some(value) = value else { return Ok(best) };
        let runnable = || ALL.iter().filter(|isa| **isa <= best).map(|isa| isa.name()).collect::<Vec<_>>().join(", ");
        match Isa::parse(value) {
            Some(isa) if isa <= best => Ok(isa),
            Some(isa) => Err(KernelError::Argument {
                op: OP,
                detail: format!("{isa} is not supported by this CPU; it runs {}", runnable()),
            }),
            None => Err(KernelError::Argument {
                op: OP,
                detail: format!(
                    "{value:?} names no instruction set; valid values: portable, avx2, avx512 (this CPU runs {})",
                    runnable()
                ),
            }),
        }
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
        ALL.into_iter().filter(|isa| *isa <= best).collect()
    }

    /// Whether this CPU can run `self`.
    pub fn is_supported(self) -> bool {
        self <= Isa::best_supported()
    }

    /// Parses `portable`, `avx2` or `avx512` (the values of `ELIDE_ISA`; case and surrounding
    /// spaces are ignored).
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
        for isa in ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("sse9"), None);
        let supported = Isa::supported();
        assert_eq!(supported[0], Isa::Portable);
        assert!(supported.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn env_values_are_validated_against_the_names_and_the_cpu() {
        assert_eq!(Isa::from_env_value(None, Isa::Avx2), Ok(Isa::Avx2));
        assert_eq!(Isa::from_env_value(Some("portable"), Isa::Avx512), Ok(Isa::Portable));
        assert_eq!(Isa::from_env_value(Some("avx2"), Isa::Avx2), Ok(Isa::Avx2));
        let err = Isa::from_env_value(Some("sse9"), Isa::Avx2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ELIDE_ISA: \"sse9\" names no instruction set; valid values: portable, avx2, avx512 (this CPU runs portable, avx2)"
        );
        let err = Isa::from_env_value(Some("avx512"), Isa::Avx2).unwrap_err();
        assert_eq!(err.to_string(), "ELIDE_ISA: avx512 is not supported by this CPU; it runs portable, avx2");
        assert!(Isa::from_env_value(Some(""), Isa::Portable).is_err());
    }
}
