//! `minos bench failover`: how long a session is unavailable when its node
//! stops, crashes, freezes, or is the leader and crashes.
//!
//! The benchmark starts its own cluster of real `minos serve` processes on
//! loopback ports chosen by the OS ([`ProcessCluster`]), creates `kv`
//! sessions with committed state, and runs trials. One trial:
//!
//! 1. restore: every node runs and is Up, sessions are rebalanced so the
//!    victim owns some, and one `append` per session is acknowledged (the
//!    reply names the owner and epoch the session runs under right now);
//! 2. (crash mode) a few fresh sessions are created on the victim, with no
//!    settling time;
//! 3. the victim gets its signal; from that instant every session it owned
//!    is polled concurrently through the surviving nodes with `{"op":"get"}`
//!    until a reply comes from a different owner under a higher epoch. That
//!    delay is the sample; the reply's state must equal the acknowledged one;
//! 4. a session not back within the cap is lost; two replies for one
//!    session and epoch from different owners are a double owner. Both stay
//!    in the statistics and fail the run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::report::{
    DoubleOwner, ModeReport, Report, RunReport, Sample, TimingRecord, WriteSample,
};
use super::BenchError;
use crate::client::{Client, ClientError, NewSession};
use crate::config::{Timing, TimingFlags};
use crate::model::{NodeId, NodeStatus, SessionId};
use crate::placement;
use crate::testkit::process::{ProcessCluster, ProcessOptions, Signal};

/// How a node is taken away in a trial.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// SIGTERM of a non-leader owner: it hands its sessions over, then exits.
    Graceful,
    /// SIGKILL of a non-leader owner, just after fresh sessions were placed on it.
    Crash,
    /// SIGKILL of the leader (which owns sessions too).
    LeaderCrash,
    /// SIGSTOP of a non-leader owner (SIGCONT after the trial): only the
    /// lease timeout can tell.
    Freeze,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: [Mode; 4] = [Mode::Graceful, Mode::Crash, Mode::LeaderCrash, Mode::Freeze];

    /// The name used by `--mode` and the reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Graceful => "graceful",
            Mode::Crash => "crash",
            Mode::LeaderCrash => "leader-crash",
            Mode::Freeze => "freeze",
        }
    }

    fn signal(self) -> Signal {
        match self {
            Mode::Graceful => Signal::Term,
            Mode::Crash | Mode::LeaderCrash => Signal::Kill,
            Mode::Freeze => Signal::Stop,
        }
    }
}

/// Flags of `minos bench failover`.
#[derive(clap::Args, Clone, Debug)]
pub struct FailoverArgs {
    /// Sessions created before the trials (each owned by one node).
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Trials per mode.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Mode to run (repeatable; default: all four).
    #[arg(long = "mode", value_enum)]
    pub modes: Vec<Mode>,
    /// A session not answering from a new owner this long after the signal is lost.
    #[arg(long, default_value_t = 10_000)]
    pub cap_ms: u64,
    /// Timeout of each polling call (the node routing it waits this long while the session moves).
    #[arg(long, default_value_t = 200)]
    pub call_timeout_ms: u64,
    /// Interval between two polls of one session.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub poll_ms: u64,
    /// Crash mode: sessions created on the victim just before each kill.
    #[arg(long, default_value_t = 5)]
    pub fresh_sessions: usize,
    /// Keyed appends sent per trial right after the signal, to sessions of
    /// the victim, with a 5 s timeout: each must answer 200 and be applied
    /// exactly once (0: none).
    #[arg(long, default_value_t = 10)]
    pub keyed_writes: usize,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=9))]
    pub nodes: u64,
    /// The `minos` binary to run as nodes (default: this executable).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Write the configuration and every raw sample here, as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a latency CDF per mode here, as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Keep node data and logs under this directory (default: a temporary one, removed).
    #[arg(long)]
    pub keep_logs: Option<PathBuf>,
    /// Passed to `minos serve --heartbeat-ms`.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Passed to `minos serve --election-timeout-min-ms`.
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// Passed to `minos serve --election-timeout-max-ms`.
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// Passed to `minos serve --lease-ms`.
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Passed to `minos serve --node-timeout-ms`.
    #[arg(long)]
    pub node_timeout_ms: Option<u64>,
    /// Repeat the whole run once per node timeout (ms), e.g. `400,800,1600`.
    #[arg(long, value_delimiter = ',', conflicts_with = "node_timeout_ms")]
    pub sweep_node_timeout: Vec<u64>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

