//! [`HierarchicalClassifier`]: hard hierarchical routing, "cat or dog, then which breed".
//!
//! A shared trunk feeds a coarse head over `C` coarse classes and `C` branches, one per coarse
//! class, each refining its class into `M` fine classes:
//!
//! ```text
//! t = gelu(x·Wt + bt)                     trunk, every sample
//! coarse = t·Wc + bc                      [B, C]
//! branch c:  fine_c = gelu(t·W1[c] + b1[c])·W2[c] + b2[c]      [M] for the samples routed to c
//! ```
//!
//! The branches are stacked weights run by the gathered ops ([`crate::gathered`]): samples are
//! planned by branch, and one grouped GEMM computes every branch's rows, so a sample pays for
//! its branch only. Training routes each sample through its *true* coarse class's branch
//! (loss = coarse cross-entropy + fine cross-entropy), or — [`TrainRoute::Predicted`] —
//! through the branch the coarse head predicts, the branch output scaled by a straight-through
//! gate (forward 1, backward the coarse probability: Bengio et al., arXiv 1308.3432) so the fine
//! loss also trains the coarse head. Inference runs each sample through its predicted branch
//! only, and through a second branch (the next most probable) when the coarse confidence is
//! below a threshold, which bounds the cost of a wrong coarse decision (HD-CNN, Yan et al. 2015;
//! the conditional-computation argument of Bengio et al., arXiv 1308.3432).
//!
//! Parameter names, under the layer's scope: `trunk.w [d_in, d_trunk]`, `trunk.b [d_trunk]`,
//! `coarse.w [d_trunk, C]`, `coarse.b [C]`, `branches.w1 [C, d_trunk, h]`, `branches.b1 [C, h]`,
//! `branches.w2 [C, h, M]`, `branches.b2 [C, M]`.

use crate::error::{Error, Result};
use crate::gathered::{grouped_linear, GroupedWeight, RowSource, WeightLayout};
use crate::plan::{Capacity, DispatchPlan};
use elide_autodiff::{init, no_grad, Param, Scope, Var};
use elide_kernels::gemm::Activation;
use elide_tensor::{Rng, Tensor};
use std::sync::Arc;

/// Which branch a training sample goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrainRoute {
    /// The branch of the sample's true coarse class (teacher forcing): the branches learn on
    /// clean data, the coarse head on its own cross-entropy.
    #[default]
    TrueClass,
    /// The branch the coarse head predicts, scaled by a straight-through gate; the fine loss
    /// counts the samples whose predicted coarse class is right (another branch cannot name
    /// the true fine class).
    Predicted,
}

/// The sizes and options of a [`HierarchicalClassifier`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HierarchicalConfig {
    /// Input width.
    pub d_in: usize,
    /// Trunk width.
    pub d_trunk: usize,
    /// Number of coarse classes `C` (= branches).
    pub num_coarse: usize,
    /// Fine classes per coarse class `M`.
    pub num_fine: usize,
    /// Hidden width of each branch.
    pub branch_hidden: usize,
    /// How training routes samples to branches.
    pub train_route: TrainRoute,
    /// At inference, a sample whose top coarse probability is below this also runs its second
    /// most probable branch, and the better joint probability wins. `None`: one branch always.
    pub second_branch_below: Option<f32>,
}

/// The losses of one training forward pass.
pub struct HierarchicalLoss {
    /// Coarse cross-entropy + fine cross-entropy: what to minimise.
    pub total: Var,
    /// Mean coarse cross-entropy.
    pub coarse: f32,
    /// Mean fine cross-entropy over the samples that reached the right branch.
    pub fine: f32,
    /// Rows the branches ran (one per sample).
    pub branch_rows: usize,
}

/// What inference decided for a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct HierarchicalPrediction {
    /// The predicted coarse class of each sample.
    pub coarse: Vec<u32>,
    /// The predicted fine class (within its coarse class) of each sample.
    pub fine: Vec<u32>,
    /// Rows the branches ran: the batch size, plus one per sample that took a second branch.
    pub branch_rows: usize,
    /// FLOPs executed (trunk, coarse head, the branch rows that ran).
    pub flops: f64,
}

