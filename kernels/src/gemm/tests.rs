//! GEMM against the f64 reference and `matrixmultiply`, on odd shapes, strided, transposed,
//! gathered and scattered views, every epilogue and accumulation mode, on every CPU path.

use super::reference::gemm_reference;
use super::*;
use crate::testing::{assert_close, bits, data, Layout, Operand};

/// Checks a GEMM result against the reference, to a tolerance that grows with `√k`.
#[track_caller]
fn assert_gemm_close(got: &[f32], want: &[f32], k: usize, what: &str) {
    let tol = 1e-5 * (k as f64).sqrt().max(1.0);
    let want: Vec<f64> = want.iter().map(|&w| w as f64).collect();
    assert_close(what, got, &want, tol, tol);
}

/// Runs one case on `isa` and checks it against the reference.
#[allow(clippy::too_many_arguments)]
fn check_case(isa: Isa, m: usize, n: usize, k: usize, la: Layout, lb: Layout, gemm: Gemm<'_>, scatter: bool) {
    let a = Operand::new(m, k, la, 1);
    let b = Operand::new(k, n, lb, 2);
    let c_rows = if scatter { m + 2 } else { m };
    let c0 = data(c_rows * n, 3, -1.0, 1.0);
    let scatter_index: Vec<u32> = (0..m as u32).rev().map(|i| i + 1).collect();
    let mut got = c0.clone();
    let mut want = c0.clone();
    {
        let c = MatMut::row_major(&mut got, c_rows, n).unwrap();
        let c = if scatter { c.scatter_rows(&scatter_index).unwrap() } else { c };
        Gemm { isa, ..gemm }.run(c, a.view(), b.view()).unwrap();
    }
    {
        let c = MatMut::row_major(&mut want, c_rows, n).unwrap();
        let mut c = if scatter { c.scatter_rows(&scatter_index).unwrap() } else { c };
        gemm_reference(&mut c, gemm.accum, &a.view(), &b.view(), gemm.alpha, &gemm.epilogue);
    }
    assert_gemm_close(&got, &want, k, &format!("{isa} m={m} n={n} k={k} {la:?}x{lb:?} {gemm:?} scatter={scatter}"));
}

const SIZES: [usize; 6] = [1, 3, 7, 33, 65, 257];

/// Odd shapes, row-major: up to 512 rows on the grouped path (`few_rows_for_grouped`), 513 on
/// the dense driver.
#[test]
fn odd_shapes_on_every_path() {
    for isa in Isa::supported() {
        for m in SIZES.into_iter().chain([513]) {
            for &n in &SIZES {
                for k in [1, 7, 65, 300] {
                    check_case(isa, m, n, k, Layout::RowMajor, Layout::RowMajor, Gemm::default(), false);
                }
            }
        }
    }
}

#[test]
fn strided_transposed_gathered_and_scattered_views() {
    let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Padded, Layout::Gathered, Layout::GatheredCols];
    for isa in Isa::supported() {
        for la in layouts {
            for lb in layouts {
                for (m, n, k) in [(1, 33, 17), (7, 19, 260), (40, 35, 9), (13, 50, 513)] {
                    check_case(isa, m, n, k, la, lb, Gemm::default(), false);
                    check_case(isa, m, n, k, la, lb, Gemm { accum: Accum::Add, ..Gemm::default() }, true);
                }
            }
        }
    }
}

