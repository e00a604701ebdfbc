//! What a failover benchmark measured: raw samples, their statistics, and
//! the three ways they are shown (a table, JSON, an SVG CDF plot).
//!
//! A lost session counts in the percentiles at the cap (it was unavailable
//! at least that long), so it can never make a distribution look better;
//! double owners and wrong states are counted next to the numbers.

use std::path::Path;

use serde::Serialize;

use super::failover::{FailoverConfig, Mode};
use crate::config::{Timing, TimingFlags};
use crate::model::NodeId;

/// One session in one trial.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Trial number (from 1).
    pub trial: usize,
    /// Session id.
    pub session: String,
    /// Created on the victim just before the signal (crash mode).
    pub fresh: bool,
    /// The node that got the signal.
    pub victim: NodeId,
    /// The leader when the signal was sent.
    pub leader: NodeId,
    /// Wall-clock time of the signal (RFC 3339, UTC; to line up with node logs).
    pub signalled_at: String,
    /// Epoch the session ran under before the signal.
    pub epoch_before: u64,
    /// Signal to first answer from the new owner, in ms; `None` when lost.
    pub latency_ms: Option<f64>,
    /// The new owner.
    pub owner_after: Option<NodeId>,
    /// The new epoch.
    pub epoch_after: Option<u64>,
    /// The state after failover equals the last acknowledged one.
    pub state_ok: Option<bool>,
    /// Calls sent while polling.
    pub polls: u32,
    /// Polling calls that failed.
    pub errors: u32,
    /// The last failure (error code, or what was wrong with the state).
    pub last_error: Option<String>,
}

/// One keyed write sent right after the signal, with a caller's usual
/// timeout: a failover must show as latency, never as an error, and the
/// write must take effect exactly once.
#[derive(Clone, Debug, Serialize)]
pub struct WriteSample {
    /// Trial number (from 1).
    pub trial: usize,
    /// Session id.
    pub session: String,
    /// Signal to answer, ms.
    pub latency_ms: f64,
    /// The error code the caller got, if any.
    pub error: Option<String>,
    /// How many times the write is in the session's state afterwards
    /// (`None` when it could not be read).
    pub applied: Option<usize>,
}

impl WriteSample {
    /// Applied twice, or acknowledged and not applied.
    pub fn wrong(&self) -> bool {
        match self.applied {
            Some(n) => n > 1 || (self.error.is_none() && n != 1),
            None => true,
        }
    }
}

/// Two owners answered for one session under one epoch.
#[derive(Clone, Debug, Serialize)]
pub struct DoubleOwner {
    /// Trial number (from 1).
    pub trial: usize,
    /// Session id.
    pub session: String,
    /// The epoch both answered under.
    pub epoch: u64,
    /// The first owner seen, then the second.
    pub owners: [NodeId; 2],
}

/// The timing the nodes ran with (as `minos serve` derives it).
#[derive(Clone, Debug, Serialize)]
pub struct TimingRecord {
    /// Raft heartbeat.
    pub heartbeat_ms: u64,
    /// Election timeout, lower bound.
    pub election_timeout_min_ms: u64,
    /// Election timeout, upper bound.
    pub election_timeout_max_ms: u64,
    /// Lease duration.
    pub lease_ms: u64,
    /// Lease renewal interval.
    pub lease_interval_ms: u64,
    /// Silence before a node is declared Down.
    pub node_timeout_ms: u64,
    /// Leader's quorum window for granting leases.
    pub quorum_window_ms: u64,
    /// Clock drift allowance.
    pub drift_margin_ms: u64,
    /// Bound on a Raft write.
    pub write_timeout_ms: u64,
}

impl From<&Timing> for TimingRecord {
    fn from(t: &Timing) -> Self {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Self {
            heartbeat_ms: ms(t.heartbeat),
            election_timeout_min_ms: ms(t.election_timeout_min),
            election_timeout_max_ms: ms(t.election_timeout_max),
            lease_ms: ms(t.lease_duration),
            lease_interval_ms: ms(t.lease_interval),
            node_timeout_ms: ms(t.node_timeout),
            quorum_window_ms: ms(t.quorum_window),
            drift_margin_ms: ms(t.drift_margin),
            write_timeout_ms: ms(t.write_timeout),
        }
    }
}

/// Statistics of one mode.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Trials run.
    pub trials: usize,
    /// Session samples (lost ones included).
    pub sessions: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Sessions not back within the cap.
    pub lost: usize,
    /// Double owners seen.
    pub double_owners: usize,
    /// Sessions back with a state other than the acknowledged one.
    pub wrong_state: usize,
    /// Keyed writes sent right after the signal.
    pub writes: usize,
    /// Keyed writes that answered an error within their timeout.
    pub write_errors: usize,
    /// Keyed writes applied twice, or acknowledged and not applied.
    pub write_wrong: usize,
    /// Slowest keyed write, ms.
    pub write_max_ms: f64,
}

