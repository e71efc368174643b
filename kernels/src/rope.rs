//! Rotary position embeddings (RoPE, arXiv 2104.09864), half-split as in GPT-NeoX and LLaMA.
//!
//! For a head of width `d` (even) at position `p`, the pair `(x_i, x_{i + d/2})` for `i < d/2`
//! is rotated by the angle `p·θ_i` with `θ_i = base^{-2i/d}`:
//! `x_i' = x_i cos − x_{i+d/2} sin`, `x_{i+d/2}' = x_{i+d/2} cos + x_i sin`. A dot product of a
//! rotated query and a rotated key then depends on their positions only through the
//! difference. The inverse rotation (angle `−p·θ_i`) is the transpose, so it is also the
//! backward pass. Angles are computed in f64 and rounded once, so a position's rotation is the
//! same whether it is reached in one call or as the `offset` of a later one (decoding with a
//! cache).

use crate::error::{KernelError, Result};
use crate::threading::for_row_chunks;

/// Which way [`rope`] rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// By `+p·θ`: the embedding itself.
    Forward,
    /// By `−p·θ`: the inverse, which is also the backward pass of [`Rotation::Forward`].
    Inverse,
}

/// Rotates `x`, laid out `[outer, seq, heads, d_head]` (`shape`), into `out`: position
/// `offset + t` for sequence index `t`, every head alike. For `[batch, heads, seq, d_head]`
/// pass `[batch·heads, seq, 1, d_head]`.
///
/// ```
/// use elide_kernels::rope::{rope, Rotation};
/// // d_head 2, position 1, base 1: θ = 1, so (1, 0) turns by one radian.
/// let mut out = [0.0; 4];
/// rope(&[1.0, 0.0, 1.0, 0.0], &mut out, [1, 2, 1, 2], 0, 1.0, Rotation::Forward)?;
/// assert_eq!(out[..2], [1.0, 0.0]); // position 0 does not turn
/// assert!((out[2] - 1f32.cos()).abs() < 1e-7 && (out[3] - 1f32.sin()).abs() < 1e-7);
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Argument`] for an odd or zero `d_head` or a `base` that is not finite and
/// positive; [`KernelError::Shape`] if `x` or `out` does not hold `shape`.
pub fn rope(x: &[f32], out: &mut [f32], shape: [usize; 4], offset: usize, base: f32, rotation: Rotation) -> Result<()> {
    const OP: &str = "rope";
    let [_, seq, heads, d] = shape;
    if d == 0 || !d.is_multiple_of(2) || !(base.is_finite() && base > 0.0) {
        return Err(KernelError::Argument {
            op: OP,
            detail: format!("needs an even d_head > 0 and a finite base > 0, got d_head {d}, base {base}"),
        });
    }
    let len = shape.iter().try_fold(1usize, |n, &x| n.checked_mul(x));
    for (name, got) in [("x", x.len()), ("out", out.len())] {
        if len != Some(got) {
            return Err(KernelError::Shape {
                op: OP,
                detail: format!("{name} has {got} elements, shape is {shape:?}"),
            });
        }
    }
    let half = d / 2;
    let sign = match rotation {
        Rotation::Forward => 1.0,
        Rotation::Inverse => -1.0,
    };
    // cos and sin of (offset + t)·θ_i, [seq, half] each.
    let mut cos = vec![0.0f32; seq * half];
    let mut sin = vec![0.0f32; seq * half];
    for t in 0..seq {
        for i in 0..half {
            let theta = (base as f64).powf(-2.0 * i as f64 / d as f64);
            let angle = (offset + t) as f64 * theta;
            cos[t * half + i] = angle.cos() as f32;
            sin[t * half + i] = sign * angle.sin() as f32;
        }
    }
    // One row is one (outer, t, head) vector of d.
    for_row_chunks(out, d, d, |row0, out| {
        for (r, out) in out.chunks_exact_mut(d).enumerate() {
            let row = row0 + r;
            let t = row / heads % seq;
            let x = &x[row * d..(row + 1) * d];
            let (cos, sin) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            let (lo, hi) = out.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                lo[i] = a * cos[i] - b * sin[i];
                hi[i] = b * cos[i] + a * sin[i];
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, bits, data, in_pools};

    /// The rotation written out in f64 from the paper's definition.
    fn reference(x: &[f32], shape: [usize; 4], offset: usize, base: f64) -> Vec<f64> {
        let [_, seq, heads, d] = shape;
        let half = d / 2;
        let mut out = vec![0.0; x.len()];
        for (row, (x, out)) in x.chunks(d).zip(out.chunks_mut(d)).enumerate() {
            let pos = (offset + row / heads % seq) as f64;
            for i in 0..half {
                let angle = pos * base.powf(-2.0 * i as f64 / d as f64);
                let (a, b) = (x[i] as f64, x[i + half] as f64);
                out[i] = a * angle.cos() - b * angle.sin();
                out[i + half] = b * angle.cos() + a * angle.sin();
            }
        }
        out
    }

    #[test]
    fn matches_the_reference_and_inverts() {
        for (shape, offset) in [([1, 1, 1, 2], 0), ([2, 7, 3, 8], 5), ([1, 33, 1, 64], 0), ([3, 5, 2, 6], 250)] {
            let n: usize = shape.iter().product();
            let x = data(n, n as u64, -2.0, 2.0);
            let mut y = vec![0.0; n];
            rope(&x, &mut y, shape, offset, 10_000.0, Rotation::Forward).unwrap();
            assert_close(&format!("rope {shape:?}+{offset}"), &y, &reference(&x, shape, offset, 10_000.0), 1e-5, 1e-6);
            let mut back = vec![0.0; n];
            rope(&y, &mut back, shape, offset, 10_000.0, Rotation::Inverse).unwrap();
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            assert_close(&format!("rope inverse {shape:?}"), &back, &x64, 1e-5, 1e-6);
        }
    }

    #[test]
    fn scores_depend_only_on_relative_position() {
        let (q, k) = (data(8, 1, -1.0, 1.0), data(8, 2, -1.0, 1.0));
        let score = |pq: usize, pk: usize| {
            let (mut rq, mut rk) = (vec![0.0; 8], vec![0.0; 8]);
            rope(&q, &mut rq, [1, 1, 1, 8], pq, 10_000.0, Rotation::Forward).unwrap();
            rope(&k, &mut rk, [1, 1, 1, 8], pk, 10_000.0, Rotation::Forward).unwrap();
            rq.iter().zip(&rk).map(|(a, b)| (a * b) as f64).sum::<f64>()
        };
        assert!((score(9, 4) - score(105, 100)).abs() < 1e-5);
        assert!((score(9, 4) - score(9, 5)).abs() > 1e-3, "a different offset must change the score");
    }

    #[test]
    fn bad_arguments_are_errors_and_threads_do_not_matter() {
        let err = rope(&[0.0; 3], &mut [0.0; 3], [1, 1, 1, 3], 0, 10_000.0, Rotation::Forward).unwrap_err();
        assert_eq!(err.to_string(), "rope: needs an even d_head > 0 and a finite base > 0, got d_head 3, base 10000");
        let err = rope(&[0.0; 4], &mut [0.0; 5], [1, 2, 1, 2], 0, 10_000.0, Rotation::Forward).unwrap_err();
        assert_eq!(err.to_string(), "rope: shape mismatch: out has 5 elements, shape is [1, 2, 1, 2]");
        let shape = [4, 300, 2, 64];
        let x = data(shape.iter().product(), 3, -1.0, 1.0);
        let runs = in_pools(&[1, 2], || {
            let mut y = vec![0.0; x.len()];
            rope(&x, &mut y, shape, 3, 10_000.0, Rotation::Forward).unwrap();
            bits(&y)
        });
        assert_eq!(runs[0], runs[1]);
    }
}
