//! The [`Tensor`] type: shared f32 storage seen through a shape, strides and an offset.
//!
//! Element `[i0, i1, ..., in]` of a tensor lives at
//! `storage[offset + i0 * strides[0] + ... + in * strides[n]]`. Strides are in elements and
//! never negative; a stride of 0 repeats one value along a dimension (a broadcast). Tensors are
//! immutable: every operation returns a new tensor, and views (transpose, narrow, broadcast, ...)
//! share the storage of the tensor they came from, so they cost no copy.

use std::fmt;
use std::sync::Arc;

use crate::alloc;
use crate::error::{Error, Result};
use crate::layout;
use crate::pool::Storage;

/// An n-dimensional array of `f32` with shared, immutable storage.
///
/// `Clone` is cheap: it copies the shape and strides and bumps a reference count. A `Tensor` is
/// `Send + Sync`, so it can be shared between threads.
///
/// ```
/// use elide_tensor::Tensor;
/// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
/// let xt = x.t()?; // a view: no copy
/// assert_eq!(xt.shape(), &[3, 2]);
/// assert_eq!(xt.to_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
/// # Ok::<(), elide_tensor::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor {
    /// Returned to the [buffer pool](crate::pool) when the last view of it is dropped.
    pub(crate) storage: Arc<Storage>,
    pub(crate) shape: Vec<usize>,
    pub(crate) strides: Vec<usize>,
    pub(crate) offset: usize,
}

/// The number of elements of `shape`, or `None` if it overflows `usize`.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Checks that `len` values fill `shape` exactly.
pub(crate) fn check_data_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    match checked_numel(shape) {
        Some(expected) if expected == len => Ok(()),
        Some(expected) => Err(Error::DataLength { op, len, shape: shape.to_vec(), expected }),
        None => Err(Error::argument(op, format!("shape {shape:?} has more elements than fit in usize"))),
    }
}

/// Row-major strides of `shape` (the last dim has stride 1).
pub(crate) fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for (stride, &d) in strides.iter_mut().zip(shape).rev() {
        *stride = acc;
        acc = acc.saturating_mul(d);
    }
    strides
}

impl Tensor {
    /// A contiguous tensor owning `data`; the caller guarantees `data.len()` is the shape's product.
    pub(crate) fn from_contiguous(data: Vec<f32>, shape: Vec<usize>) -> Tensor {
        debug_assert_eq!(checked_numel(&shape), Some(data.len()));
        let strides = row_major_strides(&shape);
        Tensor { storage: Arc::new(Storage(data)), shape, strides, offset: 0 }
    }

    /// A tensor of `shape` filled with `value`.
    ///
    /// # Errors
    /// [`Error::Alloc`] when the shape's element count overflows `usize` or its memory cannot
    /// be allocated (the process is not aborted).
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// assert_eq!(Tensor::try_full(&[2], 7.5)?.to_vec(), vec![7.5, 7.5]);
    /// assert!(Tensor::try_zeros(&[1 << 40, 1 << 40]).is_err()); // more elements than usize holds
    /// assert!(Tensor::try_zeros(&[1 << 60]).is_err()); // 4 EiB: refused, not an abort
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    pub fn try_full(shape: &[usize], value: f32) -> Result<Tensor> {
        Ok(Tensor::from_contiguous(alloc::filled("Tensor::full", shape, value)?, shape.to_vec()))
    }

    /// A tensor of `shape` filled with zeros. Errors as [`Tensor::try_full`].
    pub fn try_zeros(shape: &[usize]) -> Result<Tensor> {
        Tensor::try_full(shape, 0.0)
    }

    /// A tensor of `shape` filled with ones. Errors as [`Tensor::try_full`].
    pub fn try_ones(shape: &[usize]) -> Result<Tensor> {
        Tensor::try_full(shape, 1.0)
    }

