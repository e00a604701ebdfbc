//! The register workload: clients that `set` unique values on `kv` sessions
//! of their own (`{"op":"set","value":{"r":V}}` replaces the whole
//! document, so each session is a register) and read them back with `get`
//! calls and with the linearizable table read `GET /v1/sessions/{id}`,
//! through random nodes; each request is recorded in a [`history::Op`] like
//! the append workload's, and [`super::linearizability`] checks the result.
//!
//! Its sessions are used in generations: the first `per_generation`
//! sessions during the first `generation` of the run, the next ones during
//! the next, so each session's history stays small enough for the checker
//! (at most `max_ops_per_session`) while every fault of a long run meets
//! register traffic. Clients pace themselves so that a generation's budget
//! lasts the whole generation.
//!
//! Half of each generation's sessions are steady (45 % `set`s all the
//! time); the other half are bursty: `set`s only during a short window of
//! every cycle (staggered between sessions), reads only the rest of the
//! time. A crash while a write is in flight then leaves the session read
//! for the best part of a second with no write that would repair a stale
//! state, which is how a stale read after a leader crash shows (issue 10):
//! a steady session's next `set` is refused or repairs it within
//! milliseconds.
//!
//! [`history::Op`]: super::history::Op

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::history::{classify, classify_table_read, Op, OpKind, Outcome, REGISTER_KEY};
use super::rng::SplitMix64;
use super::workload::WriteTap;
use crate::client::Client;
use crate::model::NodeId;

/// Percentage of a steady session's operations that are `set`s.
const SET_PERCENT: u64 = 45;
/// Percentage of a bursty session's operations that are `set`s inside its
/// write window (outside it, none are).
const BURST_SET_PERCENT: u64 = 70;
/// A bursty session's cycle, and the part of it that takes writes.
const BURST_CYCLE_MS: u64 = 1000;
const BURST_WINDOW_MS: u64 = 200;
/// Percentage of the reads that are `get` calls (the rest are table reads).
const GET_PERCENT_OF_READS: u64 = 60;

/// Percentage of `set`s for session `index` of a generation of `sessions`
/// at `elapsed` since the run started: odd sessions are bursty, with write
/// windows staggered between them.
fn set_percent(index: usize, sessions: usize, elapsed: Duration) -> u64 {
    if index.is_multiple_of(2) {
        return SET_PERCENT;
    }
    let offset = index as u64 * BURST_CYCLE_MS / sessions.max(1) as u64;
    let phase = (elapsed.as_millis() as u64 + offset) % BURST_CYCLE_MS;
    if phase < BURST_WINDOW_MS {
        BURST_SET_PERCENT
    } else {
        0
    }
}

/// Shared settings of the register clients.
pub struct RegisterWorkload {
    /// Session ids, by generation.
    pub generations: Vec<Vec<String>>,
    /// How long each generation's sessions are in use.
    pub generation: Duration,
    /// Nodes and a client of each.
    pub nodes: Vec<(NodeId, Client)>,
    /// Start of the run: every timestamp is relative to it.
    pub t0: Instant,
    /// No request starts after this.
    pub deadline: Instant,
    /// Server-side call timeout; the client gives up one second later.
    pub request_timeout: Duration,
    /// Operations sent to one session at most.
    pub max_ops_per_session: u64,
    /// Requests per client at most.
    pub max_ops_per_client: usize,
    /// Smallest time between the starts of two operations of one client.
    pub pace: Duration,
    /// Operations sent so far, by generation and session.
    pub ops_sent: Vec<Vec<AtomicU64>>,
    /// Where writes and owners are published.
    pub tap: Arc<WriteTap>,
}

/// Ids of the register sessions: `{prefix}-reg-{generation}-{i}`.
pub fn session_ids(prefix: &str, generations: usize, per_generation: u32) -> Vec<Vec<String>> {
    (0..generations)
        .map(|g| {
            (0..per_generation)
                .map(|i| format!("{prefix}-reg-{g}-{i}"))
                .collect()
        })
        .collect()
}

