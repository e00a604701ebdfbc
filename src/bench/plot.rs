//! The latency CDF of a failover report, drawn as SVG with plotters.
//!
//! One step curve per mode (per mode and node timeout in a sweep): x is the
//! failover latency on a log scale, y the fraction of that mode's sessions
//! back by then. Lost sessions are never drawn, so a mode that lost any
//! ends below 1. Colours are the Okabe-Ito palette (told apart with any
//! colour vision; its yellow is left out, too pale on white), one per mode;
//! in a sweep the node timeout is the line's dash. A circle marks each
//! curve's p50 and a triangle its p99, and the legend, with both values,
//! sits beside the plot, never over the data.
//!
//! [`replot`] draws the same plot from the JSON of an earlier run
//! (`minos bench plot --json FILE --svg FILE`), without running anything.

use std::path::Path;

use plotters::prelude::*;

use super::report::{percentile, Report};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 600;
/// Width of the legend column right of the plot.
const LEGEND_WIDTH: u32 = 330;

/// Okabe-Ito colours, in the order modes take them (blue, vermillion,
/// bluish green, reddish purple, orange, sky blue, black).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0x00, 0x72, 0xB2),
    RGBColor(0xD5, 0x5E, 0x00),
    RGBColor(0x00, 0x9E, 0x73),
    RGBColor(0xCC, 0x79, 0xA7),
    RGBColor(0xE6, 0x9F, 0x00),
    RGBColor(0x56, 0xB4, 0xE9),
    RGBColor(0x00, 0x00, 0x00),
];

/// One curve: its legend label, sorted latencies of the sessions that came
/// back, how many samples there were in all, and where its colour and dash
/// come from.
#[derive(Clone, Debug, PartialEq)]
pub struct Curve {
    /// Mode name (and node timeout in a sweep, and lost count).
    pub label: String,
    /// Latencies of the sessions that came back, sorted, ms.
    pub values: Vec<f64>,
    /// Samples in all (lost ones included).
    pub total: usize,
    /// Median, ms (lost sessions count at the cap, as in the tables).
    pub p50: f64,
    /// 99th percentile, ms (same rule).
    pub p99: f64,
    /// Index of the mode (the colour).
    pub mode: usize,
    /// Index of the run in a sweep (the dash).
    pub run: usize,
}

/// What a plot shows: a title and curves.
#[derive(Clone, Debug, PartialEq)]
pub struct PlotData {
    /// The caption.
    pub title: String,
    /// The curves.
    pub curves: Vec<Curve>,
}

/// A curve of `mode` in run `run` of a report with `runs` runs, from its
/// samples' latencies (`None`: lost, counted at `cap_ms`).
fn curve(
    mode: (usize, &str),
    run: (usize, usize, u64),
    latencies: impl Iterator<Item = Option<f64>>,
    cap_ms: f64,
) -> Curve {
    let (mode_index, mode_name) = mode;
    let (run_index, runs, node_timeout_ms) = run;
    let latencies: Vec<Option<f64>> = latencies.collect();
    let mut values: Vec<f64> = latencies.iter().flatten().copied().collect();
    values.sort_by(f64::total_cmp);
    let lost = latencies.len() - values.len();
    let mut counted: Vec<f64> = latencies.iter().map(|l| l.unwrap_or(cap_ms)).collect();
    counted.sort_by(f64::total_cmp);
    let mut label = mode_name.to_string();
    if runs > 1 {
        label.push_str(&format!(", node timeout {node_timeout_ms} ms"));
    }
    if lost > 0 {
        label.push_str(&format!(" ({lost} lost)"));
    }
    Curve {
        label,
        total: latencies.len(),
        p50: percentile(&counted, 50.0),
        p99: percentile(&counted, 99.0),
        values,
        mode: mode_index,
        run: run_index,
    }
}

fn title(nodes: u64, sessions: u64, trials: u64, cores: u64) -> String {
    format!(
        "minos failover latency CDF ({nodes} nodes, {sessions} sessions, {trials} trials per mode, {cores} cores, loopback)"
    )
}

/// Mode names in the order of the first run (the colour of a mode is its
/// place here, the same in every run of a sweep).
fn mode_index(order: &mut Vec<String>, name: &str) -> usize {
    match order.iter().position(|m| m == name) {
        Some(index) => index,
        None => {
            order.push(name.to_string());
            order.len() - 1
        }
    }
}

