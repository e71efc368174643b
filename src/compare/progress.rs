//! Progress bars while `elide compare` trains (on standard error, so `--json` output stays
//! clean).

use indicatif::{ProgressBar, ProgressStyle};

/// One model's training progress.
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar of `steps` steps labelled `name`.
    pub fn new(name: &str, steps: u64) -> Progress {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>22} [{bar:30}] {pos:>5}/{len} {msg} ({eta})")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        Progress(bar)
    }

    /// Steps done, and a message (kept if empty).
    pub fn set(&self, done: u64, msg: &str) {
        self.0.set_position(done);
        if !msg.is_empty() {
            self.0.set_message(msg.to_string());
        }
    }

    /// Leaves the finished bar on screen.
    pub fn finish(&self) {
        self.0.finish();
    }
}
