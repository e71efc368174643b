//! Cross-check against PyTorch: a 2-layer MLP with LayerNorm and GELU, its cross-entropy loss,
//! every gradient, and the parameters after 3 AdamW steps, from `tests/fixtures/mlp.json`
//! (written by `tests/fixtures/gen_mlp.py`; this test needs only the JSON).

use elide::autodiff::{AdamW, Optimizer, Param, ParamStore, Var};
use serde_json::Value;

mod common;
use common::{assert_close, tensor};

const NAMES: [&str; 6] = ["w1", "b1", "ln_w", "ln_b", "w2", "b2"];

fn forward(p: &[Param], x: &Var, targets: &[u32]) -> Var {
    let h = x.matmul(&p[0].var()).unwrap().add(&p[1].var()).unwrap();
    let h = h.layer_norm(Some(&p[2].var()), Some(&p[3].var()), 1e-5).unwrap().gelu();
    h.matmul(&p[4].var()).unwrap().add(&p[5].var()).unwrap().cross_entropy(targets).unwrap()
}

#[test]
fn mlp_loss_gradients_and_adamw_match_pytorch() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mlp.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let x = Var::constant(tensor(&fx["x"]));
    let targets: Vec<u32> = fx["targets"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
    let mut store = ParamStore::new();
    let params: Vec<Param> = NAMES.iter().map(|n| store.register(*n, tensor(&fx["params"][n])).unwrap()).collect();

    let loss = forward(&params, &x, &targets);
    let want_loss = fx["loss"].as_f64().unwrap() as f32;
    assert!((loss.value().item().unwrap() - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss");
    let grads = loss.backward().unwrap();
    for (n, p) in NAMES.iter().zip(&params) {
        assert_close(&format!("grad {n}"), grads.get(p).unwrap(), &tensor(&fx["grads"][n]), 1e-5);
    }

    let mut opt = AdamW::new(1e-2);
    for _ in 0..3 {
        let grads = forward(&params, &x, &targets).backward().unwrap();
        opt.step(&store, &grads).unwrap();
    }
    for (n, p) in NAMES.iter().zip(&params) {
        assert_close(&format!("after 3 steps {n}"), &p.value(), &tensor(&fx["after_3_adamw_steps"][n]), 1e-5);
    }
}
