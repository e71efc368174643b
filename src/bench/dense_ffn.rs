//! The dense twin every mixture-of-experts figure is measured against: a GELU feed-forward
//! layer `gelu(x·W1 + b1)·W2 + b2`, forward and backward, written directly on the same GEMM
//! (bias and GELU fused into the store at inference), so the comparison is kernel against
//! kernel with no routing machinery on the dense side. Buffers come from and go back to
//! elide's buffer pool (`elide_tensor::pool`), as the MoE layer's tensors do, and inference
//! reads weights packed once (`PackedB`), as the MoE layer's experts do; a training step packs
//! them per call, as the MoE layer does while recording.

use elide::kernels::gemm::{Activation, Blocking, Epilogue, Gemm, MatMut, MatRef, PackedB};
use elide::kernels::{activation_backward, unary, Isa, UnaryOp};
use elide::tensor::pool;

/// A dense FFN of width `d` and hidden size `h`, weights `[in, out]`.
pub struct DenseFfn {
    d: usize,
    h: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    /// `w1` and `w2` packed for the GEMM, for inference.
    packed: (PackedB, PackedB),
}

fn mat(data: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
    MatRef::row_major(data, rows, cols).expect("bench shapes are consistent")
}

fn out(data: &mut [f32], rows: usize, cols: usize) -> MatMut<'_> {
    MatMut::row_major(data, rows, cols).expect("bench shapes are consistent")
}

/// `C = A·B` (+ epilogue) with default settings.
fn gemm(c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, epilogue: Epilogue<'_>) {
    Gemm { epilogue, ..Gemm::default() }.run(c, a, b).expect("bench shapes are consistent");
}

/// Column sums of a `[rows, cols]` matrix (a bias gradient).
fn column_sums(m: &[f32], cols: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; cols];
    for row in m.chunks(cols) {
        s.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
    }
    s
}

impl DenseFfn {
    /// Weights from `fill(len, seed)`.
    pub fn new(d: usize, h: usize, fill: impl Fn(usize, u64) -> Vec<f32>) -> DenseFfn {
        let scale = |v: Vec<f32>, s: f32| v.into_iter().map(|x| x * s).collect::<Vec<f32>>();
        let w1 = scale(fill(d * h, 11), (1.0 / d as f32).sqrt());
        let w2 = scale(fill(h * d, 12), (1.0 / h as f32).sqrt());
        let blocking = Blocking::of(Isa::active());
        let packed = (PackedB::new(mat(&w1, d, h), blocking), PackedB::new(mat(&w2, h, d), blocking));
        DenseFfn { d, h, w1, b1: vec![0.0; h], w2, b2: vec![0.0; d], packed }
    }

    /// Multiply-adds ×2 of a forward pass over `t` rows.
    pub fn forward_flops(&self, t: usize) -> f64 {
        4.0 * (t * self.d * self.h) as f64
    }

    /// Inference: bias and GELU fused into the first GEMM's store, weights packed once.
    pub fn forward(&self, x: &[f32], t: usize) -> Vec<f32> {
        let (d, h) = (self.d, self.h);
        let run = |c: MatMut<'_>, a: MatRef<'_>, b: MatRef<'_>, packed: &PackedB, epilogue: Epilogue<'_>| {
            Gemm { epilogue, ..Gemm::default() }.run_packed(c, a, b, packed).expect("bench shapes are consistent")
        };
        let mut hidden = pool::take(t * h);
        let epi = Epilogue { bias: Some(&self.b1), activation: Activation::Gelu, row_scale: None };
        run(out(&mut hidden, t, h), mat(x, t, d), mat(&self.w1, d, h), &self.packed.0, epi);
        let mut y = pool::take(t * d);
        let epi = Epilogue { bias: Some(&self.b2), ..Epilogue::default() };
        run(out(&mut y, t, d), mat(&hidden, t, h), mat(&self.w2, h, d), &self.packed.1, epi);
        pool::give(hidden);
        y
    }

    /// A training step's forward: as [`DenseFfn::forward`], with the weights packed per call
    /// (they change every step).
    pub fn forward_packing(&self, x: &[f32], t: usize) -> Vec<f32> {
        let (d, h) = (self.d, self.h);
        let mut hidden = pool::take(t * h);
        let epi = Epilogue { bias: Some(&self.b1), activation: Activation::Gelu, row_scale: None };
        gemm(out(&mut hidden, t, h), mat(x, t, d), mat(&self.w1, d, h), epi);
        let mut y = pool::take(t * d);
        let epi = Epilogue { bias: Some(&self.b2), ..Epilogue::default() };
        gemm(out(&mut y, t, d), mat(&hidden, t, h), mat(&self.w2, h, d), epi);
        pool::give(hidden);
        y
    }

    /// Training step: forward keeping `Z` and `H`, then every gradient for `dy`. Returns `dx`
    /// (the other gradients are computed and given back to the pool, as an optimizer would
    /// consume them).
    pub fn forward_backward(&self, x: &[f32], t: usize, dy: &[f32]) -> Vec<f32> {
        let (d, h) = (self.d, self.h);
        let isa = Isa::active();
        let mut z = pool::take(t * h);
        gemm(
            out(&mut z, t, h),
            mat(x, t, d),
            mat(&self.w1, d, h),
            Epilogue { bias: Some(&self.b1), ..Epilogue::default() },
        );
        let mut hidden = pool::take(t * h);
        unary(isa, UnaryOp::Gelu, &z, &mut hidden).expect("lengths match");
        let mut y = pool::take(t * d);
        gemm(
            out(&mut y, t, d),
            mat(&hidden, t, h),
            mat(&self.w2, h, d),
            Epilogue { bias: Some(&self.b2), ..Epilogue::default() },
        );
        std::hint::black_box(&y);
        // Backward: dW2 = Hᵀ·dY, db2, dH = dY·W2ᵀ, dZ = dH ⊙ gelu'(Z), dW1 = Xᵀ·dZ, db1, dX = dZ·W1ᵀ.
        let mut dw2 = pool::take(h * d);
        gemm(out(&mut dw2, h, d), mat(&hidden, t, h).t(), mat(dy, t, d), Epilogue::default());
        let db2 = column_sums(dy, d);
        let mut dh = pool::take(t * h);
        gemm(out(&mut dh, t, h), mat(dy, t, d), mat(&self.w2, h, d).t(), Epilogue::default());
        let mut dz = pool::take(t * h);
        activation_backward(isa, Activation::Gelu, &z, &dh, &mut dz).expect("lengths match");
        let mut dw1 = pool::take(d * h);
        gemm(out(&mut dw1, d, h), mat(x, t, d).t(), mat(&dz, t, h), Epilogue::default());
        let db1 = column_sums(&dz, h);
        let mut dx = pool::take(t * d);
        gemm(out(&mut dx, t, d), mat(&dz, t, h), mat(&self.w1, d, h).t(), Epilogue::default());
        std::hint::black_box((&dw1, &db1, &dw2, &db2));
        for buffer in [z, hidden, y, dw2, dh, dz, dw1] {
            pool::give(buffer);
        }
        dx
    }
}
