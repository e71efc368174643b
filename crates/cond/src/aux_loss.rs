//! Auxiliary losses that keep a router healthy, and the per-expert load statistics to log.
//!
//! - Load balancing (Switch, arXiv 2101.03961): `α·E·Σ_i f_i·P_i`, smallest (`α`) when both the
//!   load `f` and the router's probability mass `P` are uniform over the experts. `f` counts the
//!   router's choices before any capacity drop by default, as the paper and Hugging Face do
//!   ([`LoadCount::Routed`]); [`LoadCount::Kept`] counts what the experts actually processed.
//! - Router z-loss (ST-MoE, arXiv 2202.08906): `mean_t (log Σ_e exp x_te)²`, which keeps the
//!   logits small so the f32 softmax stays accurate and training stable.
//!
//! Both are `Var`s: add them (scaled) to the task loss and their gradient reaches the router.

use crate::error::{Error, Result};
use crate::plan::DispatchPlan;
use crate::routing::Routing;
use elide_autodiff::Var;
use elide_tensor::Tensor;

/// Which assignments the load `f_i` of [`load_balancing_loss`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LoadCount {
    /// Every choice the router made, before capacity drops anything: Switch (arXiv
    /// 2101.03961) eq. 5, `f_i = (1/T)·Σ_x 1{argmax p(x) = i}`, and Hugging Face's
    /// `load_balancing_loss_func`. The default.
    #[default]
    Routed,
    /// Only the assignments the plan kept (what the experts computed): `f_i` = kept
    /// assignments of expert `i` / all kept. Equal to [`LoadCount::Routed`] when nothing is
    /// dropped; with drops it sees an overloaded expert as no busier than its capacity.
    Kept,
}

