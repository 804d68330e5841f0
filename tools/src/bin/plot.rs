//! `plot`: draws the PNG figures of docs/benchmarks-analysis.md from the JSON that `loadgen` and
//! `drill` write.
//!
//! ```text
//! cargo run --release -p taskwire-tools --bin plot -- docs/img $CARGO_TARGET_DIR/bench/*.json
//! ```
//!
//! - Load-generator results named `<stack>-<scenario>.json` become `latency-<scenario>.png`:
//!   every latency curve of the scenario (`latency_ms…curve`), one line per stack and
//!   measure, latency (log scale) against the percentile (0, 90, 99, 99.9, 99.99).
//! - Drill results (`drill-<stack>-<drill>.json`, with a `timeline`) become
//!   `drill-<stack>-<drill>.png`: successes and failures per second, and the p99 latency per
//!   second, with the fault window shaded.
//!
//! Text is drawn with the TrueType font of `--font` (default: DejaVu Sans, Debian's
//! `fonts-dejavu-core`).

use std::{collections::BTreeMap, error::Error, path::Path};

use clap::Parser;
use plotters::{prelude::*, style::FontStyle};
use serde_json::Value;

const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The percentile axis ends at 99.99 (4 nines).
const MAX_NINES: f64 = 4.0;
const SIZE: (u32, u32) = (1000, 620);

type Result<T> = std::result::Result<T, Box<dyn Error>>;
/// A named latency curve: `(series name, [(nines, ms)])`.
type Curve = (String, Vec<(f64, f64)>);

