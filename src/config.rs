//! Timing knobs and limits, with the rules that keep them safe.

use std::time::Duration;

use serde::Serialize;

/// Timing of Raft, leases and failure detection.
///
/// Safety rule (checked by [`Timing::validate`]):
/// `quorum_window + lease_duration + drift_margin < node_timeout`, so every
/// lease a leader granted has ended before any leader declares that node
/// Down; and `node_timeout > election_timeout_max`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Raft heartbeat interval (also the AppendEntries timeout).
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max: Duration,
    /// How long a granted ownership lease is valid, from the node's send time.
    pub lease_duration: Duration,
    /// How often a node renews its lease.
    pub lease_interval: Duration,
    /// Silence after which the leader declares a node Down.
    pub node_timeout: Duration,
    /// The leader grants leases only while a quorum acknowledged it this recently.
    pub quorum_window: Duration,
    /// Allowance for clock-rate differences between nodes.
    pub drift_margin: Duration,
    /// Bound on every Raft write.
    pub write_timeout: Duration,
    /// After a node comes back Up, the leader waits this long (every node
    /// Up all that time), then moves sessions back to their placement
    /// choice, so the cluster evens out by itself. Zero: never (then
    /// `minos cluster rebalance` does it by hand).
    pub rebalance_after: Duration,
    /// Moves per second the automatic rebalance makes at most (each still
    /// a graceful handoff), so a node coming back fills without a storm;
    /// `minos cluster rebalance` by hand is not bounded. At least 1.
    pub rebalance_moves_per_sec: u32,
    /// Log entries between two snapshots of the table (a snapshot encodes
    /// the whole table, off the write path): half that to that many, each
    /// node a third of it apart from the others; with a larger table, one
    /// entry per 10 sessions (`raft::snapshot_due`).
    pub snapshot_every: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            lease_duration: Duration::from_millis(500),
            lease_interval: Duration::from_millis(100),
            node_timeout: Duration::from_millis(800),
            quorum_window: Duration::from_millis(200),
            drift_margin: Duration::from_millis(50),
            write_timeout: Duration::from_millis(1500),
            rebalance_after: Duration::from_secs(2),
            rebalance_moves_per_sec: 1000,
            snapshot_every: 20_000,
        }
    }
}

impl Timing {
    /// Checks the safety rules; the message names the violated one.
    pub fn validate(&self) -> Result<(), String> {
        let ms = |d: Duration| d.as_millis();
        if self.heartbeat.is_zero() || self.lease_interval.is_zero() {
            return Err("heartbeat and lease interval must be positive".into());
        }
        if self.election_timeout_min >= self.election_timeout_max {
            return Err(format!(
                "election timeout min ({} ms) must be below max ({} ms)",
                ms(self.election_timeout_min),
                ms(self.election_timeout_max)
            ));
        }
        if self.heartbeat >= self.election_timeout_min {
            return Err(format!(
                "heartbeat ({} ms) must be below the election timeout ({} ms)",
                ms(self.heartbeat),
                ms(self.election_timeout_min)
            ));
        }
        if self.lease_interval >= self.lease_duration {
            return Err(format!(
                "lease interval ({} ms) must be below the lease duration ({} ms)",
                ms(self.lease_interval),
                ms(self.lease_duration)
            ));
        }
        if self.quorum_window + self.lease_duration + self.drift_margin >= self.node_timeout {
            return Err(format!(
                "quorum window ({} ms) + lease ({} ms) + drift margin ({} ms) must be below the node timeout ({} ms)",
                ms(self.quorum_window),
                ms(self.lease_duration),
                ms(self.drift_margin),
                ms(self.node_timeout)
            ));
        }
        if self.node_timeout <= self.election_timeout_max {
            return Err(format!(
                "node timeout ({} ms) must be above the election timeout max ({} ms)",
                ms(self.node_timeout),
                ms(self.election_timeout_max)
            ));
        }
        Ok(())
    }

    /// Derives a consistent timing from a node timeout, keeping the other
    /// defaults' proportions (used by `--node-timeout-ms` alone).
    pub fn with_node_timeout(node_timeout: Duration) -> Self {
        let base = Self::default();
        let lease = node_timeout.mul_f64(0.6);
        Self {
            node_timeout,
            lease_duration: lease,
            quorum_window: node_timeout.mul_f64(0.2),
            drift_margin: node_timeout.mul_f64(0.05),
            lease_interval: lease_interval_for(lease),
            ..base
        }
    }

