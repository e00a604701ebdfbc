//! The player of the fault schedule: injects one episode's fault against a
//! backend (mid-write faults wait for a client to send a write), holds it,
//! undoes everything broken and waits for a healthy cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::probes::{await_all_healthy, current_leader, session_owner};
use super::EpisodeRecord;
use crate::chaos::backend::Backend;
use crate::chaos::schedule::{Episode, Fault, Target};
use crate::chaos::workload::{WriteSent, WriteTap};
use crate::client::Client;
use crate::model::NodeId;

/// Longest wait of a mid-write fault for a client to send a write.
const WRITE_WAIT: Duration = Duration::from_secs(3);

/// Plays episodes and remembers what is still broken.
pub(super) struct Player<'a> {
    clients: &'a [(NodeId, Client)],
    t0: Instant,
    /// Fault actions taken.
    pub(super) actions: usize,
    killed: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
    cut: bool,
    /// What failed the run without breaking a rule.
    pub(super) problems: Vec<String>,
    /// The newest write a client is sending.
    writes: tokio::sync::watch::Receiver<Option<WriteSent>>,
    /// Owners the clients saw.
    tap: &'a WriteTap,
    /// True when the register workload runs (owner kills wait for its
    /// writes).
    register_writes: bool,
}

/// A fault as injected: what it did, how it went, and when it struck.
struct Injected {
    resolved: String,
    result: Result<(), String>,
    started: Instant,
}

impl<'a> Player<'a> {
    /// A player with nothing broken yet; `t0` is the start of the run.
    pub(super) fn new(
        clients: &'a [(NodeId, Client)],
        t0: Instant,
        writes: tokio::sync::watch::Receiver<Option<WriteSent>>,
        tap: &'a WriteTap,
        register_writes: bool,
    ) -> Self {
        Player {
            clients,
            t0,
            actions: 0,
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            cut: false,
            problems: Vec::new(),
            writes,
            tap,
            register_writes,
        }
    }
}

