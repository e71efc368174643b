//! Causal self-attention with rotary position embeddings: the differentiable fused attention
//! op ([`causal_attention`]), the rotary op ([`rotary`]) and the layer
//! ([`CausalSelfAttention`]) that decodes with a [`KvCache`].

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::linear::Linear;
use crate::module::{Ctx, Module};
use elide_autodiff::{no_grad, Param, Scope, Var};
use elide_cond::gathered::WeightLayout;
use elide_kernels::attention::{attention_backward, attention_forward, AttentionShape};
use elide_kernels::rope::{rope, Rotation};
use elide_kernels::Isa;
use elide_tensor::{Rng, Tensor};

/// The rotary base of RoFormer, GPT-NeoX and LLaMA.
pub const ROPE_BASE: f32 = 10_000.0;

/// The data of a tensor `Tensor::contiguous` returned.
fn contiguous(t: &Tensor) -> &[f32] {
    t.as_slice().expect("a contiguous tensor has a slice")
}

/// Fused causal attention (`softmax(q·kᵀ/√d + causal mask)·v`) of `[batch, heads, seq, d_head]`
/// inputs, computed without the `seq × seq` score matrix (see
/// [`elide_kernels::attention`]). The backward pass recomputes the probabilities block by
/// block from the saved per-row log-sum-exp.
///
/// # Errors
/// [`Error::Shape`] unless `q`, `k`, `v` are 4-d and alike.
pub fn causal_attention(q: &Var, k: &Var, v: &Var) -> Result<Var> {
    let (b, h, t, d) = match q.shape() {
        &[b, h, t, d] if k.shape() == q.shape() && v.shape() == q.shape() && d > 0 => (b, h, t, d),
        _ => {
            return Err(Error::shape(
                "causal_attention",
                format!(
                    "q, k, v must be equal [batch, heads, seq, d_head] with d_head > 0, got {:?}, {:?}, {:?}",
                    q.shape(),
                    k.shape(),
                    v.shape()
                ),
            ))
        }
    };
    let shape = AttentionShape::self_attention(b, h, t, d);
    // Contiguous inputs are read in place (and kept by the backward pass without a copy).
    let (qt, kt, vt) = (q.value().contiguous(), k.value().contiguous(), v.value().contiguous());
    let mut out = vec![0.0f32; shape.q_elems()];
    let mut lse = vec![0.0f32; shape.lse_elems()];
    attention_forward(
        Isa::active(),
        shape,
        contiguous(&qt),
        contiguous(&kt),
        contiguous(&vt),
        &mut out,
        Some(&mut lse),
    )?;
    let value = Tensor::from_vec(out, &[b, h, t, d])?;
    if !Var::records(&[q, k, v]) {
        return Ok(Var::constant(value));
    }
    let saved_out = value.clone();
    Ok(Var::from_op("causal_attention", value, &[q, k, v], move |g| {
        let g = g.contiguous();
        let (q, k, v) = (contiguous(&qt), contiguous(&kt), contiguous(&vt));
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        let out = contiguous(&saved_out);
        attention_backward(Isa::active(), shape, (q, k, v), out, &lse, contiguous(&g), (&mut dq, &mut dk, &mut dv))
            .map_err(elide_tensor::Error::from)?;
        let dims = [b, h, t, d];
        Ok(vec![
            Some(Tensor::from_vec(dq, &dims)?),
            Some(Tensor::from_vec(dk, &dims)?),
            Some(Tensor::from_vec(dv, &dims)?),
        ])
    }))
}

/// Rotary position embeddings (half-split, as GPT-NeoX and LLaMA; see [`elide_kernels::rope`])
/// of `x` laid out `[batch, seq, heads, d_head]`, sequence index `t` at position `offset + t`.
/// The backward pass rotates the gradient back.
///
/// # Errors
/// [`Error::Shape`] unless `x` is 4-d with an even `d_head`.
pub fn rotary(x: &Var, offset: usize, base: f32) -> Result<Var> {
    let dims: [usize; 4] = match x.shape() {
        &[b, t, h, d] if d.is_multiple_of(2) && d > 0 => [b, t, h, d],
        s => {
            return Err(Error::shape(
                "rotary",
                format!("x must be [batch, seq, heads, d_head] with an even d_head, got {s:?}"),
            ))
        }
    };
    let mut out = vec![0.0f32; x.value().numel()];
    rope(&x.value().to_vec(), &mut out, dims, offset, base, Rotation::Forward)?;
    let value = Tensor::from_vec(out, &dims)?;
    Ok(Var::from_op("rotary", value, &[x], move |g| {
        let mut dx = vec![0.0f32; g.numel()];
        rope(&g.to_vec(), &mut dx, dims, offset, base, Rotation::Inverse).map_err(elide_tensor::Error::from)?;
        Ok(vec![Some(Tensor::from_vec(dx, &dims)?)])
    }))
}

