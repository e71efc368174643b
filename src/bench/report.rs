//! A benchmark report: a readable table, and one flat JSON object of named figures.

use std::collections::BTreeMap;

/// Rows of a table plus the named figures an issue asks for.
#[derive(Default, Debug)]
pub struct Report {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    figures: BTreeMap<String, f64>,
    notes: Vec<String>,
}

impl Report {
    /// An empty report with a title and column names.
    pub fn new(title: &str, header: &[&str]) -> Report {
        Report { title: title.into(), header: header.iter().map(|s| s.to_string()).collect(), ..Report::default() }
    }

    /// Adds a table row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Records a named figure (a JSON key).
    pub fn figure(&mut self, key: &str, value: f64) {
        self.figures.insert(key.into(), value);
    }

    /// Adds a line printed under the table.
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    /// The flat JSON object of figures (values rounded to 4 significant digits).
    pub fn to_json(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> =
            self.figures.iter().map(|(k, v)| (k.clone(), serde_json::json!(round_sig(*v, 4)))).collect();
        serde_json::to_string_pretty(&serde_json::Value::Object(map)).expect("figures are finite numbers")
    }

    /// The table, aligned, with the figures listed after it.
    pub fn to_table(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ")
        };
        let mut out = format!("{}\n{}\n", self.title, line(&self.header));
        for row in &self.rows {
            out += &line(row);
            out.push('\n');
        }
        for note in &self.notes {
            out += note;
            out.push('\n');
        }
        out.push('\n');
        for (k, v) in &self.figures {
            out += &format!("{k:<40} {}\n", round_sig(*v, 4));
        }
        out
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
