//! The forward pass for fewer query rows than a tile holds — decoding, one new position per
//! step. The tiled path would transpose every cached key of the head into key blocks and run
//! products padded to a tile's rows, work proportional to the whole cache on every step for one
//! row of output; here each row reads the cached keys and values in place: its scores are dot
//! products with the key rows, the softmax over the visible keys is exact (no online rescaling),
//! and `P·V` is a sum of scaled value rows.

use super::AttentionShape;
use crate::lanes::{self, Scale};
use crate::simd::{with_simd, Simd, SimdTask};
use crate::softmax::ExpShifted;
use crate::threading::ROWWISE_PAR_MIN;
use crate::Isa;
use rayon::prelude::*;

/// Every (batch·head)'s rows, heads in parallel when the work repays a fork (each head's result
/// does not depend on the split). Sizes were checked by the caller.
pub(super) fn run(isa: Isa, shape: AttentionShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32], lse: &mut [f32]) {
    let (t, d, cap) = (shape.q_len, shape.d_head, shape.kv_capacity);
    let head = |bh: usize, out: &mut [f32], lse: &mut [f32]| {
        let (q, k, v) = (&q[bh * t * d..][..t * d], &k[bh * cap * d..][..cap * d], &v[bh * cap * d..][..cap * d]);
        with_simd(isa, HeadRows { shape, q, k, v, out, lse });
    };
    let parallel = shape.causal_flops() >= ROWWISE_PAR_MIN as f64 && rayon::current_num_threads() >= 2;
    if parallel {
        out.par_chunks_mut(t * d).zip(lse.par_chunks_mut(t)).enumerate().for_each(|(bh, (o, l))| head(bh, o, l));
    } else {
        out.chunks_mut(t * d).zip(lse.chunks_mut(t)).enumerate().for_each(|(bh, (o, l))| head(bh, o, l));
    }
}

/// One head: `q` `[q_len, d]`, `k` and `v` `[kv_capacity, d]` (the first `kv_len` rows are
/// keys and values), `out` `[q_len, d]`, `lse` `[q_len]`.
struct HeadRows<'a> {
    shape: AttentionShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a mut [f32],
    lse: &'a mut [f32],
}

impl SimdTask for HeadRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd>(self, s: S) {
        let HeadRows { shape, q, k, v, out, lse } = self;
        let d = shape.d_head;
        let scale = 1.0 / (d as f32).sqrt();
        let mut scores = vec![0.0f32; shape.kv_len];
        for (i, (out, lse)) in out.chunks_exact_mut(d).zip(lse.iter_mut()).enumerate() {
            // Row i sits at position q_offset + i and sees the keys up to it.
            let visible = shape.q_offset() + i + 1;
            let qi = &q[i * d..(i + 1) * d];
            let p = &mut scores[..visible];
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = lanes::dot(s, qi, &k[j * d..(j + 1) * d]) * scale;
            }
            let max = lanes::max(s, p);
            lanes::map_in_place(s, p, ExpShifted { max });
            let sum = lanes::sum(s, p);
            out.fill(0.0);
            for (j, &pj) in p.iter().enumerate() {
                lanes::axpy(s, out, pj, &v[j * d..(j + 1) * d]);
            }
            lanes::map_in_place(s, out, Scale { factor: 1.0 / sum });
            *lse = max + sum.ln();
        }
    }
}
