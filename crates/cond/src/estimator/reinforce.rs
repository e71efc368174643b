//! REINFORCE for stochastic binary gates (Williams 1992; the unbiased estimator of Bengio,
//! Léonard, Courville, arXiv 1308.3432), with a moving-average baseline.
//!
//! Gates `z_i ~ Bernoulli(σ(ℓ_i))`, independent, and a cost `f(z)` that need not be
//! differentiable (or even computable as a tensor op). The score-function identity
//!
//! ```text
//! ∇_ℓ E[f(z)] = E[(f(z) − b)·∇_ℓ log p(z)],   ∂ log p(z)/∂ℓ_i = z_i − σ(ℓ_i),
//! ```
//!
//! holds for any `b` independent of the sample `z`, because `E[∇ log p(z)] = 0`. So descending
//! the surrogate `(f(z) − b)·log p(z)`, with `f(z) − b` held constant, follows an unbiased
//! estimate of the gradient of the expected cost; a baseline near `E[f]` lowers its variance.

use super::sample_bernoulli;
use crate::error::{Error, Result};
use elide_autodiff::Var;
use elide_tensor::{Rng, Tensor};

/// `σ(x)` in f64.
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `log σ(x) = −ln(1 + e^(−x))`, stable for large `|x|`.
fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

/// A batch of sampled binary gates and the logits they were drawn from: `[rows, n]`, one row
/// per sample of the `n` gates, each row scored by its own cost.
///
/// ```
/// use elide_autodiff::Var;
/// use elide_cond::{BernoulliGates, MovingAverageBaseline};
/// use elide_tensor::{Rng, Tensor};
///
/// let logits = Var::leaf(Tensor::zeros(&[4, 3])); // 4 rows of 3 gates, each on with p = ½
/// let gates = BernoulliGates::sample(&logits, &mut Rng::seed(0))?;
/// // A cost computed outside autodiff: here, how many gates are on (work done).
/// let costs: Vec<f32> = gates.gates().to_vec().chunks(3).map(|row| row.iter().sum()).collect();
/// let mut baseline = MovingAverageBaseline::new(0.9)?;
/// let surrogate = gates.reinforce_loss(&costs, &mut baseline)?; // uses b = 0, then updates b
/// assert_eq!(baseline.updates(), 1);
/// let grads = surrogate.backward()?; // ∇ ≈ ∇ E[cost], unbiased
/// assert_eq!(grads.of(&logits).unwrap().shape(), &[4, 3]);
/// # Ok::<(), elide_cond::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BernoulliGates {
    logits: Var,
    gates: Tensor,
}

impl BernoulliGates {
    /// Draws `z ~ Bernoulli(σ(ℓ))` for each of the `[rows, n]` logits, as `1[ℓ + s > 0]` with
    /// one logistic sample `s` from `rng` per logit, in row-major order.
    ///
    /// # Errors
    /// [`Error::Shape`] unless `logits` is `[rows, n]` with `n ≥ 1`; [`Error::Argument`] for a
    /// NaN or infinite logit (naming its row and column).
    pub fn sample(logits: &Var, rng: &mut Rng) -> Result<BernoulliGates> {
        let values = check_logits("BernoulliGates::sample", logits)?;
        let gates = Tensor::from_vec(sample_bernoulli(&values, rng), logits.shape())?;
        Ok(BernoulliGates { logits: logits.clone(), gates })
    }

    /// Gates drawn elsewhere (a replayed step, a test): `gates` holds 0 or 1 in the shape of the
    /// logits.
    ///
    /// # Errors
    /// Those of [`BernoulliGates::sample`]; [`Error::Shape`] if the shapes differ;
    /// [`Error::Argument`] for a gate other than 0 or 1.
    pub fn from_gates(logits: &Var, gates: Tensor) -> Result<BernoulliGates> {
        const OP: &str = "BernoulliGates::from_gates";
        check_logits(OP, logits)?;
        if gates.shape() != logits.shape() {
            return Err(Error::shape(
                OP,
                format!("gates of shape {:?} for logits of shape {:?}", gates.shape(), logits.shape()),
            ));
        }
        if let Some((i, v)) = gates.to_vec().into_iter().enumerate().find(|&(_, v)| v != 0.0 && v != 1.0) {
            return Err(Error::argument(OP, format!("gate {v} at position {i} is neither 0 nor 1")));
        }
        Ok(BernoulliGates { logits: logits.clone(), gates })
    }

    /// The sampled gates, 0 or 1, `[rows, n]`.
    pub fn gates(&self) -> &Tensor {
        &self.gates
    }

    /// The logits the gates were drawn from.
    pub fn logits(&self) -> &Var {
        &self.logits
    }

    /// The number of rows (samples).
    pub fn rows(&self) -> usize {
        self.gates.shape()[0]
    }

    /// `log p(z_r) = Σ_i z_ri log σ(ℓ_ri) + (1 − z_ri) log(1 − σ(ℓ_ri))` per row, `[rows]`,
    /// differentiable in the logits: `∂ log p(z_r)/∂ℓ_ri = z_ri − σ(ℓ_ri)`.
    pub fn log_prob(&self) -> Result<Var> {
        let shape = self.gates.shape();
        let (rows, n) = (shape[0], shape[1]);
        let (z, l) = (self.gates.to_vec(), self.logits.value().to_vec());
        // log p(z) = log σ(±ℓ), the sign + for z = 1.
        let log_p: Vec<f32> = (0..rows)
            .map(|r| {
                (r * n..(r + 1) * n).map(|i| log_sigmoid(if z[i] == 1.0 { l[i] } else { -l[i] } as f64)).sum::<f64>()
                    as f32
            })
            .collect();
        let value = Tensor::from_vec(log_p, &[rows])?;
        if !Var::records(&[&self.logits]) {
            return Ok(Var::constant(value));
        }
        let score: Vec<f32> = z.iter().zip(&l).map(|(&z, &l)| (z as f64 - sigmoid(l as f64)) as f32).collect();
        let score = Tensor::from_vec(score, shape)?;
        Ok(Var::from_op("bernoulli_log_prob", value, &[&self.logits], move |g| {
            Ok(vec![Some(score.mul(&g.unsqueeze(1)?)?)])
        }))
    }

