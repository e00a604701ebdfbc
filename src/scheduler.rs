//! The leader's scheduler: failure detection and reassignment, plus the
//! handoffs (drain, graceful stop, rebalance).
//!
//! Runs only on the leader: started when this node becomes leader, stopped
//! when it loses leadership. Every command it proposes is conditional
//! (`Move::from_epoch`), so a stale plan or a retried proposal is harmless.
//! Only the scheduler proposes `NodeDown`, `NodeUp` and `Reassign`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::Timing;
use crate::lease::Liveness;
use crate::peer::{HandoffReport, LeaderError, ReleaseRequest, Transport};
use crate::raft::{MinosRaft, Proposer};
use crate::runtime::Runtime;
use crate::store::StateView;

/// What the leader's loops and handoffs need from their node.
#[derive(Clone)]
pub(crate) struct SchedulerEnv {
    pub me: NodeId,
    pub raft: MinosRaft,
    pub view: StateView,
    pub proposer: Proposer,
    pub transport: Transport,
    pub timing: Timing,
    pub liveness: Liveness,
    pub runtime: Arc<Runtime>,
}

use crate::model::{Command, Move, MoveReason, NodeId, NodeStatus, SessionId};
use crate::{control, placement};

/// How often the detector looks at the liveness record.
const TICK: Duration = Duration::from_millis(10);

/// Starts and stops the scheduler as leadership comes and goes.
pub async fn supervise(env: Arc<SchedulerEnv>, mut shutdown: watch::Receiver<bool>) {
    let mut server = env.raft.server_metrics();
    let mut running: Option<(u64, tokio::task::JoinHandle<()>)> = None;
    loop {
        let (state, term) = {
            let m = server.borrow_and_update();
            (m.state, m.vote.leader_id().term)
        };
        let leading = state == ServerState::Leader;
        match (&running, leading) {
            (Some((running_term, _)), true) if *running_term == term => {}
            (_, true) => {
                if let Some((_, task)) = running.take() {
                    task.abort();
                }
                info!(node = env.me, term, "leader: starting the scheduler");
                let nodes: Vec<NodeId> = env.view.read(|a| a.state.nodes.keys().copied().collect());
                env.liveness.start_term(term, nodes.into_iter());
                running = Some((term, tokio::spawn(run(env.clone(), term))));
            }
            (Some(_), false) => {
                if let Some((_, task)) = running.take() {
                    info!(node = env.me, "no longer leader: scheduler stopped");
                    task.abort();
                }
            }
            (None, false) => {}
        }
        tokio::select! {
            changed = server.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    if let Some((_, task)) = running {
        task.abort();
    }
}

async fn run(env: Arc<SchedulerEnv>, term: u64) {
    let (dead_tx, mut dead_rx) = mpsc::channel::<NodeId>(64);
    // Aborted when this task ends or is aborted (leadership lost).
    let mut watchers: BTreeMap<NodeId, AbortOnDrop> = BTreeMap::new();
    let mut repaired_at: Option<u64> = None;
    let mut failures = FailureLog::default();
    // A new leader looks once whether the cluster is even; so does every
    // node coming back Up (see `AutoRebalance`).
    let mut auto = AutoRebalance::new(env.timing.rebalance_after, Instant::now());
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(node) = dead_rx.recv() => {
                // Its watcher says so every few ms while it stays gone.
                if env.liveness.mark_dead(node) {
                    info!(node, "process of node is gone (connection closed, then refused)");
                }
            }
        }
        if env.raft.metrics().borrow().current_term != term {
            break;
        }
        keep_watchers(&env, &mut watchers, &dead_tx);

        auto.poll(&env, Instant::now());
        let index = env.view.applied_index();
        let (commands, nodes_changed) = plan(&env, repaired_at != Some(index));
        if commands.is_empty() {
            repaired_at = Some(index);
            continue;
        }
        write_plan(&env, commands, nodes_changed, &mut failures, &mut auto).await;
    }
}

/// Keeps one presence watcher per other member.
fn keep_watchers(
    env: &Arc<SchedulerEnv>,
    watchers: &mut BTreeMap<NodeId, AbortOnDrop>,
    dead_tx: &mpsc::Sender<NodeId>,
) {
    let members: Vec<(NodeId, String)> = env.view.read(|a| {
        a.state
            .nodes
            .values()
            .filter(|n| n.id != env.me)
            .map(|n| (n.id, n.addr.clone()))
            .collect()
    });
    watchers.retain(|id, _| members.iter().any(|(m, _)| m == id));
    for (id, addr) in &members {
        watchers.entry(*id).or_insert_with(|| {
            AbortOnDrop(tokio::spawn(watch_presence(
                env.clone(),
                *id,
                addr.clone(),
                dead_tx.clone(),
            )))
        });
    }
}