/// Draws the PNG figures of docs/benchmarks-analysis.md from the JSON results of `loadgen` and
/// `drill`.
#[derive(Parser)]
struct Args {
    /// The TrueType font the text is drawn with.
    #[arg(long, default_value = DEFAULT_FONT)]
    font: String,
    /// Where the PNG files go (created when missing).
    out_dir: String,
    /// The result files (`<stack>-<scenario>.json`, `drill-<stack>-<drill>.json`).
    inputs: Vec<String>,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(written) => {
            for path in written {
                println!("{path}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plot: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(Args { font, out_dir, inputs }: Args) -> Result<Vec<String>> {
    let bytes = std::fs::read(&font).map_err(|e| format!("reading the font {font}: {e}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| format!("{font} is not a usable TrueType font"))?;
    std::fs::create_dir_all(&out_dir)?;

    // Scenario → [(series name, curve)].
    let mut latency: BTreeMap<String, Vec<Curve>> = BTreeMap::new();
    let mut written = Vec::new();
    for input in &inputs {
        let text = std::fs::read_to_string(input).map_err(|e| format!("reading {input}: {e}"))?;
        let result: Value = serde_json::from_str(&text).map_err(|e| format!("{input}: {e}"))?;
        let stem = Path::new(input).file_stem().and_then(|s| s.to_str()).unwrap_or("result").to_owned();
        if result.get("timeline").is_some() {
            let path = format!("{out_dir}/{stem}.png");
            drill_timeline(&path, &stem, &result)?;
            written.push(path);
            continue;
        }
        let (stack, scenario) = stem.split_once('-').unwrap_or(("", &stem));
        let mut curves = Vec::new();
        collect_curves(&result["latency_ms"], "", &mut curves);
        for (measure, curve) in curves {
            let name = if measure.is_empty() { stack.to_owned() } else { format!("{stack} {measure}") };
            latency.entry(scenario.to_owned()).or_default().push((name, curve));
        }
    }
    for (scenario, series) in &latency {
        let path = format!("{out_dir}/latency-{scenario}.png");
        latency_curves(&path, scenario, series)?;
        written.push(path);
    }
    Ok(written)
}

/// Every `curve` under `value` (a `latency_ms` summary, or an object of them), as
/// `(nines, ms)` points named by their key.
fn collect_curves(value: &Value, name: &str, into: &mut Vec<Curve>) {
    if let Some(curve) = value["curve"].as_array() {
        let points: Vec<(f64, f64)> = curve
            .iter()
            .filter_map(|point| Some((point[0].as_f64()?, point[1].as_f64()?)))
            .filter(|(p, _)| *p < 100.0)
            .map(|(p, ms)| (nines(p), ms.max(0.01)))
            .filter(|(x, _)| *x <= MAX_NINES + 1e-9)
            .collect();
        if !points.is_empty() {
            into.push((name.to_owned(), points));
        }
        return;
    }
    if let Some(object) = value.as_object() {
        for (key, child) in object {
            collect_curves(child, key, into);
        }
    }
}

/// The percentile `p` on a "number of nines" axis: 90 → 1, 99 → 2, 99.9 → 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-6).log10()
}

fn percentile_label(x: &f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if p < 0.5 { "0".to_owned() } else { format!("{}", (p * 100.0).round() / 100.0) }
}

fn latency_curves(path: &str, scenario: &str, series: &[Curve]) -> Result<()> {
    let all = series.iter().flat_map(|(_, points)| points.iter().map(|(_, ms)| *ms));
    let (low, high) = all.fold((f64::MAX, 0f64), |(lo, hi), ms| (lo.min(ms), hi.max(ms)));
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{scenario}: latency by percentile"), ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..MAX_NINES, ((low * 0.8).max(0.01)..high * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(5)
        .x_label_formatter(&percentile_label)
        .y_label_formatter(&|ms| format!("{ms} ms"))
        .x_desc("percentile")
        .y_desc("latency")
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn drill_timeline(path: &str, title: &str, result: &Value) -> Result<()> {
    let rows = result["timeline"].as_array().cloned().unwrap_or_default();
    let end = rows
        .iter()
        .rposition(|r| ["create_ok", "create_err", "read_ok", "read_err"].iter().any(|k| r[k].as_u64() > Some(0)))
        .map_or(1, |last| last + 2) as f64;
    let series = |key: &str| -> Vec<(f64, f64)> {
        rows.iter().filter_map(|r| Some((r["t"].as_f64()? + 0.5, r[key].as_f64()?))).filter(|(t, _)| *t < end).collect()
    };
    let fault = (result["fault"]["at_s"].as_f64(), result["fault"]["restore_done_at_s"].as_f64());

    let root = BitMapBackend::new(path, (SIZE.0, SIZE.1 + 200)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("{title}: {}", result["verdict"].as_str().unwrap_or("?"));
    let root = root.titled(&caption, ("sans-serif", 24))?;
    let (top, bottom) = root.split_vertically((SIZE.1 + 200) / 2);

    let counts = ["create_ok", "create_err", "read_ok", "read_err"];
    let peak = counts.iter().flat_map(|k| series(k)).map(|(_, v)| v).fold(1f64, f64::max);
    let mut chart = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end, (0.5f64..peak * 1.5).log_scale())?;
    chart.configure_mesh().x_desc("seconds").y_desc("per second").draw()?;
    shade(&mut chart, fault, (0.5, peak * 1.5))?;
    let lines = [
        ("creates acknowledged", "create_ok", BLUE),
        ("creates failed", "create_err", RED),
        ("reads answered", "read_ok", GREEN),
        ("reads failed", "read_err", MAGENTA),
    ];
    for (label, key, color) in lines {
        let points: Vec<(f64, f64)> = series(key).into_iter().filter(|(_, v)| *v > 0.0).collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(PointSeries::of_element(points, 3, color.filled(), &|c, s, st| Circle::new(c, s, st)))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;

    let latencies = ["create_p99_ms", "read_p99_ms"];
    let high = latencies.iter().flat_map(|k| series(k)).map(|(_, v)| v).fold(1f64, f64::max);
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..end, (0.1f64..high * 1.5).log_scale())?;
    chart.configure_mesh().x_desc("seconds").y_desc("p99 of the second (ms)").draw()?;
    shade(&mut chart, fault, (0.1, high * 1.5))?;
    for (label, key, color) in [("create p99", "create_p99_ms", BLUE), ("read p99", "read_p99_ms", GREEN)] {
        let points = series(key);
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

type LogChart<'a> = ChartContext<
    'a,
    BitMapBackend<'a>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::combinators::LogCoord<f64>>,
>;

/// Shades the fault window (from the fault to the end of the restore) across the chart.
fn shade(chart: &mut LogChart<'_>, (from, to): (Option<f64>, Option<f64>), (low, high): (f64, f64)) -> Result<()> {
    if let Some(from) = from {
        let to = to.unwrap_or(from + 0.5).max(from + 0.5);
        chart.draw_series(std::iter::once(Rectangle::new([(from, low), (to, high)], RED.mix(0.12).filled())))?;
    }
    Ok(())
}
