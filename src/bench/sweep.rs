//! `elide bench gemm --sweep`: every register tile of every instruction set this machine runs,
//! and KC/MC around the default of the best one, timed interleaved on the shapes the issue's
//! figures use. The default tile of each path is the one this table favours.

use super::fill;
use super::gemm::ExpertShapes;
use super::peak::{peak_gflops, pool};
use super::report::Report;
use super::timing::{interleaved, Interleaved, Plan};
use elide::kernels::gemm::{Blocking, Gemm, MatMut, MatRef};
use elide::kernels::Isa;
use std::sync::Mutex;

/// Times `run(candidate)` for every candidate, interleaved round by round.
fn race(plan: Plan, candidates: usize, run: &dyn Fn(usize)) -> Interleaved {
    let mut sides: Vec<Box<dyn FnMut() + '_>> = (0..candidates).map(|c| Box::new(move || run(c)) as _).collect();
    let mut refs: Vec<&mut dyn FnMut()> = sides.iter_mut().map(|s| s.as_mut() as &mut dyn FnMut()).collect();
    interleaved(plan, &mut refs)
}

/// The candidates for `isa`: each tile with its derived blocking; on the best path also the
/// default tile with other KC and MC.
fn candidates(isa: Isa, best: bool) -> Vec<Blocking> {
    let tiles = Blocking::tiles(isa);
    let mut out: Vec<Blocking> =
        tiles.iter().map(|&(mr, nv)| Blocking::for_tile(isa, mr, nv).expect("a listed tile")).collect();
    if best {
        let base = out[0];
        for kc in [128, 192, 256, 384, 512] {
            if kc != base.kc() {
                out.push(base.with_kc(kc).expect("kc in range"));
            }
        }
        for mc in [96, 192, 288, 480] {
            let b = base.with_mc(mc).expect("mc > 0");
            if b.mc() != base.mc() {
                out.push(b);
            }
        }
    }
    out
}

/// `elide bench gemm --sweep`.
pub fn bench_sweep(plan: Plan) -> Report {
    let mut r = Report::new(
        "sgemm tile and blocking sweep (interleaved per path, medians; vs = against the path's first row)",
        &["path", "tile", "NR", "KC", "MC", "NC", "2048³ 1t", "vs", "2048³ 2t", "vs", "expert 2t", "vs"],
    );
    let peak = peak_gflops(plan, 1);
    r.figure("peak_1t_gflops", peak);
    let (one, two) = (pool(1), pool(2));
    let n = 2048;
    let a = fill(n * n, 1);
    let b = fill(n * n, 2);
    let best_isa = Isa::best_supported();
    for isa in Isa::supported().into_iter().rev() {
        let cands = candidates(isa, isa == best_isa);
        let outs: Vec<Mutex<Vec<f32>>> = cands.iter().map(|_| Mutex::new(vec![0.0; n * n])).collect();
        let square = |c: usize| {
            let gemm = Gemm { isa, blocking: Some(cands[c]), ..Gemm::default() };
            let mut out = outs[c].lock().expect("not poisoned");
            gemm.run(
                MatMut::row_major(&mut out, n, n).expect("shape"),
                MatRef::row_major(&a, n, n).expect("shape"),
                MatRef::row_major(&b, n, n).expect("shape"),
            )
            .expect("gemm");
        };
        let flops = 2.0 * (n * n * n) as f64;
        let t1 = race(plan, cands.len(), &|c| one.install(|| square(c)));
        let t2 = race(plan, cands.len(), &|c| two.install(|| square(c)));
        // Expert shapes on 2 threads: mean GFLOP/s over the three, ratio = mean of the ratios.
        let experts = Mutex::new(ExpertShapes::new());
        let mut expert_gflops = vec![0.0; cands.len()];
        let mut expert_ratio = vec![0.0; cands.len()];
        for which in 0..3 {
            let res = race(plan, cands.len(), &|c| {
                let gemm = Gemm { isa, blocking: Some(cands[c]), ..Gemm::default() };
                two.install(|| experts.lock().expect("not poisoned").run(which, gemm))
            });
            for c in 0..cands.len() {
                expert_gflops[c] += ExpertShapes::flops(which) / res.medians[c] / 1e9 / 3.0;
                expert_ratio[c] += 1.0 / res.ratios_to_first[c] / 3.0;
            }
        }
        for (c, bl) in cands.iter().enumerate() {
            r.row(vec![
                isa.name().into(),
                format!("{}x{}", bl.mr(), bl.nv()),
                bl.nr().to_string(),
                bl.kc().to_string(),
                bl.mc().to_string(),
                bl.nc().to_string(),
                format!("{:.1}", flops / t1.medians[c] / 1e9),
                format!("{:.3}", 1.0 / t1.ratios_to_first[c]),
                format!("{:.1}", flops / t2.medians[c] / 1e9),
                format!("{:.3}", 1.0 / t2.ratios_to_first[c]),
                format!("{:.1}", expert_gflops[c]),
                format!("{:.3}", expert_ratio[c]),
            ]);
        }
    }
    r.note(format!("GFLOP/s; one-core FMA peak {peak:.1}. vs > 1: faster than the first row of its path."));
    r
}
