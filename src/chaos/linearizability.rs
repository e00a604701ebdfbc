//! The register checker: every register session's history is checked for
//! linearizability by todc-utils' [`WGLChecker`] (Wing and Gong's search
//! with Lowe's memoization of (linearized set, state) pairs), one session at
//! a time: linearizability is P-compositional, so a history is linearizable
//! exactly when the history of every session is.
//!
//! One session is a read/write register whose values are unique (every
//! `set` writes a fresh `{"r": V}`), so a read names the one write it saw:
//! - an acknowledged `set` is a write over [start, end];
//! - a `get` or table read that answered reads the value it saw over
//!   [start, end] (the empty first document is value 0, the initial state);
//! - a `set` that failed for certain did not run and is left out; a read
//!   that saw its value has no write to explain it and fails the check;
//! - a read that did not answer is left out (a read changes nothing);
//! - a `set` whose outcome is unknown is open-ended: it may take effect at
//!   any time after its start, or never. WGL wants a response for every
//!   call, so the open end is closed without changing the verdict: a write
//!   no read saw is left out (it may never have taken effect; with it or
//!   without it the history is linearizable alike), and a write some read
//!   saw took effect before that read returned, so its response is the
//!   earliest return of a read that saw it (and not before its start).
//!
//! When a session fails, the checker narrows its history to a small window
//! that still has no linearization; each step only removes what keeps a
//! linearizable history linearizable (a read, or a write no remaining read
//! saw), so the window is a proof on its own:
//! 1. the shortest prefix by time, by bisection over return times (a prefix
//!    of a linearizable history is linearizable; operations still running
//!    at its end are open-ended in it);
//! 2. the reads that returned before some time `s` are dropped, with the
//!    latest `s` that still fails, by bisection;
//! 3. blocks of the rest are dropped while it still fails (a bounded
//!    delta-debugging pass).
//!
//! Histories are bounded per session by the workload (each session takes a
//! bounded number of operations), and [`check_registers`] runs each
//! session's check on its own thread with a deadline, so one pathological
//! history cannot stall a run: it is reported as undecided, which fails
//! the run.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use todc_utils::linearizability::history::{Action as Event, History};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::register::{RegisterOperation, RegisterSpecification};

use super::checker::Rule;
use super::history::{Observed, Op, OpKind, Outcome};

type Checker = WGLChecker<RegisterSpecification<u32>>;

/// Checks spent narrowing a failing history at most.
const MAX_SHRINK_CHECKS: usize = 300;
/// Time spent narrowing a failing history at most.
const MAX_SHRINK_TIME: Duration = Duration::from_secs(20);

/// Counts of the register workload and the checker's verdict.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RegisterStats {
    /// Register operations recorded.
    pub ops: usize,
    /// Sessions with operations.
    pub sessions: usize,
    /// `set` calls acknowledged.
    pub sets_ok: usize,
    /// `set` calls that failed for certain (left out).
    pub sets_failed: usize,
    /// `set` calls with an unknown outcome.
    pub sets_unknown: usize,
    /// Unknown `set`s whose value a read saw (closed at that read).
    pub unknown_sets_seen: usize,
    /// `get` calls answered.
    pub gets_ok: usize,
    /// Table reads answered.
    pub table_reads_ok: usize,
    /// Reads (either kind) that did not answer (left out).
    pub reads_not_ok: usize,
    /// Operations handed to the linearizability checker.
    pub ops_checked: usize,
    /// Sessions whose history is linearizable.
    pub sessions_linearizable: usize,
    /// Sessions whose history is not.
    pub sessions_not_linearizable: usize,
    /// Sessions whose check did not finish in time.
    pub sessions_undecided: usize,
    /// Time spent checking, in ms.
    pub check_ms: u64,
}

/// A rule broken by a register session, with the operations that show it.
#[derive(Clone, Debug)]
pub struct RegisterViolation {
    /// `not_linearizable` or `malformed`.
    pub rule: Rule,
    /// The session.
    pub session: String,
    /// What is wrong.
    pub detail: String,
    /// The failing window (or the malformed reply).
    pub ops: Vec<Op>,
}

