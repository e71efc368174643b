//! Broadcasting arithmetic. Each input's gradient is summed back to its own shape.

use super::reduce_to_shape;
use crate::error::Result;
use crate::var::Var;
use elide_tensor::Tensor;

impl Var {
    /// `self + rhs` (broadcasting).
    pub fn add(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.add(&rhs.value)?;
        let (sa, sb) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(Var::from_op("add", value, &[self, rhs], move |g| {
            Ok(vec![Some(reduce_to_shape(g, &sa)?), Some(reduce_to_shape(g, &sb)?)])
        }))
    }

    /// `self - rhs` (broadcasting).
    pub fn sub(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.sub(&rhs.value)?;
        let (sa, sb) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(Var::from_op("sub", value, &[self, rhs], move |g| {
            Ok(vec![Some(reduce_to_shape(g, &sa)?), Some(reduce_to_shape(&g.neg(), &sb)?)])
        }))
    }

    /// `self ⊙ rhs` (broadcasting).
    pub fn mul(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.mul(&rhs.value)?;
        if !Var::records(&[self, rhs]) {
            return Ok(Var::constant(value));
        }
        let (a, b) = (self.value.clone(), rhs.value.clone());
        Ok(Var::from_op("mul", value, &[self, rhs], move |g| {
            Ok(vec![Some(reduce_to_shape(&g.mul(&b)?, a.shape())?), Some(reduce_to_shape(&g.mul(&a)?, b.shape())?)])
        }))
    }

    /// `self / rhs` (broadcasting).
    pub fn div(&self, rhs: &Var) -> Result<Var> {
        let value = self.value.div(&rhs.value)?;
        if !Var::records(&[self, rhs]) {
            return Ok(Var::constant(value));
        }
        let (a, b, out) = (self.value.clone(), rhs.value.clone(), value.clone());
        Ok(Var::from_op("div", value, &[self, rhs], move |g| {
            // d(a/b)/da = 1/b, d(a/b)/db = -(a/b)/b.
            let ga = g.div(&b)?;
            let gb = ga.mul(&out)?.neg();
            Ok(vec![Some(reduce_to_shape(&ga, a.shape())?), Some(reduce_to_shape(&gb, b.shape())?)])
        }))
    }

    /// Elementwise `max(self, rhs)`; the gradient goes to `self` where `self >= rhs`.
    pub fn maximum(&self, rhs: &Var) -> Result<Var> {
        self.select_by("maximum", rhs, |a, b| a >= b)
    }

    /// Elementwise `min(self, rhs)`; the gradient goes to `self` where `self <= rhs`.
    pub fn minimum(&self, rhs: &Var) -> Result<Var> {
        self.select_by("minimum", rhs, |a, b| a <= b)
    }

    fn select_by(&self, name: &'static str, rhs: &Var, pick_self: fn(f32, f32) -> bool) -> Result<Var> {
        let shape = elide_tensor::broadcast_shape(self.shape(), rhs.shape())?;
        let a = self.value.broadcast_to(&shape)?.to_vec();
        let b = rhs.value.broadcast_to(&shape)?.to_vec();
        let mask: Vec<f32> = a.iter().zip(&b).map(|(&x, &y)| if pick_self(x, y) { 1.0 } else { 0.0 }).collect();
        let value: Vec<f32> = a.iter().zip(&b).zip(&mask).map(|((&x, &y), &m)| if m == 1.0 { x } else { y }).collect();
        let value = Tensor::from_vec(value, &shape)?;
        let mask = Tensor::from_vec(mask, &shape)?;
        let (sa, sb) = (self.shape().to_vec(), rhs.shape().to_vec());
        Ok(Var::from_op(name, value, &[self, rhs], move |g| {
            let to_self = g.mul(&mask)?;
            let to_rhs = g.sub(&to_self)?;
            Ok(vec![Some(reduce_to_shape(&to_self, &sa)?), Some(reduce_to_shape(&to_rhs, &sb)?)])
        }))
    }

    /// `self + c`.
    pub fn add_scalar(&self, c: f32) -> Var {
        Var::from_op("add_scalar", self.value.add_scalar(c), &[self], |g| Ok(vec![Some(g.clone())]))
    }

    /// `self · c`.
    pub fn mul_scalar(&self, c: f32) -> Var {
        Var::from_op("mul_scalar", self.value.mul_scalar(c), &[self], move |g| Ok(vec![Some(g.mul_scalar(c))]))
    }

    /// `-self`.
    pub fn neg(&self) -> Var {
        Var::from_op("neg", self.value.neg(), &[self], |g| Ok(vec![Some(g.neg())]))
    }
}
