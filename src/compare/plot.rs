//! `elide compare --plot DIR`: SVG charts of every model's quality against training FLOPs and
//! against training time, and of inference speed against quality.

use super::Run;
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// One chart: a line per run through `(x, y)` points.
fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let points = series.iter().flat_map(|s| s.1.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if !x0.is_finite() {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(if log_x { x0.max(1e-9).ln()..x1.max(1e-9).ln() } else { x0..x1 }, (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    let fmt_x = |v: &f64| if log_x { format!("{:.2e}", v.exp()) } else { format!("{v:.3}") };
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).x_label_formatter(&fmt_x).draw().map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (if log_x { x.max(1e-9).ln() } else { x }, y)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(|e| err(&e))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Writes `<prefix>-vs-flops.svg`, `<prefix>-vs-time.svg` and `<prefix>-speed.svg` into `dir`.
///
/// # Errors
/// A message naming the file that could not be written.
pub fn plot_runs(dir: &Path, prefix: &str, quality: &str, runs: &[Run]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let by = |f: fn(&(f64, f64, f64)) -> (f64, f64)| -> Vec<(String, Vec<(f64, f64)>)> {
        runs.iter().map(|r| (r.name.clone(), r.curve.iter().map(f).collect())).collect()
    };
    lines(
        &dir.join(format!("{prefix}-vs-flops.svg")),
        &format!("{quality} against training FLOPs"),
        "training FLOPs",
        quality,
        &by(|p| (p.0, p.2)),
        true,
    )?;
    lines(
        &dir.join(format!("{prefix}-vs-time.svg")),
        &format!("{quality} against training time"),
        "training seconds",
        quality,
        &by(|p| (p.1, p.2)),
        false,
    )?;
    let speed: Vec<(String, Vec<(f64, f64)>)> =
        runs.iter().map(|r| (r.name.clone(), vec![(r.quality, r.infer_per_s)])).collect();
    lines(
        &dir.join(format!("{prefix}-speed.svg")),
        "inference speed against quality",
        quality,
        "inference per second",
        &speed,
        false,
    )
}
