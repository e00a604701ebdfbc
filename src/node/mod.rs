//! `Node` and `NodeBuilder`: wire storage, Raft, the write path, leases, the
//! scheduler, the runtime and the HTTP API into one running node. This is
//! the embedding entry point; `minos serve` is a thin shell around it.
//!
//! Start-up (`start`): check the data directory's identity (never touch
//! data of another cluster), open sled, start Raft, serve HTTP, then
//! bootstrap (idempotent `initialize` with all peers) or join, then the
//! background tasks. Shutdown is explicit: one watch channel, every task
//! joined.

mod apps;
mod start;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::{Role, Security};
use crate::config::{Limits, Timing};
use crate::handler::Registry;
use crate::model::NodeId;
use crate::peer::Faults;
pub use crate::peer::{JoinAnswer, JoinRequest};
pub use crate::serve::ConnLimits;
use crate::service::Service;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory belongs to another node or cluster.
    #[error("refusing to start: {0}")]
    Identity(String),
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Storage(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    /// Joining the cluster failed.
    #[error("join failed: {0}")]
    Join(String),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(String),
}

/// How a node finds its cluster.
#[derive(Clone, Debug)]
pub enum Membership {
    /// All voters listed; the cluster initializes itself once.
    Peers(BTreeMap<NodeId, String>),
    /// Join a running cluster through any member's address.
    Join(String),
}

/// Default of [`NodeBuilder::external_timeout`].
pub const DEFAULT_EXTERNAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a [`Node`].
pub struct NodeBuilder {
    id: NodeId,
    listen: Option<String>,
    listener: Option<TcpListener>,
    peer_listen: Option<String>,
    peer_listener: Option<TcpListener>,
    advertise: Option<String>,
    data_dir: PathBuf,
    membership: Option<Membership>,
    timing: Timing,
    limits: Limits,
    registry: Registry,
    faults: Faults,
    security: Option<Security>,
    conn_limits: ConnLimits,
    externals: Vec<crate::external::ExternalKind>,
    external_timeout: Duration,
    traits: crate::model::NodeTraits,
}