#[test]
fn epilogues_and_accumulation_modes() {
    let (m, n) = (19, 37);
    let bias = data(n, 9, -1.0, 1.0);
    let scale = data(m, 10, -1.0, 1.0);
    for isa in Isa::supported() {
        for activation in
            [Activation::Identity, Activation::Relu, Activation::Gelu, Activation::GeluErf, Activation::Silu]
        {
            for accum in [Accum::Replace, Accum::Add] {
                for k in [0, 5, 256, 600] {
                    for (bias, scale) in [(None, None), (Some(&bias[..]), None), (Some(&bias[..]), Some(&scale[..]))] {
                        let epilogue = Epilogue { bias, activation, row_scale: scale };
                        let gemm = Gemm { alpha: 0.75, accum, epilogue, ..Gemm::default() };
                        for mm in [1, m] {
                            let epilogue = Epilogue { row_scale: scale.map(|s| &s[..mm]), ..epilogue };
                            let gemm = Gemm { epilogue, ..gemm };
                            check_case(isa, mm, n, k, Layout::RowMajor, Layout::RowMajor, gemm, false);
                            check_case(isa, mm, n, k, Layout::Padded, Layout::Transposed, gemm, true);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn agrees_with_matrixmultiply() {
    let (m, n, k) = (129, 97, 531);
    let a = data(m * k, 4, -1.0, 1.0);
    let b = data(k * n, 5, -1.0, 1.0);
    for isa in Isa::supported() {
        let mut ours = vec![0.0f32; m * n];
        let gemm = Gemm { isa, ..Gemm::default() };
        gemm.run(
            MatMut::row_major(&mut ours, m, n).unwrap(),
            MatRef::row_major(&a, m, k).unwrap(),
            MatRef::row_major(&b, k, n).unwrap(),
        )
        .unwrap();
        let mut theirs = vec![0.0f32; m * n];
        // SAFETY: the pointers and strides describe the three row-major buffers above.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                theirs.as_mut_ptr(),
                n as isize,
                1,
            );
        }
        assert_gemm_close(&ours, &theirs, k, &format!("{isa} vs matrixmultiply"));
    }
}

/// The grouped path that few rows take and the dense driver compute a row with the same
/// arithmetic: the first rows of a product of 600 rows (dense driver) have the bits of the
/// same rows alone (grouped path), for every tile, B row-major or transposed, with an epilogue,
/// and with B packed ahead.
#[test]
fn few_rows_on_the_grouped_path_have_the_bits_of_the_dense_driver() {
    let (tall, n, k) = (600, 150, 300);
    let a = data(tall * k, 4, -1.0, 1.0);
    let bias = data(n, 5, -1.0, 1.0);
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let bl = Blocking::for_tile(isa, mr, nv).unwrap().with_kc(128).unwrap();
            for lb in [Layout::RowMajor, Layout::Transposed] {
                let b = Operand::new(k, n, lb, 6);
                let packed = PackedB::new(b.view(), bl);
                let epilogue = Epilogue { bias: Some(&bias), activation: Activation::Gelu, row_scale: None };
                let gemm = Gemm { isa, blocking: Some(bl), epilogue, ..Gemm::default() };
                let run = |m: usize, packed: Option<&PackedB>| {
                    let mut c = vec![0.0f32; m * n];
                    let (cm, am) =
                        (MatMut::row_major(&mut c, m, n).unwrap(), MatRef::row_major(&a[..m * k], m, k).unwrap());
                    match packed {
                        Some(p) => gemm.run_packed(cm, am, b.view(), p).unwrap(),
                        None => gemm.run(cm, am, b.view()).unwrap(),
                    }
                    crate::testing::bits(&c)
                };
                for packed in [None, Some(&packed)] {
                    let full = run(tall, packed);
                    for m in [37, 300] {
                        let what = format!("{isa} {bl} {lb:?} m={m} packed={}", packed.is_some());
                        assert_eq!(run(m, packed), full[..m * n], "{what}");
                    }
                }
            }
        }
    }
}

/// Row-major A of 300 rows (the grouped path) and 600 (the dense driver), on 1, 2 and 3
/// threads.
#[test]
fn bit_identical_on_one_and_two_threads() {
    for m in [300, 600] {
        bit_identical_on_one_and_two_threads_at(m);
    }
}

fn bit_identical_on_one_and_two_threads_at(m: usize) {
    let (n, k) = (200, 700);
    let a = data(m * k, 6, -1.0, 1.0);
    let b = data(k * n, 7, -1.0, 1.0);
    let bias = data(n, 8, -1.0, 1.0);
    let run = |threads: usize, isa: Isa| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut c = vec![0.0f32; m * n];
        pool.install(|| {
            let epilogue = Epilogue { bias: Some(&bias), activation: Activation::Gelu, row_scale: None };
            Gemm { isa, epilogue, ..Gemm::default() }
                .run(
                    MatMut::row_major(&mut c, m, n).unwrap(),
                    MatRef::row_major(&a, m, k).unwrap(),
                    MatRef::row_major(&b, k, n).unwrap(),
                )
                .unwrap()
        });
        c
    };
    for isa in Isa::supported() {
        let one = run(1, isa);
        // On three threads B's panels are packed in groups of ⌈panels / 3⌉, some of which an
        // item waits for while another thread packs them.
        for threads in [2, 3] {
            let many = run(threads, isa);
            let same = one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{isa} m={m}: 1 vs {threads} threads differ");
        }
    }
}

/// Products of one row (the GEMV, wide enough to fork: three column chunks) and of a few
/// rows (the skinny form, up to 8 rows whatever the tile's height) give the same bits on one
/// and two threads and from a thread outside the pool, and match the reference; B's rows or
/// its columns contiguous.
#[test]
fn few_row_products_are_bit_identical_on_one_and_two_threads_and_outside_the_pool() {
    let (n, k) = (4100, 70);
    let b = data(k * n, 7, -1.0, 1.0);
    for m in [1, 7, 8] {
        let a = data(m * k, 6, -1.0, 1.0);
        for isa in Isa::supported() {
            for transposed in [false, true] {
                let b = match transposed {
                    false => MatRef::row_major(&b, k, n).unwrap(),
                    true => MatRef::row_major(&b, n, k).unwrap().t(),
                };
                let a = MatRef::row_major(&a, m, k).unwrap();
                let run = || {
                    let mut c = vec![0.0f32; m * n];
                    Gemm { isa, ..Gemm::default() }.run(MatMut::row_major(&mut c, m, n).unwrap(), a, b).unwrap();
                    c
                };
                let what = format!("{isa} m={m} transposed={transposed}");
                let pooled =
                    |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run);
                let one = pooled(1);
                assert_eq!(bits(&one), bits(&pooled(2)), "{what}: 1 vs 2 threads");
                assert_eq!(bits(&one), bits(&run()), "{what}: outside the pool");
                let mut want = vec![0.0f32; m * n];
                let mut c = MatMut::row_major(&mut want, m, n).unwrap();
                gemm_reference(&mut c, Accum::Replace, &a, &b, 1.0, &Epilogue::default());
                for (i, (&got, &w)) in one.iter().zip(&want).enumerate() {
                    assert!(
                        (got - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k as f32).sqrt(),
                        "{what}: [{i}] {got} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let a = vec![0.0f32; 6];
    let b = vec![0.0f32; 8];
    let mut c = vec![0.0f32; 8];
    let err = Gemm::default()
        .run(
            MatMut::row_major(&mut c, 2, 4).unwrap(),
            MatRef::row_major(&a, 2, 3).unwrap(),
            MatRef::row_major(&b, 2, 4).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "gemm: shape mismatch: A is 2x3, B is 2x4, C is 2x4");
    let bias = [0.0f32; 3];
    let epilogue = Epilogue { bias: Some(&bias), ..Epilogue::default() };
    let err = Gemm { epilogue, ..Gemm::default() }
        .run(
            MatMut::row_major(&mut c, 2, 4).unwrap(),
            MatRef::row_major(&a, 2, 3).unwrap(),
            MatRef::row_major(&a, 3, 2).unwrap().gather_cols(&[0, 1, 1, 0]).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "gemm: shape mismatch: bias has 3 elements, C has 4 columns");
}

/// Every register tile of every path, with a small KC and MC so the odd shapes span several K
/// slices and row blocks, on the layouts with their own packing paths.
#[test]
fn every_tile_matches_the_reference() {
    let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Gathered, Layout::GatheredCols];
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let bl = Blocking::for_tile(isa, mr, nv).unwrap().with_kc(40).unwrap().with_mc(2 * mr).unwrap();
            let gemm = Gemm { blocking: Some(bl), ..Gemm::default() };
            for (m, n, k) in [(1, 7, 33), (7, 33, 1), (33, 65, 97), (2 * mr + 1, 3 * bl.nr() + 5, 81)] {
                for la in layouts {
                    for lb in layouts {
                        check_case(isa, m, n, k, la, lb, gemm, false);
                    }
                }
                let bias = data(n, 9, -1.0, 1.0);
                let epilogue = Epilogue { bias: Some(&bias), activation: Activation::Gelu, row_scale: None };
                let add = Gemm { alpha: 0.5, accum: Accum::Add, ..gemm };
                check_case(isa, m, n, k, Layout::Padded, Layout::Transposed, add, true);
                check_case(isa, m, n, k, Layout::RowMajor, Layout::RowMajor, Gemm { epilogue, ..gemm }, false);
            }
        }
    }
}

/// The row blocks share out over the threads by themselves when a lower block height makes
/// them and the product is tall for its width (always, for the tall products here): then no
/// thread packs an A block twice. A short, wide product keeps its blocks (its threads split
/// the columns instead, which costs less than reading all of B once more per extra block).
#[test]
fn row_blocks_share_out_evenly_without_column_slices() {
    use super::driver::{column_chunks, row_block_height};
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let bl = Blocking::for_tile(isa, mr, nv).unwrap();
            for m in [1, 7, 33, 257, 2048, 4096, 4099] {
                for n in [64, 512, 2048] {
                    assert_eq!(row_block_height(&bl, m, n, 1), bl.mc_for(m), "{isa} {bl} m={m}: one thread");
                    for threads in [2, 3, 4] {
                        let h = row_block_height(&bl, m, n, threads);
                        assert!(h <= bl.mc_for(m) && (h.is_multiple_of(mr) || h >= m), "{isa} {bl} m={m}: {h}");
                        let blocks = m.div_ceil(h);
                        if h < bl.mc_for(m) || m >= 2048 {
                            assert_eq!(column_chunks(blocks, threads), 1, "{isa} {bl} {m}x{n} t={threads}: {blocks}");
                        }
                    }
                }
            }
            // One block's worth of rows, 4096 columns: the columns are split, the block kept.
            let m = bl.mc_for(1 << 20).min(100);
            assert_eq!(row_block_height(&bl, m, 4096, 2), bl.mc_for(m), "{isa} {bl}: short and wide");
        }
    }
}

#[test]
fn every_tile_is_bit_identical_on_one_and_two_threads() {
    // 131 rows in blocks of at most 5·MR: an odd number of blocks on the 6- and 12-row tiles,
    // which two threads share out with lower blocks than one thread uses.
    let (m, n, k) = (131, 150, 300);
    let a = data(m * k, 6, -1.0, 1.0);
    let b = data(k * n, 7, -1.0, 1.0);
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let bl = Blocking::for_tile(isa, mr, nv).unwrap().with_kc(64).unwrap().with_mc(5 * mr).unwrap();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = vec![0.0f32; m * n];
                pool.install(|| {
                    Gemm { isa, blocking: Some(bl), par: Par::Rayon, ..Gemm::default() }
                        .run(
                            MatMut::row_major(&mut c, m, n).unwrap(),
                            MatRef::row_major(&a, k, m).unwrap().t(),
                            MatRef::row_major(&b, k, n).unwrap(),
                        )
                        .unwrap()
                });
                c
            };
            let (one, two) = (run(1), run(2));
            assert!(one.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()), "{isa} {bl}: 1 vs 2 threads");
        }
    }
}

