//! Failover of live sessions between real `minos serve` processes: real
//! binaries, real sled on disk, real signals (SIGTERM, SIGKILL, SIGSTOP and
//! SIGCONT). Every wait is a condition with a deadline; the tests of this
//! file run one at a time (they measure latency on a small shared machine).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use minos::api::ClusterView;
use minos::client::{Client, NewSession};
use minos::model::{Command, Epoch, Move, NodeId, NodeStatus, Rejection, SessionId, SessionKind};
use minos::runtime::CallReply;
use minos::testkit::process::{ProcessCluster, ProcessOptions, Signal};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The three node ids of every cluster here.
const NODES: [NodeId; 3] = [1, 2, 3];
/// A generous per-call timeout: the router waits while a session moves.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of any condition wait.
const WAIT: Duration = Duration::from_secs(20);
/// Seed scenario repetitions per signal.
const SEED_ITERATIONS: usize = 20;

/// One test at a time: each one runs three processes on a two-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

/// The first `count` ids `prefix-0`, `prefix-1`, ... that placement puts on
/// `node` when all three nodes are Up.
fn ids_on(prefix: &str, node: NodeId, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .filter(|id| {
            let session = SessionId::new(id.as_str()).expect("a valid session id");
            minos::placement::place(&session, &NODES) == Some(node)
        })
        .take(count)
        .collect()
}

async fn start_cluster() -> Result<ProcessCluster, String> {
    ProcessCluster::start(ProcessOptions::new(env!("CARGO_BIN_EXE_minos"))).await
}

/// Adds the tail of every node's log to a failure.
fn with_logs(cluster: &ProcessCluster, result: Result<(), String>) -> Result<(), String> {
    result.map_err(|e| {
        let logs: Vec<String> = cluster
            .ids()
            .into_iter()
            .map(|id| format!("--- node {id} log:\n{}", cluster.log_tail(id, 40)))
            .collect();
        format!("{e}\n{}", logs.join("\n"))
    })
}

fn others(node: NodeId) -> Vec<NodeId> {
    NODES.iter().copied().filter(|n| *n != node).collect()
}

fn status_of(view: &ClusterView, node: NodeId) -> Option<minos::api::NodeViewStatus> {
    view.nodes.iter().find(|n| n.id == node).map(|n| n.status)
}

