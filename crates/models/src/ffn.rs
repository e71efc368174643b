//! Feed-forward layers behind [`Module`]: the dense [`Ffn`], the mixture-of-experts [`MoeFfn`]
//! and the unit-sparse [`SparseFfn`]. Each returns the layer's output only; add the residual
//! outside.

use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::module::{as_rows, restore, Ctx, Module};
use elide_autodiff::{Param, Scope, Var};
use elide_cond::gathered::WeightLayout;
use elide_cond::{MoeConfig, MoeLayer, RouterKind, SparseFeedForward, SparseFfConfig, SparseFfMode};
use elide_kernels::gemm::Activation;
use elide_tensor::Rng;

/// What a dense feed-forward layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnKind {
    /// `act(x·W1 + b1)·W2 + b2`.
    Mlp(Activation),
    /// `(silu(x·Wg) ⊙ x·Wu)·W2`, no biases (Shazeer, arXiv 2002.05202).
    SwiGlu,
}

/// A dense feed-forward layer `d → hidden → d`.
///
/// Parameters: `Mlp`: `<scope>.up.{weight, bias}`, `<scope>.down.{weight, bias}`; `SwiGlu`:
/// `<scope>.gate.weight`, `<scope>.up.weight`, `<scope>.down.weight` (all `[in, out]`).
pub struct Ffn {
    kind: FfnKind,
    gate: Option<Linear>,
    up: Linear,
    down: Linear,
}

impl Ffn {
    /// Registers the layer's weights under `scope`.
    ///
    /// # Errors
    /// [`Error::Config`] for a size of 0; a registration error if a name is taken.
    pub fn new(scope: &mut Scope<'_>, kind: FfnKind, d: usize, hidden: usize, rng: &mut Rng) -> Result<Ffn> {
        if d == 0 || hidden == 0 {
            return Err(Error::config("Ffn::new", format!("sizes must be > 0, got d {d}, hidden {hidden}")));
        }
        let bias = matches!(kind, FfnKind::Mlp(_));
        let gate = match kind {
            FfnKind::SwiGlu => Some(Linear::new(&mut scope.scope("gate"), d, hidden, false, WeightLayout::InOut, rng)?),
            FfnKind::Mlp(_) => None,
        };
        let up = Linear::new(&mut scope.scope("up"), d, hidden, bias, WeightLayout::InOut, rng)?;
        let down = Linear::new(&mut scope.scope("down"), hidden, d, bias, WeightLayout::InOut, rng)?;
        Ok(Ffn { kind, gate, up, down })
    }
}

fn activate(x: &Var, act: Activation) -> Var {
    match act {
        Activation::Identity => x.clone(),
        Activation::Relu => x.relu(),
        Activation::Gelu => x.gelu(),
        Activation::GeluErf => x.gelu_erf(),
        Activation::Silu => x.silu(),
    }
}

impl Module for Ffn {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let h = match (self.kind, &self.gate) {
            (FfnKind::SwiGlu, Some(gate)) => gate.forward(x, ctx)?.silu().mul(&self.up.forward(x, ctx)?)?,
            (FfnKind::Mlp(act), _) => activate(&self.up.forward(x, ctx)?, act),
            (FfnKind::SwiGlu, None) => unreachable!("a SwiGLU layer always has its gate"),
        };
        self.down.forward(&h, ctx)
    }

    fn params(&self) -> Vec<&Param> {
        let mut p: Vec<&Param> = self.gate.iter().flat_map(|g| g.params()).collect();
        p.extend(self.up.params());
        p.extend(self.down.params());
        p
    }
}

/// A mixture-of-experts feed-forward layer ([`MoeLayer`]) behind [`Module`]: rows of any
/// leading shape are routed; in training its auxiliary loss (load balancing and z-loss,
/// weighted by the config's coefficients) is added to the context, and a noisy router draws
/// its noise from the context's generator. Parameters: those of [`MoeLayer`] under the scope.
pub struct MoeFfn {
    layer: MoeLayer,
}

impl MoeFfn {
    /// Registers the layer under `scope`.
    ///
    /// # Errors
    /// As [`MoeLayer::new`].
    pub fn new(scope: &mut Scope<'_>, config: MoeConfig, rng: &mut Rng) -> Result<MoeFfn> {
        Ok(MoeFfn { layer: MoeLayer::new(scope, config, rng)? })
    }

    /// The layer inside.
    pub fn layer(&self) -> &MoeLayer {
        &self.layer
    }
}

impl Module for MoeFfn {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let (rows, lead) = as_rows("MoeFfn", x, self.layer.config().d_model)?;
        let noisy = matches!(self.layer.config().router, RouterKind::TopK { noisy: true, .. });
        let training = ctx.training();
        let rng = if training && noisy { ctx.rng.as_deref_mut() } else { None };
        let out = self.layer.forward_with_noise(&rows, rng)?;
        if training {
            ctx.aux_losses.push(out.aux_loss()?);
        }
        ctx.flops += out.flops;
        restore(&out.output, &lead)
    }

    fn params(&self) -> Vec<&Param> {
        let mut p = vec![self.layer.router().weight()];
        p.extend(self.layer.experts().params());
        p
    }
}

