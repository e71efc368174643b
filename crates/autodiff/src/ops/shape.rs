//! Views and concatenation: gradients are the inverse view (or the matching slice).

use crate::error::Result;
use crate::var::Var;
use elide_tensor::Tensor;

impl Var {
    /// Same values, new shape.
    pub fn reshape(&self, shape: &[usize]) -> Result<Var> {
        let value = self.value.reshape(shape)?;
        let orig = self.shape().to_vec();
        Ok(Var::from_op("reshape", value, &[self], move |g| Ok(vec![Some(g.reshape(&orig)?)])))
    }

    /// Dims reordered by `perm`.
    pub fn permute(&self, perm: &[usize]) -> Result<Var> {
        let value = self.value.permute(perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(Var::from_op("permute", value, &[self], move |g| Ok(vec![Some(g.permute(&inverse)?)])))
    }

    /// Dims `d0` and `d1` swapped.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Var> {
        let value = self.value.transpose(d0, d1)?;
        Ok(Var::from_op("transpose", value, &[self], move |g| Ok(vec![Some(g.transpose(d0, d1)?)])))
    }

    /// `len` entries of `dim` from `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Var> {
        let value = self.value.narrow(dim, start, len)?;
        let shape = self.shape().to_vec();
        Ok(Var::from_op("narrow", value, &[self], move |g| {
            // Pad the gradient with zeros on both sides along `dim`.
            let mut parts = Vec::with_capacity(3);
            let pad = |n: usize| {
                let mut s = shape.clone();
                s[dim] = n;
                Tensor::try_zeros(&s)
            };
            let before = pad(start)?;
            let after = pad(shape[dim] - start - len)?;
            parts.push(&before);
            parts.push(g);
            parts.push(&after);
            Ok(vec![Some(Tensor::concat(&parts, dim)?)])
        }))
    }

    /// Broadcast to `shape` (stride-0 view); the gradient is summed back.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Var> {
        let value = self.value.broadcast_to(shape)?;
        let orig = self.shape().to_vec();
        Ok(Var::from_op("broadcast_to", value, &[self], move |g| Ok(vec![Some(super::reduce_to_shape(g, &orig)?)])))
    }

    /// A new dim of size 1 at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Var> {
        let value = self.value.unsqueeze(dim)?;
        Ok(Var::from_op("unsqueeze", value, &[self], move |g| Ok(vec![Some(g.squeeze(dim)?)])))
    }

    /// Removes the size-1 dim `dim`.
    pub fn squeeze(&self, dim: usize) -> Result<Var> {
        let value = self.value.squeeze(dim)?;
        Ok(Var::from_op("squeeze", value, &[self], move |g| Ok(vec![Some(g.unsqueeze(dim)?)])))
    }

    /// Concatenation along `dim`; each input's gradient is its slice of the output's.
    pub fn concat(vars: &[&Var], dim: usize) -> Result<Var> {
        let values: Vec<&Tensor> = vars.iter().map(|v| &v.value).collect();
        let value = Tensor::concat(&values, dim)?;
        let sizes: Vec<usize> = vars.iter().map(|v| v.shape()[dim]).collect();
        Ok(Var::from_op("concat", value, vars, move |g| {
            let mut start = 0;
            sizes
                .iter()
                .map(|&n| {
                    let part = g.narrow(dim, start, n)?;
                    start += n;
                    Ok(Some(part))
                })
                .collect()
        }))
    }
}
