//! `elide train` and `elide generate`: a transformer language model trained on a text file a
//! user gives, and text generated from its checkpoint.
//!
//! A run directory holds `config.json` (the model and training settings), the checkpoint and
//! the metrics. Every failure is a message naming the problem and a non-zero exit; a refused
//! command overwrites nothing.

use elide::autodiff::checkpoint;
use elide::autodiff::ParamStore;
use elide::models::{ByteText, Event, LmConfig, Sampling, TrainConfig, Trainer, TransformerLm, CHECKPOINT_FILE};
use elide::tensor::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What `--config` holds: the model and, optionally, the training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The model.
    pub model: LmConfig,
    /// The training settings (defaults for what is absent).
    #[serde(default)]
    pub train: TrainConfig,
}

/// The file a run's configuration is saved under.
pub const CONFIG_FILE: &str = "config.json";

fn read_config(path: &Path) -> Result<RunConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: RunConfig = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    config.model.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    config.train.validate().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(config)
}

/// `elide train --config C --data F --out D [--resume]`.
pub fn train(config_path: &Path, data_path: &Path, out: &Path, resume: bool) -> Result<(), String> {
    let config = read_config(config_path)?;
    let data = ByteText::from_file(data_path, 0.1).map_err(|e| e.to_string())?;
    if config.model.vocab < 256 {
        return Err(format!(
            "{}: byte-level text needs vocab >= 256, got {}",
            config_path.display(),
            config.model.vocab
        ));
    }
    let saved = out.join(CONFIG_FILE);
    if resume {
        let before = read_config(&saved).map_err(|e| format!("cannot resume: {e}"))?;
        if before != config {
            return Err(format!("cannot resume: {} differs from the run's {}", config_path.display(), saved.display()));
        }
    } else if out.join(CHECKPOINT_FILE).exists() {
        return Err(format!(
            "{} already holds a run: pass --resume to continue it, or choose another --out",
            out.display()
        ));
    }
    let mut store = ParamStore::new();
    let model = TransformerLm::new(&mut store, config.model.clone(), &mut Rng::seed(config.train.seed))
        .map_err(|e| e.to_string())?;
    let mut trainer =
        Trainer::new(&model, &store, &data, config.train.clone(), Some(out)).map_err(|e| e.to_string())?;
    if resume {
        trainer.resume().map_err(|e| format!("cannot resume: {e}"))?;
    } else {
        std::fs::write(&saved, serde_json::to_string_pretty(&config).expect("a config serialises"))
            .map_err(|e| format!("cannot write {}: {e}", saved.display()))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // Ctrl-C finishes the step in progress and saves; a second one ends the process.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    let bar = ProgressBar::new(config.train.steps);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg} ({eta})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_position(trainer.step());
    let summary = trainer
        .run(&stop, &mut |event| match event {
            Event::Step(r) => {
                bar.set_position(r.step);
                bar.set_message(format!("loss {:.3}  {:.0} tok/s", r.loss, r.tokens_per_s));
            }
            Event::Eval { step, loss } => bar.println(format!("step {step}: eval loss {loss:.4}")),
            Event::Checkpoint(path) => bar.println(format!("saved {}", path.display())),
        })
        .map_err(|e| e.to_string())?;
    bar.finish();
    if summary.interrupted {
        println!("stopped at step {} (resume with --resume)", summary.steps);
    } else {
        println!("trained {} steps; eval loss {:.4}", summary.steps, summary.eval_loss.unwrap_or(f32::NAN));
    }
    Ok(())
}

/// `elide generate --checkpoint D --prompt P`.
pub fn generate(dir: &Path, prompt: &str, max_new: usize, sampling: Sampling, seed: u64) -> Result<String, String> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let mut store = ParamStore::new();
    let model = TransformerLm::new(&mut store, config.model, &mut Rng::seed(0)).map_err(|e| e.to_string())?;
    checkpoint::load(&dir.join(CHECKPOINT_FILE), &store, None).map_err(|e| e.to_string())?;
    let ids: Vec<u32> = prompt.bytes().map(u32::from).collect();
    let out = model.generate(&ids, max_new, sampling, &mut Rng::seed(seed)).map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = out.iter().map(|&b| b as u8).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
