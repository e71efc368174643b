use super::*;
use crate::testing::{assert_close, bits, data, in_pools};

/// Gradients `(dq, dk, dv)` of the reference.
type Grads = (Vec<f64>, Vec<f64>, Vec<f64>);

/// The definition, in f64 with the whole `[q_len, kv_len]` score matrix per head: scores,
/// causal mask, softmax, weighted sum. Returns `out` and, given `d_out`, the gradients.
fn reference(s: AttentionShape, q: &[f32], k: &[f32], v: &[f32], d_out: Option<&[f32]>) -> (Vec<f64>, Grads) {
    let (t, n, cap, d) = (s.q_len, s.kv_len, s.kv_capacity, s.d_head);
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0; s.q_elems()];
    let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_elems()], vec![0.0; s.kv_elems()], vec![0.0; s.kv_elems()]);
    for bh in 0..s.batch * s.heads {
        let qi = |i: usize, c: usize| q[(bh * t + i) * d + c] as f64;
        let kj = |j: usize, c: usize| k[(bh * cap + j) * d + c] as f64;
        let vj = |j: usize, c: usize| v[(bh * cap + j) * d + c] as f64;
        for i in 0..t {
            let visible = n - t + i + 1;
            let scores: Vec<f64> =
                (0..visible).map(|j| (0..d).map(|c| qi(i, c) * kj(j, c)).sum::<f64>() * scale).collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
            for c in 0..d {
                out[(bh * t + i) * d + c] = (0..visible).map(|j| p[j] * vj(j, c)).sum();
            }
            let Some(g) = d_out else { continue };
            let go = |c: usize| g[(bh * t + i) * d + c] as f64;
            let dp: Vec<f64> = (0..visible).map(|j| (0..d).map(|c| go(c) * vj(j, c)).sum()).collect();
            let pdp: f64 = (0..visible).map(|j| p[j] * dp[j]).sum();
            for j in 0..visible {
                let ds = p[j] * (dp[j] - pdp);
                for c in 0..d {
                    dq[(bh * t + i) * d + c] += ds * kj(j, c) * scale;
                    dk[(bh * cap + j) * d + c] += ds * qi(i, c) * scale;
                    dv[(bh * cap + j) * d + c] += p[j] * go(c);
                }
            }
        }
    }
    (out, (dq, dk, dv))
}

/// Runs forward and backward on `isa` and compares both with the reference.
fn check(isa: Isa, s: AttentionShape, seed: u64) {
    let q = data(s.q_elems(), seed, -2.0, 2.0);
    let k = data(s.kv_elems(), seed + 1, -2.0, 2.0);
    let v = data(s.kv_elems(), seed + 2, -1.0, 1.0);
    let g = data(s.q_elems(), seed + 3, -1.0, 1.0);
    let (want, (want_dq, want_dk, want_dv)) = reference(s, &q, &k, &v, Some(&g));
    let mut out = vec![f32::NAN; s.q_elems()];
    let mut lse = vec![f32::NAN; s.lse_elems()];
    attention_forward(isa, s, &q, &k, &v, &mut out, Some(&mut lse)).unwrap();
    let what = format!("{isa} {s:?}");
    assert_close(&format!("{what} out"), &out, &want, 1e-4, 1e-5);
    let (mut dq, mut dk, mut dv) =
        (vec![f32::NAN; s.q_elems()], vec![f32::NAN; s.kv_elems()], vec![f32::NAN; s.kv_elems()]);
    attention_backward(isa, s, (&q, &k, &v), &out, &lse, &g, (&mut dq, &mut dk, &mut dv)).unwrap();
    assert_close(&format!("{what} dq"), &dq, &want_dq, 1e-3, 1e-4);
    assert_close(&format!("{what} dk"), &dk, &want_dk, 1e-3, 1e-4);
    assert_close(&format!("{what} dv"), &dv, &want_dv, 1e-3, 1e-4);
}

#[test]
fn self_attention_matches_the_reference_on_every_path() {
    for isa in Isa::supported() {
        for (seq, d, heads) in [(1, 1, 1), (7, 8, 3), (33, 64, 1), (33, 1, 3), (257, 8, 1), (257, 64, 3), (65, 7, 2)] {
            check(isa, AttentionShape::self_attention(2, heads, seq, d), (seq * d + heads) as u64);
        }
    }
}

#[test]
fn queries_after_a_prefix_in_a_larger_buffer_match_the_reference() {
    // Decoding with a cache: the last q_len of kv_len positions, keys in a buffer of
    // kv_capacity rows per head (the unused rows are NaN: the kernel must not read them).
    for isa in Isa::supported() {
        for (q_len, kv_len, cap, d) in
            [(1, 1, 4, 8), (1, 70, 100, 64), (3, 7, 9, 8), (66, 130, 131, 16), (1, 257, 257, 1)]
        {
            let s = AttentionShape { batch: 1, heads: 3, q_len, kv_len, kv_capacity: cap, d_head: d };
            let q = data(s.q_elems(), 5, -2.0, 2.0);
            let mut k = data(s.kv_elems(), 6, -2.0, 2.0);
            let mut v = data(s.kv_elems(), 7, -1.0, 1.0);
            for head in 0..3 {
                k[(head * cap + kv_len) * d..(head + 1) * cap * d].fill(f32::NAN);
                v[(head * cap + kv_len) * d..(head + 1) * cap * d].fill(f32::NAN);
            }
            let (want, _) = reference(s, &q, &k, &v, None);
            let mut out = vec![0.0; s.q_elems()];
            attention_forward(isa, s, &q, &k, &v, &mut out, None).unwrap();
            assert_close(&format!("{isa} {s:?}"), &out, &want, 1e-4, 1e-5);
            if q_len > 1 {
                check(isa, AttentionShape { kv_capacity: kv_len, ..s }, 9);
            }
        }
    }
}

