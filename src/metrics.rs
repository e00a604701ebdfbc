//! A node's metrics: one `Metrics` of typed handles, made at start and
//! passed to the parts that measure (the session tasks, the write path, the
//! read index, the lease grant), and rendered by
//! `GET /metrics` in the OpenMetrics text format, which Prometheus scrapes.
//!
//! Conventions (Prometheus'): base units in the name (`_seconds`), `_total`
//! only on counters (the library appends it), gauges for what is read at
//! scrape time from the table and Raft. Every name is listed in
//! [`NAMES`] and in README's "Observability" section, and
//! `deploy/grafana/minos.json` is built on them.

use std::fmt::Write as _;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// `kind` and `outcome` of a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CallLabels {
    /// The session's handler kind.
    pub kind: String,
    /// `ok`, or why it failed (`rejected`, `too_large`, `unavailable`, ...).
    pub outcome: &'static str,
}

/// A `reason` label (moves, rejected commands, lease refusals).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets: 100 µs to about 13 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Failover buckets: 1 ms to about 65 s, doubling.
fn failover() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The gauges read at scrape time.
#[derive(Default)]
pub(crate) struct Gauges {
    pub node_id: Gauge,
    pub raft_term: Gauge,
    pub raft_leader: Gauge,
    pub raft_is_leader: Gauge,
    pub raft_last_log_index: Gauge,
    pub raft_applied_index: Gauge,
    pub sessions: Gauge,
    pub sessions_owned: Gauge,
    pub sessions_running: Gauge,
    pub session_tasks: Gauge,
    pub nodes_up: Gauge,
    pub lease_valid: Gauge,
}

