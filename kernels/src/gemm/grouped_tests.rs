//! Grouped GEMM against the reference, one problem at a time: expert-like problems of odd
//! sizes (including empty ones and K = 0), gathered rows and gathered K, range and index
//! outputs, every epilogue, on every CPU path; errors; 1 vs 2 threads.

use super::reference::gemm_reference;
use super::*;
use crate::testing::data;

/// An MoE-shaped case: `experts` weight matrices `[k, n]`, tokens `x: [t, k]`, expert `e` gets
/// `sizes[e]` tokens (gathered through a shuffled list), writing rows of a `[Σ sizes, n]` output
/// in expert order (Range) or through a reversed index (Index).
struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    scale: Vec<f32>,
    tokens: Vec<u32>,
    out_index: Vec<u32>,
    /// A permutation of 0..k (reversed), to gather K on both operands.
    kperm: Vec<u32>,
    offsets: Vec<usize>,
    t: usize,
    k: usize,
    n: usize,
}

impl Case {
    fn new(sizes: &[usize], t: usize, k: usize, n: usize) -> Case {
        let mut offsets = vec![0];
        for s in sizes {
            offsets.push(offsets.last().unwrap() + s);
        }
        let rows = *offsets.last().unwrap();
        Case {
            x: data(t * k, 1, -1.0, 1.0),
            w: data(sizes.len() * k * n, 2, -1.0, 1.0),
            bias: data(sizes.len() * n, 3, -1.0, 1.0),
            scale: data(rows, 4, -1.0, 1.0),
            tokens: (0..rows).map(|i| ((i * 7 + 2) % t) as u32).collect(),
            out_index: (0..rows as u32).rev().collect(),
            kperm: (0..k as u32).rev().collect(),
            offsets,
            t,
            k,
            n,
        }
    }

    fn problems(&self, index_out: bool, gather_k: bool, activation: Activation) -> Vec<GroupProblem<'_>> {
        let (k, n) = (self.k, self.n);
        (0..self.offsets.len() - 1)
            .map(|e| {
                let r = self.offsets[e]..self.offsets[e + 1];
                let x = MatRef::row_major(&self.x, self.t, k).unwrap().gather_rows(&self.tokens[r.clone()]).unwrap();
                let w = MatRef::row_major(&self.w[e * k * n..(e + 1) * k * n], k, n).unwrap();
                let (a, b) = if gather_k {
                    // Gather K on both sides with the same permutation: the product is unchanged.
                    (x.gather_cols(&self.kperm).unwrap(), w.gather_rows(&self.kperm).unwrap())
                } else {
                    (x, w)
                };
                GroupProblem {
                    a,
                    b,
                    rows: if index_out { OutRows::Index(&self.out_index[r.clone()]) } else { OutRows::Range(r.start) },
                    epilogue: Epilogue {
                        bias: Some(&self.bias[e * n..(e + 1) * n]),
                        activation,
                        row_scale: Some(&self.scale[r]),
                    },
                    packed_b: None,
                }
            })
            .collect()
    }
}

fn check(isa: Isa, sizes: &[usize], t: usize, k: usize, n: usize, accum: Accum, activation: Activation) {
    let case = Case::new(sizes, t, k, n);
    let rows = *case.offsets.last().unwrap();
    for index_out in [false, true] {
        for gather_k in [false, true] {
            let problems = case.problems(index_out, gather_k, activation);
            let start = data(rows * n, 5, -1.0, 1.0);
            let mut got = start.clone();
            let settings = Gemm { alpha: 0.5, accum, isa, ..Gemm::default() };
            settings.run_grouped(MatMut::row_major(&mut got, rows, n).unwrap(), &problems).unwrap();
            let mut want = start.clone();
            for p in &problems {
                let index: Vec<u32> = match p.rows {
                    OutRows::Range(s) => (s as u32..(s + p.a.rows) as u32).collect(),
                    OutRows::Index(ix) => ix.to_vec(),
                };
                let mut c = MatMut::row_major(&mut want, rows, n).unwrap().scatter_rows(&index).unwrap();
                gemm_reference(&mut c, accum, &p.a, &p.b, 0.5, &p.epilogue);
            }
            let tol = 2e-5 * (k as f32).sqrt().max(1.0);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= tol * (1.0 + w.abs()),
                    "{isa} sizes {sizes:?} k={k} n={n} {accum:?} {activation:?} index_out={index_out} gather_k={gather_k}: element {i}: {g} vs {w}"
                );
            }
        }
    }
}

#[test]
fn expert_shaped_problems_on_every_path() {
    for isa in Isa::supported() {
        for (sizes, t) in [(&[0usize, 1, 7, 0, 33][..], 20), (&[5][..], 5), (&[1, 1][..], 1), (&[65, 3, 200][..], 100)]
        {
            for (k, n) in [(1, 7), (33, 16), (260, 65)] {
                for accum in [Accum::Replace, Accum::Add] {
                    for activation in [Activation::Identity, Activation::Gelu, Activation::GeluErf] {
                        // Refused by design (the activation needs the whole sum before the add).
                        if accum == Accum::Add && activation != Activation::Identity && k > 256 {
                            continue;
                        }
                        check(isa, sizes, t, k, n, accum, activation);
                    }
                }
            }
        }
    }
}

