//! [`Block`]: anything that maps `[rows, d] → [rows, d]`, the unit a mixture-of-depths layer
//! skips rows around and an early-exit stack is built from.
//!
//! A block sees only the rows it is given: a mixture-of-depths layer hands it the compact batch
//! of chosen rows, an early-exit stack the rows still active. So a block's cost is its cost on
//! those rows, and [`Block::forward_flops`] says what that is. [`MlpBlock`] (Linear → GELU →
//! Linear on the grouped GEMM, bias and activation fused into its store) is the block the tests
//! and benchmarks use; [`Residual`] adds its input back (`x + f(x)`).

use crate::error::{Error, Result};
use crate::gathered::{grouped_linear, GroupedWeight, RowSource, WeightLayout};
use crate::plan::{Capacity, DispatchPlan};
use elide_autodiff::{init, Param, Scope, Var};
use elide_kernels::gemm::Activation;
use elide_tensor::{Rng, Tensor};
use std::sync::Arc;

/// A computation from `[rows, d]` to `[rows, d]` on [`Var`]s, differentiable in its input and
/// parameters, whose rows do not interact through anything the caller must know about (an MLP
/// treats rows independently; an attention block reads the rows it is given as its sequence).
pub trait Block: Send + Sync {
    /// The row width `d` of input and output.
    fn d_model(&self) -> usize;

    /// `x: [rows, d]` through the block, `[rows, d]` out; `rows` may be 0.
    ///
    /// # Errors
    /// If `x` is not `[rows, d_model]`.
    fn forward(&self, x: &Var) -> Result<Var>;

    /// Multiply-adds ×2 of one forward pass over `rows` rows: the FLOPs it runs.
    fn forward_flops(&self, rows: usize) -> f64;
}

/// The plan that sends rows `0..rows` to one destination in order: a dense layer as a grouped
/// one.
fn all_rows(rows: usize) -> Result<Arc<DispatchPlan>> {
    let tokens: Vec<u32> = (0..rows as u32).collect();
    Ok(Arc::new(DispatchPlan::new(&tokens, &vec![0; rows], rows, 1, Capacity::Dropless)?))
}

/// `act(x·W1 + b1)·W2 + b2`, weights `W1 [1, d, h]`, `W2 [1, h, d]` (one destination of the
/// grouped GEMM: bias and activation fused into the GEMM's store at inference).
pub struct MlpBlock {
    activation: Activation,
    d_model: usize,
    hidden: usize,
    w1: Param,
    b1: Param,
    w2: Param,
    b2: Param,
}

impl MlpBlock {
    /// Registers `w1`, `b1`, `w2`, `b2` under `scope`, weights drawn from `N(0, 1/fan_in)`,
    /// biases zero.
    ///
    /// # Errors
    /// [`Error::Argument`] if `d_model` or `hidden` is 0; a registration error if a name is
    /// taken.
    pub fn new(
        scope: &mut Scope<'_>,
        d_model: usize,
        hidden: usize,
        activation: Activation,
        rng: &mut Rng,
    ) -> Result<MlpBlock> {
        if d_model == 0 || hidden == 0 {
            return Err(Error::argument(
                "MlpBlock::new",
                format!("d_model = {d_model} and hidden = {hidden} must both be > 0"),
            ));
        }
        let (d, h) = (d_model, hidden);
        let w1 = scope.param("w1", init::lecun_normal(&[1, d, h], WeightLayout::InOut, rng)?)?;
        let b1 = scope.param("b1", Tensor::zeros(&[1, h]))?;
        let w2 = scope.param("w2", init::lecun_normal(&[1, h, d], WeightLayout::InOut, rng)?)?;
        let b2 = scope.param("b2", Tensor::zeros(&[1, d]))?;
        Ok(MlpBlock { activation, d_model, hidden, w1, b1, w2, b2 })
    }

    /// The hidden width `h`.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// The parameters `w1 [1, d, h]`, `b1 [1, h]`, `w2 [1, h, d]`, `b2 [1, d]`.
    pub fn params(&self) -> [&Param; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }
}

