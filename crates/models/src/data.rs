//! Token data for language models: the [`TokenSource`] trait every data set implements (byte
//! text from a file here, the generated tasks of `elide compare`), and deterministic batches.
//!
//! Batch `i` of a run depends only on the source, the seed and `i` — not on how many batches
//! came before in this process — so a resumed run draws exactly the batches an uninterrupted one
//! would.

use crate::error::{Error, Result};
use elide_tensor::Rng;
use std::path::Path;

/// Next-token prediction examples: `inputs[b, t]` is followed by `targets[b, t]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `[batch · seq]` token ids, row-major.
    pub inputs: Vec<u32>,
    /// `[batch · seq]` the next token of each input.
    pub targets: Vec<u32>,
    /// Sequences in the batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
}

/// Which part of a data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// What the model trains on.
    Train,
    /// Held out for evaluation.
    Validation,
}

/// A source of token sequences, split into training and validation parts.
pub trait TokenSource: Send + Sync {
    /// The vocabulary size (every id is below it).
    fn vocab(&self) -> usize;

    /// Batch `index` of `split`: `batch` sequences of `seq` inputs and their next tokens, a
    /// function of `(seed, index)` only — the same whenever it is drawn.
    ///
    /// # Errors
    /// [`Error::Config`] if `batch` or `seq` is 0 or the source cannot make such sequences.
    fn batch(&self, split: Split, seed: u64, index: u64, batch: usize, seq: usize) -> Result<Batch>;
}

/// The generator of batch `index` under `seed`: SplitMix-style mixing, so nearby `(seed,
/// index)` pairs give unrelated streams.
pub fn batch_rng(seed: u64, index: u64) -> Rng {
    Rng::seed(seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// `batch` windows of `seq + 1` tokens of `tokens` at positions drawn from
/// [`batch_rng`]`(seed, index)`.
///
/// # Errors
/// As [`TokenSource::batch`].
pub fn random_windows(tokens: &[u32], seed: u64, index: u64, batch: usize, seq: usize) -> Result<Batch> {
    if batch == 0 || seq == 0 {
        return Err(Error::config("batch", format!("batch and seq must be > 0, got {batch} and {seq}")));
    }
    if tokens.len() < seq + 1 {
        return Err(Error::config(
            "batch",
            format!("the data has {} tokens, fewer than one sequence of {seq} plus its next token", tokens.len()),
        ));
    }
    let mut rng = batch_rng(seed, index);
    let starts = (tokens.len() - seq) as u64;
    let (mut inputs, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
    for _ in 0..batch {
        let s = rng.below(starts) as usize;
        inputs.extend_from_slice(&tokens[s..s + seq]);
        targets.extend_from_slice(&tokens[s + 1..s + seq + 1]);
    }
    Ok(Batch { inputs, targets, batch, seq })
}

/// Byte-level text: every byte of a UTF-8 file is a token (vocabulary 256). The last
/// `validation_fraction` of the bytes (by position) are held out.
#[derive(Clone, Debug)]
pub struct ByteText {
    train: Vec<u32>,
    validation: Vec<u32>,
}

impl ByteText {
    /// The bytes of `text`, split by position.
    ///
    /// # Errors
    /// [`Error::Config`] for a fraction outside `[0, 1)` or an empty text.
    pub fn new(text: &str, validation_fraction: f32) -> Result<ByteText> {
        if !(0.0..1.0).contains(&validation_fraction) {
            return Err(Error::config(
                "ByteText",
                format!("validation fraction {validation_fraction} must be in [0, 1)"),
            ));
        }
        if text.is_empty() {
            return Err(Error::config("ByteText", "the text is empty"));
        }
        let bytes: Vec<u32> = text.bytes().map(u32::from).collect();
        let split = bytes.len() - (bytes.len() as f64 * validation_fraction as f64).floor() as usize;
        Ok(ByteText { validation: bytes[split..].to_vec(), train: bytes[..split].to_vec() })
    }

    /// The bytes of the UTF-8 file at `path`, split by position.
    ///
    /// # Errors
    /// [`Error::Config`] naming the path if it cannot be read or is not UTF-8; as
    /// [`ByteText::new`].
    pub fn from_file(path: &Path, validation_fraction: f32) -> Result<ByteText> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::config("ByteText", format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::config(
                "ByteText",
                format!("{} is not UTF-8 (first bad byte at {})", path.display(), e.utf8_error().valid_up_to()),
            )
        })?;
        ByteText::new(&text, validation_fraction)
    }
}

impl ByteText {
    /// The bytes of a split, in order.
    pub fn tokens(&self, split: Split) -> &[u32] {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
        }
    }
}

