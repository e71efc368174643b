//! The backward pass: one task per (batch·head, group of key blocks). A task owns the `dK`, `dV`
//! rows of its key blocks and walks the query blocks that see them, recomputing `P = e^{S - L}`;
//! its `dQ` contributions go to a buffer of the group's own, summed over groups in order at the
//! end. No two tasks write the same element, and every sum runs in an order fixed by the shape.

use super::tile::{copy_rows, product, round_up, tile_cols, transpose_rows, Store, Strided, TILE_ROWS};
use super::{AttentionShape, BLOCK_K, BLOCK_Q};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::softmax::ExpShifted;
use crate::threading::ROWWISE_PAR_MIN;
use crate::{lanes, Isa};
use rayon::prelude::*;

/// Key-block groups per head: enough tasks for a few threads even with one head, and `GROUPS`
/// partial `dQ` buffers (`GROUPS · q_len · d` floats per head: memory stays `O(T·d)`).
const GROUPS: usize = 4;

/// The forward pass's inputs and results the backward pass reads.
pub(super) struct Inputs<'a> {
    pub(super) q: &'a [f32],
    pub(super) k: &'a [f32],
    pub(super) v: &'a [f32],
    pub(super) out: &'a [f32],
    pub(super) lse: &'a [f32],
    pub(super) d_out: &'a [f32],
}

/// Runs every (head, key-block group) task, then sums the groups' `dQ`. Sizes were checked by
/// the caller.
pub(super) fn run(isa: Isa, shape: AttentionShape, x: Inputs<'_>, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
    let (t, d, cap) = (shape.q_len, shape.d_head, shape.kv_capacity);
    dk.fill(0.0);
    dv.fill(0.0);
    dq.fill(0.0);
    if t == 0 {
        return;
    }
    // D = rowsum(dO ⊙ O), one per query row.
    let delta: Vec<f32> = x.d_out.chunks_exact(d).zip(x.out.chunks_exact(d)).map(|(g, o)| dot(g, o)).collect();
    let bounds = group_bounds(&shape);
    let mut dq_parts = vec![0.0f32; shape.batch * shape.heads * GROUPS * t * d];
    let task = |bh: usize, g: usize, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]| {
        let head_q = bh * t * d..(bh + 1) * t * d;
        let head_kv = bh * cap * d..(bh + 1) * cap * d;
        with_simd(
            isa,
            KeyGroup {
                shape,
                q: &x.q[head_q.clone()],
                k: &x.k[head_kv.clone()],
                v: &x.v[head_kv],
                lse: &x.lse[bh * t..(bh + 1) * t],
                delta: &delta[bh * t..(bh + 1) * t],
                d_out: &x.d_out[head_q],
                blocks: (bounds[g], bounds[g + 1]),
                dq,
                dk,
                dv,
            },
        )
    };
    // Split each head's dK, dV rows at the group bounds: each group writes only its own.
    let starts: Vec<usize> =
        (0..=GROUPS).map(|g| if g == GROUPS { cap } else { (bounds[g] * BLOCK_K).min(cap) }).collect();
    let split = |buf| split_rows(buf, &starts, d);
    let heads = dq_parts.chunks_mut(GROUPS * t * d).zip(dk.chunks_mut(cap * d)).zip(dv.chunks_mut(cap * d));
    if shape.causal_flops() < ROWWISE_PAR_MIN as f64 || rayon::current_num_threads() < 2 {
        for (bh, ((dq, dk), dv)) in heads.enumerate() {
            for (g, ((dq, dk), dv)) in dq.chunks_mut(t * d).zip(split(dk)).zip(split(dv)).enumerate() {
                task(bh, g, dq, dk, dv);
            }
        }
    } else {
        let heads: Vec<_> = heads.collect();
        heads.into_par_iter().enumerate().for_each(|(bh, ((dq, dk), dv))| {
            let groups: Vec<_> = dq.chunks_mut(t * d).zip(split(dk)).zip(split(dv)).collect();
            groups.into_par_iter().enumerate().for_each(|(g, ((dq, dk), dv))| task(bh, g, dq, dk, dv));
        });
    }
    // dQ = Σ over groups, in group order.
    for (dq, parts) in dq.chunks_mut(t * d).zip(dq_parts.chunks(GROUPS * t * d)) {
        for part in parts.chunks(t * d) {
            for (a, &b) in dq.iter_mut().zip(part) {
                *a += b;
            }
        }
    }
}

