//! Checkpoints in the safetensors format: every parameter, the optimizer's state, and a JSON
//! metadata entry (model config, step), behind a checksum.
//!
//! Layout: tensors `param.<name>` and `optim.<state name>` (f32, little-endian); the safetensors
//! `__metadata__` holds `elide.format`, `elide.metadata` (the caller's JSON),
//! `elide.optimizer` (the optimizer's kind, or `none`), `elide.optimizer_steps` and
//! `elide.checksum`: FNV-1a 64 over the other four entries and every tensor's name, dtype, shape
//! and bytes, in name order. So a flipped bit anywhere — header entries or data — is caught, not
//! loaded; a bit flipped in the structure of the header (offsets, names) is refused by the
//! safetensors parser or shows up as a missing entry.
//!
//! Saving writes a temporary file beside the target, syncs it and renames it over the target,
//! so a crash leaves either the old checkpoint or the new one, never half of one. Loading checks
//! everything (checksum, names, dtypes, shapes, optimizer kind and state) before it changes
//! anything.
//!
//! ```
//! use elide_autodiff::checkpoint::{self, json, Metadata};
//! use elide_autodiff::{AdamW, ParamStore};
//! use elide_tensor::Tensor;
//!
//! let mut store = ParamStore::new();
//! store.register("w", Tensor::ones(&[2, 2]))?;
//! let path = std::env::temp_dir().join(format!("elide-doc-{}.safetensors", std::process::id()));
//! checkpoint::save(&path, &store, Some(&AdamW::new(0.1)), &json!({"layers": 1}))?;
//! let meta: Metadata = checkpoint::load(&path, &store, Some(&mut AdamW::new(0.1)))?;
//! assert_eq!(meta["layers"], 1);
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), elide_autodiff::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::ParamStore;
use elide_tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The caller's metadata saved with a checkpoint: any JSON value (model config, step, ...).
pub use serde_json::Value as Metadata;

/// Builds a [`Metadata`] value from JSON syntax: `json!({"layers": 4})`.
pub use serde_json::json;

/// Version 2 puts the whole header under the checksum (version 1 covered only the tensors).
const FORMAT: &str = "elide-checkpoint-2";

/// The metadata entries of a checkpoint, besides the checksum.
const ENTRIES: [&str; 4] = ["elide.format", "elide.metadata", "elide.optimizer", "elide.optimizer_steps"];
const CHECKSUM: &str = "elide.checksum";

fn fail(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

/// FNV-1a, 64-bit: small, dependency-free, and plenty to catch corruption (not an adversary).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The checksum of the header entries (in [`ENTRIES`] order) and the named tensors (sorted by
/// name). Every field is length-prefixed, so no two different contents hash the same stream.
fn checksum<'a>(entries: &[&str; 4], tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>) -> String {
    let mut h = Fnv::new();
    let mut field = |bytes: &[u8]| {
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(bytes);
    };
    for entry in entries {
        field(entry.as_bytes());
    }
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, data) in sorted {
        field(name.as_bytes());
        field(format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape.iter().flat_map(|d| (*d as u64).to_le_bytes()).collect();
        field(&dims);
        field(data);
    }
    format!("{:016x}", h.0)
}