    /// The timing `minos serve` runs with for these timing flags, checked
    /// for safety: the defaults (or [`Timing::with_node_timeout`] when a node
    /// timeout is given), then each flag given. `minos serve` and
    /// `minos bench failover` both derive their timing here, so a benchmark
    /// measures the configuration its nodes run.
    pub fn from_flags(flags: &TimingFlags) -> Result<Self, String> {
        let ms = Duration::from_millis;
        let mut timing = match flags.node_timeout_ms {
            Some(node_timeout) => Self::with_node_timeout(ms(node_timeout)),
            None => Self::default(),
        };
        if let Some(v) = flags.heartbeat_ms {
            timing.heartbeat = ms(v);
        }
        if let Some(v) = flags.election_timeout_min_ms {
            timing.election_timeout_min = ms(v);
        }
        if let Some(v) = flags.election_timeout_max_ms {
            timing.election_timeout_max = ms(v);
        }
        if let Some(v) = flags.lease_ms {
            timing.lease_duration = ms(v);
            timing.lease_interval = lease_interval_for(ms(v));
        }
        if let Some(v) = flags.rebalance_after_ms {
            timing.rebalance_after = ms(v);
        }
        if let Some(v) = flags.snapshot_every {
            timing.snapshot_every = v.max(1);
        }
        timing.validate()?;
        Ok(timing)
    }
}

/// A lease is renewed five times per lease duration, at most every 10 ms.
fn lease_interval_for(lease: Duration) -> Duration {
    (lease / 5).max(Duration::from_millis(10))
}

/// The timing flags of `minos serve`, as given (`None`: not given). See
/// [`Timing::from_flags`] for the timing they mean.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimingFlags {
    /// `--heartbeat-ms`.
    pub heartbeat_ms: Option<u64>,
    /// `--election-timeout-min-ms`.
    pub election_timeout_min_ms: Option<u64>,
    /// `--election-timeout-max-ms`.
    pub election_timeout_max_ms: Option<u64>,
    /// `--lease-ms`.
    pub lease_ms: Option<u64>,
    /// `--node-timeout-ms`.
    pub node_timeout_ms: Option<u64>,
    /// `--rebalance-after-ms`.
    pub rebalance_after_ms: Option<u64>,
    /// `--snapshot-every`.
    pub snapshot_every: Option<u64>,
}

impl TimingFlags {
    /// The `minos serve` arguments that give these flags (to start nodes
    /// with them).
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let flags = [
            ("--heartbeat-ms", self.heartbeat_ms),
            ("--election-timeout-min-ms", self.election_timeout_min_ms),
            ("--election-timeout-max-ms", self.election_timeout_max_ms),
            ("--lease-ms", self.lease_ms),
            ("--node-timeout-ms", self.node_timeout_ms),
            ("--rebalance-after-ms", self.rebalance_after_ms),
            ("--snapshot-every", self.snapshot_every),
        ];
        for (flag, value) in flags {
            if let Some(value) = value {
                args.push(flag.to_string());
                args.push(value.to_string());
            }
        }
        args
    }
}

/// Size limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted session state, in bytes of JSON.
    pub max_state_bytes: usize,
    /// How many keyed calls each session remembers, and for how long: a
    /// retry of a remembered key applies nothing and gets the recorded reply.
    pub call_retention: crate::model::CallRetention,
    /// Changes of owner each session's placement history keeps (the
    /// leader writes it into every entry, so every node prunes alike).
    pub history_per_session: u32,
    /// A session idle this long (no call, no timer pending) gives up its
    /// task and live state until its next call, which starts them again
    /// (`None`: every session keeps a task while it runs here). Default
    /// [`DEFAULT_PARK_AFTER`].
    pub park_after: Option<std::time::Duration>,
}

/// How long a session idles before it parks, unless configured: 30 s.
pub const DEFAULT_PARK_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

impl Limits {
    /// Largest request body that may carry a state: the state limit plus
    /// 64 KiB for the rest of the request (public routes, forwarded calls).
    pub fn request_body_bytes(&self) -> usize {
        self.max_state_bytes + 64 * 1024
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_state_bytes: 1024 * 1024,
            call_retention: crate::model::CallRetention::default(),
            history_per_session: crate::model::HISTORY_KEEP,
            park_after: Some(DEFAULT_PARK_AFTER),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        Timing::default().validate().unwrap();
    }

    #[test]
    fn derived_timings_are_safe() {
        for ms in [400, 800, 1500, 5000] {
            Timing::with_node_timeout(Duration::from_millis(ms))
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn unsafe_lease_is_refused() {
        let timing = Timing {
            lease_duration: Duration::from_millis(700),
            ..Timing::default()
        };
        let message = timing.validate().unwrap_err();
        assert!(message.contains("node timeout"), "{message}");
    }
}
