//! Fused causal multi-head attention: `O = softmax(Q·Kᵀ/√d + causal mask)·V` without ever
//! holding the `T × T` score matrix, forward and backward.
//!
//! The algorithm is FlashAttention-2's (arXiv 2307.08691). The forward pass takes a block of
//! [`BLOCK_Q`] queries at a time and streams the key/value blocks of [`BLOCK_K`] rows that the
//! causal mask lets it see, keeping per query row a running maximum `m` and sum `l` of the
//! exponentials (the *online softmax*): when a block raises the maximum, the partial output and
//! sum are rescaled by `e^{m_old - m_new}`. Blocks entirely above the diagonal are never
//! touched, so the causal pass does half the work of the dense one, and memory is the `O(T·d)`
//! of the inputs plus a few tile buffers per thread. Each row's log-sum-exp
//! `L = m + ln l` is saved for the backward pass, which recomputes `P = e^{S - L}` block by
//! block and forms, with `D = rowsum(dO ⊙ O)`:
//! `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ⊙ (dP − D)`, `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`.
//!
//! **Layout.** `q`, `out`, `d_out`, `dq` are `[batch, heads, q_len, d_head]`; `k`, `v`, `dk`, `dv`
//! are `[batch, heads, kv_capacity, d_head]` of which the first `kv_len` rows per head are
//! keys (a KV cache is such a buffer, read in place); `lse` is `[batch, heads, q_len]`. The
//! queries are the *last* `q_len` positions: query `i` sits at position `kv_len - q_len + i`
//! and sees keys `0..=` its position. `q_len == kv_len` is ordinary causal self-attention;
//! `q_len < kv_len` is decoding with a cache. The scale is `1/√d_head`.
//!
//! **Threads and determinism.** The forward pass splits over (batch·head, query block), each task
//! writing its own rows. The backward pass splits over (batch·head, key-block group): each task
//! owns the `dK`, `dV` rows of its key blocks and accumulates `dQ` for its group into a buffer of
//! its own, in key-block order; the groups' `dQ` are then summed in group order. The grouping
//! depends only on the shape, so results are bit-identical for any thread count.

mod backward;
mod few_rows;
mod forward;
#[cfg(test)]
mod tests;
mod tile;

use crate::error::{KernelError, Result};
use crate::Isa;

/// Query rows per block of the forward pass (and per step of the backward pass).
pub const BLOCK_Q: usize = 64;
/// Key rows per block.
pub const BLOCK_K: usize = 64;

/// The sizes of an attention call (see the [module docs](self) for the layouts they describe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Batch size.
    pub batch: usize,
    /// Attention heads.
    pub heads: usize,
    /// Query rows per head: the last `q_len` positions of the `kv_len`.
    pub q_len: usize,
    /// Key/value rows per head that are valid (`q_len <= kv_len <= kv_capacity`).
    pub kv_len: usize,
    /// Rows per head in the key/value buffers (a KV cache's maximum length; `kv_len` for plain
    /// self-attention).
    pub kv_capacity: usize,
    /// Width of one head.
    pub d_head: usize,
}

impl AttentionShape {
    /// Causal self-attention over `seq` positions: `q_len = kv_len = kv_capacity = seq`.
    pub fn self_attention(batch: usize, heads: usize, seq: usize, d_head: usize) -> Self {
        AttentionShape { batch, heads, q_len: seq, kv_len: seq, kv_capacity: seq, d_head }
    }

    /// Elements of `q` (and `out`, `d_out`, `dq`).
    pub fn q_elems(&self) -> usize {
        self.batch * self.heads * self.q_len * self.d_head
    }

    /// Elements of `k` (and `v`, `dk`, `dv`).
    pub fn kv_elems(&self) -> usize {
        self.batch * self.heads * self.kv_capacity * self.d_head
    }

    /// Elements of `lse`.
    pub fn lse_elems(&self) -> usize {
        self.batch * self.heads * self.q_len
    }

    /// Position of query row 0 (the rows before it are keys only).
    fn q_offset(&self) -> usize {
        self.kv_len - self.q_len
    }

    /// Multiply-adds of one forward pass (two per score and two per output element), counting
    /// only the unmasked scores: the work the fused kernel does.
    pub fn causal_flops(&self) -> f64 {
        let off = self.q_offset() as f64;
        let q = self.q_len as f64;
        // Σ_i (off + i + 1) visible keys per query row.
        let scores = q * off + q * (q + 1.0) / 2.0;
        4.0 * (self.batch * self.heads) as f64 * scores * self.d_head as f64
    }

