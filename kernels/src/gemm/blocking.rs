//! The register tile and cache blocking of the GEMM: which micro-kernel, and how K, M and N are
//! cut so each packed operand stays in its cache level.
//!
//! Each instruction set has several register tiles (`MR` rows × `NV` vectors, each its own
//! monomorphised micro-kernel); the first in its list is the default, the one
//! `elide bench gemm --sweep` measured fastest (docs/kernels.md has the table). KC, MC and NC
//! follow from the tile and the cache sizes CPUID reports ([`CacheSizes`]):
//! - KC: L1d ÷ 96 bytes, at most 512 (an empirical rule, see `KC_PANEL_WIDTH`);
//! - MC: an `MC × KC` block of A takes half of L2;
//! - NC: a `KC × NC` block of B takes half of L3.
//!
//! For sweeping, `ELIDE_GEMM_TILE=8x3` picks another tile and `ELIDE_GEMM_KC`, `ELIDE_GEMM_MC`,
//! `ELIDE_GEMM_NC` override the derived sizes (read once per process). The blocking never
//! depends on the thread count: KC fixes the summation order of every element of C, so a fixed
//! KC keeps results bit-identical for any number of threads.

use crate::cache::CacheSizes;
use crate::error::{KernelError, Result};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::Isa;
use std::sync::OnceLock;

/// Largest `MR` of any tile.
pub(crate) const MAX_MR: usize = 14;
/// Largest `NR` of any tile (in floats).
pub(crate) const MAX_NR: usize = 64;
/// Largest KC: `pack_a` pads partial panels from a zero row of this length.
pub(crate) const MAX_KC: usize = 512;

/// A GEMM register tile and cache blocking (BLIS notation). Build one with [`Blocking::of`]
/// (the default of a path), [`Blocking::for_tile`] and the `with_*` overrides, and pass it as
/// [`Gemm::blocking`](super::Gemm::blocking).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Blocking {
    pub(crate) isa: Isa,
    /// Rows of the register tile.
    pub(crate) mr: usize,
    /// Vectors per row of the register tile.
    pub(crate) nv: usize,
    /// Columns of the register tile (`nv` × the path's lanes).
    pub(crate) nr: usize,
    /// Depth of a packed panel.
    pub(crate) kc: usize,
    /// Rows of a packed A block (a multiple of `mr`).
    pub(crate) mc: usize,
    /// Columns of a packed B block (a multiple of `nr`).
    pub(crate) nc: usize,
}

const OP: &str = "gemm blocking";

impl Blocking {
    /// The blocking every GEMM on `isa` uses unless told otherwise: the path's default tile
    /// (or `ELIDE_GEMM_TILE`), KC/MC/NC derived from the caches (or `ELIDE_GEMM_KC`/`_MC`/`_NC`).
    /// Computed once per path.
    pub fn of(isa: Isa) -> Blocking {
        static CACHED: [OnceLock<Blocking>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let isa = isa.min(Isa::best_supported());
        *CACHED[isa as usize].get_or_init(|| from_env(isa))
    }

    /// The tiles `(MR, NV)` that `isa` has micro-kernels for, the default first.
    pub fn tiles(isa: Isa) -> &'static [(usize, usize)] {
        struct Tiles;
        impl SimdTask for Tiles {
            type Output = &'static [(usize, usize)];
            fn run<S: Simd>(self, _: S) -> Self::Output {
                S::GEMM_TILES
            }
        }
        with_simd(isa, Tiles)
    }

    /// The tile `mr × nv` on `isa` with KC, MC and NC derived from this machine's caches.
    ///
    /// # Errors
    /// [`KernelError::Argument`] when `isa` has no micro-kernel of that shape.
    pub fn for_tile(isa: Isa, mr: usize, nv: usize) -> Result<Blocking> {
        let isa = isa.min(Isa::best_supported());
        if !Blocking::tiles(isa).contains(&(mr, nv)) {
            return Err(KernelError::Argument {
                op: OP,
                detail: format!("the {isa} path has no {mr}x{nv} tile (it has {})", tile_list(isa)),
            });
        }
        let nr = nv * lanes(isa);
        let caches = CacheSizes::get();
        let kc = round_down(caches.l1d / (KC_PANEL_WIDTH * 4), 16).clamp(64, MAX_KC);
        let mc = round_down((caches.l2 / 2 / (kc * 4)).min(MC_CAP), mr).max(mr);
        let nc = round_down((caches.l3 / 2 / (kc * 4)).min(NC_CAP), nr).max(nr);
        Ok(Blocking { isa, mr, nv, nr, kc, mc, nc })
    }

