//! elide: a CPU tensor engine for conditional computation, whose wall-clock cost tracks active
//! FLOPs.
//!
//! This facade re-exports the layers, lowest first: [`kernels`] (slice-level compute: the
//! gathered/scattered GEMM, elementwise ops, reductions, softmax, norms, top-k, gather/scatter,
//! run-time CPU dispatch), [`tensor`] (the `Tensor` type with views, broadcasting and forward
//! ops), [`autodiff`] (`Var`, backward rules, parameters, optimizers, checkpoints), [`cond`]
//! (routers, dispatch plans, the mixture-of-experts layer on the grouped gathered GEMM) and
//! [`models`] (layers behind one `Module` trait, a trainer). Every layer's error converts into
//! [`Error`], so `?` works across layers. The `elide` binary in this package runs the
//! benchmarks (`elide bench gemm`).
//!
//! Tensors, and a training loop with a checkpoint:
//!
//! ```
//! use elide::autodiff::checkpoint::{self, json};
//! use elide::autodiff::{AdamW, Optimizer, ParamStore, Var};
//! use elide::tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let w = store.register("classifier.w", Tensor::try_randn(&[4, 3], &mut rng)?.mul_scalar(0.1))?;
//! let b = store.register("classifier.b", Tensor::try_zeros(&[3])?)?;
//! let x = Var::constant(Tensor::try_randn(&[8, 4], &mut rng)?);
//! let targets = [0u32, 1, 2, 0, 1, 2, 0, 1];
//!
//! let mut opt = AdamW::new(0.1);
//! let mut losses = Vec::new();
//! for _ in 0..20 {
//!     let loss = x.matmul(&w.var())?.add(&b.var())?.cross_entropy(&targets)?;
//!     losses.push(loss.value().item()?);
//!     let mut grads = loss.backward()?; // a value: nothing to zero afterwards
//!     grads.clip_global_norm(5.0)?;
//!     opt.step(&store, &grads)?;
//! }
//! assert!(losses[19] < 0.5 * losses[0]);
//!
//! let path = std::env::temp_dir().join(format!("elide-facade-{}.safetensors", std::process::id()));
//! checkpoint::save(&path, &store, Some(&opt), &json!({"step": 20}))?;
//! let meta = checkpoint::load(&path, &store, Some(&mut AdamW::new(0.1)))?;
//! assert_eq!(meta["step"], 20);
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), elide::Error>(())
//! ```
//!
//! A mixture-of-experts layer in a training step:
//!
//! ```
//! use elide::autodiff::{ParamStore, Var};
//! use elide::cond::{Activation, ExpertKind, MoeConfig, MoeLayer, RouterKind};
//! use elide::tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
//! let config = MoeConfig::new(16, 32, 4, top2, ExpertKind::Mlp(Activation::Gelu));
//! let moe = MoeLayer::new(&mut store.scope("blocks.0.moe"), config, &mut rng)?;
//! let x = Var::constant(Tensor::try_randn(&[10, 16], &mut rng)?);
//! let out = moe.forward(&x)?;
//! let loss = x.add(&out.output)?.square().mean_all().add(&out.aux_loss()?)?;
//! let grads = loss.backward()?;
//! assert!(store.iter().all(|p| grads.get(p).is_some()));
//! # Ok::<(), elide::Error>(())
//! ```
//!
//! The GEMM itself, on slices:
//!
//! ```
//! use elide::kernels::gemm::{Gemm, MatMut, MatRef};
//! let (a, b) = ([1.0, 2.0], [3.0, 4.0]);
//! let mut c = [0.0];
//! Gemm::default().run(MatMut::row_major(&mut c, 1, 1)?, MatRef::row_major(&a, 1, 2)?, MatRef::row_major(&b, 2, 1)?)?;
//! assert_eq!(c, [11.0]);
//! # Ok::<(), elide::Error>(())
//! ```

pub use elide_autodiff as autodiff;
pub use elide_cond as cond;
pub use elide_kernels as kernels;
pub use elide_models as models;
pub use elide_tensor as tensor;

/// An error from any layer of elide: each layer's error converts into it, so a function using
/// several layers returns `elide::Result` and uses `?` throughout. The message is the layer's
/// own (it names the operation and the shapes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A kernel refused its arguments (or `ELIDE_ISA` is invalid).
    #[error(transparent)]
    Kernel(#[from] kernels::KernelError),
    /// A tensor operation refused its arguments.
    #[error(transparent)]
    Tensor(#[from] tensor::Error),
    /// A differentiable op, backward pass, optimizer or checkpoint failed.
    #[error(transparent)]
    Autodiff(#[from] autodiff::Error),
    /// A router, dispatch plan or conditional layer refused its input.
    #[error(transparent)]
    Cond(#[from] cond::Error),
    /// A model layer or the trainer failed.
    #[error(transparent)]
    Models(#[from] models::Error),
}

/// Result of a call through the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The README's library example, compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    /// One function that fails in each layer, through `?` into [`Error`].
    fn failing(layer: usize) -> Result<()> {
        match layer {
            0 => drop(kernels::gemm::MatRef::row_major(&[0.0; 3], 2, 2)?),
            1 => drop(tensor::Tensor::try_zeros(&[usize::MAX, 2])?),
            2 => drop(autodiff::Var::leaf(tensor::Tensor::ones(&[2])).backward()?),
            3 => drop(cond::DispatchPlan::new(&[0], &[5], 1, 2, cond::Capacity::Dropless)?),
            _ => drop(models::RmsNorm::new(&mut autodiff::ParamStore::new().scope("n"), 0, 1e-5)?),
        }
        Ok(())
    }

    #[test]
    fn every_layers_error_converts_with_its_message() {
        let errors: Vec<Error> = (0..5).map(|layer| failing(layer).unwrap_err()).collect();
        assert!(matches!(errors[0], Error::Kernel(_)));
        assert_eq!(errors[0].to_string(), "MatRef::row_major: invalid view: 2x2 needs 4 elements, the buffer has 3");
        assert!(matches!(errors[1], Error::Tensor(_)));
        assert!(errors[1].to_string().starts_with("Tensor::full: shape"));
        assert!(matches!(errors[2], Error::Autodiff(_)));
        assert!(errors[2].to_string().starts_with("backward: the output has shape [2]"));
        assert!(matches!(errors[3], Error::Cond(_)));
        assert!(matches!(errors[4], Error::Models(_)));
    }

    #[test]
    fn layers_sized_by_their_caller_refuse_unallocatable_sizes() {
        // 2^62 gains of 4 bytes: refused with an error, where `Tensor::ones` used to abort.
        let mut store = autodiff::ParamStore::new();
        let err = models::RmsNorm::new(&mut store.scope("norm"), 1 << 62, 1e-5).err().unwrap().to_string();
        assert!(err.starts_with("Tensor::full: shape [4611686018427387904] needs"), "{err}");
        let err = models::LayerNorm::new(&mut store.scope("ln"), 1 << 62, 1e-5).err().unwrap().to_string();
        assert!(err.contains("could not be allocated"), "{err}");
        assert_eq!(store.len(), 0);
    }
}