/// Commands of a plan waiting to be written at once: enough to keep the
/// batcher's entries in flight full (each holds two full `Relocate`s),
/// few enough that a mass repair (a third of a million sessions is 167
/// commands) never queues seconds of moves ahead of the cluster's other
/// writes, and that a lapse ends it early instead of timing out the rest.
const PLAN_WINDOW: usize = 8;

/// Writes the scheduler's commands in order, [`PLAN_WINDOW`] at a time,
/// up to the first that fails (the next tick plans again from the table):
/// a NodeUp not written is asked again, one written arms the automatic
/// rebalance; failures are logged once and then counted, and "committed"
/// is logged only when all went through.
async fn write_plan(
    env: &SchedulerEnv,
    commands: Vec<Command>,
    nodes_changed: bool,
    failures: &mut FailureLog,
    auto: &mut AutoRebalance,
) {
    let started = Instant::now();
    let summary: Vec<String> = commands.iter().map(summarize).collect();
    let results = env
        .proposer
        .propose_window(commands.clone(), PLAN_WINDOW)
        .await;
    let mut all_written = results.len() == commands.len();
    for (i, (command, text)) in commands.iter().zip(&summary).enumerate() {
        match results.get(i) {
            Some(Ok(_)) => {
                if let Command::NodeUp { .. } = command {
                    auto.node_up(Instant::now());
                }
            }
            failed => {
                all_written = false;
                if let Some(Err(e)) = failed {
                    failures.report(text, e);
                }
                // Not written, or not proposed after an earlier failure.
                if let Command::NodeUp { id } = command {
                    env.liveness.retry_up(*id);
                }
            }
        }
    }
    if all_written {
        failures.recovered();
    }
    if nodes_changed && all_written {
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            commands = ?summary,
            "scheduler committed"
        );
    }
}

/// The leader's rebalance policy: `after` a node came back Up (or this
/// leader took office), if no node is Down, move sessions back to their
/// placement choice, in a task of its own so failure detection goes on.
/// Sessions placed elsewhere while a node was briefly not eligible thus
/// return to it; a failure in between postpones it to the next NodeUp.
struct AutoRebalance {
    after: Duration,
    due: Option<Instant>,
    task: Option<AbortOnDrop>,
}

impl AutoRebalance {
    fn new(after: Duration, now: Instant) -> Self {
        Self {
            after,
            due: (!after.is_zero()).then(|| now + after),
            task: None,
        }
    }

    fn node_up(&mut self, now: Instant) {
        if !self.after.is_zero() {
            self.due = Some(now + self.after);
        }
    }

    fn poll(&mut self, env: &Arc<SchedulerEnv>, now: Instant) {
        if self.due.is_none_or(|due| now < due) {
            return;
        }
        self.due = None;
        if self.task.as_ref().is_some_and(|t| !t.0.is_finished()) {
            // One at a time: look again after this one.
            self.due = Some(now + self.after);
            return;
        }
        let any_down = env
            .view
            .read(|a| a.state.nodes.values().any(|n| n.status == NodeStatus::Down));
        if any_down {
            return;
        }
        let env = env.clone();
        self.task = Some(AbortOnDrop(tokio::spawn(async move {
            let per_sec = env.timing.rebalance_moves_per_sec;
            match rebalance_bounded(&env, Some(per_sec)).await {
                Ok(report) if report.moved + report.skipped > 0 => info!(
                    moved = report.moved,
                    skipped = report.skipped,
                    "automatic rebalance"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "automatic rebalance failed"),
            }
        })));
    }
}

/// A command as one short log item: a Reassign is named by its size, not
/// listed move by move (a mass failover moves many thousands).
fn summarize(command: &Command) -> String {
    match command {
        Command::Reassign { moves } => format!("Reassign({} moves)", moves.len()),
        Command::Relocate { moves, reason, .. } => {
            format!("Relocate({} moves, {reason:?})", moves.len())
        }
        Command::Handoff { moves, reason } => {
            format!("Handoff({} moves, {reason:?})", moves.len())
        }
        other => format!("{other:?}"),
    }
}

/// Failed scheduler writes, logged once per kind of failure and then as a
/// count every few seconds while they go on, instead of once per attempt
/// (the scheduler retries every tick while a node is down).
#[derive(Default)]
struct FailureLog {
    last: Option<String>,
    repeats: u64,
    summary_at: Option<Instant>,
}

/// How often a failure that goes on is summarised in the log.
const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(5);

