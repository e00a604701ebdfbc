//! A rolling restart under load, with zero failed calls. Two runs, each
//! with a bounded load of keyed calls (count and time bounded) while every
//! node is restarted in turn: drain, SIGTERM, start, wait until healthy and
//! Up, rebalance.
//!
//! - The steps driven from here, on three real `minos serve` processes that
//!   know each other by a DNS name (`localhost`, resolved at every
//!   connection, as pods in Kubernetes); clients stop sending to a node
//!   before it is drained, as a Service does once the pod is terminating.
//! - `scripts/cluster.sh rolling-restart` itself; clients keep sending to
//!   every node, and retry a call whose connection failed (refused: never
//!   delivered; or closed before an answer, as when a pooled keep-alive
//!   connection meets the stopping node's close) on the next node with the
//!   same idempotency key, which makes any retry safe.
//!
//! Every call must answer 200 (calls may wait while their session moves)
//! and be applied exactly once; the worst call latency is printed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minos::client::{Client, ClientError, NewSession};
use minos::model::{NodeId, NodeStatus};
use minos::testkit::await_until;
use minos::testkit::process::{ProcessCluster, ProcessOptions};
use serde_json::json;
use tokio::time::Instant;

const NODES: [NodeId; 3] = [1, 2, 3];
const SESSIONS: usize = 24;
const WORKERS: usize = 6;
/// The load's bounds: at most this many calls, and no call started after
/// the restarts are done (or after `LOAD_DEADLINE`).
const MAX_CALLS: u64 = 50_000;
const LOAD_DEADLINE: Duration = Duration::from_secs(180);
/// A call may wait this long for its session (generous: a busy machine).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound of every condition wait.
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time: each one runs three processes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the workers share with the restarting test.
struct Load {
    clients: Vec<Client>,
    /// Retry a call whose connection failed on the next node (same key).
    retry_transport: bool,
    /// Calls retried on another node: connection refused, or closed
    /// before an answer.
    refused: AtomicU64,
    closed: AtomicU64,
    /// The node clients must not send to now (0: none).
    avoid: AtomicU64,
    /// Calls in flight per node (index id - 1).
    in_flight: [AtomicUsize; 3],
    done: AtomicBool,
    started: AtomicU64,
    /// Successful calls per session.
    applied: Vec<AtomicU64>,
    /// (latency, session, node asked) of the slowest call.
    worst: Mutex<(Duration, String, NodeId)>,
    latencies: Mutex<Vec<Duration>>,
    failures: Mutex<Vec<String>>,
}

fn session_id(n: usize) -> String {
    format!("roll-{n}")
}

