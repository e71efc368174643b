//! Softmax, log-softmax, fused cross-entropy and the norms, over the last dim.

use crate::error::{Error, Result};
use crate::var::Var;
use elide_tensor::{IndexTensor, Tensor};

/// `Σ_last(a ⊙ b)`, keeping the dim.
fn row_dot(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.mul(b)?.sum(a.rank() - 1, true)?)
}

/// Sums `t` over every dim but the last: `[.., d] → [d]`.
fn sum_rows(t: &Tensor) -> Result<Tensor> {
    let d = *t.shape().last().unwrap_or(&1);
    Ok(t.reshape(&[t.numel() / d.max(1), d])?.sum(0, false)?)
}

impl Var {
    /// Softmax over the last dim. Backward: `dx = y ⊙ (g − Σ g⊙y)`.
    pub fn softmax(&self) -> Result<Var> {
        Ok(self.softmax_of(self.value.softmax()?))
    }

    /// Softmax over the last dim, as [`Var::softmax`], and the top `k` of each of its rows
    /// (values, largest first, and positions; constants), from one pass over the input
    /// ([`Tensor::softmax_topk`]): a token-choice router's probabilities and choice.
    ///
    /// # Errors
    /// As [`Tensor::softmax_topk`]: a 0-dimensional tensor, `k` not in `1..=cols`, or a NaN or
    /// infinity in a row.
    pub fn softmax_topk(&self, k: usize) -> Result<(Var, Tensor, IndexTensor)> {
        let (probs, values, positions) = self.value.softmax_topk(k)?;
        Ok((self.softmax_of(probs), values, positions))
    }

    /// The softmax op over `self` given its value `y`.
    fn softmax_of(&self, y: Tensor) -> Var {
        let saved = y.clone();
        Var::from_op("softmax", y, &[self], move |g| Ok(vec![Some(saved.mul(&g.sub(&row_dot(g, &saved)?)?)?)]))
    }

    /// Log-softmax over the last dim. Backward: `dx = g − softmax ⊙ Σ g`.
    pub fn log_softmax(&self) -> Result<Var> {
        let y = self.value.log_softmax()?;
        let saved = y.clone();
        Ok(Var::from_op("log_softmax", y, &[self], move |g| {
            let sum = g.sum(g.rank() - 1, true)?;
            Ok(vec![Some(g.sub(&saved.exp().mul(&sum)?)?)])
        }))
    }

    /// Mean cross-entropy of `[n, classes]` logits against integer `targets` (length `n`),
    /// fused and numerically stable: `−mean_i log softmax(x_i)[t_i]`. Backward:
    /// `(softmax(x) − onehot(t)) / n`.
    ///
    /// # Errors
    /// If the logits are not 2-D, `targets.len() != n`, a target is `>= classes`, or `n == 0`.
    pub fn cross_entropy(&self, targets: &[u32]) -> Result<Var> {
        const OP: &str = "cross_entropy";
        let shape = self.shape();
        let bad = |detail: String| Error::Tensor(elide_tensor::Error::Argument { op: OP, detail });
        if shape.len() != 2 || shape[0] == 0 {
            return Err(bad(format!("logits must be [n, classes] with n > 0, got {shape:?}")));
        }
        let (n, c) = (shape[0], shape[1]);
        if targets.len() != n {
            return Err(bad(format!("{} targets for logits of shape {shape:?}", targets.len())));
        }
        if let Some(pos) = targets.iter().position(|&t| t as usize >= c) {
            return Err(bad(format!("target {} at position {pos} is out of range for {c} classes", targets[pos])));
        }
        let logp = self.value.log_softmax()?;
        let lp = logp.to_vec();
        let loss = -targets.iter().enumerate().map(|(i, &t)| lp[i * c + t as usize] as f64).sum::<f64>() / n as f64;
        let targets: Vec<u32> = targets.to_vec();
        Ok(Var::from_op("cross_entropy", Tensor::scalar(loss as f32), &[self], move |g| {
            let scale = g.item()? / n as f32;
            let mut grad: Vec<f32> = logp.exp().to_vec();
            for (i, &t) in targets.iter().enumerate() {
                grad[i * c + t as usize] -= 1.0;
            }
            grad.iter_mut().for_each(|v| *v *= scale);
            Ok(vec![Some(Tensor::from_vec(grad, &[n, c])?)])
        }))
    }

