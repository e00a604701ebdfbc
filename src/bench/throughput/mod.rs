//! `minos bench throughput`: write and read throughput, idle cost, memory
//! per session, placement balance, restart time and mass failover of a real
//! three-node cluster, side by side with a three-member etcd cluster started
//! in the same run and driven by the same load generator (the `load` module).
//!
//! Phases: (1) the matrix of creates, state-changing calls and linearizable
//! reads at each client count, to the leader and to all nodes, on both
//! systems; (2) a bulk load of `--load` sessions (keys); (3) writes again on
//! the loaded table; (4) idle CPU and RSS; (5) placement per node; (6) a
//! SIGKILL of the node owning the most sessions: time until every one of its
//! sessions is owned by and running on a survivor, and a sample answers;
//! (7) restart of that node, then of all three.

mod etcd;
mod load;
mod probe;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use self::etcd::EtcdCluster;
use self::load::{run_cell, Backend, Cell, CellResult, Op};
use self::probe::{cpu_seconds, rss_bytes};
pub use self::report::ThroughputReport;
use self::report::{CellRow, FailoverRow, IdleRow, LoadRow, MemoryRow, RestartRow};
use crate::bench::BenchError;
use crate::model::NodeId;
use crate::testkit::process::{ProcessCluster, ProcessOptions, Signal};

/// Flags of `minos bench throughput`.
#[derive(clap::Args, Clone, Debug)]
pub struct ThroughputArgs {
    /// Client counts of the matrix (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Operations per matrix cell (a cell also ends after --cell-secs).
    #[arg(long, default_value_t = 3000)]
    pub ops: usize,
    /// Longest time of one matrix cell, in seconds.
    #[arg(long, default_value_t = 10)]
    pub cell_secs: u64,
    /// Sessions (etcd: keys) of the bulk load (0: no load phase).
    #[arg(long, default_value_t = 100_000)]
    pub load: usize,
    /// Longest time of the bulk load, in seconds.
    #[arg(long, default_value_t = 300)]
    pub load_secs: u64,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 5)]
    pub idle_secs: u64,
    /// Bytes of each value (the state of a session).
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// The etcd binary (default: `etcd` on the PATH).
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Run minos alone.
    #[arg(long)]
    pub no_etcd: bool,
    /// Skip the mass failover and restart phases.
    #[arg(long)]
    pub no_failover: bool,
    /// The `minos` binary to run as nodes (default: this executable).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Write every result here, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a bar chart of the matrix here, as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Which nodes a cell's clients talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Targets {
    /// Every client to the leader.
    Leader,
    /// Clients spread over all nodes (followers forward).
    All,
}

/// One system with everything the phases need.
struct System {
    backend: Backend,
    endpoints: Vec<String>,
    leader: usize,
    pids: Vec<u32>,
}

impl System {
    fn targets(&self, targets: Targets) -> Vec<String> {
        match targets {
            Targets::Leader => vec![self.endpoints[self.leader].clone()],
            Targets::All => self.endpoints.clone(),
        }
    }
}

fn say(line: &str) {
    eprintln!("{line}");
}

fn failed(e: impl std::fmt::Display) -> BenchError {
    BenchError::Failed(e.to_string())
}

