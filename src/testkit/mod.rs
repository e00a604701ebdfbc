//! A test kit for minos and for services that embed it: in-process clusters
//! on temporary directories and OS-chosen loopback ports, with crash,
//! graceful stop, restart and partitions, and waiting helpers with deadlines
//! that replace sleep-and-poll. [`process`] runs real `minos serve`
//! processes instead.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use std::time::Duration;
//! use minos::testkit::Cluster;
//!
//! let mut cluster = Cluster::start(3).await?;
//! let client = cluster.client(1);
//! client.create_session(&minos::client::NewSession {
//!     id: "game-1".into(), kind: Some("minotaur".into()), state: None,
//! }).await.map_err(|e| e.to_string())?;
//! let owner = cluster.await_owner("game-1", |_| true, Duration::from_secs(5)).await?;
//! cluster.kill(owner).await;
//! cluster.await_owner("game-1", |n| n != owner, Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub mod process;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::client::Client;
use crate::config::Timing;
use crate::handler::{Registry, SessionHandler};
use crate::model::{NodeId, SessionId};
use crate::node::{Node, NodeBuilder};
use crate::peer::Faults;
pub use crate::peer::HeldWrite;

/// Polls `probe` until it yields a value or `timeout` passes; the error
/// names `what` was awaited. Polling is every 2 ms: these are condition
/// waits with a deadline, not sleeps.
pub async fn await_until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Generated credentials of a test cluster: a cluster secret, an admin and
/// a client token.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The cluster secret.
    pub secret: String,
    /// A token with the `admin` role.
    pub admin_token: String,
    /// A token with the `client` role.
    pub client_token: String,
    security: crate::auth::Security,
}

impl Credentials {
    /// Fresh random credentials.
    pub fn generate() -> Result<Self, String> {
        let fresh = || crate::auth::generate_secret().map_err(|e| e.to_string());
        let (secret, admin_token, client_token) = (fresh()?, fresh()?, fresh()?);
        use crate::auth::Role;
        let security = crate::auth::Security::Enforced {
            secret: crate::auth::ClusterSecret::parse(&secret).map_err(|e| e.to_string())?,
            tokens: crate::auth::Tokens::default()
                .with(Role::Admin, &admin_token)
                .with(Role::Client, &client_token),
        };
        Ok(Self {
            secret,
            admin_token,
            client_token,
            security,
        })
    }

    /// The token file's text (`ROLE TOKEN` lines).
    pub fn token_file(&self) -> String {
        format!("admin {}\nclient {}\n", self.admin_token, self.client_token)
    }

    /// What a node is started with.
    pub fn security(&self) -> crate::auth::Security {
        self.security.clone()
    }
}

struct Slot {
    node: Option<Node>,
    faults: Faults,
}

/// Builds an in-process [`Cluster`].
pub struct ClusterBuilder {
    nodes: u64,
    timing: Timing,
    limits: crate::config::Limits,
    registry: Registry,
    traits: BTreeMap<NodeId, crate::model::NodeTraits>,
}

