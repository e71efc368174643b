//! Importing a Hugging Face `MixtralSparseMoeBlock` state dict: the layer built from
//! `tests/fixtures/mixtral_block.safetensors` must give the block's PyTorch output
//! (`tests/fixtures/mixtral_block.json`, both written by `tests/fixtures/gen_mixtral.py`; this
//! test needs only the files), and exporting it must give the state dict back, bit for bit.

use elide::autodiff::{ParamStore, Var};
use elide::cond::import::{self, mixtral_block, MapEntry, NameMap};
use elide::cond::{ExpertKind, MoeConfig, RouterKind};
use safetensors::SafeTensors;
use serde_json::Value;

mod common;
use common::{assert_close, tensor};

fn fixture() -> (Vec<u8>, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let bytes = std::fs::read(format!("{dir}mixtral_block.safetensors")).unwrap();
    let json = std::fs::read_to_string(format!("{dir}mixtral_block.json")).unwrap();
    (bytes, serde_json::from_str(&json).unwrap())
}

#[test]
fn imported_mixtral_block_matches_pytorch() {
    let (bytes, fx) = fixture();
    let size = |name: &str| fx["sizes"][name].as_u64().unwrap() as usize;
    let mut store = ParamStore::new();
    let layer = mixtral_block(&mut store.scope("moe"), &bytes, "", size("top_k")).unwrap();
    let c = layer.config();
    assert_eq!((c.d_model, c.hidden, c.num_experts), (size("d_model"), size("hidden"), size("experts")));
    let names: Vec<&str> = store.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["moe.router", "moe.experts.w_gate", "moe.experts.w_up", "moe.experts.w2"]);

    let x = Var::constant(tensor(&fx["x"]));
    let out = layer.forward(&x).unwrap();
    let want_experts: Vec<u32> = fx["experts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|e| e.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(out.routing.experts, want_experts, "top-2 choices, best first");
    assert_close("output", out.output.value(), &tensor(&fx["output"]), 1e-5);
}

#[test]
fn export_gives_the_state_dict_back() {
    let (bytes, _) = fixture();
    let mut store = ParamStore::new();
    let layer = mixtral_block(&mut store.scope("moe"), &bytes, "", 2).unwrap();
    let written = import::export(&layer.tensors(), &NameMap::mixtral(), "").unwrap();
    let (a, b) = (SafeTensors::deserialize(&bytes).unwrap(), SafeTensors::deserialize(&written).unwrap());
    let (mut names_a, mut names_b) = (a.names(), b.names());
    names_a.sort_unstable();
    names_b.sort_unstable();
    assert_eq!(names_a, names_b);
    assert_eq!(names_a.len(), 1 + 3 * 8, "gate and three weights per expert");
    for name in names_a {
        let (ta, tb) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!((ta.dtype(), ta.shape()), (tb.dtype(), tb.shape()), "{name}");
        assert!(ta.data() == tb.data(), "{name}: values differ");
    }

    // Under a prefix, as inside a whole model's state dict, and read back through it.
    let prefixed = import::export(&layer.tensors(), &NameMap::mixtral(), "model.layers.3.block_sparse_moe.").unwrap();
    let again = mixtral_block(&mut store.scope("again"), &prefixed, "model.layers.3.block_sparse_moe.", 2).unwrap();
    let values = |l: &elide::cond::MoeLayer| l.tensors().into_iter().map(|(n, t)| (n, t.to_vec())).collect::<Vec<_>>();
    assert_eq!(values(&again), values(&layer));
}

#[test]
fn a_file_that_does_not_fit_is_refused_by_name() {
    let (bytes, _) = fixture();
    let mut store = ParamStore::new();
    let top2 = RouterKind::TopK { k: 2, renormalize: true, noisy: false };
    let config = MoeConfig::new(8, 16, 8, top2, ExpertKind::SwiGlu);
    let mut read = |map: &NameMap, prefix: &str, config: MoeConfig| {
        import::moe_layer(&mut store.scope("m"), config, &bytes, map, prefix).err().unwrap().to_string()
    };
    assert_eq!(read(&NameMap::mixtral(), "block.", config), "import: the file has no tensor block.gate.weight");
    let wrong_hidden = MoeConfig { hidden: 12, ..config };
    assert_eq!(
        read(&NameMap::mixtral(), "", wrong_hidden),
        "import: experts.0.w1.weight must be [12, 8] for experts.w_gate [8, 12], got [16, 8]"
    );
    // A map that leaves the up projections out would drop weights silently: refused.
    let mut partial = NameMap::mixtral();
    partial.entries[2] =
        MapEntry { param: "experts.w_up".into(), foreign: "experts.{i}.w1.weight".into(), transpose: true };
    let err = read(&partial, "", config);
    assert!(
        err.starts_with("import: tensors under \"\" that the name map does not use: [\"experts.0.w3.weight\""),
        "{err}"
    );
    assert!(store.is_empty(), "nothing registered by a refused import");
    assert_eq!(
        import::read(b"not a file", &NameMap::mixtral(), "", &[]).unwrap_err().to_string(),
        "import: not a safetensors file: header too large"
    );
}
