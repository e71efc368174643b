//! [`MoeLayer`]: a mixture-of-experts feed-forward layer that pays only for routed tokens.
//!
//! ```text
//! x ──router──▶ logits ─softmax─▶ probs ─select─▶ Routing (token, expert, gate)
//!                                                   │ DispatchPlan (one counting sort, capacity)
//!                                                   ▼
//!      out[t] = Σ_slots g · expert_e(x[t])   grouped gathered GEMMs over routed rows only
//! ```
//!
//! Routers: token-choice top-k (Shazeer et al., arXiv 1701.06538, with optional noisy gating;
//! renormalised gates as Mixtral, arXiv 2401.04088), Switch top-1 (arXiv 2101.03961), expert
//! choice (arXiv 2202.09368). Capacity: dropless, or a factor beyond which assignments are
//! dropped and their tokens ride the residual (the caller adds `x` back). Auxiliary losses:
//! Switch load balancing `α·E·Σ fᵢ·Pᵢ` and the router z-loss (arXiv 2202.08906). The gradient
//! estimator is the softmax gate itself (Switch/Shazeer): the expert choice is discrete, the gate
//! weight that scales its output is differentiable, and that is how the router learns.

use crate::aux_loss::{load_balancing_loss, z_loss, ExpertStats, LoadCount};
use crate::error::{Error, Result};
use crate::expert::{ExpertKind, Experts};
use crate::plan::{Capacity, DispatchPlan};
use crate::router::{Router, RouterKind, RouterOptions};
use crate::routing::Routing;
use crate::weights::{check_given, NamedTensors, ParamSource};
use elide_autodiff::{Scope, Var};
use elide_tensor::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shape and behaviour of a [`MoeLayer`]. [`MoeConfig::new`] fills in the paper defaults;
/// change single fields with struct update syntax.
#[derive(Clone, Copy, Debug)]
pub struct MoeConfig {
    /// Token width `d`.
    pub d_model: usize,
    /// Hidden width of each expert.
    pub hidden: usize,
    /// Number of experts `E`.
    pub num_experts: usize,
    /// How tokens choose experts (or experts choose tokens).
    pub router: RouterKind,
    /// What each expert computes.
    pub expert: ExpertKind,
    /// Dropless, or a capacity factor.
    pub capacity: Capacity,
    /// Weight `α` of the load-balancing loss (Switch uses 0.01).
    pub balance_coef: f32,
    /// Weight of the router z-loss (ST-MoE uses 1e-3).
    pub z_loss_coef: f32,
    /// What the load-balancing loss counts: the router's choices before capacity (Switch's
    /// definition, the default) or the kept assignments.
    pub balance_count: LoadCount,
    /// A router bias, and the noise scale of a noisy router.
    pub router_options: RouterOptions,
}

impl MoeConfig {
    /// A layer of `num_experts` experts of `expert` kind, width `d_model` and hidden size
    /// `hidden`, routed by `router`: dropless, `α = 0.01` (Switch), z-loss weight `1e-3`
    /// (ST-MoE), the load counted before capacity, no router bias, fixed-scale noise.
    pub fn new(d_model: usize, hidden: usize, num_experts: usize, router: RouterKind, expert: ExpertKind) -> MoeConfig {
        MoeConfig {
            d_model,
            hidden,
            num_experts,
            router,
            expert,
            capacity: Capacity::Dropless,
            balance_coef: 0.01,
            z_loss_coef: 1e-3,
            balance_count: LoadCount::Routed,
            router_options: RouterOptions::default(),
        }
    }

