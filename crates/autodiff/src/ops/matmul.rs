//! Matrix products. The backward pass is two more products on transposed *views*: no transpose
//! is ever materialised, the GEMM reads the strides.

use super::reduce_to_shape;
use crate::error::Result;
use crate::var::Var;

impl Var {
    /// `self · rhs`: `[.., m, k] · [.., k, n] → [.., m, n]`, batch dims broadcast.
    ///
    /// Backward: `dA = dC · Bᵀ`, `dB = Aᵀ · dC`, each summed over broadcast batch dims.
    pub fn matmul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.matmul(&rhs.value)?;
        if !Var::records(&[self, rhs]) {
            return Ok(Var::constant(value));
        }
        let (a, b) = (self.value.clone(), rhs.value.clone());
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        Ok(Var::from_op("matmul", value, &[self, rhs], move |g| {
            let last = |t: &elide_tensor::Tensor| t.rank() - 1;
            let da = if need_a {
                let bt = b.transpose(last(&b) - 1, last(&b))?;
                Some(reduce_to_shape(&g.matmul(&bt)?, a.shape())?)
            } else {
                None
            };
            let db = if need_b {
                let at = a.transpose(last(&a) - 1, last(&a))?;
                Some(reduce_to_shape(&at.matmul(g)?, b.shape())?)
            } else {
                None
            };
            Ok(vec![da, db])
        }))
    }
}