impl PlotData {
    /// The plot of a report.
    pub fn of_report(report: &Report) -> Self {
        let cap_ms = report.config.cap.as_secs_f64() * 1000.0;
        let mut order = Vec::new();
        let mut curves = Vec::new();
        for (run_index, run) in report.runs.iter().enumerate() {
            for mode in &run.modes {
                let index = mode_index(&mut order, mode.mode.name());
                curves.push(curve(
                    (index, mode.mode.name()),
                    (run_index, report.runs.len(), run.node_timeout_ms),
                    mode.samples.iter().map(|s| s.latency_ms),
                    cap_ms,
                ));
            }
        }
        Self {
            title: title(
                report.config.nodes,
                report.config.sessions as u64,
                report.config.trials as u64,
                report.machine.cores as u64,
            ),
            curves,
        }
    }

    /// The plot of a report's JSON (`minos bench failover --json`).
    pub fn of_json(json: &serde_json::Value) -> Result<Self, String> {
        let number = |value: &serde_json::Value, what: &str| {
            value
                .as_u64()
                .ok_or_else(|| format!("the JSON has no number {what}"))
        };
        let config = &json["config"];
        let cap_ms = number(&config["cap_ms"], "config.cap_ms")? as f64;
        let runs = json["runs"]
            .as_array()
            .ok_or("the JSON has no runs: is it from minos bench failover --json?")?;
        let mut order = Vec::new();
        let mut curves = Vec::new();
        for (run_index, run) in runs.iter().enumerate() {
            let node_timeout = number(&run["node_timeout_ms"], "runs[].node_timeout_ms")?;
            for mode in run["modes"].as_array().ok_or("a run has no modes")? {
                let name = mode["mode"].as_str().ok_or("a mode has no name")?;
                let samples = mode["samples"].as_array().ok_or("a mode has no samples")?;
                let index = mode_index(&mut order, name);
                curves.push(curve(
                    (index, name),
                    (run_index, runs.len(), node_timeout),
                    samples.iter().map(|s| s["latency_ms"].as_f64()),
                    cap_ms,
                ));
            }
        }
        Ok(Self {
            title: title(
                number(&config["nodes"], "config.nodes")?,
                number(&config["sessions"], "config.sessions")?,
                number(&config["trials"], "config.trials")?,
                number(&json["machine"]["cores"], "machine.cores")?,
            ),
            curves,
        })
    }
}

/// Draws the CDF of every curve of `report` into `path`.
pub fn cdf(report: &Report, path: &Path) -> Result<(), String> {
    draw(&PlotData::of_report(report), path)
}

/// Draws the plot of the JSON file `json` (written by `minos bench
/// failover --json`) into `svg`.
pub fn replot(json: &Path, svg: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let data = PlotData::of_json(&value).map_err(|e| format!("{}: {e}", json.display()))?;
    draw(&data, svg)
}

/// The dash of run `run` of a sweep: solid, long dashes, short dashes.
fn dash(run: usize) -> Option<(u32, u32)> {
    match run % 3 {
        0 => None,
        1 => Some((10, 5)),
        _ => Some((3, 3)),
    }
}

