//! [`IndexTensor`]: integer positions (from `argmax`, `topk`) with a shape.

use crate::error::Result;
use crate::tensor::{check_data_len, Tensor};

/// A row-major array of `u32` positions with a shape, as returned by [`Tensor::argmax`] and
/// [`Tensor::topk`]. Kept apart from [`Tensor`] (which holds `f32`) so that indices are never
/// rounded; [`IndexTensor::as_slice`] is what [`Tensor::index_select`] and
/// [`Tensor::scatter_add`] take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexTensor {
    data: Vec<u32>,
    shape: Vec<usize>,
}

impl IndexTensor {
    /// Indices `data` in row-major order with `shape`.
    ///
    /// # Errors
    /// [`Error::DataLength`](crate::Error::DataLength) when `data.len()` is not the product of
    /// `shape`.
    pub fn new(data: Vec<u32>, shape: &[usize]) -> Result<IndexTensor> {
        check_data_len("IndexTensor::new", data.len(), shape)?;
        Ok(IndexTensor { data, shape: shape.to_vec() })
    }

    /// For callers that built `data` for `shape` themselves.
    pub(crate) fn from_parts(data: Vec<u32>, shape: Vec<usize>) -> IndexTensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        IndexTensor { data, shape }
    }

    /// The size of every dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of indices.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The indices in row-major order.
    pub fn as_slice(&self) -> &[u32] {
        &self.data
    }

    /// The indices in row-major order, without copying.
    pub fn into_vec(self) -> Vec<u32> {
        self.data
    }

    /// The indices as `f32` values of the same shape (exact up to 2^24).
    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_contiguous(self.data.iter().map(|&i| i as f32).collect(), self.shape.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tensor_holds_shape_and_values() {
        let idx = IndexTensor::new(vec![2, 0, 1, 1], &[2, 2]).unwrap();
        assert_eq!((idx.shape(), idx.numel(), idx.as_slice()), (&[2, 2][..], 4, &[2, 0, 1, 1][..]));
        assert_eq!(idx.to_tensor().to_vec(), vec![2.0, 0.0, 1.0, 1.0]);
        assert_eq!(idx.into_vec(), vec![2, 0, 1, 1]);
        let err = IndexTensor::new(vec![1, 2, 3], &[2, 2]).unwrap_err();
        assert_eq!(err.to_string(), "IndexTensor::new: 3 values cannot fill shape [2, 2], which holds 4");
    }
}
