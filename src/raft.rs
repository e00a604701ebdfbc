//! openraft glue: the type configuration, the Raft config derived from
//! [`Timing`], and the write path.
//!
//! Every proposal goes through one bounded batcher per node: it packs the
//! commands waiting at that moment into one log entry (openraft 0.9 appends
//! and fsyncs each `client_write` separately). On the leader the batch is
//! written with a timeout; on a follower it is forwarded to the leader in one
//! request. Only the leader resolves placement for new sessions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::Timing;
use crate::model::{Applied, Command, CommandResult, NodeId, Proposal};
use crate::peer::Transport;
use crate::placement;
use crate::store::StateView;

mod batch;

use batch::Pending;

pub use crate::wire::TypeConfig;

/// The Raft handle type.
pub type MinosRaft = Raft<TypeConfig>;

/// A command's rough size in a log entry.
fn weight(command: &Command) -> usize {
    const BASE: usize = 96;
    match command {
        Command::CreateSession { state, .. } | Command::UpdateState { state, .. } => {
            BASE + state.len()
        }
        Command::CreateSessionPlaced {
            state, placement, ..
        } => BASE + state.len() + 64 * (placement.labels.len() + 1),
        Command::UpdateStateKeyed { state, call, .. } => BASE + state.len() + call.reply.len(),
        Command::Reassign { moves } | Command::Relocate { moves, .. } => BASE + 64 * moves.len(),
        Command::Handoff { moves, .. } => BASE + 72 * moves.len(),
        _ => BASE,
    }
}
/// Queue of proposals waiting for the batcher.
const QUEUE_DEPTH: usize = 8192;
/// Batches written concurrently by one leader.
const WRITES_IN_FLIGHT: usize = 4;

/// Longest a snapshot chunk RPC may take, in ms (see [`raft_config`]).
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 5_000;

/// openraft configuration for `timing`.
pub fn raft_config(timing: &Timing) -> Result<openraft::Config, String> {
    let config = openraft::Config {
        cluster_name: "minos".into(),
        heartbeat_interval: timing.heartbeat.as_millis() as u64,
        election_timeout_min: timing.election_timeout_min.as_millis() as u64,
        election_timeout_max: timing.election_timeout_max.as_millis() as u64,
        // Snapshots are triggered by `snapshot_policy` (see `snapshot_due`).
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 1000,
        purge_batch_size: 256,
        // A follower installs a snapshot (decode, swap, sled flush) inside
        // the final chunk's RPC. With openraft's 200 ms default, a busy
        // follower never finished one: each attempt timed out, was dropped
        // and started over, while the follower, hearing nothing else,
        // campaigned and deposed the leader (seen under two CPU hogs).
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        // Entries per AppendEntries: with entries of up to 256 KB, one
        // request stays small enough to be answered within a heartbeat.
        max_payload_entries: 16,
        ..Default::default()
    };
    config.validate().map_err(|e| e.to_string())
}

/// Log entries per session between two snapshots: see
/// [`snapshot_period`].
const ENTRIES_PER_SESSION_SNAPSHOTTED: u64 = 10;

/// Log entries between two of a node's snapshots: `every`, or one entry per
/// [`ENTRIES_PER_SESSION_SNAPSHOTTED`] sessions if that is more. A snapshot
/// encodes the whole table (off the write path, but on the same cores): at
/// a fixed interval its cost per entry grew with the table (a million
/// sessions take 2-3.5 s to encode, on every node, every 20,000 entries:
/// about a tenth of the CPU of a million-session load at 16 clients,
/// estimated). Spacing them by the table's size keeps the encoding work per
/// entry bounded (a tenth of a session's), at the price of a longer log to
/// replay after a restart (at most one entry per 10 sessions) and to keep
/// on disk until the next snapshot purges it.
fn snapshot_period(sessions: usize, every: u64) -> u64 {
    every.max(sessions as u64 / ENTRIES_PER_SESSION_SNAPSHOTTED)
}

/// Whether a node should snapshot at log index `index`, its last snapshot
/// at `last`, with `sessions` in the table. Each node snapshots where the
/// log crosses a grid of [`snapshot_period`] shifted by its `phase` (0, 1
/// or 2 thirds of a period; see [`snapshot_phase`]), never less than half a
/// period and never more than a period after its last: nodes in different
/// phases snapshot a third of a period apart instead of all at the same
/// index, so a quorum is never all encoding at once (seen on one machine:
/// three nodes writing 265 MB snapshots together for 10 s, heartbeats and
/// lease renewals timed out, nodes were declared Down under load).
pub(crate) fn snapshot_due(index: u64, last: u64, sessions: usize, every: u64, phase: u64) -> bool {
    let period = snapshot_period(sessions, every);
    let entries = index.saturating_sub(last);
    if entries < period / 2 {
        return false;
    }
    // A period or more since the last always crosses a line of the grid.
    let offset = period * phase / 3;
    (index + offset) / period > (last + offset) / period
}