/// Every trial of one mode.
#[derive(Clone, Debug, Serialize)]
pub struct ModeReport {
    /// The mode.
    pub mode: Mode,
    /// Trials run.
    pub trials: usize,
    /// Statistics (filled by [`ModeReport::summary`] when serialized).
    pub summary: Summary,
    /// Double owners seen.
    pub double_owners: Vec<DoubleOwner>,
    /// Every sample.
    pub samples: Vec<Sample>,
    /// Every keyed write.
    pub writes: Vec<WriteSample>,
}

impl ModeReport {
    /// An empty report of `mode`.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            trials: 0,
            summary: Summary::default(),
            double_owners: Vec::new(),
            samples: Vec::new(),
            writes: Vec::new(),
        }
    }

    pub(crate) fn absorb(&mut self, outcome: super::failover::TrialOutcome) {
        self.trials += 1;
        self.samples.extend(outcome.samples);
        self.double_owners.extend(outcome.double_owners);
        self.writes.extend(outcome.writes);
    }

    /// Statistics; lost sessions count at `cap_ms`.
    pub fn summary(&self, cap_ms: f64) -> Summary {
        let mut latencies: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.latency_ms.unwrap_or(cap_ms))
            .collect();
        latencies.sort_by(f64::total_cmp);
        let mean = if latencies.is_empty() {
            0.0
        } else {
            latencies.iter().sum::<f64>() / latencies.len() as f64
        };
        Summary {
            trials: self.trials,
            sessions: latencies.len(),
            p50_ms: percentile(&latencies, 50.0),
            p90_ms: percentile(&latencies, 90.0),
            p99_ms: percentile(&latencies, 99.0),
            max_ms: latencies.last().copied().unwrap_or(0.0),
            mean_ms: mean,
            lost: self
                .samples
                .iter()
                .filter(|s| s.latency_ms.is_none())
                .count(),
            double_owners: self.double_owners.len(),
            wrong_state: self
                .samples
                .iter()
                .filter(|s| s.state_ok == Some(false))
                .count(),
            writes: self.writes.len(),
            write_errors: self.writes.iter().filter(|w| w.error.is_some()).count(),
            write_wrong: self.writes.iter().filter(|w| w.wrong()).count(),
            write_max_ms: self.writes.iter().map(|w| w.latency_ms).fold(0.0, f64::max),
        }
    }
}

/// Nearest-rank percentile of sorted values (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One cluster's run (one value of a node-timeout sweep).
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// The node timeout of this run.
    pub node_timeout_ms: u64,
    /// The timing flags passed to `minos serve`.
    pub knobs: TimingFlags,
    /// The timing the nodes derived from them.
    pub timing: TimingRecord,
    /// One report per mode.
    pub modes: Vec<ModeReport>,
}

/// The machine the benchmark ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// `std::thread::available_parallelism`.
    pub cores: usize,
    /// Operating system.
    pub os: &'static str,
    /// CPU architecture.
    pub arch: &'static str,
    /// Where the nodes talk.
    pub network: &'static str,
    /// `/proc/loadavg` when the run started (other work on a shared machine
    /// shows here).
    pub load_average_start: Option<String>,
    /// `/proc/loadavg` when the report was written.
    pub load_average_end: Option<String>,
}

/// The 1, 5 and 15 minute load averages (Linux only).
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Everything a benchmark run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The minos version that ran the benchmark.
    pub minos_version: &'static str,
    /// The git commit it was built from (`unknown` outside a checkout).
    pub minos_commit: &'static str,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// The configuration.
    pub config: FailoverConfig,
    /// One entry per cluster run.
    pub runs: Vec<RunReport>,
}

impl Report {
    /// An empty report of `config`, dated now.
    pub fn new(config: &FailoverConfig) -> Self {
        Self {
            minos_version: env!("CARGO_PKG_VERSION"),
            minos_commit: env!("MINOS_GIT_COMMIT"),
            date: chrono::Utc::now().to_rfc3339(),
            machine: Machine {
                cores: std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
                os: std::env::consts::OS,
                arch: std::env::consts::ARCH,
                network: "loopback (127.0.0.1)",
                load_average_start: load_average(),
                load_average_end: None,
            },
            config: config.clone(),
            runs: Vec::new(),
        }
    }

    fn cap_ms(&self) -> f64 {
        self.config.cap.as_secs_f64() * 1000.0
    }

    /// Fills in every mode's summary.
    pub fn summarize(&mut self) {
        let cap = self.cap_ms();
        for run in &mut self.runs {
            for mode in &mut run.modes {
                mode.summary = mode.summary(cap);
            }
        }
    }

    /// Lost sessions, double owners, and wrong states plus keyed writes
    /// that failed or were not applied exactly once, over all runs.
    pub fn failures(&self) -> (usize, usize, usize) {
        let cap = self.cap_ms();
        let mut totals = (0, 0, 0);
        for mode in self.runs.iter().flat_map(|r| &r.modes) {
            let s = mode.summary(cap);
            totals.0 += s.lost;
            totals.1 += s.double_owners;
            totals.2 += s.wrong_state + s.write_errors + s.write_wrong;
        }
        totals
    }