impl Block for MlpBlock {
    fn d_model(&self) -> usize {
        self.d_model
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        let d = self.d_model;
        if x.shape().len() != 2 || x.shape()[1] != d {
            return Err(Error::shape("MlpBlock", format!("x must be [rows, {d}], got {:?}", x.shape())));
        }
        let plan = all_rows(x.shape()[0])?;
        let (w1, b1, w2, b2) = (self.w1.var(), self.b1.var(), self.w2.var(), self.b2.var());
        let up = GroupedWeight::new(&w1, WeightLayout::InOut).with_bias(&b1);
        let h = grouped_linear(x, RowSource::Slots, &plan, up, self.activation)?;
        let down = GroupedWeight::new(&w2, WeightLayout::InOut).with_bias(&b2);
        grouped_linear(&h, RowSource::Slots, &plan, down, Activation::Identity)
    }

    fn forward_flops(&self, rows: usize) -> f64 {
        4.0 * (rows * self.d_model * self.hidden) as f64
    }
}

/// `x + f(x)`: a block with its residual connection.
pub struct Residual<B>(pub B);

impl<B: Block> Block for Residual<B> {
    fn d_model(&self) -> usize {
        self.0.d_model()
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        Ok(x.add(&self.0.forward(x)?)?)
    }

    fn forward_flops(&self, rows: usize) -> f64 {
        self.0.forward_flops(rows) + (rows * self.d_model()) as f64
    }
}

/// A shared reference to a block is a block (so a layer can borrow one).
impl<B: Block + ?Sized> Block for &B {
    fn d_model(&self) -> usize {
        (**self).d_model()
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        (**self).forward(x)
    }

    fn forward_flops(&self, rows: usize) -> f64 {
        (**self).forward_flops(rows)
    }
}

/// A boxed block is a block (so a stack can hold blocks of different types).
impl<B: Block + ?Sized> Block for Box<B> {
    fn d_model(&self) -> usize {
        (**self).d_model()
    }

    fn forward(&self, x: &Var) -> Result<Var> {
        (**self).forward(x)
    }

    fn forward_flops(&self, rows: usize) -> f64 {
        (**self).forward_flops(rows)
    }
}

/// Naive references shared by the tests of the layers built on blocks.
#[cfg(test)]
pub(crate) mod reference {
    use super::*;
    use elide_autodiff::Gradients;