/// The snapshot phase of node `id` (see [`snapshot_due`]).
pub(crate) fn snapshot_phase(id: NodeId) -> u64 {
    id % 3
}

/// Triggers this node's snapshots by [`snapshot_due`] as entries apply,
/// one at a time (it waits for one to be built before it looks again).
pub(crate) async fn snapshot_policy(
    raft: MinosRaft,
    view: StateView,
    every: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut applied = view.subscribe();
    let mut metrics = raft.metrics();
    let phase = snapshot_phase(metrics.borrow().id);
    loop {
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let index = *applied.borrow_and_update();
        let last = metrics.borrow().snapshot.map_or(0, |id| id.index);
        let sessions = view.read(|a| a.state.sessions.len());
        if !snapshot_due(index, last, sessions, every, phase) {
            continue;
        }
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        // Until it is built (or replaced by an installed one), or a minute.
        let until = Instant::now() + Duration::from_secs(60);
        while metrics
            .borrow_and_update()
            .snapshot
            .map_or(0, |id| id.index)
            <= last
        {
            tokio::select! {
                changed = tokio::time::timeout_at(until, metrics.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) { break }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Why a write did not go through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    /// No leader is known (election under way or no quorum); nothing was written.
    #[error("no leader: the cluster has no quorum or is electing one")]
    NoLeader,
    /// The write was not confirmed in time; it may or may not be committed.
    #[error("write not confirmed within {0} ms (no quorum?); its outcome is unknown")]
    Timeout(u64),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Another failure.
    #[error("{0}")]
    Failed(String),
}

/// Entry point of the write path; cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Proposes one command and waits for its outcome (commit and apply on
    /// the leader).
    pub async fn propose(&self, command: Command) -> Result<CommandResult, WriteError> {
        match self.propose_group(vec![command], false).await {
            Ok(mut results) => results.pop().ok_or(WriteError::ShuttingDown),
            Err(ForwardError::Write(e)) => Err(e),
            // Only a follower's batch is refused so.
            Err(ForwardError::NotLeader) => Err(WriteError::NoLeader),
        }
    }

    /// Handles a batch forwarded by a follower: written here, in one entry
    /// (with whatever else waits to be written), only while this node is
    /// the leader; never forwarded again.
    pub async fn accept_forwarded(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<CommandResult>, ForwardError> {
        self.propose_group(commands, true).await
    }

    async fn propose_group(&self, commands: Vec<Command>, forwarded: bool) -> batch::GroupAnswer {
        let (reply, answer) = oneshot::channel();
        let shutting_down = || ForwardError::Write(WriteError::ShuttingDown);
        self.queue
            .send(Pending {
                commands,
                forwarded,
                reply,
            })
            .await
            .map_err(|_| shutting_down())?;
        answer.await.map_err(|_| shutting_down())?
    }

    /// Proposes `commands` in order with at most `window` waiting at once,
    /// and stops at the first that did not go through: the answers of
    /// those proposed, in order (shorter than `commands` after a failure).
    /// A mass repair thus never queues seconds of moves ahead of other
    /// writes, and a lapse ends it early instead of timing out the rest.
    pub async fn propose_window(
        &self,
        commands: Vec<Command>,
        window: usize,
    ) -> Vec<Result<CommandResult, WriteError>> {
        use futures::StreamExt;
        let mut results = Vec::with_capacity(commands.len());
        let mut writes = futures::stream::iter(commands)
            .map(|command| self.propose(command))
            .buffered(window.max(1));
        while let Some(result) = writes.next().await {
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        results
    }

    /// Proposes several commands (they may land in one entry) and waits for all.
    pub async fn propose_all(
        &self,
        commands: Vec<Command>,
    ) -> Vec<Result<CommandResult, WriteError>> {
        let waits: Vec<_> = commands.into_iter().map(|c| self.propose(c)).collect();
        futures::future::join_all(waits).await
    }
}

/// Everything the batcher needs.
pub(crate) struct WritePath {
    pub me: NodeId,
    pub raft: MinosRaft,
    pub view: StateView,
    pub transport: Transport,
    pub timing: Timing,
    /// Placement events kept per session, written into every entry.
    pub history_keep: u32,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl WritePath {
    /// Starts the batcher task; returns the proposer and the task.
    pub fn start(self: Arc<Self>) -> (Proposer, tokio::task::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(self.run(receiver));
        (Proposer { queue }, task)
    }

    async fn write_now(&self, commands: Vec<Command>) -> Result<Vec<CommandResult>, WriteError> {
        let deadline = Instant::now() + self.timing.write_timeout;
        let count = commands.len();
        loop {
            let leader = self.await_leader(deadline).await?;
            let result = if leader == self.me {
                self.write_as_leader(commands.clone(), deadline).await
            } else {
                self.forward(leader, commands.clone(), deadline).await
            };
            match result {
                // Leadership moved before the entry was appended: try the new leader.
                Err(Retry::NotLeader) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Err(Retry::NotLeader) => return Err(WriteError::NoLeader),
                Err(Retry::Failed(e)) => return Err(e),
                Ok(results) => {
                    debug_assert_eq!(results.len(), count);
                    return Ok(results);
                }
            }
        }
    }

    async fn await_leader(&self, deadline: Instant) -> Result<NodeId, WriteError> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Ok(leader);
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(WriteError::ShuttingDown),
                Err(_) => return Err(WriteError::NoLeader),
            }
        }
    }

    async fn write_as_leader(
        &self,
        mut commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResult>, Retry> {
        // The leader places new sessions; the log records its explicit
        // choice. One plan for the batch: the capacity and spread counts
        // include the sessions placed before in it.
        self.view.read(|applied| {
            let state = &applied.state;
            let mut planner = placement::Planner::new(state, placement::up_nodes(&state.nodes));
            let unconstrained = crate::model::Requirement::default();
            for command in &mut commands {
                let (id, kind, owner, need) = match command {
                    Command::CreateSession {
                        id, kind, owner, ..
                    } => (&*id, kind.clone(), owner, &unconstrained),
                    Command::CreateSessionPlaced {
                        id,
                        kind,
                        owner,
                        placement,
                        ..
                    } => (&*id, kind.clone(), owner, &*placement),
                    _ => continue,
                };
                if owner.is_none() {
                    *owner = planner.choose(id, &kind, need, None).ok();
                    planner.count(*owner, &kind);
                }
            }
        });
        let span = tracing::debug_span!("raft_write", node = self.me, commands = commands.len());
        let reasons: Vec<_> = commands.iter().map(crate::metrics::move_reason).collect();
        let proposal = Proposal::V2 {
            at: Utc::now(),
            commands,
            history_keep: self.history_keep,
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let started = Instant::now();
        let written = tokio::time::timeout_at(deadline, self.raft.client_write(proposal))
            .instrument(span)
            .await;
        match written {
            Err(_) => Err(Retry::Failed(
                WriteError::Timeout(budget.as_millis() as u64),
            )),
            Ok(Ok(response)) => {
                self.metrics.commit.observe(started.elapsed().as_secs_f64());
                for (reason, result) in reasons.into_iter().zip(&response.data) {
                    match (reason, result) {
                        (Some(reason), Ok(Applied::Moved(moved))) => {
                            self.metrics.moved(reason, moved.len())
                        }
                        (_, Err(rejection)) => self
                            .metrics
                            .rejected(crate::metrics::rejection_reason(rejection)),
                        _ => {}
                    }
                }
                Ok(response.data)
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(Retry::NotLeader)
            }
            Ok(Err(e)) => Err(Retry::Failed(WriteError::Failed(e.to_string()))),
        }
    }

    async fn forward(
        &self,
        leader: NodeId,
        commands: Vec<Command>,
        deadline: Instant,
    ) -> Result<Vec<CommandResult>, Retry> {
        let Some(addr) = self.node_addr(leader) else {
            return Err(Retry::NotLeader);
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        let answer: Result<Result<Vec<CommandResult>, ForwardError>, _> = self
            .transport
            .propose(leader, &addr, &commands, budget)
            .await;
        match answer {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(ForwardError::NotLeader)) => Err(Retry::NotLeader),
            Ok(Err(ForwardError::Write(e))) => Err(Retry::Failed(e)),
            // Not delivered: safe to try again once the leader is known.
            Err(e) if e.not_delivered() => {
                if Instant::now() + Duration::from_millis(20) < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(Retry::NotLeader)
                } else {
                    Err(Retry::Failed(WriteError::NoLeader))
                }
            }
            Err(e) => Err(Retry::Failed(if Instant::now() >= deadline {
                WriteError::Timeout(budget.as_millis() as u64)
            } else {
                WriteError::Failed(e.to_string())
            })),
        }
    }

    fn node_addr(&self, node: NodeId) -> Option<String> {
        node_addr(&self.raft, node)
    }
}

enum Retry {
    NotLeader,
    Failed(WriteError),
}

/// Answer of the leader to a forwarded batch.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader (any more).
    NotLeader,
    /// The write failed.
    Write(WriteError),
}

/// Address of a member (voter or learner), from the Raft membership (which
/// also knows nodes not yet in the table).
pub fn node_addr(raft: &MinosRaft, node: NodeId) -> Option<String> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.membership_config
        .membership()
        .get_node(&node)
        .map(|n| n.addr.clone())
}

/// Every member (voters and learners); `None` while this node knows no
/// membership at all (a node that is joining).
pub fn members(raft: &MinosRaft) -> Option<BTreeSet<NodeId>> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    membership.voter_ids().next()?;
    Some(membership.nodes().map(|(id, _)| *id).collect())
}