#[test]
fn skinny_problems_wider_than_a_chunk_on_every_path() {
    // At most 8 rows each (the streamed skinny form), 1400 columns: more than one chunk of `y`
    // from 3 rows on (4096 / m columns, rounded down to 64), the last one narrower; k = 33
    // leaves a last group of one row of B after the groups whose successors are prefetched.
    for isa in Isa::supported() {
        for accum in [Accum::Replace, Accum::Add] {
            check(isa, &[1, 2, 3, 0, 5, 8], 9, 33, 1400, accum, Activation::Gelu);
        }
    }
}

#[test]
fn skinny_problems_bit_identical_on_one_and_two_threads() {
    // One problem of 3 rows: two threads split its 1400 columns, one thread takes them in one
    // item; k · n · m is past the size where the work list goes parallel.
    let case = Case::new(&[3, 6], 7, 257, 1400);
    let problems = case.problems(false, false, Activation::Gelu);
    for single in [true, false] {
        let problems = if single { &problems[..1] } else { &problems[..] };
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut out = vec![0.0f32; 9 * 1400];
            pool.install(|| {
                Gemm::default().run_grouped(MatMut::row_major(&mut out, 9, 1400).unwrap(), problems).unwrap()
            });
            out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(2), "single problem: {single}");
    }
}

#[test]
fn empty_k_writes_the_epilogue_of_zero() {
    let case = Case::new(&[2, 3], 4, 0, 5);
    for (index_out, accum) in [(false, Accum::Replace), (true, Accum::Replace), (true, Accum::Add)] {
        let problems = case.problems(index_out, false, Activation::Relu);
        let mut out = vec![9.0f32; 25];
        let gemm = Gemm { accum, ..Gemm::default() };
        gemm.run_grouped(MatMut::row_major(&mut out, 5, 5).unwrap(), &problems).unwrap();
        for i in 0..5 {
            // Product row i lands in output row i (Range) or 4 - i (the reversed index).
            let row = if index_out { 4 - i } else { i };
            let e = usize::from(i >= 2);
            for j in 0..5 {
                let before = if accum == Accum::Add { 9.0 } else { 0.0 };
                let want = before + case.scale[i] * case.bias[e * 5 + j].max(0.0);
                assert_eq!(out[row * 5 + j], want, "index_out={index_out} {accum:?} ({i}, {j})");
            }
        }
    }
}

#[test]
fn errors_name_the_problem() {
    let case = Case::new(&[2, 2], 4, 3, 4);
    let mut problems = case.problems(false, false, Activation::Identity);
    let mut out = vec![0.0f32; 16];
    problems[1].rows = OutRows::Range(1);
    let err = Gemm::default().run_grouped(MatMut::row_major(&mut out, 4, 4).unwrap(), &problems).unwrap_err();
    assert_eq!(err.to_string(), "grouped_gemm: output row 1 is written by problems 0 and 1");
    problems[1].rows = OutRows::Range(3);
    let err = Gemm::default().run_grouped(MatMut::row_major(&mut out, 4, 4).unwrap(), &problems).unwrap_err();
    assert!(
        err.to_string().contains("index 4 at position 1 is out of range for 4 rows (output row of problem 1)"),
        "{err}"
    );
    let problems = case.problems(false, false, Activation::Identity);
    let err = Gemm::default().run_grouped(MatMut::row_major(&mut out[..12], 4, 3).unwrap(), &problems).unwrap_err();
    assert_eq!(err.to_string(), "grouped_gemm: shape mismatch: problem 0: A is 2x3, B is 3x4, output has 3 columns");
}

#[test]
fn bit_identical_on_one_and_two_threads() {
    let case = Case::new(&[300, 0, 45, 129, 7], 400, 257, 130);
    let problems = case.problems(false, false, Activation::Silu);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut out = vec![0.0f32; 481 * 130];
        pool.install(|| {
            Gemm::default().run_grouped(MatMut::row_major(&mut out, 481, 130).unwrap(), &problems).unwrap()
        });
        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(2));
}

