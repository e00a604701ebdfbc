//! The flags of `minos bench failover` and the checked configuration they
//! make.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::Mode;
use crate::bench::BenchError;
use crate::config::{Timing, TimingFlags};

/// Flags of `minos bench failover`.
#[derive(clap::Args, Clone, Debug)]
pub struct FailoverArgs {
    /// Sessions created before the trials (each owned by one node).
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Trials per mode.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Mode to run (repeatable; default: all four).
    #[arg(long = "mode", value_enum)]
    pub modes: Vec<Mode>,
    /// A session not answering from a new owner this long after the signal is lost.
    #[arg(long, default_value_t = 10_000)]
    pub cap_ms: u64,
    /// Timeout of each polling call (the node routing it waits this long while the session moves).
    #[arg(long, default_value_t = 200)]
    pub call_timeout_ms: u64,
    /// Interval between two polls of one session.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub poll_ms: u64,
    /// Crash mode: sessions created on the victim just before each kill.
    #[arg(long, default_value_t = 5)]
    pub fresh_sessions: usize,
    /// Keyed appends sent per trial right after the signal, to sessions of
    /// the victim, with a 5 s timeout: each must answer 200 and be applied
    /// exactly once (0: none).
    #[arg(long, default_value_t = 10)]
    pub keyed_writes: usize,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
    pub nodes: u64,
    /// The `minos` binary to run as nodes (default: this executable).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Write the configuration and every raw sample here, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a latency CDF per mode here, as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Keep node data and logs under this directory (default: a temporary one, removed).
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
    /// Passed to `minos serve --heartbeat-ms`.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Passed to `minos serve --election-timeout-min-ms`.
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Passed to `minos serve --election-timeout-max-ms`.
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Passed to `minos serve --lease-ms`.
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Passed to `minos serve --node-timeout-ms`.
    #[arg(long)]
    pub node_timeout_ms: Option<u64>,
    /// Repeat the whole run once per node timeout (ms), e.g. `400,800,1600`.
    #[arg(long, value_delimiter = ',', conflicts_with = "node_timeout_ms")]
    pub sweep_node_timeout: Vec<u64>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// A checked benchmark configuration.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverConfig {
    /// The `minos` binary the nodes run.
    pub bin: PathBuf,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Sessions created up front.
    pub sessions: usize,
    /// Trials per mode.
    pub trials: usize,
    /// Modes, in run order.
    pub modes: Vec<Mode>,
    /// Lost after this long.
    #[serde(rename = "cap_ms", serialize_with = "as_ms")]
    pub cap: Duration,
    /// Timeout of one polling call.
    #[serde(rename = "call_timeout_ms", serialize_with = "as_ms")]
    pub call_timeout: Duration,
    /// Interval between polls of one session.
    #[serde(rename = "poll_interval_ms", serialize_with = "as_ms")]
    pub poll_interval: Duration,
    /// Crash mode: fresh sessions placed on the victim per trial.
    pub fresh_sessions: usize,
    /// Keyed appends per trial (see [`FailoverArgs::keyed_writes`]).
    pub keyed_writes: usize,
    /// Timing flags for every run.
    pub knobs: TimingFlags,
    /// Node timeouts to sweep (empty: one run with `knobs`).
    pub sweep_node_timeout_ms: Vec<u64>,
    /// Where node data and logs are kept.
    pub keep_logs: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl FailoverConfig {
    /// A short configuration (for `cargo bench` and tests): `sessions`
    /// sessions, `trials` trials of `modes`, default timing.
    pub fn short(bin: PathBuf, sessions: usize, trials: usize, modes: Vec<Mode>) -> Self {
        Self {
            bin,
            nodes: 3,
            sessions,
            trials,
            modes,
            cap: Duration::from_secs(10),
            call_timeout: Duration::from_millis(200),
            poll_interval: Duration::from_millis(5),
            fresh_sessions: 5,
            keyed_writes: 10,
            knobs: TimingFlags::default(),
            sweep_node_timeout_ms: Vec::new(),
            keep_logs: None,
            progress: true,
        }
    }

    /// The knobs of each run: one per swept node timeout, or just `knobs`.
    pub fn runs(&self) -> Vec<TimingFlags> {
        if self.sweep_node_timeout_ms.is_empty() {
            return vec![self.knobs.clone()];
        }
        self.sweep_node_timeout_ms
            .iter()
            .map(|ms| TimingFlags {
                node_timeout_ms: Some(*ms),
                ..self.knobs.clone()
            })
            .collect()
    }

    /// Checks the configuration; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.sessions == 0 {
            return Err("--sessions must be at least 1".into());
        }
        if self.trials == 0 {
            return Err("--trials must be at least 1".into());
        }
        if self.modes.is_empty() {
            return Err("no --mode to run".into());
        }
        if self.nodes < 3 {
            return Err("--nodes must be at least 3 (a quorum must survive the victim)".into());
        }
        if self.cap.is_zero() || self.call_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err("--cap-ms, --call-timeout-ms and --poll-ms must be positive".into());
        }
        if self.poll_interval > Duration::from_millis(5) {
            return Err("--poll-ms must be at most 5".into());
        }
        for knobs in self.runs() {
            Timing::from_flags(&knobs).map_err(|e| format!("timing flags: {e}"))?;
        }
        if !self.bin.is_file() {
            return Err(format!(
                "no minos binary at {} (build it with `cargo build --release --bin minos`, or pass --bin)",
                self.bin.display()
            ));
        }
        Ok(())
    }
}