/// The current leader, if known.
pub fn leader(raft: &MinosRaft) -> Option<NodeId> {
    raft.metrics().borrow().current_leader
}

/// The voters of the current membership.
pub fn voters(raft: &MinosRaft) -> BTreeSet<NodeId> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Applied;

    /// A batcher stand-in answering commands as `answer` says, and the
    /// most proposals it ever held unanswered at once.
    fn proposer_answering(
        answer: impl Fn(&Command) -> Result<CommandResult, WriteError> + Send + Sync + 'static,
    ) -> (Proposer, tokio::task::JoinHandle<usize>) {
        let (queue, mut receiver) = mpsc::channel::<Pending>(QUEUE_DEPTH);
        let task = tokio::spawn(async move {
            let mut most = 0;
            let mut held = Vec::new();
            loop {
                // Take all that is waiting, then answer them all.
                match receiver.recv().await {
                    Some(first) => held.push(first),
                    None => return most,
                }
                tokio::task::yield_now().await;
                while let Ok(next) = receiver.try_recv() {
                    held.push(next);
                }
                most = most.max(held.len());
                for pending in held.drain(..) {
                    let answers: Result<Vec<_>, _> = pending.commands.iter().map(&answer).collect();
                    let _ = pending.reply.send(answers.map_err(ForwardError::Write));
                }
            }
        });
        (Proposer { queue }, task)
    }

    fn drains(n: u64) -> Vec<Command> {
        (1..=n).map(|id| Command::Drain { id }).collect()
    }

    #[test]
    fn snapshots_are_spaced_by_the_table_size_above_the_configured_interval() {
        // Small tables: every `every` entries, as configured (phase 0).
        assert!(!snapshot_due(19_999, 0, 0, 20_000, 0));
        assert!(snapshot_due(20_000, 0, 0, 20_000, 0));
        assert!(snapshot_due(20_000, 0, 199_999, 20_000, 0));
        // A million sessions: one entry per 10 sessions.
        assert!(!snapshot_due(99_999, 0, 1_000_000, 20_000, 0));
        assert!(snapshot_due(100_000, 0, 1_000_000, 20_000, 0));
        // A small interval stays small on a small table.
        assert!(snapshot_due(5, 0, 40, 5, 0));
    }

    /// The indexes at which a node of `phase` snapshots over `entries`
    /// entries of a table of constant size (period `period`).
    fn snapshot_points(phase: u64, period: u64, entries: u64) -> Vec<u64> {
        let mut last = 0;
        let mut points = Vec::new();
        for index in 1..=entries {
            if snapshot_due(index, last, 0, period, phase) {
                points.push(index);
                last = index;
            }
        }
        points
    }

    #[test]
    fn nodes_in_different_phases_snapshot_a_third_of_a_period_apart() {
        let period = 30_000;
        let points: Vec<Vec<u64>> = (0..3)
            .map(|phase| snapshot_points(phase, period, 20 * period))
            .collect();
        for (phase, points) in points.iter().enumerate() {
            // Between half a period and a period apart, from the start on.
            let mut last = 0;
            for point in points {
                let gap = point - last;
                assert!(
                    (period / 2..=period).contains(&gap),
                    "phase {phase}: a gap of {gap}"
                );
                last = *point;
            }
            assert!(points.len() >= 19, "phase {phase}: {points:?}");
        }
        // After the first round, any two snapshots of different nodes are
        // at least a quarter of a period apart.
        for a in 0..3 {
            for b in (a + 1)..3 {
                for x in points[a].iter().filter(|x| **x > period) {
                    for y in points[b].iter().filter(|y| **y > period) {
                        assert!(x.abs_diff(*y) >= period / 4, "{a} at {x}, {b} at {y}");
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_window_keeps_at_most_its_width_waiting_and_stops_at_the_first_failure() {
        let (proposer, batcher) = proposer_answering(|command| match command {
            Command::Drain { id: 13 } => Err(WriteError::Timeout(1500)),
            _ => Ok(Ok(Applied::Done)),
        });
        let results = proposer.propose_window(drains(40), 4).await;
        assert_eq!(results.len(), 13, "answers up to and with the failed one");
        assert!(results[..12].iter().all(|r| r.is_ok()));
        assert_eq!(results[12], Err(WriteError::Timeout(1500)));
        let all = proposer.propose_window(drains(12), 4).await;
        assert_eq!(all.len(), 12);
        assert!(all.iter().all(|r| r.is_ok()));
        drop(proposer);
        let most = batcher.await.unwrap();
        assert!((1..=4).contains(&most), "{most} proposals waited at once");
    }
}
