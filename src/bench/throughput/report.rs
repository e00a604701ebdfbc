//! The report of `minos bench throughput`: rows as measured, the
//! side-by-side tables with ratios, JSON, and a bar chart.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::load::{CellResult, Op};
use super::{System, Targets, ThroughputArgs};
use crate::model::NodeId;

/// One matrix cell of one system.
#[derive(Clone, Debug, Serialize)]
pub struct CellRow {
    pub(super) backend: String,
    pub(super) op: Op,
    pub(super) clients: usize,
    pub(super) targets: Targets,
    /// Sessions (keys) in the table when the cell ran.
    pub(super) table: usize,
    /// `matrix`, or `loaded` for the cells run after the bulk load.
    pub(super) phase: &'static str,
    pub(super) result: CellResult,
}

impl CellRow {
    pub(super) fn new(
        system: &System,
        op: Op,
        clients: usize,
        targets: Targets,
        (phase, table): (&'static str, usize),
        result: CellResult,
    ) -> Self {
        Self {
            backend: system.backend.name().into(),
            op,
            clients,
            targets,
            table,
            phase,
            result,
        }
    }
}

/// The bulk load of one system.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    pub(super) backend: String,
    pub(super) clients: usize,
    pub(super) result: CellResult,
}

/// CPU of an idle system.
#[derive(Clone, Debug, Serialize)]
pub struct IdleRow {
    pub(super) backend: String,
    pub(super) sessions: usize,
    pub(super) seconds: f64,
    /// Cores used by each process.
    pub(super) cores: Vec<f64>,
    pub(super) cores_total: f64,
}

/// Resident memory of each process of one system.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryRow {
    pub(super) backend: String,
    pub(super) sessions: usize,
    /// `empty`, `loaded` (after the bulk load), or `restarted` (every
    /// process restarted with the table on disk).
    pub(super) when: &'static str,
    pub(super) rss_bytes: Vec<u64>,
}

/// The mass failover.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverRow {
    pub(super) victim: NodeId,
    pub(super) sessions_moved: usize,
    pub(super) sessions_total: usize,
    /// Signal to the table showing none of the victim's sessions on it.
    pub(super) reassigned_ms: f64,
    /// Signal to every session running on a survivor (their gauges).
    pub(super) running_ms: f64,
    pub(super) sampled_calls: usize,
    pub(super) failed_calls: usize,
    /// Signal to the last sampled call answered.
    pub(super) answered_ms: f64,
}