    /// The layer's parameters: names relative to its scope, and shapes, in registration order.
    /// The names are API (checkpoints, [`MoeLayer::from_tensors`], [`crate::import`]); the table
    /// on [`MoeLayer`] lists them.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = self.router_options.parameters(self.d_model, self.num_experts);
        let experts = Experts::parameters(self.expert, self.num_experts, self.d_model, self.hidden);
        out.extend(experts.into_iter().map(|(n, s)| (format!("experts.{n}"), s)));
        out
    }

    /// Refuses a size of 0, a router setting that does not fit `num_experts` or the options,
    /// and a bad capacity factor.
    fn check(&self) -> Result<()> {
        const OP: &str = "MoeLayer::new";
        if self.d_model == 0 || self.hidden == 0 || self.num_experts == 0 {
            return Err(Error::argument(OP, format!("{self:?}: every size must be > 0")));
        }
        for (name, coef) in [("balance_coef", self.balance_coef), ("z_loss_coef", self.z_loss_coef)] {
            if !(coef.is_finite() && coef >= 0.0) {
                return Err(Error::argument(OP, format!("{name} = {coef} must be finite and >= 0")));
            }
        }
        // The parameters' memory, checked before anything is drawn: an overflowing or
        // unaddressable size is refused here; one the allocator cannot give fails the
        // (fallible) initialisers with the byte count.
        if self.param_count().and_then(|n| n.checked_mul(4)).filter(|&b| b <= isize::MAX as usize).is_none() {
            let (d, h, e) = (self.d_model as f64, self.hidden as f64, self.num_experts as f64);
            let bytes = 4.0 * (d * e + e * (3.0 * d * h + h + d));
            return Err(Error::argument(
                OP,
                format!("d_model {d}, hidden {h}, {e} experts need about {bytes:.3e} bytes of parameters, more than memory can address"),
            ));
        }
        Router::check(self.d_model, self.num_experts, self.router, self.router_options)?;
        Experts::check(self.num_experts, self.d_model, self.hidden)?;
        self.capacity.slots(1, self.num_experts)?;
        Ok(())
    }
}

impl MoeConfig {
    /// The number of parameters the layer holds (router and experts), or `None` if it overflows
    /// `usize`.
    pub fn param_count(&self) -> Option<usize> {
        let (d, h, e) = (self.d_model, self.hidden, self.num_experts);
        let dh = d.checked_mul(h)?;
        let per_expert = match self.expert {
            ExpertKind::Mlp(_) => dh.checked_mul(2)?.checked_add(h)?.checked_add(d)?,
            ExpertKind::SwiGlu => dh.checked_mul(3)?,
        };
        d.checked_mul(e)?.checked_add(per_expert.checked_mul(e)?)
    }
}

/// Wall-clock time of each phase of one forward pass.
#[derive(Clone, Copy, Debug, Default)]
pub struct MoePhases {
    /// Router matmul, softmax and selection.
    pub routing: Duration,
    /// The counting sort into a dispatch plan.
    pub plan: Duration,
    /// The expert GEMMs (and the activation between them); when the expert tasks combine their
    /// own rows (MLP experts shared out whole, at most two slots a token), the combine too.
    pub expert_gemms: Duration,
    /// Summing each token's gated expert outputs; when the expert tasks did that, only finishing
    /// their shared output (zeroing the rows of tokens no expert took) and, in training,
    /// recording it as the combine.
    pub combine: Duration,
}

/// What one forward pass produced. The auxiliary losses are computed on demand (they cost a
/// third of a batch-1 forward pass, and inference never needs them).
pub struct MoeOutput {
    /// `[T, d]`: the experts' gated outputs (add the residual outside).
    pub output: Var,
    /// The router's decisions (logits, probabilities, assignments, gates).
    pub routing: Routing,
    /// `(balance_coef, z_loss_coef)` of the layer.
    coefs: (f32, f32),
    /// What the load-balancing loss counts.
    balance_count: LoadCount,
    /// Tokens per expert, drops, imbalance.
    pub stats: ExpertStats,
    /// FLOPs actually executed (router and experts; routed rows only).
    pub flops: f64,
    /// The plan the experts ran (inspectable).
    pub plan: Arc<DispatchPlan>,
    /// Where the time went.
    pub phases: MoePhases,
}

