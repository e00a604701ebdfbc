//! The nodes' log lines around each violation of a failed run, printed
//! with the report: a failure seen once in CI is then explained by what
//! the nodes said at that moment, not only by the last lines of their logs.

use chrono::{DateTime, Duration, Utc};

use super::super::backend::Backend;
use super::super::checker::Violation;
use crate::model::NodeId;

/// Log lines kept per node and violation.
const LINES: usize = 120;

/// Violations whose moments are printed.
const VIOLATIONS: usize = 3;

/// Prints, for the first [`VIOLATIONS`] of `violations`, every node's log
/// lines from 1.5 s before the first operation that shows it to 0.5 s after
/// the last; `started` is the wall-clock time of the run's time 0.
pub(super) fn print_around<B: Backend>(
    backend: &B,
    violations: &[Violation],
    started: DateTime<Utc>,
) {
    if violations.is_empty() {
        return;
    }
    // Each log read once (a docker backend asks `docker logs` for it).
    let logs: Vec<(NodeId, String)> = backend
        .nodes()
        .into_iter()
        .map(|node| (node, backend.log(node)))
        .filter(|(_, log)| !log.is_empty())
        .collect();
    for violation in violations.iter().take(VIOLATIONS) {
        let (Some(first), Some(last)) = (
            violation.ops.iter().map(|op| op.start_us).min(),
            violation.ops.iter().map(|op| op.end_us).max(),
        ) else {
            continue;
        };
        let from = started + micros(first) - Duration::milliseconds(1500);
        let to = started + micros(last) + Duration::milliseconds(500);
        for (node, log) in &logs {
            let (lines, left_out) = window(log, from, to, LINES);
            eprintln!(
                "chaos: node {node} from {} to {} ({} on {}; {left_out} more lines left out):\n{}",
                from.format("%H:%M:%S%.3f"),
                to.format("%H:%M:%S%.3f"),
                violation.rule,
                violation.session,
                lines.join("\n")
            );
        }
    }
}

fn micros(us: u64) -> Duration {
    Duration::microseconds(i64::try_from(us).unwrap_or(i64::MAX / 2))
}

/// The lines of `log` stamped from `from` to `to` (a line without a stamp
/// goes with the one before it), at most `max`: when there are more, the
/// lines of minos's own modules first, then the rest, in log order either
/// way. Also how many were left out.
fn window(log: &str, from: DateTime<Utc>, to: DateTime<Utc>, max: usize) -> (Vec<&str>, usize) {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in log.lines() {
        if let Some(at) = stamp(line) {
            inside = from <= at && at <= to;
        }
        if inside {
            lines.push(line);
        }
    }
    if lines.len() <= max {
        return (lines, 0);
    }
    let total = lines.len();
    let own_lines = lines.iter().filter(|l| own(l)).count();
    let mut room_for_rest = max.saturating_sub(own_lines);
    let mut kept_own = 0;
    lines.retain(|line| {
        if own(line) {
            kept_own += 1;
            kept_own <= max
        } else if room_for_rest > 0 {
            room_for_rest -= 1;
            true
        } else {
            false
        }
    });
    let kept = lines.len();
    (lines, total - kept)
}

/// True for a line logged by minos's own code: its target (after the time
/// and the level) is a `minos::` module (an openraft line may quote one of
/// minos's errors).
fn own(line: &str) -> bool {
    line.split_whitespace()
        .nth(2)
        .is_some_and(|target| target.starts_with("minos::"))
}

/// The RFC 3339 time a log line starts with.
fn stamp(line: &str) -> Option<DateTime<Utc>> {
    let first = line.split_whitespace().next()?;
    DateTime::parse_from_rfc3339(first)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    const LOG: &str = "\
2026-12-04T03:47:36.900000Z  INFO minos::scheduler: before
2026-12-04T03:47:37.000000Z  WARN openraft::core: in 1 error=minos::peer::Error
  a continuation of it
2026-12-04T03:47:37.100000Z  INFO minos::runtime: in 2
2026-12-04T03:47:37.200000Z  INFO openraft::replication: in 3
2026-12-04T03:47:37.300000Z  INFO minos::scheduler: after";

    #[test]
    fn keeps_the_stamped_window_and_its_continuations() {
        let (lines, left_out) = window(
            LOG,
            at("2026-12-04T03:47:37Z"),
            at("2026-12-04T03:47:37.2Z"),
            10,
        );
        assert_eq!(left_out, 0);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[1].contains("continuation"));
        assert!(lines[3].contains("in 3"));
    }

    #[test]
    fn prefers_minos_lines_when_over_the_limit() {
        let (lines, left_out) = window(
            LOG,
            at("2026-12-04T03:47:36Z"),
            at("2026-12-04T03:47:38Z"),
            3,
        );
        assert_eq!(left_out, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| own(l)), "{lines:?}");
        assert!(!lines.iter().any(|l| l.contains("openraft")), "{lines:?}");
    }
}
