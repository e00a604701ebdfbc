//! The driver of a chaos run: creates the sessions, starts the clients of
//! both workloads (appends, registers), plays the fault schedule (one fault
//! at a time, each undone and followed by a wait for a healthy cluster;
//! mid-write faults wait for a client to send a write), heals everything,
//! reads the final state of every session linearizably, and hands the
//! history to the checkers: the append rules and the register
//! linearizability checker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::Instant;

use super::backend::Backend;
use super::checker::{check, CheckReport};
use super::history::{log_of, Op};
use super::linearizability::check_registers;
use super::register::{self, RegisterWorkload};
use super::schedule::{generate, Capabilities, Episode, Fault, ScheduleOptions, Target};
use super::workload::{self, Workload, WriteSent, WriteTap};
use crate::client::{Client, NewSession};
use crate::model::NodeId;
use crate::testkit::await_until;

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Seed of the schedule and of the clients' choices.
    pub seed: u64,
    /// How long the workload runs (faults stop with it).
    pub duration: Duration,
    /// Concurrent clients.
    pub clients: u32,
    /// Sessions.
    pub sessions: u32,
    /// Server-side timeout of each call.
    pub request_timeout: Duration,
    /// Appends per session at most.
    pub max_appends_per_session: u64,
    /// Requests per client at most.
    pub max_ops_per_client: usize,
    /// Percentage of appends among operations.
    pub append_percent: u64,
    /// Faults wanted (those the backend cannot inject are reported).
    pub faults: Capabilities,
    /// Longest wait for the cluster to become healthy after a fault.
    pub recovery_timeout: Duration,
    /// Prefix of the session ids.
    pub session_prefix: String,
    /// Clients of the register workload (0: no register workload).
    pub register_clients: u32,
    /// Register sessions in use at a time (one generation).
    pub register_sessions: u32,
    /// How long each generation of register sessions is in use.
    pub register_generation: Duration,
    /// Operations per register session at most (bounds the checker's work).
    pub max_register_ops_per_session: u64,
    /// Longest linearizability check of one register session.
    pub register_check_timeout: Duration,
}

impl RunConfig {
    /// Defaults for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            duration: Duration::from_secs(60),
            clients: 8,
            sessions: 16,
            request_timeout: Duration::from_millis(2000),
            max_appends_per_session: 1500,
            max_ops_per_client: 200_000,
            append_percent: 60,
            faults: Capabilities::ALL,
            recovery_timeout: Duration::from_secs(30),
            session_prefix: format!("chaos-{seed:x}"),
            register_clients: 4,
            register_sessions: 4,
            register_generation: Duration::from_secs(10),
            max_register_ops_per_session: 800,
            register_check_timeout: Duration::from_secs(120),
        }
    }
}

/// One episode as it ran.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// Index in the schedule.
    pub index: usize,
    /// The planned fault.
    pub fault: Fault,
    /// The fault with its targets resolved.
    pub resolved: String,
    /// When it was injected (ms since the run started).
    pub at_ms: u64,
    /// How long it was held (ms).
    pub held_ms: u64,
    /// How long the cluster took to be healthy again after the undo (ms).
    pub recovered_ms: Option<u64>,
    /// What went wrong injecting or undoing it.
    pub error: Option<String>,
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    /// Seed.
    pub seed: u64,
    /// Backend name.
    pub backend: String,
    /// Faults injected on this run.
    pub faults: Capabilities,
    /// Faults asked for but not injectable by this backend.
    pub not_injected: Vec<String>,
    /// Episodes in the schedule.
    pub planned_episodes: usize,
    /// Episodes that ran.
    pub episodes: Vec<EpisodeRecord>,
    /// Fault actions taken (kill, restart, pause, resume, cut, heal).
    pub fault_actions: usize,
    /// Workload time (s).
    pub workload_s: f64,
    /// Problems that are not rule violations but fail the run (the cluster
    /// did not recover, a fault could not be injected).
    pub problems: Vec<String>,
    /// The checker's verdict.
    pub check: CheckReport,
    /// Every operation, by start time (not in the JSON report: it is large;
    /// `--history` writes it as JSON lines).
    #[serde(skip)]
    pub history: Vec<Op>,
}

impl ChaosReport {
    /// True when the checker found nothing and the cluster always recovered.
    pub fn passed(&self) -> bool {
        self.check.ok() && self.problems.is_empty()
    }

