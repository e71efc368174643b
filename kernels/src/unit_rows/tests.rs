//! Unit-row products against an f64 reference on odd shapes, strided, gathered and transposed
//! views, on every CPU path; bit identity across thread counts; errors.

use super::*;
use crate::testing::{assert_close, bits, data, in_pools, Layout, Operand};

/// Slots grouped by chosen unit: token `t` chooses unit `u` when a hash of `(t, u, seed)` falls
/// under `density`; within a unit, tokens ascend. Returns `(units, offsets, tokens)`.
fn random_groups(tokens: usize, units: usize, density: f32, seed: u64) -> (Vec<u32>, Vec<usize>, Vec<u32>) {
    let coin = data(tokens * units, seed, 0.0, 1.0);
    let (mut chosen, mut offsets, mut list) = (Vec::new(), vec![0], Vec::new());
    for u in 0..units {
        let before = list.len();
        list.extend((0..tokens).filter(|&t| coin[t * units + u] < density).map(|t| t as u32));
        if list.len() > before {
            chosen.push(u as u32);
            offsets.push(list.len());
        }
    }
    (chosen, offsets, list)
}

fn reference_dots(
    units: &[u32],
    offsets: &[usize],
    tokens: &[u32],
    x: &Operand,
    w: &Operand,
    bias: Option<&[f32]>,
    act: Activation,
) -> Vec<f64> {
    let mut out = vec![0.0; tokens.len()];
    for (g, &u) in units.iter().enumerate() {
        let u = u as usize;
        for s in offsets[g]..offsets[g + 1] {
            let t = tokens[s] as usize;
            let dot: f64 = (0..w.cols).map(|p| x.get(t, p) * w.get(u, p)).sum();
            out[s] = act.reference(dot + bias.map_or(0.0, |b| b[u] as f64));
        }
    }
    out
}

fn reference_accumulate(
    units: &[u32],
    offsets: &[usize],
    tokens: &[u32],
    h: &[f32],
    w: &Operand,
    y0: &[f32],
) -> Vec<f64> {
    let d = w.cols;
    let mut y: Vec<f64> = y0.iter().map(|&v| v as f64).collect();
    for (g, &u) in units.iter().enumerate() {
        let u = u as usize;
        for s in offsets[g]..offsets[g + 1] {
            let t = tokens[s] as usize;
            for j in 0..d {
                y[t * d + j] += h[s] as f64 * w.get(u, j);
            }
        }
    }
    y
}

#[test]
fn dots_and_accumulate_match_the_reference_on_every_path() {
    let shapes = [(1, 1, 1), (1, 5, 7), (3, 33, 33), (9, 7, 257), (5, 65, 300)];
    let layouts = [Layout::RowMajor, Layout::Padded, Layout::Gathered, Layout::Transposed];
    for isa in Isa::supported() {
        for (case, &(t, units, d)) in shapes.iter().enumerate() {
            let seed = case as u64 * 10;
            let (chosen, offsets, tokens) = random_groups(t, units, 0.4, seed);
            let groups = UnitGroups::new(&chosen, &offsets, &tokens, units, t).unwrap();
            let bias = data(units, seed + 1, -0.5, 0.5);
            for (l, &layout) in layouts.iter().enumerate() {
                let x = Operand::new(t, d, layout, seed + 2);
                // Unit rows must be contiguous: the weight takes every layout but the transpose.
                let w_layout = if matches!(layout, Layout::Transposed) { Layout::RowMajor } else { layout };
                let w = Operand::new(units, d, w_layout, seed + 3);
                let what = format!("{isa} T={t} units={units} d={d} {layout:?}");
                for (act, b) in [(Activation::Relu, Some(&bias[..])), (Activation::Identity, None)] {
                    let mut h = vec![f32::NAN; tokens.len()];
                    let par = if l % 2 == 0 { Par::Rayon } else { Par::Seq };
                    unit_row_dots(isa, &groups, x.view(), w.view(), b, act, &mut h, par).unwrap();
                    let want = reference_dots(&chosen, &offsets, &tokens, &x, &w, b, act);
                    assert_close(&format!("dots {what} {act:?}"), &h, &want, 1e-5, 1e-5 * (d as f64).sqrt());
                }
                let h = data(tokens.len(), seed + 4, -1.0, 1.0);
                let y0 = data(t * d, seed + 5, -1.0, 1.0);
                let want = reference_accumulate(&chosen, &offsets, &tokens, &h, &w, &y0);
                let mut y = y0.clone();
                accumulate_unit_rows(isa, &groups, &h, w.view(), MatMut::row_major(&mut y, t, d).unwrap(), Par::Rayon)
                    .unwrap();
                assert_close(&format!("accumulate {what}"), &y, &want, 1e-5, 1e-5 * (units as f64).sqrt());
                // y with padded rows: the padding is never written.
                let mut padded = vec![7.0f32; t * (d + 3)];
                for r in 0..t {
                    padded[r * (d + 3)..r * (d + 3) + d].copy_from_slice(&y0[r * d..(r + 1) * d]);
                }
                let yv = MatMut::new(&mut padded, t, d, d + 3, 1).unwrap();
                accumulate_unit_rows(isa, &groups, &h, w.view(), yv, Par::Seq).unwrap();
                for r in 0..t {
                    let row = &padded[r * (d + 3)..(r + 1) * (d + 3)];
                    assert_close(&format!("padded y {what}"), &row[..d], &want[r * d..(r + 1) * d], 1e-5, 1e-4);
                    assert!(row[d..].iter().all(|&v| v == 7.0), "{what}: padding written");
                }
            }
        }
    }
}

