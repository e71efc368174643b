//! Views: new shapes and strides over the same storage, without copying elements.

use std::sync::Arc;

use crate::error::{check_dim, Error, Result};
use crate::tensor::{checked_numel, row_major_strides, Tensor};

impl Tensor {
    /// A view with new `shape` and `strides` at `offset`, over the same storage.
    fn view(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor { storage: Arc::clone(&self.storage), shape, strides, offset }
    }

    /// The same elements, in row-major order, under a new `shape` with the same element count.
    ///
    /// A **view** (no copy) whenever the new shape can be expressed with strides over the
    /// current storage: always for a contiguous tensor, and for a strided one when each group of
    /// dims being merged or split is itself contiguous (PyTorch's rule). Otherwise, e.g. when
    /// flattening a transposed matrix, the elements are **copied** into new contiguous storage.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let x = Tensor::arange(6).reshape(&[2, 3])?;
    /// assert!(x.reshape(&[3, 2])?.shares_storage(&x)); // a view
    /// assert!(!x.t()?.reshape(&[6])?.shares_storage(&x)); // a copy
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when `shape` holds a different number of elements.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let numel = self.numel();
        if checked_numel(shape) != Some(numel) {
            return Err(Error::shape(
                "reshape",
                format!("cannot view shape {:?} ({numel} elements) as {shape:?}", self.shape),
            ));
        }
        if self.is_contiguous() {
            return Ok(self.view(shape.to_vec(), row_major_strides(shape), self.offset));
        }
        match view_strides(&self.shape, &self.strides, shape) {
            Some(strides) => Ok(self.view(shape.to_vec(), strides, self.offset)),
            None => self.contiguous().reshape(shape),
        }
    }

    /// A view with the dimensions reordered: dim `i` of the result is dim `perm[i]` of `self`.
    ///
    /// # Errors
    /// [`Error::Argument`] when `perm` is not a permutation of `0..rank`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let rank = self.rank();
        let mut seen = vec![false; rank];
        let valid = perm.len() == rank && perm.iter().all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::argument(
                "permute",
                format!("{perm:?} is not a permutation of the {rank} dims of shape {:?}", self.shape),
            ));
        }
        let shape = perm.iter().map(|&p| self.shape[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(self.view(shape, strides, self.offset))
    }

    /// A view with dims `d0` and `d1` swapped.
    ///
    /// # Errors
    /// [`Error::Dim`] when either is not a dimension.
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Tensor> {
        check_dim("transpose", d0, &self.shape)?;
        check_dim("transpose", d1, &self.shape)?;
        let (mut shape, mut strides) = (self.shape.clone(), self.strides.clone());
        shape.swap(d0, d1);
        strides.swap(d0, d1);
        Ok(self.view(shape, strides, self.offset))
    }

    /// The transpose of a matrix, as a view.
    ///
    /// # Errors
    /// [`Error::Argument`] when the tensor is not 2-dimensional.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() != 2 {
            return Err(Error::argument("t", format!("needs a 2-D tensor, got shape {:?}", self.shape)));
        }
        self.transpose(0, 1)
    }

    /// A view of `len` consecutive entries of dim `dim`, starting at `start`.
    ///
    /// # Errors
    /// [`Error::Dim`] for a bad `dim`, [`Error::Argument`] when `start + len` passes the end.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        check_dim("narrow", dim, &self.shape)?;
        let size = self.shape[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::argument(
                "narrow",
                format!("range {start}..{start}+{len} is out of bounds for dim {dim} of shape {:?}", self.shape),
            ));
        }
        let mut shape = self.shape.clone();
        shape[dim] = len;
        // An empty view keeps the old offset, which is always inside (or at the end of) storage.
        let offset = if len == 0 { self.offset } else { self.offset + start * self.strides[dim] };
        Ok(self.view(shape, self.strides.clone(), offset))
    }

    /// A view with a new dimension of size 1 inserted at position `dim` (`0..=rank`).
    ///
    /// # Errors
    /// [`Error::Dim`] when `dim > rank`.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::dim("unsqueeze", dim, &self.shape));
        }
        // Any stride works for a size-1 dim; this one keeps a contiguous tensor contiguous.
        let stride = if dim < self.rank() { self.strides[dim] * self.shape[dim] } else { 1 };
        let (mut shape, mut strides) = (self.shape.clone(), self.strides.clone());
        shape.insert(dim, 1);
        strides.insert(dim, stride);
        Ok(self.view(shape, strides, self.offset))
    }

    /// A view with dimension `dim`, which must have size 1, removed.
    ///
    /// # Errors
    /// [`Error::Dim`] for a bad `dim`, [`Error::Argument`] when its size is not 1.
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        check_dim("squeeze", dim, &self.shape)?;
        if self.shape[dim] != 1 {
            return Err(Error::argument(
                "squeeze",
                format!("dim {dim} of shape {:?} has size {}, not 1", self.shape, self.shape[dim]),
            ));
        }
        let (mut shape, mut strides) = (self.shape.clone(), self.strides.clone());
        shape.remove(dim);
        strides.remove(dim);
        Ok(self.view(shape, strides, self.offset))
    }
}