/// Waits until every node in `ask` knows a leader and shows each node of
/// `want` with its status; returns the view of `ask[0]`.
async fn await_statuses(
    cluster: &ProcessCluster,
    ask: &[NodeId],
    want: &[(NodeId, NodeStatus)],
    timeout: Duration,
) -> Result<ClusterView, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    loop {
        let mut views = Vec::new();
        for node in ask {
            match cluster.client(*node).cluster().await {
                Ok(view) => views.push(view),
                Err(e) => last = format!("node {node}: {e}"),
            }
        }
        if views.len() == ask.len() {
            let settled = views.iter().all(|view| {
                view.leader.is_some()
                    && want
                        .iter()
                        .all(|(node, status)| status_of(view, *node) == Some((*status).into()))
            });
            if settled {
                return Ok(views.swap_remove(0));
            }
            last = format!("{views:?}");
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nodes {ask:?} did not show {want:?} within {timeout:?}; last: {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn await_all_up(cluster: &ProcessCluster) -> Result<ClusterView, String> {
    let want: Vec<(NodeId, NodeStatus)> = NODES.iter().map(|n| (*n, NodeStatus::Up)).collect();
    await_statuses(cluster, &NODES, &want, WAIT).await
}

async fn call(
    client: &Client,
    id: &str,
    msg: &Value,
    timeout: Duration,
) -> Result<CallReply, String> {
    client
        .call(id, msg, Some(timeout))
        .await
        .map_err(|e| format!("call {msg} to {id} via {}: {e}", client.addr()))
}

async fn create(
    client: &Client,
    id: &str,
    kind: &str,
    state: Option<Value>,
) -> Result<minos::api::SessionView, String> {
    client
        .create_session(&NewSession {
            id: id.into(),
            kind: Some(kind.into()),
            state,
        })
        .await
        .map_err(|e| format!("create {id} via {}: {e}", client.addr()))
}

/// A call answered by a node other than `old_owner`, and when it arrived.
struct Moved {
    reply: CallReply,
    answered_at: Instant,
    /// Successful replies that still came from `old_owner` before.
    from_old_owner: usize,
}

/// Calls `id` through `client` until a reply comes from a node other than
/// `old_owner` (errors and replies from the old owner are retried).
async fn await_new_owner(
    client: Client,
    id: String,
    old_owner: NodeId,
    msg: Value,
    timeout: Duration,
) -> Result<Moved, String> {
    let deadline = Instant::now() + timeout;
    let mut from_old_owner = 0;
    let mut last = String::from("no call answered");
    for _ in 0..100_000 {
        let budget = deadline.saturating_duration_since(Instant::now());
        if budget.is_zero() {
            break;
        }
        match client.call(&id, &msg, Some(budget.min(CALL_TIMEOUT))).await {
            Ok(reply) if reply.owner != old_owner => {
                return Ok(Moved {
                    reply,
                    answered_at: Instant::now(),
                    from_old_owner,
                })
            }
            Ok(_) => from_old_owner += 1,
            Err(e) => last = e.to_string(),
        }
        // Poll interval of a condition wait.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(format!(
        "{id} was not answered by a node other than {old_owner} via {} within {timeout:?}; last: {last}",
        client.addr()
    ))
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn summary(label: &str, samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "{label}: n={} p50={:?} p99={:?} max={:?}",
        sorted.len(),
        percentile(&sorted, 50),
        percentile(&sorted, 99),
        sorted[sorted.len() - 1]
    )
}

fn get_game() -> Value {
    json!({"op": "get_game"})
}

fn kv_get() -> Value {
    json!({"op": "get"})
}

// ---------------------------------------------------------------------------
// 1. The seed scenario, twenty times per signal.

/// One run of the seed scenario; returns the failover time (signal to the
/// first call answered by another owner).
async fn seed_iteration(
    cluster: &mut ProcessCluster,
    signal: Signal,
    iteration: usize,
) -> Result<Duration, String> {
    let label = format!("{signal:?}").to_lowercase();
    await_all_up(cluster).await?;
    let game = ids_on(&format!("seed-{label}-{iteration}"), 1, 1).remove(0);
    let node1 = cluster.client(1);
    let created = create(&node1, &game, "minotaur", None).await?;
    ensure(created.owner == Some(1), || {
        format!("{game} was placed on {:?}, not node 1", created.owner)
    })?;
    let mut acknowledged = serde_json::Map::new();
    for (count, player) in ["ariadne", "theseus"].into_iter().enumerate() {
        call(
            &node1,
            &game,
            &json!({"op": "join", "player": player}),
            CALL_TIMEOUT,
        )
        .await?;
        let action = json!({"move": "north", "iteration": iteration, "player": player});
        let msg = json!({"op": "register_action", "player": player, "action": action});
        let reply = call(&node1, &game, &msg, CALL_TIMEOUT).await?;
        ensure(reply.reply == json!({"registered": count + 1}), || {
            format!("register_action of {player} answered {}", reply.reply)
        })?;
        acknowledged.insert(player.to_string(), action);
    }
    let before = call(&node1, &game, &get_game(), CALL_TIMEOUT).await?;
    ensure(before.owner == 1, || {
        format!("{game} runs on {} before the signal", before.owner)
    })?;

    let signalled_at = Instant::now();
    cluster.signal(1, signal)?;
    let watcher = tokio::spawn(await_new_owner(
        cluster.client(2),
        game.clone(),
        1,
        get_game(),
        WAIT,
    ));
    let exited = cluster.await_exit(1, WAIT).await;
    let moved = watcher.await.map_err(|e| e.to_string())??;
    exited?;
    let failover = moved.answered_at - signalled_at;
    if signal == Signal::Kill {
        // A killed process answers nothing after the signal.
        ensure(moved.from_old_owner == 0, || {
            format!("{} replies came from killed node 1", moved.from_old_owner)
        })?;
    }

    // The seed's check, once node 1 is gone: through node 2, generous timeout.
    let after = call(&cluster.client(2), &game, &get_game(), CALL_TIMEOUT).await?;
    for reply in [&moved.reply, &after] {
        ensure(reply.owner != 1, || {
            format!("{game} still answered by node 1")
        })?;
        ensure(reply.epoch > before.epoch, || {
            format!(
                "{game}: epoch {} after the move, {} before",
                reply.epoch, before.epoch
            )
        })?;
        ensure(reply.reply["id"] == game.as_str(), || {
            format!("wrong game: {}", reply.reply)
        })?;
        ensure(
            reply.reply["registered_actions"] == Value::Object(acknowledged.clone()),
            || {
                format!(
                    "{game}: acknowledged actions {acknowledged:?}, after failover {}",
                    reply.reply["registered_actions"]
                )
            },
        )?;
        ensure(
            reply.reply["players"]
                .as_object()
                .is_some_and(|p| p.contains_key("ariadne") && p.contains_key("theseus")),
            || format!("{game}: players lost: {}", reply.reply["players"]),
        )?;
    }
    eprintln!(
        "--- {label} #{iteration}: {game} answered by node {} (epoch {} -> {}) after {failover:?}; {} replies from node 1 meanwhile",
        after.owner, before.epoch, after.epoch, moved.from_old_owner
    );
    cluster.restart(1).await?;
    Ok(failover)
}

async fn seed_scenario_repeated(signal: Signal) -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let mut failovers = Vec::new();
    let mut outcome = Ok(());
    for iteration in 0..SEED_ITERATIONS {
        match seed_iteration(&mut cluster, signal, iteration).await {
            Ok(time) => failovers.push(time),
            Err(e) => {
                outcome = Err(format!("{signal:?} iteration {iteration}: {e}"));
                break;
            }
        }
    }
    if !failovers.is_empty() {
        eprintln!(
            "{}",
            summary(
                &format!("seed failover after {signal:?} of the owner"),
                &failovers
            )
        );
    }
    with_logs(&cluster, outcome)?;
    ensure(failovers.len() == SEED_ITERATIONS, || {
        format!("only {} iterations ran", failovers.len())
    })
}

/// The seed scenario twenty times: a game on node 1 with two acknowledged
/// actions is served by another node with both actions after SIGTERM of
/// node 1 (node 1 restarts between runs); prints the failover times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_game_survives_sigterm_of_its_node_20_times() -> Result<(), String> {
    seed_scenario_repeated(Signal::Term).await
}