/// Runs the benchmark.
pub async fn run(args: &ThroughputArgs) -> Result<ThroughputReport, BenchError> {
    if args.clients.is_empty() || args.clients.iter().any(|c| *c == 0 || *c > 1024) {
        return Err(BenchError::Usage(
            "--clients takes counts from 1 to 1024".into(),
        ));
    }
    if args.ops == 0 || args.cell_secs == 0 || args.value_bytes > 64 * 1024 {
        return Err(BenchError::Usage(
            "--ops and --cell-secs must be positive, --value-bytes at most 65536".into(),
        ));
    }
    let bin = match &args.bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().map_err(failed)?,
    };
    let mut report = ThroughputReport::new(args);
    let etcd = if args.no_etcd {
        None
    } else {
        say("starting a 3-member etcd cluster");
        let cluster = EtcdCluster::start(&args.etcd).await.map_err(|e| {
            failed(format!(
                "{e} (install etcd, e.g. Debian's etcd-server, or pass --no-etcd)"
            ))
        })?;
        Some(cluster)
    };
    say("starting a 3-node minos cluster");
    let mut options = ProcessOptions::new(bin);
    options.start_timeout = Duration::from_secs(60);
    let mut cluster = ProcessCluster::start(options)
        .await
        .map_err(|e| failed(format!("cluster did not start: {e}")))?;
    let leader = cluster
        .await_leader(Instant::now() + Duration::from_secs(30))
        .await
        .map_err(failed)?;
    let ids = cluster.ids();
    let minos = System {
        backend: Backend::Minos {
            token: cluster.credentials().admin_token.clone(),
        },
        endpoints: ids.iter().map(|id| cluster.addr(*id)).collect(),
        leader: ids.iter().position(|id| *id == leader).unwrap_or(0),
        pids: ids.iter().filter_map(|id| cluster.pid(*id)).collect(),
    };
    let mut systems = vec![minos];
    if let Some(etcd) = &etcd {
        systems.insert(
            0,
            System {
                backend: Backend::Etcd,
                endpoints: etcd.endpoints.clone(),
                leader: etcd.leader().await.map_err(failed)?,
                pids: etcd.pids(),
            },
        );
    }
    let value = "x".repeat(args.value_bytes);
    for system in &systems {
        report.memory.push(memory_row(system, 0));
    }
    matrix(args, &systems, &value, &mut report).await;
    if args.load > 0 {
        for system in &systems {
            bulk_load(args, system, &value, &mut report).await;
        }
        let keys: Vec<String> = (0..args.load.min(10_000)).map(load_key).collect();
        for system in &systems {
            for clients in [1, *args.clients.iter().max().unwrap_or(&64)] {
                let result = cell(
                    args,
                    system,
                    Op::Write,
                    clients,
                    Targets::All,
                    &keys,
                    &value,
                )
                .await;
                report.cells.push(CellRow::new(
                    system,
                    Op::Write,
                    clients,
                    Targets::All,
                    ("loaded", args.load + report_sessions_of(&report, system)),
                    result,
                ));
            }
        }
    }
    for system in &systems {
        report
            .idle
            .push(idle_row(system, args.load, Duration::from_secs(args.idle_secs)).await);
        if args.load > 0 {
            report.memory.push(memory_row(system, args.load));
        }
    }
    let sessions = args.load + systems.last().map_or(0, |s| report_sessions_of(&report, s));
    report.placement = placement(&cluster).await.map_err(failed)?;
    if !args.no_failover && sessions > 0 {
        report.failover = Some(mass_failover(&mut cluster, leader).await.map_err(failed)?);
        report.restart = Some(restart(&mut cluster).await.map_err(failed)?);
        // Memory of processes that loaded the table from disk, without the
        // garbage a bulk load leaves in the allocator.
        let ids = cluster.ids();
        await_running(&cluster, &ids, sessions)
            .await
            .map_err(failed)?;
        let restarted = System {
            backend: systems[systems.len() - 1].backend.clone(),
            endpoints: Vec::new(),
            leader: 0,
            pids: ids.iter().filter_map(|id| cluster.pid(*id)).collect(),
        };
        let mut row = memory_row(&restarted, sessions);
        row.when = "restarted";
        report.memory.push(row);
    }
    drop(etcd);
    Ok(report)
}

/// Sessions (keys) the matrix created on `system`.
fn report_sessions_of(report: &ThroughputReport, system: &System) -> usize {
    report
        .cells
        .iter()
        .filter(|c| c.backend == system.backend.name() && c.op == Op::Create)
        .map(|c| c.result.ok)
        .sum()
}

fn load_key(n: usize) -> String {
    format!("load-{n}")
}

async fn cell(
    args: &ThroughputArgs,
    system: &System,
    op: Op,
    clients: usize,
    targets: Targets,
    keys: &[String],
    value: &str,
) -> CellResult {
    let endpoints = system.targets(targets);
    let result = run_cell(Cell {
        backend: &system.backend,
        op,
        clients,
        endpoints: &endpoints,
        keys,
        ops: args.ops,
        limit: Duration::from_secs(args.cell_secs),
        value,
    })
    .await;
    say(&format!(
        "  {:<5} {:<6} {:>3} clients -> {:<6}: {:>8.0} ops/s  p50 {:>6.1} ms  p99 {:>6.1} ms  ({} failed)",
        system.backend.name(),
        op.name(),
        clients,
        format!("{targets:?}").to_lowercase(),
        result.rate,
        result.p50_ms,
        result.p99_ms,
        result.failed
    ));
    result
}