    /// The same tile with depth `kc` (1 ..= 512).
    ///
    /// # Errors
    /// [`KernelError::Argument`] when `kc` is out of range.
    pub fn with_kc(self, kc: usize) -> Result<Blocking> {
        if !(1..=MAX_KC).contains(&kc) {
            return Err(KernelError::Argument { op: OP, detail: format!("KC must be 1..={MAX_KC}, got {kc}") });
        }
        Ok(Blocking { kc, ..self })
    }

    /// The same tile with A blocks of `mc` rows (rounded up to a multiple of MR).
    ///
    /// # Errors
    /// [`KernelError::Argument`] when `mc` is 0.
    pub fn with_mc(self, mc: usize) -> Result<Blocking> {
        if mc == 0 {
            return Err(KernelError::Argument { op: OP, detail: "MC must be at least 1".into() });
        }
        Ok(Blocking { mc: mc.next_multiple_of(self.mr), ..self })
    }

    /// The same tile with B blocks of `nc` columns (rounded up to a multiple of NR).
    ///
    /// # Errors
    /// [`KernelError::Argument`] when `nc` is 0.
    pub fn with_nc(self, nc: usize) -> Result<Blocking> {
        if nc == 0 {
            return Err(KernelError::Argument { op: OP, detail: "NC must be at least 1".into() });
        }
        Ok(Blocking { nc: nc.next_multiple_of(self.nr), ..self })
    }

    /// The path this blocking is for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Rows of the register tile (MR).
    pub fn mr(&self) -> usize {
        self.mr
    }
    /// Vectors per row of the register tile (NV).
    pub fn nv(&self) -> usize {
        self.nv
    }
    /// Columns of the register tile (NR = NV × lanes).
    pub fn nr(&self) -> usize {
        self.nr
    }
    /// Depth of a packed panel (KC).
    pub fn kc(&self) -> usize {
        self.kc
    }
    /// Rows of a packed A block (MC).
    pub fn mc(&self) -> usize {
        self.mc
    }
    /// Columns of a packed B block (NC).
    pub fn nc(&self) -> usize {
        self.nc
    }

    /// The K-slice depth for a `k`-deep product: `k` cut into `⌈k / KC⌉` slices of equal depth
    /// (rounded up to 8), so `k = 512` with KC 384 runs as 256 + 256, not 384 + a thin 128 that
    /// reloads all of C for a third of the work. It depends on `k` and KC only — never on M, N
    /// or the thread count — so the summation order of a product is fixed by its shape.
    pub(crate) fn kc_for(&self, k: usize) -> usize {
        let slices = k.div_ceil(self.kc).max(1);
        k.div_ceil(slices).next_multiple_of(8).min(self.kc).max(1)
    }

    /// The row-block height for an `m`-row product: `m` cut into `⌈m / MC⌉` blocks of equal
    /// height (rounded up to MR), so the last block is not a sliver that leaves a thread idle.
    /// Which rows share a block does not change any element's arithmetic.
    pub(crate) fn mc_for(&self, m: usize) -> usize {
        let blocks = m.div_ceil(self.mc).max(1);
        m.div_ceil(blocks).next_multiple_of(self.mr).min(self.mc)
    }
}

impl std::fmt::Display for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{} (NR {}), KC {}, MC {}, NC {}", self.mr, self.nv, self.nr, self.kc, self.mc, self.nc)
    }
}

/// KC = L1d ÷ (this many floats × 4 bytes), capped at 512: an empirical rule, not a
/// cache-fit argument (the 6×4 tile's B panel at KC 512 is 128 KiB and streams from L2, which
/// the hardware prefetcher keeps up with). On Zen 5 (48 KiB) it gives the cap, 512, which the
/// sweep measured ahead of 384 by 4 % at 2048³ (CPU time) and level on the expert shapes, and
/// 5–12 % ahead of 128–256 (the table in docs/kernels.md); on a 32 KiB L1 it gives 336.
const KC_PANEL_WIDTH: usize = 24;
/// MC beyond this buys nothing measurable and makes blocks too coarse to share between threads.
const MC_CAP: usize = 512;
/// NC beyond this buys nothing: the B block is re-read from L3 once per row block either way.
const NC_CAP: usize = 4096;

fn round_down(x: usize, multiple: usize) -> usize {
    x / multiple * multiple
}

fn lanes(isa: Isa) -> usize {
    struct Lanes;
    impl SimdTask for Lanes {
        type Output = usize;
        fn run<S: Simd>(self, _: S) -> usize {
            S::LANES
        }
    }
    with_simd(isa, Lanes)
}