/// A checked benchmark configuration.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverConfig {
    /// The `minos` binary the nodes run.
    pub bin: PathBuf,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Sessions created up front.
    pub sessions: usize,
    /// Trials per mode.
    pub trials: usize,
    /// Modes, in run order.
    pub modes: Vec<Mode>,
    /// Lost after this long.
    #[serde(rename = "cap_ms", serialize_with = "as_ms")]
    pub cap: Duration,
    /// Timeout of one polling call.
    #[serde(rename = "call_timeout_ms", serialize_with = "as_ms")]
    pub call_timeout: Duration,
    /// Interval between polls of one session.
    #[serde(rename = "poll_interval_ms", serialize_with = "as_ms")]
    pub poll_interval: Duration,
    /// Crash mode: fresh sessions placed on the victim per trial.
    pub fresh_sessions: usize,
    /// Keyed appends per trial (see [`FailoverArgs::keyed_writes`]).
    pub keyed_writes: usize,
    /// Timing flags for every run.
    pub knobs: TimingFlags,
    /// Node timeouts to sweep (empty: one run with `knobs`).
    pub sweep_node_timeout_ms: Vec<u64>,
    /// Where node data and logs are kept.
    pub keep_logs: Option<PathBuf>,
    /// Draw a progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

fn as_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl FailoverConfig {
    /// A short configuration (for `cargo bench` and tests): `sessions`
    /// sessions, `trials` trials of `modes`, default timing.
    pub fn short(bin: PathBuf, sessions: usize, trials: usize, modes: Vec<Mode>) -> Self {
        Self {
            bin,
            nodes: 3,
            sessions,
            trials,
            modes,
            cap: Duration::from_secs(10),
            call_timeout: Duration::from_millis(200),
            poll_interval: Duration::from_millis(5),
            fresh_sessions: 5,
            keyed_writes: 10,
            knobs: TimingFlags::default(),
            sweep_node_timeout_ms: Vec::new(),
            keep_logs: None,
            progress: true,
        }
    }

    /// The knobs of each run: one per swept node timeout, or just `knobs`.
    pub fn runs(&self) -> Vec<TimingFlags> {
        if self.sweep_node_timeout_ms.is_empty() {
            return vec![self.knobs.clone()];
        }
        self.sweep_node_timeout_ms
            .iter()
            .map(|ms| TimingFlags {
                node_timeout_ms: Some(*ms),
                ..self.knobs.clone()
            })
            .collect()
    }

    /// Checks the configuration; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.sessions == 0 {
            return Err("--sessions must be at least 1".into());
        }
        if self.trials == 0 {
            return Err("--trials must be at least 1".into());
        }
        if self.modes.is_empty() {
            return Err("no --mode to run".into());
        }
        if self.nodes < 3 {
            return Err("--nodes must be at least 3 (a quorum must survive the victim)".into());
        }
        if self.cap.is_zero() || self.call_timeout.is_zero() || self.poll_interval.is_zero() {
            return Err("--cap-ms, --call-timeout-ms and --poll-ms must be positive".into());
        }
        if self.poll_interval > Duration::from_millis(5) {
            return Err("--poll-ms must be at most 5".into());
        }
        for knobs in self.runs() {
            Timing::from_flags(&knobs).map_err(|e| format!("timing flags: {e}"))?;
        }
        if !self.bin.is_file() {
            return Err(format!(
                "no minos binary at {} (build it with `cargo build --release --bin minos`, or pass --bin)",
                self.bin.display()
            ));
        }
        Ok(())
    }
}

