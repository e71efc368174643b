//! Auxiliary losses that keep a router healthy, and the per-expert load statistics to log.
//!
//! - Load balancing (Switch, arXiv 2101.03961): `α·E·Σ_i f_i·P_i`, smallest (`α`) when both the
//!   dispatched load `f` and the router's probability mass `P` are uniform over the experts.
//! - Router z-loss (ST-MoE, arXiv 2202.08906): `mean_t (log Σ_e exp x_te)²`, which keeps the
//!   logits small so the f32 softmax stays accurate and training stable.
//!
//! Both are `Var`s: add them (scaled) to the task loss and their gradient reaches the router.

use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use crate::routing::Routing;
use elide_autodiff::Var;
use elide_tensor::Tensor;

/// The Switch load-balancing loss `α·E·Σ_i f_i·P_i` (arXiv 2101.03961, eq. 4).
///
/// `f_i` is the fraction of the plan's *kept* assignments that went to expert `i` (a count:
/// a constant, no gradient); `P_i = mean_t probs[t, i]` is the router's mean probability for
/// expert `i`, through which the gradient flows. With top-k routing, `f` counts all `k`
/// choices of a token, so `Σ f = 1` and a perfectly balanced router scores `α`. The paper uses
/// `α = 1e-2`. An empty batch (or a plan that keeps nothing) gives 0.
///
/// # Errors
/// [`Error::Shape`] if the plan was not built from this routing (token, expert or assignment
/// counts differ) or `probs` is not `[T, E]`.
pub fn load_balancing_loss(r: &Routing, plan: &DispatchPlan, alpha: f32) -> Result<Var> {
    const OP: &str = "load_balancing_loss";
    let (t, e) = (r.num_tokens, r.num_experts);
    let plan_assignments = plan.num_kept() + plan.dropped().len();
    if plan.num_tokens() != t || plan.num_experts() != e || plan_assignments != r.len() {
        return Err(Error::shape(
            OP,
            format!(
                "the plan ({} tokens, {} experts, {plan_assignments} assignments) was not built from this routing \
                 ({t} tokens, {e} experts, {} assignments)",
                plan.num_tokens(),
                plan.num_experts(),
                r.len()
            ),
        ));
    }
    if r.probs.shape() != [t, e] {
        return Err(Error::shape(OP, format!("probs must be [{t}, {e}], got {:?}", r.probs.shape())));
    }
    let kept = plan.num_kept();
    if t == 0 || kept == 0 {
        return Ok(Var::constant(Tensor::scalar(0.0)));
    }
    let f: Vec<f32> = plan.tokens_per_expert().iter().map(|&n| n as f32 / kept as f32).collect();
    let f = Var::constant(Tensor::from_vec(f, &[e])?);
    let p = r.probs.mean(0, false)?; // [E]
    Ok(p.mul(&f)?.sum_all().mul_scalar(alpha * e as f32))
}

/// The router z-loss `mean_t (logsumexp_e x_te)²` of `[T, E]` logits (ST-MoE, arXiv
/// 2202.08906, eq. 5), unscaled: the paper adds it with a coefficient of `1e-3`. An empty
/// batch gives 0.
///
/// The log-sum-exp is taken stably as `x_t0 − log_softmax(x_t)_0` (the log-softmax subtracts
/// the row maximum), so large logits do not overflow; its gradient is `softmax(x_t)`.
///
/// # Errors
/// [`Error::Shape`] if `logits` is not `[T, E]` with `E ≥ 1`.
pub fn z_loss(logits: &Var) -> Result<Var> {
    let shape = logits.shape();
    if shape.len() != 2 || shape[1] == 0 {
        return Err(Error::shape("z_loss", format!("logits must be [tokens, experts >= 1], got {shape:?}")));
    }
    if shape[0] == 0 {
        return Ok(Var::constant(Tensor::scalar(0.0)));
    }
    let first = logits.narrow(1, 0, 1)?; // [T, 1]
    let lse = first.sub(&logits.log_softmax()?.narrow(1, 0, 1)?)?;
    Ok(lse.square().mean_all())
}

/// Per-expert load of a [`DispatchPlan`], for logging.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertStats {
    /// Kept assignments per expert.
    pub tokens_per_expert: Vec<usize>,
    /// Assignments dropped for capacity.
    pub dropped_assignments: usize,
    /// Tokens that lost at least one assignment.
    pub dropped_tokens: usize,
    /// The busiest expert's load over the mean load (1 is perfect balance, `E` is everything
    /// on one expert); 0 when nothing was kept.
    pub max_load_over_mean: f32,
}

