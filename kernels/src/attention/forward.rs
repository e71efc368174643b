//! The forward pass: one task per (batch·head, block of query rows), online softmax over the
//! key blocks the causal mask lets the block see.

use super::tile::{copy_rows, product, round_up, tile_cols, transpose_rows, Store, Strided, TILE_ROWS};
use super::{AttentionShape, BLOCK_K, BLOCK_Q};
use crate::lanes::{self, Scale};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::softmax::ExpShifted;
use crate::threading::ROWWISE_PAR_MIN;
use crate::Isa;
use rayon::prelude::*;

/// Runs every (head, query block) task, in parallel when the work repays a fork. Sizes were
/// checked by the caller.
pub(super) fn run(isa: Isa, shape: AttentionShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
    let (t, d) = (shape.q_len, shape.d_head);
    if t == 0 || out.is_empty() {
        return;
    }
    if t < TILE_ROWS {
        return super::few_rows::run(isa, shape, q, k, v, out, lse);
    }
    let head_kv = shape.kv_capacity * d;
    // Kᵀ per head and key block, [kv_blocks, d, BLOCK_K] (zero past kv_len), once: every query
    // block of the head reads it. (One [d, kv_len] transpose would put the rows a tile product
    // reads 4 KiB apart, all in one L1 set.)
    let kv_pad = shape.kv_len.next_multiple_of(BLOCK_K);
    let mut kt = vec![0.0f32; shape.batch * shape.heads * d * kv_pad];
    let parallel = shape.causal_flops() >= ROWWISE_PAR_MIN as f64 && rayon::current_num_threads() >= 2;
    let transpose = |bh: usize, kt: &mut [f32]| {
        for (kb, kt) in kt.chunks_exact_mut(d * BLOCK_K).enumerate() {
            let k0 = kb * BLOCK_K;
            transpose_rows(&k[bh * head_kv..], d, k0, BLOCK_K.min(shape.kv_len - k0), kt, BLOCK_K);
        }
    };
    if parallel {
        kt.par_chunks_mut(d * kv_pad).enumerate().for_each(|(bh, kt)| transpose(bh, kt));
    } else {
        kt.chunks_mut(d * kv_pad).enumerate().for_each(|(bh, kt)| transpose(bh, kt));
    }
    let task = |bh: usize, qb: usize, out: &mut [f32], lse: &mut [f32]| {
        let q = &q[bh * t * d..(bh + 1) * t * d];
        let (kt, v) = (&kt[bh * d * kv_pad..(bh + 1) * d * kv_pad], &v[bh * head_kv..][..head_kv]);
        with_simd(isa, QueryBlock { shape, q, kt, v, q0: qb * BLOCK_Q, out, lse });
    };
    let heads = out.chunks_mut(t * d).zip(lse.chunks_mut(t));
    if !parallel {
        for (bh, (out, lse)) in heads.enumerate() {
            for (qb, (out, lse)) in out.chunks_mut(BLOCK_Q * d).zip(lse.chunks_mut(BLOCK_Q)).enumerate() {
                task(bh, qb, out, lse);
            }
        }
    } else {
        out.par_chunks_mut(t * d).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(bh, (out, lse))| {
            out.par_chunks_mut(BLOCK_Q * d)
                .zip(lse.par_chunks_mut(BLOCK_Q))
                .enumerate()
                .for_each(|(qb, (out, lse))| task(bh, qb, out, lse));
        });
    }
}

/// One head's query rows `q0 .. q0 + out.len() / d_head`: `q` is the head's `[q_len, d]`, `kt`
/// its key blocks transposed (`[kv_blocks, d, BLOCK_K]`), `v` its `[kv_capacity, d]`.
struct QueryBlock<'a> {
    shape: AttentionShape,
    q: &'a [f32],
    kt: &'a [f32],
    v: &'a [f32],
    q0: usize,
    out: &'a mut [f32],
    lse: &'a mut [f32],
}

impl SimdTask for QueryBlock<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let QueryBlock { shape, q, kt, v, q0, out, lse } = self;
        let d = shape.d_head;
        let nq = lse.len();
        let rows = round_up(nq, TILE_ROWS);
        // BLOCK_K is a multiple of every instruction set's tile width: a row of S is BLOCK_K long.
        let (dp, kp) = (round_up(d, tile_cols::<S>()), BLOCK_K);
        let scale = 1.0 / (d as f32).sqrt();
        // Tile buffers: Q·scale [rows, d], V [BLOCK_K, dp], S then P [rows, kp], the
        // unnormalised output [rows, dp].
        let mut qs = vec![0.0f32; rows * d];
        let mut vb = vec![0.0f32; BLOCK_K * dp];
        let mut sp = vec![0.0f32; rows * kp];
        let mut acc = vec![0.0f32; rows * dp];
        let mut max = vec![f32::NEG_INFINITY; nq];
        let mut sum = vec![0.0f32; nq];
        copy_rows(q, d, q0, nq, scale, &mut qs, d);
        let first_pos = shape.q_offset() + q0;
        let key_blocks = (first_pos + nq - 1) / BLOCK_K + 1;
        for kb in 0..key_blocks {
            let k0 = kb * BLOCK_K;
            let nk = BLOCK_K.min(shape.kv_len - k0);
            // S = (Q·scale)·Kᵀ for the block: [rows, kp] (columns past nk are not used).
            product(s, Store::Replace, &mut sp, kp, (rows, kp, d), Strided::rows(&qs, d), &kt[k0 * d..], BLOCK_K);
            for i in 0..nq {
                let row = &mut sp[i * kp..(i + 1) * kp];
                // Keys k0 .. k0 + visible of this block are at or before the row's position.
                let visible = (first_pos + i + 1).saturating_sub(k0).min(nk);
                if visible == 0 {
                    row.fill(0.0);
                    continue;
                }
                let new_max = max[i].max(lanes::max(s, &row[..visible]));
                lanes::map_in_place(s, &mut row[..visible], ExpShifted { max: new_max });
                row[visible..].fill(0.0);
                let rescale = (max[i] - new_max).exp(); // 0 for the first block (max = -inf)
                sum[i] = sum[i] * rescale + lanes::sum(s, &row[..visible]);
                if rescale != 1.0 {
                    lanes::map_in_place(s, &mut acc[i * dp..(i + 1) * dp], Scale { factor: rescale });
                }
                max[i] = new_max;
            }
            copy_rows(v, d, k0, nk, 1.0, &mut vb, dp);
            // acc += P·V over the block's nk keys.
            product(s, Store::Add, &mut acc, dp, (rows, dp, nk), Strided::rows(&sp, kp), &vb, dp);
        }
        for (i, (out, lse)) in out.chunks_exact_mut(d).zip(lse.iter_mut()).enumerate() {
            let inv = 1.0 / sum[i];
            for (o, &a) in out.iter_mut().zip(&acc[i * dp..i * dp + d]) {
                *o = a * inv;
            }
            *lse = max[i] + sum[i].ln();
        }
    }
}