/// Generations a run of `duration` needs (at least one).
pub fn generations_for(duration: Duration, generation: Duration) -> usize {
    let generation = generation.as_millis().max(1);
    duration.as_millis().div_ceil(generation).max(1) as usize
}

/// The pace that spreads a generation's budget over the generation.
pub fn pace_for(generation: Duration, clients: u32, per_generation: u32, max_ops: u64) -> Duration {
    let budget = u64::from(per_generation.max(1)) * max_ops.max(1);
    generation * clients.max(1) / budget.min(u64::from(u32::MAX)) as u32
}

impl RegisterWorkload {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_micros() as u64
    }

    fn generation_at(&self, at: Instant) -> usize {
        let elapsed = at.saturating_duration_since(self.t0).as_millis();
        let index = elapsed / self.generation.as_millis().max(1);
        (index as usize).min(self.generations.len().saturating_sub(1))
    }

    /// Sessions that were used.
    pub fn used_sessions(&self) -> Vec<String> {
        let mut used = Vec::new();
        for (sessions, sent) in self.generations.iter().zip(&self.ops_sent) {
            for (session, count) in sessions.iter().zip(sent) {
                if count.load(Ordering::Relaxed) > 0 {
                    used.push(session.clone());
                }
            }
        }
        used
    }
}

/// The message of a `set` of `value`.
pub fn set_message(value: &str) -> serde_json::Value {
    let mut document = serde_json::Map::new();
    document.insert(REGISTER_KEY.to_string(), json!(value));
    json!({"op": "set", "value": document})
}

/// Sends one register operation and records it.
async fn run_op(
    workload: &RegisterWorkload,
    id: u32,
    session: &str,
    node: NodeId,
    client: &Client,
    kind: OpKind,
) -> Op {
    let limit = workload.request_timeout + Duration::from_secs(1);
    let start = Instant::now();
    let outcome = match &kind {
        OpKind::TableRead => classify_table_read(
            tokio::time::timeout(limit, client.get_session(session))
                .await
                .ok(),
        ),
        _ => {
            let msg = match &kind {
                OpKind::Set(value) => set_message(value),
                _ => json!({"op": "get"}),
            };
            let answer = tokio::time::timeout(
                limit,
                client.call(session, &msg, Some(workload.request_timeout)),
            )
            .await
            .ok();
            classify(&kind, answer)
        }
    };
    let end = Instant::now();
    Op {
        client: id,
        session: session.to_string(),
        node,
        kind,
        start_us: workload.micros(start),
        end_us: workload.micros(end),
        outcome,
    }
}

/// One register client: paced requests until the deadline or its budget.
pub async fn client(workload: Arc<RegisterWorkload>, id: u32, seed: u64) -> Vec<Op> {
    let mut rng = SplitMix64::fork(seed, 5000 + u64::from(id));
    let mut ops = Vec::new();
    let mut sets = 0u64;
    if workload.generations.is_empty() || workload.nodes.is_empty() {
        return ops;
    }
    let mut next_start = Instant::now();
    while Instant::now() < workload.deadline && ops.len() < workload.max_ops_per_client {
        tokio::time::sleep_until(next_start.min(workload.deadline)).await;
        let now = Instant::now();
        if now >= workload.deadline {
            break;
        }
        next_start = now + workload.pace;
        let g = workload.generation_at(now);
        let sessions = &workload.generations[g];
        let first = rng.below(sessions.len() as u64) as usize;
        let pick = (0..sessions.len())
            .map(|k| (first + k) % sessions.len())
            .find(|&i| {
                workload.ops_sent[g][i].fetch_add(1, Ordering::Relaxed)
                    < workload.max_ops_per_session
            });
        let Some(index) = pick else {
            // This generation's budget is spent: wait for the next one.
            if g + 1 >= workload.generations.len() {
                break;
            }
            next_start = workload.t0 + workload.generation * (g as u32 + 1);
            continue;
        };
        let session = &sessions[index];
        let (node, client) = &workload.nodes[rng.below(workload.nodes.len() as u64) as usize];
        let elapsed = now.saturating_duration_since(workload.t0);
        let kind = if rng.percent(set_percent(index, sessions.len(), elapsed)) {
            sets += 1;
            OpKind::Set(format!("r{id}-{sets}"))
        } else if rng.percent(GET_PERCENT_OF_READS) {
            OpKind::Get
        } else {
            OpKind::TableRead
        };
        if let OpKind::Set(value) = &kind {
            workload
                .tap
                .sent(id, session, *node, format!("set {value}"), true);
        }
        let op = run_op(&workload, id, session, *node, client, kind).await;
        let failed = !op.is_ok();
        if let Outcome::Ok { owner, .. } = &op.outcome {
            if op.kind != OpKind::TableRead {
                workload.tap.owner_seen(session, *owner);
            }
        }
        ops.push(op);
        if failed {
            // Back off a little so a dead node does not turn into a hot loop.
            let pause = Duration::from_millis(rng.between(5, 30));
            next_start = next_start.max(Instant::now() + pause);
        }
    }
    ops
}

