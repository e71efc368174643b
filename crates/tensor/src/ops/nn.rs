//! Row-wise neural-network ops over the last dimension: softmax, log-softmax, RMSNorm,
//! LayerNorm. The input is made contiguous (a copy only if it is not) and seen as
//! `[rows, cols]` with `cols` the last dim, the layout of the row kernels.

use elide_kernels::norm::{layer_norm_rows, rms_norm_rows};
use elide_kernels::softmax::{log_softmax_rows, softmax_rows};
use elide_kernels::Isa;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// `(rows, cols)` of the tensor seen as a matrix whose rows run along the last dim.
    pub(crate) fn rows_cols(&self, op: &'static str) -> Result<(usize, usize)> {
        let Some(&cols) = self.shape.last() else {
            return Err(Error::argument(op, "needs at least 1 dim, got a 0-dimensional tensor"));
        };
        Ok((self.shape[..self.rank() - 1].iter().product(), cols))
    }

    /// Applies a row kernel to the contiguous input, into a new tensor of the same shape.
    fn map_rows(
        &self,
        op: &'static str,
        f: impl FnOnce(&[f32], usize, usize, &mut [f32]) -> elide_kernels::Result<()>,
    ) -> Result<Tensor> {
        let (rows, cols) = self.rows_cols(op)?;
        let mut out = crate::pool::take(rows * cols);
        if !out.is_empty() {
            let x = self.contiguous();
            f(x.as_slice().unwrap_or_default(), rows, cols, &mut out)?;
        }
        Ok(Tensor::from_contiguous(out, self.shape.clone()))
    }

    /// Softmax along the last dim: `exp(x_i - max) / Σ_j exp(x_j - max)`.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let p = Tensor::from_vec(vec![0.0, 0.0, 1.0, 1.0], &[2, 2])?.softmax()?;
    /// assert_eq!(p.to_vec(), vec![0.5, 0.5, 0.5, 0.5]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Argument`] for a 0-dimensional tensor.
    pub fn softmax(&self) -> Result<Tensor> {
        self.map_rows("softmax", |x, rows, cols, out| softmax_rows(Isa::try_active()?, x, rows, cols, out))
    }

    /// Log-softmax along the last dim: `x_i - max - ln Σ_j exp(x_j - max)`. Errors as
    /// [`Tensor::softmax`].
    pub fn log_softmax(&self) -> Result<Tensor> {
        self.map_rows("log_softmax", |x, rows, cols, out| log_softmax_rows(Isa::try_active()?, x, rows, cols, out))
    }

    /// RMSNorm over the last dim (arXiv 1910.07467): `x / sqrt(mean(x²) + eps) · weight`.
    /// `weight`, if given, has shape `[cols]`.
    ///
    /// # Errors
    /// [`Error::Argument`] for a 0-dimensional tensor or a negative or non-finite `eps`,
    /// [`Error::Shape`] for a weight of the wrong shape.
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        const OP: &str = "rms_norm";
        check_eps(OP, eps)?;
        let weight = self.row_param(OP, "weight", weight)?;
        self.map_rows(OP, |x, rows, cols, out| {
            rms_norm_rows(Isa::try_active()?, x, rows, cols, weight.as_ref().and_then(Tensor::as_slice), eps, out)
        })
    }

    /// LayerNorm over the last dim (arXiv 1607.06450):
    /// `(x - mean) / sqrt(var + eps) · weight + bias`, with the biased variance. `weight` and
    /// `bias`, if given, have shape `[cols]`.
    ///
    /// # Errors
    /// [`Error::Argument`] for a 0-dimensional tensor or a negative or non-finite `eps`,
    /// [`Error::Shape`] for a weight or bias of the wrong shape.
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        check_eps(OP, eps)?;
        let weight = self.row_param(OP, "weight", weight)?;
        let bias = self.row_param(OP, "bias", bias)?;
        self.map_rows(OP, |x, rows, cols, out| {
            let (w, b) = (weight.as_ref().and_then(Tensor::as_slice), bias.as_ref().and_then(Tensor::as_slice));
            layer_norm_rows(Isa::try_active()?, x, rows, cols, w, b, eps, out)
        })
    }

    /// Checks a per-column parameter has shape `[cols]`, and makes it contiguous.
    fn row_param(&self, op: &'static str, what: &str, p: Option<&Tensor>) -> Result<Option<Tensor>> {
        let (_, cols) = self.rows_cols(op)?;
        match p {
            None => Ok(None),
            Some(p) if p.shape == [cols] => Ok(Some(p.contiguous())),
            Some(p) => Err(Error::shape(
                op,
                format!("{what} has shape {:?}, expected [{cols}] (the last dim of {:?})", p.shape, self.shape),
            )),
        }
    }
}