/// Restart times.
#[derive(Clone, Debug, Serialize)]
pub struct RestartRow {
    pub(super) one_node_ms: f64,
    pub(super) all_nodes_ms: f64,
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputReport {
    machine: String,
    config: serde_json::Value,
    pub(super) cells: Vec<CellRow>,
    pub(super) load: Vec<LoadRow>,
    pub(super) idle: Vec<IdleRow>,
    pub(super) memory: Vec<MemoryRow>,
    pub(super) placement: Vec<(NodeId, usize)>,
    pub(super) failover: Option<FailoverRow>,
    pub(super) restart: Option<RestartRow>,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores, Linux {}, minos {}",
        kernel.trim(),
        env!("CARGO_PKG_VERSION")
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl ThroughputReport {
    pub(super) fn new(args: &ThroughputArgs) -> Self {
        Self {
            machine: machine(),
            config: serde_json::json!({
                "clients": args.clients, "ops": args.ops, "cell_secs": args.cell_secs,
                "load": args.load, "idle_secs": args.idle_secs, "value_bytes": args.value_bytes,
                "etcd": !args.no_etcd,
            }),
            cells: Vec::new(),
            load: Vec::new(),
            idle: Vec::new(),
            memory: Vec::new(),
            placement: Vec::new(),
            failover: None,
            restart: None,
        }
    }

    fn find(&self, backend: &str, like: &CellRow) -> Option<&CellRow> {
        self.cells.iter().find(|c| {
            c.backend == backend
                && c.op == like.op
                && c.clients == like.clients
                && c.targets == like.targets
                && c.phase == like.phase
        })
    }

    /// The side-by-side tables, as text.
    pub fn tables(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine: {}", self.machine);
        let _ = writeln!(
            out,
            "\n{:<7} {:>7} {:<7} {:>7} | {:>9} {:>8} {:>7} | {:>9} {:>8} {:>7} | {:>6} {:>7}",
            "op",
            "clients",
            "to",
            "table",
            "minos/s",
            "p99 ms",
            "cpu us",
            "etcd/s",
            "p99 ms",
            "cpu us",
            "ratio",
            "failed"
        );
        for row in self.cells.iter().filter(|c| c.backend == "minos") {
            let etcd = self.find("etcd", row);
            let (rate, p99, cpu, ratio) = match etcd {
                Some(e) => (
                    format!("{:.0}", e.result.rate),
                    format!("{:.1}", e.result.p99_ms),
                    format!("{:.0}", e.result.cpu_us_per_op),
                    format!("{:.2}", row.result.rate / e.result.rate.max(1e-9)),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let _ = writeln!(
                out,
                "{:<7} {:>7} {:<7} {:>7} | {:>9.0} {:>8.1} {:>7.0} | {:>9} {:>8} {:>7} | {:>6} {:>7}",
                row.op.name(),
                row.clients,
                format!("{:?}", row.targets).to_lowercase(),
                row.table,
                row.result.rate,
                row.result.p99_ms,
                row.result.cpu_us_per_op,
                rate,
                p99,
                cpu,
                ratio,
                row.result.failed
            );
        }
        self.summary_lines(&mut out);
        out
    }

    /// Load, idle, memory, placement, failover and restart lines.
    fn summary_lines(&self, out: &mut String) {
        for load in &self.load {
            let _ = writeln!(
                out,
                "\nload {}: {} in {:.1} s = {:.0}/s (p99 {:.1} ms, max {:.1} ms, {} failed)",
                load.backend,
                load.result.ok,
                load.result.seconds,
                load.result.rate,
                load.result.p99_ms,
                load.result.max_ms,
                load.result.failed
            );
        }
        for idle in &self.idle {
            let _ = writeln!(
                out,
                "idle {} with {} sessions: {:.3} cores in all",
                idle.backend, idle.sessions, idle.cores_total
            );
        }
        self.memory_lines(out);
        if !self.placement.is_empty() {
            let total: usize = self.placement.iter().map(|(_, c)| c).sum::<usize>().max(1);
            let shares: Vec<String> = self
                .placement
                .iter()
                .map(|(id, c)| {
                    format!("node {id}: {c} ({:.1} %)", *c as f64 * 100.0 / total as f64)
                })
                .collect();
            let _ = writeln!(out, "placement: {}", shares.join(", "));
        }
        if let Some(f) = &self.failover {
            let _ = writeln!(
                out,
                "mass failover: node {} with {} of {} sessions killed: reassigned {:.0} ms, running {:.0} ms, {} sampled calls answered by {:.0} ms ({} failed)",
                f.victim, f.sessions_moved, f.sessions_total, f.reassigned_ms, f.running_ms,
                f.sampled_calls, f.answered_ms, f.failed_calls
            );
        }
        if let Some(r) = &self.restart {
            let _ = writeln!(
                out,
                "restart: one node {:.0} ms, all three {:.0} ms (start to healthy and a read served)",
                r.one_node_ms, r.all_nodes_ms
            );
        }
    }

    fn memory_lines(&self, out: &mut String) {
        for row in &self.memory {
            let rss: Vec<String> = row
                .rss_bytes
                .iter()
                .map(|b| format!("{:.0}", mib(*b)))
                .collect();
            let _ = write!(
                out,
                "rss {} {} with {} sessions: {} MiB",
                row.backend,
                row.when,
                row.sessions,
                rss.join(" / ")
            );
            let empty = self
                .memory
                .iter()
                .find(|m| m.backend == row.backend && m.sessions == 0);
            match empty {
                Some(empty) if row.sessions > 0 => {
                    let grown: Vec<String> = row
                        .rss_bytes
                        .iter()
                        .zip(&empty.rss_bytes)
                        .map(|(now, before)| {
                            format!(
                                "{:.0}",
                                now.saturating_sub(*before) as f64 / row.sessions as f64
                            )
                        })
                        .collect();
                    let _ = writeln!(
                        out,
                        " = {} bytes per session per process",
                        grown.join(" / ")
                    );
                }
                _ => out.push('\n'),
            }
        }
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the matrix as grouped bars (minos and etcd per cell), as SVG.
    pub fn write_plot(&self, path: &Path) -> Result<(), String> {
        use plotters::prelude::*;
        let rows: Vec<&CellRow> = self.cells.iter().filter(|c| c.backend == "minos").collect();
        let top = self.cells.iter().map(|c| c.result.rate).fold(1.0, f64::max) * 1.15;
        let root = SVGBackend::new(path, (1200, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "operations per second, minos and etcd, same run",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(90)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..rows.len() as f64, 0f64..top)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = rows.iter().map(|r| bar_label(r)).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(rows.len())
            .x_label_formatter(&|x| labels.get(x.floor() as usize).cloned().unwrap_or_default())
            .y_desc("ops/s")
            .draw()
            .map_err(|e| e.to_string())?;
        // Okabe-Ito blue and vermillion: told apart with any colour vision.
        let minos = RGBColor(0, 114, 178);
        let etcd = RGBColor(213, 94, 0);
        for (i, row) in rows.iter().enumerate() {
            let x = i as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.1, 0.0), (x + 0.48, row.result.rate)],
                    minos.filled(),
                )))
                .map_err(|e| e.to_string())?;
            if let Some(e) = self.find("etcd", row) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x + 0.52, 0.0), (x + 0.9, e.result.rate)],
                        etcd.filled(),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
        root.draw(&Text::new(
            "■ minos",
            (90, 40),
            ("sans-serif", 16).into_font().color(&minos),
        ))
        .map_err(|e| e.to_string())?;
        root.draw(&Text::new(
            "■ etcd",
            (170, 40),
            ("sans-serif", 16).into_font().color(&etcd),
        ))
        .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())
    }
}

/// The label of a bar group: operation, clients, targets, table size when
/// loaded.
fn bar_label(row: &CellRow) -> String {
    format!(
        "{} {}c {}{}",
        row.op.name(),
        row.clients,
        if row.targets == Targets::All {
            "all"
        } else {
            "leader"
        },
        if row.phase == "loaded" {
            format!(" @{}", row.table)
        } else {
            String::new()
        }
    )
}
