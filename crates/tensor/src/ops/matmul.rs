//! Matrix products, on the kernels' GEMM read through strided views.
//!
//! Every matrix of a tensor is a strided 2-D view (`row stride`, `col stride`) at some offset
//! of its storage, so transposed, permuted, narrowed and broadcast operands reach the GEMM
//! as they are: nothing is copied. The GEMM's packing reads through the strides anyway.

use elide_kernels::gemm::{Gemm, MatMut, MatRef};
use elide_kernels::Par;
use rayon::prelude::*;

use crate::broadcast::broadcast_shape_for;
use crate::error::{Error, Result};
use crate::tensor::{checked_numel, Tensor};

/// Below this many multiply-adds (`m·n·k`, about 64³), one matrix does not repay splitting over
/// threads, so a batch of them is split by matrix instead.
const SMALL_GEMM: usize = 1 << 18;

impl Tensor {
    /// Matrix product: `[m, k] x [k, n] -> [m, n]`, or batched, `[..., m, k] x [..., k, n] ->
    /// [..., m, n]`, where the leading (batch) dims broadcast under NumPy's rule, as in PyTorch.
    /// Both operands need at least 2 dims (1-D operands are not promoted).
    ///
    /// Operands are read in place through their strides: a transposed or permuted operand is
    /// never copied. Batched products run one GEMM per matrix: small matrices in parallel over
    /// the batch, large ones one after another with each GEMM parallel inside. When the right
    /// operand is shared by the whole batch (e.g. `[B, T, d] x [d, n]`) and the left one's rows
    /// line up, the batch is folded into one tall GEMM. The result is the same for any number
    /// of threads.
    ///
    /// ```
    /// use elide_tensor::Tensor;
    /// let a = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
    /// let b = Tensor::ones(&[3, 1]);
    /// assert_eq!(a.matmul(&b)?.to_vec(), vec![6.0, 15.0]);
    /// assert_eq!(a.matmul(&a.t()?)?.shape(), &[2, 2]);
    /// # Ok::<(), elide_tensor::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when an operand has fewer than 2 dims, the inner dimensions differ, or
    /// the batch dims do not broadcast.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        const OP: &str = "matmul";
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra < 2 || rb < 2 {
            return Err(Error::shape(
                OP,
                format!("both operands need at least 2 dims: {:?} x {:?}", self.shape, rhs.shape),
            ));
        }
        let (m, k) = (self.shape[ra - 2], self.shape[ra - 1]);
        let (k2, n) = (rhs.shape[rb - 2], rhs.shape[rb - 1]);
        if k != k2 {
            return Err(Error::shape(OP, format!("inner dimensions differ: {:?} x {:?}", self.shape, rhs.shape)));
        }
        let batch = broadcast_shape_for(OP, &self.shape[..ra - 2], &rhs.shape[..rb - 2]).map_err(|_| {
            Error::shape(OP, format!("batch dimensions do not broadcast: {:?} x {:?}", self.shape, rhs.shape))
        })?;
        let nb = batch.len();
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        if checked_numel(&out_shape).is_none() {
            return Err(Error::shape(
                OP,
                format!("the result shape {out_shape:?} has more elements than fit in usize"),
            ));
        }
        let count: usize = batch.iter().product();
        if count * m * n == 0 || k == 0 {
            // An empty result, or an empty sum: zeros.
            return Tensor::try_zeros(&out_shape);
        }
        let a = self.broadcast_to_for(OP, &[&batch[..], &[m, k]].concat())?;
        let b = rhs.broadcast_to_for(OP, &[&batch[..], &[k, n]].concat())?;
        let mut out = crate::pool::take(count * m * n);

        // Fold the batch into the rows of one GEMM when B is the same matrix for every batch
        // entry and A's batch and row dims merge into one stride.
        let a_rows = &[&batch[..], &[m]].concat();
        if b.strides[..nb].iter().all(|&s| s == 0) {
            if let Some(row_stride) = merged_stride(a_rows, &a.strides[..nb + 1]) {
                let a_mat = MatRef::new(&a.storage[a.offset..], count * m, k, row_stride, a.strides[nb + 1])?;
                let b_mat = MatRef::new(&b.storage[b.offset..], k, n, b.strides[nb], b.strides[nb + 1])?;
                Gemm::default().run(MatMut::row_major(&mut out, count * m, n)?, a_mat, b_mat)?;
                return Ok(Tensor::from_contiguous(out, out_shape));
            }
        }

        let product = |i: usize, c: &mut [f32], par: Par| -> Result<()> {
            let a_at = a.offset + batch_offset(i, &batch, &a.strides[..nb]);
            let b_at = b.offset + batch_offset(i, &batch, &b.strides[..nb]);
            let a_mat = MatRef::new(&a.storage[a_at..], m, k, a.strides[nb], a.strides[nb + 1])?;
            let b_mat = MatRef::new(&b.storage[b_at..], k, n, b.strides[nb], b.strides[nb + 1])?;
            Gemm { par, ..Gemm::default() }.run(MatMut::row_major(c, m, n)?, a_mat, b_mat)?;
            Ok(())
        };
        if count > 1 && m * n * k < SMALL_GEMM {
            out.par_chunks_mut(m * n).enumerate().try_for_each(|(i, c)| product(i, c, Par::Seq))?;
        } else {
            out.chunks_mut(m * n).enumerate().try_for_each(|(i, c)| product(i, c, Par::Rayon))?;
        }
        Ok(Tensor::from_contiguous(out, out_shape))
    }
}

/// The storage offset of batch entry `i` (row-major over `batch`) under `strides`.
fn batch_offset(mut i: usize, batch: &[usize], strides: &[usize]) -> usize {
    let mut offset = 0;
    for (&size, &stride) in batch.iter().zip(strides).rev() {
        offset += (i % size) * stride;
        i /= size;
    }
    offset
}

