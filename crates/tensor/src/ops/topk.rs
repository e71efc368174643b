//! Positions of the largest values along the last dimension: argmax, top-k, and top-k of a
//! softmax computed in the same pass.
//!
//! Positions come back as an [`IndexTensor`] (`u32`), never as rounded floats.

use elide_kernels::topk::{argmax_rows, topk_rows};
use elide_kernels::{softmax_topk_rows, Isa};

use crate::error::{Error, Result};
use crate::indices::IndexTensor;
use crate::tensor::Tensor;

impl Tensor {
    /// The position of the largest value of each last-dim row. The result has the input's
    /// shape without its last dim.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![0.1, 0.7, 0.2, 0.9, 0.0, 0.1], &[2, 3])?;
    /// let best = x.argmax()?;
    /// assert_eq!((best.shape(), best.as_slice()), (&[2][..], &[1, 0][..]));
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Argument`] for a 0-dimensional tensor or an empty last dim (with rows);
    /// [`Error::Kernel`] when a row holds a NaN (a router fed NaN is a bug upstream; the
    /// message names the row).
    pub fn argmax(&self) -> Result<IndexTensor> {
        const OP: &str = "argmax";
        let (rows, cols) = self.rows_cols(OP)?;
        let shape = self.shape[..self.rank() - 1].to_vec();
        let mut out = vec![0u32; rows];
        if rows > 0 {
            if cols == 0 {
                return Err(Error::argument(OP, format!("the last dim of shape {:?} is empty", self.shape)));
            }
            let x = self.contiguous();
            argmax_rows(Isa::try_active()?, x.as_slice().unwrap_or_default(), rows, cols, &mut out)?;
        }
        Ok(IndexTensor::from_parts(out, shape))
    }

    /// The `k` largest values of each last-dim row, largest first, and their positions in the
    /// row. Both results have the input's shape with the last dim replaced by `k`.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let x = Tensor::from_vec(vec![0.1, 0.7, 0.2, 0.9], &[1, 4])?;
    /// let (values, positions) = x.topk(2)?;
    /// assert_eq!((values.to_vec(), positions.as_slice()), (vec![0.9, 0.7], &[3, 1][..]));
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Argument`] for a 0-dimensional tensor, or `k` not in `1..=cols`;
    /// [`Error::Kernel`] when a row holds a NaN.
    pub fn topk(&self, k: usize) -> Result<(Tensor, IndexTensor)> {
        const OP: &str = "topk";
        let (rows, cols, shape) = self.topk_shape(OP, k)?;
        let mut values = crate::pool::take(rows * k);
        let mut indices = vec![0u32; rows * k];
        if rows > 0 {
            let x = self.contiguous();
            topk_rows(Isa::try_active()?, x.as_slice().unwrap_or_default(), rows, cols, k, &mut values, &mut indices)?;
        }
        Ok((Tensor::from_contiguous(values, shape.clone()), IndexTensor::from_parts(indices, shape)))
    }

    /// The rows and columns of a selection of `k` along the last dim, and the shape of its
    /// result (this shape with the last dim `k`).
    fn topk_shape(&self, op: &'static str, k: usize) -> Result<(usize, usize, Vec<usize>)> {
        let (rows, cols) = self.rows_cols(op)?;
        if k == 0 || k > cols {
            return Err(Error::argument(
                op,
                format!("k = {k} must be between 1 and the last dim of shape {:?}", self.shape),
            ));
        }
        let mut shape = self.shape.clone();
        *shape.last_mut().unwrap_or(&mut 0) = k;
        Ok((rows, cols, shape))
    }

    /// The softmax along the last dim and the top `k` of each of its rows (values, largest
    /// first, and positions), in one pass: a token-choice router's probabilities and choice.
    /// For finite inputs the results are bit-identical to [`Tensor::softmax`] and then
    /// [`Tensor::topk`] of it.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let logits = Tensor::from_vec(vec![0.0, 2.0, 1.0, 2.0], &[1, 4])?;
    /// let (probs, top, positions) = logits.softmax_topk(2)?;
    /// assert_eq!(positions.as_slice(), &[1, 3]);
    /// assert_eq!(top.to_vec(), probs.topk(2)?.0.to_vec());
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Argument`] for a 0-dimensional tensor, or `k` not in `1..=cols`;
    /// [`Error::Kernel`] when a row holds a NaN or an infinity (naming the first such row).
    pub fn softmax_topk(&self, k: usize) -> Result<(Tensor, Tensor, IndexTensor)> {
        const OP: &str = "softmax_topk";
        let (rows, cols, shape) = self.topk_shape(OP, k)?;
        let mut probs = crate::pool::take(rows * cols);
        let mut values = crate::pool::take(rows * k);
        let mut indices = vec![0u32; rows * k];
        if rows > 0 {
            let x = self.contiguous();
            let x = x.as_slice().unwrap_or_default();
            softmax_topk_rows(Isa::try_active()?, x, rows, cols, k, &mut probs, &mut values, &mut indices)?;
        }
        Ok((
            Tensor::from_contiguous(probs, self.shape.clone()),
            Tensor::from_contiguous(values, shape.clone()),
            IndexTensor::from_parts(indices, shape),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random;

    /// Reference: sort each row's positions by value, descending, ties to the lower position.
    fn naive_topk(x: &Tensor, k: usize) -> (Vec<f32>, Vec<u32>) {
        let cols = *x.shape().last().unwrap();
        let (mut values, mut idx) = (Vec::new(), Vec::new());
        for row in x.to_vec().chunks(cols) {
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            values.extend(order[..k].iter().map(|&i| row[i]));
            idx.extend(order[..k].iter().map(|&i| i as u32));
        }
        (values, idx)
    }

    #[test]
    fn argmax_and_topk_match_the_reference() {
        let inputs = [random(&[4, 9], 1), random(&[3, 2, 40], 2), random(&[9, 5], 3).t().unwrap()];
        for x in &inputs {
            let cols = *x.shape().last().unwrap();
            let (_, best) = naive_topk(x, 1);
            let got = x.argmax().unwrap();
            assert_eq!((got.shape(), got.as_slice()), (&x.shape()[..x.rank() - 1], &best[..]));
            for k in [1, 3, cols] {
                let (values, idx) = naive_topk(x, k);
                let (v, i) = x.topk(k).unwrap();
                let mut shape = x.shape().to_vec();
                *shape.last_mut().unwrap() = k;
                assert_eq!((v.shape(), i.shape()), (&shape[..], &shape[..]));
                assert_eq!((v.to_vec(), i.into_vec()), (values, idx));
            }
        }
    }

    #[test]
    fn softmax_topk_is_softmax_then_topk() {
        // A strided view and a 3-D tensor: the fused op reads them through `contiguous`.
        let inputs = [random(&[9, 5], 4).t().unwrap(), random(&[3, 2, 40], 5), random(&[1, 64], 6)];
        for x in &inputs {
            let cols = *x.shape().last().unwrap();
            for k in [1, 2, cols] {
                let (probs, values, idx) = x.softmax_topk(k).unwrap();
                let want = x.softmax().unwrap();
                let (want_values, want_idx) = want.topk(k).unwrap();
                assert_eq!(probs.shape(), x.shape());
                assert_eq!(values.shape(), want_values.shape());
                assert_eq!(probs.to_vec(), want.to_vec());
                assert_eq!((values.to_vec(), idx.into_vec()), (want_values.to_vec(), want_idx.into_vec()));
            }
        }
        let x = Tensor::from_vec(vec![0.0, f32::INFINITY, 1.0, 2.0], &[2, 2]).unwrap();
        assert_eq!(x.softmax_topk(1).unwrap_err().to_string(), "softmax_topk_rows: row 0 holds a NaN or an infinity");
        assert_eq!(
            x.softmax_topk(3).unwrap_err().to_string(),
            "softmax_topk: k = 3 must be between 1 and the last dim of shape [2, 2]"
        );
        assert_eq!(Tensor::zeros(&[0, 3]).softmax_topk(2).unwrap().2.shape(), &[0, 2]);
    }

    #[test]
    fn ties_go_to_the_lower_position() {
        let x = Tensor::from_vec(vec![1.0, 3.0, 3.0, 2.0, 3.0], &[5]).unwrap();
        assert_eq!(x.argmax().unwrap().as_slice(), &[1]);
        assert_eq!(x.topk(3).unwrap().1.as_slice(), &[1, 2, 4]);
    }

    #[test]
    fn selection_errors_name_op_and_shapes() {
        let x = Tensor::zeros(&[2, 3]);
        let msg = |e: Error| e.to_string();
        assert_eq!(msg(x.topk(4).unwrap_err()), "topk: k = 4 must be between 1 and the last dim of shape [2, 3]");
        assert_eq!(msg(x.topk(0).unwrap_err()), "topk: k = 0 must be between 1 and the last dim of shape [2, 3]");
        assert_eq!(msg(Tensor::zeros(&[2, 0]).argmax().unwrap_err()), "argmax: the last dim of shape [2, 0] is empty");
        assert_eq!(
            msg(Tensor::scalar(1.0).argmax().unwrap_err()),
            "argmax: needs at least 1 dim, got a 0-dimensional tensor"
        );
        assert_eq!(Tensor::zeros(&[0, 3]).argmax().unwrap().shape(), &[0]);
        let nan = Tensor::from_vec(vec![1.0, 2.0, f32::NAN, 0.0], &[2, 2]).unwrap();
        assert!(matches!(nan.argmax(), Err(Error::Kernel(_))));
        assert!(msg(nan.topk(1).unwrap_err()).contains("NaN"));
    }
}
