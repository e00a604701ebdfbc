//! The history checker: pure code over a recorded history and the final
//! state of every session (read after healing everything). It proves, or
//! refutes with the events that show it:
//!
//! - `lost_ack`: every acknowledged append is in the final log;
//! - `duplicate`: no value is in the final log twice (exactly once);
//! - `failed_applied`: no append that failed for certain is in it;
//! - `phantom`: nothing is in it that no client sent;
//! - `ack_position`: an append answered `{"len": n}` sits at position n-1;
//! - `read_not_prefix`: every log a read saw is a prefix of the final log
//!   (the log only grows);
//! - `stale_read`: in real time, an operation that started after another
//!   completed sees at least what that one saw or wrote (reads and
//!   acknowledged appends; linearizability of this append-only register);
//! - `split_owner`: no two replies for one session with one epoch came from
//!   two owners;
//! - `stale_epoch`: no reply from an older epoch for a call that started
//!   after a reply from a newer epoch had completed;
//! - `session_lost`: every session can still be read at the end;
//! - `malformed`: every acknowledged reply has the shape the kind promises.
//!
//! These rules read the append workload's sessions only. The register
//! workload's sessions are checked for linearizability by
//! [`super::linearizability`], whose verdicts land in the same report
//! (`not_linearizable`, and `malformed` for its replies).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::history::{LogHasher, Observed, Op, OpKind, Outcome};
use crate::model::NodeId;

/// Violations kept per rule (the rest are only counted).
const KEEP_PER_RULE: usize = 10;

/// A rule of the promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A session could not be read at the end.
    SessionLost,
    /// An acknowledged append is missing from the final state.
    LostAck,
    /// A value is in the final state more than once.
    Duplicate,
    /// An append that failed for certain is in the final state.
    FailedApplied,
    /// The final state holds a value nobody sent.
    Phantom,
    /// An acknowledged append is not where its reply said.
    AckPosition,
    /// A read saw a log that is not a prefix of the final log.
    ReadNotPrefix,
    /// An operation saw less than one that completed before it started.
    StaleRead,
    /// One epoch, two owners.
    SplitOwner,
    /// A reply from an older epoch after a newer epoch had answered.
    StaleEpoch,
    /// A reply of an unexpected shape.
    Malformed,
    /// A register session's history has no linearization (checked by the
    /// todc-utils WGL checker).
    NotLinearizable,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&name)
    }
}

/// A broken rule and the events that prove it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Violation {
    /// The rule.
    pub rule: Rule,
    /// The session.
    pub session: String,
    /// What is wrong.
    pub detail: String,
    /// The operations that show it.
    pub ops: Vec<Op>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} on {}: {}", self.rule, self.session, self.detail)?;
        for op in &self.ops {
            writeln!(f, "    {op}")?;
        }
        Ok(())
    }
}

/// Counts over the history.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Requests recorded.
    pub ops: usize,
    /// Appends acknowledged.
    pub appends_ok: usize,
    /// Appends that failed for certain.
    pub appends_failed: usize,
    /// Appends with an unknown outcome.
    pub appends_unknown: usize,
    /// Unknown appends found in the final state.
    pub unknown_applied: usize,
    /// Reads answered.
    pub reads_ok: usize,
    /// Reads that failed or timed out.
    pub reads_not_ok: usize,
    /// Entries in all final logs.
    pub final_entries: usize,
    /// Distinct epochs seen in replies.
    pub epochs_seen: usize,
    /// Register workload: its counts and the linearizability verdict.
    #[serde(default)]
    pub register: super::linearizability::RegisterStats,
}

/// The checker's verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckReport {
    /// Kept violations (at most `KEEP_PER_RULE` per rule).
    pub violations: Vec<Violation>,
    /// All violations, counted per rule.
    pub counts: BTreeMap<Rule, usize>,
    /// Counts over the history.
    pub stats: Stats,
}

