//! Where a layer's parameters come from when it is built: drawn at random by its initialiser,
//! or given as tensors (a checkpoint of another framework, read by [`crate::import`]).
//!
//! Given tensors are keyed by the parameter's name *relative to the layer's scope* (`router`,
//! `experts.w_gate`, …): the names each layer lists in its docs. A `from_tensors` constructor
//! checks the whole set — every name present, none unknown, every shape right — before it
//! registers anything, so a refused layer leaves no names behind.

use crate::error::{Error, Result};
use elide_autodiff::{Param, Scope};
use elide_tensor::{Rng, Tensor};
use std::collections::BTreeMap;

/// Named tensors for a `from_tensors` constructor: parameter name relative to the layer →
/// value.
pub type NamedTensors = BTreeMap<String, Tensor>;

/// The source of the parameters a layer registers.
pub(crate) enum ParamSource<'a> {
    /// Each parameter from its initialiser.
    Random(&'a mut Rng),
    /// Each parameter taken out of the map (already checked by [`check_given`]).
    Given(&'a mut NamedTensors),
}

impl ParamSource<'_> {
    /// Registers `name` under `scope`, its value taken from the map (key `prefix + name`) or
    /// drawn by `init`.
    pub(crate) fn param(
        &mut self,
        scope: &mut Scope<'_>,
        prefix: &str,
        name: &str,
        shape: &[usize],
        init: impl FnOnce(&mut Rng) -> Result<Tensor>,
    ) -> Result<Param> {
        let value = match self {
            ParamSource::Random(rng) => init(rng)?,
            ParamSource::Given(map) => {
                let key = format!("{prefix}{name}");
                let value =
                    map.remove(&key).ok_or_else(|| Error::argument("from_tensors", format!("no tensor {key}")))?;
                if value.shape() != shape {
                    return Err(Error::shape(
                        "from_tensors",
                        format!("{key} must be {shape:?}, got {:?}", value.shape()),
                    ));
                }
                value
            }
        };
        Ok(scope.param(name, value)?)
    }
}

/// Checks that `given` holds exactly the parameters `expected` lists (names relative to the
/// layer, shapes), naming every missing, unknown or mis-shaped one.
///
/// # Errors
/// [`Error::Argument`] for missing or unknown names, [`Error::Shape`] for a wrong shape.
pub(crate) fn check_given(op: &'static str, expected: &[(String, Vec<usize>)], given: &NamedTensors) -> Result<()> {
    let missing: Vec<&str> = expected.iter().filter(|(n, _)| !given.contains_key(n)).map(|(n, _)| n.as_str()).collect();
    let unknown: Vec<&str> =
        given.keys().filter(|k| !expected.iter().any(|(n, _)| n == *k)).map(String::as_str).collect();
    if !missing.is_empty() || !unknown.is_empty() {
        let names: Vec<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::argument(
            op,
            format!("missing tensors {missing:?}, unknown tensors {unknown:?}; the layer's parameters are {names:?}"),
        ));
    }
    for (name, shape) in expected {
        let got = given[name].shape();
        if got != shape.as_slice() {
            return Err(Error::shape(op, format!("{name} must be {shape:?}, got {got:?}")));
        }
    }
    Ok(())
}