/// The Switch load-balancing loss `α·E·Σ_i f_i·P_i` (arXiv 2101.03961, eq. 4–6).
///
/// `P_i = (1/T)·Σ_t probs[t, i]` (eq. 6) is the router's mean probability for expert `i`,
/// through which the gradient flows. `f_i` (eq. 5) is the fraction of assignments that went to
/// expert `i` — of the router's choices before capacity ([`LoadCount::Routed`], the paper's
/// definition) or of the plan's kept ones ([`LoadCount::Kept`]) — a count, so a constant with
/// no gradient. With top-k routing `f` counts all `k` choices of a token and is divided by
/// their number, so `Σ f = 1` and a perfectly balanced router scores `α` for every `k`
/// (Hugging Face's Mixtral loss divides by `T` only, which is `k` times this: use `α·k` to
/// reproduce it). The paper uses `α = 1e-2`. An empty batch (or nothing counted) gives 0.
///
/// # Errors
/// [`Error::Shape`] if the plan was not built from this routing (token, expert or assignment
/// counts differ) or `probs` is not `[T, E]`.
pub fn load_balancing_loss(r: &Routing, plan: &DispatchPlan, count: LoadCount, alpha: f32) -> Result<Var> {
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
    let per_expert = match count {
        LoadCount::Routed => {
            let mut n = vec![0usize; e];
            for &x in &r.experts {
                n[x as usize] += 1;
            }
            n
        }
        LoadCount::Kept => plan.tokens_per_expert(),
    };
    let total: usize = per_expert.iter().sum();
    if t == 0 || total == 0 {
        return Ok(Var::constant(Tensor::scalar(0.0)));
    }
    let f: Vec<f32> = per_expert.iter().map(|&n| n as f32 / total as f32).collect();
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
    use crate::plan::{Capacity, Rounding};
    use crate::router::RouterKind;
    use crate::testing::{assert_clear_choices, check_grad, separated_logits};
    use elide_tensor::Rng;

    const TOP2: RouterKind = RouterKind::TopK { k: 2, renormalize: true, noisy: false };

    /// Reference: `α·E·Σ_i f_i·P_i` with explicit loops, in f64; `f` over the assignments
    /// `counted` (indices into the routing).
    fn naive_load_balancing(r: &Routing, counted: &[u32], alpha: f64) -> f64 {
        let (t, e) = (r.num_tokens, r.num_experts);
        let probs = r.probs.value().to_vec();
        (0..e)
            .map(|i| {
                let f = counted.iter().filter(|&&a| r.experts[a as usize] == i as u32).count() as f64
                    / counted.len() as f64;
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
            [(7, 3, Capacity::Dropless), (100, 8, Capacity::factor(1.0)), (33, 64, Capacity::Dropless)]
        {
            let logits = Var::constant(Tensor::randn(&[t, e], &mut Rng::seed(t as u64)));
            let r = TOP2.route_logits(&logits).unwrap();
            let plan = DispatchPlan::from_routing(&r, capacity).unwrap();
            let all: Vec<u32> = (0..r.len() as u32).collect();
            for (count, counted) in [(LoadCount::Routed, &all[..]), (LoadCount::Kept, plan.assignment())] {
                let loss = load_balancing_loss(&r, &plan, count, 0.01).unwrap();
                let want = naive_load_balancing(&r, counted, 0.01);
                assert_eq!(loss.shape(), &[] as &[usize]);
                let got = loss.value().item().unwrap() as f64;
                assert!((got - want).abs() < 1e-6 * (1.0 + want), "T = {t}, E = {e}, {count:?}");
            }
        }
        // Uniform probabilities and a balanced load score exactly α.
        let r = RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Ceil }
            .route_logits(&Var::constant(Tensor::zeros(&[8, 4])));
        let r = r.unwrap();
        let plan = DispatchPlan::from_routing(&r, Capacity::Dropless).unwrap();
        for count in [LoadCount::Routed, LoadCount::Kept] {
            let loss = load_balancing_loss(&r, &plan, count, 0.5).unwrap().value().item().unwrap();
            assert!((loss - 0.5).abs() < 1e-6);
        }
    }

    #[test]
    fn switch_loss_counts_the_router_choices_before_drops() {
        // Switch top-1 over E = 2: tokens 0–2 prefer expert 0 with p = (3/4, 1/4), token 3
        // prefers expert 1 with p = (1/4, 3/4). Capacity ⌈1·4/2⌉ = 2 drops token 2.
        // P = (2.5/4, 1.5/4) = (0.625, 0.375).
        // Routed (eq. 5): f = (3/4, 1/4): 2·(0.75·0.625 + 0.25·0.375) = 1.125.
        // Kept: f = (2/3, 1/3): 2·(2/3·0.625 + 1/3·0.375) = 1.0833….
        let ln3 = 3f32.ln();
        let logits = [ln3, 0.0, ln3, 0.0, ln3, 0.0, 0.0, ln3];
        let r = RouterKind::Switch.route_logits(&Var::constant(Tensor::from_vec(logits.to_vec(), &[4, 2]).unwrap()));
        let r = r.unwrap();
        let plan = DispatchPlan::from_routing(&r, Capacity::factor(1.0)).unwrap();
        assert_eq!((plan.dropped(), plan.tokens_per_expert()), (&[2][..], vec![2, 1]));
        for (count, want) in [(LoadCount::Routed, 0.01 * 1.125), (LoadCount::Kept, 0.01 * 2.0 * (1.25 + 0.375) / 3.0)] {
            let got = load_balancing_loss(&r, &plan, count, 0.01).unwrap().value().item().unwrap() as f64;
            assert!((got - want).abs() < 1e-6 * want, "{count:?}: got {got}, want {want}");
        }
        assert_eq!(LoadCount::default(), LoadCount::Routed);
        // The gradient at the logits, α·E/T · p_tj·(f_j − Σ_i f_i·p_ti), with p = (3/4, 1/4) or
        // (1/4, 3/4): for f = (3/4, 1/4), Σ f·p is 5/8 on the first three rows, 3/8 on the last.
        let leaf = Var::leaf(Tensor::from_vec(logits.to_vec(), &[4, 2]).unwrap());
        let r = RouterKind::Switch.route_logits(&leaf).unwrap();
        let grads = load_balancing_loss(&r, &plan, LoadCount::Routed, 1.0).unwrap().backward().unwrap();
        let c = 2.0 / 4.0;
        let row = |p: [f64; 2], fp: f64| [c * p[0] * (0.75 - fp), c * p[1] * (0.25 - fp)];
        let want: Vec<f64> =
            [row([0.75, 0.25], 0.625); 3].into_iter().flatten().chain(row([0.25, 0.75], 0.375)).collect();
        for (g, w) in grads.of(&leaf).unwrap().to_vec().iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-7, "gradient {g}, want {w}");
        }
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
        let plan = DispatchPlan::from_routing(&r, Capacity::factor(1.0)).unwrap();
        for count in [LoadCount::Routed, LoadCount::Kept] {
            assert_eq!(load_balancing_loss(&r, &plan, count, 0.01).unwrap().value().item().unwrap(), 0.0);
        }
        assert_eq!(z_loss(&r.logits).unwrap().value().item().unwrap(), 0.0);
        let stats = ExpertStats::from_plan(&plan);
        assert_eq!((stats.tokens_per_expert, stats.max_load_over_mean), (vec![0; 4], 0.0));
    }

    #[test]
    fn losses_gradcheck_against_the_logits() {
        let logits = separated_logits(6, 4, 11);
        for capacity in [Capacity::Dropless, Capacity::factor(0.75)] {
            let route_plan = |l: &Var| -> Result<(Routing, DispatchPlan)> {
                let r = TOP2.route_logits(l)?;
                let plan = DispatchPlan::from_routing(&r, capacity)?;
                Ok((r, plan))
            };
            assert_clear_choices(&logits, |l| Ok(route_plan(l)?.0));
            check_grad(
                |l| {
                    let (r, plan) = route_plan(l)?;
                    let kept = load_balancing_loss(&r, &plan, LoadCount::Kept, 0.2)?;
                    Ok(load_balancing_loss(&r, &plan, LoadCount::Routed, 0.3)?.add(&kept)?)
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
            load_balancing_loss(&r, &other, LoadCount::Routed, 0.01).unwrap_err().to_string(),
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
        let plan = DispatchPlan::new(&tokens, &experts, 4, 3, Capacity::factor(1.5)).unwrap();
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