/// Checks a norm's `eps` is finite and not negative.
fn check_eps(op: &'static str, eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::argument(op, format!("eps must be finite and >= 0, got {eps}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random};

    /// Applies `f` to each last-dim row of `x` in f64.
    fn per_row(x: &Tensor, f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f32> {
        let cols = *x.shape().last().unwrap();
        let v: Vec<f64> = x.to_vec().iter().map(|&v| v as f64).collect();
        v.chunks(cols).flat_map(f).map(|v| v as f32).collect()
    }

    fn inputs() -> Vec<Tensor> {
        vec![
            random(&[3, 5], 1).mul_scalar(4.0),
            random(&[4, 2, 3], 2).permute(&[1, 2, 0]).unwrap(),
            random(&[2, 37], 3).narrow(1, 1, 33).unwrap(),
            random(&[7], 4),
        ]
    }

    #[test]
    fn softmax_and_log_softmax_match_the_reference() {
        let softmax = |r: &[f64]| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
            r.iter().map(|v| (v - m).exp() / s).collect::<Vec<_>>()
        };
        for x in inputs() {
            let p = x.softmax().unwrap();
            assert_eq!(p.shape(), x.shape());
            assert_close(&p.to_vec(), &per_row(&x, softmax), 1e-5);
            let log: Vec<f32> = per_row(&x, |r| softmax(r).iter().map(|v| v.ln()).collect());
            assert_close(&x.log_softmax().unwrap().to_vec(), &log, 1e-5);
        }
    }

    #[test]
    fn norms_match_the_reference() {
        for x in inputs() {
            let cols = *x.shape().last().unwrap();
            let w = random(&[cols], 10);
            let b = random(&[cols * 2], 11).narrow(0, cols, cols).unwrap();
            let (wv, bv) = (w.to_vec(), b.to_vec());
            let eps = 1e-5;
            for weight in [None, Some(&w)] {
                let want = per_row(&x, |r| {
                    let ms = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
                    let inv = 1.0 / (ms + eps as f64).sqrt();
                    r.iter().enumerate().map(|(j, v)| v * inv * weight.map_or(1.0, |_| wv[j] as f64)).collect()
                });
                assert_close(&x.rms_norm(weight, eps).unwrap().to_vec(), &want, 1e-4);
                for bias in [None, Some(&b)] {
                    let want = per_row(&x, |r| {
                        let n = r.len() as f64;
                        let mean = r.iter().sum::<f64>() / n;
                        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                        let inv = 1.0 / (var + eps as f64).sqrt();
                        r.iter()
                            .enumerate()
                            .map(|(j, v)| {
                                (v - mean) * inv * weight.map_or(1.0, |_| wv[j] as f64)
                                    + bias.map_or(0.0, |_| bv[j] as f64)
                            })
                            .collect()
                    });
                    assert_close(&x.layer_norm(weight, bias, eps).unwrap().to_vec(), &want, 1e-4);
                }
            }
        }
    }

    #[test]
    fn row_op_errors_name_op_and_shapes() {
        let x = Tensor::zeros(&[2, 3]);
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert_eq!(msg(Tensor::scalar(1.0).softmax()), "softmax: needs at least 1 dim, got a 0-dimensional tensor");
        assert_eq!(
            msg(Tensor::scalar(1.0).log_softmax()),
            "log_softmax: needs at least 1 dim, got a 0-dimensional tensor"
        );
        assert_eq!(
            msg(x.rms_norm(Some(&Tensor::ones(&[4])), 1e-5)),
            "rms_norm: weight has shape [4], expected [3] (the last dim of [2, 3])"
        );
        assert_eq!(
            msg(x.layer_norm(None, Some(&Tensor::ones(&[1, 3])), 1e-5)),
            "layer_norm: bias has shape [1, 3], expected [3] (the last dim of [2, 3])"
        );
        assert_eq!(msg(x.rms_norm(None, -1.0)), "rms_norm: eps must be finite and >= 0, got -1");
        assert_eq!(msg(x.layer_norm(None, None, f32::NAN)), "layer_norm: eps must be finite and >= 0, got NaN");
        assert_eq!(x.narrow(1, 0, 0).unwrap().softmax().unwrap().shape(), &[2, 0]);
    }
}