impl FailoverArgs {
    /// Checks the flags and turns them into a configuration.
    pub fn into_config(self) -> Result<FailoverConfig, BenchError> {
        let bin = match self.bin {
            Some(bin) => bin,
            None => std::env::current_exe()
                .map_err(|e| BenchError::Usage(format!("cannot locate this executable: {e}")))?,
        };
        let mut modes = if self.modes.is_empty() {
            Mode::ALL.to_vec()
        } else {
            self.modes
        };
        modes.sort();
        modes.dedup();
        let config = FailoverConfig {
            bin,
            nodes: self.nodes,
            sessions: self.sessions,
            trials: self.trials,
            modes,
            cap: Duration::from_millis(self.cap_ms),
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            poll_interval: Duration::from_millis(self.poll_ms),
            fresh_sessions: self.fresh_sessions,
            keyed_writes: self.keyed_writes,
            knobs: TimingFlags {
                heartbeat_ms: self.heartbeat_ms,
                election_timeout_min_ms: self.election_timeout_min_ms,
                election_timeout_max_ms: self.election_timeout_max_ms,
                lease_ms: self.lease_ms,
                node_timeout_ms: self.node_timeout_ms,
            },
            sweep_node_timeout_ms: self.sweep_node_timeout,
            keep_logs: self.keep_logs,
            progress: !self.no_progress,
        };
        config.validate().map_err(BenchError::Usage)?;
        Ok(config)
    }
}

/// Runs the benchmark: one cluster per run (per swept node timeout), every
/// mode and trial on it. Infrastructure failures (a cluster that does not
/// start or heal) are errors; lost sessions and double owners are in the
/// report.
pub async fn run(config: &FailoverConfig) -> Result<Report, BenchError> {
    config.validate().map_err(BenchError::Usage)?;
    let runs = config.runs();
    let total = (runs.len() * config.modes.len() * config.trials) as u64;
    let progress = if config.progress {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} trials  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = Report::new(config);
    for knobs in runs {
        let timing = Timing::from_flags(&knobs)
            .map_err(|e| BenchError::Usage(format!("timing flags: {e}")))?;
        let label = match knobs.node_timeout_ms {
            Some(ms) => format!("node timeout {ms} ms"),
            None => format!("node timeout {} ms", timing.node_timeout.as_millis()),
        };
        say(
            &progress,
            &format!("--- starting a {}-node cluster ({label})", config.nodes),
        );
        let mut bench = Bench::start(config, &knobs, &progress).await?;
        let mut modes = Vec::new();
        for mode in &config.modes {
            let mut mode_report = ModeReport::new(*mode);
            for trial in 0..config.trials {
                progress.set_message(format!("{label}: {} trial {}", mode.name(), trial + 1));
                let outcome = bench.trial(*mode, trial).await;
                match outcome {
                    Ok(outcome) => {
                        say(&progress, &outcome.describe(*mode, trial));
                        mode_report.absorb(outcome);
                    }
                    Err(e) => {
                        progress.abandon();
                        return Err(BenchError::Failed(format!(
                            "{} trial {}: {e}\n{}",
                            mode.name(),
                            trial + 1,
                            bench.logs()
                        )));
                    }
                }
                progress.inc(1);
            }
            modes.push(mode_report);
        }
        report.runs.push(RunReport {
            node_timeout_ms: timing.node_timeout.as_millis() as u64,
            knobs: knobs.clone(),
            timing: TimingRecord::from(&timing),
            modes,
        });
    }
    progress.finish_and_clear();
    Ok(report)
}

/// Narration on stderr that does not tear the progress bar.
fn say(progress: &ProgressBar, line: &str) {
    if progress.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.println(line);
    }
}

/// What one session looked like just before the signal.
#[derive(Clone, Debug)]
struct Target {
    id: String,
    epoch: u64,
    expected: Value,
    fresh: bool,
}

/// Every `(session, epoch) -> owner` seen in any reply of the run.
#[derive(Default)]
struct Ledger {
    seen: Mutex<BTreeMap<(String, u64), NodeId>>,
}