impl MoeOutput {
    /// The load-balancing loss `E·Σ fᵢ·Pᵢ`, unweighted (differentiable in the router), with
    /// `f` counted as the layer's [`MoeConfig::balance_count`] says.
    ///
    /// # Errors
    /// Only if the routing is inconsistent with the plan (never for a layer's own output).
    pub fn balance_loss(&self) -> Result<Var> {
        load_balancing_loss(&self.routing, &self.plan, self.balance_count, 1.0)
    }

    /// The router z-loss `mean logsumexp²`, unweighted.
    ///
    /// # Errors
    /// As [`MoeOutput::balance_loss`].
    pub fn z_loss(&self) -> Result<Var> {
        z_loss(&self.routing.logits)
    }

    /// `balance_coef · balance + z_loss_coef · z`: add it to the training loss.
    ///
    /// # Errors
    /// As [`MoeOutput::balance_loss`].
    pub fn aux_loss(&self) -> Result<Var> {
        let (balance, z) = self.coefs;
        Ok(self.balance_loss()?.mul_scalar(balance).add(&self.z_loss()?.mul_scalar(z))?)
    }
}

/// A mixture-of-experts layer: a router and `E` experts.
///
/// Its parameters, registered under the layer's scope (`<scope>.<name>`; the names are API:
/// checkpoints, [`MoeLayer::from_tensors`] and [`crate::import`] use them), `d = d_model`,
/// `h = hidden`, weights in the `[in, out]` layout of `x·W`:
///
/// | name | shape | when |
/// |---|---|---|
/// | `router` | `[d, E]` | always |
/// | `router_bias` | `[E]` | [`RouterOptions::bias`] |
/// | `router_noise` | `[d, E]` | [`crate::NoiseScale::Learned`] |
/// | `experts.w1`, `experts.b1`, `experts.w2`, `experts.b2` | `[E, d, h]`, `[E, h]`, `[E, h, d]`, `[E, d]` | [`ExpertKind::Mlp`] |
/// | `experts.w_gate`, `experts.w_up`, `experts.w2` | `[E, d, h]`, `[E, d, h]`, `[E, h, d]` | [`ExpertKind::SwiGlu`] |
///
/// [`MoeConfig::parameters`] lists them for a given configuration.
pub struct MoeLayer {
    config: MoeConfig,
    router: Router,
    experts: Experts,
}

impl MoeLayer {
    /// Registers the router (`<scope>.router`) and the experts (`<scope>.experts.*`).
    ///
    /// # Errors
    /// For a router setting that does not fit `num_experts` (k = 0 or > E, a bad capacity
    /// factor), a size of 0, or a name already registered.
    pub fn new(scope: &mut Scope<'_>, config: MoeConfig, rng: &mut Rng) -> Result<MoeLayer> {
        // Check everything before registering anything, so a refused layer leaves no names behind.
        config.check()?;
        MoeLayer::build(scope, config, &mut ParamSource::Random(rng))
    }

    /// A layer with the given weights instead of random ones (a checkpoint, a model trained
    /// elsewhere: see [`crate::import`]), registered under `scope` like [`MoeLayer::new`].
    /// `tensors` maps each parameter name *relative to the layer* (`router`,
    /// `experts.w_gate`, …, the table above; [`MoeConfig::parameters`]) to its value; it must
    /// hold exactly those names, with those shapes.
    ///
    /// ```
    /// use elide_autodiff::ParamStore;
    /// use elide_cond::{ExpertKind, MoeConfig, MoeLayer, NamedTensors, RouterKind};
    /// use elide_tensor::Tensor;
    ///
    /// let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
    /// let config = MoeConfig::new(4, 8, 3, top2, ExpertKind::SwiGlu);
    /// let tensors: NamedTensors =
    ///     config.parameters().into_iter().map(|(name, shape)| (name, Tensor::ones(&shape))).collect();
    /// let mut store = ParamStore::new();
    /// let layer = MoeLayer::from_tensors(&mut store.scope("moe"), config, tensors)?;
    /// assert_eq!(store.get("moe.experts.w_up").unwrap().value().to_vec(), vec![1.0; 3 * 4 * 8]);
    /// # let _ = layer;
    /// # Ok::<(), elide_cond::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`MoeLayer::new`]; [`Error::Argument`] naming every missing or unknown tensor and
    /// [`Error::Shape`] naming a mis-shaped one, before anything is registered.
    pub fn from_tensors(scope: &mut Scope<'_>, config: MoeConfig, mut tensors: NamedTensors) -> Result<MoeLayer> {
        config.check()?;
        check_given("MoeLayer::from_tensors", &config.parameters(), &tensors)?;
        MoeLayer::build(scope, config, &mut ParamSource::Given(&mut tensors))
    }