impl FailoverArgs {
    /// Checks the flags and turns them into a configuration.
    pub fn into_config(self) -> Result<FailoverConfig, BenchError> {
        let bin = match self.bin {
            Some(bin) => bin,
            None => std::env::current_exe()
                .map_err(|e| BenchError::Usage(format!("cannot locate this executable: {e}")))?,
        };
        let mut modes = if self.modes.is_empty() {
            Mode::ALL.to_vec()
        } else {
            self.modes
        };
        modes.sort();
        modes.dedup();
        let config = FailoverConfig {
            bin,
            nodes: self.nodes,
            sessions: self.sessions,
            trials: self.trials,
            modes,
            cap: Duration::from_millis(self.cap_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            poll_interval: Duration::from_millis(self.poll_ms),
            fresh_sessions: self.fresh_sessions,
            keyed_writes: self.keyed_writes,
            knobs: TimingFlags {
                heartbeat_ms: self.heartbeat_ms,
                election_timeout_min_ms: self.election_timeout_min_ms,
                election_timeout_max_ms: self.election_timeout_max_ms,
                lease_ms: self.lease_ms,
                node_timeout_ms: self.node_timeout_ms,
                rebalance_after_ms: None,
                snapshot_every: None,
            },
            sweep_node_timeout_ms: self.sweep_node_timeout,
            keep_logs: self.keep_logs,
            progress: !self.no_progress,
        };
        config.validate().map_err(BenchError::Usage)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Timing flags reach `minos serve` unchanged and derive the same timing
    // as its flag parser, unsafe ones are refused, and a sweep makes one run
    // per node timeout: checked against config::Timing's own derivation.
    #[test]
    fn timing_flags_follow_minos_serve() {
        let knobs = TimingFlags {
            node_timeout_ms: Some(400),
            heartbeat_ms: Some(40),
            ..TimingFlags::default()
        };
        assert_eq!(
            knobs.serve_args(),
            ["--heartbeat-ms", "40", "--node-timeout-ms", "400"]
        );
        let timing = Timing::from_flags(&knobs).expect("safe timing");
        let derived = Timing::with_node_timeout(Duration::from_millis(400));
        assert_eq!(timing.lease_duration, derived.lease_duration);
        assert_eq!(timing.heartbeat, Duration::from_millis(40));
        let unsafe_knobs = TimingFlags {
            election_timeout_min_ms: Some(500),
            ..TimingFlags::default()
        };
        assert!(Timing::from_flags(&unsafe_knobs).is_err());

        let mut config = FailoverConfig::short(PathBuf::from("minos"), 10, 2, vec![Mode::Crash]);
        config.sweep_node_timeout_ms = vec![400, 1600];
        let runs = config.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].node_timeout_ms, Some(1600));
    }

    // Bad configurations are refused with a message naming the flag, before
    // any process starts.
    #[test]
    fn bad_configurations_are_refused() {
        let exe = std::env::current_exe().expect("test binary path");
        let good = FailoverConfig::short(exe, 10, 2, vec![Mode::Crash]);
        assert_eq!(good.validate(), Ok(()));
        let mut zero = good.clone();
        zero.sessions = 0;
        assert!(zero.validate().unwrap_err().contains("--sessions"));
        let mut slow = good.clone();
        slow.poll_interval = Duration::from_millis(50);
        assert!(slow.validate().unwrap_err().contains("--poll-ms"));
        let mut missing = good;
        missing.bin = PathBuf::from("/nonexistent/minos");
        assert!(missing.validate().unwrap_err().contains("no minos binary"));
    }
}