/// B packed once ([`PackedB`]) gives the bits of B packed per call, for every tile of every
/// path, B layouts with their own packing paths, several K slices and NC blocks, every store
/// mode, and the unpacked paths (one row, a few rows); and matches the reference.
#[test]
fn packed_b_gives_the_bits_of_packing_per_call() {
    let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Gathered, Layout::GatheredCols];
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let base = Blocking::for_tile(isa, mr, nv).unwrap();
            let bl = base.with_kc(40).unwrap().with_mc(2 * mr).unwrap().with_nc(2 * base.nr()).unwrap();
            for (m, n, k) in [(1, 7, 33), (mr - 1, 65, 90), (2 * mr + 1, 5 * bl.nr() + 3, 81), (40, 33, 1)] {
                let a = Operand::new(m, k, Layout::Padded, 1);
                for lb in layouts {
                    let b = Operand::new(k, n, lb, 2);
                    let packed = PackedB::new(b.view(), bl);
                    let bias = data(n, 9, -1.0, 1.0);
                    let gelu = Epilogue { bias: Some(&bias), activation: Activation::Gelu, row_scale: None };
                    for gemm in [
                        Gemm { isa, blocking: Some(bl), ..Gemm::default() },
                        Gemm { isa, blocking: Some(bl), epilogue: gelu, ..Gemm::default() },
                        Gemm { isa, blocking: Some(bl), alpha: 0.5, accum: Accum::Add, ..Gemm::default() },
                    ] {
                        let c0 = data(m * n, 3, -1.0, 1.0);
                        let (mut per_call, mut once) = (c0.clone(), c0.clone());
                        gemm.run(MatMut::row_major(&mut per_call, m, n).unwrap(), a.view(), b.view()).unwrap();
                        gemm.run_packed(MatMut::row_major(&mut once, m, n).unwrap(), a.view(), b.view(), &packed)
                            .unwrap();
                        let what = format!("{isa} {bl} m={m} n={n} k={k} {lb:?} {gemm:?}");
                        assert_eq!(crate::testing::bits(&once), crate::testing::bits(&per_call), "{what}");
                        let mut want = c0.clone();
                        let mut c = MatMut::row_major(&mut want, m, n).unwrap();
                        gemm_reference(&mut c, gemm.accum, &a.view(), &b.view(), gemm.alpha, &gemm.epilogue);
                        assert_gemm_close(&once, &want, k, &what);
                    }
                }
            }
        }
    }
}

