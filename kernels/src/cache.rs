//! The data-cache sizes of the core the kernels run on, read once from CPUID.
//!
//! The GEMM derives its cache blocking (KC, MC, NC) from these sizes, so the same binary blocks
//! for a 32 KiB-L1 Zen 3 and a 48 KiB-L1 Zen 5 or Sapphire Rapids without a rebuild. Intel
//! describes its caches in CPUID leaf 4, AMD in leaf 0x8000001D; both use the same layout
//! (type and level in EAX, ways/partitions/line size in EBX, sets in ECX). Where neither is
//! available (another architecture, a hypervisor that hides them) typical sizes stand in.

use std::sync::OnceLock;

/// Per-core data cache sizes in bytes (L3 is the whole shared cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache of one core.
    pub l1d: usize,
    /// Level-2 cache of one core.
    pub l2: usize,
    /// Level-3 cache (shared).
    pub l3: usize,
    /// Whether the sizes came from CPUID (`false`: the fallback values).
    pub from_cpuid: bool,
}

impl CacheSizes {
    /// Sizes used when CPUID does not describe the caches: a common desktop core.
    pub const FALLBACK: CacheSizes = CacheSizes { l1d: 32 << 10, l2: 1 << 20, l3: 8 << 20, from_cpuid: false };

    /// The caches of this machine, probed once and cached.
    pub fn get() -> CacheSizes {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| probe().unwrap_or(CacheSizes::FALLBACK))
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)]
fn probe() -> Option<CacheSizes> {
    use std::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};
    // SAFETY (these three blocks): CPUID exists on every x86-64 CPU, and leaves above the
    // maximum it reports (EAX of leaves 0 and 0x80000000) are not read. (Newer Rust declares
    // the intrinsics safe; the blocks keep the minimum supported version building.)
    let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
    let vendor = unsafe { __cpuid(0) };
    let amd = vendor.ebx == u32::from_le_bytes(*b"Auth") || vendor.ebx == u32::from_le_bytes(*b"Hygo");
    let leaf = if amd && max_ext >= 0x8000_001D {
        0x8000_001D
    } else if vendor.eax >= 4 {
        4
    } else {
        return None;
    };
    let mut sizes = CacheSizes { l1d: 0, l2: 0, l3: 0, from_cpuid: true };
    for sub in 0..16 {
        let CpuidResult { eax, ebx, ecx, .. } = unsafe { __cpuid_count(leaf, sub) };
        let kind = eax & 0x1f; // 0: no more caches, 1: data, 2: instruction, 3: unified
        if kind == 0 {
            break;
        }
        if kind == 2 {
            continue;
        }
        let ways = ((ebx >> 22) & 0x3ff) as usize + 1;
        let partitions = ((ebx >> 12) & 0x3ff) as usize + 1;
        let line = (ebx & 0xfff) as usize + 1;
        let sets = ecx as usize + 1;
        let bytes = ways * partitions * line * sets;
        match (eax >> 5) & 0x7 {
            1 => sizes.l1d = bytes,
            2 => sizes.l2 = bytes,
            3 => sizes.l3 = bytes,
            _ => {}
        }
    }
    (sizes.l1d >= 8 << 10 && sizes.l2 >= sizes.l1d).then(|| CacheSizes { l3: sizes.l3.max(sizes.l2), ..sizes })
}

#[cfg(not(target_arch = "x86_64"))]
fn probe() -> Option<CacheSizes> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_ordered_and_plausible() {
        let c = CacheSizes::get();
        assert!(c.l1d >= 8 << 10 && c.l1d <= 1 << 20, "{c:?}");
        assert!(c.l2 >= c.l1d && c.l3 >= c.l2, "{c:?}");
    }
}