fn tile_list(isa: Isa) -> String {
    Blocking::tiles(isa).iter().map(|(mr, nv)| format!("{mr}x{nv}")).collect::<Vec<_>>().join(", ")
}

/// Parses `MRxNV` (as in `ELIDE_GEMM_TILE=8x3`).
pub fn parse_tile(text: &str) -> Option<(usize, usize)> {
    let (mr, nv) = text.trim().split_once(['x', 'X'])?;
    Some((mr.trim().parse().ok()?, nv.trim().parse().ok()?))
}

/// The default blocking of `isa`, with the environment's overrides applied. A malformed or
/// unsupported override is reported once on stderr and ignored (it is a tuning knob, not input).
fn from_env(isa: Isa) -> Blocking {
    let default_tile = Blocking::tiles(isa)[0];
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let tile = match var("ELIDE_GEMM_TILE") {
        None => default_tile,
        Some(text) => match parse_tile(&text).filter(|t| Blocking::tiles(isa).contains(t)) {
            Some(tile) => tile,
            None => {
                eprintln!("elide: ignoring ELIDE_GEMM_TILE={text}: the {isa} path has {}", tile_list(isa));
                default_tile
            }
        },
    };
    let mut bl = Blocking::for_tile(isa, tile.0, tile.1).expect("the tile is one of the path's");
    type Setter = fn(Blocking, usize) -> Result<Blocking>;
    let overrides: [(&str, Setter); 3] = [
        ("ELIDE_GEMM_KC", Blocking::with_kc),
        ("ELIDE_GEMM_MC", Blocking::with_mc),
        ("ELIDE_GEMM_NC", Blocking::with_nc),
    ];
    for (name, set) in overrides {
        if let Some(text) = var(name) {
            match text.trim().parse().ok().map(|v| set(bl, v)) {
                Some(Ok(b)) => bl = b,
                _ => eprintln!("elide: ignoring {name}={text}: not a valid size"),
            }
        }
    }
    bl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_derives_a_blocking_that_fits_its_limits() {
        for isa in Isa::supported() {
            for &(mr, nv) in Blocking::tiles(isa) {
                let bl = Blocking::for_tile(isa, mr, nv).unwrap();
                assert!(mr <= MAX_MR && bl.nr <= MAX_NR, "{isa} {bl}");
                assert!((64..=MAX_KC).contains(&bl.kc), "{isa} {bl}");
                assert_eq!(bl.mc % mr, 0, "{isa} {bl}");
                assert_eq!(bl.nc % bl.nr, 0, "{isa} {bl}");
            }
            assert!(Blocking::for_tile(isa, 5, 5).is_err());
        }
    }

    #[test]
    fn overrides_are_checked_and_rounded() {
        let bl = Blocking::for_tile(Isa::Portable, 4, 1).unwrap();
        assert_eq!(bl.with_kc(100).unwrap().kc, 100);
        assert!(bl.with_kc(0).is_err() && bl.with_kc(MAX_KC + 1).is_err());
        assert_eq!(bl.with_mc(10).unwrap().mc, 12);
        assert_eq!(bl.with_nc(9).unwrap().nc, 16);
        assert!(bl.with_mc(0).is_err() && bl.with_nc(0).is_err());
        assert_eq!(parse_tile(" 8x3"), Some((8, 3)));
        assert_eq!(parse_tile("8-3"), None);
    }

    #[test]
    fn k_slices_are_even() {
        let bl = Blocking::for_tile(Isa::Portable, 4, 1).unwrap().with_kc(384).unwrap();
        assert_eq!(bl.kc_for(512), 256);
        assert_eq!(bl.kc_for(1024), 344); // 344 + 344 + 336
        assert_eq!(bl.kc_for(384), 384);
        assert_eq!(bl.kc_for(5), 8);
        assert_eq!(bl.with_kc(5).unwrap().kc_for(7), 5); // never deeper than KC
    }

    #[test]
    fn row_blocks_are_even() {
        let bl = Blocking::for_tile(Isa::Portable, 4, 1).unwrap().with_mc(144).unwrap();
        assert_eq!(bl.mc_for(1024), 128); // 8 blocks of 128 instead of 7 × 144 + 16
        assert_eq!(bl.mc_for(100), 100);
        assert_eq!(bl.mc_for(145), 76); // 2 blocks: 76 + 69
        assert_eq!(bl.mc_for(0), 0);
    }
}