    /// A human summary.
    pub fn summary(&self) -> String {
        let s = &self.check.stats;
        let mut out = String::new();
        let recovered: Vec<u64> = self
            .episodes
            .iter()
            .filter_map(|e| e.recovered_ms)
            .collect();
        let worst = recovered.iter().max().copied().unwrap_or(0);
        out.push_str(&format!(
            "chaos: seed {} backend {}: {} episodes run ({} planned), {} fault actions, {:.1} s of workload\n",
            self.seed,
            self.backend,
            self.episodes.len(),
            self.planned_episodes,
            self.fault_actions,
            self.workload_s
        ));
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &self.episodes {
            *kinds.entry(e.fault.kind_name()).or_default() += 1;
        }
        out.push_str(&format!(
            "chaos: faults by kind {kinds:?}; slowest recovery {worst} ms\n"
        ));
        if !self.not_injected.is_empty() {
            out.push_str(&format!(
                "chaos: NOT injected on this backend: {}\n",
                self.not_injected.join(", ")
            ));
        }
        out.push_str(&format!(
            "chaos: {} operations: appends {} ok / {} failed / {} unknown ({} of the unknown applied); reads {} ok / {} not; {} final entries; {} epochs seen\n",
            s.ops,
            s.appends_ok,
            s.appends_failed,
            s.appends_unknown,
            s.unknown_applied,
            s.reads_ok,
            s.reads_not_ok,
            s.final_entries,
            s.epochs_seen
        ));
        let r = &s.register;
        out.push_str(&format!(
            "chaos: register: {} operations on {} sessions: sets {} ok / {} failed / {} unknown ({} of the unknown seen by a read); gets {} ok, table reads {} ok, {} reads not answered\n",
            r.ops,
            r.sessions,
            r.sets_ok,
            r.sets_failed,
            r.sets_unknown,
            r.unknown_sets_seen,
            r.gets_ok,
            r.table_reads_ok,
            r.reads_not_ok
        ));
        let verdict = if r.sessions_not_linearizable == 0 && r.sessions_undecided == 0 {
            "every session linearizable".to_string()
        } else {
            format!(
                "{} sessions NOT linearizable, {} undecided",
                r.sessions_not_linearizable, r.sessions_undecided
            )
        };
        out.push_str(&format!(
            "chaos: register checker (todc-utils WGL): {} operations checked over {} sessions in {} ms: {verdict}\n",
            r.ops_checked,
            r.sessions_linearizable + r.sessions_not_linearizable,
            r.check_ms
        ));
        for problem in &self.problems {
            out.push_str(&format!("chaos: PROBLEM: {problem}\n"));
        }
        if self.check.ok() {
            out.push_str("chaos: checker: 0 violations\n");
        } else {
            out.push_str(&format!(
                "chaos: checker: {} violations {:?}\n",
                self.check.total(),
                self.check.counts
            ));
            for v in &self.check.violations {
                out.push_str(&format!("  {v}"));
            }
        }
        out
    }
}

