//! Named parameters and the store layers register them into.

use crate::error::{Error, Result};
use crate::var::{is_recording, next_id, Var};
use elide_tensor::Tensor;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A trainable tensor with a stable name (`"blocks.3.moe.w1"`) and id. Cloning shares it.
#[derive(Clone)]
pub struct Param {
    inner: Arc<ParamInner>,
}

struct ParamInner {
    id: u64,
    name: String,
    /// The value and how many times it has been replaced, changed together under the lock.
    value: RwLock<(Tensor, u64)>,
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Param").field("name", &self.inner.name).field("shape", &self.value().shape()).finish()
    }
}

impl Param {
    /// A parameter outside any store (tests, one-off computations).
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Param { inner: Arc::new(ParamInner { id: next_id(), name: name.into(), value: RwLock::new((value, 0)) }) }
    }

    /// The full name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The id under which [`crate::Gradients`] stores this parameter's gradient.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The current value (a cheap clone).
    pub fn value(&self) -> Tensor {
        self.inner.value.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The current value and its version: the number of times [`Param::set`] has replaced it
    /// (an optimizer step, a checkpoint load). Something derived from the value — weights
    /// packed for the GEMM — stays valid while the version is unchanged.
    pub fn versioned_value(&self) -> (Tensor, u64) {
        self.inner.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The current version (see [`Param::versioned_value`]).
    pub fn version(&self) -> u64 {
        self.inner.value.read().unwrap_or_else(|e| e.into_inner()).1
    }

    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.value().shape().to_vec()
    }

    /// Replaces the value (an optimizer step, a checkpoint load) and advances its version. The
    /// shape must not change.
    ///
    /// # Errors
    /// [`Error::Param`] naming the parameter and both shapes when they differ.
    pub fn set(&self, value: Tensor) -> Result<()> {
        let mut slot = self.inner.value.write().unwrap_or_else(|e| e.into_inner());
        if slot.0.shape() != value.shape() {
            return Err(Error::Param {
                op: "Param::set",
                detail: format!(
                    "{} has shape {:?}, the new value {:?}",
                    self.inner.name,
                    slot.0.shape(),
                    value.shape()
                ),
            });
        }
        *slot = (value, slot.1 + 1);
        Ok(())
    }

    /// The value as a [`Var`]: a gradient leaf while recording, a constant otherwise.
    pub fn var(&self) -> Var {
        if is_recording() {
            Var::leaf_with_id(self.value(), self.inner.id)
        } else {
            Var::constant(self.value())
        }
    }
}

/// Every parameter of a model, in registration order, by unique name.
#[derive(Default, Debug)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, usize>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Registers `value` under `name`.
    ///
    /// # Errors
    /// [`Error::Param`] if the name is taken.
    pub fn register(&mut self, name: impl Into<String>, value: Tensor) -> Result<Param> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::Param { op: "ParamStore::register", detail: format!("{name} is already registered") });
        }
        let param = Param::new(name.clone(), value);
        self.by_name.insert(name, self.params.len());
        self.params.push(param.clone());
        Ok(param)
    }

    /// A view that registers under `prefix.` (layers take one: `store.scope("blocks.3")`).
    pub fn scope(&mut self, prefix: &str) -> Scope<'_> {
        Scope { store: self, prefix: prefix.to_string() }
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.by_name.get(name).map(|&i| &self.params[i])
    }

    /// Parameters in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar values.
    pub fn num_elements(&self) -> usize {
        self.params.iter().map(|p| p.value().numel()).sum()
    }
}

/// A prefix into a [`ParamStore`]: `scope.param("w1", init)` registers `"<prefix>.w1"`.
pub struct Scope<'a> {
    store: &'a mut ParamStore,
    prefix: String,
}

impl Scope<'_> {
    /// Registers `value` under `<prefix>.<name>`.
    ///
    /// # Errors
    /// [`Error::Param`] if the full name is taken.
    pub fn param(&mut self, name: &str, value: Tensor) -> Result<Param> {
        let full = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        self.store.register(full, value)
    }

    /// A nested scope `<prefix>.<name>`.
    pub fn scope(&mut self, name: &str) -> Scope<'_> {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Scope { store: self.store, prefix }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_build_dotted_names_and_refuse_duplicates() {
        let mut store = ParamStore::new();
        store.scope("blocks").scope("3").param("w1", Tensor::zeros(&[2])).unwrap();
        assert!(store.get("blocks.3.w1").is_some());
        let err = store.register("blocks.3.w1", Tensor::zeros(&[2])).unwrap_err();
        assert_eq!(err.to_string(), "ParamStore::register: blocks.3.w1 is already registered");
        let err = store.get("blocks.3.w1").unwrap().set(Tensor::zeros(&[3])).unwrap_err();
        assert_eq!(err.to_string(), "Param::set: blocks.3.w1 has shape [2], the new value [3]");
    }

    #[test]
    fn every_replacement_advances_the_version_and_a_refused_one_does_not() {
        let p = Param::new("w", Tensor::zeros(&[2]));
        let shared = p.clone();
        assert_eq!(p.version(), 0);
        p.set(Tensor::ones(&[2])).unwrap();
        assert!(p.set(Tensor::ones(&[3])).is_err());
        shared.set(Tensor::full(&[2], 2.0)).unwrap();
        let (value, version) = p.versioned_value();
        assert_eq!((value.to_vec(), version), (vec![2.0, 2.0], 2));
    }
}
