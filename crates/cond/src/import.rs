//! Layers from weights trained elsewhere: safetensors files written by another framework, read
//! through a [`NameMap`] into the named tensors a `from_tensors` constructor takes, and written
//! back the same way.
//!
//! A name map says, for each of a layer's parameters (by its name relative to the layer, as
//! listed in the layer's docs), which foreign tensor holds it: one tensor, or one per expert
//! (`{i}` in the foreign name) stacked along a new first axis, each 2-D block transposed or not.
//! PyTorch's `nn.Linear` stores `[out, in]`; elide's weights are `[in, out]` (`x·W`), so a
//! Linear weight is transposed on the way in — a copy made once at import, after which the
//! layer runs on its usual layout — and back on the way out.
//!
//! [`NameMap::mixtral`] is the map of a Hugging Face `MixtralSparseMoeBlock` state dict
//! (`gate.weight [E, d]`, `experts.{i}.w1/w3.weight [h, d]`, `experts.{i}.w2.weight [d, h]`):
//!
//! ```no_run
//! use elide_autodiff::ParamStore;
//! use elide_cond::import::{mixtral_block, NameMap};
//!
//! let bytes = std::fs::read("model-00001-of-00019.safetensors")?;
//! let mut store = ParamStore::new();
//! // The block of layer 0, top-2 routing as Mixtral; sizes are read from the file.
//! let moe = mixtral_block(&mut store.scope("layers.0.moe"), &bytes, "model.layers.0.block_sparse_moe.", 2)?;
//! // ... and back to the Hugging Face names.
//! let out = elide_cond::import::export(&moe.tensors(), &NameMap::mixtral(), "block_sparse_moe.")?;
//! # let _ = out;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{Error, Result};
use crate::expert::ExpertKind;
use crate::moe::{MoeConfig, MoeLayer};
use crate::router::RouterKind;
use crate::weights::NamedTensors;
use elide_autodiff::Scope;
use elide_tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;

const OP: &str = "import";

/// Where one parameter lives in a foreign file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// The parameter's name relative to the layer (`router`, `experts.w_gate`, …).
    pub param: String,
    /// The foreign tensor's name (after the file's prefix). With `{i}` in it, one tensor per
    /// expert `i = 0..E`, stacked along a new first axis into the `[E, …]` parameter.
    pub foreign: String,
    /// Whether each 2-D block is transposed between the two (PyTorch `[out, in]` ↔ elide
    /// `[in, out]`).
    pub transpose: bool,
}

/// How a layer's parameters are named and laid out in another framework's state dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameMap {
    /// One entry per parameter.
    pub entries: Vec<MapEntry>,
}

impl NameMap {
    /// The map of a Hugging Face `MixtralSparseMoeBlock` state dict onto a [`MoeLayer`] with
    /// [`ExpertKind::SwiGlu`] experts (arXiv 2401.04088):
    ///
    /// | elide | Hugging Face | |
    /// |---|---|---|
    /// | `router [d, E]` | `gate.weight [E, d]` | transposed |
    /// | `experts.w_gate [E, d, h]` | `experts.{i}.w1.weight [h, d]` | stacked, transposed |
    /// | `experts.w_up [E, d, h]` | `experts.{i}.w3.weight [h, d]` | stacked, transposed |
    /// | `experts.w2 [E, h, d]` | `experts.{i}.w2.weight [d, h]` | stacked, transposed |
    pub fn mixtral() -> NameMap {
        let entry =
            |param: &str, foreign: &str| MapEntry { param: param.into(), foreign: foreign.into(), transpose: true };
        NameMap {
            entries: vec![
                entry("router", "gate.weight"),
                entry("experts.w_gate", "experts.{i}.w1.weight"),
                entry("experts.w_up", "experts.{i}.w3.weight"),
                entry("experts.w2", "experts.{i}.w2.weight"),
            ],
        }
    }

    fn entry(&self, param: &str) -> Result<&MapEntry> {
        self.entries
            .iter()
            .find(|e| e.param == param)
            .ok_or_else(|| Error::argument(OP, format!("the name map has no entry for parameter {param}")))
    }
}

/// `[rows, cols]` → `[cols, rows]`.
fn transposed(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// A foreign tensor's values as f32 (from f32, f16, bf16 or f64) and its shape.
fn read_f32(st: &SafeTensors<'_>, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
    let view = st.tensor(name).map_err(|_| Error::argument(OP, format!("the file has no tensor {name}")))?;
    let bytes = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => return Err(Error::argument(OP, format!("{name} is {other:?}; only F32, F16, BF16 and F64 are read"))),
    };
    Ok((values, view.shape().to_vec()))
}