/// Matrices packed together (one allocation) are read as each packed alone: same bits for
/// every layout and odd shape (a matrix overwriting its neighbour's panels would change them),
/// each starting on a 64-byte boundary and counting only its own bytes.
#[test]
fn packed_together_gives_the_bits_of_packed_alone() {
    let shapes = [(33, 7), (1, 65), (90, 77), (257, 1), (0, 4), (2, 129)];
    for isa in Isa::supported() {
        let bl = Blocking::of(isa).with_kc(40).unwrap();
        let layouts = [Layout::RowMajor, Layout::Transposed, Layout::Gathered];
        let bs: Vec<Operand> = shapes
            .iter()
            .zip(layouts.iter().cycle())
            .enumerate()
            .map(|(i, (&(k, n), &lb))| Operand::new(k, n, lb, 10 + i as u64))
            .collect();
        let views: Vec<MatRef<'_>> = bs.iter().map(|b| b.view()).collect();
        let together = PackedB::new_each(&views, bl);
        assert_eq!(together.len(), bs.len());
        for (b, packed) in bs.iter().zip(&together) {
            let (k, n) = (b.view().rows, b.view().cols);
            let alone = PackedB::new(b.view(), bl);
            let what = format!("{isa} k={k} n={n}");
            assert_eq!(packed.bytes(), alone.bytes(), "{what}");
            assert_eq!((packed.rows(), packed.cols()), (k, n), "{what}");
            if k > 0 && n > 0 {
                assert_eq!(packed.first_panel().as_ptr() as usize % 64, 0, "{what}");
            }
            let m = 9;
            let a = Operand::new(m, k, Layout::Padded, 3);
            let gemm = Gemm { isa, blocking: Some(bl), ..Gemm::default() };
            let (mut want, mut got) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
            gemm.run_packed(MatMut::row_major(&mut want, m, n).unwrap(), a.view(), b.view(), &alone).unwrap();
            gemm.run_packed(MatMut::row_major(&mut got, m, n).unwrap(), a.view(), b.view(), packed).unwrap();
            assert_eq!(crate::testing::bits(&got), crate::testing::bits(&want), "{what}");
            let mut reference = vec![0.0f32; m * n];
            gemm_reference(
                &mut MatMut::row_major(&mut reference, m, n).unwrap(),
                Accum::Replace,
                &a.view(),
                &b.view(),
                1.0,
                &Epilogue::default(),
            );
            assert_gemm_close(&got, &reference, k, &what);
        }
    }
    assert!(PackedB::new_each(&[], Blocking::of(Isa::active())).is_empty());
}

