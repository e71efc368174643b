//! NumPy broadcasting: the shape rule, and broadcast views with stride-0 dimensions.
//!
//! Two shapes broadcast when, aligned at their last dimension, every pair of sizes is equal or
//! one of them is 1 (a missing leading dimension counts as 1). The result takes the larger size
//! of each pair. A tensor is *broadcast to* a larger shape without a copy by giving the repeated
//! dimensions stride 0.

use crate::error::{Error, Result};
use crate::tensor::{checked_numel, Tensor};

/// The shape `a` and `b` broadcast to, under NumPy's rule.
///
/// ```
/// use elide_tensor::broadcast_shape;
/// assert_eq!(broadcast_shape(&[2, 1, 3], &[4, 1])?, vec![2, 4, 3]);
/// assert!(broadcast_shape(&[2, 3], &[4]).is_err());
/// # Ok::<(), elide_tensor::Error>(())
/// ```
///
/// # Errors
/// [`Error::Shape`] when a pair of aligned sizes differs and neither is 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    broadcast_shape_for("broadcast_shape", a, b)
}

/// [`broadcast_shape`], with `op` named in the error.
pub(crate) fn broadcast_shape_for(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut shape = vec![0; rank];
    for (i, size) in shape.iter_mut().enumerate() {
        // Align at the last dimension; a missing leading dimension has size 1.
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        *size = match (da, db) {
            _ if da == db => da,
            (1, _) => db,
            (_, 1) => da,
            _ => return Err(Error::shape(op, format!("shapes {a:?} and {b:?} do not broadcast"))),
        };
    }
    Ok(shape)
}

impl Tensor {
    /// A view of `self` repeated to `shape` (NumPy rule): size-1 dimensions and missing leading
    /// dimensions get stride 0, so nothing is copied.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let row = Tensor::from_vec(vec![1.0, 2.0], &[2])?;
    /// let m = row.broadcast_to(&[3, 2])?;
    /// assert_eq!((m.strides(), m.to_vec()), (&[0, 1][..], vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]));
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when `shape` has fewer dimensions than `self`, or a size of `self` that
    /// is not 1 differs from the target size.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        self.broadcast_to_for("broadcast_to", shape)
    }

    /// [`Tensor::broadcast_to`], with `op` named in the error.
    pub(crate) fn broadcast_to_for(&self, op: &'static str, shape: &[usize]) -> Result<Tensor> {
        if self.shape == shape {
            return Ok(self.clone());
        }
        let fail = || Error::shape(op, format!("cannot broadcast shape {:?} to {shape:?}", self.shape));
        if shape.len() < self.rank() {
            return Err(fail());
        }
        if checked_numel(shape).is_none() {
            return Err(Error::shape(op, format!("shape {shape:?} has more elements than fit in usize")));
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, (&size, &stride)) in self.shape.iter().zip(&self.strides).enumerate() {
            let target = shape[lead + i];
            if size == target {
                strides[lead + i] = stride;
            } else if size != 1 {
                return Err(fail());
            }
        }
        Ok(Tensor { storage: self.storage.clone(), shape: shape.to_vec(), strides, offset: self.offset })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arange_shaped, reference_get};
    use proptest::prelude::*;

    #[test]
    fn shape_rule_examples() {
        assert_eq!(broadcast_shape(&[], &[2, 3]).unwrap(), vec![2, 3]);
        assert_eq!(broadcast_shape(&[3, 1], &[1, 4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shape(&[0, 1], &[1, 5]).unwrap(), vec![0, 5]);
        assert_eq!(broadcast_shape(&[5, 1, 2], &[7, 1]).unwrap(), vec![5, 7, 2]);
    }

    #[test]
    fn broadcast_errors_name_the_shapes() {
        let err = broadcast_shape(&[2, 3], &[4]).unwrap_err();
        assert_eq!(err.to_string(), "broadcast_shape: shapes [2, 3] and [4] do not broadcast");
        let x = Tensor::zeros(&[2, 3]);
        let err = x.broadcast_to(&[3]).unwrap_err();
        assert_eq!(err.to_string(), "broadcast_to: cannot broadcast shape [2, 3] to [3]");
        let err = x.broadcast_to(&[4, 3, 3]).unwrap_err();
        assert_eq!(err.to_string(), "broadcast_to: cannot broadcast shape [2, 3] to [4, 3, 3]");
        let huge = [usize::MAX / 2, 3];
        let err = Tensor::scalar(1.0).broadcast_to(&huge).unwrap_err();
        assert_eq!(err.to_string(), format!("broadcast_to: shape {huge:?} has more elements than fit in usize"));
    }

    #[test]
    fn broadcast_view_shares_storage() {
        let x = arange_shaped(&[3, 1]);
        let b = x.broadcast_to(&[2, 3, 4]).unwrap();
        assert!(b.shares_storage(&x));
        assert_eq!(b.strides(), &[0, 1, 0]);
        assert_eq!(b.get(&[1, 2, 3]).unwrap(), 2.0);
    }

    fn shape_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
        // A target shape, and a second shape made from it by dropping leading dims and setting
        // some sizes to 1; either may play either role.
        (prop::collection::vec(1usize..4, 0..4), any::<u8>(), any::<u8>(), any::<bool>()).prop_map(
            |(full, drop, ones, swap)| {
                let keep = full.len() - (drop as usize % (full.len() + 1));
                let small: Vec<usize> = full[full.len() - keep..]
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if ones >> (i % 8) & 1 == 1 { 1 } else { d })
                    .collect();
                if swap {
                    (small, full)
                } else {
                    (full, small)
                }
            },
        )
    }

    proptest! {
        #[test]
        fn shape_rule_matches_definition((a, b) in shape_pair()) {
            let out = broadcast_shape(&a, &b).unwrap();
            prop_assert_eq!(out.len(), a.len().max(b.len()));
            for i in 0..out.len() {
                let da = (i + a.len()).checked_sub(out.len()).map_or(1, |j| a[j]);
                let db = (i + b.len()).checked_sub(out.len()).map_or(1, |j| b[j]);
                prop_assert!(da == out[i] || da == 1);
                prop_assert!(db == out[i] || db == 1);
                prop_assert_eq!(out[i], da.max(db));
            }
            prop_assert_eq!(broadcast_shape(&b, &a).unwrap(), out);
        }

        #[test]
        fn broadcast_values_follow_explicit_indices((a, b) in shape_pair()) {
            let out = broadcast_shape(&a, &b).unwrap();
            let x = arange_shaped(&a);
            let bx = x.broadcast_to(&out).unwrap();
            let values = bx.to_vec();
            let mut index = vec![0; out.len()];
            for (flat, v) in values.iter().enumerate() {
                let mut rest = flat;
                for d in (0..out.len()).rev() {
                    index[d] = rest % out[d];
                    rest /= out[d];
                }
                // Explicit rule: drop the leading dims, clamp size-1 dims to index 0.
                let src: Vec<usize> = a.iter().enumerate()
                    .map(|(i, &d)| if d == 1 { 0 } else { index[out.len() - a.len() + i] })
                    .collect();
                prop_assert_eq!(*v, reference_get(&a, &src));
            }
        }
    }
}