impl FailureLog {
    fn report(&mut self, command: &str, error: &crate::raft::WriteError) {
        let text = format!("{command}: {error}");
        let now = Instant::now();
        if self.last.as_deref() != Some(text.as_str()) {
            warn!(command, error = %error, "scheduler command not written");
            self.last = Some(text);
            self.repeats = 0;
            self.summary_at = Some(now + FAILURE_SUMMARY_EVERY);
            return;
        }
        self.repeats += 1;
        if self.summary_at.is_some_and(|at| now >= at) {
            warn!(
                command,
                error = %error,
                repeats = self.repeats,
                "scheduler command still not written"
            );
            self.repeats = 0;
            self.summary_at = Some(now + FAILURE_SUMMARY_EVERY);
        }
    }

    fn recovered(&mut self) {
        if self.last.take().is_some() {
            info!(
                repeats = self.repeats,
                "scheduler commands are written again"
            );
        }
        self.repeats = 0;
    }
}

/// A write of the leader that did not go through.
fn failed(e: impl std::fmt::Display) -> LeaderError {
    LeaderError::Failed(e.to_string())
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Decides what to propose: the table's membership first, then Down/Up
/// verdicts and the moves that follow (the decisions are `control`'s).
fn plan(env: &SchedulerEnv, state_changed: bool) -> (Vec<Command>, bool) {
    let candidates: Vec<NodeId> = env.view.read(|a| {
        a.state
            .nodes
            .values()
            .filter(|n| n.id != env.me && n.status != NodeStatus::Down)
            .map(|n| n.id)
            .collect()
    });
    let (down, up) = env.liveness.verdicts(env.timing.node_timeout, &candidates);
    let members: BTreeMap<NodeId, String> = {
        let metrics = env.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, node)| (*id, node.addr.clone()))
            .collect()
    };
    let membership = env
        .view
        .read(|a| control::membership_changes(&a.state, &members));
    if !membership.is_empty() {
        for id in up {
            env.liveness.retry_up(id);
        }
        return (membership, true);
    }
    if down.is_empty() && up.is_empty() && !state_changed {
        return (Vec::new(), false);
    }
    let verdicts = || {
        env.view
            .read(|a| control::verdict_commands(&a.state, &down, &up))
    };
    if down.is_empty() && up.is_empty() {
        verdicts()
    } else {
        // A node Down: the plan moves every session it owned.
        crate::sync::heavy(verdicts)
    }
}

/// Holds a long-lived request open to `node` until it ends, then tells a
/// dead process (a fresh connection is refused) from anything else (slow,
/// cut off, restarting: leases handle those). True when the process is gone.
async fn presence_lost(env: &SchedulerEnv, node: NodeId, addr: &str) -> bool {
    if env.transport.faults.is_blocked(node) {
        return false;
    }
    if let Ok(mut response) = env.transport.presence(addr).await {
        while let Ok(Some(_)) = response.chunk().await {
            if env.transport.faults.is_blocked(node) {
                return false;
            }
        }
    }
    // The kernel of a dying process may close its connections a moment
    // before its listening socket: probe a few times, 1 ms apart, before
    // taking a successful connect as "alive".
    for _ in 0..20 {
        let probe = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        match probe {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return !env.transport.faults.is_blocked(node);
            }
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
            _ => return false,
        }
    }
    false
}