#[test]
fn packed_b_of_another_blocking_is_not_read_and_a_wrong_shape_is_refused() {
    let (m, n, k) = (50, 70, 300);
    let (a, b) = (data(m * k, 1, -1.0, 1.0), data(k * n, 2, -1.0, 1.0));
    let (a, b) = (MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap());
    for isa in Isa::supported() {
        let gemm = Gemm { isa, ..Gemm::default() };
        // Packed with another KC: its slices do not fit this call, which packs B itself.
        let other = PackedB::new(b, Blocking::of(isa).with_kc(64).unwrap());
        let (mut want, mut got) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        gemm.run(MatMut::row_major(&mut want, m, n).unwrap(), a, b).unwrap();
        gemm.run_packed(MatMut::row_major(&mut got, m, n).unwrap(), a, b, &other).unwrap();
        assert_eq!(crate::testing::bits(&got), crate::testing::bits(&want), "{isa}");
        // One of this call's blocking is read: packed from other values, it changes the result.
        let b2 = data(k * n, 3, -1.0, 1.0);
        let decoy = PackedB::new(MatRef::row_major(&b2, k, n).unwrap(), Blocking::of(isa));
        gemm.run_packed(MatMut::row_major(&mut got, m, n).unwrap(), a, b, &decoy).unwrap();
        assert_ne!(crate::testing::bits(&got), crate::testing::bits(&want), "{isa}");
    }
    let wrong = PackedB::new(b.t(), Blocking::of(Isa::active()));
    let mut c = vec![0.0f32; m * n];
    let err = Gemm::default().run_packed(MatMut::row_major(&mut c, m, n).unwrap(), a, b, &wrong).unwrap_err();
    assert_eq!(err.to_string(), "gemm: shape mismatch: packed B is 70x300, B is 300x70");
}