/// Problems whose B comes packed ([`PackedB`]) give the bits of packing per call, on every path,
/// gathered rows and gathered K, one and two threads; a packed B of the wrong shape is refused.
#[test]
fn packed_weights_give_the_bits_of_packing_per_call() {
    let case = Case::new(&[300, 0, 45, 129, 7, 1], 400, 257, 130);
    for isa in Isa::supported() {
        // The blocking of the machine (K = 257 in one slice) and a KC of 40 (seven slices, so the
        // items fetch ahead across K slices as well as panels and items).
        for bl in [Blocking::of(isa), Blocking::of(isa).with_kc(40).unwrap()] {
            for gather_k in [false, true] {
                let problems = case.problems(false, gather_k, Activation::Gelu);
                let packed: Vec<PackedB> = problems.iter().map(|p| PackedB::new(p.b, bl)).collect();
                let with_packed: Vec<GroupProblem<'_>> =
                    problems.iter().zip(&packed).map(|(p, pb)| GroupProblem { packed_b: Some(pb), ..*p }).collect();
                // `next`: what the last item fetches ahead (only prefetched, never read).
                let run_then = |problems: &[GroupProblem<'_>], threads: usize, next: &[f32]| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut out = vec![0.0f32; 482 * 130];
                    pool.install(|| {
                        Gemm { isa, blocking: Some(bl), ..Gemm::default() }
                            .run_grouped_then(MatMut::row_major(&mut out, 482, 130).unwrap(), problems, next)
                            .unwrap()
                    });
                    crate::testing::bits(&out)
                };
                let run = |problems: &[GroupProblem<'_>], threads: usize| run_then(problems, threads, &[]);
                let per_call = run(&problems, 2);
                assert_eq!(run(&with_packed, 1), per_call, "{isa} {bl} gather_k={gather_k}");
                assert_eq!(run(&with_packed, 2), per_call, "{isa} {bl} gather_k={gather_k}");
                let next = packed[3].first_panel();
                for threads in [1, 2] {
                    assert_eq!(run_then(&with_packed, threads, next), per_call, "{isa} {bl} then, {threads} threads");
                    assert_eq!(run_then(&problems, threads, next), per_call, "{isa} {bl} then, unpacked");
                }
                // The panels are read: the first expert's packed from the second's weights differs.
                let decoy = PackedB::new(problems[2].b, bl);
                let mut swapped = with_packed.clone();
                swapped[0].packed_b = Some(&decoy);
                assert_ne!(run(&swapped, 2), per_call, "{isa} {bl} gather_k={gather_k}");
            }
        }
    }
    let problems = case.problems(false, false, Activation::Identity);
    let wrong = PackedB::new(problems[0].b.t(), Blocking::of(Isa::active()));
    let mut bad = problems.clone();
    bad[2].packed_b = Some(&wrong);
    let mut out = vec![0.0f32; 482 * 130];
    let err = Gemm::default().run_grouped(MatMut::row_major(&mut out, 482, 130).unwrap(), &bad).unwrap_err();
    assert_eq!(err.to_string(), "grouped_gemm: shape mismatch: problem 2: packed B is 130x257, B is 257x130");
}

/// A packed matrix's first panel is B's first K slice, NR columns wide (zero-padded past the
/// last column), step by step.
#[test]
fn first_panel_is_the_first_k_slice_of_the_first_columns() {
    for isa in Isa::supported() {
        for (k, n, kc) in [(7, 5, 512), (257, 130, 512), (100, 33, 40)] {
            let bl = Blocking::of(isa).with_kc(kc).unwrap();
            let b = data(k * n, 9, -1.0, 1.0);
            let packed = PackedB::new(MatRef::row_major(&b, k, n).unwrap(), bl);
            let (depth, nr) = (bl.kc_for(k).min(k), bl.nr());
            let want: Vec<f32> = (0..depth)
                .flat_map(|p| (0..nr).map(move |j| (p, j)))
                .map(|(p, j)| if j < n { b[p * n + j] } else { 0.0 })
                .collect();
            assert_eq!(packed.first_panel(), &want[..], "{isa} {k}x{n} KC {kc}");
        }
    }
    let empty = PackedB::new(MatRef::row_major(&[], 0, 4).unwrap(), Blocking::of(Isa::active()));
    assert!(empty.first_panel().is_empty());
}

/// What a product over unpacked weights reads first: the rows of its first K slice when they
/// are one block of memory, else nothing.
#[test]
fn first_read_is_the_first_k_slice_of_a_row_major_b() {
    let b = data(100 * 33, 11, -1.0, 1.0);
    let view = MatRef::row_major(&b, 100, 33).unwrap();
    for kc in [512, 40] {
        let gemm = Gemm { blocking: Some(Blocking::of(Isa::active()).with_kc(kc).unwrap()), ..Gemm::default() };
        let rows = Blocking::of(Isa::active()).with_kc(kc).unwrap().kc_for(100).min(100);
        assert_eq!(gemm.first_read(view), &b[..rows * 33], "KC {kc}");
        // The transpose (33 × 100): all of its K in one slice is the whole buffer.
        assert_eq!(gemm.first_read(view.t()), &b[..], "KC {kc}: a transposed B");
        // The transpose of a 33 × 100 view (100 × 33): its first K slice is spread over the buffer.
        let wide = MatRef::row_major(&b, 33, 100).unwrap().t();
        let want: &[f32] = if rows == 100 { &b } else { &[] };
        assert_eq!(gemm.first_read(wide), want, "KC {kc}: a transposed B, K past one slice");
        assert!(gemm.first_read(view.gather_rows(&[3, 1]).unwrap()).is_empty(), "KC {kc}: gathered rows");
    }
}
