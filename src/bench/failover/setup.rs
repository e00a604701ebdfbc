//! The benchmark's cluster: starting it, creating and appending to its
//! sessions, restoring it between trials, and fresh sessions on a victim.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::poll::{Ledger, Target};
use super::{say, FailoverConfig, Mode};
use crate::bench::BenchError;
use crate::client::{Client, ClientError, NewSession};
use crate::config::TimingFlags;
use crate::model::{NodeId, NodeStatus, SessionId};
use crate::placement;
use crate::testkit::process::{ProcessCluster, ProcessOptions};

/// A running benchmark cluster and what the benchmark knows of its sessions.
pub(super) struct Bench<'a> {
    pub(super) config: &'a FailoverConfig,
    pub(super) cluster: ProcessCluster,
    pub(super) clients: BTreeMap<NodeId, Client>,
    /// Acknowledged values appended to each long-lived session.
    pub(super) values: BTreeMap<String, Vec<Value>>,
    pub(super) ledger: Arc<Ledger>,
}

/// Setup and restore waits: long enough for a restart on a loaded machine.
pub(super) const SETTLE: Duration = Duration::from_secs(30);
/// Timeout of setup calls (not measured).
const SETUP_CALL: Duration = Duration::from_secs(5);

pub(super) fn kv_get() -> Value {
    json!({"op": "get"})
}

pub(super) fn client_error(e: ClientError) -> String {
    e.to_string()
}

/// A failed call as a sample records it: its error code, or its message.
pub(super) fn error_text(e: &ClientError) -> String {
    match e.code() {
        Some(code) => code.to_string(),
        None => e.to_string(),
    }
}

impl<'a> Bench<'a> {
    pub(super) async fn start(
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

    pub(super) fn logs(&self) -> String {
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
    pub(super) async fn append_round(
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

    pub(super) async fn leader(&mut self) -> Result<NodeId, String> {
        self.cluster.await_leader(Instant::now() + SETTLE).await
    }

    /// Waits until every node runs, the leader's table shows all of them Up,
    /// and (after a rebalance) the sessions sit on their placement choice.
    pub(super) async fn restore(&mut self) -> Result<NodeId, String> {
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
    pub(super) async fn fresh_on(
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
}