/// Draws `data` into the SVG file `path`.
pub fn draw(data: &PlotData, path: &Path) -> Result<(), String> {
    let all: Vec<f64> = data
        .curves
        .iter()
        .flat_map(|c| c.values.iter().copied())
        .collect();
    let lowest = all.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = all.iter().copied().fold(0.0, f64::max);
    // Whole decades around the data, so the log axis has readable ticks.
    let x_min = if lowest.is_finite() && lowest > 0.0 {
        10f64.powf(lowest.log10().floor()).max(0.1)
    } else {
        0.1
    };
    let x_max = 10f64.powf(highest.max(x_min * 10.0).log10().ceil());

    let err = |e: DrawingAreaErrorKind<_>| format!("drawing {}: {e}", path.display());
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(&data.title, ("sans-serif", 18)).map_err(err)?;
    let (plot_area, legend_area) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot_area)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("failover latency: signal to first answer from the new owner (ms, log scale)")
        .y_desc("fraction of affected sessions back")
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(err)?;
    for curve in &data.curves {
        let color = PALETTE[curve.mode % PALETTE.len()];
        let style = color.stroke_width(2);
        let points = steps(&curve.values, curve.total, x_min, x_max);
        match dash(curve.run) {
            None => {
                chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(err)?;
            }
            Some((size, spacing)) => {
                chart
                    .draw_series(DashedLineSeries::new(points, size, spacing, style))
                    .map_err(err)?;
            }
        }
        let clamp = |x: f64| x.clamp(x_min, x_max);
        chart
            .draw_series([Circle::new((clamp(curve.p50), 0.5), 5, color.filled())])
            .map_err(err)?;
        chart
            .draw_series([TriangleMarker::new(
                (clamp(curve.p99), 0.99),
                7,
                color.filled(),
            )])
            .map_err(err)?;
    }
    legend(data, &legend_area).map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The legend, in its own column: one line per curve (its line, label, p50
/// and p99), then what the markers mean.
fn legend<DB: DrawingBackend>(
    data: &PlotData,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let font = ("sans-serif", 14).into_font();
    let small = ("sans-serif", 12)
        .into_font()
        .color(&RGBColor(0x44, 0x44, 0x44));
    let x = 10;
    let mut y = 40;
    for curve in &data.curves {
        let color = PALETTE[curve.mode % PALETTE.len()];
        let style = color.stroke_width(2);
        match dash(curve.run) {
            None => area.draw(&PathElement::new(vec![(x, y), (x + 30, y)], style))?,
            Some((size, spacing)) => area.draw(&plotters::element::DashedPathElement::new(
                vec![(x, y), (x + 30, y)],
                size,
                spacing,
                style,
            ))?,
        }
        area.draw(&Text::new(
            curve.label.clone(),
            (x + 38, y - 8),
            font.clone(),
        ))?;
        area.draw(&Text::new(
            format!("p50 {:.1} ms, p99 {:.1} ms", curve.p50, curve.p99),
            (x + 38, y + 8),
            small.clone(),
        ))?;
        y += 36;
    }
    y += 6;
    let grey = RGBColor(0x44, 0x44, 0x44);
    area.draw(&Circle::new((x + 15, y), 5, grey.filled()))?;
    area.draw(&Text::new("p50 (at 0.5)", (x + 38, y - 7), font.clone()))?;
    y += 22;
    area.draw(&TriangleMarker::new((x + 15, y), 7, grey.filled()))?;
    area.draw(&Text::new("p99 (at 0.99)", (x + 38, y - 7), font))?;
    Ok(())
}

/// The CDF of sorted `values` out of `total` sessions as a step function
/// from `x_min` to `x_max`: flat to each sample, then up by one sample.
fn steps(values: &[f64], total: usize, x_min: f64, x_max: f64) -> Vec<(f64, f64)> {
    let total = total.max(1) as f64;
    let mut points = Vec::with_capacity(values.len() * 2 + 1);
    let mut y = 0.0;
    points.push((x_min, 0.0));
    for value in values {
        let x = value.clamp(x_min, x_max);
        points.push((x, y));
        y += 1.0 / total;
        points.push((x, y));
    }
    points.push((x_max, y));
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    // The JSON path gives the curves, percentiles (lost at the cap) and
    // labels the tables use; checked on a two-run sweep with a lost sample.
    #[test]
    fn json_curves_match_the_rules_of_the_tables() {
        let json = serde_json::json!({
            "machine": {"cores": 2},
            "config": {"nodes": 3, "sessions": 4, "trials": 1, "cap_ms": 10000},
            "runs": [
                {"node_timeout_ms": 400, "modes": [
                    {"mode": "crash", "samples": [
                        {"latency_ms": 3.0}, {"latency_ms": 1.0}, {"latency_ms": null}, {"latency_ms": 2.0}
                    ]},
                    {"mode": "freeze", "samples": [{"latency_ms": 400.0}]}
                ]},
                {"node_timeout_ms": 800, "modes": [
                    {"mode": "freeze", "samples": [{"latency_ms": 800.0}]}
                ]}
            ]
        });
        let data = PlotData::of_json(&json).unwrap();
        assert_eq!(data.curves.len(), 3);
        let crash = &data.curves[0];
        assert_eq!(crash.label, "crash, node timeout 400 ms (1 lost)");
        assert_eq!(crash.values, vec![1.0, 2.0, 3.0]);
        assert_eq!(crash.total, 4);
        assert_eq!(crash.p50, 2.0);
        assert_eq!(crash.p99, 10000.0, "the lost sample counts at the cap");
        // A mode keeps its colour across runs; the run gives the dash.
        assert_eq!((data.curves[1].mode, data.curves[1].run), (1, 0));
        assert_eq!((data.curves[2].mode, data.curves[2].run), (1, 1));
        assert!(data.title.contains("3 nodes, 4 sessions, 1 trials"));
        assert!(PlotData::of_json(&serde_json::json!({"runs": []})).is_err());
    }
}