/// Leader side: reports `node` dead whenever its process is gone.
async fn watch_presence(
    env: Arc<SchedulerEnv>,
    node: NodeId,
    addr: String,
    dead: mpsc::Sender<NodeId>,
) {
    loop {
        if presence_lost(&env, node, &addr).await {
            let _ = dead.send(node).await;
        }
        // Pace reconnects to a node that is down or restarting.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every node: watches the leader's process, and when it is gone starts an
/// election at once instead of waiting for openraft's election timeout.
///
/// openraft refuses votes while a follower's leader lease runs
/// (`election_timeout_max` after the last heartbeat), but only while that
/// follower's vote is committed. So every survivor but one first becomes a
/// candidate (which un-commits its vote; its own bid fails), and the
/// designated survivor (lowest id) then bids twice, reaching a term above
/// theirs, and wins at once. If anything goes differently, openraft's own
/// timers still elect a leader. Safe because minos never serves reads from a
/// leader lease (reads use `ensure_linearizable`).
pub async fn watch_leader(env: Arc<SchedulerEnv>, mut shutdown: watch::Receiver<bool>) {
    let mut metrics = env.raft.metrics();
    // The dead leader this node already acted on: act once per death, or a
    // second bid would tie with the designated survivor's.
    let mut handled: Option<NodeId> = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        if leader != handled {
            handled = None;
        }
        let target = leader
            .filter(|l| *l != env.me && handled != Some(*l))
            .and_then(|l| crate::raft::node_addr(&env.raft, l).map(|addr| (l, addr)));
        if let Some((leader, addr)) = target {
            let lost = tokio::select! {
                lost = presence_lost(&env, leader, &addr) => lost,
                _ = shutdown.changed() => return,
            };
            if lost && crate::raft::leader(&env.raft) == Some(leader) {
                info!(
                    node = env.me,
                    leader, "leader process is gone: electing now"
                );
                handled = Some(leader);
                early_election(&env, leader).await;
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn early_election(env: &SchedulerEnv, dead_leader: NodeId) {
    let survivors: Vec<NodeId> = crate::raft::voters(&env.raft)
        .into_iter()
        .filter(|v| *v != dead_leader)
        .collect();
    if !survivors.contains(&env.me) {
        return;
    }
    let designated = survivors.iter().copied().min();
    if designated != Some(env.me) {
        let _ = env.raft.trigger().elect().await;
        return;
    }
    // Give the others a moment to become candidates, then outbid them; bid
    // again (bounded) while no leader has emerged.
    tokio::time::sleep(Duration::from_millis(15)).await;
    for _ in 0..3 {
        let leader = crate::raft::leader(&env.raft);
        if leader.is_some() && leader != Some(dead_leader) {
            return;
        }
        let _ = env.raft.trigger().elect().await;
        let _ = env.raft.trigger().elect().await;
        let mut metrics = env.raft.metrics();
        let elected = tokio::time::timeout(
            Duration::from_millis(40),
            metrics.wait_for(|m| m.current_leader.is_some_and(|l| l != dead_leader)),
        )
        .await;
        if matches!(elected, Ok(Ok(_))) {
            return;
        }
    }
}

async fn release_on(env: &SchedulerEnv, node: NodeId, sessions: Option<Vec<SessionId>>) -> bool {
    if node == env.me {
        // The leader draining itself: held like any node's release, not
        // stopped for good (an undrain must bring its sessions back).
        match sessions {
            Some(ids) => env.runtime.release(Some(&ids)).await,
            None => env.runtime.release_owned().await,
        }
        return true;
    }
    let Some(addr) = crate::raft::node_addr(&env.raft, node) else {
        return false;
    };
    let request = ReleaseRequest {
        from: env.me,
        term: env.raft.metrics().borrow().current_term,
        sessions,
    };
    env.transport
        .release(node, &addr, &request, env.timing.write_timeout)
        .await
        .is_ok_and(|answer| answer.is_ok())
}

/// Leader: drains `node` (marks it Draining, has it stop its sessions, then
/// commits their moves at once). If the node cannot be reached it stays
/// Draining and failure detection moves its sessions if it is dead. When the
/// node itself asks (graceful stop), it has stopped its sessions already, so
/// `Drain` and the moves go in one entry (`stopping`: its process's
/// instance, recorded so that a restarted process is made Up again even
/// when this entry lands after its first lease request).
pub async fn drain(
    env: &SchedulerEnv,
    node: NodeId,
    stopping: Option<u64>,
) -> Result<HandoffReport, LeaderError> {
    let known = env.view.read(|a| a.state.nodes.contains_key(&node));
    if !known {
        return Err(LeaderError::NotAMember(node));
    }
    env.liveness.drained(node, stopping);
    let already_released = stopping.is_some();
    if already_released || node == env.me {
        if node == env.me {
            env.runtime.release_owned().await;
        }
        let (count, moves) = env.view.read(|a| {
            let moves = placement::evacuate(&a.state, node);
            let count = moves.len();
            if already_released {
                // A stopping node runs none of them again: no hold to outlast.
                (
                    count,
                    control::relocations(moves, MoveReason::GracefulStop, None),
                )
            } else {
                (count, control::handoffs(&a.state, moves, MoveReason::Drain))
            }
        });
        let mut commands = vec![Command::Drain { id: node }];
        commands.extend(moves);
        let results = env.proposer.propose_all(commands).await;
        for result in results {
            result.map_err(failed)?.map_err(failed)?;
        }
        return Ok(HandoffReport {
            moved: count,
            skipped: 0,
        });
    }
    env.proposer
        .propose(Command::Drain { id: node })
        .await
        .map_err(failed)?
        .map_err(failed)?;
    if !release_on(env, node, None).await {
        let owned = env.view.read(|a| a.state.count_of(Some(node)));
        return Ok(HandoffReport {
            moved: 0,
            skipped: owned,
        });
    }
    let moves = env.view.read(|a| placement::evacuate(&a.state, node));
    commit_moves(env, Some(node), moves, MoveReason::Drain).await
}

/// Leader: moves every session to its placement choice among the eligible
/// nodes, with the same handoff as drain (by hand: not rate-bounded).
pub async fn rebalance(env: &SchedulerEnv) -> Result<HandoffReport, LeaderError> {
    rebalance_bounded(env, None).await
}

/// [`rebalance`] making at most `per_sec` moves a second when given (the
/// automatic one): chunks of at most `per_sec` moves, each chunk followed
/// by a pause until its share of the second has passed. A move whose
/// target is no longer Up when its chunk comes is dropped.
async fn rebalance_bounded(
    env: &SchedulerEnv,
    per_sec: Option<u32>,
) -> Result<HandoffReport, LeaderError> {
    let chunk_len = per_sec.map_or(REBALANCE_CHUNK, |k| (k as usize).clamp(1, REBALANCE_CHUNK));
    let moves = env.view.read(|a| {
        placement::rebalance(&a.state)
            .into_iter()
            .map(|m| (a.state.sessions[&m.id].owner, m))
            .collect::<Vec<_>>()
    });
    let mut by_owner: BTreeMap<Option<NodeId>, Vec<Move>> = BTreeMap::new();
    for (owner, step) in moves {
        by_owner.entry(owner).or_default().push(step);
    }
    let mut report = HandoffReport::default();
    for (owner, steps) in by_owner {
        // In chunks: each release request stays small (peer requests are
        // bounded) and each session is held back only until its own chunk
        // is committed.
        for chunk in steps.chunks(chunk_len) {
            let started = Instant::now();
            let chunk = env.view.read(|a| {
                let up = |node: &NodeId| {
                    a.state
                        .nodes
                        .get(node)
                        .is_some_and(|n| n.status == NodeStatus::Up)
                };
                let fresh = |m: &&Move| m.to.as_ref().is_none_or(up);
                chunk.iter().filter(fresh).cloned().collect::<Vec<_>>()
            });
            let released = match owner {
                None => true,
                Some(node) => {
                    let ids = chunk.iter().map(|m| m.id.clone()).collect();
                    release_on(env, node, Some(ids)).await
                }
            };
            let count = chunk.len();
            if released {
                let done = commit_moves(env, owner, chunk, MoveReason::Rebalance).await?;
                report.moved += done.moved;
                report.skipped += done.skipped;
            } else {
                report.skipped += count;
            }
            if let Some(per_sec) = per_sec {
                let share = Duration::from_secs_f64(count as f64 / f64::from(per_sec.max(1)));
                tokio::time::sleep_until(started + share).await;
            }
        }
    }
    Ok(report)
}

/// Sessions released and moved together by a rebalance.
const REBALANCE_CHUNK: usize = 1000;

/// Release-and-commit rounds of a handoff: a move skipped because its
/// session was written after the release is released and tried again.
const HANDOFF_ROUNDS: usize = 3;

/// Commits the handoff of `moves` (sessions of `owner`, released already).
/// A write of the owner's whose outcome was unknown when it stopped the
/// session may land after the release and raise the version, which skips
/// the move; such moves are released again (the version read after that is
/// final) and committed again, up to [`HANDOFF_ROUNDS`] rounds in all.
async fn commit_moves(
    env: &SchedulerEnv,
    owner: Option<NodeId>,
    moves: Vec<Move>,
    reason: MoveReason,
) -> Result<HandoffReport, LeaderError> {
    let mut pending = moves;
    let mut report = HandoffReport::default();
    for round in 0..HANDOFF_ROUNDS {
        if pending.is_empty() {
            break;
        }
        if round > 0 {
            let Some(node) = owner else { break };
            let ids = pending.iter().map(|m| m.id.clone()).collect();
            if !release_on(env, node, Some(ids)).await {
                break;
            }
        }
        let moved = commit_round(env, &pending, reason).await?;
        report.moved += moved;
        pending = env.view.read(|a| control::unmoved(&a.state, pending));
    }
    report.skipped = pending.len();
    Ok(report)
}

/// One round of [`commit_moves`]: the versions read now, after the
/// release; returns how many moves took effect.
async fn commit_round(
    env: &SchedulerEnv,
    moves: &[Move],
    reason: MoveReason,
) -> Result<usize, LeaderError> {
    let commands = env
        .view
        .read(|a| control::handoffs(&a.state, moves.to_vec(), reason));
    let mut moved = 0;
    for result in env.proposer.propose_all(commands).await {
        match result {
            Ok(Ok(crate::model::Applied::Moved(done))) => moved += done.len(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(failed(e)),
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(moved)
}