/// One table read of every used session once the cluster is healed (as
/// client `id`), retried through the nodes until one answers or `timeout`
/// passes; every attempt is recorded. The last read pins each session's
/// final value, so an acknowledged `set` that was lost shows even when no
/// client read the session again. Also returns the sessions that could not
/// be read.
pub async fn final_reads(
    workload: &RegisterWorkload,
    id: u32,
    timeout: Duration,
) -> (Vec<Op>, Vec<String>) {
    let mut ops = Vec::new();
    let mut unreadable = Vec::new();
    for session in workload.used_sessions() {
        let mut read = false;
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline and by the attempt count.
        for attempt in 0..10_000usize {
            let (node, client) = &workload.nodes[attempt % workload.nodes.len()];
            let op = run_op(workload, id, &session, *node, client, OpKind::TableRead).await;
            read = op.is_ok();
            ops.push(op);
            if read || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !read {
            unreadable.push(session);
        }
    }
    (ops, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_cover_the_run_and_the_pace_spreads_the_budget() {
        assert_eq!(
            generations_for(Duration::from_secs(40), Duration::from_secs(10)),
            4
        );
        assert_eq!(
            generations_for(Duration::from_secs(41), Duration::from_secs(10)),
            5
        );
        assert_eq!(
            generations_for(Duration::from_secs(1), Duration::from_secs(10)),
            1
        );
        let ids = session_ids("chaos-7", 2, 3);
        assert_eq!(ids[1][2], "chaos-7-reg-1-2");
        // 4 clients, 4 sessions of 800 operations over 10 s: one operation
        // per client every 12.5 ms.
        assert_eq!(
            pace_for(Duration::from_secs(10), 4, 4, 800),
            Duration::from_micros(12_500)
        );
    }

    #[test]
    fn bursty_sessions_take_writes_in_short_staggered_windows() {
        let at = |ms| Duration::from_millis(ms);
        // Even sessions are steady.
        assert_eq!(set_percent(0, 4, at(0)), SET_PERCENT);
        assert_eq!(set_percent(2, 4, at(700)), SET_PERCENT);
        // Session 1 of 4 is offset by 250 ms: its window is 750..950 ms.
        assert_eq!(set_percent(1, 4, at(100)), 0);
        assert_eq!(set_percent(1, 4, at(800)), BURST_SET_PERCENT);
        assert_eq!(set_percent(1, 4, at(1800)), BURST_SET_PERCENT);
        // Session 3 of 4 is offset by 750 ms: its window is 250..450 ms.
        assert_eq!(set_percent(3, 4, at(300)), BURST_SET_PERCENT);
        assert_eq!(set_percent(3, 4, at(800)), 0);
    }

    #[test]
    fn a_set_writes_the_whole_register_document() {
        assert_eq!(
            set_message("r1-2"),
            json!({"op": "set", "value": {"r": "r1-2"}})
        );
    }
}
