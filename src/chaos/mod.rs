//! Chaos: a seeded fault schedule against a real cluster, a recorded history
//! of every request, and a checker of minos's promises over that history.
//!
//! - [`schedule`]: episodes (gap, fault, hold) drawn from a seed;
//! - [`workload`]: clients appending unique values to `kv` sessions and
//!   reading them back, each request recorded in a [`history::Op`];
//! - [`register`]: clients setting unique values on `kv` sessions of their
//!   own and reading them with calls and table reads;
//! - [`checker`]: pure rules over the append history and the final state;
//! - [`linearizability`]: each register session's history checked by
//!   todc-utils' WGL linearizability checker;
//! - [`driver`]: plays the schedule against a [`backend::Backend`]
//!   ([`process`], [`docker`], [`inprocess`]) while the clients run.
//!
//! `minos chaos --backend process --seed 7 --duration-s 60` prints the seed
//! first, narrates every fault, and exits 1 on any violation.

pub mod backend;
pub mod checker;
pub mod docker;
pub mod driver;
pub mod history;
pub mod inprocess;
pub mod linearizability;
pub mod process;
pub mod register;
pub mod rng;
pub mod schedule;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

pub use backend::Backend;
pub use driver::{run_with, ChaosReport, RunConfig};
pub use schedule::Capabilities;

/// Which cluster a chaos run attacks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Real `minos serve` processes on loopback (kill, pause; no partitions).
    Process,
    /// The docker-compose cluster (kill, pause, isolate, cut links).
    Docker,
    /// Nodes inside this process (kill, isolate, cut links; no pause).
    Inprocess,
}

/// `minos chaos` flags.
#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// Seed of the fault schedule (random when absent; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cluster to attack.
    #[arg(long, value_enum, default_value = "process")]
    pub backend: BackendKind,
    /// How long the workload runs, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Sessions the clients share.
    #[arg(long, default_value_t = 16)]
    pub sessions: u32,
    /// Server-side timeout of every call, in ms (the client waits 1 s more).
    #[arg(long, default_value_t = 2000)]
    pub request_timeout_ms: u64,
    /// Appends per session at most (each append rewrites the whole state).
    #[arg(long, default_value_t = 1500)]
    pub max_appends_per_session: u64,
    /// Clients of the register workload (0: none).
    #[arg(long, default_value_t = 4)]
    pub register_clients: u32,
    /// Register sessions in use at a time (one generation; a new
    /// generation of sessions starts every --register-generation-s).
    #[arg(long, default_value_t = 4)]
    pub register_sessions: u32,
    /// Seconds each generation of register sessions is in use.
    #[arg(long, default_value_t = 10)]
    pub register_generation_s: u64,
    /// Operations per register session at most (bounds the checker's work;
    /// the clients pace themselves to spread it over the generation).
    #[arg(long, default_value_t = 800)]
    pub max_register_ops_per_session: u64,
    /// Faults to inject: a comma list of kill, pause, isolate, cut, or all.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// `minos` binary the process backend runs (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Directory for the process backend's data and logs (default: a
    /// temporary directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// docker-compose project of the docker backend.
    #[arg(long, default_value = docker::DEFAULT_PROJECT)]
    pub docker_project: String,
    /// Print the schedule this seed gives (for --faults, three nodes, a
    /// 500 ms lease) and exit without touching any cluster.
    #[arg(long)]
    pub plan: bool,
    /// Write the full report (violations, episodes, counts) as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write the whole history (every operation) as JSON lines here.
    #[arg(long)]
    pub history: Option<PathBuf>,
}

/// A chaos run failed or found violations.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// Bad flags.
    #[error("{0}")]
    Usage(String),
    /// The run failed or the checker found violations.
    #[error("{0}")]
    Failed(String),
}

impl ChaosError {
    /// Process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ChaosError::Usage(_) => 2,
            ChaosError::Failed(_) => 1,
        }
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    rng::SplitMix64::new(nanos ^ u64::from(std::process::id())).next_u64()
}