/// The typed handles of one node's metrics, and their registry.
pub(crate) struct Metrics {
    registry: Registry,
    /// Calls handled by this node's session tasks, from the handler's start
    /// to the reply (its commit included), by kind and outcome.
    pub calls: HistogramFamily<CallLabels>,
    /// Batches written by this node as leader, from `client_write` to the
    /// entry committed and applied.
    pub commit: Histogram,
    /// Read indexes this node obtained (local on the leader, asked of the
    /// leader elsewhere).
    pub read_index: Histogram,
    /// From the commit of a move to this node (the table's `updated_at`,
    /// the proposer's clock) to the session's task running here.
    pub failover: Histogram,
    /// Sessions moved by entries this node wrote as leader, by the reason
    /// their `Relocate` carries.
    pub moves: Family<ReasonLabel, Counter>,
    /// Commands the state machine rejected in batches this node wrote as
    /// leader, by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Leases this node granted as leader.
    pub lease_grants: Counter,
    /// Lease requests this node refused as leader, by reason.
    pub lease_denials: Family<ReasonLabel, Counter>,
    /// Read at scrape time.
    pub gauges: Gauges,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Every metric family's name as a scrape shows it (histograms add
/// `_bucket`, `_sum` and `_count`). README and the Grafana dashboard are
/// checked against it (tests/readme.rs).
pub const NAMES: &[&str] = &[
    "minos_call_duration_seconds",
    "minos_commit_duration_seconds",
    "minos_read_index_duration_seconds",
    "minos_failover_duration_seconds",
    "minos_session_moves_total",
    "minos_commands_rejected_total",
    "minos_lease_grants_total",
    "minos_lease_denials_total",
    "minos_node_id",
    "minos_raft_term",
    "minos_raft_leader",
    "minos_raft_is_leader",
    "minos_raft_last_log_index",
    "minos_raft_applied_index",
    "minos_sessions",
    "minos_sessions_owned",
    "minos_sessions_running",
    "minos_session_tasks",
    "minos_nodes_up",
    "minos_lease_valid",
];

/// The gauges, registered.
fn register_gauges(registry: &mut Registry) -> Gauges {
    let gauges = Gauges::default();
    let g = &gauges;
    for (name, help, gauge) in [
        ("node_id", "This node's id.", &g.node_id),
        ("raft_term", "Current Raft term.", &g.raft_term),
        (
            "raft_leader",
            "Current leader id (0 when unknown).",
            &g.raft_leader,
        ),
        (
            "raft_is_leader",
            "1 when this node is the leader.",
            &g.raft_is_leader,
        ),
        (
            "raft_last_log_index",
            "Last log index.",
            &g.raft_last_log_index,
        ),
        (
            "raft_applied_index",
            "Last applied log index.",
            &g.raft_applied_index,
        ),
        ("sessions", "Sessions in the table.", &g.sessions),
        (
            "sessions_owned",
            "Sessions this node owns in the table.",
            &g.sessions_owned,
        ),
        (
            "sessions_running",
            "Sessions running on this node (with a task, or parked until their next call).",
            &g.sessions_running,
        ),
        (
            "session_tasks",
            "Session tasks alive on this node (running sessions not parked).",
            &g.session_tasks,
        ),
        ("nodes_up", "Nodes Up in the table.", &g.nodes_up),
        (
            "lease_valid",
            "1 while this node holds a valid lease.",
            &g.lease_valid,
        ),
    ] {
        registry.register(name, help, gauge.clone());
    }
    gauges
}

impl Metrics {
    /// A registry with every metric at zero.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("minos");
        let calls = HistogramFamily::<CallLabels>::new_with_constructor(latency as fn() -> _);
        let commit = latency();
        let read_index = latency();
        let failover = failover();
        let moves = Family::<ReasonLabel, Counter>::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let lease_grants = Counter::default();
        let lease_denials = Family::<ReasonLabel, Counter>::default();
        registry.register_with_unit(
            "call_duration",
            "Calls handled by this node's session tasks, handler and commit, by kind and outcome.",
            Unit::Seconds,
            calls.clone(),
        );
        for (name, help, histogram) in [
            (
                "commit_duration",
                "Batches this node wrote as leader, until committed and applied.",
                &commit,
            ),
            (
                "read_index_duration",
                "Read indexes this node obtained for linearizable reads.",
                &read_index,
            ),
            (
                "failover_duration",
                "From the commit of a session's move to this node to its task running here.",
                &failover,
            ),
        ] {
            registry.register_with_unit(name, help, Unit::Seconds, histogram.clone());
        }
        registry.register(
            "session_moves",
            "Sessions moved by entries this node wrote as leader, by reason.",
            moves.clone(),
        );
        registry.register(
            "commands_rejected",
            "Commands rejected by the state machine in batches this node wrote as leader, by reason.",
            rejected.clone(),
        );
        registry.register(
            "lease_grants",
            "Leases this node granted as leader.",
            lease_grants.clone(),
        );
        registry.register(
            "lease_denials",
            "Lease requests this node refused as leader, by reason.",
            lease_denials.clone(),
        );
        let gauges = register_gauges(&mut registry);
        Self {
            registry,
            calls,
            commit,
            read_index,
            failover,
            moves,
            rejected,
            lease_grants,
            lease_denials,
            gauges,
        }
    }

    /// Records one call.
    pub(crate) fn call(&self, kind: &str, outcome: &'static str, took: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                kind: kind.to_string(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }

    /// Counts `n` moves for `reason`.
    pub(crate) fn moved(&self, reason: &'static str, n: usize) {
        if n > 0 {
            self.moves
                .get_or_create(&ReasonLabel { reason })
                .inc_by(n as u64);
        }
    }

    /// Counts one rejected command.
    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts one refused lease request, by the grant's reason (a
    /// sentence, labelled by a word).
    pub(crate) fn lease_denied(&self, reason: &str) {
        let word = match reason {
            "not the leader" => "not_leader",
            "leader is still taking office" => "taking_office",
            "not a member of the cluster" => "not_member",
            r if r.contains("quorum") => "no_fresh_quorum",
            _ => "other",
        };
        self.lease_denials
            .get_or_create(&ReasonLabel { reason: word })
            .inc();
    }

    /// The OpenMetrics text of every metric (the gauges as last set).
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# EOF");
        }
        text
    }
}