/// What [`check_registers`] found.
#[derive(Clone, Debug, Default)]
pub struct RegisterReport {
    /// Counts and verdict.
    pub stats: RegisterStats,
    /// Broken rules.
    pub violations: Vec<RegisterViolation>,
    /// Checks that did not finish (they fail the run).
    pub undecided: Vec<String>,
}

/// A register operation as the checker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Write(u32),
    Read(u32),
}

/// One operation of a session, encoded. `end` is `None` for an open-ended
/// write (unknown outcome); reads always have one.
#[derive(Clone, Copy, Debug)]
struct Encoded {
    /// Position in the session's operations.
    index: usize,
    start: u64,
    end: Option<u64>,
    action: Action,
}

/// An operation of a window: closed, ready for WGL.
#[derive(Clone, Copy, Debug)]
struct Interval {
    /// Position in the encoded operations.
    at: usize,
    start: u64,
    end: u64,
    action: Action,
}

/// The verdict on one session.
#[derive(Clone, Debug)]
pub struct SessionCheck {
    /// Operations handed to the checker.
    pub ops_checked: usize,
    /// Unknown `set`s closed at a read of their value.
    pub unknown_sets_seen: usize,
    /// `None` when linearizable; else the failure.
    pub failure: Option<RegisterViolation>,
    /// Replies of an unexpected shape.
    pub malformed: Vec<RegisterViolation>,
}

/// Encodes a session's operations: values interned (0 is the empty first
/// document), definite failures and unanswered reads left out.
fn encode(session: &str, ops: &[&Op]) -> (Vec<Encoded>, Vec<RegisterViolation>) {
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |value: &str| -> u32 {
        let next = ids.len() as u32 + 1;
        *ids.entry(value.to_string()).or_insert(next)
    };
    let mut encoded = Vec::new();
    let mut malformed = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let action = match (&op.kind, &op.outcome) {
            (OpKind::Set(value), Outcome::Ok { observed, .. }) => {
                if let Observed::Malformed(reply) = observed {
                    malformed.push(RegisterViolation {
                        rule: Rule::Malformed,
                        session: session.to_string(),
                        detail: format!("unexpected reply to set: {reply}"),
                        ops: vec![(*op).clone()],
                    });
                    // It ran, but its answer says nothing: open-ended.
                    encoded.push(Encoded {
                        index,
                        start: op.start_us,
                        end: None,
                        action: Action::Write(intern(value)),
                    });
                    continue;
                }
                Some((Action::Write(intern(value)), Some(op.end_us)))
            }
            (OpKind::Set(value), Outcome::Unknown(_)) => Some((Action::Write(intern(value)), None)),
            (OpKind::Set(value), Outcome::Failed(_)) => {
                // Interned all the same, so that a read of it finds no write.
                intern(value);
                None
            }
            (OpKind::Get | OpKind::TableRead, Outcome::Ok { observed, .. }) => match observed {
                Observed::Value(None) => Some((Action::Read(0), Some(op.end_us))),
                Observed::Value(Some(value)) => {
                    Some((Action::Read(intern(value)), Some(op.end_us)))
                }
                other => {
                    malformed.push(RegisterViolation {
                        rule: Rule::Malformed,
                        session: session.to_string(),
                        detail: format!("unexpected register reply {other:?}"),
                        ops: vec![(*op).clone()],
                    });
                    None
                }
            },
            _ => None,
        };
        if let Some((action, end)) = action {
            encoded.push(Encoded {
                index,
                start: op.start_us,
                end,
                action,
            });
        }
    }
    (encoded, malformed)
}

/// The window of `ops` up to time `until` (an event prefix), without reads
/// that returned before `reads_from` and without what `removed` marks; open
/// writes closed as the module header says.
fn window(ops: &[Encoded], until: u64, reads_from: u64, removed: &[bool]) -> Vec<Interval> {
    let mut intervals = Vec::new();
    let mut first_read: HashMap<u32, u64> = HashMap::new();
    for (at, op) in ops.iter().enumerate() {
        let (Action::Read(value), Some(end)) = (op.action, op.end) else {
            continue;
        };
        if removed[at] || end > until || end < reads_from {
            continue;
        }
        intervals.push(Interval {
            at,
            start: op.start,
            end,
            action: op.action,
        });
        let first = first_read.entry(value).or_insert(end);
        *first = (*first).min(end);
    }
    for (at, op) in ops.iter().enumerate() {
        let Action::Write(value) = op.action else {
            continue;
        };
        if removed[at] || op.start > until {
            continue;
        }
        let end = match op.end {
            Some(end) if end <= until => end,
            // Open in this window: closed at the first read of its value,
            // or left out when none saw it.
            _ => match first_read.get(&value) {
                Some(&read) => read.max(op.start),
                None => continue,
            },
        };
        intervals.push(Interval {
            at,
            start: op.start,
            end,
            action: op.action,
        });
    }
    intervals
}