/// Strides that show a tensor of `old_shape`/`old_strides` as `new_shape` in the same row-major
/// element order, if they exist (the element counts must match).
///
/// The old dims split into *chunks* of neighbours that are contiguous with each other; each chunk
/// must be covered exactly by a run of new dims, which then step through it row-major. This is
/// PyTorch's `computeStride`.
fn view_strides(old_shape: &[usize], old_strides: &[usize], new_shape: &[usize]) -> Option<Vec<usize>> {
    if old_shape.contains(&0) || old_shape.is_empty() {
        return Some(row_major_strides(new_shape));
    }
    let mut new_strides = vec![0; new_shape.len()];
    let mut view_d = new_shape.len();
    let mut chunk_base = old_strides[old_shape.len() - 1];
    let (mut chunk_numel, mut view_numel) = (1usize, 1usize);
    for d in (0..old_shape.len()).rev() {
        chunk_numel *= old_shape[d];
        let chunk_ends = d == 0 || (old_shape[d - 1] != 1 && old_strides[d - 1] != chunk_numel * chunk_base);
        if chunk_ends {
            while view_d > 0 && (view_numel < chunk_numel || new_shape[view_d - 1] == 1) {
                new_strides[view_d - 1] = view_numel * chunk_base;
                view_numel *= new_shape[view_d - 1];
                view_d -= 1;
            }
            if view_numel != chunk_numel {
                return None;
            }
            if d > 0 {
                chunk_base = old_strides[d - 1];
                chunk_numel = 1;
                view_numel = 1;
            }
        }
    }
    (view_d == 0).then_some(new_strides)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arange_shaped, reference_get};
    use proptest::prelude::*;

    #[test]
    fn views_share_storage_and_address_the_right_elements() {
        let x = arange_shaped(&[2, 3, 4]);
        let p = x.permute(&[2, 0, 1]).unwrap();
        assert_eq!((p.shape(), p.strides()), (&[4, 2, 3][..], &[1, 12, 4][..]));
        assert_eq!(p.get(&[3, 1, 2]).unwrap(), reference_get(&[2, 3, 4], &[1, 2, 3]));
        let n = x.narrow(2, 1, 2).unwrap();
        assert_eq!(n.to_vec()[..4], [1.0, 2.0, 5.0, 6.0]);
        let u = x.unsqueeze(1).unwrap();
        assert_eq!(u.shape(), &[2, 1, 3, 4]);
        assert!(u.is_contiguous());
        assert_eq!(u.squeeze(1).unwrap().shape(), &[2, 3, 4]);
        assert_eq!(x.unsqueeze(3).unwrap().shape(), &[2, 3, 4, 1]);
        let m = arange_shaped(&[2, 3]);
        assert_eq!(m.t().unwrap().to_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        for v in [p, n, u, m.t().unwrap(), x.transpose(0, 2).unwrap()] {
            assert!(v.shares_storage(&x) || v.shares_storage(&m));
        }
        let e = x.narrow(1, 3, 0).unwrap();
        assert_eq!((e.shape(), e.to_vec()), (&[2, 0, 4][..], vec![]));
    }

    #[test]
    fn reshape_views_when_strides_allow() {
        let x = arange_shaped(&[4, 6]);
        // Narrowed rows stay a chunk of whole rows: splitting them is a view.
        let rows = x.narrow(0, 1, 2).unwrap();
        let r = rows.reshape(&[2, 2, 3]).unwrap();
        assert!(r.shares_storage(&x));
        assert_eq!(r.to_vec(), rows.to_vec());
        // Narrowed columns: merging rows with columns needs a copy.
        let cols = x.narrow(1, 0, 3).unwrap();
        let r = cols.reshape(&[12]).unwrap();
        assert!(!r.shares_storage(&x));
        assert_eq!(r.to_vec(), cols.to_vec());
        // Splitting a column-run inside a transposed tensor is still a view.
        let t = x.t().unwrap().reshape(&[2, 3, 4]).unwrap();
        assert!(t.shares_storage(&x));
        assert_eq!(t.to_vec(), x.t().unwrap().to_vec());
        // Broadcast dims reshape as views with stride 0.
        let b = arange_shaped(&[3, 1]).broadcast_to(&[3, 4]).unwrap().reshape(&[3, 2, 2]).unwrap();
        assert_eq!(b.strides(), &[1, 0, 0]);
        assert_eq!(Tensor::scalar(2.0).reshape(&[1, 1]).unwrap().to_vec(), vec![2.0]);
    }

    #[test]
    fn view_errors_name_op_dims_and_shapes() {
        let x = Tensor::zeros(&[2, 3]);
        let msg = |r: Result<Tensor>| r.unwrap_err().to_string();
        assert_eq!(msg(x.reshape(&[4, 2])), "reshape: cannot view shape [2, 3] (6 elements) as [4, 2]");
        assert_eq!(msg(x.permute(&[0, 0])), "permute: [0, 0] is not a permutation of the 2 dims of shape [2, 3]");
        assert_eq!(msg(x.permute(&[1])), "permute: [1] is not a permutation of the 2 dims of shape [2, 3]");
        assert_eq!(msg(x.transpose(0, 2)), "transpose: dim 2 is out of range for shape [2, 3] (rank 2)");
        assert_eq!(msg(Tensor::zeros(&[2]).t()), "t: needs a 2-D tensor, got shape [2]");
        assert_eq!(msg(x.narrow(1, 2, 2)), "narrow: range 2..2+2 is out of bounds for dim 1 of shape [2, 3]");
        assert_eq!(msg(x.narrow(2, 0, 1)), "narrow: dim 2 is out of range for shape [2, 3] (rank 2)");
        assert_eq!(msg(x.unsqueeze(3)), "unsqueeze: dim 3 is out of range for shape [2, 3] (rank 2)");
        assert_eq!(msg(x.squeeze(0)), "squeeze: dim 0 of shape [2, 3] has size 2, not 1");
        assert_eq!(msg(x.squeeze(5)), "squeeze: dim 5 is out of range for shape [2, 3] (rank 2)");
    }

    /// A random chain of views, applied both to a tensor and to an explicit index map.
    #[derive(Clone, Debug)]
    enum ViewOp {
        Permute(u64),
        Transpose(usize, usize),
        Narrow(usize, usize, usize),
        Reshape(u64),
    }

    fn view_op() -> impl Strategy<Value = ViewOp> {
        prop_oneof![
            any::<u64>().prop_map(ViewOp::Permute),
            (0usize..8, 0usize..8).prop_map(|(a, b)| ViewOp::Transpose(a, b)),
            (0usize..8, 0usize..8, 0usize..8).prop_map(|(d, s, l)| ViewOp::Narrow(d, s, l)),
            any::<u64>().prop_map(ViewOp::Reshape),
        ]
    }

    /// Applies `op` to `t` and to `reference` (the values of `t` in row-major order, with its shape).
    fn apply(op: &ViewOp, t: &Tensor, reference: &mut (Vec<f32>, Vec<usize>)) -> Tensor {
        let (values, shape) = reference;
        let rank = shape.len();
        if rank == 0 {
            return t.clone();
        }
        let gather = |new_shape: &[usize], src_index: &dyn Fn(&[usize]) -> usize, values: &[f32]| {
            let n: usize = new_shape.iter().product();
            let mut index = vec![0; new_shape.len()];
            (0..n)
                .map(|flat| {
                    let mut rest = flat;
                    for d in (0..new_shape.len()).rev() {
                        index[d] = rest % new_shape[d];
                        rest /= new_shape[d];
                    }
                    values[src_index(&index)]
                })
                .collect::<Vec<f32>>()
        };
        let flat = |shape: &[usize], index: &[usize]| index.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i);
        match *op {
            ViewOp::Permute(seed) => {
                let mut perm: Vec<usize> = (0..rank).collect();
                let mut s = seed;
                for i in (1..rank).rev() {
                    perm.swap(i, (s % (i as u64 + 1)) as usize);
                    s /= i as u64 + 1;
                }
                let new_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                let old = shape.clone();
                let src = |idx: &[usize]| {
                    let mut o = vec![0; rank];
                    for (i, &p) in perm.iter().enumerate() {
                        o[p] = idx[i];
                    }
                    flat(&old, &o)
                };
                *values = gather(&new_shape, &src, values);
                *shape = new_shape;
                t.permute(&perm).unwrap()
            }
            ViewOp::Transpose(a, b) => {
                let (a, b) = (a % rank, b % rank);
                let mut perm: Vec<usize> = (0..rank).collect();
                perm.swap(a, b);
                let new_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
                let old = shape.clone();
                let src = |idx: &[usize]| {
                    let mut o = idx.to_vec();
                    o.swap(a, b);
                    flat(&old, &o)
                };
                *values = gather(&new_shape, &src, values);
                *shape = new_shape;
                t.transpose(a, b).unwrap()
            }
            ViewOp::Narrow(d, s, l) => {
                let d = d % rank;
                let start = s % (shape[d] + 1);
                let len = l % (shape[d] - start + 1);
                let mut new_shape = shape.clone();
                new_shape[d] = len;
                let old = shape.clone();
                let src = |idx: &[usize]| {
                    let mut o = idx.to_vec();
                    o[d] += start;
                    flat(&old, &o)
                };
                *values = gather(&new_shape, &src, values);
                *shape = new_shape;
                t.narrow(d, start, len).unwrap()
            }
            ViewOp::Reshape(seed) => {
                // Split or merge: factor the element count into a random new shape.
                let n: usize = shape.iter().product();
                let mut new_shape = Vec::new();
                let (mut rest, mut s) = (n, seed);
                while rest > 1 && new_shape.len() < 4 {
                    let divisors: Vec<usize> = (2..=rest).filter(|d| rest % d == 0).collect();
                    let d = divisors[(s % divisors.len() as u64) as usize];
                    s /= divisors.len() as u64;
                    new_shape.push(d);
                    rest /= d;
                }
                if rest != 1 || n == 0 {
                    new_shape.push(rest);
                }
                *shape = new_shape.clone();
                t.reshape(&new_shape).unwrap()
            }
        }
    }

    proptest! {
        #[test]
        fn view_chains_match_an_explicit_index_map(
            shape in prop::collection::vec(1usize..5, 1..5),
            ops in prop::collection::vec(view_op(), 1..6),
        ) {
            let t0 = arange_shaped(&shape);
            let mut reference = (t0.to_vec(), shape.clone());
            let mut t = t0.clone();
            for op in &ops {
                t = apply(op, &t, &mut reference);
                prop_assert_eq!(t.shape(), &reference.1[..]);
                prop_assert_eq!(t.to_vec(), reference.0.clone());
                prop_assert_eq!(t.contiguous().to_vec(), reference.0.clone());
            }
        }

        #[test]
        fn permute_round_trips(shape in prop::collection::vec(1usize..5, 1..5), seed in any::<u64>()) {
            let x = arange_shaped(&shape);
            let rank = shape.len();
            let mut perm: Vec<usize> = (0..rank).collect();
            let mut s = seed;
            for i in (1..rank).rev() {
                perm.swap(i, (s % (i as u64 + 1)) as usize);
                s /= i as u64 + 1;
            }
            let mut inverse = vec![0; rank];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            let back = x.permute(&perm).unwrap().permute(&inverse).unwrap();
            prop_assert_eq!(back.strides(), x.strides());
            prop_assert_eq!(back.to_vec(), x.to_vec());
            let copied = x.permute(&perm).unwrap().contiguous().permute(&inverse).unwrap();
            prop_assert_eq!(copied.to_vec(), x.to_vec());
        }
    }
}