impl CheckReport {
    /// True when no rule is broken.
    pub fn ok(&self) -> bool {
        self.counts.is_empty()
    }

    /// Total violations.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Counts a violation of `rule` and keeps it (up to `KEEP_PER_RULE`).
    pub fn report(&mut self, rule: Rule, session: &str, detail: String, ops: Vec<&Op>) {
        let count = self.counts.entry(rule).or_insert(0);
        *count += 1;
        if *count <= KEEP_PER_RULE {
            self.violations.push(Violation {
                rule,
                session: session.to_string(),
                detail,
                ops: ops.into_iter().cloned().collect(),
            });
        }
    }
}

/// One point of the register's history: the log length an acknowledged
/// operation found before it and left after it.
struct Observation<'a> {
    op: &'a Op,
    before: u64,
    after: u64,
}

/// Checks the append workload's `ops` against `finals` (session -> final
/// log, or why it could not be read). Register operations are skipped.
pub fn check(ops: &[Op], finals: &BTreeMap<String, Result<Vec<String>, String>>) -> CheckReport {
    let mut report = CheckReport::default();
    let ops: Vec<&Op> = ops.iter().filter(|op| !op.kind.is_register()).collect();
    report.stats.ops = ops.len();
    let mut by_session: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_session.entry(op.session.as_str()).or_default().push(op);
    }
    for session in finals.keys() {
        by_session.entry(session.as_str()).or_default();
    }
    let mut epochs = std::collections::BTreeSet::new();
    for (session, ops) in &by_session {
        for op in ops {
            match (&op.kind, &op.outcome) {
                (OpKind::Append(_), Outcome::Ok { .. }) => report.stats.appends_ok += 1,
                (OpKind::Append(_), Outcome::Failed(_)) => report.stats.appends_failed += 1,
                (OpKind::Append(_), Outcome::Unknown(_)) => report.stats.appends_unknown += 1,
                (OpKind::Read, Outcome::Ok { .. }) => report.stats.reads_ok += 1,
                (OpKind::Read, _) => report.stats.reads_not_ok += 1,
                // Filtered out above.
                (OpKind::Set(_) | OpKind::Get | OpKind::TableRead, _) => {}
            }
            if let Some((_, epoch)) = op.owner_epoch() {
                epochs.insert(epoch);
            }
            if let Outcome::Ok {
                observed: Observed::Malformed(what),
                ..
            } = &op.outcome
            {
                report.report(
                    Rule::Malformed,
                    session,
                    format!("unexpected reply {what}"),
                    vec![op],
                );
            }
        }
        match finals.get(*session) {
            Some(Ok(log)) => {
                report.stats.final_entries += log.len();
                check_final(&mut report, session, ops, log);
            }
            Some(Err(why)) => report.report(
                Rule::SessionLost,
                session,
                format!("final read failed: {why}"),
                Vec::new(),
            ),
            None => report.report(
                Rule::SessionLost,
                session,
                "no final read".into(),
                Vec::new(),
            ),
        }
        check_real_time(&mut report, session, ops);
        check_epochs(&mut report, session, ops);
    }
    report.stats.epochs_seen = epochs.len();
    report
}

/// The rules over a session's final log: exactly once, no phantoms,
/// acknowledged appends where their replies said, failed ones absent, and
/// every read a prefix of it.
fn check_final(report: &mut CheckReport, session: &str, ops: &[&Op], log: &[String]) {
    let mut positions: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, value) in log.iter().enumerate() {
        positions.entry(value.as_str()).or_default().push(index);
    }
    let mut sent: HashMap<&str, &Op> = HashMap::new();
    for op in ops {
        if let OpKind::Append(value) = &op.kind {
            sent.insert(value.as_str(), op);
        }
    }
    check_duplicates_and_phantoms(report, session, &positions, &sent);
    check_appends(report, session, ops, &positions, log);
    check_read_prefixes(report, session, ops, log);
}