    /// The tables, one per run.
    pub fn tables(&self) -> String {
        let cap = self.cap_ms();
        let mut out = String::new();
        for run in &self.runs {
            let t = &run.timing;
            out.push_str(&format!(
                "failover latency: {} nodes, {} sessions, node timeout {} ms, lease {} ms, \
                 heartbeat {} ms, election {}-{} ms, cap {} ms, {} cores, loopback, load {}\n",
                self.config.nodes,
                self.config.sessions,
                t.node_timeout_ms,
                t.lease_ms,
                t.heartbeat_ms,
                t.election_timeout_min_ms,
                t.election_timeout_max_ms,
                cap,
                self.machine.cores,
                self.machine.load_average_start.as_deref().unwrap_or("?")
            ));
            out.push_str(&format!(
                "{:<13} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9}\n",
                "mode",
                "trials",
                "sessions",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "mean ms",
                "lost",
                "double",
                "wrong",
                "writes",
                "w.err",
                "w.bad",
                "w.max ms"
            ));
            for mode in &run.modes {
                let s = mode.summary(cap);
                out.push_str(&format!(
                    "{:<13} {:>6} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>5} {:>6} {:>6} {:>6} {:>6} {:>6} {:>9.1}\n",
                    mode.mode.name(),
                    s.trials,
                    s.sessions,
                    s.p50_ms,
                    s.p90_ms,
                    s.p99_ms,
                    s.max_ms,
                    s.mean_ms,
                    s.lost,
                    s.double_owners,
                    s.wrong_state,
                    s.writes,
                    s.write_errors,
                    s.write_wrong,
                    s.write_max_ms
                ));
            }
            out.push('\n');
        }
        out
    }

    /// One line per lost session, double owner and wrong state.
    pub fn alarms(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for run in &self.runs {
            for mode in &run.modes {
                let name = mode.mode.name();
                for s in &mode.samples {
                    if s.latency_ms.is_none() {
                        lines.push(format!(
                            "LOST: session {} ({} trial {}, node timeout {} ms, victim {}): \
                             not answered by a new owner within the cap; {} polls, last error: {}",
                            s.session,
                            name,
                            s.trial,
                            run.node_timeout_ms,
                            s.victim,
                            s.polls,
                            s.last_error.as_deref().unwrap_or("none")
                        ));
                    } else if s.state_ok == Some(false) {
                        lines.push(format!(
                            "WRONG STATE: session {} ({} trial {}): {}",
                            s.session,
                            name,
                            s.trial,
                            s.last_error.as_deref().unwrap_or("")
                        ));
                    }
                }
                for w in mode
                    .writes
                    .iter()
                    .filter(|w| w.error.is_some() || w.wrong())
                {
                    lines.push(format!(
                        "KEYED WRITE: session {} ({} trial {}): error {}, applied {:?} times, \
                         answered after {:.1} ms",
                        w.session,
                        name,
                        w.trial,
                        w.error.as_deref().unwrap_or("none"),
                        w.applied,
                        w.latency_ms
                    ));
                }
                for d in &mode.double_owners {
                    lines.push(format!(
                        "DOUBLE OWNER: session {} epoch {} answered by node {} and node {} \
                         ({} trial {}, node timeout {} ms)",
                        d.session,
                        d.epoch,
                        d.owners[0],
                        d.owners[1],
                        name,
                        d.trial,
                        run.node_timeout_ms
                    ));
                }
            }
        }
        lines
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let mut report = self.clone();
        report.summarize();
        report.machine.load_average_end = load_average();
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Draws one latency CDF per mode (and per node timeout in a sweep).
    pub fn write_plot(&self, path: &Path) -> Result<(), String> {
        super::plot::cdf(self, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Nearest-rank percentiles pick an existing sample at the right rank,
    // checked on 1..=100 where the answer is known by construction.
    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 90.0), 90.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    fn sample(latency_ms: Option<f64>, state_ok: Option<bool>) -> Sample {
        Sample {
            trial: 1,
            session: "s".into(),
            fresh: false,
            victim: 2,
            leader: 1,
            signalled_at: String::new(),
            epoch_before: 1,
            latency_ms,
            owner_after: latency_ms.map(|_| 3),
            epoch_after: latency_ms.map(|_| 2),
            state_ok,
            polls: 1,
            errors: 0,
            last_error: None,
        }
    }

    // A lost session is counted as lost and enters the percentiles at the
    // cap, so it raises p99 and max instead of vanishing; checked on a mode
    // with 99 fast samples and one lost.
    #[test]
    fn lost_sessions_stay_in_the_statistics() {
        let mut mode = ModeReport::new(Mode::Crash);
        mode.trials = 1;
        mode.samples = (0..99).map(|_| sample(Some(5.0), Some(true))).collect();
        mode.samples.push(sample(None, None));
        mode.samples.push(sample(Some(6.0), Some(false)));
        let s = mode.summary(10_000.0);
        assert_eq!(s.sessions, 101);
        assert_eq!(s.lost, 1);
        assert_eq!(s.wrong_state, 1);
        assert_eq!(s.max_ms, 10_000.0);
        assert_eq!(s.p50_ms, 5.0);
        assert!(
            s.mean_ms > 99.0,
            "mean {} ignores the lost session",
            s.mean_ms
        );
    }
}