    /// The REINFORCE surrogate `(1/rows)·Σ_r (f_r − b)·log p(z_r)` for the cost `f_r = costs[r]`
    /// of each row and a baseline `b`: its gradient is the batch mean of
    /// `(f_r − b)·∇ log p(z_r)`, an unbiased estimate of `∇ E[f(z)]` when `b` does not depend on
    /// this batch's samples. Its value is not the expected cost; report the costs themselves.
    /// The costs are what is minimised: pass `−reward` to maximise a reward.
    ///
    /// # Errors
    /// [`Error::Shape`] unless there is one cost per row and at least one row;
    /// [`Error::Argument`] for a non-finite cost or baseline.
    pub fn surrogate_loss(&self, costs: &[f32], baseline: f32) -> Result<Var> {
        const OP: &str = "reinforce";
        let rows = self.rows();
        if rows == 0 || costs.len() != rows {
            return Err(Error::shape(
                OP,
                format!("{} costs for {rows} rows of gates (need one per row, rows ≥ 1)", costs.len()),
            ));
        }
        check_costs(OP, costs)?;
        if !baseline.is_finite() {
            return Err(Error::argument(OP, format!("baseline {baseline} is not finite")));
        }
        let weights: Vec<f32> = costs.iter().map(|&c| ((c as f64 - baseline as f64) / rows as f64) as f32).collect();
        let weights = Var::constant(Tensor::from_vec(weights, &[rows])?);
        Ok(self.log_prob()?.mul(&weights)?.sum_all())
    }

    /// [`BernoulliGates::surrogate_loss`] with the baseline's current value, then
    /// [`MovingAverageBaseline::update`] with these costs: the baseline used comes from earlier
    /// batches only, so the estimate stays unbiased.
    ///
    /// # Errors
    /// Those of [`BernoulliGates::surrogate_loss`]; the baseline is left unchanged on error.
    pub fn reinforce_loss(&self, costs: &[f32], baseline: &mut MovingAverageBaseline) -> Result<Var> {
        let loss = self.surrogate_loss(costs, baseline.value())?;
        baseline.update(costs)?;
        Ok(loss)
    }
}

/// The logits' values, checked to be `[rows, n ≥ 1]` and finite.
fn check_logits(op: &'static str, logits: &Var) -> Result<Vec<f32>> {
    let shape = logits.shape();
    if shape.len() != 2 || shape[1] == 0 {
        return Err(Error::shape(op, format!("logits must be [rows, gates >= 1], got {shape:?}")));
    }
    super::finite_values(op, "logit", logits.value())
}

/// Refuses the first non-finite cost.
fn check_costs(op: &'static str, costs: &[f32]) -> Result<()> {
    match costs.iter().position(|c| !c.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::argument(op, format!("cost {} of row {i} is not finite", costs[i]))),
    }
}

/// An exponential moving average of the mean cost per batch, the REINFORCE baseline:
/// `b ← decay·b + (1 − decay)·mean(costs)`, starting from the first batch's mean (and 0 before
/// any update). Its state is plain and visible: [`MovingAverageBaseline::value`],
/// [`MovingAverageBaseline::updates`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MovingAverageBaseline {
    decay: f32,
    value: f32,
    updates: u64,
}

impl MovingAverageBaseline {
    /// A baseline forgetting a fraction `1 − decay` of itself per update (`decay = 0`: the last
    /// batch's mean).
    ///
    /// # Errors
    /// [`Error::Argument`] unless `decay` is in `[0, 1)`.
    pub fn new(decay: f32) -> Result<MovingAverageBaseline> {
        if !(0.0..1.0).contains(&decay) {
            return Err(Error::argument("MovingAverageBaseline", format!("decay {decay} must be in [0, 1)")));
        }
        Ok(MovingAverageBaseline { decay, value: 0.0, updates: 0 })
    }

    /// The decay.
    pub fn decay(&self) -> f32 {
        self.decay
    }

    /// The current baseline `b` (0 before the first update).
    pub fn value(&self) -> f32 {
        self.value
    }

    /// How many batches the baseline has seen.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Folds in one batch of costs and returns the new value. The mean is taken in f64.
    ///
    /// # Errors
    /// [`Error::Argument`] for no costs or a non-finite one; the state is then unchanged.
    pub fn update(&mut self, costs: &[f32]) -> Result<f32> {
        const OP: &str = "MovingAverageBaseline::update";
        if costs.is_empty() {
            return Err(Error::argument(OP, "needs at least one cost"));
        }
        check_costs(OP, costs)?;
        let mean = costs.iter().map(|&c| c as f64).sum::<f64>() / costs.len() as f64;
        let decay = self.decay as f64;
        self.value = if self.updates == 0 { mean } else { decay * self.value as f64 + (1.0 - decay) * mean } as f32;
        self.updates += 1;
        Ok(self.value)
    }
}