/// `duplicate` and `phantom`: each value of the final log (at `positions`)
/// is there once and was `sent` by a client.
fn check_duplicates_and_phantoms(
    report: &mut CheckReport,
    session: &str,
    positions: &HashMap<&str, Vec<usize>>,
    sent: &HashMap<&str, &Op>,
) {
    let mut dup_values: Vec<(&str, &Vec<usize>)> = positions
        .iter()
        .filter(|(_, at)| at.len() > 1)
        .map(|(v, at)| (*v, at))
        .collect();
    dup_values.sort();
    for (value, at) in dup_values {
        report.report(
            Rule::Duplicate,
            session,
            format!(
                "{value:?} is in the final log {} times, at {at:?}",
                at.len()
            ),
            sent.get(value).copied().into_iter().collect(),
        );
    }
    let mut phantoms: Vec<&str> = positions
        .keys()
        .filter(|v| !sent.contains_key(*v))
        .copied()
        .collect();
    phantoms.sort();
    for value in phantoms {
        report.report(
            Rule::Phantom,
            session,
            format!("{value:?} is in the final log but no client sent it"),
            Vec::new(),
        );
    }
}

/// `lost_ack`, `ack_position` and `failed_applied`: each append's outcome
/// against where its value is in the final log (counting unknown ones that
/// were applied).
fn check_appends(
    report: &mut CheckReport,
    session: &str,
    ops: &[&Op],
    positions: &HashMap<&str, Vec<usize>>,
    log: &[String],
) {
    for op in ops {
        let OpKind::Append(value) = &op.kind else {
            continue;
        };
        let at = positions.get(value.as_str());
        match &op.outcome {
            Outcome::Ok {
                observed: Observed::Appended(len),
                ..
            } => match at {
                None => report.report(
                    Rule::LostAck,
                    session,
                    format!(
                        "acknowledged {value:?} (len {len}) is not in the final log ({} entries)",
                        log.len()
                    ),
                    vec![op],
                ),
                Some(at) => {
                    let expected = (*len - 1) as usize;
                    if !at.contains(&expected) {
                        report.report(
                            Rule::AckPosition,
                            session,
                            format!(
                                "acknowledged {value:?} with len {len}, but it is at {at:?} and position {expected} holds {:?}",
                                log.get(expected)
                            ),
                            vec![op],
                        );
                    }
                }
            },
            Outcome::Failed(why) => {
                if let Some(at) = at {
                    report.report(
                        Rule::FailedApplied,
                        session,
                        format!("{value:?} failed for certain ({why}) but is at {at:?}"),
                        vec![op],
                    );
                }
            }
            Outcome::Unknown(_) => {
                if at.is_some() {
                    report.stats.unknown_applied += 1;
                }
            }
            Outcome::Ok { .. } => {}
        }
    }
}

/// `read_not_prefix`: every log a read saw is a prefix of the final log.
fn check_read_prefixes(report: &mut CheckReport, session: &str, ops: &[&Op], log: &[String]) {
    // Prefix hashes of the final log, to compare with read digests.
    let mut prefix = Vec::with_capacity(log.len() + 1);
    let mut hasher = LogHasher::default();
    prefix.push(hasher.finish());
    for entry in log {
        hasher.push(entry);
        prefix.push(hasher.finish());
    }
    for op in ops {
        if let Outcome::Ok {
            observed: Observed::Log(digest),
            ..
        } = &op.outcome
        {
            let matches = prefix
                .get(digest.len as usize)
                .is_some_and(|h| *h == digest.hash);
            if !matches {
                let final_tail = &log[..(digest.len as usize).min(log.len())];
                let final_tail = &final_tail[final_tail.len().saturating_sub(3)..];
                report.report(
                    Rule::ReadNotPrefix,
                    session,
                    format!(
                        "read saw {} entries ending {:?}; the final log has {} entries, its first {} ending {:?}",
                        digest.len,
                        digest.tail,
                        log.len(),
                        digest.len.min(log.len() as u64),
                        final_tail
                    ),
                    vec![op],
                );
            }
        }
    }
}