    fn build(scope: &mut Scope<'_>, config: MoeConfig, source: &mut ParamSource<'_>) -> Result<MoeLayer> {
        let (d, e) = (config.d_model, config.num_experts);
        let router = Router::build(scope, d, e, config.router, config.router_options, source, "")?;
        let mut experts_scope = scope.scope("experts");
        let experts = Experts::build(&mut experts_scope, config.expert, e, d, config.hidden, source, "experts.")?;
        Ok(MoeLayer { config, router, experts })
    }

    /// The current values of the layer's parameters, by name relative to the layer (what
    /// [`MoeLayer::from_tensors`] takes).
    pub fn tensors(&self) -> NamedTensors {
        let params = self.router.params().into_iter().chain(self.experts.params());
        self.config.parameters().into_iter().zip(params).map(|((name, _), p)| (name, p.value())).collect()
    }

    /// The configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.config
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The experts.
    pub fn experts(&self) -> &Experts {
        &self.experts
    }

    /// `x: [T, d]` through the layer, without routing noise (inference, or training without
    /// noisy gating).
    ///
    /// # Errors
    /// If `x` is not `[T, d_model]`, or a router logit is NaN or infinite.
    pub fn forward(&self, x: &Var) -> Result<MoeOutput> {
        self.forward_with_noise(x, None)
    }

