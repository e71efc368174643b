use super::*;
use crate::gemm::Accum;
use crate::testing::{assert_close, bits, data, in_pools, SIZES};
use crate::weighted_row_sums;
use rayon::prelude::*;

/// The output row each of `n` source rows goes to, with every output row receiving at most two:
/// row `i` goes to `(7i) mod count` for the first `count` rows and `(5i + 2) mod count` for the
/// next `count`; with `n < 2·count` some output rows receive one row or none.
fn destinations(n: usize, count: usize) -> Vec<u32> {
    (0..n).map(|i| if i < count { (7 * i) % count } else { (5 * i + 2) % count } as u32).collect()
}

/// The same assignment as the CSR groups [`weighted_row_sums`] takes, each group's rows in
/// source order.
fn as_groups(dest: &[u32], count: usize) -> (Vec<usize>, Vec<u32>) {
    let (mut start, mut rows) = (vec![0], Vec::new());
    for t in 0..count as u32 {
        rows.extend((0..dest.len() as u32).filter(|&i| dest[i as usize] == t));
        start.push(rows.len());
    }
    (start, rows)
}

/// Adds source rows `order` (in that order, in runs of `chunk`, the runs spread over rayon's
/// threads) into a fresh `[count, cols]` output and returns it finished.
fn shared_sums(
    isa: Isa,
    src: &[f32],
    dest: &[u32],
    scale: &[f32],
    count: usize,
    order: &[usize],
    chunk: usize,
) -> Vec<f32> {
    let cols = src.len() / dest.len();
    let mut out = vec![f32::NAN; count * cols];
    let sums = SharedRowSums::new(&mut out, count, cols).unwrap();
    order.par_chunks(chunk).for_each(|run| {
        let rows: Vec<u32> = run.iter().map(|&i| dest[i]).collect();
        let x: Vec<f32> = run.iter().flat_map(|&i| src[i * cols..(i + 1) * cols].iter().copied()).collect();
        let g: Vec<f32> = if scale.is_empty() { Vec::new() } else { run.iter().map(|&i| scale[i]).collect() };
        sums.add_scaled(isa, &x, &rows, &g).unwrap();
    });
    sums.finish();
    out
}

#[test]
fn shared_sums_have_the_bits_of_weighted_row_sums_in_any_order() {
    let (count, n) = (11, 17); // 6 output rows receive two rows, 5 receive one
    let dest = destinations(n, count);
    let (start, rows) = as_groups(&dest, count);
    let forward: Vec<usize> = (0..n).collect();
    let backward: Vec<usize> = (0..n).rev().collect();
    for isa in Isa::supported() {
        for cols in SIZES {
            let src = data(n * cols, cols as u64, -1.0, 1.0);
            let scale = data(n, 5, -2.0, 2.0);
            for scale in [&scale[..], &[][..]] {
                let mut want = vec![0.0; count * cols];
                weighted_row_sums(isa, &src, cols, &start, &rows, scale, &mut want, Accum::Replace).unwrap();
                let mut reference = vec![0.0f64; count * cols];
                for (i, &t) in dest.iter().enumerate() {
                    let g = scale.get(i).copied().unwrap_or(1.0) as f64;
                    for j in 0..cols {
                        reference[t as usize * cols + j] += g * src[i * cols + j] as f64;
                    }
                }
                let what = format!("{isa} cols={cols} scaled={}", !scale.is_empty());
                for (order, chunk) in [(&forward, n), (&backward, 1), (&backward, 4)] {
                    let runs = in_pools(&[1, 2], || shared_sums(isa, &src, &dest, scale, count, order, chunk));
                    for got in runs {
                        assert_close(&what, &got, &reference, 1e-6, 1e-6);
                        assert_eq!(bits(&got), bits(&want), "{what} chunk={chunk}");
                    }
                }
            }
        }
    }
}

#[test]
fn rows_that_receive_nothing_are_zero_and_signed_zeros_add_in_either_order() {
    for isa in Isa::supported() {
        // Row 0 receives -0 and +0 (either order sums to +0), row 1 a lone -0, row 2 nothing.
        let src = [0.0, 0.0, 0.0];
        let (dest, scale) = ([0, 0, 1], [-1.0, 1.0, -1.0]);
        for order in [[0, 1, 2], [2, 1, 0]] {
            let out = shared_sums(isa, &src, &dest, &scale, 3, &order, 1);
            assert_eq!(bits(&out), bits(&[0.0, -0.0, 0.0]), "{isa} {order:?}");
        }
    }
}

#[test]
fn a_third_row_bad_indices_and_shapes_are_errors() {
    let isa = Isa::active();
    let mut out = [f32::NAN; 4];
    assert!(matches!(SharedRowSums::new(&mut out, 3, 2), Err(KernelError::Shape { .. })));
    let sums = SharedRowSums::new(&mut out, 2, 2).unwrap();
    assert_eq!(sums.num_rows(), 2);
    let err = sums.add_scaled(isa, &[1.0; 4], &[0, 2], &[]).unwrap_err();
    assert_eq!(err.to_string(), "SharedRowSums::add_scaled: index 2 at position 1 is out of range for 2 rows");
    assert!(matches!(sums.add_scaled(isa, &[1.0; 3], &[0, 1], &[]), Err(KernelError::Shape { .. })));
    assert!(matches!(sums.add_scaled(isa, &[1.0; 4], &[0, 1], &[1.0]), Err(KernelError::Shape { .. })));
    let err = sums.add_scaled(isa, &[1.0; 6], &[1, 1, 1], &[]).unwrap_err();
    assert!(err.to_string().contains("output row 1 would receive more than 2 rows"), "{err}");
    sums.finish();
    // The refused calls wrote nothing to row 0; row 1 kept its first two rows.
    assert_eq!(out, [0.0, 0.0, 2.0, 2.0]);
}

#[test]
fn dropping_without_finishing_also_zeroes_untouched_rows() {
    let mut out = [f32::NAN; 4];
    let sums = SharedRowSums::new(&mut out, 2, 2).unwrap();
    assert_eq!(sums.cols(), 2);
    sums.add_scaled(Isa::active(), &[1.0, 2.0], &[1], &[3.0]).unwrap();
    drop(sums);
    assert_eq!(out, [0.0, 0.0, 3.0, 6.0]);
}

#[test]
fn zero_width_rows_count_what_they_receive() {
    let mut out: [f32; 0] = [];
    let sums = SharedRowSums::new(&mut out, 3, 0).unwrap();
    let isa = Isa::active();
    sums.add_scaled(isa, &[], &[0, 0, 2], &[]).unwrap();
    assert!(sums.add_scaled(isa, &[], &[2, 0], &[]).is_err());
    assert!(sums.add_scaled(isa, &[], &[3], &[]).is_err());
    sums.finish();
}