/// One `[a, b]` block of parameter `param`, from foreign tensor `name` (`[b, a]` if transposed).
fn read_block(st: &SafeTensors<'_>, name: &str, param: &str, block: &[usize], transpose: bool) -> Result<Vec<f32>> {
    let (values, shape) = read_f32(st, name)?;
    let want: Vec<usize> = if transpose { block.iter().rev().copied().collect() } else { block.to_vec() };
    if shape != want || (transpose && block.len() != 2) {
        return Err(Error::shape(OP, format!("{name} must be {want:?} for {param} {block:?}, got {shape:?}")));
    }
    Ok(if transpose { transposed(&values, want[0], want[1]) } else { values })
}

/// Reads the parameters `expected` lists (names relative to the layer and shapes, as
/// [`MoeConfig::parameters`] gives them) out of a safetensors file through `map`, every
/// foreign name prefixed by `prefix` (the block's place in the foreign model, e.g.
/// `model.layers.0.block_sparse_moe.`).
///
/// Every tensor under `prefix` must be used by the map: a weight the map does not know would
/// otherwise be silently left out of the layer.
///
/// # Errors
/// [`Error::Argument`] for an unreadable file, a missing entry or tensor, an unused tensor under
/// `prefix`, or a dtype other than F32/F16/BF16/F64; [`Error::Shape`] naming the foreign tensor
/// and both shapes when one does not fit.
pub fn read(bytes: &[u8], map: &NameMap, prefix: &str, expected: &[(String, Vec<usize>)]) -> Result<NamedTensors> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| Error::argument(OP, format!("not a safetensors file: {e}")))?;
    let mut used = Vec::new();
    let mut out = NamedTensors::new();
    for (param, shape) in expected {
        let entry = map.entry(param)?;
        let values = if entry.foreign.contains("{i}") {
            let mut values = Vec::with_capacity(shape.iter().product());
            for i in 0..shape[0] {
                let name = format!("{prefix}{}", entry.foreign.replace("{i}", &i.to_string()));
                values.extend(read_block(&st, &name, param, &shape[1..], entry.transpose)?);
                used.push(name);
            }
            values
        } else {
            let name = format!("{prefix}{}", entry.foreign);
            let values = read_block(&st, &name, param, shape, entry.transpose)?;
            used.push(name);
            values
        };
        out.insert(param.clone(), Tensor::from_vec(values, shape)?);
    }
    let mut unused: Vec<&str> =
        st.names().into_iter().filter(|n| n.starts_with(prefix) && !used.iter().any(|u| u == n)).collect();
    if !unused.is_empty() {
        unused.sort_unstable();
        return Err(Error::argument(
            OP,
            format!("tensors under {prefix:?} that the name map does not use: {unused:?}"),
        ));
    }
    Ok(out)
}

/// A [`MoeLayer`] of `config` with the weights of a foreign safetensors file: [`read`] with
/// the layer's [`MoeConfig::parameters`], then [`MoeLayer::from_tensors`].
///
/// # Errors
/// Those of [`read`] and [`MoeLayer::from_tensors`].
pub fn moe_layer(
    scope: &mut Scope<'_>,
    config: MoeConfig,
    bytes: &[u8],
    map: &NameMap,
    prefix: &str,
) -> Result<MoeLayer> {
    let tensors = read(bytes, map, prefix, &config.parameters())?;
    MoeLayer::from_tensors(scope, config, tensors)
}

/// A Hugging Face `MixtralSparseMoeBlock` (under `prefix` in the file) as a [`MoeLayer`]:
/// sizes read from `gate.weight` and `experts.0.w1.weight`; softmax top-`top_k` routing with
/// the gates renormalised over the chosen experts, SwiGLU experts, dropless — the block's
/// inference forward pass (its training-time `router_jitter_noise` is not modelled). The
/// auxiliary-loss settings are [`MoeConfig::new`]'s.
///
/// # Errors
/// Those of [`moe_layer`], and for a file whose `gate.weight` or `experts.0.w1.weight` is
/// missing or not 2-D.
pub fn mixtral_block(scope: &mut Scope<'_>, bytes: &[u8], prefix: &str, top_k: usize) -> Result<MoeLayer> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| Error::argument(OP, format!("not a safetensors file: {e}")))?;
    let shape = |name: &str| -> Result<Vec<usize>> {
        let name = format!("{prefix}{name}");
        let view = st.tensor(&name).map_err(|_| Error::argument(OP, format!("the file has no tensor {name}")))?;
        match view.shape() {
            s if s.len() == 2 => Ok(s.to_vec()),
            s => Err(Error::shape(OP, format!("{name} must be 2-D, got {s:?}"))),
        }
    };
    let (gate, w1) = (shape("gate.weight")?, shape("experts.0.w1.weight")?);
    let router = RouterKind::TopK { k: top_k, renormalize: true, noisy: false };
    let config = MoeConfig::new(gate[1], w1[0], gate[0], router, ExpertKind::SwiGlu);
    moe_layer(scope, config, bytes, &NameMap::mixtral(), prefix)
}

