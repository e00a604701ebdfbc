//! The phases of `minos bench throughput` after the matrix's cells: the
//! matrix itself, the bulk load, idle CPU, memory, placement, the mass
//! failover and the restarts.

use std::time::Duration;

use tokio::time::Instant;

use super::load::{run_cell, Cell, Op};
use super::probe::{self, cpu_seconds, rss_bytes};
use super::report::{CellRow, FailoverRow, IdleRow, LoadRow, MemoryRow, RestartRow};
use super::{cell, load_key, say, System, Targets, ThroughputArgs, ThroughputReport};
use crate::model::NodeId;
use crate::testkit::process::{ProcessCluster, Signal};

/// Phase 1: every operation at every client count, to the leader and to
/// all nodes, on every system. Creates make the keys the other cells use.
pub(super) async fn matrix(
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

/// How often the bulk load says how far it got.
const LOAD_PROGRESS: Duration = Duration::from_secs(15);

/// Phase 2: `--load` creates by the largest client count, over all nodes.
pub(super) async fn bulk_load(
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
        progress: Some(LOAD_PROGRESS),
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
pub(super) async fn idle_row(system: &System, sessions: usize, window: Duration) -> IdleRow {
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
pub(super) fn memory_row(system: &System, sessions: usize) -> MemoryRow {
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
pub(super) async fn placement(cluster: &ProcessCluster) -> Result<Vec<(NodeId, usize)>, String> {
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
pub(super) async fn await_running(
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
pub(super) async fn mass_failover(
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
    cluster.signal(victim, Signal::Kill)?;
    let observer = cluster.client(leader);
    let reassigned = await_none_on(&observer, victim, signalled).await?;
    await_running(cluster, &survivors, total).await?;
    let running = signalled.elapsed();
    let failed_calls = failed_calls(&observer, &sample).await;
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

/// Waits (up to 60 s after `signalled`) until the table shows no session
/// on `victim`; the time it took.
async fn await_none_on(
    observer: &crate::client::Client,
    victim: NodeId,
    signalled: Instant,
) -> Result<Duration, String> {
    let deadline = signalled + Duration::from_secs(60);
    loop {
        if let Ok(view) = observer.cluster().await {
            let left = view
                .nodes
                .iter()
                .find(|n| n.id == victim)
                .map_or(0, |n| n.sessions);
            if left == 0 {
                return Ok(signalled.elapsed());
            }
        }
        if Instant::now() > deadline {
            return Err("the victim's sessions were not reassigned within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Calls each session of `sample` once (5 s timeout); how many failed.
async fn failed_calls(observer: &crate::client::Client, sample: &[String]) -> usize {
    let mut failed = 0;
    for id in sample {
        let answer = observer
            .call(
                id,
                &serde_json::json!({"op": "get"}),
                Some(Duration::from_secs(5)),
            )
            .await;
        if answer.is_err() {
            failed += 1;
        }
    }
    failed
}

/// Phase 7: the killed node back (health and a read through it), then all
/// three killed and started again.
pub(super) async fn restart(cluster: &mut ProcessCluster) -> Result<RestartRow, String> {
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