impl Load {
    /// Picks a node to send to and counts the call in flight there. The
    /// count is raised before `avoid` is read again, so once the test has
    /// set `avoid` and seen the count at zero, no call goes there.
    fn enter(&self, turn: usize) -> NodeId {
        loop {
            for step in 0..NODES.len() {
                let node = NODES[(turn + step) % NODES.len()];
                if self.avoid.load(Ordering::SeqCst) == node {
                    continue;
                }
                self.in_flight[node as usize - 1].fetch_add(1, Ordering::SeqCst);
                if self.avoid.load(Ordering::SeqCst) != node {
                    return node;
                }
                self.in_flight[node as usize - 1].fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn leave(&self, node: NodeId) {
        self.in_flight[node as usize - 1].fetch_sub(1, Ordering::SeqCst);
    }

    async fn worker(self: Arc<Self>, worker: usize) {
        let deadline = Instant::now() + LOAD_DEADLINE;
        let mut turn = worker;
        while !self.done.load(Ordering::SeqCst) && Instant::now() < deadline {
            let n = self.started.fetch_add(1, Ordering::SeqCst);
            if n >= MAX_CALLS {
                break;
            }
            turn += 1;
            let session = (worker + turn * WORKERS) % SESSIONS;
            let id = session_id(session);
            let key = format!("w{worker}-c{n}");
            let msg = json!({"op": "append", "field": "calls", "value": key});
            let begun = Instant::now();
            let (result, node) = loop {
                let node = self.enter(turn);
                let result = self.clients[node as usize - 1]
                    .call_with_key(&id, &msg, Some(CALL_TIMEOUT), Some(&key))
                    .await;
                self.leave(node);
                match &result {
                    Err(e @ ClientError::Transport { .. })
                        if self.retry_transport && begun.elapsed() < CALL_TIMEOUT =>
                    {
                        let counter = if e.is_connect() {
                            &self.refused
                        } else {
                            &self.closed
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        turn += 1;
                    }
                    _ => break (result, node),
                }
            };
            let took = begun.elapsed();
            match result {
                Ok(_) => {
                    self.applied[session].fetch_add(1, Ordering::SeqCst);
                    self.latencies.lock().unwrap().push(took);
                    let mut worst = self.worst.lock().unwrap();
                    if took > worst.0 {
                        *worst = (took, id, node);
                    }
                }
                Err(e) => self.failures.lock().unwrap().push(format!(
                    "call {key} to {id} through node {node} after {took:?}: {e}"
                )),
            }
        }
    }
}

/// Waits until `node` (asked through `via`) shows `target` with `status`.
async fn await_status(
    via: &Client,
    target: NodeId,
    status: NodeStatus,
    deadline: Instant,
) -> Result<(), String> {
    let within = deadline.saturating_duration_since(Instant::now());
    await_until("a node status", within, || async {
        let view = via.cluster().await.ok()?;
        view.nodes
            .iter()
            .any(|n| n.id == target && n.status == status)
            .then_some(())
    })
    .await
    .map_err(|_| format!("node {target} not {status:?} in time"))
}

/// Restarts `node` as `scripts/cluster.sh rolling-restart` does, after
/// turning the load away from it.
async fn restart_one(
    cluster: &mut ProcessCluster,
    load: &Load,
    node: NodeId,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    let via = cluster.client(if node == 1 { 2 } else { 1 });
    load.avoid.store(node, Ordering::SeqCst);
    await_until("calls to the node to end", WAIT, || async {
        (load.in_flight[node as usize - 1].load(Ordering::SeqCst) == 0).then_some(())
    })
    .await
    .map_err(|_| format!("calls to node {node} did not end"))?;
    let report = via
        .drain(node)
        .await
        .map_err(|e| format!("drain {node}: {e}"))?;
    eprintln!("node {node}: drained ({} sessions moved)", report.moved);
    cluster.term(node).await?;
    cluster.launch(node)?;
    cluster.await_healthy(node, deadline).await?;
    await_status(&via, node, NodeStatus::Up, deadline).await?;
    let report = via
        .rebalance()
        .await
        .map_err(|e| format!("rebalance after {node}: {e}"))?;
    eprintln!(
        "node {node}: restarted, healthy, Up; rebalance moved {}",
        report.moved
    );
    load.avoid.store(0, Ordering::SeqCst);
    Ok(())
}

/// Creates the sessions and starts the workers.
async fn start_load(
    clients: Vec<Client>,
    retry_transport: bool,
) -> Result<(Arc<Load>, Vec<tokio::task::JoinHandle<()>>), String> {
    for n in 0..SESSIONS {
        clients[0]
            .create_session(&NewSession {
                id: session_id(n),
                kind: Some("kv".into()),
                state: Some(json!({"calls": []})),
            })
            .await
            .map_err(|e| format!("create: {e}"))?;
    }
    let load = Arc::new(Load {
        clients,
        retry_transport,
        refused: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        avoid: AtomicU64::new(0),
        in_flight: Default::default(),
        done: AtomicBool::new(false),
        started: AtomicU64::new(0),
        applied: (0..SESSIONS).map(|_| AtomicU64::new(0)).collect(),
        worst: Mutex::new((Duration::ZERO, String::new(), 0)),
        latencies: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
    });
    let workers = (0..WORKERS)
        .map(|w| tokio::spawn(load.clone().worker(w)))
        .collect();
    // Some load before the first restart.
    let _ = await_until("some load", WAIT, || async {
        (load.started.load(Ordering::SeqCst) >= 200).then_some(())
    })
    .await;
    Ok((load, workers))
}

/// Stops the load after `restarted` and checks it: every call answered
/// 200, and applied exactly once.
async fn finish(
    what: &str,
    load: Arc<Load>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    restarted: Result<Duration, String>,
) -> Result<(), String> {
    load.done.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }
    let restart_time = restarted?;
    let failures = load.failures.lock().unwrap().clone();
    let mut latencies = load.latencies.lock().unwrap().clone();
    latencies.sort();
    let calls = latencies.len();
    let at = |q: f64| {
        let i = ((calls as f64 * q) as usize).min(calls.saturating_sub(1));
        latencies.get(i).copied().unwrap_or_default()
    };
    let (worst, worst_session, worst_node) = load.worst.lock().unwrap().clone();
    eprintln!(
        "{what}: rolling restart of {} nodes in {restart_time:?} under load: {calls} calls answered 200, \
         {} failed; retried on another node: {} refused connections, {} closed before an answer; \
         latency p50 {:?}, p99 {:?}, p99.9 {:?}, worst {worst:?} ({worst_session} through node {worst_node})",
        NODES.len(),
        failures.len(),
        load.refused.load(Ordering::SeqCst),
        load.closed.load(Ordering::SeqCst),
        at(0.5),
        at(0.99),
        at(0.999),
    );
    if !failures.is_empty() {
        return Err(format!(
            "{} calls failed; first ones:\n{}",
            failures.len(),
            failures[..failures.len().min(10)].join("\n")
        ));
    }
    if calls < 200 {
        return Err(format!("only {calls} calls ran: no load to speak of"));
    }
    // Every answered call was applied exactly once, none lost in a move.
    for n in 0..SESSIONS {
        let view = load.clients[0]
            .get_session(&session_id(n))
            .await
            .map_err(|e| format!("get: {e}"))?;
        let stored = view.state["calls"].as_array().map_or(0, Vec::len) as u64;
        let answered = load.applied[n].load(Ordering::SeqCst);
        if stored != answered {
            return Err(format!(
                "{}: {answered} calls answered, {stored} applied",
                session_id(n)
            ));
        }
    }
    Ok(())
}

async fn run(cluster: &mut ProcessCluster) -> Result<(), String> {
    let clients = NODES.iter().map(|id| cluster.client(*id)).collect();
    let (load, workers) = start_load(clients, false).await?;
    let leader = cluster.await_leader(Instant::now() + WAIT).await;
    let began = Instant::now();
    let restarted = async {
        // The leader last, as cluster.sh does: one election fewer.
        let leader = leader?;
        let mut order: Vec<NodeId> = NODES.iter().copied().filter(|n| *n != leader).collect();
        order.push(leader);
        for node in order {
            restart_one(cluster, &load, node).await?;
        }
        Ok(began.elapsed())
    }
    .await;
    finish("steps driven by the test", load, workers, restarted).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_under_load_fails_no_call() {
    let _serial = SERIAL.lock().await;
    let mut options = ProcessOptions::new(env!("CARGO_BIN_EXE_minos"));
    options.peer_host = Some("localhost".into());
    let mut cluster = ProcessCluster::start(options)
        .await
        .expect("cluster starts");
    let result = run(&mut cluster).await;
    if let Err(e) = result {
        let logs: Vec<String> = cluster
            .ids()
            .into_iter()
            .map(|id| format!("--- node {id} log:\n{}", cluster.log_tail(id, 40)))
            .collect();
        panic!("{e}\n{}", logs.join("\n"));
    }
}

/// A cluster of `scripts/cluster.sh`, stopped at once when dropped.
struct ScriptCluster {
    dir: tempfile::TempDir,
    base: u16,
}

impl ScriptCluster {
    /// A port base whose three ports are free, below the ephemeral range
    /// and apart from other tests' (derived from this process's id).
    fn free_base() -> Option<u16> {
        let span = 1_000u32;
        let first = std::process::id() % span;
        (0..span)
            .map(|step| 20_000 + ((first + step * 7) % span) as u16 * 10 + 3)
            .find(|base| {
                let held: Vec<_> = (1..=3)
                    .filter_map(|n| std::net::TcpListener::bind(("127.0.0.1", base + n)).ok())
                    .collect();
                held.len() == 3
            })
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
        let mut command = tokio::process::Command::new(script);
        for (key, _) in std::env::vars() {
            if key.starts_with("MINOS_") {
                command.env_remove(key);
            }
        }
        command
            .args(args)
            .env("MINOS_BIN", env!("CARGO_BIN_EXE_minos"))
            .env("MINOS_PORT_BASE", self.base.to_string())
            .env("MINOS_CLUSTER_DIR", self.dir.path())
            .env("MINOS_START_TIMEOUT", WAIT.as_secs().to_string())
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null());
        command
    }

    async fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command(args)
            .output()
            .await
            .map_err(|e| format!("cluster.sh {args:?}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("cluster.sh {args:?} failed:\n{text}"))
        }
    }

    fn client(&self, node: NodeId) -> Client {
        let token =
            std::fs::read_to_string(self.dir.path().join("admin.token")).unwrap_or_default();
        Client::new(format!("127.0.0.1:{}", self.base + node as u16)).with_token(token.trim())
    }

    fn logs(&self) -> String {
        NODES
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                format!(
                    "--- node {n} log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let _ = self.command(&["stop", "--now"]).as_std_mut().output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_sh_rolling_restart_under_load_fails_no_call() {
    let _serial = SERIAL.lock().await;
    // cluster.sh waits for health with curl.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: curl is not installed (scripts/cluster.sh needs it)");
        return;
    }
    let cluster = ScriptCluster {
        dir: tempfile::tempdir().unwrap(),
        base: ScriptCluster::free_base().expect("three free ports"),
    };
    let result = async {
        cluster.run(&["start"]).await?;
        let clients = NODES.iter().map(|n| cluster.client(*n)).collect();
        let (load, workers) = start_load(clients, true).await?;
        let began = Instant::now();
        let restarted = cluster.run(&["rolling-restart"]).await;
        if let Ok(out) = &restarted {
            eprint!("{out}");
        }
        finish(
            "scripts/cluster.sh",
            load,
            workers,
            restarted.map(|_| began.elapsed()),
        )
        .await?;
        let out = cluster.run(&["stop"]).await?;
        if !out.contains("one after another") {
            return Err(format!("stop did not say how it stopped:\n{out}"));
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e}\n{}", cluster.logs());
    }
}