/// True when the window has a linearization (todc-utils WGL).
fn linearizable(window: &[Interval]) -> bool {
    if window.is_empty() {
        // `History::from_actions` needs at least one action.
        return true;
    }
    // Calls before returns at the same instant: such operations count as
    // concurrent, which never invents an order the clients did not see.
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(window.len() * 2);
    for (process, op) in window.iter().enumerate() {
        events.push((op.start, 0, process));
        events.push((op.end, 1, process));
    }
    events.sort_unstable();
    let actions = events
        .into_iter()
        .map(|(_, kind, process)| {
            let operation = match window[process].action {
                Action::Write(value) => RegisterOperation::Write(value),
                Action::Read(value) => RegisterOperation::Read(Some(value)),
            };
            let event = if kind == 0 {
                Event::Call(operation)
            } else {
                Event::Response(operation)
            };
            (process, event)
        })
        .collect();
    Checker::is_linearizable(History::from_actions(actions))
}

/// The smallest index in `0..len` for which `fails` holds, given that it
/// holds at `len - 1` and, once it holds, holds for every larger index.
fn first_failing(len: usize, mut fails: impl FnMut(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fails(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// Checks one register session. `ops` are that session's operations.
pub fn check_session(session: &str, ops: &[&Op]) -> SessionCheck {
    let (encoded, malformed) = encode(session, ops);
    let none = vec![false; encoded.len()];
    let full = window(&encoded, u64::MAX, 0, &none);
    let unknown_sets_seen = full.iter().filter(|i| encoded[i.at].end.is_none()).count();
    let mut result = SessionCheck {
        ops_checked: full.len(),
        unknown_sets_seen,
        failure: None,
        malformed,
    };
    if linearizable(&full) {
        return result;
    }
    let narrowing = Narrowing {
        encoded: &encoded,
        none,
        checks: std::cell::Cell::new(0),
        started: std::time::Instant::now(),
    };
    let until = narrowing.shortest_prefix();
    let reads_from = narrowing.latest_reads_from(until);
    let (removed, truncated) = narrowing.shrink(until, reads_from);
    result.failure =
        Some(narrowing.violation(session, ops, until, &removed, truncated, result.ops_checked));
    result
}

/// The search for a small failing window of a session whose history is
/// not linearizable, in three steps; each check is counted.
struct Narrowing<'a> {
    encoded: &'a [Encoded],
    /// Nothing removed.
    none: Vec<bool>,
    checks: std::cell::Cell<usize>,
    started: std::time::Instant,
}

impl Narrowing<'_> {
    /// True when the window (see [`window`]) has no linearization.
    fn fails(&self, until: u64, reads_from: u64, removed: &[bool]) -> bool {
        self.checks.set(self.checks.get() + 1);
        !linearizable(&window(self.encoded, until, reads_from, removed))
    }

    /// Step 1, the shortest failing prefix: the end time it stops at.
    fn shortest_prefix(&self) -> u64 {
        let none = &self.none;
        let mut ends: Vec<u64> = self.encoded.iter().filter_map(|op| op.end).collect();
        ends.sort_unstable();
        ends.dedup();
        match ends.last() {
            Some(&last) if self.fails(last, 0, none) => {
                ends[first_failing(ends.len(), |k| self.fails(ends[k], 0, none))]
            }
            _ => u64::MAX,
        }
    }

    /// Step 2: the latest start of the reads that still fails.
    fn latest_reads_from(&self, until: u64) -> u64 {
        let mut read_ends: Vec<u64> = std::iter::once(0)
            .chain(
                self.encoded
                    .iter()
                    .filter_map(|op| match (op.action, op.end) {
                        (Action::Read(_), Some(end)) if end <= until => Some(end),
                        _ => None,
                    }),
            )
            .collect();
        read_ends.sort_unstable();
        read_ends.dedup();
        // Failing is monotone the other way here: find the first index that
        // passes, counting from the end.
        let n = read_ends.len();
        let from_end = first_failing(n, |k| self.fails(until, read_ends[n - 1 - k], &self.none));
        read_ends[n - 1 - from_end]
    }

    /// Step 3: drop blocks while it still fails; returns what is removed,
    /// and whether the budget stopped the narrowing.
    fn shrink(&self, until: u64, reads_from: u64) -> (Vec<bool>, bool) {
        let encoded = self.encoded;
        let kept = window(encoded, until, reads_from, &self.none);
        let mut removed = vec![true; encoded.len()];
        for interval in &kept {
            removed[interval.at] = false;
        }
        let mut candidates: Vec<usize> = kept.iter().map(|i| i.at).collect();
        candidates.sort_by_key(|&at| (encoded[at].start, at));
        let mut blocks = vec![candidates];
        let mut truncated = false;
        while let Some(block) = blocks.pop() {
            if self.checks.get() >= MAX_SHRINK_CHECKS || self.started.elapsed() >= MAX_SHRINK_TIME {
                truncated = true;
                break;
            }
            let mut trial = removed.clone();
            for &at in &block {
                trial[at] = true;
            }
            // A write some remaining read saw must stay (removing it would not
            // be sound).
            for &at in &block {
                if let Action::Write(value) = encoded[at].action {
                    let seen = encoded
                        .iter()
                        .enumerate()
                        .any(|(other, op)| !trial[other] && op.action == Action::Read(value));
                    if seen {
                        trial[at] = false;
                    }
                }
            }
            let changed = trial != removed;
            if changed && self.fails(until, 0, &trial) {
                removed = trial;
            } else if block.len() > 1 {
                let (left, right) = block.split_at(block.len() / 2);
                blocks.push(left.to_vec());
                blocks.push(right.to_vec());
            }
        }
        (removed, truncated)
    }

    /// The violation: the window left after narrowing, with the steps'
    /// findings.
    fn violation(
        &self,
        session: &str,
        ops: &[&Op],
        until: u64,
        removed: &[bool],
        truncated: bool,
        ops_checked: usize,
    ) -> RegisterViolation {
        let encoded = self.encoded;
        let prefix_ops = encoded.iter().filter(|op| op.start <= until).count();
        let mut window_ops: Vec<Op> = window(encoded, until, 0, removed)
            .iter()
            .map(|i| ops[encoded[i.at].index].clone())
            .collect();
        window_ops.sort_by_key(|op| (op.start_us, op.end_us));
        let first_ms = window_ops
            .first()
            .map_or(0.0, |op| op.start_us as f64 / 1e3);
        let until_text = if until == u64::MAX {
            "the end".to_string()
        } else {
            format!("{:.1} ms", until as f64 / 1e3)
        };
        RegisterViolation {
            rule: Rule::NotLinearizable,
            session: session.to_string(),
            detail: format!(
                "no linearization of its {} checked operations (todc-utils WGL). The shortest failing prefix ends at {until_text} ({prefix_ops} operations); the smallest failing window found has {} operations, from {first_ms:.1} ms to {until_text} ({} checks{}). Every operation left out is a read, or a write no remaining read saw, so this window alone is not linearizable:",
                ops_checked,
                window_ops.len(),
                self.checks.get(),
                if truncated { ", narrowing stopped at its budget" } else { "" }
            ),
            ops: window_ops,
        }
    }
}

/// Checks every register session in `ops` (other operations are skipped),
/// each on its own thread, waiting at most `timeout` for each.
pub fn check_registers(ops: &[Op], timeout: Duration) -> RegisterReport {
    let started = std::time::Instant::now();
    let mut report = RegisterReport::default();
    let mut by_session: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| op.kind.is_register()) {
        by_session.entry(op.session.as_str()).or_default().push(op);
        let stats = &mut report.stats;
        stats.ops += 1;
        match (&op.kind, &op.outcome) {
            (OpKind::Set(_), Outcome::Ok { .. }) => stats.sets_ok += 1,
            (OpKind::Set(_), Outcome::Failed(_)) => stats.sets_failed += 1,
            (OpKind::Set(_), Outcome::Unknown(_)) => stats.sets_unknown += 1,
            (OpKind::Get, Outcome::Ok { .. }) => stats.gets_ok += 1,
            (OpKind::TableRead, Outcome::Ok { .. }) => stats.table_reads_ok += 1,
            _ => stats.reads_not_ok += 1,
        }
    }
    report.stats.sessions = by_session.len();
    for (session, session_ops) in by_session {
        let owned: Vec<Op> = session_ops.into_iter().cloned().collect();
        let name = session.to_string();
        let (done, verdict) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name(format!("lincheck {session}"))
            .spawn(move || {
                let refs: Vec<&Op> = owned.iter().collect();
                let _ = done.send(check_session(&name, &refs));
            });
        let check = match spawned {
            Ok(_) => verdict.recv_timeout(timeout).ok(),
            Err(e) => {
                report.undecided.push(format!(
                    "register session {session}: cannot start a checker thread: {e}"
                ));
                continue;
            }
        };
        let Some(check) = check else {
            // The thread runs on until it finishes; the run fails anyway.
            report.stats.sessions_undecided += 1;
            report.undecided.push(format!(
                "register session {session}: the linearizability check did not finish within {timeout:?}"
            ));
            continue;
        };
        report.stats.ops_checked += check.ops_checked;
        report.stats.unknown_sets_seen += check.unknown_sets_seen;
        report.violations.extend(check.malformed);
        match check.failure {
            None => report.stats.sessions_linearizable += 1,
            Some(failure) => {
                report.stats.sessions_not_linearizable += 1;
                report.violations.push(failure);
            }
        }
    }
    report.stats.check_ms = started.elapsed().as_millis() as u64;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeId;

    const S: &str = "reg-0";

    fn op(kind: OpKind, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
        Op {
            client: 1,
            session: S.into(),
            node: 1,
            kind,
            start_us: start_ms * 1000,
            end_us: end_ms * 1000,
            outcome,
        }
    }

    fn ok(observed: Observed) -> Outcome {
        let owner: NodeId = 1;
        Outcome::Ok {
            owner,
            epoch: 1,
            observed,
        }
    }

    fn set(value: &str, start: u64, end: u64) -> Op {
        op(OpKind::Set(value.into()), start, end, ok(Observed::Written))
    }

    fn set_unknown(value: &str, start: u64, end: u64) -> Op {
        op(
            OpKind::Set(value.into()),
            start,
            end,
            Outcome::Unknown("503 outcome_unknown".into()),
        )
    }

    fn set_failed(value: &str, start: u64, end: u64) -> Op {
        op(
            OpKind::Set(value.into()),
            start,
            end,
            Outcome::Failed("503 unavailable".into()),
        )
    }

    fn get(value: Option<&str>, start: u64, end: u64) -> Op {
        op(
            OpKind::Get,
            start,
            end,
            ok(Observed::Value(value.map(str::to_string))),
        )
    }

    fn table(value: Option<&str>, start: u64, end: u64) -> Op {
        op(
            OpKind::TableRead,
            start,
            end,
            ok(Observed::Value(value.map(str::to_string))),
        )
    }

    fn verdict(ops: &[Op]) -> SessionCheck {
        let refs: Vec<&Op> = ops.iter().collect();
        check_session(S, &refs)
    }

    #[test]
    fn a_sequential_history_with_overlaps_is_linearizable() {
        let ops = vec![
            get(None, 0, 5),
            set("a", 10, 20),
            get(Some("a"), 21, 25),
            // Overlapping set and reads: either order is fine.
            set("b", 30, 50),
            get(Some("a"), 31, 35),
            table(Some("b"), 36, 40),
            get(Some("b"), 51, 55),
        ];
        let check = verdict(&ops);
        assert!(check.failure.is_none(), "{:?}", check.failure);
        assert_eq!(check.ops_checked, 7);
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not_linearizable() {
        // The issue's bug: a table read sees "b", a later get sees "a".
        let mut ops = vec![
            set("a", 0, 10),
            set("b", 20, 30),
            table(Some("b"), 40, 45),
            get(Some("a"), 50, 55),
        ];
        // Noise before and after, so the window has something to cut.
        for i in 0..20 {
            ops.push(get(Some("a"), 11 + i % 5, 12 + i % 5));
        }
        for i in 0..20 {
            let value = format!("z{i}");
            ops.push(set(&value, 100 + i * 10, 105 + i * 10));
            ops.push(get(Some(&value), 106 + i * 10, 108 + i * 10));
        }
        ops.sort_by_key(|op| op.start_us);
        let check = verdict(&ops);
        let failure = check.failure.expect("a violation");
        assert_eq!(failure.rule, Rule::NotLinearizable);
        // The window is small, ends at the stale get, and holds the writes
        // and reads that prove it.
        let kinds: Vec<&OpKind> = failure.ops.iter().map(|op| &op.kind).collect();
        assert!(failure.ops.len() <= 4, "{failure:?}");
        assert!(kinds.contains(&&OpKind::Set("b".into())), "{kinds:?}");
        assert!(failure
            .ops
            .iter()
            .any(|op| op.kind == OpKind::Get && op.start_us == 50_000));
        assert!(failure.ops.iter().all(|op| op.start_us < 100_000));
        assert!(failure.detail.contains("55.0 ms"), "{}", failure.detail);
    }

    #[test]
    fn unknown_writes_may_take_effect_late_or_never() {
        let ops = vec![
            set("a", 0, 10),
            // Timed out at 30 ms, seen at 40 ms: it took effect late.
            set_unknown("u", 15, 30),
            get(Some("a"), 31, 35),
            get(Some("u"), 40, 45),
            // Never took effect: nobody saw it.
            set_unknown("v", 50, 60),
            get(Some("u"), 70, 75),
        ];
        let check = verdict(&ops);
        assert!(check.failure.is_none(), "{:?}", check.failure);
        assert_eq!(check.unknown_sets_seen, 1);
        // "v" is left out: five operations checked.
        assert_eq!(check.ops_checked, 5);
    }

    #[test]
    fn an_unknown_write_cannot_be_seen_before_it_was_sent() {
        let ops = vec![get(Some("u"), 0, 5), set_unknown("u", 10, 20)];
        assert!(verdict(&ops).failure.is_some());
    }

    #[test]
    fn a_definitely_failed_write_that_is_seen_is_a_violation() {
        let ops = vec![set_failed("f", 0, 5), get(Some("f"), 10, 15)];
        assert!(verdict(&ops).failure.is_some());
        let ops = vec![set_failed("f", 0, 5), get(None, 10, 15)];
        assert!(verdict(&ops).failure.is_none());
    }

    #[test]
    fn a_value_nobody_wrote_is_a_violation() {
        assert!(verdict(&[get(Some("ghost"), 0, 5)]).failure.is_some());
    }

    #[test]
    fn malformed_replies_are_reported_and_left_out() {
        let ops = vec![
            op(
                OpKind::Get,
                0,
                5,
                ok(Observed::Malformed("{\"x\":1}".into())),
            ),
            get(None, 6, 7),
        ];
        let check = verdict(&ops);
        assert!(check.failure.is_none());
        assert_eq!(check.malformed.len(), 1);
        assert_eq!(check.ops_checked, 1);
    }

    #[test]
    fn check_registers_skips_appends_and_counts() {
        let mut ops = vec![
            set("a", 0, 10),
            get(Some("a"), 11, 12),
            set_unknown("u", 20, 30),
            op(
                OpKind::Get,
                31,
                32,
                Outcome::Unknown("client timeout".into()),
            ),
        ];
        let mut bad = vec![set("a", 0, 10), set("b", 11, 20), get(Some("a"), 21, 22)];
        for op in &mut bad {
            op.session = "reg-1".into();
        }
        ops.extend(bad);
        ops.push(Op {
            kind: OpKind::Append("x".into()),
            ..set("x", 0, 1)
        });
        let report = check_registers(&ops, Duration::from_secs(30));
        let s = &report.stats;
        assert_eq!(s.ops, 7);
        assert_eq!(s.sessions, 2);
        assert_eq!(
            (s.sets_ok, s.sets_unknown, s.gets_ok, s.reads_not_ok),
            (3, 1, 2, 1)
        );
        assert_eq!(s.ops_checked, 2 + 3);
        assert_eq!(
            (s.sessions_linearizable, s.sessions_not_linearizable),
            (1, 1)
        );
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].session, "reg-1");
        assert!(report.undecided.is_empty());
    }
}