/// The seed scenario twenty times with SIGKILL of node 1: the game comes back
/// on another node with every acknowledged action; prints the failover times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_game_survives_sigkill_of_its_node_20_times() -> Result<(), String> {
    seed_scenario_repeated(Signal::Kill).await
}

// ---------------------------------------------------------------------------
// 2. Create, then crash at once.

/// Sessions whose create was acknowledged by their owner a moment before it
/// was SIGKILLed come back on another node with their first state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_created_just_before_their_owner_crashes_come_back() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let result = create_then_kill(&mut cluster).await;
    with_logs(&cluster, result)
}

async fn create_then_kill(cluster: &mut ProcessCluster) -> Result<(), String> {
    let view = await_all_up(cluster).await?;
    let leader = view.leader.ok_or("no leader")?;
    let victim = others(leader)[0];
    let ids = ids_on("fresh", victim, 6);
    eprintln!("--- create {ids:?} through node {victim} (leader {leader}), then SIGKILL it");
    let via = cluster.client(victim);
    let creates = ids.iter().enumerate().map(|(seq, id)| {
        let via = via.clone();
        let state = json!({"seq": seq, "id": id});
        async move { create(&via, id, "kv", Some(state)).await }
    });
    let created = join_all(creates).await;
    cluster.signal(victim, Signal::Kill)?;
    let killed_at = Instant::now();
    let mut epochs = BTreeMap::new();
    for (id, created) in ids.iter().zip(created) {
        let created = created?;
        ensure(created.owner == Some(victim), || {
            format!("{id} placed on {:?}, not {victim}", created.owner)
        })?;
        epochs.insert(id.clone(), created.epoch);
    }
    cluster.await_exit(victim, WAIT).await?;

    let survivors = others(victim);
    let waits = ids.iter().enumerate().map(|(n, id)| {
        let client = cluster.client(survivors[n % survivors.len()]);
        await_new_owner(client, id.clone(), victim, kv_get(), WAIT)
    });
    let mut slowest = Duration::ZERO;
    for ((seq, id), moved) in ids.iter().enumerate().zip(join_all(waits).await) {
        let moved = moved?;
        slowest = slowest.max(moved.answered_at - killed_at);
        ensure(moved.reply.reply == json!({"seq": seq, "id": id}), || {
            format!("{id}: state after failover is {}", moved.reply.reply)
        })?;
        ensure(moved.reply.epoch.0 > epochs[id], || {
            format!("{id}: epoch {} not above {}", moved.reply.epoch, epochs[id])
        })?;
    }
    eprintln!(
        "--- all {} sessions back on other nodes {slowest:?} after the kill",
        ids.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Crash of the leader that owns sessions.

/// SIGKILL of the leader while it owns sessions with committed appends: a new
/// leader moves them and each answers from a new owner with its append
/// within five seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_crashed_leader_come_back_with_their_state() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let result = leader_crash(&mut cluster).await;
    with_logs(&cluster, result)
}

async fn leader_crash(cluster: &mut ProcessCluster) -> Result<(), String> {
    let view = await_all_up(cluster).await?;
    let leader = view.leader.ok_or("no leader")?;
    let survivors = others(leader);
    let ids = ids_on("on-leader", leader, 5);
    let via = cluster.client(survivors[0]);
    let mut epochs = BTreeMap::new();
    for id in &ids {
        let created = create(&via, id, "kv", None).await?;
        ensure(created.owner == Some(leader), || {
            format!(
                "{id} placed on {:?}, not the leader {leader}",
                created.owner
            )
        })?;
        let msg =
            json!({"op": "append", "field": "log", "value": format!("{id}: before the crash")});
        let reply = call(&via, id, &msg, CALL_TIMEOUT).await?;
        ensure(
            reply.reply == json!({"len": 1}) && reply.owner == leader,
            || format!("{id}: append answered {:?}", reply),
        )?;
        epochs.insert(id.clone(), reply.epoch);
    }

    eprintln!("--- SIGKILL the leader, node {leader}, owner of {ids:?}");
    let killed_at = Instant::now();
    cluster.signal(leader, Signal::Kill)?;
    let waits = ids.iter().enumerate().map(|(n, id)| {
        let client = cluster.client(survivors[n % survivors.len()]);
        await_new_owner(client, id.clone(), leader, kv_get(), Duration::from_secs(5))
    });
    let answers = join_all(waits).await;
    let mut slowest = Duration::ZERO;
    for (id, moved) in ids.iter().zip(answers) {
        let moved = moved?;
        slowest = slowest.max(moved.answered_at - killed_at);
        ensure(
            moved.reply.reply == json!({"log": [format!("{id}: before the crash")]}),
            || format!("{id}: state after failover is {}", moved.reply.reply),
        )?;
        ensure(moved.reply.epoch > epochs[id], || {
            format!("{id}: epoch {} not above {}", moved.reply.epoch, epochs[id])
        })?;
    }
    cluster.await_exit(leader, WAIT).await?;
    let view = cluster
        .client(survivors[0])
        .cluster()
        .await
        .map_err(|e| e.to_string())?;
    ensure(view.leader.is_some_and(|l| l != leader), || {
        format!("leader after the crash: {:?}", view.leader)
    })?;
    eprintln!(
        "--- leader crash: all {} sessions of node {leader} answered by new owners {slowest:?} after SIGKILL (new leader {:?})",
        ids.len(),
        view.leader
    );
    ensure(slowest <= Duration::from_secs(5), || {
        format!("failover took {slowest:?}")
    })
}

// ---------------------------------------------------------------------------
// 4. A paused owner resumes after its sessions moved.

/// An owner frozen (SIGSTOP) past its lease loses its sessions; once resumed
/// (SIGCONT) it never answers for them as owner: every reply through it names
/// the new owner at a higher epoch, and it shows writes made by the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_owner_does_not_serve_sessions_that_moved() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let result = pause_then_resume(&mut cluster).await;
    with_logs(&cluster, result)
}

