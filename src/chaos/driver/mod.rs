//! The driver of a chaos run: creates the sessions, starts the clients of
//! both workloads (appends, registers), plays the fault schedule (one fault
//! at a time, each undone and followed by a wait for a healthy cluster;
//! mid-write faults wait for a client to send a write), heals everything,
//! reads the final state of every session linearizably, and hands the
//! history to the checkers: the append rules and the register
//! linearizability checker.

mod logs;
mod player;
mod probes;
mod report;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::player::Player;
pub use self::probes::await_all_healthy;
use self::probes::{await_answering, create_sessions, final_log, run_tag};
pub use self::report::{ChaosReport, EpisodeRecord};
use super::backend::Backend;
use super::checker::{check, CheckReport};
use super::history::Op;
use super::linearizability::check_registers;
use super::register::{self, RegisterWorkload};
use super::schedule::{generate, Capabilities, Episode, ScheduleOptions};
use super::workload::{self, Workload, WriteTap};
use crate::client::Client;
use crate::model::NodeId;

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

/// Runs one chaos run against `backend`.
pub async fn run_with<B: Backend>(
    backend: &mut B,
    config: &RunConfig,
) -> Result<ChaosReport, String> {
    let nodes = backend.nodes();
    let (faults, not_injected, schedule) = plan(backend, config);
    let clients = clients_of(backend);
    await_all_healthy(&clients, config.recovery_timeout).await?;
    let (sessions, register_ids) = session_ids(config);
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
    let started = chrono::Utc::now();
    let deadline = t0 + config.duration;
    let tap = Arc::new(WriteTap::default());
    let writes = tap.subscribe();
    let clock = Clock { t0, deadline };
    let workload = append_workload(config, &clients, &sessions, clock, &tap);
    let registers = register_workload(config, &clients, register_ids, clock, &tap);
    let tasks = start_clients(config, &workload, &registers);
    let mut player = Player::new(&clients, t0, writes, &tap, config.register_clients > 0);
    let episodes = play_schedule(&mut player, backend, &schedule, deadline, config).await;
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
    heal(&mut player, backend, &clients, &nodes, config).await;
    let finals = final_logs(&mut player, &clients, &sessions, config).await;
    read_registers(&mut player, &registers, &mut ops, config).await;
    ops.sort_by_key(|op| (op.start_us, op.end_us));
    let check = check_history(&mut player, &ops, &finals, config).await?;
    logs::print_around(backend, &check.violations, started);
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

/// A client of each node of `backend`, with its token if it has one.
fn clients_of<B: Backend>(backend: &B) -> Vec<(NodeId, Client)> {
    backend
        .nodes()
        .iter()
        .map(|n| {
            let client = Client::new(backend.client_addr(*n));
            let client = match backend.client_token() {
                Some(token) => client.with_token(token),
                None => client,
            };
            (*n, client)
        })
        .collect()
}

/// The faults this backend injects of those asked for, the ones it cannot,
/// and the schedule (narrated on stderr).
fn plan<B: Backend>(backend: &B, config: &RunConfig) -> (Capabilities, Vec<String>, Vec<Episode>) {
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
    (faults, not_injected, schedule)
}

/// The append sessions, and the register sessions of each generation.
fn session_ids(config: &RunConfig) -> (Vec<String>, Vec<Vec<String>>) {
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
    (sessions, register_ids)
}

/// When the workload started and when it ends.
#[derive(Clone, Copy)]
struct Clock {
    t0: Instant,
    deadline: Instant,
}

fn append_workload(
    config: &RunConfig,
    clients: &[(NodeId, Client)],
    sessions: &[String],
    clock: Clock,
    tap: &Arc<WriteTap>,
) -> Arc<Workload> {
    Arc::new(Workload {
        sessions: sessions.to_vec(),
        nodes: clients.to_vec(),
        t0: clock.t0,
        deadline: clock.deadline,
        request_timeout: config.request_timeout,
        max_appends_per_session: config.max_appends_per_session,
        max_ops_per_client: config.max_ops_per_client,
        append_percent: config.append_percent,
        appends_sent: sessions.iter().map(|_| AtomicU64::new(0)).collect(),
        tap: tap.clone(),
    })
}

fn register_workload(
    config: &RunConfig,
    clients: &[(NodeId, Client)],
    register_ids: Vec<Vec<String>>,
    clock: Clock,
    tap: &Arc<WriteTap>,
) -> Arc<RegisterWorkload> {
    Arc::new(RegisterWorkload {
        ops_sent: register_ids
            .iter()
            .map(|g| g.iter().map(|_| AtomicU64::new(0)).collect())
            .collect(),
        generations: register_ids,
        generation: config.register_generation,
        nodes: clients.to_vec(),
        t0: clock.t0,
        deadline: clock.deadline,
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
    })
}

/// Register clients are numbered after the append clients.
fn register_client(config: &RunConfig, k: u32) -> u32 {
    config.clients + k
}

/// Starts the clients of both workloads; each task returns its history.
fn start_clients(
    config: &RunConfig,
    workload: &Arc<Workload>,
    registers: &Arc<RegisterWorkload>,
) -> Vec<JoinHandle<Vec<Op>>> {
    let mut tasks: Vec<_> = (0..config.clients)
        .map(|id| tokio::spawn(workload::client(workload.clone(), id, config.seed)))
        .collect();
    tasks.extend((0..config.register_clients).map(|k| {
        tokio::spawn(register::client(
            registers.clone(),
            register_client(config, k),
            config.seed,
        ))
    }));
    tasks
}

/// Plays the schedule until `deadline`, narrating each episode on stderr.
async fn play_schedule<B: Backend>(
    player: &mut Player<'_>,
    backend: &mut B,
    schedule: &[Episode],
    deadline: Instant,
    config: &RunConfig,
) -> Vec<EpisodeRecord> {
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
    episodes
}

/// Undoes every fault still in place and waits for a healthy cluster (the
/// nodes' logs on stderr when it is not).
async fn heal<B: Backend>(
    player: &mut Player<'_>,
    backend: &mut B,
    clients: &[(NodeId, Client)],
    nodes: &[NodeId],
    config: &RunConfig,
) {
    if let Err(e) = player.undo_all(backend).await {
        player.problems.push(format!("final heal: {e}"));
    }
    if let Err(e) = await_all_healthy(clients, config.recovery_timeout).await {
        player.problems.push(format!("after healing: {e}"));
        for node in nodes {
            eprintln!("chaos: log of node {node}:\n{}", backend.log_tail(*node));
        }
    }
}

/// The final log of every append session (or why it could not be read).
async fn final_logs(
    player: &mut Player<'_>,
    clients: &[(NodeId, Client)],
    sessions: &[String],
    config: &RunConfig,
) -> BTreeMap<String, Result<Vec<String>, String>> {
    let mut finals = BTreeMap::new();
    for session in sessions {
        if let Err(e) = await_answering(clients, session, config.recovery_timeout).await {
            player.problems.push(e);
        }
        finals.insert(
            session.clone(),
            final_log(clients, session, config.recovery_timeout).await,
        );
    }
    finals
}

/// Reads every register session once more at the end, into `ops`.
async fn read_registers(
    player: &mut Player<'_>,
    registers: &RegisterWorkload,
    ops: &mut Vec<Op>,
    config: &RunConfig,
) {
    let (final_reads, unreadable) = register::final_reads(
        registers,
        register_client(config, config.register_clients),
        config.recovery_timeout,
    )
    .await;
    ops.extend(final_reads);
    for session in unreadable {
        player.problems.push(format!(
            "register session {session} could not be read at the end"
        ));
    }
}

/// Both checkers over the sorted history: the append rules, then the
/// register sessions' linearizability (its undecided sessions are
/// problems).
async fn check_history(
    player: &mut Player<'_>,
    ops: &[Op],
    finals: &BTreeMap<String, Result<Vec<String>, String>>,
    config: &RunConfig,
) -> Result<CheckReport, String> {
    let mut check = check(ops, finals);
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
    Ok(check)
}
