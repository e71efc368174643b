//! [`Module`]: the one shape of API every layer has, and the [`Ctx`] a forward pass carries.

use crate::error::{Error, Result};
use elide_autodiff::{Param, Var};
use elide_tensor::Rng;

/// Whether a forward pass trains (noise, dropout, soft masks, auxiliary losses on) or
/// evaluates (deterministic, skipping what inference skips).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Training.
    Train,
    /// Evaluation and inference.
    #[default]
    Eval,
}

/// What a forward pass carries besides its input: the mode, the noise source of layers that
/// draw noise while training, and what layers report back (auxiliary losses, executed FLOPs).
pub struct Ctx<'a> {
    /// Train or eval.
    pub mode: Mode,
    /// Noise for training-time sampling (routing noise, Gumbel noise, dropout); `None` draws
    /// none.
    pub rng: Option<&'a mut Rng>,
    /// Auxiliary losses the layers added, already weighted by their coefficients: add their sum
    /// to the training loss ([`Ctx::aux_loss`]).
    pub aux_losses: Vec<Var>,
    /// FLOPs the layers executed (what ran, not what a dense twin would run).
    pub flops: f64,
}

impl<'a> Ctx<'a> {
    /// An evaluation context: no noise, nothing collected yet.
    pub fn eval() -> Ctx<'static> {
        Ctx { mode: Mode::Eval, rng: None, aux_losses: Vec::new(), flops: 0.0 }
    }

    /// A training context drawing noise from `rng`.
    pub fn train(rng: &'a mut Rng) -> Ctx<'a> {
        Ctx { mode: Mode::Train, rng: Some(rng), aux_losses: Vec::new(), flops: 0.0 }
    }

    /// Whether this pass trains.
    pub fn training(&self) -> bool {
        self.mode == Mode::Train
    }

    /// The sum of the auxiliary losses added so far (a zero scalar if none).
    ///
    /// # Errors
    /// Only if an added loss is not a scalar.
    pub fn aux_loss(&self) -> Result<Var> {
        let mut total = Var::constant(elide_tensor::Tensor::scalar(0.0));
        for loss in &self.aux_losses {
            total = total.add(&loss.reshape(&[])?)?;
        }
        Ok(total)
    }
}

/// A layer: a forward pass on [`Var`]s and the named parameters it owns.
///
/// Inputs are `[rows, d]` or `[batch, seq, d]` (any leading dims): layers that act per row
/// flatten the leading dims and restore them.
pub trait Module: Send + Sync {
    /// The forward pass of `x` in the context's mode.
    ///
    /// # Errors
    /// If `x` does not fit the layer (each layer names the shapes).
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var>;

    /// The parameters, in a fixed order (their names are in each layer's docs).
    fn params(&self) -> Vec<&Param>;
}

/// `x` as `[rows, width]` rows (leading dims flattened) and the leading dims to restore.
///
/// # Errors
/// [`Error::Shape`] if `x` has no dims or its last dim is not `width`.
pub(crate) fn as_rows(op: &'static str, x: &Var, width: usize) -> Result<(Var, Vec<usize>)> {
    let shape = x.shape();
    match shape.split_last() {
        Some((&last, lead)) if last == width => {
            let rows = lead.iter().product();
            Ok((x.reshape(&[rows, width])?, lead.to_vec()))
        }
        _ => Err(Error::shape(op, format!("input must be [..., {width}], got {shape:?}"))),
    }
}

/// Rows `[rows, width]` back to `[lead..., width]`.
pub(crate) fn restore(rows: &Var, lead: &[usize]) -> Result<Var> {
    let width = rows.shape()[1];
    let mut shape = lead.to_vec();
    shape.push(width);
    Ok(rows.reshape(&shape)?)
}