fn to_bytes(t: &Tensor) -> Vec<u8> {
    t.to_vec().iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Saves every parameter of `store`, the optimizer's state (if given) and `metadata`.
///
/// # Errors
/// [`Error::Checkpoint`] if the file cannot be written; the previous file at `path`, if any, is
/// then left untouched.
pub fn save(path: &Path, store: &ParamStore, optimizer: Option<&dyn Optimizer>, metadata: &Metadata) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = store.iter().map(|p| (format!("param.{}", p.name()), p.value())).collect();
    let (mut kind, mut steps) = ("none", 0);
    if let Some(opt) = optimizer {
        named.extend(opt.state(store).into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
        (kind, steps) = (opt.kind(), opt.steps());
    }
    let bytes: Vec<Vec<u8>> = named.iter().map(|(_, t)| to_bytes(t)).collect();
    let (metadata, steps) = (metadata.to_string(), steps.to_string());
    let entries = [FORMAT, metadata.as_str(), kind, steps.as_str()];
    let sum = checksum(
        &entries,
        named.iter().zip(&bytes).map(|((n, t), b)| (n.as_str(), Dtype::F32, t.shape(), b.as_slice())),
    );
    let views = named
        .iter()
        .zip(&bytes)
        .map(|((n, t), b)| {
            Ok((n.clone(), TensorView::new(Dtype::F32, t.shape().to_vec(), b).map_err(|e| fail(path, e.to_string()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut info: HashMap<String, String> =
        ENTRIES.iter().zip(entries).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    info.insert(CHECKSUM.to_string(), sum);
    let file = safetensors::serialize(views, Some(info)).map_err(|e| fail(path, e.to_string()))?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&file)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(path, format!("write failed: {e}"))
    })
}

/// Loads a checkpoint written by [`save`] into `store` (and `optimizer`), returning its
/// metadata. Nothing is changed unless everything checks out.
///
/// # Errors
/// [`Error::Checkpoint`] naming what is wrong: unreadable, truncated or corrupted file, checksum
/// mismatch, a missing, extra or mis-shaped parameter, a non-f32 tensor, or bad optimizer state.
pub fn load(path: &Path, store: &ParamStore, optimizer: Option<&mut dyn Optimizer>) -> Result<Metadata> {
    let file = std::fs::read(path).map_err(|e| fail(path, format!("cannot read: {e}")))?;
    let (_, header) =
        SafeTensors::read_metadata(&file).map_err(|e| fail(path, format!("corrupted or truncated: {e}")))?;
    let st = SafeTensors::deserialize(&file).map_err(|e| fail(path, format!("corrupted or truncated: {e}")))?;
    let info = header.metadata().clone().unwrap_or_default();
    let get = |key: &str| info.get(key).ok_or_else(|| fail(path, format!("metadata entry {key} is missing")));
    if get("elide.format")? != FORMAT {
        return Err(fail(path, format!("format {:?} is not {FORMAT}", get("elide.format")?)));
    }
    if let Some(extra) = info.keys().find(|k| k.as_str() != CHECKSUM && !ENTRIES.contains(&k.as_str())) {
        return Err(fail(path, format!("unexpected metadata entry {extra:?}: corrupted")));
    }
    let entries = [get(ENTRIES[0])?, get(ENTRIES[1])?, get(ENTRIES[2])?, get(ENTRIES[3])?].map(String::as_str);
    let tensors = st.tensors();
    let sum = checksum(&entries, tensors.iter().map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())));
    if &sum != get(CHECKSUM)? {
        return Err(fail(
            path,
            format!("checksum mismatch (file says {}, contents give {sum}): corrupted", get(CHECKSUM)?),
        ));
    }
    let mut params: HashMap<String, Tensor> = HashMap::new();
    let mut optim: HashMap<String, Tensor> = HashMap::new();
    for (name, view) in &tensors {
        if view.dtype() != Dtype::F32 {
            return Err(fail(path, format!("tensor {name} has dtype {:?}, expected F32", view.dtype())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let t = Tensor::from_vec(values, view.shape())?;
        if let Some(p) = name.strip_prefix("param.") {
            params.insert(p.to_string(), t);
        } else if let Some(o) = name.strip_prefix("optim.") {
            optim.insert(o.to_string(), t);
        } else {
            return Err(fail(path, format!("unexpected tensor {name}")));
        }
    }
    for p in store.iter() {
        let t = params.get(p.name()).ok_or_else(|| fail(path, format!("parameter {} is missing", p.name())))?;
        if t.shape() != p.value().shape() {
            return Err(fail(
                path,
                format!("parameter {} has shape {:?} in the file, {:?} in the model", p.name(), t.shape(), p.shape()),
            ));
        }
    }
    if let Some(extra) = params.keys().find(|n| store.get(n).is_none()) {
        return Err(fail(path, format!("parameter {extra} is in the file but not in the model")));
    }
    if let Some(opt) = optimizer {
        let kind = get("elide.optimizer")?;
        if kind == "none" {
            return Err(fail(path, format!("the file holds no optimizer state to load into {}", opt.kind())));
        }
        if kind != opt.kind() {
            return Err(fail(path, format!("the file holds {kind} optimizer state, not {}", opt.kind())));
        }
        let steps: u64 =
            get("elide.optimizer_steps")?.parse().map_err(|_| fail(path, "elide.optimizer_steps is not a number"))?;
        opt.load_state(store, &optim, steps).map_err(|e| fail(path, e.to_string()))?;
    }
    for p in store.iter() {
        p.set(params.remove(p.name()).expect("checked above"))?;
    }
    serde_json::from_str(get("elide.metadata")?).map_err(|e| fail(path, format!("metadata is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::AdamW;
    use crate::Var;
    use elide_tensor::Rng;

    /// A store with two parameters and an AdamW that has taken two steps.
    fn trained(seed: u64) -> (ParamStore, AdamW) {
        let mut rng = Rng::seed(seed);
        let mut store = ParamStore::new();
        let w = store.register("layer.w", Tensor::randn(&[5, 3], &mut rng)).unwrap();
        let b = store.register("layer.b", Tensor::randn(&[3], &mut rng)).unwrap();
        let x = Var::constant(Tensor::randn(&[4, 5], &mut rng));
        let mut opt = AdamW::new(0.01);
        for _ in 0..2 {
            let loss = x.matmul(&w.var()).unwrap().add(&b.var()).unwrap().cross_entropy(&[0, 1, 2, 1]).unwrap();
            opt.step(&store, &loss.backward().unwrap()).unwrap();
        }
        (store, opt)
    }

    fn dir() -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("elide-ckpt-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn values(store: &ParamStore) -> Vec<Vec<u32>> {
        store.iter().map(|p| p.value().to_vec().iter().map(|x| x.to_bits()).collect()).collect()
    }

    #[test]
    fn round_trip_is_bit_identical_and_restores_the_optimizer() {
        let (store, opt) = trained(1);
        let path = dir().join("round.safetensors");
        let meta = serde_json::json!({"model": "mlp", "step": 2});
        save(&path, &store, Some(&opt), &meta).unwrap();
        let (fresh, mut fresh_opt) = trained(2);
        let got = load(&path, &fresh, Some(&mut fresh_opt)).unwrap();
        assert_eq!(got, meta);
        assert_eq!(values(&fresh), values(&store));
        assert_eq!(fresh_opt.steps(), 2);
        let state =
            |s: &ParamStore, o: &AdamW| o.state(s).iter().map(|(n, t)| (n.clone(), t.to_vec())).collect::<Vec<_>>();
        assert_eq!(state(&fresh, &fresh_opt), state(&store, &opt));
        assert!(std::fs::read_dir(path.parent().unwrap()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp.")));
    }

    #[test]
    fn truncated_and_corrupted_files_are_refused_without_changes() {
        let (store, opt) = trained(3);
        let path = dir().join("good.safetensors");
        save(&path, &store, Some(&opt), &serde_json::json!({})).unwrap();
        let good = std::fs::read(&path).unwrap();
        let (target, _) = trained(4);
        let before = values(&target);
        let bad = dir().join("bad.safetensors");
        let try_load = |bytes: &[u8]| {
            std::fs::write(&bad, bytes).unwrap();
            load(&bad, &target, None).unwrap_err().to_string()
        };
        for tenth in 0..10 {
            let err = try_load(&good[..good.len() * tenth / 10]);
            assert!(err.contains("corrupted") || err.contains("truncated"), "{tenth}/10: {err}");
        }
        let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        for at in [3, 8, 20, 8 + header_len / 2, 8 + header_len - 2] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x5a;
            let err = try_load(&flipped);
            assert!(err.contains("corrupted") || err.contains("missing") || err.contains("format"), "byte {at}: {err}");
        }
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x01;
        assert!(try_load(&flipped).contains("checksum mismatch"));
        assert_eq!(values(&target), before, "a refused load changed the model");
    }

    /// `good` with the first occurrence of `from` in its header replaced by `to` (same length).
    fn edit_header(good: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&good[8..8 + header_len]).unwrap();
        let at = 8 + header.find(from).unwrap_or_else(|| panic!("{from} not in {header}"));
        let mut edited = good.to_vec();
        edited[at..at + from.len()].copy_from_slice(to.as_bytes());
        edited
    }

    #[test]
    fn every_header_entry_is_under_the_checksum() {
        let (store, opt) = trained(6);
        let path = dir().join("header.safetensors");
        save(&path, &store, Some(&opt), &json!({"model": "mlp"})).unwrap();
        let good = std::fs::read(&path).unwrap();
        let bad = dir().join("header-bad.safetensors");
        let (target, mut target_opt) = trained(7);
        let before = values(&target);
        for (from, to) in [
            (r#""elide.optimizer_steps":"2""#, r#""elide.optimizer_steps":"3""#),
            ("mlp", "mlq"),
            (r#""elide.optimizer":"adamw""#, r#""elide.optimizer":"adamx""#),
            ("F32", "I32"),
        ] {
            std::fs::write(&bad, edit_header(&good, from, to)).unwrap();
            let err = load(&bad, &target, Some(&mut target_opt)).unwrap_err().to_string();
            assert!(err.contains("checksum mismatch"), "{from} -> {to}: {err}");
        }
        assert_eq!(values(&target), before);
        assert_eq!(target_opt.steps(), 2);
    }

    #[test]
    fn optimizer_state_loads_only_into_the_same_kind() {
        let (store, opt) = trained(8);
        let path = dir().join("kind.safetensors");
        save(&path, &store, Some(&opt), &json!(null)).unwrap();
        let mut sgd = crate::Sgd::new(0.1, 0.9);
        let err = load(&path, &store, Some(&mut sgd)).unwrap_err().to_string();
        assert!(err.ends_with("the file holds adamw optimizer state, not sgd"), "{err}");
        save(&path, &store, None, &json!(null)).unwrap();
        let err = load(&path, &store, Some(&mut AdamW::new(0.1))).unwrap_err().to_string();
        assert!(err.ends_with("the file holds no optimizer state to load into adamw"), "{err}");
        assert_eq!(sgd.steps(), 0);
    }

    #[test]
    fn missing_extra_and_misshaped_parameters_are_named() {
        let (store, _) = trained(5);
        let path = dir().join("names.safetensors");
        save(&path, &store, None, &serde_json::json!(null)).unwrap();

        let mut more = ParamStore::new();
        for p in store.iter() {
            more.register(p.name(), p.value()).unwrap();
        }
        more.register("layer.extra", Tensor::zeros(&[2])).unwrap();
        assert!(load(&path, &more, None).unwrap_err().to_string().ends_with("parameter layer.extra is missing"));

        let mut fewer = ParamStore::new();
        fewer.register("layer.w", Tensor::zeros(&[5, 3])).unwrap();
        let err = load(&path, &fewer, None).unwrap_err().to_string();
        assert!(err.ends_with("parameter layer.b is in the file but not in the model"), "{err}");

        let mut shaped = ParamStore::new();
        shaped.register("layer.w", Tensor::zeros(&[3, 5])).unwrap();
        shaped.register("layer.b", Tensor::zeros(&[3])).unwrap();
        let err = load(&path, &shaped, None).unwrap_err().to_string();
        assert!(err.ends_with("parameter layer.w has shape [5, 3] in the file, [3, 5] in the model"), "{err}");
    }

    #[test]
    fn a_tensor_of_another_dtype_is_named() {
        // A well-formed file (valid checksum and metadata) whose parameter is stored as f64.
        let values = [1.0f64, 2.0];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let name = "param.w";
        let view = TensorView::new(Dtype::F64, vec![2], &bytes).unwrap();
        let entries = [FORMAT, "{}", "none", "0"];
        let mut info: HashMap<String, String> =
            ENTRIES.iter().zip(entries).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        info.insert(
            CHECKSUM.to_string(),
            checksum(&entries, [(name, Dtype::F64, &[2usize][..], &bytes[..])].into_iter()),
        );
        let file = safetensors::serialize(vec![(name.to_string(), view)], Some(info)).unwrap();
        let path = dir().join("f64.safetensors");
        std::fs::write(&path, file).unwrap();
        let mut store = ParamStore::new();
        store.register("w", Tensor::zeros(&[2])).unwrap();
        let err = load(&path, &store, None).unwrap_err().to_string();
        assert!(err.ends_with("tensor param.w has dtype F64, expected F32"), "{err}");
        assert_eq!(store.get("w").unwrap().value().to_vec(), vec![0.0, 0.0]);
    }
}
