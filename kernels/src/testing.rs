//! Helpers shared by the kernels' unit tests: deterministic data, tolerance checks, thread pools.

/// Vector lengths every elementwise test sweeps: around and across the 8- and 16-lane widths.
pub(crate) const SIZES: [usize; 6] = [1, 3, 7, 33, 65, 257];

/// `(rows, cols)` shapes every row-wise test sweeps.
pub(crate) const SHAPES: [(usize, usize); 6] = [(1, 1), (1, 257), (5, 257), (33, 7), (3, 65), (7, 33)];

/// `len` pseudo-random floats in `[lo, hi)`, the same for the same seed (splitmix64).
pub(crate) fn data(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// Asserts `|got - want| <= rtol·|want| + atol` element by element (NaN must match NaN,
/// infinities must match exactly).
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let ok = if w.is_nan() || w.is_infinite() {
            g.is_nan() == w.is_nan() && (w.is_nan() || g == w)
        } else {
            (g - w).abs() <= rtol * w.abs() + atol
        };
        assert!(ok, "{what}: element {i}: got {g:e}, want {w:e}");
    }
}

/// Runs `f` inside a fresh rayon pool of each size in `threads`, returning the results in order.
pub(crate) fn in_pools<R: Send>(threads: &[usize], f: impl Fn() -> R + Sync) -> Vec<R> {
    threads
        .iter()
        .map(|&n| rayon::ThreadPoolBuilder::new().num_threads(n).build().expect("thread pool").install(&f))
        .collect()
}

/// Bit patterns of a float slice, for exact comparisons that treat NaN as equal to itself.
pub(crate) fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}