    /// [`Tensor::try_full`] for shapes the program chose itself (tests, small fixed sizes).
    ///
    /// # Panics
    /// With the message of [`Tensor::try_full`]'s error, when the shape cannot be allocated.
    /// For a shape that comes from a user or a file, call [`Tensor::try_full`].
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor::try_full(shape, value).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A tensor of `shape` filled with zeros. Panics like [`Tensor::full`]; see [`Tensor::try_zeros`].
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor of `shape` filled with ones. Panics like [`Tensor::full`]; see [`Tensor::try_ones`].
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// A tensor of `shape` holding `data` in row-major order, without copying it.
    ///
    /// # Errors
    /// [`Error::DataLength`] when `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        check_data_len("Tensor::from_vec", data.len(), shape)?;
        Ok(Tensor::from_contiguous(data, shape.to_vec()))
    }

    /// A tensor of `shape` holding a copy of `data` in row-major order.
    ///
    /// # Errors
    /// [`Error::DataLength`] when `data.len()` is not the product of `shape`.
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_data_len("Tensor::from_slice", data.len(), shape)?;
        Ok(Tensor::from_contiguous(data.to_vec(), shape.to_vec()))
    }

    /// A 0-dimensional tensor (shape `[]`) holding `value`.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_contiguous(vec![value], Vec::new())
    }

    /// The 1-D tensor `[0, 1, ..., n - 1]`. Values above 2^24 are rounded to the nearest f32.
    ///
    /// # Errors
    /// [`Error::Alloc`] when `n` floats cannot be allocated.
    pub fn try_arange(n: usize) -> Result<Tensor> {
        let mut data = alloc::filled("Tensor::arange", &[n], 0.0)?;
        data.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        Ok(Tensor::from_contiguous(data, vec![n]))
    }

    /// [`Tensor::try_arange`] for sizes the program chose itself.
    ///
    /// # Panics
    /// With the message of [`Tensor::try_arange`]'s error.
    pub fn arange(n: usize) -> Tensor {
        Tensor::try_arange(n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The size of every dimension.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The size of every dimension: the same as [`Tensor::shape`], under the name other
    /// tensor libraries use.
    pub fn dims(&self) -> &[usize] {
        &self.shape
    }

    /// The size of dimension `dim`.
    ///
    /// # Errors
    /// [`Error::Dim`] when `dim >= rank`.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        crate::error::check_dim("Tensor::dim", dim, &self.shape)?;
        Ok(self.shape[dim])
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements (1 for a 0-dimensional tensor).
    pub fn numel(&self) -> usize {
        // Validated when the shape was built.
        self.shape.iter().product()
    }

    /// The step in storage, in elements, of each dimension (0 for a broadcast dimension).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// True when the elements sit in storage in row-major order without gaps, so the tensor is
    /// one slice ([`Tensor::as_slice`]). Dimensions of size 1 may have any stride.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d == 0 {
                return true;
            }
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// The elements as one row-major slice, if the tensor [is contiguous](Tensor::is_contiguous).
    pub fn as_slice(&self) -> Option<&[f32]> {
        if !self.is_contiguous() {
            return None;
        }
        let n = self.numel();
        if n == 0 {
            return Some(&[]);
        }
        Some(&self.storage[self.offset..self.offset + n])
    }

    /// The elements in logical row-major order (always a copy).
    pub fn to_vec(&self) -> Vec<f32> {
        match self.as_slice() {
            Some(s) => s.to_vec(),
            None => layout::gather(self),
        }
    }

    /// The same values in contiguous storage: `self` (a cheap clone) when it already is
    /// contiguous, else a copy.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        Tensor::from_contiguous(layout::gather(self), self.shape.clone())
    }

    /// The value of a one-element tensor (of any rank).
    ///
    /// # Errors
    /// [`Error::Argument`] when the tensor does not hold exactly one element.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::argument(
                "Tensor::item",
                format!("needs exactly one element, the tensor has shape {:?} ({} elements)", self.shape, self.numel()),
            ));
        }
        Ok(self.storage[self.offset])
    }

    /// The element at `index` (one entry per dimension).
    ///
    /// # Errors
    /// [`Error::Argument`] when `index` has the wrong length, [`Error::Index`] when an entry
    /// is out of range.
    pub fn get(&self, index: &[usize]) -> Result<f32> {
        const OP: &str = "Tensor::get";
        if index.len() != self.rank() {
            return Err(Error::argument(
                OP,
                format!("index {index:?} has {} entries, shape {:?} has {} dims", index.len(), self.shape, self.rank()),
            ));
        }
        let mut at = self.offset;
        for (dim, ((&i, &size), &stride)) in index.iter().zip(&self.shape).zip(&self.strides).enumerate() {
            if i >= size {
                return Err(Error::Index { op: OP, index: i, position: dim, dim, size, shape: self.shape.clone() });
            }
            at += i * stride;
        }
        Ok(self.storage[at])
    }

    /// True when `self` and `other` are views of the same storage (no copy separates them).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }
}

