//! Gathers and scatters: `index_select` and `scatter_add` are each other's adjoints.

use crate::error::Result;
use crate::var::Var;
use elide_tensor::{IndexTensor, Tensor};
use std::sync::Arc;

impl Var {
    /// Entries `index` of `dim`. Backward: the gradient is scatter-added back (repeated indices
    /// accumulate).
    pub fn index_select(&self, dim: usize, index: &[u32]) -> Result<Var> {
        let value = self.value.index_select(dim, index)?;
        let shape = self.shape().to_vec();
        let index: Arc<[u32]> = index.into();
        Ok(Var::from_op("index_select", value, &[self], move |g| {
            Ok(vec![Some(Tensor::try_zeros(&shape)?.scatter_add(dim, &index, g)?)])
        }))
    }

    /// Rows `ids` of an embedding table `[vocab, d]`: `[ids.len(), d]`. The table's gradient
    /// is a dense `[vocab, d]` tensor, zero outside the looked-up rows (it costs a whole
    /// table of memory, not only the rows used).
    pub fn embedding(table: &Var, ids: &[u32]) -> Result<Var> {
        table.index_select(0, ids)
    }

    /// `self` with `src` added at entries `index` of `dim` (repeated indices accumulate).
    /// Backward: `self` gets the gradient, `src` gets it gathered at `index`.
    pub fn scatter_add(&self, dim: usize, index: &[u32], src: &Var) -> Result<Var> {
        let value = self.value.scatter_add(dim, index, &src.value)?;
        let index: Arc<[u32]> = index.into();
        Ok(Var::from_op("scatter_add", value, &[self, src], move |g| {
            Ok(vec![Some(g.clone()), Some(g.index_select(dim, &index)?)])
        }))
    }

    /// The `k` largest values along the last dim (descending) and their positions. The
    /// gradient flows to those positions only.
    pub fn topk(&self, k: usize) -> Result<(Var, IndexTensor)> {
        let (values, positions) = self.value.topk(k)?;
        if !Var::records(&[self]) {
            return Ok((Var::constant(values), positions));
        }
        let shape = self.shape().to_vec();
        let cols = *shape.last().unwrap_or(&1);
        // Flat positions in the row-major input, so the backward is one row scatter.
        let flat: Arc<[u32]> =
            positions.as_slice().iter().enumerate().map(|(i, &p)| ((i / k) * cols) as u32 + p).collect();
        let numel = self.value.numel();
        let var = Var::from_op("topk", values, &[self], move |g| {
            let src = g.reshape(&[flat.len(), 1])?;
            let grad = Tensor::try_zeros(&[numel, 1])?.scatter_add(0, &flat, &src)?;
            Ok(vec![Some(grad.reshape(&shape)?)])
        });
        Ok((var, positions))
    }
}
