//! Fuzzing `checkpoint::load`: random bytes, and random mutations (bit flips, overwritten
//! bytes, truncation, insertion) of a valid checkpoint. Nothing may panic or abort, and a file
//! that loads must give back exactly what was saved — a mutation is either refused or harmless
//! (the header's padding), never silent garbage. A few hundred cases run in CI; the ignored
//! `…_long` twins run 100,000 each:
//! `cargo test --release -p elide-autodiff --test fuzz_checkpoint -- --ignored`.

use elide_autodiff::checkpoint::{self, json};
use elide_autodiff::{AdamW, Optimizer, ParamStore, Var};
use elide_tensor::{Rng, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A store of two parameters and an AdamW that has stepped once.
fn model(seed: u64) -> (ParamStore, AdamW) {
    let mut rng = Rng::seed(seed);
    let mut store = ParamStore::new();
    let w = store.register("layer.w", Tensor::randn(&[3, 2], &mut rng)).unwrap();
    store.register("layer.b", Tensor::randn(&[2], &mut rng)).unwrap();
    let mut opt = AdamW::new(0.01);
    let loss = Var::constant(Tensor::randn(&[4, 3], &mut rng)).matmul(&w.var()).unwrap().square().sum_all();
    opt.step(&store, &loss.backward().unwrap()).unwrap();
    (store, opt)
}

fn bits(store: &ParamStore) -> Vec<u32> {
    store.iter().flat_map(|p| p.value().to_vec()).map(f32::to_bits).collect()
}

/// The valid checkpoint every mutation starts from, and the parameters it holds.
fn good() -> &'static (Vec<u8>, Vec<u32>) {
    static GOOD: OnceLock<(Vec<u8>, Vec<u32>)> = OnceLock::new();
    GOOD.get_or_init(|| {
        let (store, opt) = model(1);
        let path = scratch("good");
        checkpoint::save(&path, &store, Some(&opt), &json!({"model": "fuzz", "step": 1})).unwrap();
        (std::fs::read(&path).unwrap(), bits(&store))
    })
}

/// A file path private to this process and thread.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("elide-fuzz-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{:?}.safetensors", std::thread::current().id()))
}

/// Loads `bytes` into a fresh model: an error is fine; a success must restore the saved values.
fn check_load(bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = scratch("case");
    std::fs::write(&path, bytes).unwrap();
    let (store, mut opt) = model(2);
    let before = bits(&store);
    match checkpoint::load(&path, &store, Some(&mut opt)) {
        Ok(_) => {
            prop_assert_eq!(bits(&store), good().1.clone(), "a mutated file loaded different values");
            prop_assert_eq!(opt.steps(), 1);
        }
        Err(_) => prop_assert_eq!(bits(&store), before, "a refused load changed the model"),
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, value: u8 },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn mutate(mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = good().0.clone();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip { at, bit } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b ^= 1 << bit;
                }
            }
            Mutation::Set { at, value } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = *value;
                }
            }
            Mutation::Truncate { len } => bytes.truncate(len % n),
            Mutation::Insert { at, bytes: new } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, new.iter().copied());
            }
        }
    }
    bytes
}

/// Random bytes behind a plausible header length, so some reach the JSON parser.
fn random_file() -> impl Strategy<Value = Vec<u8>> {
    (0u64..300, proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(len, mut rest)| {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.append(&mut rest);
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn fuzz_checkpoint_mutations(mutations in proptest::collection::vec(mutation(), 1..4)) {
        check_load(&mutate(&mutations))?;
    }

    #[test]
    fn fuzz_checkpoint_random_bytes(bytes in random_file()) {
        check_load(&bytes)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100_000))]

    #[test]
    #[ignore = "long fuzzing run; see README.md"]
    fn fuzz_checkpoint_mutations_long(mutations in proptest::collection::vec(mutation(), 1..4)) {
        check_load(&mutate(&mutations))?;
    }

    #[test]
    #[ignore = "long fuzzing run; see README.md"]
    fn fuzz_checkpoint_random_bytes_long(bytes in random_file()) {
        check_load(&bytes)?;
    }
}
