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
mod phases;
mod probe;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use self::etcd::EtcdCluster;
use self::load::{run_cell, Backend, Cell, CellResult, Op};
pub use self::report::ThroughputReport;
use self::report::{CellRow, MemoryRow};
use crate::bench::BenchError;
use crate::testkit::process::{ProcessCluster, ProcessOptions};

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
    /// minos only: the leader's last log index.
    async fn log_index(&self) -> Option<f64> {
        let Backend::Minos { token } = &self.backend else {
            return None;
        };
        let text = probe::metrics(&self.endpoints[self.leader], token).await?;
        probe::gauge(&text, "minos_raft_last_log_index")
    }

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
    check(args)?;
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
    let (mut cluster, minos) = start_minos(bin).await?;
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
        report.memory.push(phases::memory_row(system, 0));
    }
    phases::matrix(args, &systems, &value, &mut report).await;
    if args.load > 0 {
        loaded(args, &systems, &value, &mut report).await;
    }
    idle_and_memory(args, &systems, &mut report).await;
    let sessions = systems.last().map_or(0, |s| {
        loaded_of(&report, s) + report_sessions_of(&report, s)
    });
    report.placement = phases::placement(&cluster).await.map_err(failed)?;
    if !args.no_failover && sessions > 0 {
        // The leader now: an election during the load may have moved it,
        // and the victim must be a follower (a leader's death adds one).
        let leader = cluster
            .await_leader(Instant::now() + Duration::from_secs(30))
            .await
            .map_err(failed)?;
        report.failover = Some(
            phases::mass_failover(&mut cluster, leader)
                .await
                .map_err(failed)?,
        );
        report.restart = Some(phases::restart(&mut cluster).await.map_err(failed)?);
        report
            .memory
            .push(restarted_memory(&cluster, &systems, sessions).await?);
    }
    drop(etcd);
    Ok(report)
}

fn check(args: &ThroughputArgs) -> Result<(), BenchError> {
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
    Ok(())
}

/// Starts the minos cluster; it and the system to measure.
async fn start_minos(bin: PathBuf) -> Result<(ProcessCluster, System), BenchError> {
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
    Ok((cluster, minos))
}

/// Phases 2 and 3: the bulk load, then writes again on the loaded table.
async fn loaded(
    args: &ThroughputArgs,
    systems: &[System],
    value: &str,
    report: &mut ThroughputReport,
) {
    for system in systems {
        phases::bulk_load(args, system, value, report).await;
    }
    let keys: Vec<String> = (0..args.load.min(10_000)).map(load_key).collect();
    for system in systems {
        for clients in [1, *args.clients.iter().max().unwrap_or(&64)] {
            let result = cell(args, system, Op::Write, clients, Targets::All, &keys, value).await;
            let table = loaded_of(report, system) + report_sessions_of(report, system);
            report.cells.push(CellRow::new(
                system,
                Op::Write,
                clients,
                Targets::All,
                ("loaded", table),
                result,
            ));
        }
    }
}

/// Memory of processes that loaded the table from disk (every node was
/// restarted), without the garbage a bulk load leaves in the allocator.
async fn restarted_memory(
    cluster: &ProcessCluster,
    systems: &[System],
    sessions: usize,
) -> Result<MemoryRow, BenchError> {
    let ids = cluster.ids();
    phases::await_running(cluster, &ids, sessions)
        .await
        .map_err(failed)?;
    let restarted = System {
        backend: systems[systems.len() - 1].backend.clone(),
        endpoints: Vec::new(),
        leader: 0,
        pids: ids.iter().filter_map(|id| cluster.pid(*id)).collect(),
    };
    let mut row = phases::memory_row(&restarted, sessions);
    row.when = "restarted";
    Ok(row)
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

/// Phase 4: idle CPU and memory of each system on its loaded table.
async fn idle_and_memory(args: &ThroughputArgs, systems: &[System], report: &mut ThroughputReport) {
    for system in systems {
        let window = Duration::from_secs(args.idle_secs);
        let loaded = loaded_of(report, system);
        report
            .idle
            .push(phases::idle_row(system, loaded, window).await);
        if args.load > 0 {
            report.memory.push(phases::memory_row(system, loaded));
        }
    }
}

/// Sessions (keys) the bulk load of `system` created: fewer than `--load`
/// when it ran out of `--load-secs` or some creates failed.
fn loaded_of(report: &ThroughputReport, system: &System) -> usize {
    report
        .load
        .iter()
        .filter(|row| row.backend == system.backend.name())
        .map(|row| row.result.ok)
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
    let cpu = || -> f64 {
        system
            .pids
            .iter()
            .filter_map(|p| probe::cpu_seconds(*p))
            .sum()
    };
    let cpu_before = cpu();
    let log_before = system.log_index().await;
    let mut result = run_cell(Cell {
        backend: &system.backend,
        op,
        clients,
        endpoints: &endpoints,
        keys,
        ops: args.ops,
        limit: Duration::from_secs(args.cell_secs),
        value,
        progress: None,
    })
    .await;
    result.cpu_us_per_op = (cpu() - cpu_before) * 1e6 / result.ok.max(1) as f64;
    if let (Some(before), Some(after)) = (log_before, system.log_index().await) {
        result.entries_per_op = Some((after - before) / result.ok.max(1) as f64);
    }
    say(&format!(
        "  {:<5} {:<6} {:>3} clients -> {:<6}: {:>8.0} ops/s  p50 {:>6.1} ms  p99 {:>6.1} ms  cpu {:>5.0} us/op{}  ({} failed)",
        system.backend.name(),
        op.name(),
        clients,
        format!("{targets:?}").to_lowercase(),
        result.rate,
        result.p50_ms,
        result.p99_ms,
        result.cpu_us_per_op,
        result
            .entries_per_op
            .map(|e| format!("  {e:.3} entries/op"))
            .unwrap_or_default(),
        result.failed
    ));
    result
}