fn check_real_time(report: &mut CheckReport, session: &str, ops: &[&Op]) {
    let mut observations: Vec<Observation> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Ok {
                observed: Observed::Appended(n),
                ..
            } => Some(Observation {
                op,
                before: n - 1,
                after: *n,
            }),
            Outcome::Ok {
                observed: Observed::Log(d),
                ..
            } => Some(Observation {
                op,
                before: d.len,
                after: d.len,
            }),
            _ => None,
        })
        .collect();
    observations.sort_by_key(|o| o.op.end_us);
    // best[i]: the observation with the largest `after` among the first i+1.
    let mut best: Vec<usize> = Vec::with_capacity(observations.len());
    for (i, o) in observations.iter().enumerate() {
        let keep = match best.last() {
            Some(&b) if observations[b].after >= o.after => b,
            _ => i,
        };
        best.push(keep);
    }
    for later in &observations {
        let done_before = observations.partition_point(|o| o.op.end_us < later.op.start_us);
        if done_before == 0 {
            continue;
        }
        let earlier = &observations[best[done_before - 1]];
        if earlier.after > later.before {
            report.report(
                Rule::StaleRead,
                session,
                format!(
                    "an operation that completed first left the log at {} entries; one that started later found only {}",
                    earlier.after, later.before
                ),
                vec![earlier.op, later.op],
            );
        }
    }
}

