//! Cross-check against PyTorch: one dense pre-norm transformer block built from elide's layers
//! exactly as `TransformerLm` builds a block (`attn_norm` → `CausalSelfAttention` with rotary
//! positions → residual, `ffn_norm` → GELU (tanh) MLP → residual), loaded with the weights of
//! `tests/fixtures/block.safetensors` (written by `tests/fixtures/gen_block.py`; this test needs
//! only the file). Its output and the gradients of `Σ out ⊙ cotangent` with respect to the input
//! and every weight must match PyTorch's within 1e-5, relative to each tensor's scale (see
//! `common::assert_close`).

use elide::autodiff::{ParamStore, Var};
use elide::cond::gathered::WeightLayout;
use elide::kernels::gemm::Activation;
use elide::models::{CausalSelfAttention, Ctx, Ffn, FfnKind, Module, RmsNorm};
use elide::tensor::{Rng, Tensor};
use safetensors::SafeTensors;
use std::collections::HashMap;

mod common;
use common::assert_close;

/// `TransformerLm`'s RMSNorm epsilon.
const NORM_EPS: f32 = 1e-5;

/// The block's layers, registered under the names `TransformerLm` gives one block's.
struct Block {
    attn_norm: RmsNorm,
    attn: CausalSelfAttention,
    ffn_norm: RmsNorm,
    ffn: Ffn,
}

impl Block {
    fn new(store: &mut ParamStore, d: usize, heads: usize, hidden: usize) -> Block {
        let mut rng = Rng::seed(0);
        Block {
            attn_norm: RmsNorm::new(&mut store.scope("attn_norm"), d, NORM_EPS).unwrap(),
            attn: CausalSelfAttention::new(&mut store.scope("attn"), d, heads, WeightLayout::InOut, &mut rng).unwrap(),
            ffn_norm: RmsNorm::new(&mut store.scope("ffn_norm"), d, NORM_EPS).unwrap(),
            ffn: Ffn::new(&mut store.scope("ffn"), FfnKind::Mlp(Activation::Gelu), d, hidden, &mut rng).unwrap(),
        }
    }

    /// `h = x + attn(attn_norm(x))`, `out = h + ffn(ffn_norm(h))`, as `TransformerLm::logits`.
    fn forward(&self, x: &Var) -> Var {
        let ctx = &mut Ctx::eval();
        let h = x.add(&self.attn.forward(&self.attn_norm.forward(x, ctx).unwrap(), ctx).unwrap()).unwrap();
        h.add(&self.ffn.forward(&self.ffn_norm.forward(&h, ctx).unwrap(), ctx).unwrap()).unwrap()
    }
}

/// Every tensor of the fixture (f32), and its sizes.
fn fixture() -> (HashMap<String, Tensor>, serde_json::Value) {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/block.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let sizes = serde_json::from_str(&meta.metadata().as_ref().unwrap()["sizes"]).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, Tensor::from_vec(data, view.shape()).unwrap())
        })
        .collect();
    (tensors, sizes)
}

#[test]
fn a_dense_block_matches_pytorch_in_values_and_gradients() {
    let (fx, sizes) = fixture();
    let size = |name: &str| sizes[name].as_u64().unwrap() as usize;
    let mut store = ParamStore::new();
    let block = Block::new(&mut store, size("d_model"), size("heads"), size("hidden"));
    // The fixture's weights are exactly the block's parameters, by name and shape.
    let mut weight_names: Vec<&str> = fx
        .keys()
        .map(String::as_str)
        .filter(|n| !n.starts_with("grad.") && !["x", "cotangent", "out"].contains(n))
        .collect();
    weight_names.sort_unstable();
    let mut param_names: Vec<&str> = store.iter().map(|p| p.name()).collect();
    param_names.sort_unstable();
    assert_eq!(param_names, weight_names);
    for p in store.iter() {
        p.set(fx[p.name()].clone()).unwrap();
    }

    let x = Var::leaf(fx["x"].clone());
    assert_eq!(x.shape(), [size("batch"), size("seq"), size("d_model")]);
    let out = block.forward(&x);
    assert_close("out", out.value(), &fx["out"], 1e-5);

    let grads = out.backward_with(&fx["cotangent"]).unwrap();
    assert_close("grad x", grads.of(&x).unwrap(), &fx["grad.x"], 1e-5);
    for p in store.iter() {
        let name = format!("grad.{}", p.name());
        assert_close(&name, grads.get(p).unwrap(), &fx[&name], 1e-5);
    }
}
