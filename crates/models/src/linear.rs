//! [`Linear`] and [`Embedding`].

use crate::error::{Error, Result};
use crate::module::{as_rows, restore, Ctx, Module};
use elide_autodiff::{init, Param, Scope, Var};
use elide_cond::gathered::WeightLayout;
use elide_kernels::{scatter_add_rows, Isa};
use elide_tensor::{Rng, Tensor};
use std::sync::Arc;

/// `y = x·W + b` over the last dim of `x`.
///
/// Parameters: `<scope>.weight` (`[in, out]` for [`WeightLayout::InOut`], `[out, in]` for
/// [`WeightLayout::OutIn`], PyTorch's layout) and, with a bias, `<scope>.bias` `[out]`. The
/// weight is drawn `N(0, 1/in)`; the bias starts at zero.
pub struct Linear {
    weight: Param,
    bias: Option<Param>,
    layout: WeightLayout,
    fan_in: usize,
    fan_out: usize,
}

impl Linear {
    /// Registers a `fan_in → fan_out` map under `scope`.
    ///
    /// # Errors
    /// [`Error::Config`] for a size of 0; a registration error if a name is taken.
    pub fn new(
        scope: &mut Scope<'_>,
        fan_in: usize,
        fan_out: usize,
        bias: bool,
        layout: WeightLayout,
        rng: &mut Rng,
    ) -> Result<Linear> {
        if fan_in == 0 || fan_out == 0 {
            return Err(Error::config("Linear::new", format!("sizes must be > 0, got {fan_in} -> {fan_out}")));
        }
        let [_, a, b] = layout.shape(1, fan_in, fan_out);
        let weight = scope.param("weight", init::lecun_normal(&[a, b], layout, rng)?)?;
        let bias = if bias { Some(scope.param("bias", Tensor::try_zeros(&[fan_out])?)?) } else { None };
        Ok(Linear { weight, bias, layout, fan_in, fan_out })
    }

    /// The input width.
    pub fn fan_in(&self) -> usize {
        self.fan_in
    }

    /// The output width.
    pub fn fan_out(&self) -> usize {
        self.fan_out
    }

    /// The weight, in its declared layout.
    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Param> {
        self.bias.as_ref()
    }

    /// The FLOPs of a forward pass over `rows` rows.
    pub fn flops(&self, rows: usize) -> f64 {
        2.0 * (rows * self.fan_in * self.fan_out) as f64
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var, ctx: &mut Ctx<'_>) -> Result<Var> {
        let (rows, lead) = as_rows("Linear", x, self.fan_in)?;
        let w = self.weight.var();
        let w = match self.layout {
            WeightLayout::InOut => w,
            WeightLayout::OutIn => w.transpose(0, 1)?,
        };
        let mut y = rows.matmul(&w)?;
        if let Some(b) = &self.bias {
            y = y.add(&b.var())?;
        }
        ctx.flops += self.flops(rows.shape()[0]);
        restore(&y, &lead)
    }

    fn params(&self) -> Vec<&Param> {
        let mut p = vec![&self.weight];
        p.extend(&self.bias);
        p
    }
}

/// A lookup table `[vocab, d]`: row `id` for each id.
///
/// Parameter: `<scope>.weight` `[vocab, d]`, drawn `N(0, std²)`. The backward pass builds one
/// `[vocab, d]` gradient and adds each looked-up row's gradient into it (repeated ids
/// accumulate, in order); the other rows stay zero.
pub struct Embedding {
    weight: Param,
    vocab: usize,
    d: usize,
}

impl Embedding {
    /// Registers a `[vocab, d]` table under `scope`, drawn `N(0, std²)`.
    ///
    /// # Errors
    /// [`Error::Config`] for a size of 0 or a `std` that is not finite and positive.
    pub fn new(scope: &mut Scope<'_>, vocab: usize, d: usize, std: f32, rng: &mut Rng) -> Result<Embedding> {
        if vocab == 0 || d == 0 || !(std.is_finite() && std > 0.0) {
            return Err(Error::config(
                "Embedding::new",
                format!("needs vocab, d > 0 and a finite std > 0, got vocab {vocab}, d {d}, std {std}"),
            ));
        }
        let weight = scope.param("weight", init::normal(&[vocab, d], std, rng)?)?;
        Ok(Embedding { weight, vocab, d })
    }

    /// The `[vocab, d]` table.
    pub fn weight(&self) -> &Param {
        &self.weight
    }

    /// The rows of `ids`, `[ids.len(), d]`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first id `>= vocab`.
    pub fn forward(&self, ids: &[u32]) -> Result<Var> {
        lookup(&self.weight.var(), ids)
    }

    /// The vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The row width.
    pub fn dim(&self) -> usize {
        self.d
    }
}