/// Phase 1: every operation at every client count, to the leader and to
/// all nodes, on every system. Creates make the keys the other cells use.
async fn matrix(
    args: &ThroughputArgs,
    systems: &[System],
    value: &str,
    report: &mut ThroughputReport,
) {
    say("matrix: creates, state-changing calls, linearizable reads");
    for system in systems {
        let mut created: Vec<String> = Vec::new();
        let mut round = 0;
        for op in [Op::Create, Op::Write, Op::Read] {
            for clients in &args.clients {
                for targets in [Targets::Leader, Targets::All] {
                    round += 1;
                    let result = if op == Op::Create {
                        let fresh: Vec<String> =
                            (0..args.ops).map(|n| format!("m{round}-{n}")).collect();
                        let result = cell(args, system, op, *clients, targets, &fresh, value).await;
                        created.extend(fresh.into_iter().take(result.ok));
                        result
                    } else {
                        cell(args, system, op, *clients, targets, &created, value).await
                    };
                    let size = created.len();
                    report.cells.push(CellRow::new(
                        system,
                        op,
                        *clients,
                        targets,
                        ("matrix", size),
                        result,
                    ));
                }
            }
        }
    }
}

/// Phase 2: `--load` creates by the largest client count, over all nodes.
async fn bulk_load(
    args: &ThroughputArgs,
    system: &System,
    value: &str,
    report: &mut ThroughputReport,
) {
    say(&format!(
        "bulk load: {} {} sessions/keys",
        system.backend.name(),
        args.load
    ));
    let keys: Vec<String> = (0..args.load).map(load_key).collect();
    let endpoints = system.targets(Targets::All);
    let clients = *args.clients.iter().max().unwrap_or(&64);
    let result = run_cell(Cell {
        backend: &system.backend,
        op: Op::Create,
        clients,
        endpoints: &endpoints,
        keys: &keys,
        ops: args.load,
        limit: Duration::from_secs(args.load_secs),
        value,
    })
    .await;
    say(&format!(
        "  {:<5} loaded {} in {:.1} s: {:.0}/s, p99 {:.1} ms, max {:.1} ms, {} failed",
        system.backend.name(),
        result.ok,
        result.seconds,
        result.rate,
        result.p99_ms,
        result.max_ms,
        result.failed
    ));
    report.load.push(LoadRow {
        backend: system.backend.name().into(),
        clients,
        result,
    });
}

/// Phase 4a: CPU used by the idle system over `window`, in cores.
async fn idle_row(system: &System, sessions: usize, window: Duration) -> IdleRow {
    // Let the load's tail (replication, snapshots) finish first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: Vec<f64> = system
        .pids
        .iter()
        .map(|p| cpu_seconds(*p).unwrap_or(0.0))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = started.elapsed().as_secs_f64();
    let cores: Vec<f64> = system
        .pids
        .iter()
        .zip(&before)
        .map(|(pid, b)| (cpu_seconds(*pid).unwrap_or(0.0) - b) / seconds)
        .collect();
    say(&format!(
        "idle: {} with {sessions} sessions: {:.3} cores in all ({:?})",
        system.backend.name(),
        cores.iter().sum::<f64>(),
        cores.iter().map(|c| format!("{c:.3}")).collect::<Vec<_>>()
    ));
    IdleRow {
        backend: system.backend.name().into(),
        sessions,
        seconds,
        cores_total: cores.iter().sum(),
        cores,
    }
}

/// Phase 4b: resident memory of every process.
fn memory_row(system: &System, sessions: usize) -> MemoryRow {
    let rss: Vec<u64> = system
        .pids
        .iter()
        .map(|p| rss_bytes(*p).unwrap_or(0))
        .collect();
    MemoryRow {
        backend: system.backend.name().into(),
        sessions,
        when: if sessions == 0 { "empty" } else { "loaded" },
        rss_bytes: rss,
    }
}

