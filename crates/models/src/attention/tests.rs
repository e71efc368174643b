use super::*;
use crate::testing::{assert_close, check_grad};
use elide_autodiff::ParamStore;

/// Attention composed from unfused ops: scores, an additive causal mask, softmax, weighted sum.
fn composed(q: &Var, k: &Var, v: &Var) -> Result<Var> {
    let (t, d) = (q.shape()[2], q.shape()[3]);
    let mask: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect();
    let mask = Var::constant(Tensor::from_vec(mask, &[t, t])?);
    let scores = q.matmul(&k.transpose(2, 3)?)?.mul_scalar(1.0 / (d as f32).sqrt()).add(&mask)?;
    Ok(scores.softmax()?.matmul(v)?)
}

#[test]
fn fused_attention_matches_the_composition_and_its_gradients() {
    let mut rng = Rng::seed(4);
    let dims = [2, 3, 7, 4];
    let [q, k, v] = [0, 1, 2].map(|_| Tensor::randn(&dims, &mut rng));
    let [qv, kv, vv] = [&q, &k, &v].map(|t| Var::leaf(t.clone()));
    let fused = causal_attention(&qv, &kv, &vv).unwrap();
    let reference = composed(&qv, &kv, &vv).unwrap();
    assert_close(&fused.value().to_vec(), &reference.value().to_vec(), "forward");
    let seed = Tensor::randn(&dims, &mut rng);
    let (gf, gr) = (fused.backward_with(&seed).unwrap(), reference.backward_with(&seed).unwrap());
    for (name, x) in [("dq", &qv), ("dk", &kv), ("dv", &vv)] {
        assert_close(&gf.of(x).unwrap().to_vec(), &gr.of(x).unwrap().to_vec(), name);
    }
    check_grad(|x| causal_attention(&x[0], &x[1], &x[2]), &[q, k, v]);
}

#[test]
fn rotary_gradients_match_finite_differences() {
    let x = Tensor::randn(&[2, 5, 3, 4], &mut Rng::seed(5));
    check_grad(|x| rotary(&x[0], 3, ROPE_BASE), &[x]);
}

#[test]
fn the_layer_has_gradients_for_input_and_weights() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(6);
    let attn = CausalSelfAttention::new(&mut store.scope("attn"), 8, 2, WeightLayout::OutIn, &mut rng).unwrap();
    assert_eq!(attn.params().len(), 4);
    assert_eq!(store.get("attn.o.weight").unwrap().shape(), &[8, 8]);
    let x = Tensor::randn(&[2, 5, 8], &mut rng);
    check_grad(|v| attn.forward(&v[0], &mut Ctx::eval()), std::slice::from_ref(&x));
    let y = attn.forward(&Var::constant(x), &mut Ctx::eval()).unwrap();
    let grads = y.sum_all().backward().unwrap();
    for p in attn.params() {
        assert!(grads.get(p).unwrap().to_vec().iter().any(|&g| g != 0.0), "{}", p.name());
    }
}

/// The layer's outputs on the whole sequence, and the same positions decoded with a cache in
/// steps of the given sizes.
fn full_and_decoded(attn: &[CausalSelfAttention], x: &Tensor, steps: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let [b, t, d] = [x.shape()[0], x.shape()[1], x.shape()[2]];
    let mut full = Var::constant(x.clone());
    for layer in attn {
        full = layer.forward(&full, &mut Ctx::eval()).unwrap();
    }
    let mut cache = KvCache::new(attn.len(), b, attn[0].heads(), t + 3, attn[0].d_head()).unwrap();
    let mut decoded = vec![0.0; b * t * d];
    let mut start = 0;
    for &n in steps {
        let mut h = Var::constant(x.narrow(1, start, n).unwrap());
        for (l, layer) in attn.iter().enumerate() {
            h = layer.forward_cached(&h, &mut cache, l, &mut Ctx::eval()).unwrap();
        }
        let h = h.value().to_vec();
        for bi in 0..b {
            decoded[(bi * t + start) * d..(bi * t + start + n) * d].copy_from_slice(&h[bi * n * d..(bi + 1) * n * d]);
        }
        start += n;
        assert_eq!(cache.len(), start);
    }
    assert_eq!(start, t);
    (full.value().to_vec(), decoded)
}

#[test]
fn decoding_with_the_cache_gives_the_full_forward_outputs() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(7);
    let layers: Vec<CausalSelfAttention> = (0..2)
        .map(|l| {
            CausalSelfAttention::new(&mut store.scope(&format!("l{l}")), 24, 3, WeightLayout::InOut, &mut rng).unwrap()
        })
        .collect();
    let x = Tensor::randn(&[2, 70, 24], &mut rng);
    // Token by token through one layer, then a prompt of 5 and steps of 1-2 through two.
    let (full, decoded) = full_and_decoded(&layers[..1], &x, &[1; 70]);
    assert_close(&decoded, &full, "one layer, token by token");
    let mut steps = vec![5];
    steps.extend([1, 2].iter().cycle().take(43).copied());
    steps.push(70 - steps.iter().sum::<usize>());
    let (full, decoded) = full_and_decoded(&layers, &x, &steps);
    assert_close(&decoded, &full, "two layers, prompt then steps");
}

#[test]
fn bad_input_is_refused_by_name() {
    let mut store = ParamStore::new();
    let mut rng = Rng::seed(8);
    let err = CausalSelfAttention::new(&mut store.scope("a"), 12, 4, WeightLayout::InOut, &mut rng).err().unwrap();
    assert_eq!(
        err.to_string(),
        "CausalSelfAttention::new: heads must divide d_model into heads of even width, got d_model 12, heads 4"
    );
    let attn = CausalSelfAttention::new(&mut store.scope("b"), 8, 2, WeightLayout::InOut, &mut rng).unwrap();
    let err = attn.forward(&Var::constant(Tensor::zeros(&[2, 8])), &mut Ctx::eval()).err().unwrap();
    assert_eq!(err.to_string(), "CausalSelfAttention: input must be [batch, seq > 0, 8], got [2, 8]");
    let mut cache = KvCache::new(1, 1, 2, 4, 4).unwrap();
    let x = Var::constant(Tensor::zeros(&[2, 1, 8]));
    let err = attn.forward_cached(&x, &mut cache, 0, &mut Ctx::eval()).err().unwrap();
    assert_eq!(
        err.to_string(),
        "CausalSelfAttention::forward_cached: the cache holds batch 1, heads 2, d_head 4; the input needs batch 2, \
         heads 2, d_head 4"
    );
    let x = Var::constant(Tensor::zeros(&[1, 5, 8]));
    let err = attn.forward_cached(&x, &mut cache, 0, &mut Ctx::eval()).err().unwrap();
    assert_eq!(err.to_string(), "KvCache::append: layer 0 holds 0 of 4 positions; 5 more do not fit");
    let q = Var::constant(Tensor::zeros(&[1, 2, 3, 4]));
    let err = causal_attention(&q, &q, &Var::constant(Tensor::zeros(&[1, 2, 3, 5]))).err().unwrap();
    assert!(err.to_string().starts_with("causal_attention: q, k, v must be equal"), "{err}");
    let err = rotary(&Var::constant(Tensor::zeros(&[1, 2, 3, 5])), 0, ROPE_BASE).err().unwrap();
    assert!(err.to_string().starts_with("rotary: x must be"), "{err}");
}