impl TokenSource for ByteText {
    fn vocab(&self) -> usize {
        256
    }

    /// Random windows of the split ([`random_windows`]).
    fn batch(&self, split: Split, seed: u64, index: u64, batch: usize, seq: usize) -> Result<Batch> {
        random_windows(self.tokens(split), seed, index, batch, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_split_by_position_and_windows_are_next_token_pairs() {
        let text = "hello, wörld! ".repeat(10); // ö is two bytes
        let data = ByteText::new(&text, 0.25).unwrap();
        let all: Vec<u32> = text.bytes().map(u32::from).collect();
        let n = all.len();
        assert_eq!(data.tokens(Split::Train), &all[..n - n / 4]);
        assert_eq!(data.tokens(Split::Validation), &all[n - n / 4..]);
        let b = data.batch(Split::Train, 7, 3, 4, 5).unwrap();
        assert_eq!((b.inputs.len(), b.targets.len(), b.batch, b.seq), (20, 20, 4, 5));
        let train = data.tokens(Split::Train);
        for row in 0..4 {
            let window = &b.inputs[row * 5..row * 5 + 5];
            let start = (0..train.len() - 5)
                .find(|&s| &train[s..s + 5] == window && train[s + 1..s + 6] == b.targets[row * 5..row * 5 + 5]);
            assert!(start.is_some(), "row {row} is not a window of the training bytes");
        }
    }

    #[test]
    fn a_batch_depends_only_on_seed_and_index() {
        let data = ByteText::new(&"abcdefghijklmnopqrstuvwxyz".repeat(20), 0.1).unwrap();
        let b3 = data.batch(Split::Train, 1, 3, 8, 4).unwrap();
        // Drawing other batches first changes nothing.
        for i in 0..3 {
            data.batch(Split::Train, 1, i, 8, 4).unwrap();
        }
        assert_eq!(data.batch(Split::Train, 1, 3, 8, 4).unwrap(), b3);
        assert_ne!(data.batch(Split::Train, 1, 4, 8, 4).unwrap(), b3);
        assert_ne!(data.batch(Split::Train, 2, 3, 8, 4).unwrap(), b3);
    }

    #[test]
    fn bad_data_is_refused_with_a_clear_message() {
        let data = ByteText::new("short", 0.0).unwrap();
        let err = data.batch(Split::Train, 0, 0, 2, 5).err().unwrap().to_string();
        assert_eq!(err, "batch: the data has 5 tokens, fewer than one sequence of 5 plus its next token");
        assert!(data.batch(Split::Validation, 0, 0, 1, 1).is_err(), "an empty validation split");
        assert_eq!(ByteText::new("", 0.1).err().unwrap().to_string(), "ByteText: the text is empty");
        assert!(ByteText::new("abc", 1.0).is_err());
        let dir = std::env::temp_dir().join(format!("elide-data-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("latin1.txt");
        std::fs::write(&bad, [b'a', b'b', 0xE9, b'c']).unwrap();
        let err = ByteText::from_file(&bad, 0.1).err().unwrap().to_string();
        assert!(err.ends_with("latin1.txt is not UTF-8 (first bad byte at 2)"), "{err}");
        let missing = dir.join("missing.txt");
        assert!(ByteText::from_file(&missing, 0.1).err().unwrap().to_string().starts_with("ByteText: cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