/// Runs `minos chaos`.
pub async fn run(args: ChaosArgs) -> Result<(), ChaosError> {
    let seed = args.seed.unwrap_or_else(random_seed);
    println!("chaos: seed {seed}");
    let faults = Capabilities::parse(&args.faults).map_err(ChaosError::Usage)?;
    if args.duration_s == 0 || args.clients == 0 || args.sessions == 0 {
        return Err(ChaosError::Usage(
            "--duration-s, --clients and --sessions must be positive".into(),
        ));
    }
    if args.plan {
        print_plan(seed, faults, Duration::from_secs(args.duration_s));
        return Ok(());
    }
    let config = run_config(&args, seed, faults);
    let report = run_backend(&args, &config).await?;
    println!("{}", report.summary());
    write_files(&args, &report)?;
    if report.passed() {
        Ok(())
    } else {
        Err(ChaosError::Failed(format!(
            "seed {seed}: {} violations, {} problems (rerun with --seed {seed})",
            report.check.total(),
            report.problems.len()
        )))
    }
}

/// `--plan`: prints the schedule of `seed` (three nodes, a 500 ms lease).
fn print_plan(seed: u64, faults: Capabilities, duration: Duration) {
    let episodes = schedule::generate(
        seed,
        &schedule::ScheduleOptions {
            capabilities: faults,
            nodes: 3,
            lease: Duration::from_millis(500),
            duration,
        },
    );
    let mut at = Duration::ZERO;
    for (index, episode) in episodes.iter().enumerate() {
        at += episode.gap;
        println!(
            "#{index:<3} at {:>7.3}s  {}  held {} ms",
            at.as_secs_f64(),
            episode.fault,
            episode.hold.as_millis()
        );
        at += episode.hold;
    }
}

/// The run's settings from the flags.
fn run_config(args: &ChaosArgs, seed: u64, faults: Capabilities) -> RunConfig {
    let mut config = RunConfig::new(seed);
    config.duration = Duration::from_secs(args.duration_s);
    config.clients = args.clients;
    config.sessions = args.sessions;
    config.request_timeout = Duration::from_millis(args.request_timeout_ms.max(1));
    config.max_appends_per_session = args.max_appends_per_session;
    config.register_clients = args.register_clients;
    config.register_sessions = args.register_sessions.max(1);
    config.register_generation = Duration::from_secs(args.register_generation_s.max(1));
    config.max_register_ops_per_session = args.max_register_ops_per_session.max(1);
    config.faults = faults;
    config
}

/// Starts or attaches to the `--backend` cluster and runs against it.
async fn run_backend(args: &ChaosArgs, config: &RunConfig) -> Result<ChaosReport, ChaosError> {
    match args.backend {
        BackendKind::Process => {
            let bin = match args.bin.clone() {
                Some(bin) => bin,
                None => std::env::current_exe()
                    .map_err(|e| ChaosError::Usage(format!("cannot find this binary: {e}")))?,
            };
            let mut backend = process::ProcessBackend::start(bin, Vec::new(), args.dir.clone())
                .await
                .map_err(ChaosError::Failed)?;
            run_with(&mut backend, config).await
        }
        BackendKind::Docker => {
            let mut backend = docker::DockerBackend::attach(docker::DockerOptions {
                project: args.docker_project.clone(),
                token: docker::token_from_env().map_err(ChaosError::Usage)?,
                ..docker::DockerOptions::default()
            })
            .await
            .map_err(ChaosError::Failed)?;
            run_with(&mut backend, config).await
        }
        BackendKind::Inprocess => {
            let mut backend =
                inprocess::InProcessBackend::start(3, crate::config::Timing::default())
                    .await
                    .map_err(ChaosError::Failed)?;
            let report = run_with(&mut backend, config).await;
            backend.shutdown().await;
            report
        }
    }
    .map_err(ChaosError::Failed)
}

/// Writes `--history` (JSON lines) and `--report` (JSON) when asked.
fn write_files(args: &ChaosArgs, report: &ChaosReport) -> Result<(), ChaosError> {
    if let Some(path) = &args.history {
        let mut text = String::new();
        for op in &report.history {
            let line = serde_json::to_string(op)
                .map_err(|e| ChaosError::Failed(format!("cannot encode the history: {e}")))?;
            text.push_str(&line);
            text.push('\n');
        }
        write_file(path, text)?;
    }
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| ChaosError::Failed(format!("cannot encode the report: {e}")))?;
        write_file(path, text)?;
    }
    Ok(())
}

fn write_file(path: &std::path::Path, text: String) -> Result<(), ChaosError> {
    std::fs::write(path, text).map_err(|e| ChaosError::Failed(format!("{}: {e}", path.display())))
}
