//! Elementwise maps and their derivatives, written with the vectorised tensor ops.

use crate::error::Result;
use crate::var::Var;
use elide_tensor::Tensor;

/// `√(2/π)` and the cubic coefficient of the GELU tanh form.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// `g ⊙ 1[x > 0]`.
fn relu_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let xs = x.to_vec();
    let gs = g.to_vec();
    let out: Vec<f32> = xs.iter().zip(&gs).map(|(&x, &g)| if x > 0.0 { g } else { 0.0 }).collect();
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
        self.unary("relu", self.value.relu(), move |g| relu_grad(&x, g))
    }

    /// GELU, tanh form (arXiv 1606.08415).
    pub fn gelu(&self) -> Var {
        let x = self.value.clone();
        self.unary("gelu", self.value.gelu(), move |g| {
            // u = c(x + a x³), t = tanh u;  d/dx = ½(1 + t) + ½x(1 − t²)·c(1 + 3a x²).
            let x2 = x.square();
            let u = x.mul(&x2.mul_scalar(GELU_A).add_scalar(1.0))?.mul_scalar(GELU_C);
            let t = u.tanh();
            let du = x2.mul_scalar(3.0 * GELU_A).add_scalar(1.0).mul_scalar(GELU_C);
            let left = t.add_scalar(1.0).mul_scalar(0.5);
            let right = x.mul(&t.square().neg().add_scalar(1.0))?.mul(&du)?.mul_scalar(0.5);
            Ok(g.mul(&left.add(&right)?)?)
        })
    }

    /// SiLU `x·σ(x)` (arXiv 1702.03118).
    pub fn silu(&self) -> Var {
        let x = self.value.clone();
        self.unary("silu", self.value.silu(), move |g| {
            // d/dx = σ(x)(1 + x(1 − σ(x))).
            let s = x.sigmoid();
            let d = s.mul(&x.mul(&s.neg().add_scalar(1.0))?.add_scalar(1.0))?;
            Ok(g.mul(&d)?)
        })
    }
}
