//! Elementwise maps and their derivatives: the smooth ones written with the vectorised tensor
//! ops, the activations through one fused derivative kernel.

use crate::error::Result;
use crate::var::Var;
use elide_kernels::gemm::Activation;
use elide_kernels::{activation_backward, Isa};
use elide_tensor::Tensor;

/// `g ⊙ act'(x)` through the vectorised activation-derivative kernel.
fn activation_grad(act: Activation, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let (x, g) = (x.contiguous(), g.contiguous());
    let mut out = vec![0.0f32; x.numel()];
    let (xs, gs) = (x.as_slice().expect("contiguous"), g.as_slice().expect("contiguous"));
    activation_backward(Isa::try_active().map_err(elide_tensor::Error::from)?, act, xs, gs, &mut out)
        .map_err(elide_tensor::Error::from)?;
    Ok(Tensor::from_vec(out, x.shape())?)
}

impl Var {
    fn unary(
        &self,
        name: &'static str,
        value: Tensor,
        grad: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Var {
        Var::from_op(name, value, &[self], move |g| Ok(vec![Some(grad(g)?)]))
    }

    /// `e^x`.
    pub fn exp(&self) -> Var {
        let y = self.value.exp();
        let saved = y.clone();
        self.unary("exp", y, move |g| Ok(g.mul(&saved)?))
    }

    /// Natural log.
    pub fn log(&self) -> Var {
        let x = self.value.clone();
        self.unary("log", self.value.log(), move |g| Ok(g.div(&x)?))
    }

    /// Square root.
    pub fn sqrt(&self) -> Var {
        let y = self.value.sqrt();
        let saved = y.clone();
        self.unary("sqrt", y, move |g| Ok(g.div(&saved)?.mul_scalar(0.5)))
    }

    /// `1/x`.
    pub fn recip(&self) -> Var {
        let y = self.value.recip();
        let saved = y.clone();
        self.unary("recip", y, move |g| Ok(g.mul(&saved.square())?.neg()))
    }

    /// `x²`.
    pub fn square(&self) -> Var {
        let x = self.value.clone();
        self.unary("square", self.value.square(), move |g| Ok(g.mul(&x)?.mul_scalar(2.0)))
    }

    /// `tanh(x)`.
    pub fn tanh(&self) -> Var {
        let y = self.value.tanh();
        let saved = y.clone();
        self.unary("tanh", y, move |g| Ok(g.mul(&saved.square().neg().add_scalar(1.0))?))
    }

    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Var {
        let y = self.value.sigmoid();
        let saved = y.clone();
        self.unary("sigmoid", y, move |g| Ok(g.mul(&saved.mul(&saved.neg().add_scalar(1.0))?)?))
    }

    /// `max(x, 0)`; the gradient at 0 is 0 (as PyTorch).
    pub fn relu(&self) -> Var {
        let x = self.value.clone();
        self.unary("relu", self.value.relu(), move |g| activation_grad(Activation::Relu, &x, g))
    }

    /// GELU, tanh form (arXiv 1606.08415).
    pub fn gelu(&self) -> Var {
        let x = self.value.clone();
        self.unary("gelu", self.value.gelu(), move |g| activation_grad(Activation::Gelu, &x, g))
    }

    /// GELU, exact erf form `x·Φ(x)` (arXiv 1606.08415; PyTorch's default); its derivative is
    /// `Φ(x) + x·φ(x)`.
    pub fn gelu_erf(&self) -> Var {
        let x = self.value.clone();
        self.unary("gelu_erf", self.value.gelu_erf(), move |g| activation_grad(Activation::GeluErf, &x, g))
    }

    /// SiLU `x·σ(x)` (arXiv 1702.03118).
    pub fn silu(&self) -> Var {
        let x = self.value.clone();
        self.unary("silu", self.value.silu(), move |g| activation_grad(Activation::Silu, &x, g))
    }
}
