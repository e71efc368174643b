//! Reductions. The gradient of a sum broadcasts back; of a max, it goes to the (first) maximum.

use crate::error::Result;
use crate::var::Var;
use elide_tensor::Tensor;

impl Var {
    /// Sum over `dim`.
    pub fn sum(&self, dim: usize, keepdim: bool) -> Result<Var> {
        let value = self.value.sum(dim, keepdim)?;
        let shape = self.shape().to_vec();
        Ok(Var::from_op("sum", value, &[self], move |g| {
            let g = if keepdim { g.clone() } else { g.unsqueeze(dim)? };
            Ok(vec![Some(g.broadcast_to(&shape)?.contiguous())])
        }))
    }

    /// Mean over `dim`.
    pub fn mean(&self, dim: usize, keepdim: bool) -> Result<Var> {
        let n = *self.shape().get(dim).unwrap_or(&1) as f32;
        Ok(self.sum(dim, keepdim)?.mul_scalar(1.0 / n))
    }

    /// Sum of every element, as a one-element tensor of shape `[]`.
    pub fn sum_all(&self) -> Var {
        let shape = self.shape().to_vec();
        Var::from_op("sum_all", self.value.sum_all(), &[self], move |g| {
            Ok(vec![Some(Tensor::try_full(&shape, g.item()?)?)])
        })
    }

    /// Mean of every element.
    pub fn mean_all(&self) -> Var {
        let n = self.value.numel().max(1) as f32;
        self.sum_all().mul_scalar(1.0 / n)
    }

    /// Max over `dim`; the gradient flows to the first position holding the maximum.
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Var> {
        let value = self.value.max(dim, keepdim)?;
        if !Var::records(&[self]) {
            return Ok(Var::constant(value));
        }
        // One-hot of the first arg-max along `dim`, computed on the dim moved last.
        let rank = self.value.rank();
        let moved = self.value.transpose(dim, rank - 1)?.contiguous();
        let cols = *moved.shape().last().unwrap_or(&1);
        let data = moved.to_vec();
        let mut mask = vec![0.0f32; data.len()];
        for (row, m) in data.chunks(cols.max(1)).zip(mask.chunks_mut(cols.max(1))) {
            let mut best = 0;
            for (j, &x) in row.iter().enumerate() {
                if x > row[best] {
                    best = j;
                }
            }
            if !row.is_empty() {
                m[best] = 1.0;
            }
        }
        let mask = Tensor::from_vec(mask, moved.shape())?.transpose(dim, rank - 1)?;
        Ok(Var::from_op("max", value, &[self], move |g| {
            let g = if keepdim { g.clone() } else { g.unsqueeze(dim)? };
            Ok(vec![Some(mask.mul(&g)?)])
        }))
    }
}
