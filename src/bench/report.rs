//! A benchmark report: a readable table, and one flat JSON object of named figures.
//!
//! In table mode ([`set_live`]) the title, header and every row are printed the moment they
//! are added, so a long benchmark shows its progress instead of a minute of silence; the
//! notes and figures follow at the end.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static LIVE: AtomicBool = AtomicBool::new(false);

/// Print table rows as they are added (table mode) rather than collecting them (JSON mode).
pub fn set_live(live: bool) {
    LIVE.store(live, Ordering::Relaxed);
}

/// Writes `text` and a newline to standard output. A reader that went away (`elide bench … |
/// head`) ends the program quietly, as it would a C program, instead of a panic in `println!`.
pub fn print_line(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("elide: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// Narrowest column of a live table: rows are printed before the widest cell is known.
const MIN_WIDTH: usize = 10;

/// Rows of a table plus the named figures an issue asks for.
#[derive(Default, Debug)]
pub struct Report {
    title: String,
    header: Vec<String>,
    widths: Vec<usize>,
    rows: Vec<Vec<String>>,
    figures: BTreeMap<String, f64>,
    labels: BTreeMap<String, String>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report with a title and column names (printed at once in table mode). Every
    /// report carries the instruction set and the thread count it ran with.
    pub fn new(title: &str, header: &[&str]) -> Report {
        Report::with_widths(title, header, &[])
    }

    /// As [`Report::new`], column `i` at least `min_widths[i]` wide (a live table cannot widen a
    /// column after its first row).
    pub fn with_widths(title: &str, header: &[&str], min_widths: &[usize]) -> Report {
        let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
        let widths = header
            .iter()
            .enumerate()
            .map(|(i, h)| h.chars().count().max(MIN_WIDTH).max(min_widths.get(i).copied().unwrap_or(0)))
            .collect();
        let mut r = Report { title: title.into(), header, widths, ..Report::default() };
        r.label("isa", elide::kernels::Isa::active().name());
        r.figure("threads", rayon::current_num_threads() as f64);
        if LIVE.load(Ordering::Relaxed) {
            print_line(&format!("{}\n{}", r.title, r.line(&r.header)));
        }
        r
    }

    /// Adds a table row (printed at once in table mode).
    pub fn row(&mut self, cells: Vec<String>) {
        if LIVE.load(Ordering::Relaxed) {
            print_line(&self.line(&cells));
        }
        self.rows.push(cells);
    }

    /// Records a named figure (a JSON key).
    pub fn figure(&mut self, key: &str, value: f64) {
        self.figures.insert(key.into(), value);
    }

    /// Records a named text value (a JSON key with a string value).
    pub fn label(&mut self, key: &str, value: &str) {
        self.labels.insert(key.into(), value.into());
    }

    /// Adds a line printed under the table.
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    /// The flat JSON object of figures (values rounded to 4 significant digits) and labels.
    pub fn to_json(&self) -> String {
        let mut map: serde_json::Map<String, serde_json::Value> =
            self.figures.iter().map(|(k, v)| (k.clone(), serde_json::json!(round_sig(*v, 4)))).collect();
        for (k, v) in &self.labels {
            map.insert(k.clone(), serde_json::json!(v));
        }
        serde_json::to_string_pretty(&serde_json::Value::Object(map)).expect("figures are finite numbers")
    }

    /// What is left to print after the live rows: the notes, then the figures.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        if !LIVE.load(Ordering::Relaxed) {
            out += &format!("{}\n{}\n", self.title, self.line(&self.header));
            for row in &self.rows {
                out += &self.line(row);
                out.push('\n');
            }
        }
        for note in &self.notes {
            out += note;
            out.push('\n');
        }
        out.push('\n');
        for (k, v) in &self.labels {
            out += &format!("{k:<40} {v}\n");
        }
        for (k, v) in &self.figures {
            out += &format!("{k:<40} {}\n", round_sig(*v, 4));
        }
        out
    }

    /// One row, each cell right-aligned to its column's width.
    fn line(&self, cells: &[String]) -> String {
        cells.iter().zip(&self.widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ")
    }
}

/// Rounds to `digits` significant digits (for stable, readable output).
fn round_sig(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}