async fn pause_then_resume(cluster: &mut ProcessCluster) -> Result<(), String> {
    let view = await_all_up(cluster).await?;
    let leader = view.leader.ok_or("no leader")?;
    let paused = others(leader)[0];
    let survivors = others(paused);
    let ids = ids_on("paused", paused, 4);
    let via = cluster.client(leader);
    let mut old_epochs = BTreeMap::new();
    for id in &ids {
        create(&via, id, "kv", None).await?;
        let msg = json!({"op": "append", "field": "log", "value": "before the pause"});
        let reply = call(&via, id, &msg, CALL_TIMEOUT).await?;
        ensure(reply.owner == paused, || {
            format!("{id} runs on {}, not {paused}", reply.owner)
        })?;
        old_epochs.insert(id.clone(), reply.epoch);
    }

    eprintln!("--- SIGSTOP node {paused} (owner of {ids:?})");
    let stopped_at = Instant::now();
    cluster.signal(paused, Signal::Stop)?;
    await_statuses(cluster, &survivors, &[(paused, NodeStatus::Down)], WAIT).await?;
    let down_after = stopped_at.elapsed();
    let waits = ids.iter().map(|id| {
        await_new_owner(
            cluster.client(survivors[0]),
            id.clone(),
            paused,
            kv_get(),
            WAIT,
        )
    });
    let mut new_owners = BTreeMap::new();
    for (id, moved) in ids.iter().zip(join_all(waits).await) {
        let moved = moved?;
        ensure(moved.reply.epoch > old_epochs[id], || {
            format!("{id}: epoch {} after the move", moved.reply.epoch)
        })?;
        ensure(
            moved.reply.reply == json!({"log": ["before the pause"]}),
            || format!("{id}: state after the move is {}", moved.reply.reply),
        )?;
        new_owners.insert(id.clone(), (moved.reply.owner, moved.reply.epoch));
    }
    eprintln!(
        "--- node {paused} declared down {down_after:?} after SIGSTOP; sessions now on {new_owners:?}; SIGCONT"
    );
    cluster.signal(paused, Signal::Cont)?;

    // Calls sent straight to the resumed node, from the first moment on.
    let resumed = cluster.client(paused);
    let mut answered: BTreeMap<String, usize> = ids.iter().map(|id| (id.clone(), 0)).collect();
    let mut errors = 0usize;
    let deadline = Instant::now() + WAIT;
    for _round in 0..1000 {
        if answered.values().all(|n| *n >= 5) || Instant::now() >= deadline {
            break;
        }
        let calls = ids
            .iter()
            .map(|id| async { call(&resumed, id, &kv_get(), Duration::from_secs(2)).await });
        for (id, result) in ids.iter().zip(join_all(calls).await) {
            match result {
                Ok(reply) => {
                    let (owner, epoch) = new_owners[id];
                    ensure(reply.owner != paused, || {
                        format!("resumed node {paused} answered {id} as its owner: {reply:?}")
                    })?;
                    ensure(reply.epoch >= epoch && epoch > old_epochs[id], || {
                        format!(
                            "{id} answered by node {} at epoch {} (moved to {owner} at {epoch}, was at {})",
                            reply.owner, reply.epoch, old_epochs[id]
                        )
                    })?;
                    ensure(reply.reply == json!({"log": ["before the pause"]}), || {
                        format!("{id}: {}", reply.reply)
                    })?;
                    *answered.entry(id.clone()).or_default() += 1;
                }
                Err(_) => errors += 1,
            }
        }
    }
    ensure(answered.values().all(|n| *n >= 5), || {
        format!("the resumed node answered too few calls: {answered:?} ({errors} errors)")
    })?;
    eprintln!("--- resumed node {paused}: replies {answered:?}, {errors} errors, none as owner");
    // It runs none of them (it owns none).
    await_running_equals_owned(&resumed, 0.0).await?;

    // A write through the new owner is visible through the resumed node.
    for id in &ids {
        let (owner, epoch) = new_owners[id];
        let msg = json!({"op": "append", "field": "log", "value": "after the resume"});
        let reply = call(&cluster.client(owner), id, &msg, CALL_TIMEOUT).await?;
        ensure(
            reply.reply == json!({"len": 2}) && reply.owner == owner,
            || format!("{id}: append through node {owner} answered {reply:?}"),
        )?;
        let read = call(&resumed, id, &kv_get(), CALL_TIMEOUT).await?;
        ensure(
            read.owner != paused
                && read.epoch >= epoch
                && read.reply == json!({"log": ["before the pause", "after the resume"]}),
            || format!("{id}: read through resumed node {paused}: {read:?}"),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. A restarted node runs none of its old sessions.

#[derive(Default)]
struct OwnerProbe {
    replies: usize,
    replies_via_restarted: usize,
    violations: Vec<String>,
}

/// Calls every session through every node, round after round, until `stop`;
/// a reply from `restarted` or at an epoch below an earlier one is a violation.
async fn probe_owners(
    clients: Vec<(NodeId, Client)>,
    ids: Vec<String>,
    restarted: NodeId,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> OwnerProbe {
    let mut probe = OwnerProbe::default();
    let mut highest: BTreeMap<String, Epoch> = BTreeMap::new();
    for _ in 0..100_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        for (via, client) in &clients {
            for id in &ids {
                let Ok(reply) = client
                    .call(id, &kv_get(), Some(Duration::from_millis(500)))
                    .await
                else {
                    continue;
                };
                probe.replies += 1;
                if *via == restarted {
                    probe.replies_via_restarted += 1;
                }
                if reply.owner == restarted {
                    probe.violations.push(format!(
                        "{id} answered by restarted node {restarted} (via {via}) at epoch {}",
                        reply.epoch
                    ));
                }
                let seen = highest.entry(id.clone()).or_insert(reply.epoch);
                if reply.epoch < *seen {
                    probe.violations.push(format!(
                        "{id}: epoch went back from {seen} to {} (via {via})",
                        reply.epoch
                    ));
                }
                *seen = (*seen).max(reply.epoch);
            }
        }
        rounds.fetch_add(1, Ordering::SeqCst);
        // A round through a dead node fails fast; poll, do not spin.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    probe
}

async fn metric(client: &Client, name: &str) -> Result<f64, String> {
    let request = reqwest::Client::new().get(format!("http://{}/metrics", client.addr()));
    let request = match client.token() {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let text = request
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .ok_or(format!("no metric {name} at {}", client.addr()))
}

/// Waits until a node runs exactly the sessions it owns (and `owned` of
/// them); at no sample may it run more than it owns.
async fn await_running_equals_owned(client: &Client, owned: f64) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let running = metric(client, "minos_sessions_running").await?;
        let owns = metric(client, "minos_sessions_owned").await?;
        ensure(running <= owns, || {
            format!("{} runs {running} sessions but owns {owns}", client.addr())
        })?;
        if running == owns && owns == owned {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: running {running}, owned {owns}, expected {owned}",
                client.addr()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After SIGKILL and restart of a node, no reply for its former sessions ever
/// comes from it (during the restart and after), epochs never go back, every
/// reply matches the table, and it runs exactly the sessions it owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_run_its_old_sessions() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let result = restart_does_not_resurrect(&mut cluster).await;
    with_logs(&cluster, result)
}

async fn restart_does_not_resurrect(cluster: &mut ProcessCluster) -> Result<(), String> {
    let view = await_all_up(cluster).await?;
    let leader = view.leader.ok_or("no leader")?;
    let victim = others(leader)[0];
    let ids = ids_on("reborn", victim, 4);
    let via = cluster.client(leader);
    for id in &ids {
        create(&via, id, "kv", None).await?;
        let msg = json!({"op": "append", "field": "log", "value": "before the crash"});
        let reply = call(&via, id, &msg, CALL_TIMEOUT).await?;
        ensure(reply.owner == victim, || {
            format!("{id} runs on {}, not {victim}", reply.owner)
        })?;
    }
    eprintln!("--- SIGKILL node {victim} (owner of {ids:?})");
    cluster.kill(victim).await?;
    for id in &ids {
        let moved = await_new_owner(via.clone(), id.clone(), victim, kv_get(), WAIT).await?;
        ensure(
            moved.reply.reply == json!({"log": ["before the crash"]}),
            || format!("{id}: {}", moved.reply.reply),
        )?;
    }

    eprintln!("--- restart node {victim} while calling its old sessions through every node");
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let clients = NODES.iter().map(|n| (*n, cluster.client(*n))).collect();
    let prober = tokio::spawn(probe_owners(
        clients,
        ids.clone(),
        victim,
        stop.clone(),
        rounds.clone(),
    ));
    let restarted = cluster.restart(victim).await;
    let healthy_round = rounds.load(Ordering::SeqCst);
    let settled = match restarted {
        Ok(()) => await_all_up(cluster).await.map(|_| ()),
        Err(e) => Err(e),
    };
    // Some more rounds through the restarted, healthy node.
    let more_rounds = if settled.is_ok() {
        minos::testkit::await_until("five probe rounds after the restart", WAIT, || {
            let done = rounds.load(Ordering::SeqCst) >= healthy_round + 5;
            async move { done.then_some(()) }
        })
        .await
    } else {
        Ok(())
    };
    stop.store(true, Ordering::SeqCst);
    let probe = prober.await.map_err(|e| e.to_string())?;
    settled?;
    more_rounds?;
    eprintln!(
        "--- {} replies ({} through node {victim}), {} violations",
        probe.replies,
        probe.replies_via_restarted,
        probe.violations.len()
    );
    ensure(probe.violations.is_empty(), || probe.violations.join("\n"))?;
    ensure(probe.replies_via_restarted > 0, || {
        format!("node {victim} answered no call after its restart")
    })?;

    // Every reply matches the table (linearizable read through the leader).
    let restarted_client = cluster.client(victim);
    for id in &ids {
        let session = via.get_session(id).await.map_err(|e| e.to_string())?;
        let reply = call(&restarted_client, id, &kv_get(), CALL_TIMEOUT).await?;
        ensure(
            Some(reply.owner) == session.owner && reply.epoch.0 == session.epoch,
            || {
                format!(
                    "{id}: reply from {} at {}, table says {:?} at {}",
                    reply.owner, reply.epoch, session.owner, session.epoch
                )
            },
        )?;
        ensure(session.owner != Some(victim), || {
            format!("{id} went back to node {victim} without a rebalance")
        })?;
    }

    // It runs what it owns: nothing of the old, then two new sessions.
    await_running_equals_owned(&restarted_client, 0.0).await?;
    let fresh = ids_on("reborn-new", victim, 2);
    for id in &fresh {
        let created = create(&via, id, "kv", None).await?;
        ensure(created.owner == Some(victim), || {
            format!("{id} placed on {:?}, not {victim}", created.owner)
        })?;
    }
    await_running_equals_owned(&restarted_client, fresh.len() as f64).await
}

// ---------------------------------------------------------------------------
// 6. Fencing of a deposed owner (the state machine, in process).

/// After a session moved, an update carrying the epoch of its former owner
/// is rejected as stale and changes nothing; the new owner's epoch commits.
#[test]
fn a_deposed_owners_commit_with_a_stale_epoch_is_rejected() {
    let at: DateTime<Utc> = Utc::now();
    let mut state = minos::state::ClusterState::default();
    for node in [1, 2] {
        let add = Command::AddNode {
            id: node,
            addr: format!("127.0.0.1:{}", 7100 + node),
        };
        state.apply_command(&add, at).expect("add node");
    }
    let id = SessionId::new("fenced").expect("valid id");
    let create = Command::CreateSession {
        id: id.clone(),
        kind: SessionKind::new("kv").expect("valid kind"),
        state: minos::model::StateJson::from_value(&json!({"v": 0})),
        owner: Some(1),
    };
    state.apply_command(&create, at).expect("create");
    let old_epoch = state.sessions[&id].epoch;
    let reassign = Command::Reassign {
        moves: vec![Move {
            id: id.clone(),
            from_epoch: old_epoch,
            to: Some(2),
        }],
    };
    state.apply_command(&reassign, at).expect("reassign");
    let new_epoch = state.sessions[&id].epoch;
    assert!(new_epoch > old_epoch);

    let stale = Command::UpdateState {
        id: id.clone(),
        epoch: old_epoch,
        version: 0,
        state: minos::model::StateJson::from_value(&json!({"v": "from the deposed owner"})),
    };
    assert_eq!(
        state.apply_command(&stale, at),
        Err(Rejection::StaleEpoch {
            id: id.clone(),
            given: old_epoch,
            current: new_epoch,
        })
    );
    assert_eq!(
        state.sessions[&id].state,
        minos::model::StateJson::from_value(&json!({"v": 0}))
    );
    let current = Command::UpdateState {
        id: id.clone(),
        epoch: new_epoch,
        version: 0,
        state: minos::model::StateJson::from_value(&json!({"v": 1})),
    };
    assert!(state.apply_command(&current, at).is_ok());
}

// ---------------------------------------------------------------------------
// 7. Timers survive a crash.

/// A game whose round ends 1.5 s after its owner is SIGKILLed has that round
/// resolved exactly once by the new owner: round 2, actions cleared, next end
/// in the future, and still round 2 a while later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_timer_fires_once_on_the_new_owner() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let result = timer_after_crash(&mut cluster).await;
    with_logs(&cluster, result)
}

async fn timer_after_crash(cluster: &mut ProcessCluster) -> Result<(), String> {
    let view = await_all_up(cluster).await?;
    let leader = view.leader.ok_or("no leader")?;
    let owner = others(leader)[0];
    let survivor = leader;
    let game = ids_on("timed", owner, 1).remove(0);
    let round_end = Utc::now() + chrono::Duration::milliseconds(1500);
    let via = cluster.client(owner);
    let created = create(
        &via,
        &game,
        "minotaur",
        Some(json!({"round_end_time": round_end.to_rfc3339()})),
    )
    .await?;
    ensure(created.owner == Some(owner), || {
        format!("{game} placed on {:?}", created.owner)
    })?;
    call(
        &via,
        &game,
        &json!({"op": "join", "player": "ariadne"}),
        CALL_TIMEOUT,
    )
    .await?;
    let msg = json!({"op": "register_action", "player": "ariadne", "action": {"move": "west"}});
    let reply = call(&via, &game, &msg, CALL_TIMEOUT).await?;
    ensure(reply.reply == json!({"registered": 1}), || {
        format!("register_action answered {}", reply.reply)
    })?;
    eprintln!("--- SIGKILL node {owner}, owner of {game} whose round ends at {round_end}");
    cluster.signal(owner, Signal::Kill)?;
    ensure(Utc::now() < round_end, || {
        "the round ended before the owner was killed; the machine is too slow".into()
    })?;
    cluster.await_exit(owner, WAIT).await?;

    let client = cluster.client(survivor);
    let resolved = minos::testkit::await_until("the round to resolve", WAIT, || {
        let client = client.clone();
        let game = game.clone();
        async move {
            let reply = client
                .call(&game, &get_game(), Some(CALL_TIMEOUT))
                .await
                .ok()?;
            (reply.reply["round"] != json!(1)).then_some(reply)
        }
    })
    .await?;
    let resolved_at = Utc::now();
    let check = |reply: &CallReply| -> Result<(), String> {
        let game_state = &reply.reply;
        ensure(reply.owner != owner, || {
            format!("answered by the killed node {owner}")
        })?;
        ensure(game_state["round"] == json!(2), || {
            format!("expected round 2: {game_state}")
        })?;
        ensure(
            game_state["registered_actions"]
                .as_object()
                .is_some_and(|a| a.is_empty()),
            || format!("actions not cleared: {game_state}"),
        )?;
        ensure(
            game_state["players"]
                .as_object()
                .is_some_and(|p| p.contains_key("ariadne")),
            || format!("player lost: {game_state}"),
        )?;
        let next_end: DateTime<Utc> = game_state["round_end_time"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or(format!("no round_end_time: {game_state}"))?;
        ensure(next_end > resolved_at, || {
            format!("the next round ends at {next_end}, not in the future")
        })
    };
    check(&resolved)?;
    eprintln!(
        "--- round resolved on node {} at {resolved_at} ({} after the planned end)",
        resolved.owner,
        resolved_at - round_end
    );

    // It stays at round 2: the next end is a day away.
    let window = Instant::now() + Duration::from_millis(300);
    let mut calls = 0;
    while calls < 200 && (calls < 5 || Instant::now() < window) {
        let reply = call(&client, &game, &get_game(), CALL_TIMEOUT).await?;
        check(&reply)?;
        calls += 1;
    }
    eprintln!("--- still round 2 after {calls} more calls");
    Ok(())
}

// ---------------------------------------------------------------------------
// 8. Drain and rebalance.

/// Draining node 2 moves all its sessions away with their state; once node 2
/// restarts and the cluster rebalances, every node owns 20-50% of the
/// sessions and every state is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_rebalance_keeps_every_state() -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await?;
    let result = drain_and_rebalance(&mut cluster).await;
    with_logs(&cluster, result)
}

/// Reads every session through `via` and checks its one append.
async fn check_states(via: &Client, ids: &[String], not_on: Option<NodeId>) -> Result<(), String> {
    let reads = ids
        .iter()
        .map(|id| async move { call(via, id, &kv_get(), CALL_TIMEOUT).await });
    for (id, read) in ids.iter().zip(join_all(reads).await) {
        let read = read?;
        ensure(read.reply == json!({"log": [id]}), || {
            format!("{id}: state {}", read.reply)
        })?;
        ensure(Some(read.owner) != not_on, || {
            format!("{id} still answered by node {}", read.owner)
        })?;
    }
    Ok(())
}

/// The table as the current leader sees it (it has applied every commit it
/// acknowledged).
async fn leader_view(cluster: &ProcessCluster, via: &Client) -> Result<ClusterView, String> {
    let leader = via
        .cluster()
        .await
        .map_err(|e| e.to_string())?
        .leader
        .ok_or("no leader")?;
    cluster
        .client(leader)
        .cluster()
        .await
        .map_err(|e| e.to_string())
}

async fn drain_and_rebalance(cluster: &mut ProcessCluster) -> Result<(), String> {
    const SESSIONS: usize = 30;
    const DRAINED: NodeId = 2;
    await_all_up(cluster).await?;
    let via = cluster.client(1);
    let ids: Vec<String> = (0..SESSIONS).map(|n| format!("handoff-{n}")).collect();
    for id in &ids {
        create(&via, id, "kv", None).await?;
        let msg = json!({"op": "append", "field": "log", "value": id});
        let reply = call(&via, id, &msg, CALL_TIMEOUT).await?;
        ensure(reply.reply == json!({"len": 1}), || {
            format!("{id}: append answered {}", reply.reply)
        })?;
    }
    let before = leader_view(cluster, &via).await?;
    let owned_by_drained = before
        .nodes
        .iter()
        .find(|n| n.id == DRAINED)
        .map_or(0, |n| n.sessions);
    eprintln!("--- drain node {DRAINED} (owns {owned_by_drained} of {SESSIONS})");
    let report = via.drain(DRAINED).await.map_err(|e| e.to_string())?;
    ensure(
        report.moved == owned_by_drained && report.skipped == 0,
        || format!("drain report {report:?}, node owned {owned_by_drained}"),
    )?;
    let after_drain = leader_view(cluster, &via).await?;
    ensure(
        after_drain
            .nodes
            .iter()
            .any(|n| n.id == DRAINED && n.sessions == 0 && n.status == NodeStatus::Draining),
        || format!("after drain: {:?}", after_drain.nodes),
    )?;
    check_states(&via, &ids, Some(DRAINED)).await?;

    eprintln!("--- restart node {DRAINED}: a drained node is Up again after a restart");
    cluster.term(DRAINED).await?;
    cluster.restart(DRAINED).await?;
    await_all_up(cluster).await?;
    let report = via.rebalance().await.map_err(|e| e.to_string())?;
    let view = leader_view(cluster, &via).await?;
    eprintln!("--- rebalance moved {report:?}: {:?}", view.nodes);
    ensure(view.sessions == SESSIONS, || {
        format!("{} sessions in the table", view.sessions)
    })?;
    for node in &view.nodes {
        let share = node.sessions as f64 / SESSIONS as f64;
        ensure((0.2..=0.5).contains(&share), || {
            format!("node {} owns {} of {SESSIONS}", node.id, node.sessions)
        })?;
    }
    // Rebalance puts every session on its placement choice.
    let page = via
        .list_sessions(None, None, Some(SESSIONS + 10))
        .await
        .map_err(|e| e.to_string())?;
    for session in &page.sessions {
        let id = SessionId::new(session.id.as_str()).map_err(|e| e.to_string())?;
        let choice = minos::placement::place(&id, &NODES);
        ensure(session.owner == choice, || {
            format!(
                "{} is on {:?}, placement says {choice:?}",
                session.id, session.owner
            )
        })?;
    }
    for node in NODES {
        check_states(&cluster.client(node), &ids, None).await?;
    }
    Ok(())
}
