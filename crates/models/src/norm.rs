//! [`RmsNorm`] and [`LayerNorm`] over the last dim.

use crate::error::{Error, Result};
use crate::module::{Ctx, Module};
use elide_autodiff::{Param, Scope, Var};
use elide_tensor::Tensor;

fn check(op: &'static str, x: &Var, d: usize) -> Result<()> {
    match x.shape().last() {
        Some(&last) if last == d => Ok(()),
        _ => Err(Error::shape(op, format!("input must be [..., {d}], got {:?}", x.shape()))),
    }
}

fn check_eps(op: &'static str, d: usize, eps: f32) -> Result<()> {
    if d == 0 || !(eps.is_finite() && eps > 0.0) {
        return Err(Error::config(op, format!("needs d > 0 and a finite eps > 0, got d {d}, eps {eps}")));
    }
    Ok(())
}

/// `y = x / sqrt(mean(x²) + eps) ⊙ g` (Zhang & Sennrich, arXiv 1910.07467).
///
/// Parameter: `<scope>.weight` `[d]`, starting at 1.
pub struct RmsNorm {
    weight: Param,
    d: usize,
    eps: f32,
}

impl RmsNorm {
    /// Registers the gain under `scope`.
    ///
    /// # Errors
    /// [`Error::Config`] for `d = 0` or an `eps` that is not finite and positive.
    pub fn new(scope: &mut Scope<'_>, d: usize, eps: f32) -> Result<RmsNorm> {
        check_eps("RmsNorm::new", d, eps)?;
        Ok(RmsNorm { weight: scope.param("weight", Tensor::try_ones(&[d])?)?, d, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        check("RmsNorm", x, self.d)?;
        ctx.flops += 4.0 * x.value().numel() as f64;
        Ok(x.rms_norm(Some(&self.weight.var()), self.eps)?)
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight]
    }
}

/// `y = (x − mean) / sqrt(var + eps) ⊙ g + b` (Ba et al., arXiv 1607.06450).
///
/// Parameters: `<scope>.weight` `[d]` (starting at 1) and `<scope>.bias` `[d]` (at 0).
pub struct LayerNorm {
    weight: Param,
    bias: Param,
    d: usize,
    eps: f32,
}

impl LayerNorm {
    /// Registers the gain and bias under `scope`.
    ///
    /// # Errors
    /// [`Error::Config`] for `d = 0` or an `eps` that is not finite and positive.
    pub fn new(scope: &mut Scope<'_>, d: usize, eps: f32) -> Result<LayerNorm> {
        check_eps("LayerNorm::new", d, eps)?;
        Ok(LayerNorm {
            weight: scope.param("weight", Tensor::try_ones(&[d])?)?,
            bias: scope.param("bias", Tensor::try_zeros(&[d])?)?,
            d,
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        check("LayerNorm", x, self.d)?;
        ctx.flops += 6.0 * x.value().numel() as f64;
        Ok(x.layer_norm(Some(&self.weight.var()), Some(&self.bias.var()), self.eps)?)
    }

    fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad};
    use elide_autodiff::ParamStore;
    use elide_tensor::Rng;

    #[test]
    fn norms_match_the_naive_reference_on_any_leading_shape() {
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(1);
        let rms = RmsNorm::new(&mut store.scope("rms"), 7, 1e-5).unwrap();
        let ln = LayerNorm::new(&mut store.scope("ln"), 7, 1e-5).unwrap();
        for p in rms.params().into_iter().chain(ln.params()) {
            p.set(Tensor::randn(&[7], &mut rng)).unwrap();
        }
        let x = Tensor::randn(&[2, 3, 7], &mut rng);
        let (g, lg, lb) = (rms.weight.value().to_vec(), ln.weight.value().to_vec(), ln.bias.value().to_vec());
        let (mut want_rms, mut want_ln) = (Vec::new(), Vec::new());
        for row in x.to_vec().chunks(7) {
            let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let ms = row.iter().map(|v| v * v).sum::<f64>() / 7.0;
            want_rms.extend((0..7).map(|j| (row[j] / (ms + 1e-5).sqrt() * g[j] as f64) as f32));
            let mean = row.iter().sum::<f64>() / 7.0;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / 7.0;
            want_ln
                .extend((0..7).map(|j| ((row[j] - mean) / (var + 1e-5).sqrt() * lg[j] as f64 + lb[j] as f64) as f32));
        }
        let xv = Var::constant(x.clone());
        assert_close(&rms.forward(&xv, &mut Ctx::eval()).unwrap().value().to_vec(), &want_rms, "rms");
        assert_close(&ln.forward(&xv, &mut Ctx::eval()).unwrap().value().to_vec(), &want_ln, "ln");
        check_grad(|v| rms.forward(&v[0], &mut Ctx::eval()), std::slice::from_ref(&x));
        let err = ln.forward(&Var::constant(Tensor::zeros(&[2, 6])), &mut Ctx::eval()).err().unwrap();
        assert_eq!(err.to_string(), "LayerNorm: input must be [..., 7], got [2, 6]");
        assert!(RmsNorm::new(&mut store.scope("bad"), 7, 0.0).is_err());
    }
}
