//! Define-by-run reverse-mode autodiff for elide.
//!
//! A [`Var`] is a tensor value and, while gradients are being recorded, the graph node that made
//! it. Every tensor op has a `Var` twin whose backward rule sits right next to its forward;
//! [`Var::backward`] walks the graph once in reverse topological order and returns
//! [`Gradients`] — a plain value, so there is no hidden `.grad` state and no `zero_grad`. Under
//! [`no_grad`] nothing is recorded, so one forward path serves training and inference.
//! Parameters are named ([`ParamStore`], `"blocks.3.moe.w1"`), optimizers (SGD with momentum,
//! AdamW) update them, every backward rule is checked against finite differences
//! ([`gradcheck()`](fn@gradcheck)), and [`checkpoint`] saves and loads them in the safetensors format.
//!
//! Through the `elide` facade this crate is `elide::autodiff`; the facade's documentation shows
//! this example with those paths.
//!
//! A tiny training loop — a linear classifier trained with AdamW:
//!
//! ```
//! use elide_autodiff::{AdamW, Optimizer, ParamStore, Var};
//! use elide_tensor::{Rng, Tensor};
//!
//! let mut rng = Rng::seed(0);
//! let mut store = ParamStore::new();
//! let w = store.register("classifier.w", Tensor::randn(&[4, 3], &mut rng).mul_scalar(0.1))?;
//! let b = store.register("classifier.b", Tensor::zeros(&[3]))?;
//! let x = Var::constant(Tensor::randn(&[8, 4], &mut rng));
//! let targets = [0u32, 1, 2, 0, 1, 2, 0, 1];
//!
//! let mut opt = AdamW::new(0.1);
//! let mut losses = Vec::new();
//! for _ in 0..20 {
//!     let loss = x.matmul(&w.var())?.add(&b.var())?.cross_entropy(&targets)?;
//!     losses.push(loss.value().item()?);
//!     let grads = loss.backward()?; // a value: nothing to zero afterwards
//!     opt.step(&store, &grads)?;
//! }
//! assert!(losses[19] < 0.5 * losses[0]);
//! # Ok::<(), elide_autodiff::Error>(())
//! ```

mod backward;
pub mod checkpoint;
mod error;
pub mod gradcheck;
pub mod init;
mod ops;
pub mod optim;
mod param;
mod var;

pub use backward::Gradients;
pub use error::{Error, Result};
pub use gradcheck::{gradcheck, GradcheckOptions, GradcheckReport};
pub use optim::{AdamW, DecayFilter, LrSchedule, Optimizer, Sgd};
pub use param::{Param, ParamStore, Scope};
pub use var::{is_recording, no_grad, Var};

// Models and their gradients are shared between threads (rayon pools, servers): keep them so.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Var>();
    assert_send_sync::<Gradients>();
    assert_send_sync::<Param>();
    assert_send_sync::<ParamStore>();
};