impl Ledger {
    /// Records a reply; returns the other owner if this is a double owner.
    fn observe(&self, session: &str, epoch: u64, owner: NodeId) -> Option<NodeId> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let first = *seen.entry((session.to_string(), epoch)).or_insert(owner);
        (first != owner).then_some(first)
    }
}

/// The samples and anomalies of one trial.
pub(crate) struct TrialOutcome {
    pub victim: NodeId,
    pub leader: NodeId,
    pub samples: Vec<Sample>,
    pub double_owners: Vec<DoubleOwner>,
    pub writes: Vec<WriteSample>,
}

impl TrialOutcome {
    fn describe(&self, mode: Mode, trial: usize) -> String {
        let back: Vec<f64> = self.samples.iter().filter_map(|s| s.latency_ms).collect();
        let lost = self.samples.len() - back.len();
        let max = back.iter().copied().fold(0.0, f64::max);
        let mut line = format!(
            "{} trial {:>2}: victim node {} (leader {}), {} sessions, slowest {:.1} ms",
            mode.name(),
            trial + 1,
            self.victim,
            self.leader,
            self.samples.len(),
            max
        );
        if lost > 0 {
            line.push_str(&format!(", {lost} LOST"));
        }
        let wrong = self
            .samples
            .iter()
            .filter(|s| s.state_ok == Some(false))
            .count();
        if wrong > 0 {
            line.push_str(&format!(", {wrong} WRONG STATE"));
        }
        if !self.double_owners.is_empty() {
            line.push_str(&format!(", {} DOUBLE OWNERS", self.double_owners.len()));
        }
        line
    }
}

/// A running benchmark cluster and what the benchmark knows of its sessions.
struct Bench<'a> {
    config: &'a FailoverConfig,
    cluster: ProcessCluster,
    clients: BTreeMap<NodeId, Client>,
    /// Acknowledged values appended to each long-lived session.
    values: BTreeMap<String, Vec<Value>>,
    ledger: Arc<Ledger>,
}

/// Setup and restore waits: long enough for a restart on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);
/// Timeout of each keyed write (the client's default call timeout).
const KEYED_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of setup calls (not measured).
const SETUP_CALL: Duration = Duration::from_secs(5);

fn kv_get() -> Value {
    json!({"op": "get"})
}

fn client_error(e: ClientError) -> String {
    e.to_string()
}

