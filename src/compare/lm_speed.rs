//! The side-by-side timings of `elide compare`'s language models: a feed-forward layer decoding
//! one token, a training step, decoding with and without early exits. Each is a ratio of two
//! sides timed alternately in the same run ([`crate::bench::timing::interleaved`]).

use super::Run;
use crate::bench::timing::{interleaved, Clock, Plan};
use elide::autodiff::{no_grad, Var};
use elide::models::{Batch, Ctx, DecodeScore, LossModel, TransformerLm};
use elide::tensor::{Rng, Tensor};
use std::cell::RefCell;
use std::time::Instant;

/// A trained model and its row of the table.
pub struct Trained {
    pub run: Run,
    pub lm: TransformerLm,
}

fn plan(rounds: usize) -> Plan {
    Plan { rounds, min_sample: 0.02, clock: Clock::Wall }
}

/// What decoding each of `seqs` token by token scored, averaged (the sequences are equally
/// long).
pub fn decode_score(lm: &TransformerLm, seqs: &[Vec<u32>]) -> DecodeScore {
    let scores: Vec<DecodeScore> =
        seqs.iter().map(|s| lm.score_decoding(s).expect("sequences fit the model")).collect();
    let n = scores.len() as f64;
    DecodeScore {
        loss: scores.iter().map(|s| s.loss).sum::<f64>() / n,
        tokens: scores.iter().map(|s| s.tokens).sum(),
        mean_blocks: scores.iter().map(|s| s.mean_blocks).sum::<f64>() / n,
        flops: scores.iter().map(|s| s.flops).sum(),
    }
}

/// Mean next-token loss of decoding `seqs`.
pub fn decode_loss(lm: &TransformerLm, seqs: &[Vec<u32>]) -> f64 {
    decode_score(lm, seqs).loss
}

/// Tokens per second decoding `seqs` one token at a time with a KV cache.
pub fn decode_tokens_per_s(lm: &TransformerLm, seqs: &[Vec<u32>]) -> f64 {
    let start = Instant::now();
    let tokens = decode_score(lm, seqs).tokens;
    tokens as f64 / start.elapsed().as_secs_f64()
}

/// The lowest early-exit threshold (of 0.95, 0.90, …, 0.05) whose decoding loss on `seqs` is at
/// most `target`; leaves it set on `lm` and returns it. Above 1 if no rung passes (no token
/// exits).
pub fn calibrate_exit(lm: &mut TransformerLm, seqs: &[Vec<u32>], target: f64) -> f32 {
    let mut chosen = 2.0;
    for threshold in (1..20).rev().map(|i| i as f32 * 0.05) {
        lm.set_exit_threshold(threshold).expect("an early-exit model");
        if decode_loss(lm, seqs) > target {
            break;
        }
        chosen = threshold;
    }
    lm.set_exit_threshold(chosen).expect("a valid threshold");
    chosen
}

/// Time of block 0's feed-forward layer of `dense` on one token over that of `sparse`'s, both
/// without recording gradients (the decoding path).
pub fn ffn_decode_speedup(dense: &TransformerLm, sparse: &TransformerLm, rounds: usize) -> f64 {
    let d = dense.config().d_model;
    let x = Var::constant(Tensor::randn(&[1, 1, d], &mut Rng::seed(0)));
    let run = |lm: &TransformerLm| {
        let ffn = lm.ffn(0).expect("block 0");
        no_grad(|| std::hint::black_box(ffn.forward(&x, &mut Ctx::eval()).expect("a forward pass")));
    };
    let t = interleaved(plan(rounds), &mut [&mut || run(dense), &mut || run(sparse)]);
    t.ratio(0, 1)
}

/// Time of one training step (forward with auxiliary losses, backward) of `dense` over that of
/// `other`, on the same batch.
pub fn train_step_speedup(dense: &Trained, other: &Trained, batch: &Batch, rounds: usize) -> f64 {
    let step = |lm: &TransformerLm| {
        let mut noise = Rng::seed(0);
        let mut ctx = Ctx::train(&mut noise);
        let loss = lm.loss(batch, &mut ctx).and_then(|l| Ok(l.add(&ctx.aux_loss()?)?)).expect("a training loss");
        std::hint::black_box(loss.backward().expect("a backward pass"));
    };
    let t = interleaved(plan(rounds), &mut [&mut || step(&dense.lm), &mut || step(&other.lm)]);
    t.ratio(0, 1)
}

/// Time of decoding `seqs` through every block (no exit head runs) over that of decoding them
/// with early exits at `threshold`, on the same model; and what the exiting run scored.
pub fn exit_decode_speedup(
    lm: &mut TransformerLm,
    threshold: f32,
    seqs: &[Vec<u32>],
    rounds: usize,
) -> (f64, DecodeScore) {
    let lm = RefCell::new(lm);
    let decode = |t: f32| {
        let mut lm = lm.borrow_mut();
        lm.set_exit_threshold(t).expect("a valid threshold");
        std::hint::black_box(decode_score(&lm, seqs));
    };
    let t = interleaved(plan(rounds), &mut [&mut || decode(2.0), &mut || decode(threshold)]);
    let lm = lm.into_inner();
    lm.set_exit_threshold(threshold).expect("a valid threshold");
    (t.ratio(0, 1), decode_score(lm, seqs))
}