/// Rows `ids` of `table` `[vocab, d]`, with a backward that fills one `[vocab, d]` buffer.
pub(crate) fn lookup(table: &Var, ids: &[u32]) -> Result<Var> {
    let (vocab, d) = match table.shape() {
        [v, d] => (*v, *d),
        s => return Err(Error::shape("Embedding", format!("the table must be [vocab, d], got {s:?}"))),
    };
    if let Some(i) = ids.iter().position(|&id| id as usize >= vocab) {
        return Err(Error::config("Embedding", format!("id {} at position {i} must be < vocab {vocab}", ids[i])));
    }
    let value = table.value().index_select(0, ids)?;
    let ids: Arc<[u32]> = ids.into();
    Ok(Var::from_op("embedding", value, &[table], move |g| {
        let g = g.contiguous();
        let mut grad = vec![0.0f32; vocab * d];
        let rows = g.as_slice().expect("contiguous");
        scatter_add_rows(Isa::try_active().map_err(elide_tensor::Error::from)?, rows, &ids, &mut grad, vocab, d)
            .map_err(elide_tensor::Error::from)?;
        Ok(vec![Some(Tensor::from_vec(grad, &[vocab, d])?)])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_grad};
    use elide_autodiff::ParamStore;

    #[test]
    fn linear_matches_the_naive_reference_in_both_layouts() {
        for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
            for (fi, fo, bias) in [(1, 7, true), (9, 4, false), (33, 5, true)] {
                let mut store = ParamStore::new();
                let mut rng = Rng::seed(fi as u64);
                let lin = Linear::new(&mut store.scope("l"), fi, fo, bias, layout, &mut rng).unwrap();
                if let Some(b) = lin.bias() {
                    b.set(Tensor::randn(&[fo], &mut rng)).unwrap();
                }
                let x = Tensor::randn(&[2, 3, fi], &mut rng);
                let y = lin.forward(&Var::constant(x.clone()), &mut Ctx::eval()).unwrap();
                assert_eq!(y.shape(), &[2, 3, fo]);
                let (xs, w) = (x.to_vec(), lin.weight().value().to_vec());
                let b = lin.bias().map(|b| b.value().to_vec());
                let want: Vec<f32> = (0..6 * fo)
                    .map(|i| {
                        let (r, j) = (i / fo, i % fo);
                        let dot: f64 = (0..fi)
                            .map(|k| {
                                let wk = match layout {
                                    WeightLayout::InOut => w[k * fo + j],
                                    WeightLayout::OutIn => w[j * fi + k],
                                };
                                xs[r * fi + k] as f64 * wk as f64
                            })
                            .sum();
                        (dot + b.as_ref().map_or(0.0, |b| b[j] as f64)) as f32
                    })
                    .collect();
                assert_close(&y.value().to_vec(), &want, &format!("{layout:?} {fi}x{fo}"));
                assert_eq!(store.get("l.weight").unwrap().shape(), layout.shape(1, fi, fo)[1..].to_vec());
            }
        }
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let mut store = ParamStore::new();
        let lin = Linear::new(&mut store.scope("l"), 4, 3, true, WeightLayout::OutIn, &mut Rng::seed(1)).unwrap();
        let x = Tensor::randn(&[5, 4], &mut Rng::seed(2));
        check_grad(|v| lin.forward(&v[0], &mut Ctx::eval()), &[x]);
        let grads = lin.forward(&Var::constant(Tensor::ones(&[2, 4])), &mut Ctx::eval()).unwrap().sum_all().backward();
        let grads = grads.unwrap();
        // d(sum y)/dW[j, k] = sum over rows of x[k] = 2 for the [out, in] layout.
        assert_eq!(grads.get(lin.weight()).unwrap().to_vec(), vec![2.0; 12]);
        assert_eq!(grads.get(lin.bias().unwrap()).unwrap().to_vec(), vec![2.0; 3]);
    }

    #[test]
    fn embedding_rows_and_their_gradient() {
        let mut store = ParamStore::new();
        let emb = Embedding::new(&mut store.scope("emb"), 6, 3, 1.0, &mut Rng::seed(3)).unwrap();
        let ids = [4, 1, 4, 0];
        let rows = emb.forward(&ids).unwrap();
        let table = emb.weight().value().to_vec();
        let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * 3..][..3].to_vec()).collect();
        assert_eq!(rows.value().to_vec(), want);
        let weights = Tensor::from_vec((0..12).map(|i| i as f32).collect(), &[4, 3]).unwrap();
        let grads = rows.mul(&Var::constant(weights)).unwrap().sum_all().backward().unwrap();
        // Row 4 is looked up at positions 0 and 2: its gradient is the sum of theirs.
        let mut want = vec![0.0; 18];
        for (pos, &id) in ids.iter().enumerate() {
            for j in 0..3 {
                want[id as usize * 3 + j] += (pos * 3 + j) as f32;
            }
        }
        assert_eq!(grads.get(emb.weight()).unwrap().to_vec(), want);
        check_grad(|v| lookup(&v[0], &ids), &[emb.weight().value()]);
    }

    #[test]
    fn bad_input_is_refused_by_name() {
        let mut store = ParamStore::new();
        let mut rng = Rng::seed(0);
        let lin = Linear::new(&mut store.scope("l"), 4, 3, true, WeightLayout::InOut, &mut rng).unwrap();
        let err = lin.forward(&Var::constant(Tensor::zeros(&[2, 5])), &mut Ctx::eval()).err().unwrap();
        assert_eq!(err.to_string(), "Linear: input must be [..., 4], got [2, 5]");
        let err = Linear::new(&mut store.scope("m"), 0, 3, true, WeightLayout::InOut, &mut rng).err().unwrap();
        assert_eq!(err.to_string(), "Linear::new: sizes must be > 0, got 0 -> 3");
        let emb = Embedding::new(&mut store.scope("e"), 5, 2, 0.02, &mut rng).unwrap();
        assert_eq!(emb.forward(&[1, 5]).err().unwrap().to_string(), "Embedding: id 5 at position 1 must be < vocab 5");
        assert!(Embedding::new(&mut store.scope("f"), 5, 2, f32::NAN, &mut rng).is_err());
    }
}
