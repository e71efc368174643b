//! Reductions along one dimension: sum, mean, max, min; and the sum of all elements.
//!
//! The input is made contiguous (a copy only if it is not) and seen as `[outer, axis, inner]`,
//! the layout the kernel `reduce::reduce_axis` reduces in a fixed order, so results are
//! bit-identical for any number of threads.

use elide_kernels::reduce::{reduce_axis, ReduceOp};
use elide_kernels::Isa;

use crate::alloc;
use crate::error::{check_dim, Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    fn reduce_dim(&self, dim: usize, keepdim: bool, op: ReduceOp, name: &'static str) -> Result<Tensor> {
        check_dim(name, dim, &self.shape)?;
        let outer: usize = self.shape[..dim].iter().product();
        let axis = self.shape[dim];
        let inner: usize = self.shape[dim + 1..].iter().product();
        let mut shape = self.shape.clone();
        if keepdim {
            shape[dim] = 1;
        } else {
            shape.remove(dim);
        }
        if outer * inner == 0 {
            return Ok(Tensor::from_contiguous(Vec::new(), shape));
        }
        if axis == 0 && op != ReduceOp::Sum {
            return Err(Error::argument(name, format!("dim {dim} of shape {:?} is empty", self.shape)));
        }
        // Over an empty dim the result can hold more elements than the input: allocate with care.
        let mut out = alloc::filled(name, &shape, 0.0f32)?;
        if axis == 0 {
            return Ok(Tensor::from_contiguous(out, shape));
        }
        let x = self.contiguous();
        reduce_axis(Isa::try_active()?, op, x.as_slice().unwrap_or_default(), outer, axis, inner, &mut out)?;
        Ok(Tensor::from_contiguous(out, shape))
    }

    /// The sum along `dim`; `keepdim` keeps it as a dim of size 1. An empty dim sums to 0.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    /// assert_eq!(x.sum(0, false)?.to_vec(), vec![5.0, 7.0, 9.0]);
    /// assert_eq!(x.sum(1, true)?.shape(), &[2, 1]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Dim`] when `dim` is not a dimension.
    pub fn sum(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim(dim, keepdim, ReduceOp::Sum, "sum")
    }

    /// The mean along `dim`.
    ///
    /// # Errors
    /// [`Error::Dim`] for a bad `dim`; [`Error::Argument`] when the dim is empty (and the
    /// result is not).
    pub fn mean(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim(dim, keepdim, ReduceOp::Mean, "mean")
    }

    /// The maximum along `dim` (NaN if any element is NaN). Errors as [`Tensor::mean`].
    pub fn max(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim(dim, keepdim, ReduceOp::Max, "max")
    }

    /// The minimum along `dim` (NaN if any element is NaN). Errors as [`Tensor::mean`].
    pub fn min(&self, dim: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce_dim(dim, keepdim, ReduceOp::Min, "min")
    }

    /// The sum of all elements, as a 0-dimensional tensor (0 for an empty tensor).
    pub fn sum_all(&self) -> Tensor {
        let n = self.numel();
        let x = self.contiguous();
        let mut out = [0.0f32];
        // One row of `n` values always matches the kernel's requirements.
        if let Err(e) = reduce_axis(Isa::active(), ReduceOp::Sum, x.as_slice().unwrap_or_default(), 1, n, 1, &mut out) {
            unreachable!("{e}");
        }
        Tensor::scalar(out[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random, unflatten};

    /// Reference: for each output index, fold the input along `dim` in f64.
    fn naive(x: &Tensor, dim: usize, op: ReduceOp) -> Vec<f32> {
        let mut shape = x.shape().to_vec();
        let axis = shape[dim];
        shape[dim] = 1;
        (0..shape.iter().product())
            .map(|f| {
                let mut idx = unflatten(f, &shape);
                let values: Vec<f64> = (0..axis)
                    .map(|a| {
                        idx[dim] = a;
                        x.get(&idx).unwrap() as f64
                    })
                    .collect();
                let r = match op {
                    ReduceOp::Sum => values.iter().sum(),
                    ReduceOp::Mean => values.iter().sum::<f64>() / axis as f64,
                    ReduceOp::Max => values.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    ReduceOp::Min => values.iter().cloned().fold(f64::INFINITY, f64::min),
                };
                r as f32
            })
            .collect()
    }

    #[test]
    fn every_reduction_matches_the_reference_along_every_dim() {
        let inputs =
            [random(&[3, 4, 5], 1), random(&[5, 4, 3], 2).permute(&[2, 1, 0]).unwrap(), random(&[2, 70, 9], 3)];
        for x in &inputs {
            for dim in 0..3 {
                for (op, f) in [
                    (ReduceOp::Sum, Tensor::sum as fn(&Tensor, usize, bool) -> Result<Tensor>),
                    (ReduceOp::Mean, Tensor::mean),
                    (ReduceOp::Max, Tensor::max),
                    (ReduceOp::Min, Tensor::min),
                ] {
                    let want = naive(x, dim, op);
                    let kept = f(x, dim, true).unwrap();
                    let mut shape = x.shape().to_vec();
                    shape[dim] = 1;
                    assert_eq!(kept.shape(), &shape[..]);
                    assert_close(&kept.to_vec(), &want, 1e-5);
                    shape.remove(dim);
                    let dropped = f(x, dim, false).unwrap();
                    assert_eq!((dropped.shape(), dropped.to_vec()), (&shape[..], kept.to_vec()));
                }
            }
            let total: f64 = x.to_vec().iter().map(|&v| v as f64).sum();
            let s = x.sum_all();
            assert_eq!(s.rank(), 0);
            assert_close(&[s.item().unwrap()], &[total as f32], 1e-5);
        }
    }

    #[test]
    fn empty_dims_sum_to_zero_and_refuse_mean_max_min() {
        let e = Tensor::zeros(&[2, 0]);
        assert_eq!(e.sum(1, false).unwrap().to_vec(), vec![0.0, 0.0]);
        assert_eq!(e.sum(0, false).unwrap().shape(), &[0]);
        assert_eq!(e.max(0, true).unwrap().shape(), &[1, 0]);
        assert_eq!(e.sum_all().item().unwrap(), 0.0);
        for (name, r) in [("mean", e.mean(1, false)), ("max", e.max(1, false)), ("min", e.min(1, true))] {
            assert_eq!(r.unwrap_err().to_string(), format!("{name}: dim 1 of shape [2, 0] is empty"));
        }
        // The result of summing over an empty dim can be far larger than the input.
        let wide = Tensor::zeros(&[0, 1 << 62]);
        let err = wide.sum(0, false).unwrap_err();
        assert_eq!(err.to_string(), "sum: shape [4611686018427387904] needs 18446744073709551616 bytes (16.0 EiB), which could not be allocated");
        assert_eq!(Tensor::zeros(&[0, 3]).sum(0, true).unwrap().to_vec(), vec![0.0; 3]);
        let err = random(&[2, 3], 1).sum(2, false).unwrap_err();
        assert_eq!(err.to_string(), "sum: dim 2 is out of range for shape [2, 3] (rank 2)");
    }
}
