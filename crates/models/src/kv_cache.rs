//! [`KvCache`]: the keys and values of past positions, kept for decoding one token at a time.

use crate::error::{Error, Result};

/// Preallocated key and value buffers, `[layers, batch, heads, max_len, d_head]` each, filled
/// position by position as a model decodes.
///
/// Tensors in elide are immutable, so a cache built from tensors would copy every past key at
/// every new token; this one owns two buffers allocated once and [`KvCache::append`] writes the
/// new positions in place. Attention reads a layer's buffers directly ([`KvCache::keys`],
/// [`KvCache::values`]): the fused kernel takes a key buffer with more rows per head
/// (`max_len`) than it reads (the layer's length). Each layer keeps its own length, so the
/// layers of one decode step append in turn; [`KvCache::len`] is the number of positions every
/// layer holds.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: usize,
    batch: usize,
    heads: usize,
    max_len: usize,
    d_head: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    lens: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `layers` attention layers of `heads` heads of width `d_head`, for
    /// `batch` sequences of up to `max_len` positions.
    ///
    /// # Errors
    /// [`Error::Config`] if a size is 0 or the buffers would not fit in memory's address range.
    pub fn new(layers: usize, batch: usize, heads: usize, max_len: usize, d_head: usize) -> Result<KvCache> {
        let dims = [layers, batch, heads, max_len, d_head];
        let elems = dims.iter().try_fold(1usize, |n, &x| n.checked_mul(x)).filter(|&n| n <= isize::MAX as usize / 4);
        match elems {
            Some(n) if n > 0 => Ok(KvCache {
                layers,
                batch,
                heads,
                max_len,
                d_head,
                keys: vec![0.0; n],
                values: vec![0.0; n],
                lens: vec![0; layers],
            }),
            _ => Err(Error::config(
                "KvCache::new",
                format!("needs sizes > 0 that fit in memory, got [layers, batch, heads, max_len, d_head] = {dims:?}"),
            )),
        }
    }

    /// Positions every layer holds (the position the next decode step starts at).
    pub fn len(&self) -> usize {
        self.lens.iter().copied().min().unwrap_or(0)
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Positions layer `layer` holds (`0` for a layer the cache does not have).
    pub fn layer_len(&self, layer: usize) -> usize {
        self.lens.get(layer).copied().unwrap_or(0)
    }

    /// The most positions a sequence can have.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// `[layers, batch, heads, max_len, d_head]`.
    pub fn dims(&self) -> [usize; 5] {
        [self.layers, self.batch, self.heads, self.max_len, self.d_head]
    }

    /// Forgets every position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.lens.fill(0);
    }

    /// Writes `new` positions of layer `layer` after the ones it holds. `keys` and `values` are
    /// `[batch, new, heads, d_head]` (the layout a projection gives before heads are split
    /// off).
    ///
    /// # Errors
    /// [`Error::Shape`] for a layer out of range or buffers of the wrong length;
    /// [`Error::Config`] if the positions would pass `max_len`. Nothing is written then.
    pub fn append(&mut self, layer: usize, keys: &[f32], values: &[f32], new: usize) -> Result<()> {
        const OP: &str = "KvCache::append";
        let (b, h, d) = (self.batch, self.heads, self.d_head);
        if layer >= self.layers {
            return Err(Error::shape(OP, format!("layer {layer} out of range for a cache of {} layers", self.layers)));
        }
        let want = new.checked_mul(b * h * d);
        for (name, got) in [("keys", keys.len()), ("values", values.len())] {
            if want != Some(got) {
                return Err(Error::shape(
                    OP,
                    format!("{name} has {got} elements, expected [batch, new, heads, d_head] = [{b}, {new}, {h}, {d}]"),
                ));
            }
        }
        let pos = self.lens[layer];
        if new > self.max_len - pos {
            return Err(Error::config(
                OP,
                format!("layer {layer} holds {pos} of {} positions; {new} more do not fit", self.max_len),
            ));
        }
        let layer_elems = b * h * self.max_len * d;
        for (src, dst) in [(keys, &mut self.keys), (values, &mut self.values)] {
            let dst = &mut dst[layer * layer_elems..(layer + 1) * layer_elems];
            for (bi, src) in src.chunks_exact(new * h * d).enumerate() {
                for (t, src) in src.chunks_exact(h * d).enumerate() {
                    for (hi, src) in src.chunks_exact(d).enumerate() {
                        let row = ((bi * h + hi) * self.max_len + pos + t) * d;
                        dst[row..row + d].copy_from_slice(src);
                    }
                }
            }
        }
        self.lens[layer] = pos + new;
        Ok(())
    }

    /// Layer `layer`'s key buffer, `[batch, heads, max_len, d_head]`; the first
    /// [`KvCache::layer_len`] rows per head are keys. Empty for a layer the cache does not have.
    pub fn keys(&self, layer: usize) -> &[f32] {
        self.layer_slice(&self.keys, layer)
    }

    /// Layer `layer`'s value buffer, laid out as [`KvCache::keys`].
    pub fn values(&self, layer: usize) -> &[f32] {
        self.layer_slice(&self.values, layer)
    }

    fn layer_slice<'a>(&self, buf: &'a [f32], layer: usize) -> &'a [f32] {
        if layer >= self.layers {
            return &[];
        }
        let n = buf.len() / self.layers;
        &buf[layer * n..(layer + 1) * n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_writes_positions_in_place_per_head() {
        let mut cache = KvCache::new(2, 1, 2, 3, 2).unwrap();
        // [batch 1, new 2, heads 2, d 2]: (t, h) rows numbered so their place is visible.
        let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
        let before = cache.keys(1).as_ptr();
        cache.append(1, &k, &v, 2).unwrap();
        assert_eq!((cache.layer_len(1), cache.layer_len(0), cache.len()), (2, 0, 0));
        // Head 0 holds t0 = [0, 1], t1 = [4, 5]; head 1 holds [2, 3], [6, 7]; row 2 is empty.
        assert_eq!(cache.keys(1), [0.0, 1.0, 4.0, 5.0, 0.0, 0.0, 2.0, 3.0, 6.0, 7.0, 0.0, 0.0]);
        assert_eq!(cache.values(1)[6..8], [-2.0, -3.0]);
        assert_eq!(cache.keys(1).as_ptr(), before, "appending must not reallocate");
        cache.append(0, &k[..4], &v[..4], 1).unwrap();
        assert_eq!(cache.len(), 1);
        let err = cache.append(1, &k, &v, 2).unwrap_err();
        assert_eq!(err.to_string(), "KvCache::append: layer 1 holds 2 of 3 positions; 2 more do not fit");
        assert_eq!(cache.layer_len(1), 2, "a refused append writes nothing");
        let err = cache.append(0, &k[..3], &v[..4], 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KvCache::append: keys has 3 elements, expected [batch, new, heads, d_head] = [1, 1, 2, 2]"
        );
        assert!(cache.append(2, &k, &v, 2).is_err());
        cache.clear();
        assert!(cache.is_empty());
        assert!(KvCache::new(1, 1, 0, 4, 2).is_err());
        assert!(KvCache::new(usize::MAX, 2, 2, 4, 2).is_err());
    }
}