/// The content type of [`Metrics::render`]'s text.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A stable snake_case word for a rejection (a metric label).
pub(crate) fn rejection_reason(rejection: &crate::model::Rejection) -> &'static str {
    use crate::model::Rejection;
    match rejection {
        Rejection::NoSuchSession(_) => "no_such_session",
        Rejection::SessionExists(_) => "session_exists",
        Rejection::StaleEpoch { .. } => "stale_epoch",
        Rejection::NoSuchNode(_) => "no_such_node",
        Rejection::StaleVersion { .. } => "stale_version",
        Rejection::DuplicateCall { .. } => "duplicate_call",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// The reason word of a command's moves, `None` for a command that moves
/// nothing (a metric label: `MoveReason`'s serde name).
pub(crate) fn move_reason(command: &crate::model::Command) -> Option<&'static str> {
    use crate::model::{Command, MoveReason};
    match command {
        Command::Reassign { .. } => Some("reassign"),
        Command::Relocate { reason, .. } | Command::Handoff { reason, .. } => Some(match reason {
            MoveReason::Created => "created",
            MoveReason::NodeDown => "node_down",
            MoveReason::Drain => "drain",
            MoveReason::GracefulStop => "graceful_stop",
            MoveReason::Rebalance => "rebalance",
            MoveReason::NodeRemoved => "node_removed",
            MoveReason::Placed => "placed",
            MoveReason::Reassign => "reassign",
        }),
        _ => None,
    }
}

/// A stable snake_case word for a call's failure (a metric label).
pub(crate) fn call_outcome(
    result: &Result<crate::peer::CallReply, crate::peer::CallError>,
) -> &'static str {
    use crate::peer::CallError;
    match result {
        Ok(_) => "ok",
        Err(CallError::NotFound(_)) => "not_found",
        Err(CallError::Rejected(_)) => "rejected",
        Err(CallError::StateTooLarge(..)) => "too_large",
        Err(CallError::Unavailable(..)) => "unavailable",
        Err(CallError::OutcomeUnknown(_)) => "outcome_unknown",
        Err(CallError::NotHere) => "not_here",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_rendered_and_follows_the_conventions() {
        let metrics = Metrics::new();
        metrics.call("kv", "ok", Duration::from_millis(3));
        metrics.moved("node_down", 2);
        metrics.rejected("stale_epoch");
        metrics.lease_denied("not_leader");
        metrics.lease_grants.inc();
        metrics.commit.observe(0.002);
        let text = metrics.render();
        for name in NAMES {
            let typed = text
                .lines()
                .find_map(|l| {
                    let rest = l.strip_prefix("# TYPE ")?;
                    let (family, kind) = rest.split_once(' ')?;
                    (family == *name || format!("{family}_total") == *name).then_some(kind)
                })
                .unwrap_or_else(|| panic!("{name} has no TYPE line in:\n{text}"));
            match typed {
                "counter" => assert!(name.ends_with("_total"), "{name}"),
                "histogram" => assert!(name.ends_with("_seconds"), "{name}"),
                "gauge" => assert!(!name.ends_with("_total"), "{name}"),
                other => panic!("{name}: unexpected type {other}"),
            }
        }
        assert!(text.contains("minos_call_duration_seconds_count{kind=\"kv\",outcome=\"ok\"} 1"));
        assert!(text.contains("minos_session_moves_total{reason=\"node_down\"} 2"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn readme_and_the_grafana_dashboard_use_these_names() {
        let readme = include_str!("../README.md");
        for name in NAMES {
            assert!(readme.contains(name), "README does not name {name}");
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../deploy/grafana/minos.json"))
                .expect("the dashboard is JSON");
        let mut used = 0;
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !word.starts_with("minos_") {
                        continue;
                    }
                    let family = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .filter(|base| NAMES.contains(base))
                        .unwrap_or(word);
                    assert!(
                        NAMES.contains(&family),
                        "the dashboard uses {word}, not a metric"
                    );
                    used += 1;
                }
            }
        }
        assert!(used >= 10, "the dashboard uses {used} metrics");
    }
}