/// Multi-head causal self-attention with rotary position embeddings on `[batch, seq, d_model]`:
/// `q, k, v = x·W_q, x·W_k, x·W_v`, split into heads, `q` and `k` rotated ([`rotary`], base
/// [`ROPE_BASE`]), [`causal_attention`] per head, heads joined, `·W_o`.
///
/// Parameters: `<scope>.q`, `.k`, `.v`, `.o`, each a bias-free [`Linear`] `d_model → d_model`
/// (`.weight` in the declared layout).
///
/// A prompt, then one token decoded with a [`KvCache`]: the same output as the full forward.
///
/// ```
/// use elide_autodiff::{ParamStore, Var};
/// use elide_cond::gathered::WeightLayout;
/// use elide_models::{CausalSelfAttention, Ctx, KvCache, Module};
/// use elide_tensor::{Rng, Tensor};
///
/// let mut rng = Rng::seed(0);
/// let mut store = ParamStore::new();
/// let attn = CausalSelfAttention::new(&mut store.scope("attn"), 16, 2, WeightLayout::InOut, &mut rng)?;
/// let x = Tensor::randn(&[1, 5, 16], &mut rng); // [batch, seq, d_model]
/// let full = attn.forward(&Var::constant(x.clone()), &mut Ctx::eval())?;
///
/// let mut cache = KvCache::new(1, 1, attn.heads(), 64, attn.d_head())?; // 1 layer, up to 64 positions
/// let prompt = Var::constant(x.narrow(1, 0, 4)?);
/// attn.forward_cached(&prompt, &mut cache, 0, &mut Ctx::eval())?;
/// let last = attn.forward_cached(&Var::constant(x.narrow(1, 4, 1)?), &mut cache, 0, &mut Ctx::eval())?;
/// assert_eq!(cache.len(), 5);
/// let want = full.value().narrow(1, 4, 1)?.to_vec();
/// assert!(last.value().to_vec().iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
/// # Ok::<(), elide_models::Error>(())
/// ```
pub struct CausalSelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    d_model: usize,
}

impl CausalSelfAttention {
    /// Registers the projections under `scope`.
    ///
    /// # Errors
    /// [`Error::Config`] unless `heads` divides `d_model` into heads of even width.
    pub fn new(
        scope: &mut Scope<'_>,
        d_model: usize,
        heads: usize,
        layout: WeightLayout,
        rng: &mut Rng,
    ) -> Result<CausalSelfAttention> {
        if heads == 0 || !d_model.is_multiple_of(heads) || !(d_model / heads).is_multiple_of(2) {
            return Err(Error::config(
                "CausalSelfAttention::new",
                format!("heads must divide d_model into heads of even width, got d_model {d_model}, heads {heads}"),
            ));
        }
        let mut linear = |name: &str| Linear::new(&mut scope.scope(name), d_model, d_model, false, layout, rng);
        Ok(CausalSelfAttention { q: linear("q")?, k: linear("k")?, v: linear("v")?, o: linear("o")?, heads, d_model })
    }

    /// Heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Width of one head.
    pub fn d_head(&self) -> usize {
        self.d_model / self.heads
    }

    /// `x` as `(batch, seq)`, or a shape error.
    fn batch_seq(&self, op: &'static str, x: &Var) -> Result<(usize, usize)> {
        match x.shape() {
            &[b, t, d] if d == self.d_model && t > 0 => Ok((b, t)),
            s => Err(Error::shape(op, format!("input must be [batch, seq > 0, {}], got {s:?}", self.d_model))),
        }
    }

    /// The projections of `x` (`[batch, seq, d_model]`), each `[batch, seq, heads, d_head]`,
    /// `q` and `k` rotated for positions `offset..`.
    fn project(&self, x: &Var, offset: usize, ctx: &mut Ctx<'_>) -> Result<[Var; 3]> {
        let (b, t) = self.batch_seq("CausalSelfAttention", x)?;
        let split = [b, t, self.heads, self.d_head()];
        let q = rotary(&self.q.forward(x, ctx)?.reshape(&split)?, offset, ROPE_BASE)?;
        let k = rotary(&self.k.forward(x, ctx)?.reshape(&split)?, offset, ROPE_BASE)?;
        let v = self.v.forward(x, ctx)?.reshape(&split)?;
        Ok([q, k, v])
    }