impl NodeBuilder {
    /// A node with id `id` keeping its data under `data_dir`.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            listen: None,
            listener: None,
            peer_listen: None,
            peer_listener: None,
            advertise: None,
            data_dir: data_dir.into(),
            membership: None,
            timing: Timing::default(),
            limits: Limits::default(),
            registry: Registry::with_builtin_kinds(),
            faults: Faults::default(),
            security: None,
            conn_limits: ConnLimits::default(),
            externals: Vec::new(),
            external_timeout: DEFAULT_EXTERNAL_TIMEOUT,
            traits: crate::model::NodeTraits::default(),
        }
    }

    /// Address to bind (`host:port`).
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.listen = Some(addr.into());
        self
    }

    /// An already-bound listener (port 0 in tests).
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// A separate address for the internal (peer) routes, as etcd's peer
    /// port: the public listener then serves only the public API, and the
    /// peer listener only the internal routes, so the public port can face
    /// clients alone. Without it both are served on the public listener.
    pub fn peer_listen(mut self, addr: impl Into<String>) -> Self {
        self.peer_listen = Some(addr.into());
        self
    }

    /// An already-bound peer listener (see [`NodeBuilder::peer_listen`]).
    pub fn peer_listener(mut self, listener: TcpListener) -> Self {
        self.peer_listener = Some(listener);
        self
    }

    /// Address other nodes use to reach this one's peer routes (default:
    /// the bound peer address, else the bound public address).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// All voters of the cluster (`id -> host:port`), this node included.
    pub fn peers(mut self, peers: BTreeMap<NodeId, String>) -> Self {
        self.membership = Some(Membership::Peers(peers));
        self
    }

    /// Join a running cluster through `addr`.
    pub fn join(mut self, addr: impl Into<String>) -> Self {
        self.membership = Some(Membership::Join(addr.into()));
        self
    }

    /// Timing knobs.
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Handler kinds (default: the built-in `kv` and `minotaur`).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Registers one more handler kind.
    pub fn handler<H: crate::handler::SessionHandler>(mut self, kind: &str, handler: H) -> Self {
        self.registry.register(kind, handler);
        self
    }

    /// A kind served by an app process beside this node (see
    /// docs/external-handlers.md): calls, creates and timers of its
    /// sessions owned here are sent to `url`. Every node declares the same
    /// external kinds, each with its own app's URL.
    pub fn external_kind(mut self, kind: crate::external::ExternalKind) -> Self {
        self.externals.push(kind);
        self
    }

    /// Longest wait for an external app's answer (default 2 s).
    pub fn external_timeout(mut self, timeout: Duration) -> Self {
        self.external_timeout = timeout;
        self
    }

    /// Credentials: the cluster secret peers present, and the tokens of
    /// clients and operators. A node starts only with credentials or with
    /// [`NodeBuilder::insecure`].
    pub fn security(mut self, security: Security) -> Self {
        self.security = Some(security);
        self
    }

    /// No authentication at all: any process that reaches the port may
    /// change the cluster. For experiments only; logged loudly.
    pub fn insecure(mut self) -> Self {
        self.security = Some(Security::Insecure);
        self
    }

    /// This node's placement labels (`minos serve --label KEY=VALUE`):
    /// sessions that require labels are placed only on nodes carrying them.
    /// The node writes them into the table when it starts.
    pub fn labels(mut self, labels: crate::labels::Labels) -> Self {
        self.traits.labels = labels;
        self
    }

    /// Most sessions placement gives this node (`--max-sessions`; `None`,
    /// the default: no limit). A full node takes no new sessions; what it
    /// owns stays.
    pub fn max_sessions(mut self, max: Option<u64>) -> Self {
        self.traits.max_sessions = max;
        self
    }

    /// Connection limits of the HTTP listener.
    pub fn connection_limits(mut self, limits: ConnLimits) -> Self {
        self.conn_limits = limits;
        self
    }

    /// Fault switches shared with a test harness.
    #[cfg(feature = "testkit")]
    pub(crate) fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Starts the node.
    pub async fn start(self) -> Result<Node, StartError> {
        Node::start(self).await
    }
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`]
/// (graceful: hands sessions over first) or [`Node::kill`].
pub struct Node {
    service: Arc<Service>,
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    /// The write batcher: it ends only when every proposer is gone, so it is
    /// aborted on stop.
    batcher: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    /// The HTTP servers (public, and peer when separate).
    servers: Vec<JoinHandle<()>>,
}

/// Parses a peers list `1=host:port,2=host:port,...` (the `--peers` flag).
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("peer {part:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a positive integer"))?;
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        if addr.trim().is_empty() {
            return Err(format!("peer {id} has no address"));
        }
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("peer {id} is listed twice"));
        }
    }
    if peers.is_empty() {
        return Err("the peers list names no node".into());
    }
    Ok(peers)
}

impl Node {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.service.me
    }

    /// The leader as this node knows it, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.service.leader()
    }

    /// The address the HTTP API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Raft metrics (role, leader, applied index), as a watch.
    pub fn metrics(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.service.raft.metrics()
    }

    /// A watch of the last applied log index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.service.view.subscribe()
    }

    /// Reads the applied table.
    pub fn read_state<T>(&self, read: impl FnOnce(&crate::state::ClusterState) -> T) -> T {
        self.service.view.read(|a| read(&a.state))
    }

    /// Typed access to the sessions of kind `kind`, handled by `H`. The kind
    /// must be registered on this node (and on every node of the cluster).
    pub fn sessions<H: crate::handler::SessionHandler>(
        &self,
        kind: &str,
    ) -> Result<crate::sessions::Sessions<H>, crate::error::Error> {
        let kind = crate::model::SessionKind::new(kind)
            .map_err(|e| crate::error::Error::InvalidInput(format!("invalid kind: {e}")))?;
        if self.service.registry.get(&kind).is_none() {
            return Err(crate::error::Error::UnknownKind(kind.to_string()));
        }
        Ok(crate::sessions::Sessions::new(self.service.clone(), kind))
    }

    /// A client of this node's HTTP API, with this node's first admin
    /// token (if it has one).
    pub fn client(&self) -> crate::client::Client {
        let client = crate::client::Client::new(self.addr.to_string());
        match &*self.service.security {
            Security::Enforced { tokens, .. } => match tokens.first(Role::Admin) {
                Some(token) => client.with_token(token),
                None => client,
            },
            Security::Insecure => client,
        }
    }

    /// Sessions running on this node right now (with a task, or parked
    /// until their next call).
    pub fn running_sessions(&self) -> Vec<crate::model::SessionId> {
        self.service.runtime.running_ids()
    }

    /// The service layer (crate tests drive the leader's operations).
    #[cfg(test)]
    pub(crate) fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Session tasks alive on this node: the running sessions not parked.
    pub fn session_tasks(&self) -> usize {
        self.service.runtime.live_tasks()
    }

    /// Graceful stop: stop this node's sessions, have the leader move them at
    /// once, wait (bounded) until they moved, then stop.
    pub async fn shutdown(self) {
        let core = self.service.clone();
        let me = core.me;
        core.runtime.release(None).await;
        let owned = core.view.read(|a| a.state.count_of(Some(me)));
        if owned > 0 {
            info!(
                node = me,
                sessions = owned,
                "handing sessions over before stopping"
            );
            let request = crate::peer::DrainRequest {
                node: me,
                released: true,
                instance: core.lease_env.instance,
            };
            match core.drain(request).await {
                // The moves are committed; wait (bounded) until this node
                // has applied them, so a restart finds them done.
                Ok(_) => {
                    let mut applied = core.view.subscribe();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        applied.wait_for(|_| core.view.read(|a| a.state.count_of(Some(me))) == 0),
                    )
                    .await;
                }
                // Nobody will move them while this node lives (the last node
                // of a stopping cluster, a lost quorum): waiting is pointless.
                Err(e) => {
                    warn!(node = me, error = %e, "handoff failed; failure detection will move the sessions")
                }
            }
        }
        self.kill().await;
    }

    /// Immediate stop, as close to a crash as a process can do to itself:
    /// no handoff. Storage is closed when the call returns.
    pub async fn kill(mut self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.service.raft.shutdown().await;
        self.batcher.abort();
        // Tasks see the shutdown signal and end (the runtime stops its
        // session tasks); whatever is still running after a moment is
        // aborted. One moment for all of them: a task blocked on a write
        // without quorum must not make the stop take 500 ms per task.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
                let _ = task.await;
            }
        }
        // Connections close after the request in hand; do not wait for long.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        for mut server in self.servers.drain(..) {
            if tokio::time::timeout_at(deadline, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
        info!(node = self.service.me, "node stopped");
    }
}