/// `buf` (rows of `d`) cut at the rows `starts[1..]`: piece `g` holds rows `starts[g] ..
/// starts[g + 1]`.
fn split_rows<'b>(buf: &'b mut [f32], starts: &[usize], d: usize) -> Vec<&'b mut [f32]> {
    let mut pieces = Vec::with_capacity(starts.len() - 1);
    let mut rest = buf;
    for w in starts.windows(2) {
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut((w[1] - w[0]) * d);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// `Σ a_i b_i` in order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Key-block bounds of the groups, `GROUPS + 1` of them: group `g` takes blocks
/// `bounds[g] .. bounds[g + 1]`, chosen so each group sees about the same number of
/// (query row, key block) pairs (early key blocks are seen by more queries).
fn group_bounds(shape: &AttentionShape) -> [usize; GROUPS + 1] {
    let blocks = shape.kv_len.div_ceil(BLOCK_K);
    let off = shape.q_offset();
    // Query rows that see key block kb: those at positions >= its first key.
    let work = |kb: usize| shape.q_len - (kb * BLOCK_K).saturating_sub(off).min(shape.q_len);
    let total: usize = (0..blocks).map(work).sum();
    let mut bounds = [blocks; GROUPS + 1];
    bounds[0] = 0;
    let (mut g, mut seen) = (1, 0);
    for kb in 0..blocks {
        while g < GROUPS && seen * GROUPS >= g * total {
            bounds[g] = kb;
            g += 1;
        }
        seen += work(kb);
    }
    bounds
}

/// One head's key blocks `blocks.0 .. blocks.1`: their `dK`, `dV` rows (`dk`, `dv` start at the
/// first block's first row) and the group's `dQ` contributions (`dq`, the head's `[q_len, d]`).
struct KeyGroup<'a> {
    shape: AttentionShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    lse: &'a [f32],
    delta: &'a [f32],
    d_out: &'a [f32],
    blocks: (usize, usize),
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

impl SimdTask for KeyGroup<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let KeyGroup { shape, q, k, v, lse, delta, d_out, blocks, dq, dk, dv } = self;
        let (t, d) = (shape.q_len, shape.d_head);
        let off = shape.q_offset();
        let (dp, kp) = (round_up(d, tile_cols::<S>()), round_up(BLOCK_K, tile_cols::<S>()));
        let rows = round_up(BLOCK_Q, TILE_ROWS);
        let scale = 1.0 / (d as f32).sqrt();
        // Per key block: K [BLOCK_K, dp], Kᵀ and Vᵀ [d, kp], the dK and dV sums [BLOCK_K, dp].
        let mut kb_rows = vec![0.0f32; BLOCK_K * dp];
        let mut kt = vec![0.0f32; d * kp];
        let mut vt = vec![0.0f32; d * kp];
        let mut dk_acc = vec![0.0f32; BLOCK_K * dp];
        let mut dv_acc = vec![0.0f32; BLOCK_K * dp];
        // Per query block: Q·scale and dO [rows, dp], P and dP then dS [rows, kp], dQ [rows, dp].
        let mut qs = vec![0.0f32; rows * dp];
        let mut dob = vec![0.0f32; rows * dp];
        let mut p = vec![0.0f32; rows * kp];
        let mut ds = vec![0.0f32; rows * kp];
        let mut dq_tile = vec![0.0f32; rows * dp];
        for kb in blocks.0..blocks.1 {
            let k0 = kb * BLOCK_K;
            let nk = BLOCK_K.min(shape.kv_len - k0);
            let mk = round_up(nk, TILE_ROWS);
            copy_rows(k, d, k0, nk, 1.0, &mut kb_rows, dp);
            transpose_rows(k, d, k0, nk, &mut kt, kp);
            transpose_rows(v, d, k0, nk, &mut vt, kp);
            dk_acc.fill(0.0);
            dv_acc.fill(0.0);
            // The first query row at or after the block's first key.
            let first_q = k0.saturating_sub(off).min(t);
            for q0 in (first_q / BLOCK_Q * BLOCK_Q..t).step_by(BLOCK_Q) {
                let nq = BLOCK_Q.min(t - q0);
                copy_rows(q, d, q0, nq, scale, &mut qs, dp);
                copy_rows(d_out, d, q0, nq, 1.0, &mut dob, dp);
                // P = e^{S - L}, zero where masked.
                product(s, Store::Replace, &mut p, kp, (rows, kp, d), Strided::rows(&qs, dp), &kt, kp);
                for i in 0..rows {
                    let row = &mut p[i * kp..(i + 1) * kp];
                    let visible = if i < nq { (off + q0 + i + 1).saturating_sub(k0).min(nk) } else { 0 };
                    if visible > 0 {
                        lanes::map_in_place(s, &mut row[..visible], ExpShifted { max: lse[q0 + i] });
                    }
                    row[visible..].fill(0.0);
                }
                // dV += Pᵀ·dO.
                product(s, Store::Add, &mut dv_acc, dp, (mk, dp, nq), Strided::transposed(&p, kp), &dob, dp);
                // dP = dO·Vᵀ, then dS = P ⊙ (dP − D) in place.
                product(s, Store::Replace, &mut ds, kp, (rows, kp, d), Strided::rows(&dob, dp), &vt, kp);
                for i in 0..nq {
                    let (ds, p) = (&mut ds[i * kp..(i + 1) * kp], &p[i * kp..(i + 1) * kp]);
                    lanes::zip_in_place(s, ds, p, MulShifted { shift: delta[q0 + i] });
                }
                ds[nq * kp..].fill(0.0);
                // dQ (this group's part) += dS·K·scale.
                product(s, Store::Replace, &mut dq_tile, dp, (rows, dp, nk), Strided::rows(&ds, kp), &kb_rows, dp);
                for i in 0..nq {
                    let dq = &mut dq[(q0 + i) * d..(q0 + i + 1) * d];
                    for (a, &b) in dq.iter_mut().zip(&dq_tile[i * dp..]) {
                        *a += b * scale;
                    }
                }
                // dK += dSᵀ·(Q·scale).
                product(s, Store::Add, &mut dk_acc, dp, (mk, dp, nq), Strided::transposed(&ds, kp), &qs, dp);
            }
            let local = (kb - blocks.0) * BLOCK_K;
            for j in 0..nk {
                dk[(local + j) * d..(local + j + 1) * d].copy_from_slice(&dk_acc[j * dp..j * dp + d]);
                dv[(local + j) * d..(local + j + 1) * d].copy_from_slice(&dv_acc[j * dp..j * dp + d]);
            }
        }
    }
}

lanes::lane_fn!(/** `(dp − shift)·p`. */ MulShifted { shift: f32 } = |s, dp, p| s.mul(s.sub(dp, s.splat(shift)), p));