#[test]
fn large_scores_stay_finite() {
    // Scores up to ±2000: the online softmax must rescale rather than overflow e^x.
    let s = AttentionShape::self_attention(1, 1, 130, 4);
    let q = data(s.q_elems(), 1, -30.0, 30.0);
    let k = data(s.kv_elems(), 2, -30.0, 30.0);
    let v = data(s.kv_elems(), 3, -1.0, 1.0);
    let (want, _) = reference(s, &q, &k, &v, None);
    for isa in Isa::supported() {
        let mut out = vec![0.0; s.q_elems()];
        attention_forward(isa, s, &q, &k, &v, &mut out, None).unwrap();
        assert_close(&format!("{isa}"), &out, &want, 1e-4, 1e-5);
    }
}

#[test]
fn decoding_rows_do_not_depend_on_thread_count() {
    // Fewer query rows than a tile: the path that reads the cache in place, heads in parallel.
    let s = AttentionShape { batch: 2, heads: 4, q_len: 1, kv_len: 3000, kv_capacity: 3001, d_head: 64 };
    let q = data(s.q_elems(), 1, -2.0, 2.0);
    let k = data(s.kv_elems(), 2, -2.0, 2.0);
    let v = data(s.kv_elems(), 3, -1.0, 1.0);
    for isa in Isa::supported() {
        let runs = in_pools(&[1, 2], || {
            let (mut out, mut lse) = (vec![0.0; s.q_elems()], vec![0.0; s.lse_elems()]);
            attention_forward(isa, s, &q, &k, &v, &mut out, Some(&mut lse)).unwrap();
            [bits(&out), bits(&lse)]
        });
        assert_eq!(runs[0], runs[1], "{isa}");
        let (want, _) = reference(s, &q, &k, &v, None);
        let mut out = vec![0.0; s.q_elems()];
        attention_forward(isa, s, &q, &k, &v, &mut out, None).unwrap();
        assert_close(&format!("{isa} {s:?}"), &out, &want, 1e-4, 1e-5);
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let s = AttentionShape::self_attention(2, 3, 200, 32);
    let q = data(s.q_elems(), 1, -2.0, 2.0);
    let k = data(s.kv_elems(), 2, -2.0, 2.0);
    let v = data(s.kv_elems(), 3, -1.0, 1.0);
    let g = data(s.q_elems(), 4, -1.0, 1.0);
    for isa in Isa::supported() {
        let runs = in_pools(&[1, 2], || {
            let (mut out, mut lse) = (vec![0.0; s.q_elems()], vec![0.0; s.lse_elems()]);
            attention_forward(isa, s, &q, &k, &v, &mut out, Some(&mut lse)).unwrap();
            let (mut dq, mut dk, mut dv) = (vec![0.0; s.q_elems()], vec![0.0; s.kv_elems()], vec![0.0; s.kv_elems()]);
            attention_backward(isa, s, (&q, &k, &v), &out, &lse, &g, (&mut dq, &mut dk, &mut dv)).unwrap();
            [bits(&out), bits(&lse), bits(&dq), bits(&dk), bits(&dv)]
        });
        assert_eq!(runs[0], runs[1], "{isa}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let isa = Isa::active();
    let s = AttentionShape { batch: 1, heads: 1, q_len: 3, kv_len: 2, kv_capacity: 2, d_head: 4 };
    let err = attention_forward(isa, s, &[0.0; 12], &[0.0; 8], &[0.0; 8], &mut [0.0; 12], None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "attention_forward: needs d_head > 0 and 0 < q_len <= kv_len <= kv_capacity (or all 0), got batch 1, heads 1, \
         q_len 3, kv_len 2, kv_capacity 2, d_head 4"
    );
    let s = AttentionShape::self_attention(1, 2, 3, 4);
    let err = attention_forward(isa, s, &[0.0; 24], &[0.0; 23], &[0.0; 24], &mut [0.0; 24], None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "attention_forward: shape mismatch: k has 23 elements, expected 24 (batch 1, heads 2, q_len 3, kv_len 3, \
         kv_capacity 3, d_head 4)"
    );
    let (x, mut dx) = (vec![0.0; 24], vec![0.0; 24]);
    let (mut dk, mut dv) = (vec![0.0; 24], vec![0.0; 24]);
    let err = attention_backward(isa, s, (&x, &x, &x), &x, &[0.0; 5], &x, (&mut dx, &mut dk, &mut dv)).unwrap_err();
    assert!(err.to_string().starts_with("attention_backward: shape mismatch: lse has 5 elements, expected 6"), "{err}");
    let huge = AttentionShape::self_attention(usize::MAX, 2, 3, 4);
    assert!(attention_forward(isa, huge, &[], &[], &[], &mut [], None).is_err());
}