impl ClusterBuilder {
    /// Size limits (and parking) of every node.
    pub fn limits(mut self, limits: crate::config::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Timing knobs of every node.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Labels and capacity of node `id` (see [`NodeBuilder::labels`]).
    pub fn traits(mut self, id: NodeId, traits: crate::model::NodeTraits) -> Self {
        self.traits.insert(id, traits);
        self
    }

    /// Registers a handler kind on every node.
    pub fn handler<H: SessionHandler>(mut self, kind: &str, handler: H) -> Self {
        self.registry.register(kind, handler);
        self
    }

    /// Starts the nodes and waits until each is healthy.
    pub async fn start(self) -> Result<Cluster, String> {
        let dir = tempfile::Builder::new()
            .prefix("minos-testkit-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut listeners = BTreeMap::new();
        for id in 1..=self.nodes {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            listeners.insert(id, listener);
        }
        let peers: BTreeMap<NodeId, String> = listeners
            .iter()
            .map(|(id, l)| {
                (
                    *id,
                    l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let mut cluster = Cluster {
            dir,
            credentials: Credentials::generate()?,
            peers: peers.clone(),
            timing: self.timing,
            limits: self.limits,
            registry: self.registry,
            traits: self.traits,
            slots: peers
                .keys()
                .map(|id| {
                    let slot = Slot {
                        node: None,
                        faults: Faults::default(),
                    };
                    (*id, slot)
                })
                .collect(),
        };
        let starts = listeners.into_iter().map(|(id, listener)| {
            let builder = cluster.node_builder(id).listener(listener);
            async move { (id, builder.start().await) }
        });
        for (id, started) in futures::future::join_all(starts).await {
            let node = started.map_err(|e| format!("node {id}: {e}"))?;
            if let Some(slot) = cluster.slots.get_mut(&id) {
                slot.node = Some(node);
            }
        }
        for id in cluster.ids() {
            cluster.await_healthy(id, Duration::from_secs(20)).await?;
        }
        Ok(cluster)
    }
}

/// Nodes running in this process on loopback, each with its own sled
/// directory. Dropping the cluster leaves tasks to the runtime; call
/// [`Cluster::shutdown`] to stop them all.
pub struct Cluster {
    dir: tempfile::TempDir,
    credentials: Credentials,
    peers: BTreeMap<NodeId, String>,
    timing: Timing,
    limits: crate::config::Limits,
    registry: Registry,
    traits: BTreeMap<NodeId, crate::model::NodeTraits>,
    slots: BTreeMap<NodeId, Slot>,
}

impl Cluster {
    /// A builder for `nodes` nodes with the built-in kinds and default timing.
    pub fn builder(nodes: u64) -> ClusterBuilder {
        ClusterBuilder {
            nodes,
            timing: Timing::default(),
            limits: crate::config::Limits::default(),
            registry: Registry::with_builtin_kinds(),
            traits: BTreeMap::new(),
        }
    }

    /// Starts `nodes` nodes with defaults.
    pub async fn start(nodes: u64) -> Result<Cluster, String> {
        Self::builder(nodes).start().await
    }

    fn node_builder(&self, id: NodeId) -> NodeBuilder {
        let faults = self
            .slots
            .get(&id)
            .map(|s| s.faults.clone())
            .unwrap_or_default();
        let traits = self.traits.get(&id).cloned().unwrap_or_default();
        NodeBuilder::new(id, self.dir.path().join(format!("node{id}")))
            .peers(self.peers.clone())
            .timing(self.timing.clone())
            .limits(self.limits.clone())
            .registry(self.registry.clone())
            .security(self.credentials.security())
            .labels(traits.labels)
            .max_sessions(traits.max_sessions)
            .faults(faults)
    }

    /// The credentials every node of this cluster was started with.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    /// A running node.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.slots.get(&id).and_then(|s| s.node.as_ref())
    }

    /// Address of a node's HTTP API.
    pub fn addr(&self, id: NodeId) -> String {
        self.peers.get(&id).cloned().unwrap_or_default()
    }

    /// A client of a node, with the admin token.
    pub fn client(&self, id: NodeId) -> Client {
        Client::new(self.addr(id)).with_token(&self.credentials.admin_token)
    }

    /// Crashes a node: no handoff.
    pub async fn kill(&mut self, id: NodeId) {
        if let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.take()) {
            node.kill().await;
        }
    }

    /// Stops a node gracefully: its sessions move first.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(node) = self.slots.get_mut(&id).and_then(|s| s.node.take()) {
            node.shutdown().await;
        }
    }

    /// Starts a stopped node again on its old address and data.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), String> {
        self.kill(id).await;
        let addr = self.addr(id);
        // The old node's storage is released when its last task has ended,
        // which may be a moment after `kill` returns: retry while sled's
        // lock is still held.
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            let listener = await_until("the port to be free", Duration::from_secs(5), || {
                let addr = addr.clone();
                async move { TcpListener::bind(&addr).await.ok() }
            })
            .await?;
            match self.node_builder(id).listener(listener).start().await {
                Ok(node) => break node,
                Err(e) if e.to_string().contains("lock") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(format!("node {id}: {e}")),
            }
        };
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.node = Some(node);
        }
        self.await_healthy(id, Duration::from_secs(20)).await
    }

    /// Cuts traffic between `a` and `b` in both directions (Raft, leases,
    /// forwarding).
    pub fn partition(&self, a: NodeId, b: NodeId) {
        if let Some(slot) = self.slots.get(&a) {
            slot.faults.set_blocked(b, true);
        }
        if let Some(slot) = self.slots.get(&b) {
            slot.faults.set_blocked(a, true);
        }
    }

    /// Cuts `node` off from every other node.
    pub fn isolate(&self, node: NodeId) {
        for other in self.ids().into_iter().filter(|o| *o != node) {
            self.partition(node, other);
        }
    }

    /// Holds back node `node`'s next write that updates `session` (see
    /// [`HeldWrite`]): the owner is told at once that the write's outcome
    /// is unknown, and the write goes out when the handle releases it.
    pub fn hold_next_update(&self, node: NodeId, session: &str) -> Result<HeldWrite, String> {
        let session = SessionId::new(session).map_err(|e| e.to_string())?;
        let slot = self.slots.get(&node).ok_or(format!("no node {node}"))?;
        Ok(slot.faults.hold_next_update(session))
    }

    /// Loses the answer of the next call to `session` that another node
    /// forwards to node `node` (an injected fault): the call
    /// runs, the forwarding node sees the connection fail.
    pub fn lose_next_call_reply(&self, node: NodeId, session: &str) -> Result<(), String> {
        let session = SessionId::new(session).map_err(|e| e.to_string())?;
        let slot = self.slots.get(&node).ok_or(format!("no node {node}"))?;
        slot.faults.lose_next_call_reply(session);
        Ok(())
    }

    /// Freezes (or thaws) node `node`'s reconciler: it starts and stops no
    /// session task meanwhile, so a task outlives its session's move.
    pub fn freeze_reconcile(&self, node: NodeId, frozen: bool) {
        if let Some(slot) = self.slots.get(&node) {
            slot.faults.freeze_reconcile(frozen);
        }
    }

    /// Restores all traffic.
    pub fn heal(&self) {
        for slot in self.slots.values() {
            slot.faults.clear();
        }
    }

    /// Waits until `/v1/health` of a node answers 200.
    pub async fn await_healthy(&self, id: NodeId, timeout: Duration) -> Result<(), String> {
        let client = self.client(id);
        await_until(&format!("node {id} to be healthy"), timeout, || {
            let client = client.clone();
            async move { client.health().await.ok().map(|_| ()) }
        })
        .await
    }

    /// Waits until the running nodes agree on a leader; returns it.
    pub async fn await_leader(&self, timeout: Duration) -> Result<NodeId, String> {
        await_until("a leader", timeout, || async {
            let leaders: Vec<Option<NodeId>> = self
                .slots
                .values()
                .filter_map(|s| s.node.as_ref())
                .map(|n| n.metrics().borrow().current_leader)
                .collect();
            let first = leaders.first().copied().flatten()?;
            let running = self.node(first).is_some();
            (running && leaders.iter().all(|l| *l == Some(first))).then_some(first)
        })
        .await
    }

    /// Waits until the leader is not `old` (a leader change); returns it.
    pub async fn await_leader_change(
        &self,
        old: NodeId,
        timeout: Duration,
    ) -> Result<NodeId, String> {
        await_until(&format!("a leader other than {old}"), timeout, || async {
            self.await_leader(Duration::from_millis(1))
                .await
                .ok()
                .filter(|l| *l != old)
        })
        .await
    }

    /// Waits until node `id` has applied log index `index`.
    pub async fn await_applied(
        &self,
        id: NodeId,
        index: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let node = self.node(id).ok_or(format!("node {id} is not running"))?;
        let mut applied = node.applied();
        let reached = matches!(
            tokio::time::timeout(timeout, applied.wait_for(|a| *a >= index)).await,
            Ok(Ok(_))
        );
        match reached {
            true => Ok(()),
            false => Err(format!(
                "node {id} did not apply index {index} within {timeout:?} (at {})",
                *applied.borrow()
            )),
        }
    }

    /// Waits until a running node runs session `id` on an owner accepted by
    /// `pred`, as seen by that node's live task (not only the table);
    /// returns the owner.
    pub async fn await_owner(
        &self,
        id: &str,
        pred: impl Fn(NodeId) -> bool,
        timeout: Duration,
    ) -> Result<NodeId, String> {
        let session = SessionId::new(id).map_err(|e| e.to_string())?;
        await_until(
            &format!("session {id} to run on an accepted owner"),
            timeout,
            || {
                let found = self.slots.iter().find_map(|(node_id, slot)| {
                    let node = slot.node.as_ref()?;
                    (node.running_sessions().contains(&session) && pred(*node_id))
                        .then_some(*node_id)
                });
                async move { found }
            },
        )
        .await
    }

    /// Waits until a call `{"op":"get"}`-style message `msg` to session `id`
    /// through node `via` answers with a reply accepted by `pred`; returns the
    /// reply.
    pub async fn await_call(
        &self,
        via: NodeId,
        id: &str,
        msg: serde_json::Value,
        pred: impl Fn(&crate::runtime::CallReply) -> bool,
        timeout: Duration,
    ) -> Result<crate::runtime::CallReply, String> {
        let client = self.client(via);
        await_until(
            &format!("a matching reply from session {id}"),
            timeout,
            || {
                let client = client.clone();
                let msg = msg.clone();
                let pred = &pred;
                async move {
                    client
                        .call(id, &msg, Some(Duration::from_millis(500)))
                        .await
                        .ok()
                        .filter(|r| pred(r))
                }
            },
        )
        .await
    }

    /// Waits until the committed state of session `id` (linearizable read
    /// through any running node) satisfies `pred`; returns it.
    pub async fn await_session_state(
        &self,
        id: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Result<serde_json::Value, String> {
        await_until(
            &format!("the state of session {id} to match"),
            timeout,
            || async {
                for node_id in self.ids() {
                    if self.node(node_id).is_none() {
                        continue;
                    }
                    if let Ok(session) = self.client(node_id).get_session(id).await {
                        if pred(&session.state) {
                            return Some(session.state);
                        }
                        return None;
                    }
                }
                None
            },
        )
        .await
    }

    /// Stops every node (crash-style) and removes the data.
    pub async fn shutdown(mut self) {
        for id in self.ids() {
            self.kill(id).await;
        }
    }
}
