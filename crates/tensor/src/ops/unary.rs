//! Elementwise unary ops, on the vectorised kernel `elementwise::unary`.

use elide_kernels::elementwise::{unary, UnaryOp};
use elide_kernels::Isa;

use crate::layout::map_runs;
use crate::tensor::Tensor;

impl Tensor {
    /// `op(self)` elementwise, into a new contiguous tensor. A contiguous input is one kernel
    /// call; a strided one is walked in runs, each copied into a buffer first, so every element
    /// takes the same arithmetic whatever the layout.
    ///
    /// # Panics
    /// When the result cannot be allocated: only for a broadcast view whose shape holds far more
    /// elements than its storage (a tensor that owns its elements always fits again).
    pub fn map(&self, op: UnaryOp) -> Tensor {
        let isa = Isa::active();
        let result = map_runs("map", &self.shape, &[self], |x, out| {
            if x[0].len() == out.len() {
                Ok(unary(isa, op, x[0], out)?)
            } else {
                // A broadcast run: one value, computed once.
                let mut v = [0.0];
                unary(isa, op, x[0], &mut v)?;
                out.fill(v[0]);
                Ok(())
            }
        });
        // Runs always match their output (or are one value), which the kernel accepts; the one
        // failure left is an output this tensor's shape cannot allocate (a broadcast view of a
        // huge shape), documented under # Panics.
        result.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `-x`.
    pub fn neg(&self) -> Tensor {
        self.map(UnaryOp::Neg)
    }

    /// `|x|`.
    pub fn abs(&self) -> Tensor {
        self.map(UnaryOp::Abs)
    }

    /// `e^x` (0 below about -87.3, inf above about 88.7).
    pub fn exp(&self) -> Tensor {
        self.map(UnaryOp::Exp)
    }

    /// Natural logarithm (NaN for negative inputs, -inf at 0).
    pub fn log(&self) -> Tensor {
        self.map(UnaryOp::Log)
    }

    /// Square root (NaN for negative inputs).
    pub fn sqrt(&self) -> Tensor {
        self.map(UnaryOp::Sqrt)
    }

    /// `1 / x`.
    pub fn recip(&self) -> Tensor {
        self.map(UnaryOp::Recip)
    }

    /// `x²`.
    pub fn square(&self) -> Tensor {
        self.map(UnaryOp::Square)
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Tensor {
        self.map(UnaryOp::Tanh)
    }

    /// Logistic sigmoid `1 / (1 + e^-x)`.
    pub fn sigmoid(&self) -> Tensor {
        self.map(UnaryOp::Sigmoid)
    }

    /// `max(x, 0)` (NaN stays NaN).
    pub fn relu(&self) -> Tensor {
        self.map(UnaryOp::Relu)
    }

    /// GELU, tanh form: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (arXiv 1606.08415).
    pub fn gelu(&self) -> Tensor {
        self.map(UnaryOp::Gelu)
    }

    /// GELU, exact erf form: `0.5·x·(1 + erf(x/√2))` (arXiv 1606.08415; PyTorch's default).
    pub fn gelu_erf(&self) -> Tensor {
        self.map(UnaryOp::GeluErf)
    }

    /// SiLU / swish: `x·σ(x)` (arXiv 1702.03118).
    pub fn silu(&self) -> Tensor {
        self.map(UnaryOp::Silu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random};

    #[test]
    fn every_op_matches_the_reference_on_contiguous_strided_and_broadcast_inputs() {
        type Method = fn(&Tensor) -> Tensor;
        let ops: [(Method, UnaryOp); 13] = [
            (Tensor::neg, UnaryOp::Neg),
            (Tensor::abs, UnaryOp::Abs),
            (Tensor::exp, UnaryOp::Exp),
            (Tensor::log, UnaryOp::Log),
            (Tensor::sqrt, UnaryOp::Sqrt),
            (Tensor::recip, UnaryOp::Recip),
            (Tensor::square, UnaryOp::Square),
            (Tensor::tanh, UnaryOp::Tanh),
            (Tensor::sigmoid, UnaryOp::Sigmoid),
            (Tensor::relu, UnaryOp::Relu),
            (Tensor::gelu, UnaryOp::Gelu),
            (Tensor::gelu_erf, UnaryOp::GeluErf),
            (Tensor::silu, UnaryOp::Silu),
        ];
        let x = random(&[4, 7], 1).mul_scalar(3.0);
        let positive = x.abs().add_scalar(0.1);
        let inputs = [
            x.clone(),
            x.t().unwrap(),
            x.narrow(1, 2, 3).unwrap(),
            random(&[3, 1], 2).broadcast_to(&[2, 3, 5]).unwrap(),
        ];
        for (f, op) in ops {
            for input in inputs.iter().chain([&positive]) {
                let input = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt) { &positive } else { input };
                let want: Vec<f32> = input.to_vec().iter().map(|&v| op.reference(v as f64) as f32).collect();
                let got = f(input);
                assert_eq!(got.shape(), input.shape());
                assert_close(&got.to_vec(), &want, 1e-5);
                // The same bits whatever the layout.
                assert_eq!(got.to_vec(), f(&input.contiguous()).to_vec(), "{op:?}");
            }
        }
    }
}