/// Phase 5: sessions per node (the table's owners, from the leader's view).
async fn placement(cluster: &ProcessCluster) -> Result<Vec<(NodeId, usize)>, String> {
    let view = cluster
        .client(cluster.ids()[0])
        .cluster()
        .await
        .map_err(|e| format!("cluster status: {e}"))?;
    let counts: Vec<(NodeId, usize)> = view.nodes.iter().map(|n| (n.id, n.sessions)).collect();
    let total: usize = counts.iter().map(|(_, c)| c).sum::<usize>().max(1);
    say(&format!(
        "placement: {}",
        counts
            .iter()
            .map(|(id, c)| format!("node {id} {c} ({:.1} %)", *c as f64 * 100.0 / total as f64))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    Ok(counts)
}

/// The sum of one gauge over the nodes in `ids` (missing counts as 0).
async fn gauge_sum(cluster: &ProcessCluster, ids: &[NodeId], name: &str) -> f64 {
    let token = &cluster.credentials().admin_token;
    let mut sum = 0.0;
    for id in ids {
        if let Some(text) = probe::metrics(&cluster.addr(*id), token).await {
            sum += probe::gauge(&text, name).unwrap_or(0.0);
        }
    }
    sum
}

/// Waits (up to 60 s) until the nodes `ids` run `total` session tasks.
async fn await_running(
    cluster: &ProcessCluster,
    ids: &[NodeId],
    total: usize,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = gauge_sum(cluster, ids, "minos_sessions_running").await;
        if running as usize >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {running} of {total} sessions running within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Phase 6: SIGKILL of the non-leader node owning the most sessions.
async fn mass_failover(
    cluster: &mut ProcessCluster,
    leader: NodeId,
) -> Result<FailoverRow, String> {
    let view = cluster
        .client(leader)
        .cluster()
        .await
        .map_err(|e| format!("cluster status: {e}"))?;
    let victim = view
        .nodes
        .iter()
        .filter(|n| n.id != leader)
        .max_by_key(|n| n.sessions)
        .map(|n| (n.id, n.sessions))
        .ok_or("no follower to kill")?;
    let (victim, owned) = victim;
    let sample: Vec<String> = cluster
        .client(leader)
        .list_sessions(Some(victim), None, Some(200))
        .await
        .map_err(|e| format!("list sessions: {e}"))?
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect();
    let total = view.sessions;
    let survivors: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != victim)
        .collect();
    say(&format!(
        "mass failover: SIGKILL of node {victim}, which owns {owned} of {total} sessions"
    ));
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(60);
    cluster.signal(victim, Signal::Kill)?;
    let observer = cluster.client(leader);
    let reassigned = loop {
        if let Ok(view) = observer.cluster().await {
            let left = view
                .nodes
                .iter()
                .find(|n| n.id == victim)
                .map_or(0, |n| n.sessions);
            if left == 0 {
                break signalled.elapsed();
            }
        }
        if Instant::now() > deadline {
            return Err("the victim's sessions were not reassigned within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    await_running(cluster, &survivors, total).await?;
    let running = signalled.elapsed();
    let mut failed_calls = 0;
    for id in &sample {
        let answer = observer
            .call(
                id,
                &serde_json::json!({"op": "get"}),
                Some(Duration::from_secs(5)),
            )
            .await;
        if answer.is_err() {
            failed_calls += 1;
        }
    }
    let answered = signalled.elapsed();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    say(&format!(
        "  reassigned in {:.0} ms, all running in {:.0} ms, {} sampled calls answered by {:.0} ms ({failed_calls} failed)",
        ms(reassigned),
        ms(running),
        sample.len(),
        ms(answered)
    ));
    cluster.await_exit(victim, Duration::from_secs(10)).await?;
    Ok(FailoverRow {
        victim,
        sessions_moved: owned,
        sessions_total: total,
        reassigned_ms: ms(reassigned),
        running_ms: ms(running),
        sampled_calls: sample.len(),
        failed_calls,
        answered_ms: ms(answered),
    })
}

/// Phase 7: the killed node back (health and a read through it), then all
/// three killed and started again.
async fn restart(cluster: &mut ProcessCluster) -> Result<RestartRow, String> {
    let ids = cluster.ids();
    let victim = *ids
        .iter()
        .find(|id| !cluster.is_running(**id))
        .unwrap_or(&ids[0]);
    let one = back_up(cluster, &[victim]).await?;
    for id in &ids {
        cluster.kill(*id).await?;
    }
    let all = back_up(cluster, &ids).await?;
    say(&format!(
        "restart: node {victim} back in {:.0} ms, all three in {:.0} ms",
        one, all
    ));
    Ok(RestartRow {
        one_node_ms: one,
        all_nodes_ms: all,
    })
}

/// Starts `ids` and returns the milliseconds until each is healthy and
/// serves a linearizable read.
async fn back_up(cluster: &mut ProcessCluster, ids: &[NodeId]) -> Result<f64, String> {
    let started = Instant::now();
    for id in ids {
        cluster.launch(*id)?;
    }
    let deadline = started + Duration::from_secs(60);
    for id in ids {
        cluster.await_healthy(*id, deadline).await?;
        let client = cluster.client(*id);
        loop {
            if client.get_session(&load_key(0)).await.is_ok()
                || client.list_sessions(None, None, Some(1)).await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node {id} serves no read within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}
