//! Cross-check against PyTorch: a Mixtral-style mixture-of-experts block (top-2 of 8 experts,
//! renormalised gates, SwiGLU experts, dropless), its output, the gradients of a fixed linear
//! loss with respect to the input and every weight, and the auxiliary losses, from
//! `tests/fixtures/moe.json` (written by `tests/fixtures/gen_moe.py`; this test needs only the
//! JSON).

use elide::autodiff::{ParamStore, Var};
use elide::cond::{ExpertKind, MoeConfig, MoeLayer, RouterKind};
use elide::tensor::{Rng, Tensor};
use serde_json::Value;

mod common;
use common::{assert_close, tensor};

fn scalar(v: &Var) -> f32 {
    v.value().item().unwrap()
}

#[test]
fn mixtral_block_output_and_gradients_match_pytorch() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/moe.json")).unwrap();
    let fx: Value = serde_json::from_str(&text).unwrap();
    let size = |name: &str| fx["sizes"][name].as_u64().unwrap() as usize;
    let (t, k) = (size("tokens"), size("top_k"));
    let top_k = RouterKind::TopK { k, renormalize: true, noisy: false };
    let config = MoeConfig::new(size("d_model"), size("hidden"), size("experts"), top_k, ExpertKind::SwiGlu);
    let mut store = ParamStore::new();
    let layer = MoeLayer::new(&mut store.scope("moe"), config, &mut Rng::seed(0)).unwrap();
    // Overwrite the random initialisation with the fixture's weights, by registered name.
    let weights = ["w_router", "w_gate", "w_up", "w2"];
    let names = ["moe.router", "moe.experts.w_gate", "moe.experts.w_up", "moe.experts.w2"];
    for (w, name) in weights.iter().zip(names) {
        store.get(name).unwrap_or_else(|| panic!("{name} is not registered")).set(tensor(&fx["inputs"][w])).unwrap();
    }
    assert_eq!(store.len(), names.len(), "a SwiGLU block has no other parameters");
    let params: Vec<_> = names.iter().map(|n| store.get(n).unwrap().clone()).collect();
    assert_eq!(params[0].id(), layer.router().weight().id());

    let x = Var::leaf(tensor(&fx["inputs"]["x"]));

    // The routing: the same experts, in the same order (best first), with the same gates.
    let routing = layer.router().route(&x, None).unwrap();
    let want_experts: Vec<u32> = fx["experts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|e| e.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(routing.experts, want_experts, "top-2 choices (token-major, best first)");
    assert_eq!(routing.tokens, (0..t as u32).flat_map(|tok| [tok; 2]).collect::<Vec<_>>());
    let gates = Tensor::from_vec(routing.gate_values(), &[t, k]).unwrap();
    assert_close("gates", &gates, &tensor(&fx["gates"]), 1e-5);

    // Output, loss = Σ out ⊙ R, and every gradient.
    let out = layer.forward(&x).unwrap();
    assert_eq!((out.plan.num_kept(), out.stats.dropped_assignments), (t * k, 0), "dropless keeps all");
    assert_close("output", out.output.value(), &tensor(&fx["output"]), 1e-5);
    let loss = out.output.mul(&Var::constant(tensor(&fx["R"]))).unwrap().sum_all();
    let want_loss = fx["loss"].as_f64().unwrap() as f32;
    assert!(
        (scalar(&loss) - want_loss).abs() <= 1e-5 * want_loss.abs(),
        "loss: elide {}, PyTorch {want_loss}",
        scalar(&loss)
    );
    let grads = loss.backward().unwrap();
    assert_close("grad x", grads.of(&x).unwrap(), &tensor(&fx["grads"]["x"]), 1e-5);
    for (w, p) in weights.iter().zip(&params) {
        let got = grads.get(p).unwrap_or_else(|| panic!("no gradient for {}", p.name()));
        assert_close(&format!("grad {w}"), got, &tensor(&fx["grads"][w]), 1e-5);
    }

    // The auxiliary losses (unweighted) and the gradient of their sum at the router weight.
    for (what, got) in [("balance_loss", &out.balance_loss().unwrap()), ("z_loss", &out.z_loss().unwrap())] {
        let want = fx[what].as_f64().unwrap() as f32;
        assert!((scalar(got) - want).abs() <= 1e-5 * want.abs(), "{what}: elide {}, PyTorch {want}", scalar(got));
    }
    let aux = out.balance_loss().unwrap().add(&out.z_loss().unwrap()).unwrap().backward().unwrap();
    assert_close("aux grad w_router", aux.get(&params[0]).unwrap(), &tensor(&fx["aux_grad_w_router"]), 1e-5);
}