impl ExpertStats {
    /// The statistics of `plan`.
    pub fn from_plan(plan: &DispatchPlan) -> ExpertStats {
        let tokens_per_expert = plan.tokens_per_expert();
        let kept = plan.num_kept();
        let max = tokens_per_expert.iter().copied().max().unwrap_or(0);
        let max_load_over_mean = if kept == 0 { 0.0 } else { (max * plan.num_experts()) as f32 / kept as f32 };
        ExpertStats {
            tokens_per_expert,
            dropped_assignments: plan.dropped().len(),
            dropped_tokens: plan.dropped_tokens().len(),
            max_load_over_mean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Capacity;
    use crate::router::RouterKind;
    use crate::testing::{assert_clear_choices, check_grad, separated_logits};
    use elide_tensor::Rng;

    const TOP2: RouterKind = RouterKind::TopK { k: 2, renormalize: true, noisy: false };

    /// Reference: `α·E·Σ_i f_i·P_i` with explicit loops, in f64.
    fn naive_load_balancing(r: &Routing, plan: &DispatchPlan, alpha: f64) -> f64 {
        let (t, e) = (r.num_tokens, r.num_experts);
        let probs = r.probs.value().to_vec();
        (0..e)
            .map(|i| {
                let f = plan.assignment().iter().filter(|&&a| r.experts[a as usize] == i as u32).count() as f64
                    / plan.num_kept() as f64;
                let p = (0..t).map(|row| probs[row * e + i] as f64).sum::<f64>() / t as f64;
                f * p
            })
            .sum::<f64>()
            * alpha
            * e as f64
    }

    #[test]
    fn load_balancing_matches_the_reference() {
        for (t, e, capacity) in
            [(7, 3, Capacity::Dropless), (100, 8, Capacity::Factor(1.0)), (33, 64, Capacity::Dropless)]
        {
            let logits = Var::constant(Tensor::randn(&[t, e], &mut Rng::seed(t as u64)));
            let r = TOP2.route_logits(&logits).unwrap();
            let plan = DispatchPlan::from_routing(&r, capacity).unwrap();
            let loss = load_balancing_loss(&r, &plan, 0.01).unwrap();
            let want = naive_load_balancing(&r, &plan, 0.01);
            assert_eq!(loss.shape(), &[] as &[usize]);
            assert!((loss.value().item().unwrap() as f64 - want).abs() < 1e-6 * (1.0 + want), "T = {t}, E = {e}");
        }
        // Uniform probabilities and a balanced load score exactly α.
        let r = RouterKind::ExpertChoice { capacity_factor: 1.0 }.route_logits(&Var::constant(Tensor::zeros(&[8, 4])));
        let r = r.unwrap();
        let plan = DispatchPlan::from_routing(&r, Capacity::Dropless).unwrap();
        assert!((load_balancing_loss(&r, &plan, 0.5).unwrap().value().item().unwrap() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn z_loss_matches_the_reference_and_is_stable() {
        let x = Tensor::randn(&[9, 5], &mut Rng::seed(3)).mul_scalar(3.0).add_scalar(500.0);
        let want = x
            .to_vec()
            .chunks(5)
            .map(|row| {
                let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
                let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
                lse * lse
            })
            .sum::<f64>()
            / 9.0;
        let got = z_loss(&Var::constant(x)).unwrap().value().item().unwrap() as f64;
        assert!((got - want).abs() < 1e-5 * want, "got {got}, want {want}");
    }

    #[test]
    fn an_empty_batch_costs_nothing() {
        let r = Routing::empty(4);
        let plan = DispatchPlan::from_routing(&r, Capacity::Factor(1.0)).unwrap();
        assert_eq!(load_balancing_loss(&r, &plan, 0.01).unwrap().value().item().unwrap(), 0.0);
        assert_eq!(z_loss(&r.logits).unwrap().value().item().unwrap(), 0.0);
        let stats = ExpertStats::from_plan(&plan);
        assert_eq!((stats.tokens_per_expert, stats.max_load_over_mean), (vec![0; 4], 0.0));
    }

    #[test]
    fn losses_gradcheck_against_the_logits() {
        let logits = separated_logits(6, 4, 11);
        for capacity in [Capacity::Dropless, Capacity::Factor(0.75)] {
            let route_plan = |l: &Var| -> Result<(Routing, DispatchPlan)> {
                let r = TOP2.route_logits(l)?;
                let plan = DispatchPlan::from_routing(&r, capacity)?;
                Ok((r, plan))
            };
            assert_clear_choices(&logits, |l| Ok(route_plan(l)?.0));
            check_grad(
                |l| {
                    let (r, plan) = route_plan(l)?;
                    load_balancing_loss(&r, &plan, 0.3)
                },
                &logits,
            );
        }
        check_grad(z_loss, &logits);
        check_grad(|l| z_loss(&TOP2.route_logits(l)?.logits), &separated_logits(3, 7, 1));
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_message() {
        let r = TOP2.route_logits(&Var::constant(Tensor::randn(&[5, 3], &mut Rng::seed(0)))).unwrap();
        let other = DispatchPlan::new(&[0, 1], &[0, 1], 5, 3, Capacity::Dropless).unwrap();
        assert_eq!(
            load_balancing_loss(&r, &other, 0.01).unwrap_err().to_string(),
            "load_balancing_loss: the plan (5 tokens, 3 experts, 2 assignments) was not built from this routing \
             (5 tokens, 3 experts, 10 assignments)"
        );
        assert_eq!(
            z_loss(&Var::constant(Tensor::zeros(&[2, 3, 4]))).unwrap_err().to_string(),
            "z_loss: logits must be [tokens, experts >= 1], got [2, 3, 4]"
        );
    }

    #[test]
    fn stats_count_load_and_drops() {
        // Expert 0 takes 3 (capacity 2: one dropped), expert 1 takes 1, expert 2 none.
        let (tokens, experts) = ([0, 1, 2, 3], [0, 0, 1, 0]);
        let plan = DispatchPlan::new(&tokens, &experts, 4, 3, Capacity::Factor(1.5)).unwrap();
        let stats = ExpertStats::from_plan(&plan);
        assert_eq!(
            stats,
            ExpertStats {
                tokens_per_expert: vec![2, 1, 0],
                dropped_assignments: 1,
                dropped_tokens: 1,
                max_load_over_mean: 2.0 * 3.0 / 3.0
            }
        );
    }
}
