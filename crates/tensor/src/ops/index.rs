//! Concatenation, and rows picked or accumulated through index lists.

use elide_kernels::gather::{gather_rows, scatter_add_rows};
use elide_kernels::Isa;

use crate::error::{check_dim, check_index, Error, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// The entries `index[0], index[1], ...` of dim `dim`, in that order (repeats allowed): the
    /// result has `self`'s shape with `dim` resized to `index.len()`.
    ///
    /// The input is made contiguous (a copy only if it is not) and seen as
    /// `[outer, size, inner]`; each of the `outer` blocks is one call of the kernel
    /// `gather::gather_rows` (for dim 0, exactly one call; along the last dim, a plain copy).
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[3, 2])?;
    /// assert_eq!(x.index_select(0, &[2, 0])?.to_vec(), vec![5.0, 6.0, 1.0, 2.0]);
    /// assert_eq!(x.index_select(1, &[1])?.to_vec(), vec![2.0, 4.0, 6.0]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Dim`] for a bad `dim`, [`Error::Index`] for an index `>= shape[dim]`.
    pub fn index_select(&self, dim: usize, index: &[u32]) -> Result<Tensor> {
        const OP: &str = "index_select";
        check_dim(OP, dim, &self.shape)?;
        check_index(OP, index, dim, &self.shape)?;
        let (outer, size, inner) = self.split_at_dim(dim);
        let mut shape = self.shape.clone();
        shape[dim] = index.len();
        let mut out = crate::pool::take(outer * index.len() * inner);
        if !out.is_empty() {
            let x = self.contiguous();
            let src = x.as_slice().unwrap_or_default();
            let isa = Isa::try_active()?;
            for (o, out) in out.chunks_mut(index.len() * inner).enumerate() {
                let block = &src[o * size * inner..][..size * inner];
                if inner == 1 {
                    // Single values (the last dim): a kernel call per block would cost more
                    // than the copy.
                    out.iter_mut().zip(index).for_each(|(v, &i)| *v = block[i as usize]);
                } else {
                    gather_rows(isa, block, size, inner, index, out)?;
                }
            }
        }
        Ok(Tensor::from_contiguous(out, shape))
    }

    /// A copy of `self` with the entries of `src` added at positions `index` of dim `dim`:
    /// `out[.., index[i], ..] += src[.., i, ..]`, where a repeated index accumulates every
    /// entry that names it (in index order). `src` has `self`'s shape with `dim` resized to
    /// `index.len()`. This is the backward of [`Tensor::index_select`].
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let dst = Tensor::zeros(&[3, 2]);
    /// let src = Tensor::from_vec(vec![1.0, 2.0, 10.0, 20.0], &[2, 2])?;
    /// let out = dst.scatter_add(0, &[2, 2], &src)?;
    /// assert_eq!(out.to_vec(), vec![0.0, 0.0, 0.0, 0.0, 11.0, 22.0]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Dim`] for a bad `dim`, [`Error::Shape`] when `src` has the wrong shape,
    /// [`Error::Index`] for an index `>= shape[dim]`.
    pub fn scatter_add(&self, dim: usize, index: &[u32], src: &Tensor) -> Result<Tensor> {
        const OP: &str = "scatter_add";
        check_dim(OP, dim, &self.shape)?;
        let mut src_shape = self.shape.clone();
        src_shape[dim] = index.len();
        if src.shape != src_shape {
            return Err(Error::shape(
                OP,
                format!(
                    "src has shape {:?}, expected {src_shape:?} (shape {:?} with dim {dim} of size {}, the index length)",
                    src.shape,
                    self.shape,
                    index.len()
                ),
            ));
        }
        check_index(OP, index, dim, &self.shape)?;
        let (outer, size, inner) = self.split_at_dim(dim);
        let mut out = self.to_vec();
        if outer * index.len() * inner > 0 {
            let src = src.contiguous();
            let src = src.as_slice().unwrap_or_default();
            let isa = Isa::try_active()?;
            for (o, dst) in out.chunks_mut(size * inner).enumerate() {
                let block = &src[o * index.len() * inner..][..index.len() * inner];
                if inner == 1 {
                    // Single values (the last dim): add in index order, as the kernel does.
                    block.iter().zip(index).for_each(|(v, &i)| dst[i as usize] += v);
                } else {
                    scatter_add_rows(isa, block, index, dst, size, inner)?;
                }
            }
        }
        Ok(Tensor::from_contiguous(out, self.shape.clone()))
    }

    /// `(outer, size, inner)`: the tensor seen as `[outer, shape[dim], inner]`.
    fn split_at_dim(&self, dim: usize) -> (usize, usize, usize) {
        (self.shape[..dim].iter().product(), self.shape[dim], self.shape[dim + 1..].iter().product())
    }

    /// Joins tensors along `dim`. All must have the same rank and the same sizes outside `dim`.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let a = Tensor::from_vec(vec![1.0, 2.0], &[1, 2])?;
    /// let b = Tensor::from_vec(vec![3.0, 4.0, 5.0, 6.0], &[2, 2])?;
    /// assert_eq!(Tensor::concat(&[&a, &b], 0)?.to_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Argument`] for an empty list, [`Error::Dim`] for a bad `dim`, [`Error::Shape`]
    /// when the shapes disagree outside `dim`.
    pub fn concat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        const OP: &str = "concat";
        let Some(first) = tensors.first() else {
            return Err(Error::argument(OP, "needs at least one tensor"));
        };
        check_dim(OP, dim, &first.shape)?;
        for (i, t) in tensors.iter().enumerate().skip(1) {
            let agree = t.rank() == first.rank()
                && t.shape.iter().zip(&first.shape).enumerate().all(|(d, (a, b))| d == dim || a == b);
            if !agree {
                return Err(Error::shape(
                    OP,
                    format!(
                        "tensor {i} has shape {:?}, tensor 0 has {:?}; they must agree outside dim {dim}",
                        t.shape, first.shape
                    ),
                ));
            }
        }
        let outer: usize = first.shape[..dim].iter().product();
        let inner: usize = first.shape[dim + 1..].iter().product();
        let total: usize = tensors.iter().map(|t| t.shape[dim]).sum();
        let mut shape = first.shape.clone();
        shape[dim] = total;
        let mut out = crate::pool::take(outer * total * inner);
        let mut at = 0; // start of the current tensor's block within an output row
        for t in tensors {
            let t = t.contiguous();
            let Some(src) = t.as_slice() else { unreachable!("contiguous() gives a contiguous tensor") };
            let block = t.shape[dim] * inner;
            for o in 0..outer {
                out[o * total * inner + at..][..block].copy_from_slice(&src[o * block..][..block]);
            }
            at += block;
        }
        Ok(Tensor::from_contiguous(out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random, unflatten};

    #[test]
    fn index_select_matches_explicit_indices_along_every_dim() {
        let inputs = [random(&[4, 3, 5], 1), random(&[5, 3, 4], 2).permute(&[2, 1, 0]).unwrap()];
        for x in &inputs {
            for dim in 0..3 {
                let size = x.shape()[dim] as u32;
                let index = [size - 1, 0, size - 1, 1];
                let got = x.index_select(dim, &index).unwrap();
                let mut shape = x.shape().to_vec();
                shape[dim] = index.len();
                assert_eq!(got.shape(), &shape[..]);
                for (f, v) in got.to_vec().iter().enumerate() {
                    let mut idx = unflatten(f, &shape);
                    idx[dim] = index[idx[dim]] as usize;
                    assert_eq!(*v, x.get(&idx).unwrap());
                }
            }
        }
        assert_eq!(inputs[0].index_select(1, &[]).unwrap().shape(), &[4, 0, 5]);
    }

    #[test]
    fn scatter_add_matches_explicit_indices_along_every_dim() {
        let dst = random(&[4, 3, 5], 3).t_free();
        for dim in 0..3 {
            let size = dst.shape()[dim] as u32;
            let index = [size - 1, 0, size - 1, 1, 0];
            let mut src_shape = dst.shape().to_vec();
            src_shape[dim] = index.len();
            let src = random(&src_shape, 4 + dim as u64);
            let got = dst.scatter_add(dim, &index, &src).unwrap();
            let mut want: Vec<f64> = dst.to_vec().iter().map(|&v| v as f64).collect();
            let out_shape = dst.shape().to_vec();
            for (f, v) in src.to_vec().iter().enumerate() {
                let mut idx = unflatten(f, &src_shape);
                idx[dim] = index[idx[dim]] as usize;
                let flat = idx.iter().zip(&out_shape).fold(0, |acc, (&i, &d)| acc * d + i);
                want[flat] += *v as f64;
            }
            let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
            assert_close(&got.to_vec(), &want, 1e-6);
        }
    }

    #[test]
    fn index_errors_name_op_index_and_shapes() {
        let x = Tensor::zeros(&[3, 2]);
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert_eq!(
            msg(x.index_select(0, &[0, 3])),
            "index_select: index 3 at position 1 is out of range for dim 0 of size 3 (shape [3, 2])"
        );
        assert_eq!(msg(x.index_select(2, &[0])), "index_select: dim 2 is out of range for shape [3, 2] (rank 2)");
        assert_eq!(
            msg(x.scatter_add(0, &[1, 5], &Tensor::ones(&[2, 2]))),
            "scatter_add: index 5 at position 1 is out of range for dim 0 of size 3 (shape [3, 2])"
        );
        assert_eq!(
            msg(x.scatter_add(0, &[1], &Tensor::ones(&[2, 2]))),
            "scatter_add: src has shape [2, 2], expected [1, 2] (shape [3, 2] with dim 0 of size 1, the index length)"
        );
        assert_eq!(
            msg(x.scatter_add(1, &[0], &Tensor::ones(&[3, 1, 1]))),
            "scatter_add: src has shape [3, 1, 1], expected [3, 1] (shape [3, 2] with dim 1 of size 1, the index length)"
        );
    }

    impl Tensor {
        /// A non-contiguous view with the same shape and values (permuted twice through a copy).
        fn t_free(&self) -> Tensor {
            let r = self.rank();
            self.transpose(0, r - 1).unwrap().contiguous().transpose(0, r - 1).unwrap()
        }
    }

    #[test]
    fn concat_matches_explicit_indices() {
        let a = random(&[2, 3, 4], 1);
        let b = random(&[4, 2, 3], 2).permute(&[1, 2, 0]).unwrap().narrow(1, 0, 2).unwrap(); // [2, 2, 4]
        let c = random(&[2, 1, 4], 3);
        let out = Tensor::concat(&[&a, &b, &c], 1).unwrap();
        assert_eq!(out.shape(), &[2, 6, 4]);
        for (f, v) in out.to_vec().iter().enumerate() {
            let mut idx = unflatten(f, &[2, 6, 4]);
            let want = match idx[1] {
                0..3 => a.get(&idx).unwrap(),
                3..5 => {
                    idx[1] -= 3;
                    b.get(&idx).unwrap()
                }
                _ => {
                    idx[1] -= 5;
                    c.get(&idx).unwrap()
                }
            };
            assert_eq!(*v, want);
        }
        let last = Tensor::concat(&[&a, &a], 2).unwrap();
        assert_eq!(last.narrow(2, 4, 4).unwrap().to_vec(), a.to_vec());
        let empty = Tensor::concat(
            &[&Tensor::zeros(&[0, 3]), &a.narrow(0, 0, 1).unwrap().reshape(&[3, 4]).unwrap().narrow(1, 0, 3).unwrap()],
            0,
        )
        .unwrap();
        assert_eq!(empty.shape(), &[3, 3]);
    }

    #[test]
    fn concat_errors_name_op_and_shapes() {
        let msg = |ts: &[&Tensor], dim| Tensor::concat(ts, dim).unwrap_err().to_string();
        let (a, b) = (Tensor::zeros(&[2, 3]), Tensor::zeros(&[3, 4]));
        assert_eq!(msg(&[], 0), "concat: needs at least one tensor");
        assert_eq!(
            msg(&[&a, &b], 0),
            "concat: tensor 1 has shape [3, 4], tensor 0 has [2, 3]; they must agree outside dim 0"
        );
        assert_eq!(
            msg(&[&a, &Tensor::zeros(&[2])], 0),
            "concat: tensor 1 has shape [2], tensor 0 has [2, 3]; they must agree outside dim 0"
        );
        assert_eq!(msg(&[&a], 2), "concat: dim 2 is out of range for shape [2, 3] (rank 2)");
    }
}