/// Writes `tensors` (a layer's [`MoeLayer::tensors`]) as a safetensors file under the foreign
/// names of `map`, each prefixed by `prefix`: per-expert tensors split out of the stack, blocks
/// transposed back; f32, with the `format: pt` metadata PyTorch loaders look for.
///
/// # Errors
/// [`Error::Argument`] if a mapped parameter is missing from `tensors`; [`Error::Shape`] for a
/// transposed or stacked parameter of the wrong rank.
pub fn export(tensors: &NamedTensors, map: &NameMap, prefix: &str) -> Result<Vec<u8>> {
    let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |name: String, block: &[f32], shape: &[usize], transpose: bool| {
        let (values, shape) = match transpose {
            true => (transposed(block, shape[0], shape[1]), vec![shape[1], shape[0]]),
            false => (block.to_vec(), shape.to_vec()),
        };
        named.push((name, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    };
    for entry in &map.entries {
        let t = tensors
            .get(&entry.param)
            .ok_or_else(|| Error::argument(OP, format!("no tensor for parameter {}", entry.param)))?;
        let (values, shape) = (t.to_vec(), t.shape().to_vec());
        let stacked = entry.foreign.contains("{i}");
        let block = if stacked { &shape[1.min(shape.len())..] } else { &shape[..] };
        if (stacked && shape.is_empty()) || (entry.transpose && block.len() != 2) {
            return Err(Error::shape(OP, format!("{} {shape:?} cannot be written as {}", entry.param, entry.foreign)));
        }
        if stacked {
            let size: usize = block.iter().product();
            for i in 0..shape[0] {
                let name = format!("{prefix}{}", entry.foreign.replace("{i}", &i.to_string()));
                push(name, &values[i * size..(i + 1) * size], block, entry.transpose);
            }
        } else {
            push(format!("{prefix}{}", entry.foreign), &values, block, entry.transpose);
        }
    }
    let views = named
        .iter()
        .map(|(n, s, b)| {
            let view = TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| Error::argument(OP, e.to_string()))?;
            Ok((n.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let info = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(info)).map_err(|e| Error::argument(OP, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of one `[rows, cols]` tensor `w` of `dtype`, from its little-endian bytes.
    fn file(name: &str, dtype: Dtype, shape: &[usize], bytes: &[u8]) -> Vec<u8> {
        let view = TensorView::new(dtype, shape.to_vec(), bytes).unwrap();
        safetensors::serialize([(name.to_string(), view)], None).unwrap()
    }

    #[test]
    fn half_and_double_precision_tensors_are_read_as_f32() {
        // Values exact in every format (bf16 keeps 8 significant bits).
        let values = [1.5f32, -0.25, 3.0, 0.0, -8.0, 0.125];
        let map =
            NameMap { entries: vec![MapEntry { param: "w".into(), foreign: "lin.weight".into(), transpose: true }] };
        let expected = [("w".to_string(), vec![3, 2])];
        let encodings: [(Dtype, Vec<u8>); 4] = [
            (Dtype::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            (Dtype::F16, values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()),
            (Dtype::BF16, values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect()),
            (Dtype::F64, values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect()),
        ];
        for (dtype, bytes) in encodings {
            // Stored [out = 2, in = 3] as PyTorch's Linear; read transposed to [3, 2].
            let got = read(&file("lin.weight", dtype, &[2, 3], &bytes), &map, "", &expected).unwrap();
            assert_eq!(got["w"].to_vec(), vec![1.5, 0.0, -0.25, -8.0, 3.0, 0.125], "{dtype:?}");
        }
        let ints: Vec<u8> = [1i32, 2, 3, 4, 5, 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let err = read(&file("lin.weight", Dtype::I32, &[2, 3], &ints), &map, "", &expected).unwrap_err();
        assert_eq!(err.to_string(), "import: lin.weight is I32; only F32, F16, BF16 and F64 are read");
    }

    #[test]
    fn export_refuses_what_the_map_cannot_write() {
        let map = NameMap::mixtral();
        let err = export(&NamedTensors::new(), &map, "").unwrap_err();
        assert_eq!(err.to_string(), "import: no tensor for parameter router");
        let mut tensors = NamedTensors::new();
        tensors.insert("router".into(), Tensor::zeros(&[2, 3, 4]));
        let err = export(&tensors, &map, "").unwrap_err();
        assert_eq!(err.to_string(), "import: router [2, 3, 4] cannot be written as gate.weight");
    }
}