impl<'a> Bench<'a> {
    async fn start(
        config: &'a FailoverConfig,
        knobs: &TimingFlags,
        progress: &ProgressBar,
    ) -> Result<Bench<'a>, BenchError> {
        let mut options = ProcessOptions::new(&config.bin);
        options.nodes = config.nodes;
        options.serve_args = knobs.serve_args();
        options.start_timeout = SETTLE;
        if let Some(dir) = &config.keep_logs {
            let name = format!(
                "nt-{}",
                knobs
                    .node_timeout_ms
                    .map(|ms| ms.to_string())
                    .unwrap_or("default".into())
            );
            let dir = dir.join(name);
            // A kept directory from an earlier run would carry its Raft log.
            let _ = std::fs::remove_dir_all(&dir);
            options.dir = Some(dir);
        }
        let mut cluster = ProcessCluster::start(options)
            .await
            .map_err(|e| BenchError::Failed(format!("cluster did not start: {e}")))?;
        let leader = cluster
            .await_leader(Instant::now() + SETTLE)
            .await
            .map_err(BenchError::Failed)?;
        say(
            progress,
            &format!(
                "    nodes {} (logs in {}), leader {leader}",
                cluster.peers(),
                cluster.dir().display()
            ),
        );
        let clients = cluster
            .ids()
            .into_iter()
            .map(|id| (id, cluster.client(id)))
            .collect();
        let mut bench = Bench {
            config,
            cluster,
            clients,
            values: BTreeMap::new(),
            ledger: Arc::new(Ledger::default()),
        };
        bench.create_sessions().await.map_err(BenchError::Failed)?;
        say(
            progress,
            &format!(
                "    {} kv sessions created, each with one acknowledged append",
                config.sessions
            ),
        );
        Ok(bench)
    }

    fn logs(&self) -> String {
        self.cluster
            .ids()
            .into_iter()
            .map(|id| format!("--- node {id} log tail:\n{}", self.cluster.log_tail(id, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn client_for(&self, index: usize, avoid: Option<NodeId>) -> Client {
        let usable: Vec<&Client> = self
            .clients
            .iter()
            .filter(|(id, _)| Some(**id) != avoid)
            .map(|(_, c)| c)
            .collect();
        usable[index % usable.len()].clone()
    }

    async fn create_sessions(&mut self) -> Result<(), String> {
        let ids: Vec<String> = (0..self.config.sessions)
            .map(|i| format!("bench-{i:05}"))
            .collect();
        let creates = ids.iter().enumerate().map(|(i, id)| {
            let client = self.client_for(i, None);
            let id = id.clone();
            async move {
                let session = NewSession {
                    id: id.clone(),
                    kind: Some("kv".into()),
                    state: Some(json!({"v": []})),
                };
                client
                    .create_session(&session)
                    .await
                    .map_err(|e| format!("creating {id}: {e}"))
            }
        });
        for result in join_all(creates).await {
            result?;
        }
        for id in ids {
            self.values.insert(id, Vec::new());
        }
        self.append_round("init").await?;
        Ok(())
    }

    /// Appends `value` to every long-lived session; returns each session's
    /// owner and epoch as its reply names them.
    async fn append_round(
        &mut self,
        value: &str,
    ) -> Result<BTreeMap<String, (NodeId, u64)>, String> {
        let ids: Vec<String> = self.values.keys().cloned().collect();
        let calls = ids.iter().enumerate().map(|(i, id)| {
            let client = self.client_for(i, None);
            let id = id.clone();
            let msg = json!({"op": "append", "field": "v", "value": value});
            async move {
                let appended = client.call(&id, &msg, Some(SETUP_CALL)).await;
                let resync = match &appended {
                    Ok(_) => None,
                    // The append may or may not have been applied: read what is.
                    Err(_) => Some(client.call(&id, &kv_get(), Some(SETUP_CALL)).await),
                };
                (id, appended, resync)
            }
        });
        let mut owners = BTreeMap::new();
        for (id, appended, resync) in join_all(calls).await {
            let reply = match (appended, resync) {
                (Ok(reply), _) => {
                    if let Some(values) = self.values.get_mut(&id) {
                        values.push(Value::String(value.to_string()));
                    }
                    reply
                }
                (Err(_), Some(Ok(reply))) => {
                    let values = reply
                        .reply
                        .get("v")
                        .and_then(Value::as_array)
                        .cloned()
                        .ok_or(format!("{id}: state without a v array: {}", reply.reply))?;
                    self.values.insert(id.clone(), values);
                    reply
                }
                (Err(e), resync) => {
                    let again = resync
                        .and_then(|r| r.err())
                        .map(client_error)
                        .unwrap_or_default();
                    return Err(format!(
                        "append to {id} failed: {e}; reading it back: {again}"
                    ));
                }
            };
            self.ledger.observe(&id, reply.epoch.0, reply.owner);
            owners.insert(id, (reply.owner, reply.epoch.0));
        }
        Ok(owners)
    }

    async fn leader(&mut self) -> Result<NodeId, String> {
        self.cluster.await_leader(Instant::now() + SETTLE).await
    }

    /// Waits until every node runs, the leader's table shows all of them Up,
    /// and (after a rebalance) the sessions sit on their placement choice.
    async fn restore(&mut self) -> Result<NodeId, String> {
        let deadline = Instant::now() + SETTLE;
        for id in self.cluster.ids() {
            if !self.cluster.is_running(id) {
                self.cluster.restart(id).await?;
            }
            self.cluster.await_healthy(id, deadline).await?;
        }
        let all = self.cluster.ids();
        loop {
            let leader = self.leader().await?;
            if let Ok(view) = self.clients[&leader].cluster().await {
                let up = all.iter().all(|id| {
                    view.nodes
                        .iter()
                        .any(|n| n.id == *id && n.status == NodeStatus::Up)
                });
                if up && view.leader == Some(leader) {
                    if let Ok(report) = self.clients[&leader].rebalance().await {
                        if report.skipped == 0 {
                            return Ok(leader);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err("the cluster did not heal in time (all nodes Up, rebalanced)".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Creates fresh sessions whose placement is `victim`; returns them.
    async fn fresh_on(
        &mut self,
        victim: NodeId,
        leader: NodeId,
        mode: Mode,
        trial: usize,
    ) -> Result<Vec<Target>, String> {
        let eligible = self.cluster.ids();
        let mut ids = Vec::new();
        let mut n = 0usize;
        while ids.len() < self.config.fresh_sessions && n < 100_000 {
            let id = format!("fresh-{}-{trial}-{n}", mode.name());
            n += 1;
            let session = SessionId::new(id.clone()).map_err(|e| e.to_string())?;
            if placement::place(&session, &eligible) == Some(victim) {
                ids.push(id);
            }
        }
        let client = self.clients[&leader].clone();
        let creates = ids.into_iter().map(|id| {
            let client = client.clone();
            async move {
                let state = json!({"v": ["fresh"]});
                let session = NewSession {
                    id: id.clone(),
                    kind: Some("kv".into()),
                    state: Some(state.clone()),
                };
                client
                    .create_session(&session)
                    .await
                    .map(|view| (view, state))
                    .map_err(|e| format!("creating {id}: {e}"))
            }
        });
        let mut targets = Vec::new();
        for result in join_all(creates).await {
            let (view, state) = result?;
            if view.owner == Some(victim) {
                targets.push(Target {
                    id: view.id,
                    epoch: view.epoch,
                    expected: state,
                    fresh: true,
                });
            }
        }
        Ok(targets)
    }

    async fn trial(&mut self, mode: Mode, trial: usize) -> Result<TrialOutcome, String> {
        let leader = self.restore().await?;
        let owners = self
            .append_round(&format!("{}-{}", mode.name(), trial + 1))
            .await?;
        // The append round may have run while leadership moved; ask again.
        let leader = {
            let now = self.leader().await?;
            if now != leader {
                self.restore().await?
            } else {
                now
            }
        };
        let mut owned: BTreeMap<NodeId, usize> = BTreeMap::new();
        for (owner, _) in owners.values() {
            *owned.entry(*owner).or_default() += 1;
        }
        let victim = match mode {
            Mode::LeaderCrash => leader,
            _ => {
                let candidates: Vec<NodeId> = self
                    .cluster
                    .ids()
                    .into_iter()
                    .filter(|id| *id != leader && owned.get(id).copied().unwrap_or(0) > 0)
                    .collect();
                if candidates.is_empty() {
                    return Err("no non-leader node owns a session".into());
                }
                candidates[trial % candidates.len()]
            }
        };
        let mut targets: Vec<Target> = owners
            .iter()
            .filter(|(_, (owner, _))| *owner == victim)
            .map(|(id, (_, epoch))| Target {
                id: id.clone(),
                epoch: *epoch,
                expected: json!({ "v": self.values[id] }),
                fresh: false,
            })
            .collect();
        let fresh = if mode == Mode::Crash {
            self.fresh_on(victim, leader, mode, trial).await?
        } else {
            Vec::new()
        };
        let fresh_ids: Vec<String> = fresh.iter().map(|t| t.id.clone()).collect();
        targets.extend(fresh);

        let survivors: Vec<Client> = self
            .clients
            .iter()
            .filter(|(id, _)| **id != victim)
            .map(|(_, c)| c.clone())
            .collect();
        let write_targets: Vec<String> = targets
            .iter()
            .filter(|t| !t.fresh)
            .take(self.config.keyed_writes)
            .map(|t| t.id.clone())
            .collect();
        let signalled_at = Instant::now();
        let signalled_wall = chrono::Utc::now();
        self.cluster.signal(victim, mode.signal())?;
        let writes: Vec<_> = write_targets
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let client = survivors[(i + 1) % survivors.len()].clone();
                let (id, value) = (id.clone(), format!("t{}-{mode:?}", trial + 1));
                tokio::spawn(async move {
                    let msg = json!({"op": "append", "field": "writes", "value": value});
                    let answer = client.call(&id, &msg, Some(KEYED_WRITE_TIMEOUT)).await;
                    let latency_ms = signalled_at.elapsed().as_secs_f64() * 1000.0;
                    let error = answer.err().map(|e| match e.code() {
                        Some(code) => code.to_string(),
                        None => e.to_string(),
                    });
                    (id, value, latency_ms, error)
                })
            })
            .collect();
        let pollers: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let poll = Poll {
                    client: survivors[i % survivors.len()].clone(),
                    victim,
                    signalled_at,
                    cap: self.config.cap,
                    call_timeout: self.config.call_timeout,
                    interval: self.config.poll_interval,
                    ledger: self.ledger.clone(),
                };
                tokio::spawn(async move { poll.run(target).await })
            })
            .collect();
        let mut samples = Vec::new();
        let mut double_owners = Vec::new();
        for poller in pollers {
            let (mut sample, doubles) = poller.await.map_err(|e| format!("poller died: {e}"))?;
            sample.trial = trial + 1;
            sample.leader = leader;
            sample.signalled_at =
                signalled_wall.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            for mut double in doubles {
                double.trial = trial + 1;
                double_owners.push(double);
            }
            samples.push(sample);
        }
        let mut write_samples = Vec::new();
        for write in writes {
            let (id, value, latency_ms, error) =
                write.await.map_err(|e| format!("keyed writer died: {e}"))?;
            let applied = match survivors[0].get_session(&id).await {
                Ok(session) => Some(
                    session.state["writes"]
                        .as_array()
                        .map_or(0, |a| a.iter().filter(|v| **v == json!(value)).count()),
                ),
                Err(_) => None,
            };
            write_samples.push(WriteSample {
                trial: trial + 1,
                session: id,
                latency_ms,
                error,
                applied,
            });
        }

        // Put the victim back for the next trial.
        match mode {
            Mode::Graceful => self.cluster.await_exit(victim, SETTLE).await?,
            Mode::Crash | Mode::LeaderCrash => self.cluster.await_exit(victim, SETTLE).await?,
            Mode::Freeze => self.cluster.signal(victim, Signal::Cont)?,
        }
        if !fresh_ids.is_empty() {
            self.restore().await?;
            let leader_now = self.leader().await?;
            let client = self.clients[&leader_now].clone();
            for id in &fresh_ids {
                client.delete_session(id).await.map_err(client_error)?;
            }
        }
        Ok(TrialOutcome {
            victim,
            leader,
            samples,
            double_owners,
            writes: write_samples,
        })
    }
}

/// Polls one session after the signal until a new owner answers.
struct Poll {
    client: Client,
    victim: NodeId,
    signalled_at: Instant,
    cap: Duration,
    call_timeout: Duration,
    interval: Duration,
    ledger: Arc<Ledger>,
}

impl Poll {
    async fn run(self, target: Target) -> (Sample, Vec<DoubleOwner>) {
        let deadline = self.signalled_at + self.cap;
        let mut sample = Sample {
            trial: 0,
            session: target.id.clone(),
            fresh: target.fresh,
            victim: self.victim,
            leader: 0,
            signalled_at: String::new(),
            epoch_before: target.epoch,
            latency_ms: None,
            owner_after: None,
            epoch_after: None,
            state_ok: None,
            polls: 0,
            errors: 0,
            last_error: None,
        };
        let mut doubles = Vec::new();
        let msg = kv_get();
        loop {
            let started = Instant::now();
            if started >= deadline {
                break;
            }
            let budget = self.call_timeout.min(deadline - started);
            sample.polls += 1;
            match self.client.call(&target.id, &msg, Some(budget)).await {
                Ok(reply) => {
                    let answered = Instant::now();
                    let epoch = reply.epoch.0;
                    if let Some(other) = self.ledger.observe(&target.id, epoch, reply.owner) {
                        doubles.push(DoubleOwner {
                            trial: 0,
                            session: target.id.clone(),
                            epoch,
                            owners: [other, reply.owner],
                        });
                    }
                    if reply.owner != self.victim && epoch > target.epoch {
                        sample.latency_ms =
                            Some((answered - self.signalled_at).as_secs_f64() * 1000.0);
                        sample.owner_after = Some(reply.owner);
                        sample.epoch_after = Some(epoch);
                        // Keyed writes of the trial add their own field.
                        sample.state_ok = Some(reply.reply["v"] == target.expected["v"]);
                        if sample.state_ok == Some(false) {
                            sample.last_error = Some(format!(
                                "state after failover {} differs from the acknowledged {}",
                                reply.reply, target.expected
                            ));
                        }
                        break;
                    }
                }
                Err(e) => {
                    sample.errors += 1;
                    sample.last_error = Some(match e.code() {
                        Some(code) => code.to_string(),
                        None => e.to_string(),
                    });
                }
            }
            let next = (started + self.interval).min(deadline);
            tokio::time::sleep_until(next).await;
        }
        (sample, doubles)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The double-owner ledger flags a second owner for a (session, epoch)
    // pair and only that: repeats of one owner and new epochs are fine.
    #[test]
    fn ledger_flags_two_owners_of_one_epoch() {
        let ledger = Ledger::default();
        assert_eq!(ledger.observe("s", 1, 2), None);
        assert_eq!(ledger.observe("s", 1, 2), None);
        assert_eq!(ledger.observe("s", 2, 3), None);
        assert_eq!(ledger.observe("t", 1, 3), None);
        assert_eq!(ledger.observe("s", 1, 3), Some(2));
        assert_eq!(ledger.observe("s", 2, 1), Some(3));
    }

    // Timing flags reach `minos serve` unchanged and derive the same timing
    // as its flag parser, unsafe ones are refused, and a sweep makes one run
    // per node timeout: checked against config::Timing's own derivation.
    #[test]
    fn timing_flags_follow_minos_serve() {
        let knobs = TimingFlags {
            node_timeout_ms: Some(400),
            heartbeat_ms: Some(40),
            ..TimingFlags::default()
        };
        assert_eq!(
            knobs.serve_args(),
            ["--heartbeat-ms", "40", "--node-timeout-ms", "400"]
        );
        let timing = Timing::from_flags(&knobs).expect("safe timing");
        let derived = Timing::with_node_timeout(Duration::from_millis(400));
        assert_eq!(timing.lease_duration, derived.lease_duration);
        assert_eq!(timing.heartbeat, Duration::from_millis(40));
        let unsafe_knobs = TimingFlags {
            election_timeout_min_ms: Some(500),
            ..TimingFlags::default()
        };
        assert!(Timing::from_flags(&unsafe_knobs).is_err());

        let mut config = FailoverConfig::short(PathBuf::from("minos"), 10, 2, vec![Mode::Crash]);
        config.sweep_node_timeout_ms = vec![400, 1600];
        let runs = config.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].node_timeout_ms, Some(1600));
    }

    // Bad configurations are refused with a message naming the flag, before
    // any process starts.
    #[test]
    fn bad_configurations_are_refused() {
        let exe = std::env::current_exe().expect("test binary path");
        let good = FailoverConfig::short(exe, 10, 2, vec![Mode::Crash]);
        assert_eq!(good.validate(), Ok(()));
        let mut zero = good.clone();
        zero.sessions = 0;
        assert!(zero.validate().unwrap_err().contains("--sessions"));
        let mut slow = good.clone();
        slow.poll_interval = Duration::from_millis(50);
        assert!(slow.validate().unwrap_err().contains("--poll-ms"));
        let mut missing = good;
        missing.bin = PathBuf::from("/nonexistent/minos");
        assert!(missing.validate().unwrap_err().contains("no minos binary"));
    }
}
