//! Elementwise binary ops with NumPy broadcasting.
//!
//! The output takes the broadcast shape of the operands; both operands become stride-0 views
//! of that shape, and the output is filled in contiguous runs (see `layout.rs`), each one call
//! of the vectorised kernel `elementwise::binary`. A broadcast operand reaches the kernel as a
//! single value, a strided one as a copied run.

use elide_kernels::elementwise::{binary, scale_add, BinaryOp};
use elide_kernels::Isa;

use crate::broadcast::broadcast_shape_for;
use crate::error::Result;
use crate::layout::map_runs;
use crate::tensor::Tensor;

impl Tensor {
    /// `op(self, other)` elementwise, after broadcasting both to their common shape.
    fn binary_op(&self, other: &Tensor, op: BinaryOp, name: &'static str) -> Result<Tensor> {
        let shape = broadcast_shape_for(name, &self.shape, &other.shape)?;
        let a = self.broadcast_to_for(name, &shape)?;
        let b = other.broadcast_to_for(name, &shape)?;
        let isa = Isa::try_active()?;
        map_runs(name, &shape, &[&a, &b], |x, out| Ok(binary(isa, op, x[0], x[1], out)?))
    }

    /// `self + other`, elementwise with broadcasting.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2])?;
    /// let row = Tensor::from_vec(vec![10.0, 20.0], &[2])?;
    /// assert_eq!(x.add(&row)?.to_vec(), vec![11.0, 22.0, 13.0, 24.0]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) when the shapes do not broadcast.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, BinaryOp::Add, "add")
    }

    /// `self - other`, elementwise with broadcasting. Errors as [`Tensor::add`].
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, BinaryOp::Sub, "sub")
    }

    /// `self · other`, elementwise with broadcasting. Errors as [`Tensor::add`].
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, BinaryOp::Mul, "mul")
    }

    /// `self / other`, elementwise with broadcasting (IEEE division: `x / 0` is ±inf or NaN).
    /// Errors as [`Tensor::add`].
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, BinaryOp::Div, "div")
    }

    /// The larger of `self` and `other`, elementwise with broadcasting; NaN if either is NaN.
    /// Errors as [`Tensor::add`].
    pub fn maximum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, BinaryOp::Max, "maximum")
    }

    /// The smaller of `self` and `other`, elementwise with broadcasting; NaN if either is NaN.
    /// Errors as [`Tensor::add`].
    pub fn minimum(&self, other: &Tensor) -> Result<Tensor> {
        self.binary_op(other, BinaryOp::Min, "minimum")
    }

    /// `self + other` for operands of the same shape, written into `self`'s buffer when `self`
    /// is its only user (contiguous, unshared storage of exactly its size) — the gradient
    /// accumulation of a backward pass, which would otherwise allocate a new tensor per add.
    /// Otherwise (or for shapes that broadcast) the same as [`Tensor::add`]. The result is
    /// bit-identical to [`Tensor::add`] either way.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let acc = Tensor::from_vec(vec![1.0, 2.0], &[2])?;
    /// let sum = acc.add_owned(&Tensor::from_vec(vec![10.0, 20.0], &[2])?)?;
    /// assert_eq!(sum.to_vec(), vec![11.0, 22.0]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Tensor::add`]: shapes that do not broadcast.
    pub fn add_owned(mut self, other: &Tensor) -> Result<Tensor> {
        if self.shape == other.shape && self.offset == 0 && self.is_contiguous() {
            if let (Some(storage), Some(src)) = (std::sync::Arc::get_mut(&mut self.storage), other.as_slice()) {
                if storage.0.len() == src.len() {
                    // y + 1·x: the multiply is exact, so this is the same sum as `add`.
                    scale_add(Isa::active(), 1.0, src, &mut storage.0)?;
                    return Ok(self);
                }
            }
        }
        self.add(other)
    }

    /// `self + v` for every element.
    pub fn add_scalar(&self, v: f32) -> Tensor {
        self.scalar_op(v, BinaryOp::Add)
    }

    /// `self - v` for every element.
    pub fn sub_scalar(&self, v: f32) -> Tensor {
        self.scalar_op(v, BinaryOp::Sub)
    }

    /// `self · v` for every element.
    pub fn mul_scalar(&self, v: f32) -> Tensor {
        self.scalar_op(v, BinaryOp::Mul)
    }

    /// `self / v` for every element.
    pub fn div_scalar(&self, v: f32) -> Tensor {
        self.scalar_op(v, BinaryOp::Div)
    }

    /// `max(self, v)` for every element (NaN stays NaN).
    pub fn maximum_scalar(&self, v: f32) -> Tensor {
        self.scalar_op(v, BinaryOp::Max)
    }

    /// `min(self, v)` for every element (NaN stays NaN).
    pub fn minimum_scalar(&self, v: f32) -> Tensor {
        self.scalar_op(v, BinaryOp::Min)
    }

    /// Panics like [`Tensor::map`] when the result cannot be allocated.
    fn scalar_op(&self, v: f32, op: BinaryOp) -> Tensor {
        let isa = Isa::active();
        let value = [v];
        let result = map_runs("scalar op", &self.shape, &[self], |x, out| Ok(binary(isa, op, x[0], &value, out)?));
        // Runs always match their output (or are one value), which the kernel accepts; the one
        // failure left is an output this tensor's shape cannot allocate (a broadcast view of a
        // huge shape), documented under # Panics.
        result.unwrap_or_else(|e| panic!("{e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random, unflatten};
    use proptest::prelude::*;

    const OPS: [(BinaryOp, &str); 6] = [
        (BinaryOp::Add, "add"),
        (BinaryOp::Sub, "sub"),
        (BinaryOp::Mul, "mul"),
        (BinaryOp::Div, "div"),
        (BinaryOp::Max, "maximum"),
        (BinaryOp::Min, "minimum"),
    ];

    fn call(a: &Tensor, b: &Tensor, op: BinaryOp) -> Result<Tensor> {
        match op {
            BinaryOp::Add => a.add(b),
            BinaryOp::Sub => a.sub(b),
            BinaryOp::Mul => a.mul(b),
            BinaryOp::Div => a.div(b),
            BinaryOp::Max => a.maximum(b),
            BinaryOp::Min => a.minimum(b),
        }
    }

    /// The reference: every output index mapped back to each operand by the broadcast rule.
    fn naive(a: &Tensor, b: &Tensor, op: BinaryOp) -> Vec<f32> {
        let shape = crate::broadcast_shape(a.shape(), b.shape()).unwrap();
        let pick = |t: &Tensor, idx: &[usize]| {
            let lead = idx.len() - t.rank();
            let i: Vec<usize> = (0..t.rank()).map(|d| if t.shape()[d] == 1 { 0 } else { idx[lead + d] }).collect();
            t.get(&i).unwrap() as f64
        };
        (0..shape.iter().product())
            .map(|f| {
                let idx = unflatten(f, &shape);
                op.reference(pick(a, &idx), pick(b, &idx)) as f32
            })
            .collect()
    }

    #[test]
    fn every_op_matches_the_reference_on_strided_and_broadcast_operands() {
        let a = random(&[3, 4, 5], 1);
        let cases = [
            (a.clone(), random(&[3, 4, 5], 2)),
            (a.clone(), random(&[5], 3)),
            (a.clone(), random(&[4, 1], 4)),
            (random(&[3, 1, 5], 5), random(&[4, 5], 6)),
            (random(&[5, 4, 3], 7).permute(&[2, 1, 0]).unwrap(), a.clone()),
            (a.narrow(2, 1, 3).unwrap(), random(&[3, 4, 3], 8).transpose(0, 2).unwrap().transpose(0, 2).unwrap()),
            (Tensor::scalar(0.5), a.t_last()),
            (random(&[1], 9), random(&[300, 200], 10)),
        ];
        for (x, y) in &cases {
            for (op, _) in OPS {
                assert_close(&call(x, y, op).unwrap().to_vec(), &naive(x, y, op), 1e-6);
                assert_close(&call(y, x, op).unwrap().to_vec(), &naive(y, x, op), 1e-6);
            }
        }
        type ScalarOp = fn(&Tensor, f32) -> Tensor;
        let scalar_ops: [(ScalarOp, BinaryOp); 6] = [
            (Tensor::add_scalar, BinaryOp::Add),
            (Tensor::sub_scalar, BinaryOp::Sub),
            (Tensor::mul_scalar, BinaryOp::Mul),
            (Tensor::div_scalar, BinaryOp::Div),
            (Tensor::maximum_scalar, BinaryOp::Max),
            (Tensor::minimum_scalar, BinaryOp::Min),
        ];
        let t = a.t_last();
        for (f, op) in scalar_ops {
            assert_close(&f(&t, 0.25).to_vec(), &naive(&t, &Tensor::scalar(0.25), op), 1e-6);
        }
    }

    #[test]
    fn binary_errors_name_op_and_shapes() {
        let (a, b) = (Tensor::zeros(&[2, 3]), Tensor::zeros(&[4]));
        for (op, name) in OPS {
            let err = call(&a, &b, op).unwrap_err();
            assert_eq!(err.to_string(), format!("{name}: shapes [2, 3] and [4] do not broadcast"));
        }
    }

    #[test]
    fn add_owned_reuses_an_unshared_buffer_and_leaves_a_shared_one_alone() {
        let a = random(&[70, 33], 1);
        let b = random(&[70, 33], 2);
        let want: Vec<u32> = a.add(&b).unwrap().to_vec().iter().map(|v| v.to_bits()).collect();
        // Shared: the clone keeps its values, the sum is a new tensor.
        let kept = a.clone();
        let sum = a.add_owned(&b).unwrap();
        assert!(!sum.shares_storage(&kept));
        assert_eq!(sum.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        assert_eq!(kept.to_vec(), random(&[70, 33], 1).to_vec());
        // Unshared: summed in place, same bits as `add`.
        let ptr = kept.as_slice().unwrap().as_ptr();
        let sum = kept.add_owned(&b).unwrap();
        assert_eq!(sum.as_slice().unwrap().as_ptr(), ptr);
        assert_eq!(sum.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
        // Broadcasting falls back to `add`.
        let row = random(&[33], 3);
        assert_eq!(sum.clone().add_owned(&row).unwrap().to_vec(), sum.add(&row).unwrap().to_vec());
    }

    #[test]
    fn nan_propagates_through_max_and_min() {
        let a = Tensor::from_vec(vec![f32::NAN, 1.0], &[2]).unwrap();
        let m = a.maximum_scalar(0.0).to_vec();
        assert!(m[0].is_nan() && m[1] == 1.0);
        assert!(a.minimum(&Tensor::scalar(5.0)).unwrap().to_vec()[0].is_nan());
    }

    impl Tensor {
        /// The tensor with its last two dims transposed (a strided test operand).
        fn t_last(&self) -> Tensor {
            let r = self.rank();
            self.transpose(r - 2, r - 1).unwrap()
        }
    }

    proptest! {
        #[test]
        fn broadcasting_matches_explicit_indices(
            base in prop::collection::vec(1usize..4, 0..4),
            ones in any::<u8>(),
            drop in 0usize..4,
            transpose in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let small: Vec<usize> = base[drop.min(base.len())..].iter().enumerate()
                .map(|(i, &d)| if ones >> i & 1 == 1 { 1 } else { d }).collect();
            let mut a = random(&base, seed);
            if transpose && a.rank() >= 2 {
                a = a.t_last().contiguous().t_last();
            }
            let b = random(&small, seed ^ 1);
            for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Max] {
                let got = call(&a, &b, op).unwrap();
                prop_assert_eq!(got.shape(), &crate::broadcast_shape(&base, &small).unwrap()[..]);
                prop_assert_eq!(got.to_vec(), naive(&a, &b, op));
                prop_assert_eq!(call(&b, &a, op).unwrap().to_vec(), naive(&b, &a, op));
            }
        }
    }
}