/// A unit-sparse feed-forward layer ([`SparseFeedForward`], Terraformer) behind [`Module`]:
/// rows of any leading shape go through it. Training draws its Gumbel noise and soft-or-hard
/// choice from the context's generator (a training context without one is an error) and runs
/// dense and masked; evaluation takes the argmax unit per block, and with gradients off
/// (`no_grad`, as decoding runs) computes only the chosen units. Parameters: those of
/// [`SparseFeedForward`] under the scope.
pub struct SparseFfn {
    layer: SparseFeedForward,
}

impl SparseFfn {
    /// Registers the layer under `scope`.
    ///
    /// # Errors
    /// As [`SparseFeedForward::new`].
    pub fn new(scope: &mut Scope<'_>, config: SparseFfConfig, rng: &mut Rng) -> Result<SparseFfn> {
        Ok(SparseFfn { layer: SparseFeedForward::new(scope, config, rng)? })
    }

    /// The layer inside.
    pub fn layer(&self) -> &SparseFeedForward {
        &self.layer
    }
}

impl Module for SparseFfn {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let (rows, lead) = as_rows("SparseFfn", x, self.layer.config().d_model)?;
        let mode = if ctx.training() {
            let rng = ctx.rng.as_deref_mut().ok_or_else(|| {
                Error::config("SparseFfn", "a training pass needs the context's generator for its Gumbel noise")
            })?;
            SparseFfMode::Train(rng)
        } else {
            SparseFfMode::Eval
        };
        let out = self.layer.forward(&rows, mode)?;
        ctx.flops += out.flops;
        restore(&out.output, &lead)
    }

    fn params(&self) -> Vec<&Param> {
        self.layer.params().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad};
    use elide_autodiff::ParamStore;
    use elide_cond::ExpertKind;
    use elide_tensor::Tensor;

    #[test]
    fn ffn_matches_the_naive_reference() {
        let kinds = [
            FfnKind::Mlp(Activation::Gelu),
            FfnKind::Mlp(Activation::GeluErf),
            FfnKind::Mlp(Activation::Relu),
            FfnKind::SwiGlu,
        ];
        for kind in kinds {
            let (d, h) = (5, 7);
            let mut store = ParamStore::new();
            let mut rng = Rng::seed(4);
            let ffn = Ffn::new(&mut store.scope("ffn"), kind, d, h, &mut rng).unwrap();
            for p in ffn.params() {
                if p.name().ends_with("bias") {
                    p.set(Tensor::randn(&p.shape(), &mut rng)).unwrap();
                }
            }
            let x = Tensor::randn(&[3, d], &mut rng);
            let got = ffn.forward(&Var::constant(x.clone()), &mut Ctx::eval()).unwrap().value().to_vec();
            let get = |name: &str| store.get(&format!("ffn.{name}")).map(|p| p.value().to_vec());
            let xs = x.to_vec();
            let proj = |w: &[f32], b: Option<&Vec<f32>>, r: usize, j: usize| {
                (0..d).map(|k| xs[r * d + k] as f64 * w[k * h + j] as f64).sum::<f64>() + b.map_or(0.0, |b| b[j] as f64)
            };
            let mut want = Vec::new();
            for r in 0..3 {
                let hidden: Vec<f64> = (0..h)
                    .map(|j| match kind {
                        FfnKind::Mlp(a) => a.reference(proj(&get("up.weight").unwrap(), get("up.bias").as_ref(), r, j)),
                        FfnKind::SwiGlu => {
                            Activation::Silu.reference(proj(&get("gate.weight").unwrap(), None, r, j))
                                * proj(&get("up.weight").unwrap(), None, r, j)
                        }
                    })
                    .collect();
                let w2 = get("down.weight").unwrap();
                let b2 = get("down.bias");
                for c in 0..d {
                    let y: f64 = (0..h).map(|j| hidden[j] * w2[j * d + c] as f64).sum::<f64>();
                    want.push((y + b2.as_ref().map_or(0.0, |b| b[c] as f64)) as f32);
                }
            }
            assert_close(&got, &want, &format!("{kind:?}"));
            check_grad(|v| ffn.forward(&v[0], &mut Ctx::eval()), &[x]);
        }
    }

    #[test]
    fn moe_ffn_adds_its_aux_loss_in_training_only() {
        let noisy = RouterKind::TopK { k: 2, renormalize: true, noisy: true };
        let config = MoeConfig::new(8, 12, 4, noisy, ExpertKind::Mlp(Activation::Gelu));
        let mut store = ParamStore::new();
        let moe = MoeFfn::new(&mut store.scope("moe"), config, &mut Rng::seed(5)).unwrap();
        let x = Var::constant(Tensor::randn(&[2, 3, 8], &mut Rng::seed(6)));
        let mut eval = Ctx::eval();
        let a = moe.forward(&x, &mut eval).unwrap();
        let b = moe.forward(&x, &mut Ctx::eval()).unwrap();
        assert_eq!(a.shape(), &[2, 3, 8]);
        assert_eq!(a.value().to_vec(), b.value().to_vec(), "eval draws no noise");
        assert!(eval.aux_losses.is_empty());
        assert_eq!(eval.flops, moe.layer().forward(&x.reshape(&[6, 8]).unwrap()).unwrap().flops);
        let mut noise = Rng::seed(7);
        let mut train = Ctx::train(&mut noise);
        moe.forward(&x, &mut train).unwrap();
        assert_eq!(train.aux_losses.len(), 1);
        assert!(train.aux_loss().unwrap().value().item().unwrap() > 0.0);
        assert_eq!(moe.params().len(), 5);
    }
}