    /// Heads `[batch, heads, seq, d_head]` joined and projected: `[batch, seq, d_model]`.
    fn join(&self, heads: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let (b, t) = (heads.shape()[0], heads.shape()[2]);
        self.o.forward(&heads.permute(&[0, 2, 1, 3])?.reshape(&[b, t, self.d_model])?, ctx)
    }

    /// One decode step: the outputs for the `seq` new positions of `x` (`[batch, seq,
    /// d_model]`), which sit after the `cache.layer_len(layer)` positions layer `layer` of
    /// `cache` holds. Their keys and values are appended to the cache; attention reads the
    /// cache in place. Records no gradient. The outputs equal those of [`Module::forward`] on
    /// the whole sequence at the same positions.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` or the cache does not fit the layer (`[.., batch, heads, ..,
    /// d_head]`), [`Error::Config`] if the new positions pass the cache's `max_len`.
    pub fn forward_cached(&self, x: &Var, cache: &mut KvCache, layer: usize, ctx: &mut Ctx<'_>) -> Result<Var> {
        let (b, t) = self.batch_seq("CausalSelfAttention::forward_cached", x)?;
        self.check_cache("CausalSelfAttention::forward_cached", cache, b)?;
        no_grad(|| {
            let pos = cache.layer_len(layer);
            let [q, k, v] = self.project(x, pos, ctx)?;
            cache.append(layer, &k.value().to_vec(), &v.value().to_vec(), t)?;
            let shape = AttentionShape {
                batch: b,
                heads: self.heads,
                q_len: t,
                kv_len: pos + t,
                kv_capacity: cache.max_len(),
                d_head: self.d_head(),
            };
            let q = q.value().permute(&[0, 2, 1, 3])?.to_vec();
            let mut out = vec![0.0f32; q.len()];
            attention_forward(Isa::active(), shape, &q, cache.keys(layer), cache.values(layer), &mut out, None)?;
            ctx.flops += shape.causal_flops();
            let heads = Tensor::from_vec(out, &[b, self.heads, t, self.d_head()])?;
            self.join(&Var::constant(heads), ctx)
        })
    }

    /// Appends the keys and values of `x` (`[batch, seq, d_model]`) to layer `layer` of
    /// `cache`, at the positions after those it holds, without attending: the cache entries a
    /// token leaves in a layer it skips (an early exit's state propagation, CALM). Costs the two
    /// projections. Records no gradient.
    ///
    /// # Errors
    /// As [`CausalSelfAttention::forward_cached`].
    pub fn append_kv(&self, x: &Var, cache: &mut KvCache, layer: usize, ctx: &mut Ctx<'_>) -> Result<()> {
        let (b, t) = self.batch_seq("CausalSelfAttention::append_kv", x)?;
        self.check_cache("CausalSelfAttention::append_kv", cache, b)?;
        no_grad(|| {
            let split = [b, t, self.heads, self.d_head()];
            let k = rotary(&self.k.forward(x, ctx)?.reshape(&split)?, cache.layer_len(layer), ROPE_BASE)?;
            let v = self.v.forward(x, ctx)?;
            cache.append(layer, &k.value().to_vec(), &v.value().to_vec(), t)
        })
    }

    fn check_cache(&self, op: &'static str, cache: &KvCache, b: usize) -> Result<()> {
        let [_, cb, ch, _, cd] = cache.dims();
        if (cb, ch, cd) != (b, self.heads, self.d_head()) {
            return Err(Error::shape(
                op,
                format!(
                    "the cache holds batch {cb}, heads {ch}, d_head {cd}; the input needs batch {b}, heads {}, d_head {}",
                    self.heads,
                    self.d_head()
                ),
            ));
        }
        Ok(())
    }
}

impl Module for CausalSelfAttention {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let [q, k, v] = self.project(x, 0, ctx)?;
        let heads = |x: &Var| x.permute(&[0, 2, 1, 3]);
        let out = causal_attention(&heads(&q)?, &heads(&k)?, &heads(&v)?)?;
        let (b, t) = (x.shape()[0], x.shape()[1]);
        ctx.flops += AttentionShape::self_attention(b, self.heads, t, self.d_head()).causal_flops();
        self.join(&out, ctx)
    }

    fn params(&self) -> Vec<&Param> {
        [&self.q, &self.k, &self.v, &self.o].into_iter().flat_map(|l| l.params()).collect()
    }
}

#[cfg(test)]
mod tests;