impl HierarchicalPrediction {
    /// The flat class `coarse · M + fine` of each sample.
    pub fn classes(&self, num_fine: usize) -> Vec<u32> {
        self.coarse.iter().zip(&self.fine).map(|(&c, &f)| c * num_fine as u32 + f).collect()
    }
}

/// The parameters' values for one pass (the params' vars, or test leaves), in the order of the
/// module docs.
struct Weights([Var; 8]);

/// A classifier whose fine decision runs only in the branch its coarse decision picks.
pub struct HierarchicalClassifier {
    config: HierarchicalConfig,
    trunk_w: Param,
    trunk_b: Param,
    coarse_w: Param,
    coarse_b: Param,
    w1: Param,
    b1: Param,
    w2: Param,
    b2: Param,
}

impl HierarchicalClassifier {
    /// Registers the parameters (names in the module docs) under `scope`, weights drawn
    /// `N(0, 1/fan_in)`, biases zero.
    ///
    /// # Errors
    /// [`Error::Argument`] for a size of 0 or a second-branch threshold outside `[0, 1]`; a
    /// registration error if a name is taken.
    pub fn new(scope: &mut Scope<'_>, config: HierarchicalConfig, rng: &mut Rng) -> Result<HierarchicalClassifier> {
        let c = config;
        if [c.d_in, c.d_trunk, c.num_coarse, c.num_fine, c.branch_hidden].contains(&0) {
            return Err(Error::argument("HierarchicalClassifier::new", format!("{c:?}: every size must be > 0")));
        }
        if let Some(t) = c.second_branch_below.filter(|t| !(0.0..=1.0).contains(t)) {
            return Err(Error::argument(
                "HierarchicalClassifier::new",
                format!("second-branch threshold {t} must be in [0, 1]"),
            ));
        }
        let (cc, m, h, dt) = (c.num_coarse, c.num_fine, c.branch_hidden, c.d_trunk);
        Ok(HierarchicalClassifier {
            config,
            trunk_w: scope.param("trunk.w", init::lecun_normal(&[c.d_in, dt], WeightLayout::InOut, rng)?)?,
            trunk_b: scope.param("trunk.b", Tensor::try_zeros(&[dt])?)?,
            coarse_w: scope.param("coarse.w", init::lecun_normal(&[dt, cc], WeightLayout::InOut, rng)?)?,
            coarse_b: scope.param("coarse.b", Tensor::try_zeros(&[cc])?)?,
            w1: scope.param("branches.w1", init::lecun_normal(&[cc, dt, h], WeightLayout::InOut, rng)?)?,
            b1: scope.param("branches.b1", Tensor::try_zeros(&[cc, h])?)?,
            w2: scope.param("branches.w2", init::lecun_normal(&[cc, h, m], WeightLayout::InOut, rng)?)?,
            b2: scope.param("branches.b2", Tensor::try_zeros(&[cc, m])?)?,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HierarchicalConfig {
        &self.config
    }

    /// The parameters: trunk, coarse head, branches (in the order of the module docs).
    pub fn params(&self) -> [&Param; 8] {
        [&self.trunk_w, &self.trunk_b, &self.coarse_w, &self.coarse_b, &self.w1, &self.b1, &self.w2, &self.b2]
    }

    fn check_input(&self, op: &'static str, x: &Var) -> Result<usize> {
        let d = self.config.d_in;
        match x.shape() {
            [b, w] if *w == d => Ok(*b),
            s => Err(Error::shape(op, format!("x must be [batch, d_in = {d}], got {s:?}"))),
        }
    }

    fn weights(&self) -> Weights {
        Weights(self.params().map(Param::var))
    }

    /// The training losses of `x` `[B, d_in]` against coarse and fine labels (`fine` within the
    /// coarse class), routed as the config says. Differentiable in every parameter.
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong input width or label count; [`Error::OutOfRange`] for a
    /// label out of range; [`Error::Argument`] for an empty batch.
    pub fn loss(&self, x: &Var, coarse_labels: &[u32], fine_labels: &[u32]) -> Result<HierarchicalLoss> {
        self.loss_with(&self.weights(), x, coarse_labels, fine_labels)
    }

    fn loss_with(&self, w: &Weights, x: &Var, coarse_labels: &[u32], fine_labels: &[u32]) -> Result<HierarchicalLoss> {
        const OP: &str = "HierarchicalClassifier::loss";
        let b = self.check_input(OP, x)?;
        if b == 0 {
            return Err(Error::argument(OP, "the batch is empty"));
        }
        if coarse_labels.len() != b || fine_labels.len() != b {
            return Err(Error::shape(
                OP,
                format!("{} coarse and {} fine labels for a batch of {b}", coarse_labels.len(), fine_labels.len()),
            ));
        }
        check_labels(OP, "coarse label", coarse_labels, self.config.num_coarse)?;
        check_labels(OP, "fine label", fine_labels, self.config.num_fine)?;
        let (t, coarse) = w.trunk_and_coarse(x)?;
        let coarse_loss = coarse.cross_entropy(coarse_labels)?;
        let samples: Vec<u32> = (0..b as u32).collect();
        let (route, gate) = match self.config.train_route {
            TrainRoute::TrueClass => (coarse_labels.to_vec(), None),
            TrainRoute::Predicted => {
                let predicted = argmax_rows(coarse.value())?;
                // Straight-through: the value 1, the gradient of the chosen probability.
                let probs = coarse.softmax()?;
                let chosen: Vec<u32> =
                    predicted.iter().enumerate().map(|(i, &c)| (i * self.config.num_coarse) as u32 + c).collect();
                let p = probs.reshape(&[b * self.config.num_coarse])?.index_select(0, &chosen)?;
                let hard = p.value().mul_scalar(-1.0).add_scalar(1.0);
                (predicted, Some(p.add(&Var::constant(hard))?))
            }
        };
        let plan = Arc::new(DispatchPlan::new(&samples, &route, b, self.config.num_coarse, Capacity::Dropless)?);
        let fine = w.branches(&t, &plan)?;
        let fine = match &gate {
            Some(g) => fine.mul(&plan.slot_gates(g)?.unsqueeze(1)?)?,
            None => fine,
        };
        // The slots whose branch is the sample's true coarse class, and their fine labels.
        let slot_sample = plan.tokens();
        let right: Vec<u32> = (0..plan.num_kept() as u32)
            .filter(|&s| {
                let i = slot_sample[s as usize] as usize;
                route[i] == coarse_labels[i]
            })
            .collect();
        let mut total = coarse_loss.clone();
        let mut fine_value = 0.0;
        if !right.is_empty() {
            let targets: Vec<u32> = right.iter().map(|&s| fine_labels[slot_sample[s as usize] as usize]).collect();
            let fine_loss = fine.index_select(0, &right)?.cross_entropy(&targets)?;
            fine_value = fine_loss.value().item()?;
            total = total.add(&fine_loss)?;
        }
        Ok(HierarchicalLoss {
            coarse: coarse_loss.value().item()?,
            fine: fine_value,
            total,
            branch_rows: plan.num_kept(),
        })
    }

    /// Predicts the classes of `x` `[B, d_in]`, running each sample through its predicted
    /// branch only (and a second one below the confidence threshold). Records no gradient.
    ///
    /// # Errors
    /// [`Error::Shape`] for a wrong input width; [`Error::NonFiniteLogit`] for NaN coarse
    /// logits.
    pub fn predict(&self, x: &Var) -> Result<HierarchicalPrediction> {
        self.check_input("HierarchicalClassifier::predict", x)?;
        no_grad(|| self.predict_routed(&self.weights(), x, false))
    }

    /// Every sample through every branch (what the hierarchy avoids): the same predictions as
    /// a dense classifier over the `C·M` classes would score, for comparison and benchmarks.
    ///
    /// # Errors
    /// As [`HierarchicalClassifier::predict`].
    pub fn predict_all_branches(&self, x: &Var) -> Result<HierarchicalPrediction> {
        self.check_input("HierarchicalClassifier::predict_all_branches", x)?;
        no_grad(|| self.predict_routed(&self.weights(), x, true))
    }

    fn predict_routed(&self, w: &Weights, x: &Var, every_branch: bool) -> Result<HierarchicalPrediction> {
        let cfg = &self.config;
        let (cc, m) = (cfg.num_coarse, cfg.num_fine);
        let b = x.shape()[0];
        let (t, coarse) = w.trunk_and_coarse(x)?;
        let probs = coarse.softmax()?.value().to_vec();
        if let Some(i) = probs.iter().position(|p| !p.is_finite()) {
            let v = coarse.value().to_vec()[i];
            return Err(Error::NonFiniteLogit { row: i / cc, expert: i % cc, value: v });
        }
        // Each sample's branches, best first.
        let mut samples = Vec::with_capacity(b);
        let mut branch = Vec::with_capacity(b);
        for (i, row) in probs.chunks(cc).enumerate() {
            let mut order: Vec<u32> = (0..cc as u32).collect();
            order.sort_by(|&p, &q| row[q as usize].total_cmp(&row[p as usize]).then(p.cmp(&q)));
            let take = if every_branch {
                cc
            } else {
                match cfg.second_branch_below {
                    Some(th) if row[order[0] as usize] < th && cc > 1 => 2,
                    _ => 1,
                }
            };
            for &c in &order[..take] {
                samples.push(i as u32);
                branch.push(c);
            }
        }
        let plan = Arc::new(DispatchPlan::new(&samples, &branch, b, cc, Capacity::Dropless)?);
        let fine = w.branches(&t, &plan)?;
        let fine_probs = fine.softmax()?.value().to_vec();
        // Per sample, the branch slot with the best joint probability p(c)·p(m | c).
        let mut best = vec![(f32::NEG_INFINITY, 0u32, 0u32); b];
        let (start, slots) = plan.slots_by_token();
        for (i, best) in best.iter_mut().enumerate() {
            for &s in &slots[start[i]..start[i + 1]] {
                let s = s as usize;
                let c = plan.assignment()[s] as usize;
                let c = branch[c];
                let row = &fine_probs[s * m..(s + 1) * m];
                let (f, pf) =
                    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (j, &p)| if p > a.1 { (j, p) } else { a });
                let joint = probs[i * cc + c as usize] * pf;
                if joint > best.0 {
                    *best = (joint, c, f as u32);
                }
            }
        }
        let rows = plan.num_kept();
        let flops = 2.0
            * (b * (cfg.d_in * cfg.d_trunk + cfg.d_trunk * cc)
                + rows * (cfg.d_trunk * cfg.branch_hidden + cfg.branch_hidden * m)) as f64;
        Ok(HierarchicalPrediction {
            coarse: best.iter().map(|b| b.1).collect(),
            fine: best.iter().map(|b| b.2).collect(),
            branch_rows: rows,
            flops,
        })
    }
}

impl Weights {
    /// Trunk features and coarse logits, `[B, d_trunk]` and `[B, C]`.
    fn trunk_and_coarse(&self, x: &Var) -> Result<(Var, Var)> {
        let [tw, tb, cw, cb, ..] = &self.0;
        let t = x.matmul(tw)?.add(tb)?.gelu();
        let coarse = t.matmul(cw)?.add(cb)?;
        Ok((t, coarse))
    }

    /// The branches on the rows of `t` the plan routes, `[S, M]` fine logits in slot order.
    fn branches(&self, t: &Var, plan: &Arc<DispatchPlan>) -> Result<Var> {
        let [.., w1, b1, w2, b2] = &self.0;
        let up = GroupedWeight::new(w1, WeightLayout::InOut).with_bias(b1);
        let h = grouped_linear(t, RowSource::Gathered, plan, up, Activation::Gelu)?;
        let down = GroupedWeight::new(w2, WeightLayout::InOut).with_bias(b2);
        grouped_linear(&h, RowSource::Slots, plan, down, Activation::Identity)
    }
}

/// Refuses a label `>= bound`, naming its position.
fn check_labels(op: &'static str, what: &'static str, labels: &[u32], bound: usize) -> Result<()> {
    match labels.iter().position(|&l| l as usize >= bound) {
        None => Ok(()),
        Some(i) => Err(Error::argument(op, format!("{what} {} at position {i} must be < {bound}", labels[i]))),
    }
}

/// The first maximum of each row of a `[rows, n]` tensor.
fn argmax_rows(t: &Tensor) -> Result<Vec<u32>> {
    let n = t.shape()[1];
    Ok(t.to_vec()
        .chunks(n.max(1))
        .map(|row| {
            row.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |a, (j, &v)| if v > a.1 { (j, v) } else { a }).0
                as u32
        })
        .collect())
}

#[cfg(test)]
mod tests;