impl fmt::Debug for Tensor {
    /// Shape, strides and up to the first 8 values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let values = self.to_vec();
        write!(f, "Tensor(shape={:?}, strides={:?}, values=[", self.shape, self.strides)?;
        for (i, v) in values.iter().take(SHOWN).enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{v}")?;
        }
        if values.len() > SHOWN {
            write!(f, ", ... {} more", values.len() - SHOWN)?;
        }
        write!(f, "])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_fill_and_shape() {
        let z = Tensor::zeros(&[2, 3]);
        assert_eq!((z.shape(), z.dims(), z.rank(), z.numel()), (&[2, 3][..], &[2, 3][..], 2, 6));
        assert_eq!(z.strides(), &[3, 1]);
        assert_eq!(Tensor::ones(&[2]).to_vec(), vec![1.0, 1.0]);
        assert_eq!(Tensor::full(&[1, 2], 7.5).to_vec(), vec![7.5, 7.5]);
        assert_eq!(Tensor::arange(4).to_vec(), vec![0.0, 1.0, 2.0, 3.0]);
        let s = Tensor::scalar(3.0);
        assert_eq!((s.rank(), s.numel(), s.item().unwrap()), (0, 1, 3.0));
        let x = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        assert_eq!(x.get(&[1, 0]).unwrap(), 3.0);
        assert_eq!(x.dim(1).unwrap(), 2);
        let e = Tensor::zeros(&[0, 3]);
        assert_eq!((e.numel(), e.to_vec(), e.is_contiguous()), (0, vec![], true));
        let c = x.clone();
        assert!(c.shares_storage(&x));
        assert!(x.contiguous().shares_storage(&x));
        assert!(format!("{x:?}").contains("shape=[2, 2]"));
    }

    #[test]
    fn constructors_refuse_shapes_that_overflow_or_cannot_be_allocated() {
        let overflow = [1usize << 32, 1 << 32, 1 << 2];
        let err = Tensor::try_zeros(&overflow).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Tensor::full: shape [4294967296, 4294967296, 4] has more elements than fit in usize"
        );
        assert!(Tensor::try_ones(&overflow).is_err());
        // 4 EiB: more than any 64-bit address space, so the allocator refuses (whatever the
        // overcommit policy), and the constructor says so instead of aborting.
        let err = Tensor::try_full(&[1 << 60], 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Tensor::full: shape [1152921504606846976] needs 4611686018427387904 bytes (4.0 EiB), which could not be allocated"
        );
        assert!(Tensor::try_arange(usize::MAX).is_err());
        let panic = std::panic::catch_unwind(|| Tensor::zeros(&overflow)).unwrap_err();
        assert!(panic.downcast_ref::<String>().unwrap().contains("more elements than fit in usize"));
        assert_eq!(Tensor::try_arange(3).unwrap().to_vec(), vec![0.0, 1.0, 2.0]);
        assert_eq!(Tensor::try_zeros(&[0, 1 << 62]).unwrap().numel(), 0);
    }

    #[test]
    fn constructor_and_accessor_errors_name_op_and_shapes() {
        let err = Tensor::from_vec(vec![1.0; 5], &[2, 3]).unwrap_err();
        assert_eq!(err.to_string(), "Tensor::from_vec: 5 values cannot fill shape [2, 3], which holds 6");
        let err = Tensor::from_slice(&[1.0; 7], &[2, 3]).unwrap_err();
        assert_eq!(err.to_string(), "Tensor::from_slice: 7 values cannot fill shape [2, 3], which holds 6");
        let x = Tensor::zeros(&[2, 3]);
        let err = x.item().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Tensor::item: needs exactly one element, the tensor has shape [2, 3] (6 elements)"
        );
        let err = x.get(&[1, 3]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Tensor::get: index 3 at position 1 is out of range for dim 1 of size 3 (shape [2, 3])"
        );
        let err = x.get(&[1]).unwrap_err();
        assert_eq!(err.to_string(), "Tensor::get: index [1] has 1 entries, shape [2, 3] has 2 dims");
        let err = x.dim(2).unwrap_err();
        assert_eq!(err.to_string(), "Tensor::dim: dim 2 is out of range for shape [2, 3] (rank 2)");
    }
}
