//! Forward operations on tensors, one file per family. Each op checks its arguments, lays its
//! operands out for a slice kernel of `elide-kernels`, and returns a new contiguous tensor.

mod binary;
mod index;
mod matmul;
mod nn;
mod reduce;
mod topk;
mod unary;

#[cfg(test)]
mod tests {
    use crate::testing::random;

    /// A small pipeline touching every threaded path: folded, batched-parallel and
    /// batched-sequential GEMMs, softmax, norms, reductions and chunked broadcasting.
    fn pipeline() -> Vec<u32> {
        let x = random(&[3, 40, 64], 1);
        let w = random(&[96, 64], 2);
        let h = x.matmul(&w.t().unwrap()).unwrap(); // folded into one [120, 64] x [64, 96]
        let scores = h.matmul(&h.transpose(1, 2).unwrap()).unwrap(); // small batch, parallel over batch
        let big = random(&[2, 80, 70], 3).matmul(&random(&[2, 70, 90], 4)).unwrap(); // parallel inside
        let p = scores.softmax().unwrap();
        let n = h.layer_norm(None, None, 1e-5).unwrap().rms_norm(None, 1e-6).unwrap();
        let wide = random(&[300, 200], 5).t().unwrap().add(&random(&[300], 6)).unwrap(); // chunked runs
        let sums = wide.sum(0, false).unwrap().sum_all();
        [p, n, big.log_softmax().unwrap(), wide, sums].iter().flat_map(|t| t.to_vec()).map(f32::to_bits).collect()
    }

    #[test]
    fn results_are_bit_identical_for_one_and_two_threads() {
        let in_pool = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(pipeline);
        let one = in_pool(1);
        assert_eq!(one, in_pool(2));
        assert_eq!(one, pipeline());
    }
}