/// Runs one chaos run against `backend`.
pub async fn run_with<B: Backend>(
    backend: &mut B,
    config: &RunConfig,
) -> Result<ChaosReport, String> {
    let nodes = backend.nodes();
    let faults = config.faults.and(backend.capabilities());
    let not_injected: Vec<String> = faults
        .missing()
        .into_iter()
        .filter(|m| !config.faults.missing().contains(m))
        .map(str::to_string)
        .collect();
    let schedule = generate(
        config.seed,
        &ScheduleOptions {
            capabilities: faults,
            nodes: nodes.len() as u64,
            lease: backend.lease(),
            duration: config.duration,
        },
    );
    eprintln!(
        "chaos: seed {} backend {} nodes {:?}: {} episodes planned over {:?}",
        config.seed,
        backend.name(),
        nodes,
        schedule.len(),
        config.duration
    );
    if !not_injected.is_empty() {
        eprintln!(
            "chaos: this backend cannot inject: {}",
            not_injected.join(", ")
        );
    }
    let clients: Vec<(NodeId, Client)> = nodes
        .iter()
        .map(|n| {
            let client = Client::new(backend.client_addr(*n));
            let client = match backend.client_token() {
                Some(token) => client.with_token(token),
                None => client,
            };
            (*n, client)
        })
        .collect();
    await_all_healthy(&clients, config.recovery_timeout).await?;
    let sessions: Vec<String> = (0..config.sessions)
        .map(|i| format!("{}-{i}", config.session_prefix))
        .collect();
    let register_ids = if config.register_clients == 0 {
        Vec::new()
    } else {
        // Fresh ids on every run: a register's first state must be the
        // empty document, even on a cluster an earlier run used.
        register::session_ids(
            &format!("{}-{:08x}", config.session_prefix, run_tag()),
            register::generations_for(config.duration, config.register_generation),
            config.register_sessions.max(1),
        )
    };
    let all_ids: Vec<String> = sessions
        .iter()
        .chain(register_ids.iter().flatten())
        .cloned()
        .collect();
    create_sessions(&clients, &all_ids, config.recovery_timeout).await?;
    for session in &all_ids {
        await_answering(&clients, session, config.recovery_timeout).await?;
    }

    let t0 = Instant::now();
    let deadline = t0 + config.duration;
    let tap = Arc::new(WriteTap::default());
    let writes = tap.subscribe();
    let workload = Arc::new(Workload {
        sessions: sessions.clone(),
        nodes: clients.clone(),
        t0,
        deadline,
        request_timeout: config.request_timeout,
        max_appends_per_session: config.max_appends_per_session,
        max_ops_per_client: config.max_ops_per_client,
        append_percent: config.append_percent,
        appends_sent: sessions.iter().map(|_| AtomicU64::new(0)).collect(),
        tap: tap.clone(),
    });
    let register_workload = Arc::new(RegisterWorkload {
        ops_sent: register_ids
            .iter()
            .map(|g| g.iter().map(|_| AtomicU64::new(0)).collect())
            .collect(),
        generations: register_ids,
        generation: config.register_generation,
        nodes: clients.clone(),
        t0,
        deadline,
        request_timeout: config.request_timeout,
        max_ops_per_session: config.max_register_ops_per_session,
        max_ops_per_client: config.max_ops_per_client,
        pace: register::pace_for(
            config.register_generation,
            config.register_clients,
            config.register_sessions,
            config.max_register_ops_per_session,
        ),
        tap: tap.clone(),
    });
    let mut tasks: Vec<_> = (0..config.clients)
        .map(|id| tokio::spawn(workload::client(workload.clone(), id, config.seed)))
        .collect();
    // Register clients are numbered after the append clients.
    let register_client = |k: u32| config.clients + k;
    tasks.extend((0..config.register_clients).map(|k| {
        tokio::spawn(register::client(
            register_workload.clone(),
            register_client(k),
            config.seed,
        ))
    }));

    let mut player = Player {
        clients: &clients,
        t0,
        actions: 0,
        killed: BTreeSet::new(),
        paused: BTreeSet::new(),
        cut: false,
        problems: Vec::new(),
        writes,
        tap: &tap,
        register_writes: config.register_clients > 0,
    };
    let mut episodes = Vec::new();
    for (index, episode) in schedule.iter().enumerate() {
        tokio::time::sleep_until((Instant::now() + episode.gap).min(deadline)).await;
        if Instant::now() >= deadline {
            break;
        }
        let record = player
            .play(backend, index, episode, deadline, config.recovery_timeout)
            .await;
        eprintln!(
            "chaos: [{:>7.3}s] #{index} {} held {} ms, healthy again after {}{}",
            record.at_ms as f64 / 1000.0,
            record.resolved,
            record.held_ms,
            record
                .recovered_ms
                .map_or("(never)".to_string(), |ms| format!("{ms} ms")),
            record
                .error
                .as_ref()
                .map_or(String::new(), |e| format!(" ERROR {e}"))
        );
        episodes.push(record);
    }
    tokio::time::sleep_until(deadline).await;
    let mut ops: Vec<Op> = Vec::new();
    for task in tasks {
        match task.await {
            Ok(client_ops) => ops.extend(client_ops),
            Err(e) => player.problems.push(format!("a client task failed: {e}")),
        }
    }
    let workload_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "chaos: workload done: {} operations in {workload_s:.1} s; healing and reading the final state",
        ops.len()
    );
    if let Err(e) = player.undo_all(backend).await {
        player.problems.push(format!("final heal: {e}"));
    }
    if let Err(e) = await_all_healthy(&clients, config.recovery_timeout).await {
        player.problems.push(format!("after healing: {e}"));
        for node in &nodes {
            eprintln!("chaos: log of node {node}:\n{}", backend.log_tail(*node));
        }
    }
    let mut finals = BTreeMap::new();
    for session in &sessions {
        if let Err(e) = await_answering(&clients, session, config.recovery_timeout).await {
            player.problems.push(e);
        }
        finals.insert(
            session.clone(),
            final_log(&clients, session, config.recovery_timeout).await,
        );
    }
    let (final_reads, unreadable) = register::final_reads(
        &register_workload,
        register_client(config.register_clients),
        config.recovery_timeout,
    )
    .await;
    ops.extend(final_reads);
    for session in unreadable {
        player.problems.push(format!(
            "register session {session} could not be read at the end"
        ));
    }
    ops.sort_by_key(|op| (op.start_us, op.end_us));
    let mut check = check(&ops, &finals);
    eprintln!(
        "chaos: checking {} register operations for linearizability",
        ops.iter().filter(|op| op.kind.is_register()).count()
    );
    let register_ops: Vec<Op> = ops
        .iter()
        .filter(|op| op.kind.is_register())
        .cloned()
        .collect();
    let timeout = config.register_check_timeout;
    let registers = tokio::task::spawn_blocking(move || check_registers(&register_ops, timeout))
        .await
        .map_err(|e| format!("the register checker failed: {e}"))?;
    for v in &registers.violations {
        check.report(v.rule, &v.session, v.detail.clone(), v.ops.iter().collect());
    }
    player.problems.extend(registers.undecided);
    check.stats.register = registers.stats;
    Ok(ChaosReport {
        seed: config.seed,
        backend: backend.name(),
        faults,
        not_injected,
        planned_episodes: schedule.len(),
        episodes,
        fault_actions: player.actions,
        workload_s,
        problems: player.problems,
        check,
        history: ops,
    })
}