    /// RMSNorm over the last dim: `y = x / √(mean(x²) + eps) ⊙ w` (arXiv 1910.07467).
    ///
    /// Backward, with `x̂ = x·r`, `r = 1/√(mean(x²)+eps)` and `ĝ = g ⊙ w`:
    /// `dx = r·(ĝ − x̂·mean(ĝ⊙x̂))`, `dw = Σ_rows g⊙x̂`.
    pub fn rms_norm(&self, weight: Option<&Var>, eps: f32) -> Result<Var> {
        let y = self.value.rms_norm(weight.map(|w| &w.value), eps)?;
        if !Var::records(&[self]) && weight.is_none_or(|w| !Var::records(&[w])) {
            return Ok(Var::constant(y));
        }
        let x = self.value.clone();
        let d = *x.shape().last().unwrap_or(&1) as f32;
        let r = x.square().sum(x.rank() - 1, true)?.mul_scalar(1.0 / d).add_scalar(eps).sqrt().recip();
        let xhat = x.mul(&r)?;
        let w = weight.map(|w| w.value.clone());
        let mut parents: Vec<&Var> = vec![self];
        parents.extend(weight);
        Ok(Var::from_op("rms_norm", y, &parents, move |g| {
            let gh = match &w {
                Some(w) => g.mul(w)?,
                None => g.clone(),
            };
            let proj = row_dot(&gh, &xhat)?.mul_scalar(1.0 / d);
            let dx = r.mul(&gh.sub(&xhat.mul(&proj)?)?)?;
            let mut grads = vec![Some(dx)];
            if w.is_some() {
                grads.push(Some(sum_rows(&g.mul(&xhat)?)?));
            }
            Ok(grads)
        }))
    }

    /// LayerNorm over the last dim: `y = (x − μ)/√(σ² + eps) ⊙ w + b` (arXiv 1607.06450).
    ///
    /// Backward, with `x̂` the normalised input and `ĝ = g ⊙ w`:
    /// `dx = r·(ĝ − mean(ĝ) − x̂·mean(ĝ⊙x̂))`, `dw = Σ_rows g⊙x̂`, `db = Σ_rows g`.
    pub fn layer_norm(&self, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Result<Var> {
        let y = self.value.layer_norm(weight.map(|w| &w.value), bias.map(|b| &b.value), eps)?;
        let mut parents: Vec<&Var> = vec![self];
        parents.extend(weight);
        parents.extend(bias);
        if !Var::records(&parents) {
            return Ok(Var::constant(y));
        }
        let x = self.value.clone();
        let last = x.rank() - 1;
        let d = *x.shape().last().unwrap_or(&1) as f32;
        let centered = x.sub(&x.mean(last, true)?)?;
        let r = centered.square().sum(last, true)?.mul_scalar(1.0 / d).add_scalar(eps).sqrt().recip();
        let xhat = centered.mul(&r)?;
        let w = weight.map(|w| w.value.clone());
        let has_bias = bias.is_some();
        Ok(Var::from_op("layer_norm", y, &parents, move |g| {
            let gh = match &w {
                Some(w) => g.mul(w)?,
                None => g.clone(),
            };
            let mean_g = gh.sum(last, true)?.mul_scalar(1.0 / d);
            let proj = row_dot(&gh, &xhat)?.mul_scalar(1.0 / d);
            let dx = r.mul(&gh.sub(&mean_g)?.sub(&xhat.mul(&proj)?)?)?;
            let mut grads = vec![Some(dx)];
            if w.is_some() {
                grads.push(Some(sum_rows(&g.mul(&xhat)?)?));
            }
            if has_bias {
                grads.push(Some(sum_rows(g)?));
            }
            Ok(grads)
        }))
    }
}