#[test]
fn packed_b_is_bit_identical_on_one_and_two_threads() {
    let (m, n, k) = (131, 150, 600);
    let (a, b) = (data(m * k, 6, -1.0, 1.0), data(k * n, 7, -1.0, 1.0));
    let (a, b) = (MatRef::row_major(&a, m, k).unwrap(), MatRef::row_major(&b, k, n).unwrap());
    for isa in Isa::supported() {
        let packed = PackedB::new(b, Blocking::of(isa));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut c = vec![0.0f32; m * n];
            pool.install(|| {
                Gemm { isa, ..Gemm::default() }
                    .run_packed(MatMut::row_major(&mut c, m, n).unwrap(), a, b, &packed)
                    .unwrap()
            });
            crate::testing::bits(&c)
        };
        assert_eq!(run(1), run(2), "{isa}");
    }
}

/// A product of one NR panel reads A in place (each A tile is used once); it gives the bits of
/// the same columns computed among several panels (where the dense driver packs A, and the
/// grouped path, which few rows take, reads it in place too), for every tile, gathered and
/// padded A, several K slices, and edge rows.
#[test]
fn one_panel_products_read_a_in_place_with_the_bits_of_packing() {
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let bl = Blocking::for_tile(isa, mr, nv).unwrap().with_kc(40).unwrap().with_mc(2 * mr).unwrap();
            let nr = bl.nr();
            // Up to 512 rows (64 on one panel), the grouped path takes both; 601 rows, the dense
            // driver, which packs A for the wide product.
            for (m, k) in [(1 + 2 * mr, 81), (3 * mr, 7), (40, 100), (601, 50)] {
                for la in [Layout::RowMajor, Layout::Padded, Layout::Gathered] {
                    let a = Operand::new(m, k, la, 1);
                    // B: nr + 5 columns; its first nr columns alone are one panel.
                    let wide = data(k * (nr + 5), 2, -1.0, 1.0);
                    let b_wide = MatRef::row_major(&wide, k, nr + 5).unwrap();
                    let b_one = MatRef::new(&wide, k, nr, nr + 5, 1).unwrap();
                    let bias = data(nr + 5, 9, -1.0, 1.0);
                    let run = |c: MatMut<'_>, b: MatRef<'_>, bias: &[f32]| {
                        let epilogue = Epilogue { bias: Some(bias), activation: Activation::Gelu, row_scale: None };
                        Gemm { isa, blocking: Some(bl), par: Par::Seq, epilogue, ..Gemm::default() }
                            .run(c, a.view(), b)
                            .unwrap()
                    };
                    let (mut one, mut many) = (vec![0.0f32; m * nr], vec![0.0f32; m * (nr + 5)]);
                    run(MatMut::row_major(&mut one, m, nr).unwrap(), b_one, &bias[..nr]);
                    run(MatMut::row_major(&mut many, m, nr + 5).unwrap(), b_wide, &bias);
                    let firsts: Vec<f32> = many.chunks(nr + 5).flat_map(|r| r[..nr].to_vec()).collect();
                    let what = format!("{isa} {bl} m={m} k={k} {la:?}");
                    assert_eq!(crate::testing::bits(&one), crate::testing::bits(&firsts), "{what}");
                }
            }
        }
    }
}