/// Longest wait of a mid-write fault for a client to send a write.
const WRITE_WAIT: Duration = Duration::from_secs(3);

/// Plays episodes and remembers what is still broken.
struct Player<'a> {
    clients: &'a [(NodeId, Client)],
    t0: Instant,
    actions: usize,
    killed: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
    cut: bool,
    problems: Vec<String>,
    /// The newest write a client is sending.
    writes: tokio::sync::watch::Receiver<Option<WriteSent>>,
    /// Owners the clients saw.
    tap: &'a WriteTap,
    /// True when the register workload runs (owner kills wait for its
    /// writes).
    register_writes: bool,
}

impl Player<'_> {
    async fn play<B: Backend>(
        &mut self,
        backend: &mut B,
        index: usize,
        episode: &Episode,
        deadline: Instant,
        recovery_timeout: Duration,
    ) -> EpisodeRecord {
        let nodes = backend.nodes();
        let leader = current_leader(self.clients).await;
        let resolve = |target: Target| resolve(target, leader, &nodes);
        let mut started = Instant::now();
        let (resolved, result) = match episode.fault {
            Fault::Kill(t) => {
                let n = resolve(t);
                (format!("kill -9 node {n}"), self.kill(backend, n).await)
            }
            Fault::KillTwo(a, b) => {
                let a = resolve(a);
                let mut b = resolve(b);
                if a == b {
                    b = other_than(&nodes, &[a]);
                }
                let first = self.kill(backend, a).await;
                let second = self.kill(backend, b).await;
                (
                    format!("kill -9 nodes {a} and {b} (no quorum)"),
                    first.and(second),
                )
            }
            Fault::Pause(t) => {
                let n = resolve(t);
                self.actions += 1;
                let result = backend.pause(n).await;
                if result.is_ok() {
                    self.paused.insert(n);
                }
                (format!("pause node {n}"), result)
            }
            Fault::Isolate(t) => {
                let n = resolve(t);
                self.actions += 1;
                self.cut = true;
                (
                    format!("isolate node {n} from its peers"),
                    backend.isolate(n).await,
                )
            }
            Fault::CutFromLeader(t) => {
                let l = leader.unwrap_or(nodes[0]);
                let mut f = resolve(t);
                if f == l {
                    f = other_than(&nodes, &[l]);
                }
                self.actions += 1;
                self.cut = true;
                (
                    format!("cut node {f} from leader {l} only"),
                    backend.cut(l, f).await,
                )
            }
            Fault::Cut(a, b) => {
                let (a, b) = (resolve(a), resolve(b));
                self.actions += 1;
                self.cut = true;
                (format!("cut link {a} <-> {b}"), backend.cut(a, b).await)
            }
            Fault::KillLeaderMidWrite { delay_ms } => {
                let l = leader.unwrap_or(nodes[0]);
                let write = self.await_write(false, delay_ms, deadline).await;
                started = Instant::now();
                (
                    format!(
                        "kill -9 node {l} (the leader) {}",
                        describe(&write, delay_ms)
                    ),
                    self.kill(backend, l).await,
                )
            }
            Fault::PauseLeaderMidWrite { delay_ms } => {
                let l = leader.unwrap_or(nodes[0]);
                let write = self.await_write(false, delay_ms, deadline).await;
                started = Instant::now();
                self.actions += 1;
                let result = backend.pause(l).await;
                if result.is_ok() {
                    self.paused.insert(l);
                }
                (
                    format!("pause node {l} (the leader) {}", describe(&write, delay_ms)),
                    result,
                )
            }
            Fault::KillOwnerAfterWrite { delay_ms } => {
                let write = self
                    .await_write(self.register_writes, delay_ms, deadline)
                    .await;
                started = Instant::now();
                let (owner, how) = match &write {
                    Some(w) => match w.owner.or_else(|| self.tap.owner(&w.session)) {
                        Some(owner) => (owner, "its owner"),
                        None => match session_owner(self.clients, &w.session).await {
                            Some(owner) => (owner, "its owner"),
                            None => (w.node, "owner unknown: the node it was sent to"),
                        },
                    },
                    None => (leader.unwrap_or(nodes[0]), "no write seen: the leader"),
                };
                let also = if Some(owner) == leader {
                    ", also the leader"
                } else {
                    ""
                };
                (
                    format!(
                        "kill -9 node {owner} ({how}{also}) {}",
                        describe(&write, delay_ms)
                    ),
                    self.kill(backend, owner).await,
                )
            }
        };
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

    /// Resumes, reconnects and restarts whatever is broken.
    async fn undo_all<B: Backend>(&mut self, backend: &mut B) -> Result<(), String> {
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

/// 32 bits that differ from run to run (not part of the seed's schedule).
fn run_tag() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (nanos >> 32) ^ u64::from(std::process::id())) as u32
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

/// The owner of `session` in the table, asking the nodes briefly in turn.
async fn session_owner(clients: &[(NodeId, Client)], session: &str) -> Option<NodeId> {
    for (_, client) in clients {
        let view = tokio::time::timeout(Duration::from_millis(300), client.get_session(session))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(owner) = view.and_then(|v| v.owner) {
            return Some(owner);
        }
    }
    None
}

fn other_than(nodes: &[NodeId], taken: &[NodeId]) -> NodeId {
    nodes
        .iter()
        .copied()
        .find(|n| !taken.contains(n))
        .unwrap_or(nodes[0])
}

/// The leader reported with the highest term, asking every node briefly.
async fn current_leader(clients: &[(NodeId, Client)]) -> Option<NodeId> {
    let asks = clients.iter().map(|(_, client)| async move {
        tokio::time::timeout(Duration::from_millis(300), client.cluster())
            .await
            .ok()
            .and_then(Result::ok)
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(|view| view.leader.is_some())
        .max_by_key(|view| view.term)
        .and_then(|view| view.leader)
}

/// Waits until every node answers `/v1/health` with 200.
pub async fn await_all_healthy(
    clients: &[(NodeId, Client)],
    timeout: Duration,
) -> Result<(), String> {
    await_until("every node to be healthy", timeout, || async {
        let asks = clients.iter().map(|(_, client)| async move {
            matches!(
                tokio::time::timeout(Duration::from_millis(500), client.health()).await,
                Ok(Ok(_))
            )
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .all(|healthy| healthy)
            .then_some(())
    })
    .await
}

/// Creates `kv` sessions `ids` (an existing one is fine).
async fn create_sessions(
    clients: &[(NodeId, Client)],
    ids: &[String],
    timeout: Duration,
) -> Result<(), String> {
    for id in ids {
        let mut attempt = 0usize;
        await_until(&format!("session {id} to be created"), timeout, || {
            attempt += 1;
            let client = clients[attempt % clients.len()].1.clone();
            let id = id.clone();
            async move {
                let new = NewSession {
                    id,
                    kind: Some("kv".into()),
                    state: None,
                };
                match client.create_session(&new).await {
                    Ok(_) => Some(()),
                    Err(e) if e.code() == Some("exists") => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await?;
    }
    Ok(())
}

/// Waits until a `get` call to `session` succeeds through some node.
async fn await_answering(
    clients: &[(NodeId, Client)],
    session: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut attempt = 0usize;
    await_until(&format!("session {session} to answer"), timeout, || {
        attempt += 1;
        let client = clients[attempt % clients.len()].1.clone();
        async move {
            client
                .call(
                    session,
                    &json!({"op": "get"}),
                    Some(Duration::from_millis(1000)),
                )
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await
}

/// The final log of a session: a linearizable `GET /v1/sessions/{id}`.
async fn final_log(
    clients: &[(NodeId, Client)],
    session: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0usize;
    loop {
        attempt += 1;
        let client = &clients[attempt % clients.len()].1;
        let error = match client.get_session(session).await {
            Ok(view) => return log_of(&view.state),
            Err(e) if e.code() == Some("not_found") => return Err(e.to_string()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no final read of {session} within {timeout:?}; last error: {error}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