fn check_epochs(report: &mut CheckReport, session: &str, ops: &[&Op]) {
    let mut acked: Vec<(&Op, NodeId, u64)> = ops
        .iter()
        .filter_map(|op| op.owner_epoch().map(|(owner, epoch)| (*op, owner, epoch)))
        .collect();
    let mut owners: BTreeMap<u64, (NodeId, &Op)> = BTreeMap::new();
    let mut split_reported = std::collections::BTreeSet::new();
    for (op, owner, epoch) in &acked {
        match owners.get(epoch) {
            None => {
                owners.insert(*epoch, (*owner, op));
            }
            Some((first, first_op)) if first != owner => {
                if split_reported.insert(*epoch) {
                    report.report(
                        Rule::SplitOwner,
                        session,
                        format!("epoch {epoch} answered by node {first} and by node {owner}"),
                        vec![first_op, op],
                    );
                }
            }
            Some(_) => {}
        }
    }
    acked.sort_by_key(|(op, _, _)| op.end_us);
    let mut best: Vec<usize> = Vec::with_capacity(acked.len());
    for (i, (_, _, epoch)) in acked.iter().enumerate() {
        let keep = match best.last() {
            Some(&b) if acked[b].2 >= *epoch => b,
            _ => i,
        };
        best.push(keep);
    }
    for (op, owner, epoch) in &acked {
        let done_before = acked.partition_point(|(o, _, _)| o.end_us < op.start_us);
        if done_before == 0 {
            continue;
        }
        let (newer, newer_owner, newer_epoch) = acked[best[done_before - 1]];
        if newer_epoch > *epoch {
            report.report(
                Rule::StaleEpoch,
                session,
                format!(
                    "node {owner} answered under epoch {epoch} after node {newer_owner} had answered under epoch {newer_epoch}"
                ),
                vec![newer, op],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::LogDigest;

    const S: &str = "s1";

    fn op(kind: OpKind, start: u64, end: u64, outcome: Outcome) -> Op {
        Op {
            client: 1,
            session: S.into(),
            node: 1,
            kind,
            start_us: start,
            end_us: end,
            outcome,
        }
    }

    fn append_ok(value: &str, start: u64, end: u64, len: u64, owner: NodeId, epoch: u64) -> Op {
        op(
            OpKind::Append(value.into()),
            start,
            end,
            Outcome::Ok {
                owner,
                epoch,
                observed: Observed::Appended(len),
            },
        )
    }

    fn read_ok(log: &[&str], start: u64, end: u64, owner: NodeId, epoch: u64) -> Op {
        let log: Vec<String> = log.iter().map(|s| s.to_string()).collect();
        op(
            OpKind::Read,
            start,
            end,
            Outcome::Ok {
                owner,
                epoch,
                observed: Observed::Log(LogDigest::of(&log)),
            },
        )
    }

    fn finals(log: &[&str]) -> BTreeMap<String, Result<Vec<String>, String>> {
        [(
            S.to_string(),
            Ok(log.iter().map(|s| s.to_string()).collect()),
        )]
        .into()
    }

    fn rules(report: &CheckReport) -> Vec<Rule> {
        report.counts.keys().copied().collect()
    }

    /// A clean history: appends, reads in order, an unknown append that
    /// landed and one that did not, a definite failure that did not land,
    /// and a failover to a newer epoch.
    fn clean() -> Vec<Op> {
        vec![
            append_ok("a", 0, 10, 1, 1, 5),
            read_ok(&["a"], 11, 20, 1, 5),
            op(
                OpKind::Append("u1".into()),
                21,
                40,
                Outcome::Unknown("outcome_unknown".into()),
            ),
            op(
                OpKind::Append("f".into()),
                21,
                22,
                Outcome::Failed("503 unavailable".into()),
            ),
            op(
                OpKind::Append("u2".into()),
                21,
                40,
                Outcome::Unknown("client timeout".into()),
            ),
            append_ok("b", 41, 50, 3, 2, 9),
            read_ok(&["a", "u1", "b"], 45, 60, 2, 9),
            read_ok(&["a", "u1", "b"], 61, 70, 2, 9),
        ]
    }

    #[test]
    fn a_clean_history_passes() {
        let report = check(&clean(), &finals(&["a", "u1", "b"]));
        assert!(report.ok(), "{:?}", report.violations);
        assert_eq!(report.stats.appends_ok, 2);
        assert_eq!(report.stats.appends_unknown, 2);
        assert_eq!(report.stats.unknown_applied, 1);
        assert_eq!(report.stats.appends_failed, 1);
        assert_eq!(report.stats.reads_ok, 3);
        assert_eq!(report.stats.epochs_seen, 2);
    }

    #[test]
    fn a_lost_acknowledged_append_is_found() {
        let report = check(&clean(), &finals(&["a", "u1"]));
        assert!(rules(&report).contains(&Rule::LostAck), "{report:?}");
        let v = &report.violations[0];
        assert!(v.ops.iter().any(|o| o.kind == OpKind::Append("b".into())));
    }

    #[test]
    fn a_duplicate_is_found() {
        let report = check(&clean(), &finals(&["a", "u1", "b", "b"]));
        assert_eq!(rules(&report), vec![Rule::Duplicate]);
    }

    #[test]
    fn an_applied_definite_failure_is_found() {
        let report = check(&clean(), &finals(&["a", "u1", "b", "f"]));
        assert_eq!(rules(&report), vec![Rule::FailedApplied]);
    }

    #[test]
    fn a_phantom_is_found() {
        let report = check(&clean(), &finals(&["a", "u1", "b", "zz"]));
        assert_eq!(rules(&report), vec![Rule::Phantom]);
    }

    #[test]
    fn a_misplaced_acknowledged_append_is_found() {
        // "b" said len 3 but sits at position 1: the reads also disagree.
        let ops = vec![
            append_ok("a", 0, 10, 1, 1, 5),
            append_ok("b", 41, 50, 3, 1, 5),
        ];
        let report = check(&ops, &finals(&["b", "a"]));
        assert!(rules(&report).contains(&Rule::AckPosition), "{report:?}");
    }

    #[test]
    fn a_read_that_is_not_a_prefix_is_found() {
        let mut ops = clean();
        ops.push(read_ok(&["a", "b"], 71, 80, 2, 9));
        let report = check(&ops, &finals(&["a", "u1", "b"]));
        assert!(rules(&report).contains(&Rule::ReadNotPrefix), "{report:?}");
    }

    #[test]
    fn a_read_going_backwards_is_found_and_overlap_is_allowed() {
        // Second read started after the first completed but saw less.
        let ops = vec![
            append_ok("a", 0, 10, 1, 1, 5),
            append_ok("b", 11, 20, 2, 1, 5),
            read_ok(&["a", "b"], 21, 30, 1, 5),
            read_ok(&["a"], 31, 40, 1, 5),
        ];
        let report = check(&ops, &finals(&["a", "b"]));
        assert_eq!(rules(&report), vec![Rule::StaleRead]);
        assert_eq!(report.counts[&Rule::StaleRead], 1, "{report:?}");
        // Overlapping in time, either order is fine.
        let ops = vec![
            append_ok("a", 0, 10, 1, 1, 5),
            append_ok("b", 11, 30, 2, 1, 5),
            read_ok(&["a"], 12, 40, 1, 5),
            read_ok(&["a", "b"], 13, 20, 1, 5),
        ];
        let report = check(&ops, &finals(&["a", "b"]));
        assert!(report.ok(), "{report:?}");
    }

    #[test]
    fn a_read_missing_a_completed_append_is_found() {
        let ops = vec![
            append_ok("a", 0, 10, 1, 1, 5),
            append_ok("b", 11, 20, 2, 1, 5),
            read_ok(&["a"], 21, 30, 1, 5),
        ];
        let report = check(&ops, &finals(&["a", "b"]));
        assert_eq!(rules(&report), vec![Rule::StaleRead]);
    }

    #[test]
    fn two_owners_of_one_epoch_are_found() {
        let ops = vec![append_ok("a", 0, 10, 1, 1, 5), read_ok(&["a"], 0, 10, 2, 5)];
        let report = check(&ops, &finals(&["a"]));
        assert_eq!(rules(&report), vec![Rule::SplitOwner]);
    }

    #[test]
    fn an_old_epoch_after_a_new_one_is_found_but_not_when_overlapping() {
        let ops = vec![read_ok(&[], 0, 10, 2, 9), read_ok(&[], 11, 20, 1, 5)];
        let report = check(&ops, &finals(&[]));
        assert_eq!(rules(&report), vec![Rule::StaleEpoch]);
        let ops = vec![read_ok(&[], 0, 10, 2, 9), read_ok(&[], 5, 20, 1, 5)];
        assert!(check(&ops, &finals(&[])).ok());
    }

    #[test]
    fn a_lost_session_and_a_malformed_reply_are_found() {
        let mut ops = vec![append_ok("a", 0, 10, 1, 1, 5)];
        ops.push(op(
            OpKind::Append("x".into()),
            11,
            12,
            Outcome::Ok {
                owner: 1,
                epoch: 5,
                observed: Observed::Malformed("{}".into()),
            },
        ));
        let finals: BTreeMap<String, Result<Vec<String>, String>> =
            [(S.to_string(), Err("404 not_found".to_string()))].into();
        let report = check(&ops, &finals);
        assert_eq!(rules(&report), vec![Rule::SessionLost, Rule::Malformed]);
        let report = check(&ops, &BTreeMap::new());
        assert!(rules(&report).contains(&Rule::SessionLost));
    }

    #[test]
    fn reports_are_bounded_but_counted() {
        let ops: Vec<Op> = (0..50)
            .map(|i| append_ok(&format!("v{i}"), i * 10, i * 10 + 5, i + 1, 1, 5))
            .collect();
        let report = check(&ops, &finals(&[]));
        assert_eq!(report.counts[&Rule::LostAck], 50);
        assert_eq!(report.violations.len(), KEEP_PER_RULE);
        assert_eq!(report.total(), 50);
    }
}
