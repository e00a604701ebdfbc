//! The latency CDF of a failover report, drawn as SVG with plotters.
//!
//! One step curve per mode (per mode and node timeout in a sweep): x is the
//! failover latency on a log scale, y the fraction of that mode's sessions
//! back by then. Lost sessions are never drawn, so a mode that lost any
//! ends below 1.

use std::path::Path;

use plotters::prelude::*;

use super::report::Report;

const WIDTH: u32 = 960;
const HEIGHT: u32 = 600;

/// Draws the CDF of every curve of `report` into `path`.
pub fn cdf(report: &Report, path: &Path) -> Result<(), String> {
    let curves = report.curves();
    let all: Vec<f64> = curves
        .iter()
        .flat_map(|(_, values, _)| values.iter().copied())
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
    let title = format!(
        "minos failover latency CDF ({} nodes, {} sessions, {} trials per mode, {} cores, loopback)",
        report.config.nodes, report.config.sessions, report.config.trials, report.machine.cores
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
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
    for (index, (label, values, total)) in curves.iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        let points = steps(values, *total, x_min, x_max);
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
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
