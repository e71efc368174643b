//! Fuzzing the GEMM's public views: random buffer lengths, shapes, strides (including ones
//! whose products overflow) and index lists at `MatRef`/`MatMut` and `Gemm::run`. Nothing may
//! panic: every call returns a value or an error, and a product that runs matches the f64
//! reference. A few hundred cases run in CI; `fuzz_views_long` (ignored) runs 100,000:
//! `cargo test --release -p elide-kernels --test fuzz_views -- --ignored`.

use elide_kernels::gemm::reference::gemm_reference;
use elide_kernels::gemm::{Accum, Activation, Epilogue, Gemm, MatMut, MatRef};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// One operand's description: buffer length, shape, strides, optional gathered rows.
#[derive(Clone, Debug)]
struct ViewSpec {
    len: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
    index: Option<Vec<u32>>,
}

/// Sizes, mostly small, sometimes at the edge of `usize`.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..9, 1 => Just(usize::MAX), 1 => Just(usize::MAX / 2 + 1)]
}

fn view_spec() -> impl Strategy<Value = ViewSpec> {
    (0usize..80, size(), size(), size(), size(), proptest::option::of(proptest::collection::vec(0u32..12, 0..9)))
        .prop_map(|(len, rows, cols, row_stride, col_stride, index)| ViewSpec {
            len,
            rows,
            cols,
            row_stride,
            col_stride,
            index,
        })
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    (0..len).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 17) as f32 - 8.0).collect()
}

fn matref<'a>(data: &'a [f32], spec: &'a ViewSpec, row_major: bool) -> Option<MatRef<'a>> {
    let view = if row_major {
        MatRef::row_major(data, spec.rows, spec.cols)
    } else {
        MatRef::new(data, spec.rows, spec.cols, spec.row_stride, spec.col_stride)
    };
    let view = view.ok()?;
    match &spec.index {
        Some(index) => view.gather_rows(index).ok(),
        None => Some(view),
    }
}

fn check(
    a: ViewSpec,
    mut b: ViewSpec,
    mut c: ViewSpec,
    fit: bool,
    row_major: bool,
    accum: Accum,
) -> Result<(), TestCaseError> {
    if fit {
        // Make the shapes chain, so the product runs and is compared with the reference.
        (b.rows, b.cols) = (a.cols, c.cols);
        b.index = None;
        if c.index.is_none() {
            c.rows = a.index.as_ref().map_or(a.rows, Vec::len);
        }
    }
    let (da, db) = (values(a.len, 1), values(b.len, 2));
    let (Some(va), Some(vb)) = (matref(&da, &a, row_major), matref(&db, &b, false)) else { return Ok(()) };
    let mut got = values(c.len, 3);
    let mut want = got.clone();
    let make = |data: &mut [f32]| -> Option<()> {
        let out = MatMut::new(data, c.rows, c.cols, c.row_stride, c.col_stride).ok()?;
        let out = match &c.index {
            Some(index) => out.scatter_rows(index).ok()?,
            None => out,
        };
        // The reference panics on shapes that do not chain; only run it where the GEMM will.
        let chains = va.rows() == out.rows() && va.cols() == vb.rows() && vb.cols() == out.cols();
        // Zero strides make views of any size valid: a product of usize::MAX multiply-adds is
        // legitimate input, but not one a test can wait for.
        let work = va.rows().saturating_mul(va.cols()).saturating_mul(vb.cols());
        if chains && work > 1 << 16 {
            return None;
        }
        let gemm = Gemm { accum, ..Gemm::default() };
        let result = gemm.run(out, va, vb);
        prop_assert_eq_opt(result.is_ok(), chains)
    };
    if make(&mut got).is_none() {
        return Ok(());
    }
    // The reference loops over every element: only for products small enough to loop over
    // (an empty view may have usize::MAX rows).
    let small = va.rows() <= 64 && vb.rows() <= 64 && vb.cols() <= 64;
    if small && va.rows() == c.index.as_ref().map_or(c.rows, Vec::len) && va.cols() == vb.rows() && vb.cols() == c.cols
    {
        let mut out = MatMut::new(&mut want, c.rows, c.cols, c.row_stride, c.col_stride).unwrap();
        if let Some(index) = &c.index {
            out = out.scatter_rows(index).unwrap();
        }
        gemm_reference(
            &mut out,
            accum,
            &va,
            &vb,
            1.0,
            &Epilogue { activation: Activation::Identity, ..Default::default() },
        );
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "element {i}: {g} vs {w}");
        }
    }
    Ok(())
}

/// `Some(())` when the GEMM's verdict matches whether the shapes chain (an `Option` so the
/// closure above can bail out early with `?`).
fn prop_assert_eq_opt(ran: bool, chains: bool) -> Option<()> {
    assert_eq!(ran, chains, "Gemm::run must succeed exactly when the shapes chain");
    Some(())
}

fn accum() -> impl Strategy<Value = Accum> {
    prop_oneof![Just(Accum::Replace), Just(Accum::Add)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn fuzz_views(a in view_spec(), b in view_spec(), c in view_spec(), fit in any::<bool>(), row_major in any::<bool>(), acc in accum()) {
        check(a, b, c, fit, row_major, acc)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100_000))]
    #[test]
    #[ignore = "long fuzzing run; see README.md"]
    fn fuzz_views_long(a in view_spec(), b in view_spec(), c in view_spec(), fit in any::<bool>(), row_major in any::<bool>(), acc in accum()) {
        check(a, b, c, fit, row_major, acc)?;
    }
}