impl Player<'_> {
    /// Plays one episode: injects its fault, holds it, undoes everything
    /// and waits for a healthy cluster.
    pub(super) async fn play<B: Backend>(
        &mut self,
        backend: &mut B,
        index: usize,
        episode: &Episode,
        deadline: Instant,
        recovery_timeout: Duration,
    ) -> EpisodeRecord {
        let nodes = backend.nodes();
        let leader = current_leader(self.clients).await;
        let Injected {
            resolved,
            result,
            started,
        } = self
            .inject(backend, episode.fault, leader, &nodes, deadline)
            .await;
        let at_ms = started.saturating_duration_since(self.t0).as_millis() as u64;
        let resolved = format!(
            "{resolved} (leader was {})",
            leader.map_or("unknown".into(), |l| l.to_string())
        );
        tokio::time::sleep_until((started + episode.hold).min(deadline)).await;
        let held_ms = started.elapsed().as_millis() as u64;
        let undo = self.undo_all(backend).await;
        let healed_at = Instant::now();
        let recovered = await_all_healthy(self.clients, recovery_timeout).await;
        let recovered_ms = recovered
            .as_ref()
            .ok()
            .map(|_| healed_at.elapsed().as_millis() as u64);
        let mut errors = Vec::new();
        if let Err(e) = result {
            errors.push(format!("inject: {e}"));
        }
        if let Err(e) = undo {
            errors.push(format!("undo: {e}"));
        }
        if let Err(e) = recovered {
            errors.push(format!("recovery: {e}"));
        }
        let error = (!errors.is_empty()).then(|| errors.join("; "));
        if let Some(e) = &error {
            self.problems
                .push(format!("episode #{index} ({resolved}): {e}"));
        }
        EpisodeRecord {
            index,
            fault: episode.fault,
            resolved,
            at_ms,
            held_ms,
            recovered_ms,
            error,
        }
    }

    /// Injects `fault` with its targets resolved against the current
    /// `leader`.
    async fn inject<B: Backend>(
        &mut self,
        backend: &mut B,
        fault: Fault,
        leader: Option<NodeId>,
        nodes: &[NodeId],
        deadline: Instant,
    ) -> Injected {
        let resolve = |target: Target| resolve(target, leader, nodes);
        let l = leader.unwrap_or(nodes[0]);
        let started = Instant::now();
        let (resolved, result) = match fault {
            Fault::Kill(t) => {
                let n = resolve(t);
                (format!("kill -9 node {n}"), self.kill(backend, n).await)
            }
            Fault::KillTwo(a, b) => self.kill_two(backend, resolve(a), resolve(b), nodes).await,
            Fault::Pause(t) => {
                let n = resolve(t);
                (format!("pause node {n}"), self.pause(backend, n).await)
            }
            Fault::Isolate(t) => {
                let n = resolve(t);
                self.note_cut();
                let what = format!("isolate node {n} from its peers");
                (what, backend.isolate(n).await)
            }
            Fault::CutFromLeader(t) => {
                let mut f = resolve(t);
                if f == l {
                    f = other_than(nodes, &[l]);
                }
                self.note_cut();
                let what = format!("cut node {f} from leader {l} only");
                (what, backend.cut(l, f).await)
            }
            Fault::Cut(a, b) => {
                let (a, b) = (resolve(a), resolve(b));
                self.note_cut();
                (format!("cut link {a} <-> {b}"), backend.cut(a, b).await)
            }
            Fault::KillLeaderMidWrite { delay_ms } => {
                return self
                    .leader_mid_write(backend, true, l, delay_ms, deadline)
                    .await
            }
            Fault::PauseLeaderMidWrite { delay_ms } => {
                return self
                    .leader_mid_write(backend, false, l, delay_ms, deadline)
                    .await
            }
            Fault::KillOwnerAfterWrite { delay_ms } => {
                return self
                    .kill_owner_after_write(backend, delay_ms, leader, l, deadline)
                    .await
            }
        };
        Injected {
            resolved,
            result,
            started,
        }
    }

    /// Kills `a` and `b` (another node when they are the same).
    async fn kill_two<B: Backend>(
        &mut self,
        backend: &mut B,
        a: NodeId,
        b: NodeId,
        nodes: &[NodeId],
    ) -> (String, Result<(), String>) {
        let b = if a == b { other_than(nodes, &[a]) } else { b };
        let first = self.kill(backend, a).await;
        let second = self.kill(backend, b).await;
        (
            format!("kill -9 nodes {a} and {b} (no quorum)"),
            first.and(second),
        )
    }

    /// Waits for a write, then kills (`kill`) or pauses the leader `l`.
    async fn leader_mid_write<B: Backend>(
        &mut self,
        backend: &mut B,
        kill: bool,
        l: NodeId,
        delay_ms: u16,
        deadline: Instant,
    ) -> Injected {
        let write = self.await_write(false, delay_ms, deadline).await;
        let started = Instant::now();
        let (verb, result) = if kill {
            ("kill -9", self.kill(backend, l).await)
        } else {
            ("pause", self.pause(backend, l).await)
        };
        Injected {
            resolved: format!(
                "{verb} node {l} (the leader) {}",
                describe(&write, delay_ms)
            ),
            result,
            started,
        }
    }

    /// Waits for a write, then kills the owner of its session (or, when
    /// unknown, the node it was sent to; with no write, the leader).
    async fn kill_owner_after_write<B: Backend>(
        &mut self,
        backend: &mut B,
        delay_ms: u16,
        leader: Option<NodeId>,
        fallback: NodeId,
        deadline: Instant,
    ) -> Injected {
        let write = self
            .await_write(self.register_writes, delay_ms, deadline)
            .await;
        let started = Instant::now();
        let (owner, how) = match &write {
            Some(w) => match w.owner.or_else(|| self.tap.owner(&w.session)) {
                Some(owner) => (owner, "its owner"),
                None => match session_owner(self.clients, &w.session).await {
                    Some(owner) => (owner, "its owner"),
                    None => (w.node, "owner unknown: the node it was sent to"),
                },
            },
            None => (fallback, "no write seen: the leader"),
        };
        let also = if Some(owner) == leader {
            ", also the leader"
        } else {
            ""
        };
        let resolved = format!(
            "kill -9 node {owner} ({how}{also}) {}",
            describe(&write, delay_ms)
        );
        Injected {
            resolved,
            result: self.kill(backend, owner).await,
            started,
        }
    }

    /// Waits (at most [`WRITE_WAIT`], never past `deadline`) for a client to
    /// send a write (a register write when `register_only`), then `delay_ms`
    /// more. `None` when no write came.
    async fn await_write(
        &mut self,
        register_only: bool,
        delay_ms: u16,
        deadline: Instant,
    ) -> Option<WriteSent> {
        let until = (Instant::now() + WRITE_WAIT).min(deadline);
        self.writes.borrow_and_update();
        let write = loop {
            // Bounded: every turn waits for a change, and `until` ends it.
            match tokio::time::timeout_at(until, self.writes.changed()).await {
                Ok(Ok(())) => {
                    let newest = self.writes.borrow_and_update().clone();
                    if let Some(write) = newest {
                        if !register_only || write.register {
                            break Some(write);
                        }
                    }
                }
                _ => break None,
            }
        };
        if write.is_some() && delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(delay_ms))).await;
        }
        write
    }

    async fn kill<B: Backend>(&mut self, backend: &mut B, node: NodeId) -> Result<(), String> {
        self.actions += 1;
        backend.kill(node).await?;
        self.killed.insert(node);
        Ok(())
    }

    /// Marks links as cut (healed by [`Player::undo_all`]).
    fn note_cut(&mut self) {
        self.actions += 1;
        self.cut = true;
    }

    async fn pause<B: Backend>(&mut self, backend: &mut B, node: NodeId) -> Result<(), String> {
        self.actions += 1;
        let result = backend.pause(node).await;
        if result.is_ok() {
            self.paused.insert(node);
        }
        result
    }

    /// Resumes, reconnects and restarts whatever is broken.
    pub(super) async fn undo_all<B: Backend>(&mut self, backend: &mut B) -> Result<(), String> {
        let mut errors = Vec::new();
        for node in std::mem::take(&mut self.paused) {
            self.actions += 1;
            if let Err(e) = backend.resume(node).await {
                errors.push(e);
            }
        }
        if std::mem::take(&mut self.cut) {
            self.actions += 1;
            if let Err(e) = backend.heal().await {
                errors.push(e);
            }
        }
        for node in std::mem::take(&mut self.killed) {
            self.actions += 1;
            if let Err(e) = backend.restart(node).await {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

fn resolve(target: Target, leader: Option<NodeId>, nodes: &[NodeId]) -> NodeId {
    match target {
        Target::Node(n) => n,
        Target::Leader => leader.unwrap_or(nodes[0]),
        Target::Follower(k) => {
            let followers: Vec<NodeId> = nodes
                .iter()
                .copied()
                .filter(|n| Some(*n) != leader)
                .collect();
            followers[k as usize % followers.len().max(1)]
        }
    }
}

/// "3 ms after client 9 sent set r9-4 to S via node 1", for the narration.
fn describe(write: &Option<WriteSent>, delay_ms: u16) -> String {
    match write {
        Some(w) => format!(
            "{delay_ms} ms after client {} sent {} to {} via node {}",
            w.client, w.what, w.session, w.node
        ),
        None => format!("(no write was sent within {WRITE_WAIT:?})"),
    }
}

fn other_than(nodes: &[NodeId], taken: &[NodeId]) -> NodeId {
    nodes
        .iter()
        .copied()
        .find(|n| !taken.contains(n))
        .unwrap_or(nodes[0])
}