#[test]
fn unchosen_rows_are_never_read() {
    // Units 1 and 3 are not chosen: their rows hold NaN, which would poison any sum they entered.
    let (t, d) = (2, 19);
    let tokens = [1u32, 0, 1];
    let groups = UnitGroups::new(&[0, 2], &[0, 1, 3], &tokens, 4, t).unwrap();
    let mut w = data(4 * d, 3, -1.0, 1.0);
    for u in [1, 3] {
        w[u * d..(u + 1) * d].fill(f32::NAN);
    }
    let x = data(t * d, 4, -1.0, 1.0);
    for isa in Isa::supported() {
        let wv = MatRef::row_major(&w, 4, d).unwrap();
        let mut h = [0.0f32; 3];
        unit_row_dots(
            isa,
            &groups,
            MatRef::row_major(&x, t, d).unwrap(),
            wv,
            None,
            Activation::Identity,
            &mut h,
            Par::Seq,
        )
        .unwrap();
        let mut y = vec![0.0f32; t * d];
        accumulate_unit_rows(isa, &groups, &h, wv, MatMut::row_major(&mut y, t, d).unwrap(), Par::Seq).unwrap();
        assert!(h.iter().chain(&y).all(|v| v.is_finite()), "{isa}: an unchosen row was read");
    }
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    let (t, units, d) = (16, 160, 520);
    let (chosen, offsets, tokens) = random_groups(t, units, 0.3, 9);
    assert!(tokens.len() * d >= PARALLEL_MIN_MACS, "the case must be large enough to run in parallel");
    let x = data(t * d, 1, -1.0, 1.0);
    let w1 = data(units * d, 2, -1.0, 1.0);
    let w2 = data(units * d, 3, -1.0, 1.0);
    let bias = data(units, 4, -0.5, 0.5);
    for isa in Isa::supported() {
        let runs = in_pools(&[1, 2], || {
            let groups = UnitGroups::new(&chosen, &offsets, &tokens, units, t).unwrap();
            let mut h = vec![0.0f32; tokens.len()];
            let (xv, w1v) = (MatRef::row_major(&x, t, d).unwrap(), MatRef::row_major(&w1, units, d).unwrap());
            unit_row_dots(isa, &groups, xv, w1v, Some(&bias), Activation::Relu, &mut h, Par::Rayon).unwrap();
            let mut y = vec![0.0f32; t * d];
            let w2v = MatRef::row_major(&w2, units, d).unwrap();
            accumulate_unit_rows(isa, &groups, &h, w2v, MatMut::row_major(&mut y, t, d).unwrap(), Par::Rayon).unwrap();
            (bits(&h), bits(&y))
        });
        assert_eq!(runs[0], runs[1], "{isa}: 1 and 2 threads differ");
    }
}

#[test]
fn errors_name_the_shapes() {
    let offsets = [0, 1, 2];
    let tokens = [0u32, 1];
    let groups = UnitGroups::new(&[0, 1], &offsets, &tokens, 2, 2).unwrap();
    let x = [0.0f32; 6];
    let w = [0.0f32; 6];
    let isa = Isa::active();
    let xv = MatRef::row_major(&x, 2, 3).unwrap();
    let wv = MatRef::row_major(&w, 2, 3).unwrap();
    let mut h = [0.0f32; 2];
    let err =
        unit_row_dots(isa, &groups, xv, MatRef::row_major(&w, 3, 2).unwrap(), None, Activation::Relu, &mut h, Par::Seq)
            .unwrap_err()
            .to_string();
    assert_eq!(err, "unit_row_dots: shape mismatch: the weight has 3 unit rows, the groups 2 units");
    let err = unit_row_dots(isa, &groups, xv, wv.t().t(), Some(&[0.0; 3]), Activation::Relu, &mut h, Par::Seq)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "unit_row_dots: shape mismatch: bias has 3 elements, expected 2 (one per unit)");
    let wt = MatRef::row_major(&w, 3, 2).unwrap().t();
    let err = unit_row_dots(isa, &groups, xv, wt, None, Activation::Relu, &mut h, Par::Seq).unwrap_err().to_string();
    assert!(err.contains("must be contiguous"), "{err}");
    let mut y = [0.0f32; 4];
    let err = accumulate_unit_rows(isa, &groups, &h, wv, MatMut::row_major(&mut y, 2, 2).unwrap(), Par::Seq)
        .unwrap_err()
        .to_string();
    assert_eq!(err, "accumulate_unit_rows: shape mismatch: y is 2x2, expected 2x3 (tokens x unit width)");
    let err = UnitGroups::new(&[0, 1], &[0, 3, 2], &tokens, 2, 2).unwrap_err().to_string();
    assert!(err.contains("decrease at unit 1"), "{err}");
    let err = UnitGroups::new(&[0, 1], &offsets, &[0, 5], 2, 2).unwrap_err().to_string();
    assert!(err.contains("index 5 at position 1 is out of range for 2 rows (tokens)"), "{err}");
    let err = UnitGroups::new(&[0, 2], &offsets, &tokens, 2, 2).unwrap_err().to_string();
    assert!(err.contains("index 2 at position 1 is out of range for 2 rows (units)"), "{err}");
    let err = UnitGroups::new(&[1, 1], &offsets, &tokens, 2, 2).unwrap_err().to_string();
    assert!(err.contains("strictly ascending: 1 then 1"), "{err}");
    let err = UnitGroups::new(&[0], &[0, 1], &tokens, 2, 2).unwrap_err().to_string();
    assert_eq!(
        err,
        "UnitGroups: offsets must run from 0 to the 2 slots with one entry per unit and one more (1 units), \
         got 2 offsets from 0 to 1"
    );
}