    /// As [`MoeLayer::forward`], drawing routing noise from `noise_rng` when the router is
    /// noisy (training).
    ///
    /// # Errors
    /// As [`MoeLayer::forward`].
    pub fn forward_with_noise(&self, x: &Var, noise_rng: Option<&mut Rng>) -> Result<MoeOutput> {
        let start = Instant::now();
        let routing = self.router.route(x, noise_rng)?;
        let routed = Instant::now();
        let plan = Arc::new(DispatchPlan::from_routing(&routing, self.config.capacity)?);
        let planned = Instant::now();
        let gates = plan.slot_gates(&routing.gates)?;
        let (output, times) = self.experts.forward_timed(x, &gates, &plan)?;
        let t = routing.num_tokens as f64;
        let router_flops = 2.0 * t * (self.config.d_model * self.config.num_experts) as f64;
        Ok(MoeOutput {
            output,
            coefs: (self.config.balance_coef, self.config.z_loss_coef),
            balance_count: self.config.balance_count,
            stats: ExpertStats::from_plan(&plan),
            flops: router_flops + self.experts.forward_flops(plan.num_kept()),
            phases: MoePhases {
                routing: routed - start,
                plan: planned - routed,
                expert_gemms: times.gemms,
                combine: times.combine,
            },
            plan,
            routing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Rounding;
    use elide_autodiff::ParamStore;
    use elide_kernels::gemm::Activation;
    use elide_tensor::Tensor;

    fn config(router: RouterKind, capacity: Capacity) -> MoeConfig {
        MoeConfig { capacity, ..MoeConfig::new(8, 12, 4, router, ExpertKind::Mlp(Activation::Gelu)) }
    }

    #[test]
    fn every_router_and_capacity_gives_every_parameter_a_gradient() {
        let routers = [
            RouterKind::TopK { k: 2, renormalize: true, noisy: false },
            RouterKind::TopK { k: 2, renormalize: false, noisy: true },
            RouterKind::Switch,
            RouterKind::ExpertChoice { capacity_factor: 1.0, rounding: Rounding::Ceil },
        ];
        let learned = RouterOptions { bias: true, noise: crate::NoiseScale::Learned };
        let cases = routers.iter().map(|&r| (r, RouterOptions::default())).chain([(routers[1], learned)]);
        for (router, router_options) in cases {
            for capacity in [Capacity::Dropless, Capacity::factor(0.75)] {
                let mut store = ParamStore::new();
                let mut rng = Rng::seed(1);
                let config = MoeConfig { router_options, ..config(router, capacity) };
                let layer = MoeLayer::new(&mut store.scope("moe"), config, &mut rng).unwrap();
                let x = Var::constant(Tensor::randn(&[10, 8], &mut rng));
                let out = layer.forward_with_noise(&x, Some(&mut rng)).unwrap();
                assert_eq!(out.output.shape(), &[10, 8]);
                let loss = out.output.square().mean_all().add(&out.aux_loss().unwrap()).unwrap();
                let grads = loss.backward().unwrap();
                assert_eq!(store.len(), config.parameters().len());
                for p in store.iter() {
                    assert!(grads.get(p).is_some(), "{router:?}: no gradient for {}", p.name());
                }
                let kept = out.plan.num_kept();
                assert_eq!(out.stats.tokens_per_expert.iter().sum::<usize>(), kept);
            }
        }
    }

    #[test]
    fn executed_flops_count_the_kept_rows_only() {
        // Capacity 0.5 of top-2 drops assignments; every dropped row saves one expert pass:
        // d·h multiply-adds up and h·d down, 2 FLOPs each (8 × 12 here).
        let router = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
        let run = |capacity| {
            let mut store = ParamStore::new();
            let layer = MoeLayer::new(&mut store.scope("moe"), config(router, capacity), &mut Rng::seed(3)).unwrap();
            layer.forward(&Var::constant(Tensor::randn(&[40, 8], &mut Rng::seed(4)))).unwrap()
        };
        let (all, capped) = (run(Capacity::Dropless), run(Capacity::factor(0.5)));
        let dropped = capped.plan.dropped().len();
        assert_eq!((all.plan.num_kept(), capped.plan.num_kept() + dropped), (80, 80));
        assert!(dropped > 0);
        assert_eq!(all.flops - capped.flops, (dropped * 2 * 2 * 8 * 12) as f64);
        // The router runs on every token either way: 2·T·d·E.
        assert_eq!(all.flops, (2 * 40 * 8 * 4 + 80 * 2 * 2 * 8 * 12) as f64);
    }

    #[test]
    fn sizes_beyond_memory_and_bad_coefficients_are_refused_before_registering() {
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(0);
        let base = config(RouterKind::Switch, Capacity::Dropless);
        // 2^24 · 2^24 · 2 · 2^12 floats: 2^63 bytes, past what memory can address.
        let huge = MoeConfig { d_model: 1 << 24, hidden: 1 << 24, num_experts: 1 << 12, ..base };
        let err = MoeLayer::new(&mut store.scope("a"), huge, &mut rng).err().unwrap().to_string();
        assert!(err.starts_with("MoeLayer::new: d_model 16777216, hidden 16777216, 4096 experts need about"), "{err}");
        assert!(err.ends_with("bytes of parameters, more than memory can address"), "{err}");
        let overflow = MoeConfig { d_model: usize::MAX / 2, hidden: 3, ..base };
        assert!(MoeLayer::new(&mut store.scope("b"), overflow, &mut rng).is_err());
        for (balance, z) in [(f32::NAN, 0.0), (0.0, -1.0), (f32::INFINITY, 0.0)] {
            let bad = MoeConfig { balance_coef: balance, z_loss_coef: z, ..base };
            assert!(MoeLayer::new(&mut store.scope("c"), bad, &mut rng).is_err(), "{balance} {z}");
        }
        assert_eq!(store.len(), 0, "a refused layer registers nothing");
        assert_eq!(base.param_count(), Some(8 * 4 + 4 * (2 * 8 * 12 + 12 + 8)));
    }

    #[test]
    fn empty_batch_and_bad_input() {
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(2);
        let layer =
            MoeLayer::new(&mut store.scope("moe"), config(RouterKind::Switch, Capacity::Dropless), &mut rng).unwrap();
        let out = layer.forward(&Var::constant(Tensor::zeros(&[0, 8]))).unwrap();
        assert_eq!(out.output.shape(), &[0, 8]);
        let err = layer.forward(&Var::constant(Tensor::zeros(&[3, 7]))).err().unwrap().to_string();
        assert!(err.contains("[3, 7]"), "{err}");
        let nan = Tensor::from_vec(vec![f32::NAN; 8], &[1, 8]).unwrap();
        let err = layer.forward(&Var::constant(nan)).err().unwrap().to_string();
        assert!(err.starts_with("router: NaN or infinite logit in row 0"), "{err}");
        let bad = MoeConfig {
            router: RouterKind::TopK { k: 5, renormalize: true, noisy: false },
            ..config(RouterKind::Switch, Capacity::Dropless)
        };
        let err = MoeLayer::new(&mut store.scope("moe2"), bad, &mut rng).err().unwrap().to_string();
        assert_eq!(err, "top_k: k = 5 must be in 1..=4 experts");
        let bad = MoeConfig { capacity: Capacity::factor(0.0), ..config(RouterKind::Switch, Capacity::Dropless) };
        assert!(MoeLayer::new(&mut store.scope("moe3"), bad, &mut rng).is_err());
    }

    #[test]
    fn from_tensors_takes_exactly_the_listed_parameters() {
        let options = RouterOptions { bias: true, noise: crate::NoiseScale::Learned };
        let noisy = RouterKind::TopK { k: 2, renormalize: true, noisy: true };
        let config = MoeConfig { router_options: options, ..config(noisy, Capacity::Dropless) };
        let names: Vec<String> = config.parameters().into_iter().map(|(n, _)| n).collect();
        let documented =
            ["router", "router_bias", "router_noise", "experts.w1", "experts.b1", "experts.w2", "experts.b2"];
        assert_eq!(names, documented);

        // A layer rebuilt from another's tensors computes the same thing.
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(3);
        let layer = MoeLayer::new(&mut store.scope("a"), config, &mut rng).unwrap();
        let rebuilt = MoeLayer::from_tensors(&mut store.scope("b"), config, layer.tensors()).unwrap();
        let x = Var::constant(Tensor::randn(&[9, 8], &mut rng));
        let (y, z) = (layer.forward(&x).unwrap().output, rebuilt.forward(&x).unwrap().output);
        assert_eq!(y.value().to_vec(), z.value().to_vec());
        let registered: Vec<&str> = store.iter().filter(|p| p.name().starts_with("b.")).map(|p| p.name()).collect();
        assert_eq!(registered, documented.map(|n| format!("b.{n}")));

        // Missing, unknown and mis-shaped tensors are named; nothing is registered.
        let mut fresh = ParamStore::new();
        let mut tensors = layer.tensors();
        tensors.remove("router_bias");
        tensors.insert("router.bias".into(), Tensor::zeros(&[4]));
        let err = MoeLayer::from_tensors(&mut fresh.scope("c"), config, tensors).err().unwrap().to_string();
        assert!(
            err.starts_with(
                "MoeLayer::from_tensors: missing tensors [\"router_bias\"], unknown tensors [\"router.bias\"]"
            ),
            "{err}"
        );
        let mut tensors = layer.tensors();
        tensors.insert("experts.w2".into(), Tensor::zeros(&[4, 8, 12]));
        let err = MoeLayer::from_tensors(&mut fresh.scope("c"), config, tensors).err().unwrap().to_string();
        assert_eq!(err, "MoeLayer::from_tensors: experts.w2 must be [4, 12, 8], got [4, 8, 12]");
        assert!(fresh.is_empty());
    }
}