    /// Checks the sizes against each other and the buffer lengths `(name, len, expected)`.
    fn check(&self, op: &'static str, buffers: impl FnOnce() -> Vec<(&'static str, usize, usize)>) -> Result<()> {
        let s = self;
        let sizes = || {
            format!(
                "batch {}, heads {}, q_len {}, kv_len {}, kv_capacity {}, d_head {}",
                s.batch, s.heads, s.q_len, s.kv_len, s.kv_capacity, s.d_head
            )
        };
        if s.d_head == 0 || s.q_len > s.kv_len || s.kv_len > s.kv_capacity || (s.q_len == 0) != (s.kv_len == 0) {
            return Err(KernelError::Argument {
                op,
                detail: format!("needs d_head > 0 and 0 < q_len <= kv_len <= kv_capacity (or all 0), got {}", sizes()),
            });
        }
        let elems = [s.batch, s.heads, s.kv_capacity, s.d_head].iter().try_fold(1usize, |n, &x| n.checked_mul(x));
        if elems.is_none() {
            return Err(KernelError::Argument { op, detail: format!("sizes overflow: {}", sizes()) });
        }
        for (name, len, want) in buffers() {
            if len != want {
                return Err(KernelError::Shape {
                    op,
                    detail: format!("{name} has {len} elements, expected {want} ({})", sizes()),
                });
            }
        }
        Ok(())
    }
}

/// Causal attention forward: `out = softmax(q·kᵀ/√d + mask)·v` per (batch, head), and, when
/// `lse` is given, each query row's log-sum-exp of its scaled scores (what
/// [`attention_backward`] needs).
///
/// ```
/// use elide_kernels::attention::{attention_forward, AttentionShape};
/// use elide_kernels::Isa;
/// // One head, two positions, d_head 1: position 0 sees only itself, so its output is v[0].
/// let shape = AttentionShape::self_attention(1, 1, 2, 1);
/// let (q, k, v) = ([1.0, 1.0], [0.0, 0.0], [3.0, 5.0]);
/// let mut out = [0.0; 2];
/// attention_forward(Isa::active(), shape, &q, &k, &v, &mut out, None)?;
/// assert_eq!(out, [3.0, 4.0]); // equal scores at position 1: the mean of v
/// # Ok::<(), elide_kernels::KernelError>(())
/// ```
///
/// # Errors
/// [`KernelError::Argument`] for inconsistent sizes, [`KernelError::Shape`] naming a buffer of
/// the wrong length.
pub fn attention_forward(
    isa: Isa,
    shape: AttentionShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    let mut no_lse = Vec::new();
    let lse_len = lse.as_ref().map(|l| l.len());
    shape.check("attention_forward", || {
        vec![
            ("q", q.len(), shape.q_elems()),
            ("k", k.len(), shape.kv_elems()),
            ("v", v.len(), shape.kv_elems()),
            ("out", out.len(), shape.q_elems()),
            ("lse", lse_len.unwrap_or(shape.lse_elems()), shape.lse_elems()),
        ]
    })?;
    let lse = match lse {
        Some(lse) => lse,
        None => {
            no_lse.resize(shape.lse_elems(), 0.0);
            &mut no_lse
        }
    };
    forward::run(isa, shape, q, k, v, out, lse);
    Ok(())
}

/// The gradients of [`attention_forward`] with respect to `q`, `k` and `v`, given `out` and `lse`
/// from the forward pass and `d_out`, the gradient of `out`. `dk` and `dv` rows past `kv_len`
/// are set to zero.
///
/// # Errors
/// As [`attention_forward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    isa: Isa,
    shape: AttentionShape,
    (q, k, v): (&[f32], &[f32], &[f32]),
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) -> Result<()> {
    shape.check("attention_backward", || {
        let (qe, kve) = (shape.q_elems(), shape.kv_elems());
        vec![
            ("q", q.len(), qe),
            ("k", k.len(), kve),
            ("v", v.len(), kve),
            ("out", out.len(), qe),
            ("lse", lse.len(), shape.lse_elems()),
            ("d_out", d_out.len(), qe),
            ("dq", dq.len(), qe),
            ("dk", dk.len(), kve),
            ("dv", dv.len(), kve),
        ]
    })?;
    backward::run(isa, shape, backward::Inputs { q, k, v, out, lse, d_out }, dq, dk, dv);
    Ok(())
}
