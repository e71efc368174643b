//! `elide train` and `elide generate` end to end through the binary: a run, a resumed run, and
//! bad input refused with a message, a non-zero exit code and nothing overwritten.

use std::path::{Path, PathBuf};
use std::process::Command;

fn elide(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elide")).args(args).output().expect("the binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("elide-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(dir: &Path, steps: u64) -> PathBuf {
    let path = dir.join(format!("cfg-{steps}.json"));
    let json = format!(
        r#"{{"model": {{"vocab": 256, "d_model": 16, "heads": 2, "max_seq": 64,
            "blocks": [{{"ffn": {{"kind": "moe", "hidden": 16, "experts": 2, "top_k": 1}}}}]}},
           "train": {{"steps": {steps}, "batch": 2, "seq": 8, "eval_every": 0, "eval_batches": 1, "warmup": 1}}}}"#
    );
    std::fs::write(&path, json).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_resume_and_generate() {
    let d = dir("run");
    let text = d.join("text.txt");
    std::fs::write(&text, "hello elide, ".repeat(40)).unwrap();
    let out = d.join("run");
    let cfg = config(&d, 4);
    let (ok, stdout, stderr) = elide(&["train", "--config", s(&cfg), "--data", s(&text), "--out", s(&out)]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("trained 4 steps"), "{stdout}");
    let checkpoint = std::fs::read(out.join("checkpoint.safetensors")).unwrap();

    // A second run into the same directory is refused and changes nothing.
    let (ok, _, stderr) = elide(&["train", "--config", s(&cfg), "--data", s(&text), "--out", s(&out)]);
    assert!(!ok && stderr.contains("already holds a run: pass --resume"), "{stderr}");
    assert_eq!(std::fs::read(out.join("checkpoint.safetensors")).unwrap(), checkpoint);
    // Resuming with another config is refused.
    let other = config(&d, 9);
    let (ok, _, stderr) = elide(&["train", "--config", s(&other), "--data", s(&text), "--out", s(&out), "--resume"]);
    assert!(!ok && stderr.contains("differs from the run's"), "{stderr}");
    assert_eq!(std::fs::read(out.join("checkpoint.safetensors")).unwrap(), checkpoint);

    let (ok, stdout, stderr) =
        elide(&["generate", "--checkpoint", s(&out), "--prompt", "hello", "--max-new", "12", "--temperature", "0"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("hello") && stdout.len() >= 6, "{stdout}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn bad_input_is_refused_by_name() {
    let d = dir("bad");
    let cfg = config(&d, 2);
    let out = d.join("run");
    let train = |data: &Path| elide(&["train", "--config", s(&cfg), "--data", s(data), "--out", s(&out)]);
    let (ok, _, stderr) = train(&d.join("missing.txt"));
    assert!(!ok && stderr.contains("cannot read") && stderr.contains("missing.txt"), "{stderr}");
    let latin1 = d.join("latin1.txt");
    std::fs::write(&latin1, [b'a', 0xE9, b'b']).unwrap();
    let (ok, _, stderr) = train(&latin1);
    assert!(!ok && stderr.contains("is not UTF-8"), "{stderr}");
    let short = d.join("short.txt");
    std::fs::write(&short, "tiny").unwrap();
    let (ok, _, stderr) = train(&short);
    assert!(!ok && stderr.contains("fewer than one sequence"), "{stderr}");
    assert!(!out.exists(), "a refused run writes nothing");
    let bad_cfg = d.join("bad.json");
    std::fs::write(&bad_cfg, r#"{"model": {"vocab": 256, "d_model": 30, "heads": 4, "max_seq": 8, "blocks": [{"ffn": {"kind": "dense", "hidden": 8}}]}}"#).unwrap();
    let (ok, _, stderr) = elide(&["train", "--config", s(&bad_cfg), "--data", s(&short), "--out", s(&out)]);
    assert!(!ok && stderr.contains("heads 4 must divide d_model 30"), "{stderr}");
    let (ok, _, stderr) = elide(&["generate", "--checkpoint", s(&d.join("nothing")), "--prompt", "x"]);
    assert!(!ok && stderr.contains("cannot read"), "{stderr}");
    std::fs::remove_dir_all(&d).unwrap();
}