    /// `act(x·W1 + b1)·W2 + b2` of `block`, one row at a time in f64.
    pub(crate) fn naive_mlp(block: &MlpBlock, x: &[f32]) -> Vec<f32> {
        let (d, h) = (block.d_model, block.hidden);
        let [w1, b1, w2, b2] = block.params().map(|p| p.value().to_vec());
        x.chunks(d)
            .flat_map(|row| {
                let hid: Vec<f64> = (0..h)
                    .map(|j| {
                        let z = b1[j] as f64 + (0..d).map(|i| row[i] as f64 * w1[i * h + j] as f64).sum::<f64>();
                        block.activation.reference(z)
                    })
                    .collect();
                (0..d)
                    .map(|k| (b2[k] as f64 + (0..h).map(|j| hid[j] * w2[j * d + k] as f64).sum::<f64>()) as f32)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Checks the gradients `grads` of the scalar `loss()` with respect to `params` against
    /// central finite differences (step 1e-2, tolerance `2e-3 + 2e-2·|numeric|`, the gradcheck
    /// defaults), moving one parameter element at a time and restoring it.
    #[track_caller]
    pub(crate) fn check_param_grads(loss: impl Fn() -> Result<Var>, params: &[&Param]) {
        let grads: Gradients = loss().unwrap().backward().unwrap();
        let step = 1e-2f32;
        for p in params {
            let base = p.value();
            let values = base.to_vec();
            let analytic = grads.get(p).map(|g| g.to_vec()).unwrap_or_else(|| vec![0.0; values.len()]);
            for i in 0..values.len() {
                let at = |delta: f32| {
                    let mut moved = values.clone();
                    moved[i] += delta;
                    p.set(Tensor::from_vec(moved, base.shape()).unwrap()).unwrap();
                    let v = elide_autodiff::no_grad(|| loss().unwrap().value().item().unwrap()) as f64;
                    p.set(base.clone()).unwrap();
                    v
                };
                let numeric = (at(step) - at(-step)) / (2.0 * step as f64);
                let a = analytic[i] as f64;
                assert!(
                    (a - numeric).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                    "{} [{i}]: analytic {a}, numeric {numeric}",
                    p.name()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::naive_mlp;
    use super::*;
    use crate::testing::check_grad_many;
    use elide_autodiff::ParamStore;

    fn block(d: usize, h: usize, seed: u64) -> (ParamStore, MlpBlock) {
        let mut store = ParamStore::new();
        let b = MlpBlock::new(&mut store.scope("b"), d, h, Activation::Gelu, &mut Rng::seed(seed)).unwrap();
        // Non-zero biases, so a lost bias would show.
        b.b1.set(Tensor::randn(&[1, h], &mut Rng::seed(seed + 1))).unwrap();
        b.b2.set(Tensor::randn(&[1, d], &mut Rng::seed(seed + 2))).unwrap();
        (store, b)
    }

    #[test]
    fn mlp_block_matches_the_naive_reference() {
        for (rows, d, h) in [(0, 3, 5), (1, 1, 7), (7, 9, 17), (33, 16, 33), (257, 8, 12)] {
            let (_store, b) = block(d, h, rows as u64);
            let x = Tensor::randn(&[rows, d], &mut Rng::seed(3));
            let got = b.forward(&Var::constant(x.clone())).unwrap();
            assert_eq!(got.shape(), &[rows, d]);
            let want = naive_mlp(&b, &x.to_vec());
            for (i, (g, w)) in got.value().to_vec().iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "rows={rows} d={d} h={h} [{i}]: {g} vs {w}");
            }
            assert_eq!(b.forward_flops(rows), 4.0 * (rows * d * h) as f64);
            let res = Residual(b).forward(&Var::constant(x.clone())).unwrap().value().to_vec();
            for (i, ((r, g), x)) in res.iter().zip(got.value().to_vec()).zip(x.to_vec()).enumerate() {
                assert_eq!(*r, g + x, "residual [{i}]");
            }
        }
    }

    #[test]
    fn mlp_block_gradients_match_finite_differences() {
        let (d, h) = (4, 6);
        let mut rng = Rng::seed(9);
        let inputs = [
            Tensor::randn(&[5, d], &mut rng),
            Tensor::randn(&[1, d, h], &mut rng),
            Tensor::randn(&[1, h], &mut rng),
            Tensor::randn(&[1, h, d], &mut rng),
            Tensor::randn(&[1, d], &mut rng),
        ];
        // The block's forward on explicit weights: set the parameters, differentiate through x,
        // then check the parameters' gradients through a second function of the same shape.
        let (_store, b) = block(d, h, 1);
        check_grad_many(|v| Residual(&b).forward(&v[0]), &inputs[..1]);
        let f = |v: &[Var]| {
            let plan = all_rows(v[0].shape()[0])?;
            let up = GroupedWeight::new(&v[1], WeightLayout::InOut).with_bias(&v[2]);
            let hid = grouped_linear(&v[0], RowSource::Slots, &plan, up, Activation::Gelu)?;
            let down = GroupedWeight::new(&v[3], WeightLayout::InOut).with_bias(&v[4]);
            grouped_linear(&hid, RowSource::Slots, &plan, down, Activation::Identity)
        };
        check_grad_many(f, &inputs);
        // And the parameters of a registered block receive gradients.
        let x = Var::constant(inputs[0].clone());
        let grads = b.forward(&x).unwrap().square().sum_all().backward().unwrap();
        assert!(b.params().iter().all(|p| grads.get(p).is_some_and(|g| g.to_vec().iter().any(|&v| v != 0.0))));
    }

    #[test]
    fn bad_sizes_and_shapes_are_refused() {
        let mut store = ParamStore::new();
        let err = MlpBlock::new(&mut store.scope("b"), 0, 4, Activation::Gelu, &mut Rng::seed(0)).err().unwrap();
        assert_eq!(err.to_string(), "MlpBlock::new: d_model = 0 and hidden = 4 must both be > 0");
        let (_store, b) = block(4, 6, 2);
        let err = b.forward(&Var::constant(Tensor::zeros(&[3, 5]))).unwrap_err();
        assert_eq!(err.to_string(), "MlpBlock: x must be [rows, 4], got [3, 5]");
    }
}