/// An edge tile (fewer rows than MR) runs smaller kernels that sum each row in a full tile's
/// order: a product of `m` rows gives the bits of the first `m` rows of a taller one, for every
/// tile, for A packed, read in place by rows, or in place by columns (`Xᵀ`, whose edge tile
/// reads past the view's last row into the buffer's padding), on one or several panels. And a
/// one-panel product, which reads A in place, gives the bits of the same columns of a wider
/// product, which packs it. A product whose columns take fewer vectors than the tile has (its
/// edge computes only those) gives the bits of the same columns of a full tile.
#[test]
fn edge_rows_give_the_bits_of_full_tiles() {
    let k = 81;
    for isa in Isa::supported() {
        for &(mr, nv) in Blocking::tiles(isa) {
            let bl = Blocking::for_tile(isa, mr, nv).unwrap().with_kc(40).unwrap();
            let (tall, nr) = (3 * mr, bl.nr());
            let rows_data = data(tall * k, 1, -1.0, 1.0);
            // X is [k, tall + 3] row-major; A = X[:, ..m]ᵀ is column-major with 3 floats of padding.
            let x = data(k * (tall + 3), 2, -1.0, 1.0);
            let wide = 2 * nr + 5;
            let b_data = data(k * wide, 3, -1.0, 1.0);
            for by_cols in [false, true] {
                let a = |m: usize| match by_cols {
                    false => MatRef::row_major(&rows_data[..m * k], m, k).unwrap(),
                    true => MatRef::new(&x, m, k, 1, tall + 3).unwrap(),
                };
                // B's first n columns (a view into the wide B).
                let run = |m: usize, n: usize| {
                    let mut c = vec![0.0f32; m * n];
                    let b = MatRef::new(&b_data, k, n, wide, 1).unwrap();
                    let gemm = Gemm { isa, blocking: Some(bl), par: Par::Seq, ..Gemm::default() };
                    gemm.run(MatMut::row_major(&mut c, m, n).unwrap(), a(m), b).unwrap();
                    c
                };
                let full = run(tall, wide);
                // (Up to MR rows, and up to 8 over a row-major B like this one, take the few-row
                // paths, not the tiles.)
                let tiled = [mr + 1, 2 * mr - 1, 2 * mr + 1, 3 * mr - 1, tall].into_iter().filter(|&m| m > 8);
                for m in tiled {
                    let what = format!("{isa} {bl} m={m} by_cols={by_cols}");
                    let first_columns: Vec<f32> =
                        full[..m * wide].chunks(wide).flat_map(|r| r[..nr].to_vec()).collect();
                    assert_eq!(crate::testing::bits(&run(m, wide)), crate::testing::bits(&full[..m * wide]), "{what}");
                    assert_eq!(
                        crate::testing::bits(&run(m, nr)),
                        crate::testing::bits(&first_columns),
                        "{what} one panel"
                    );
                }
                // Narrow last panels: of a one-panel product (A read in place) and of a wider one
                // (A packed when it is read by columns), with and without edge rows.
                let lanes = nr / nv;
                let one_panel = [1, lanes - 1, lanes + 1, 2 * lanes + 3, nr - 1].into_iter().filter(|&n| n < nr);
                let narrow = one_panel.chain([nr + 1, nr + lanes + 3]).filter(|&n| n >= 1);
                for (n, m) in narrow.flat_map(|n| [(n, tall), (n, 2 * mr + 1)]).filter(|&(_, m)| m > 8) {
                    let first: Vec<f32> = full[..m * wide].chunks(wide).flat_map(|r| r[..n].to_vec()).collect();
                    let what = format!("{isa} {bl} m={m} n={n} by_cols={by_cols}");
                    assert_eq!(crate::testing::bits(&run(m, n)), crate::testing::bits(&first), "{what}");
                }
                let mut want = vec![0.0f32; tall * nr];
                let b = MatRef::new(&b_data, k, nr, wide, 1).unwrap();
                let mut c = MatMut::row_major(&mut want, tall, nr).unwrap();
                gemm_reference(&mut c, Accum::Replace, &a(tall), &b, 1.0, &Epilogue::default());
                assert_gemm_close(&run(tall, nr), &want, k, &format!("{isa} {bl} by_cols={by_cols} reference"));
            }
        }
    }
}