/// The single stride that steps through dims `shape` (with `strides`) in row-major order, if
/// they merge into one dimension.
fn merged_stride(shape: &[usize], strides: &[usize]) -> Option<usize> {
    let mut dims = shape.iter().zip(strides).filter(|(&d, _)| d != 1).rev();
    let Some((&first_size, &first_stride)) = dims.next() else {
        return Some(0);
    };
    let mut span = first_size * first_stride;
    for (&size, &stride) in dims {
        if stride != span || stride == 0 {
            return None;
        }
        span *= size;
    }
    Some(first_stride)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, random, unflatten};

    /// The algorithmic reference: a triple loop over explicit indices, in f64.
    fn naive_matmul(a: &Tensor, b: &Tensor) -> (Vec<f32>, Vec<usize>) {
        let (ra, rb) = (a.rank(), b.rank());
        let (m, k, n) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 1]);
        let batch = crate::broadcast_shape(&a.shape()[..ra - 2], &b.shape()[..rb - 2]).unwrap();
        let count: usize = batch.iter().product();
        let mut out = Vec::new();
        for bi in 0..count {
            let idx = unflatten(bi, &batch);
            let pick = |t: &Tensor, r: usize, c: usize| {
                let lead = batch.len() - (t.rank() - 2);
                let mut i: Vec<usize> =
                    (0..t.rank() - 2).map(|d| if t.shape()[d] == 1 { 0 } else { idx[lead + d] }).collect();
                i.extend([r, c]);
                t.get(&i).unwrap() as f64
            };
            for i in 0..m {
                for j in 0..n {
                    out.push((0..k).map(|p| pick(a, i, p) * pick(b, p, j)).sum::<f64>() as f32);
                }
            }
        }
        let mut shape = batch;
        shape.extend([m, n]);
        (out, shape)
    }

    #[track_caller]
    fn check(a: &Tensor, b: &Tensor) {
        let got = a.matmul(b).unwrap();
        let (want, shape) = naive_matmul(a, b);
        assert_eq!(got.shape(), &shape[..]);
        assert_close(&got.to_vec(), &want, 1e-5);
    }

    #[test]
    fn plain_transposed_permuted_and_narrowed_operands() {
        let a = random(&[5, 7], 1);
        let b = random(&[7, 3], 2);
        check(&a, &b);
        check(&random(&[7, 5], 3).t().unwrap(), &random(&[3, 7], 4).t().unwrap());
        check(&random(&[9, 12], 5).narrow(0, 2, 5).unwrap().narrow(1, 3, 7).unwrap(), &b);
        // A permuted 3-D tensor whose matrices are strided views of non-adjacent dims.
        let p = random(&[3, 4, 2], 6).permute(&[2, 0, 1]).unwrap(); // [2, 3, 4]
        check(&p, &random(&[2, 4, 5], 7).transpose(1, 2).unwrap().transpose(1, 2).unwrap());
        // Large enough to cross the GEMM's cache blocks.
        check(&random(&[70, 300], 8).t().unwrap(), &random(&[70, 65], 9));
    }

    #[test]
    fn batched_products_broadcast_batch_dims() {
        check(&random(&[2, 3, 4], 1), &random(&[2, 4, 5], 2));
        check(&random(&[2, 1, 3, 4], 3), &random(&[5, 4, 2], 4));
        check(&random(&[3, 4], 5), &random(&[2, 2, 4, 3], 6));
        // A shared right operand: folded into one tall GEMM.
        check(&random(&[2, 3, 4], 7), &random(&[4, 5], 8));
        check(&random(&[2, 3, 4], 9).broadcast_to(&[3, 2, 3, 4]).unwrap(), &random(&[4, 1], 10));
        // Shared right operand, but A's rows do not merge with its batch dim.
        check(&random(&[3, 2, 4], 11).transpose(0, 1).unwrap(), &random(&[4, 5], 12));
        // Large matrices: sequential batch, parallel GEMM.
        check(&random(&[2, 70, 66], 13), &random(&[2, 66, 70], 14));
    }

    #[test]
    fn empty_products_are_zeros() {
        let z = Tensor::zeros(&[2, 0]).matmul(&Tensor::zeros(&[0, 3])).unwrap();
        assert_eq!((z.shape(), z.to_vec()), (&[2, 3][..], vec![0.0; 6]));
        let e = Tensor::zeros(&[0, 2, 3]).matmul(&Tensor::zeros(&[3, 4])).unwrap();
        assert_eq!(e.shape(), &[0, 2, 4]);
    }

    #[test]
    fn matmul_errors_name_the_shapes() {
        let msg = |a: &[usize], b: &[usize]| Tensor::zeros(a).matmul(&Tensor::zeros(b)).unwrap_err().to_string();
        assert_eq!(msg(&[2, 3], &[4, 5]), "matmul: inner dimensions differ: [2, 3] x [4, 5]");
        assert_eq!(msg(&[3], &[3, 4]), "matmul: both operands need at least 2 dims: [3] x [3, 4]");
        assert_eq!(msg(&[2, 3, 4], &[5, 4, 2]), "matmul: batch dimensions do not broadcast: [2, 3, 4] x [5, 4, 2]");
    }

    #[test]
    fn merged_stride_examples() {
        assert_eq!(merged_stride(&[2, 3], &[12, 4]), Some(4));
        assert_eq!(merged_stride(&[2, 1, 3], &[12, 99, 4]), Some(4));
        assert_eq!(merged_stride(&[2, 3], &[4, 12]), None);
        assert_eq!(merged_stride(&[2, 3], &[0, 4]), None);
        assert_eq!(merged_stride(&[1, 1], &[5, 6]), Some(0));
    }
}
