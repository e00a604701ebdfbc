//! `Node` and `NodeBuilder`: wire storage, Raft, the write path, leases, the
//! scheduler, the runtime and the HTTP API into one running node. This is
//! the embedding entry point; `minos serve` is a thin shell around it.
//!
//! Start-up order: check the data directory's identity (never touch data of
//! another cluster), open sled, start Raft, serve HTTP, then bootstrap
//! (idempotent `initialize` with all peers) or join, then the background
//! tasks. Shutdown is explicit: one watch channel, every task joined.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::auth::{Role, Security};
use crate::config::{Limits, Timing};
use crate::handler::Registry;
use crate::lease::{Lease, Liveness};
use crate::model::NodeId;
use crate::network::{Faults, Network, Transport};
use crate::raft::{raft_config, MinosRaft, Proposer, WritePath};
use crate::runtime::{Runtime, TaskEnv};
pub use crate::serve::ConnLimits;
use crate::store::{self, Identity, StateView};

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

/// Builds a [`Node`].
pub struct NodeBuilder {
    id: NodeId,
    listen: Option<String>,
    listener: Option<TcpListener>,
    advertise: Option<String>,
    data_dir: PathBuf,
    membership: Option<Membership>,
    timing: Timing,
    limits: Limits,
    registry: Registry,
    faults: Faults,
    security: Option<Security>,
    conn_limits: ConnLimits,
}

impl NodeBuilder {
    /// A node with id `id` keeping its data under `data_dir`.
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            id,
            listen: None,
            listener: None,
            advertise: None,
            data_dir: data_dir.into(),
            membership: None,
            timing: Timing::default(),
            limits: Limits::default(),
            registry: Registry::with_builtin_kinds(),
            faults: Faults::default(),
            security: None,
            conn_limits: ConnLimits::default(),
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

    /// Address other nodes use to reach this one (default: the bound address).
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

    /// Connection limits of the HTTP listener.
    pub fn connection_limits(mut self, limits: ConnLimits) -> Self {
        self.conn_limits = limits;
        self
    }

    /// Fault switches shared with a test harness.
    pub(crate) fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Starts the node.
    pub async fn start(self) -> Result<Node, StartError> {
        Node::start(self).await
    }
}

/// Everything the parts of a node share.
pub(crate) struct Core {
    pub(crate) me: NodeId,
    pub(crate) raft: MinosRaft,
    pub(crate) view: StateView,
    pub(crate) proposer: Proposer,
    pub(crate) write_path: Arc<WritePath>,
    pub(crate) transport: Transport,
    pub(crate) timing: Timing,
    pub(crate) limits: Limits,
    pub(crate) registry: Registry,
    pub(crate) security: Arc<Security>,
    pub(crate) lease: watch::Receiver<Lease>,
    pub(crate) liveness: Liveness,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Identity name of the cluster (empty until a joining node is admitted).
    pub(crate) cluster: std::sync::RwLock<String>,
}

impl Core {
    /// Address of a member, from the Raft membership (which also knows
    /// nodes not yet in the table).
    pub(crate) fn node_addr(&self, node: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
    }

    /// The current leader, if known.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Index a linearizable read must wait for: the leader confirms it is
    /// still leader and reports its commit point.
    pub(crate) async fn read_index(&self) -> Result<u64, String> {
        let deadline = Instant::now() + self.timing.write_timeout;
        loop {
            let Some(leader) = self.leader() else {
                if Instant::now() >= deadline {
                    return Err("no leader: the cluster has no quorum or is electing one".into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if leader == self.me {
                return match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable())
                    .await
                {
                    Ok(Ok(log_id)) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("leader could not confirm a quorum in time".into()),
                };
            }
            let addr = self.node_addr(leader).ok_or("leader address unknown")?;
            let budget = deadline.saturating_duration_since(Instant::now());
            let answer: Result<Result<u64, String>, _> = self
                .transport
                .post_json(leader, &addr, "/internal/read_index", &(), budget)
                .await;
            match answer {
                Ok(result) => return result,
                Err(e) if e.not_delivered() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Waits until the local state machine has applied `index`.
    pub(crate) async fn await_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut applied = self.view.subscribe();
        let result =
            tokio::time::timeout(timeout, applied.wait_for(|applied| *applied >= index)).await;
        matches!(result, Ok(Ok(_)))
    }

    /// A linearizable read barrier: after it, the local view includes every
    /// write acknowledged before it started.
    pub(crate) async fn read_barrier(&self) -> Result<(), String> {
        let index = self.read_index().await?;
        if self.await_applied(index, self.timing.write_timeout).await {
            Ok(())
        } else {
            Err(format!("this node has not caught up to index {index}"))
        }
    }

    /// Runs a leader-only operation here if this node leads, else forwards
    /// its JSON request to the leader's internal route `path`.
    pub(crate) async fn on_leader<Req, Resp>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, String>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
    {
        let leader = self
            .leader()
            .ok_or("no leader: the cluster has no quorum")?;
        let addr = self.node_addr(leader).ok_or("leader address unknown")?;
        let answer: Result<Result<Resp, String>, _> = self
            .transport
            .post_json(leader, &addr, path, request, Duration::from_secs(30))
            .await;
        answer.map_err(|e| e.to_string())?
    }
}

/// Asked of any member by a node that wants to join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new node's id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
}

/// What a joining node learns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Identity name of the cluster.
    pub cluster: String,
}

/// A running node. Dropping it does not stop it: call [`Node::shutdown`]
/// (graceful: hands sessions over first) or [`Node::kill`].
pub struct Node {
    core: Arc<Core>,
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    /// The write batcher: it ends only when every proposer is gone, so it is
    /// aborted on stop.
    batcher: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<()>,
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

fn peers_cluster_name(peers: &BTreeMap<NodeId, String>) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    format!("peers:{}", list.join(","))
}

impl Node {
    async fn start(builder: NodeBuilder) -> Result<Node, StartError> {
        builder.timing.validate().map_err(StartError::Config)?;
        let security = Arc::new(builder.security.clone().ok_or_else(|| {
            StartError::Config(
                "no credentials: give a cluster secret and tokens (minos serve: \
                 --cluster-secret-file and --token-file), or choose --insecure"
                    .into(),
            )
        })?);
        if matches!(*security, Security::Insecure) {
            warn!(
                node = builder.id,
                "INSECURE: no authentication; anyone who reaches this node's port can change the cluster"
            );
        }
        let me = builder.id;
        let membership = builder
            .membership
            .clone()
            .ok_or_else(|| StartError::Config("give either peers or a join address".into()))?;
        if let Membership::Peers(peers) = &membership {
            if !peers.contains_key(&me) {
                return Err(StartError::Config(format!(
                    "peers do not include this node's id {me}"
                )));
            }
        }
        let listener = match builder.listener {
            Some(listener) => listener,
            None => {
                let addr = builder
                    .listen
                    .clone()
                    .ok_or_else(|| StartError::Config("no listen address".into()))?;
                TcpListener::bind(&addr)
                    .await
                    .map_err(|e| StartError::Listen(addr, e))?
            }
        };
        let local = listener
            .local_addr()
            .map_err(|e| StartError::Listen("listener".into(), e))?;
        let advertise = builder
            .advertise
            .clone()
            .unwrap_or_else(|| local.to_string());
        if let Membership::Peers(peers) = &membership {
            if peers.get(&me) != Some(&advertise) {
                return Err(StartError::Config(format!(
                    "peers give node {me} the address {:?}, but it listens on {advertise}",
                    peers.get(&me)
                )));
            }
        }

        // Identity: never open another cluster's or node's data.
        let dir = builder.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StartError::Storage(format!("{}: {e}", dir.display())))?;
        store::restrict_permissions(&dir).map_err(StartError::Storage)?;
        // The identity lives in a plain file, checked before sled is opened,
        // so a refused start touches nothing.
        let stored = store::read_identity(&dir).map_err(StartError::Storage)?;
        let mut needs_join = None;
        match (&stored, &membership) {
            (Some(identity), _) if identity.node_id != me => {
                return Err(StartError::Identity(format!(
                    "data dir {} belongs to node {}, not node {me}",
                    builder.data_dir.display(),
                    identity.node_id
                )));
            }
            (Some(identity), Membership::Peers(peers))
                if identity.cluster.starts_with("peers:")
                    && identity.cluster != peers_cluster_name(peers) =>
            {
                return Err(StartError::Identity(format!(
                    "data dir {} belongs to cluster '{}', but --peers describe '{}'",
                    builder.data_dir.display(),
                    identity.cluster,
                    peers_cluster_name(peers)
                )));
            }
            (Some(_), _) => {}
            (None, Membership::Peers(peers)) => {
                let identity = Identity {
                    node_id: me,
                    cluster: peers_cluster_name(peers),
                };
                store::write_identity(&dir, &identity).map_err(StartError::Storage)?;
            }
            (None, Membership::Join(addr)) => needs_join = Some(addr.clone()),
        }
        let sled_dir = dir.clone();
        let db = tokio::task::spawn_blocking(move || store::open_db(&sled_dir))
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?
            .map_err(|e| StartError::Storage(e.to_string()))?;

        let (log_store, sm_store) =
            store::open_stores(&db).map_err(|e| StartError::Storage(e.to_string()))?;
        let view = sm_store.view();
        let transport = Transport::new(
            builder.faults.clone(),
            security.peer_secret().map(String::from),
        );
        let config = Arc::new(raft_config(&builder.timing).map_err(StartError::Config)?);
        let raft = MinosRaft::new(
            me,
            config,
            Network::new(transport.clone()),
            log_store,
            sm_store,
        )
        .await
        .map_err(|e| {
            StartError::Storage(format!(
                "cannot read the log and state in {}: {e} (written by an incompatible minos version?)",
                builder.data_dir.display()
            ))
        })?;

        let write_path = Arc::new(WritePath {
            me,
            raft: raft.clone(),
            view: view.clone(),
            transport: transport.clone(),
            timing: builder.timing.clone(),
        });
        let (proposer, batcher) = write_path.clone().start();
        let (lease_tx, lease_rx) = watch::channel(Lease::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let runtime = Runtime::new(
            TaskEnv {
                me,
                view: view.clone(),
                lease: lease_rx.clone(),
                proposer: proposer.clone(),
                max_state_bytes: builder.limits.max_state_bytes,
                retention: builder.limits.call_retention,
                kick: Arc::new(Notify::new()),
            },
            builder.registry.clone(),
            transport.clone(),
        );
        let core = Arc::new(Core {
            me,
            raft: raft.clone(),
            view,
            proposer,
            write_path,
            transport,
            timing: builder.timing.clone(),
            limits: builder.limits.clone(),
            registry: builder.registry.clone(),
            security,
            lease: lease_rx,
            liveness: Liveness::default(),
            runtime: runtime.clone(),
            shutdown: shutdown_rx.clone(),
            cluster: std::sync::RwLock::new(match (&stored, &membership) {
                (Some(identity), _) => identity.cluster.clone(),
                (None, Membership::Peers(peers)) => peers_cluster_name(peers),
                (None, Membership::Join(_)) => String::new(),
            }),
        });

        let app = crate::api::router(core.clone());
        let server = tokio::spawn(crate::serve::serve(
            listener,
            app,
            builder.conn_limits,
            shutdown_rx.clone(),
        ));

        let mut node = Node {
            core: core.clone(),
            addr: local,
            shutdown_tx,
            batcher,
            tasks: Vec::new(),
            server,
        };

        match (&membership, needs_join) {
            (_, Some(join_addr)) => {
                let answer = join_cluster(&core, &join_addr, me, &advertise).await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) => {
                        node.kill().await;
                        return Err(StartError::Join(e));
                    }
                };
                *core.cluster.write().unwrap_or_else(|p| p.into_inner()) = answer.cluster.clone();
                let identity = Identity {
                    node_id: me,
                    cluster: answer.cluster,
                };
                store::write_identity(&dir, &identity).map_err(StartError::Storage)?;
            }
            (Membership::Peers(peers), None) => {
                let members: BTreeMap<NodeId, BasicNode> = peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => info!(node = me, "cluster initialized"),
                    Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                        info!(
                            node = me,
                            "cluster already initialized; not initializing again"
                        )
                    }
                    Err(e) => {
                        node.kill().await;
                        return Err(StartError::Raft(e.to_string()));
                    }
                }
                // A restarted node must not silently run with other voters than
                // its flags say.
                let voters = crate::raft::voters(&raft);
                let listed: BTreeSet<NodeId> = peers.keys().copied().collect();
                if !voters.is_empty() && !voters.is_subset(&listed) && !listed.is_subset(&voters) {
                    node.kill().await;
                    return Err(StartError::Identity(format!(
                        "--peers list {listed:?}, but the cluster's voters are {voters:?}"
                    )));
                }
            }
            (Membership::Join(_), None) => {}
        }
        drop(db);
        // sled creates its files with the process umask: close them to others.
        store::restrict_permissions(&dir).map_err(StartError::Storage)?;

        node.tasks.push(tokio::spawn(crate::lease::keep_lease(
            core.clone(),
            lease_tx,
        )));
        node.tasks.push(tokio::spawn(crate::scheduler::supervise(
            core.clone(),
            shutdown_rx.clone(),
        )));
        node.tasks
            .push(tokio::spawn(runtime.reconcile_loop(shutdown_rx.clone())));
        node.tasks.push(tokio::spawn(crate::scheduler::watch_leader(
            core.clone(),
            shutdown_rx.clone(),
        )));
        info!(node = me, addr = %local, "node started");
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.core.me
    }

    /// The leader as this node knows it, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.core.leader()
    }

    /// The address the HTTP API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Raft metrics (role, leader, applied index), as a watch.
    pub fn metrics(&self) -> watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.core.raft.metrics()
    }

    /// A watch of the last applied log index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.core.view.subscribe()
    }

    /// Reads the applied table.
    pub fn read_state<T>(&self, read: impl FnOnce(&crate::state::ClusterState) -> T) -> T {
        self.core.view.read(|a| read(&a.state))
    }

    /// Typed access to the sessions of kind `kind`, handled by `H`. The kind
    /// must be registered on this node (and on every node of the cluster).
    pub fn sessions<H: crate::handler::SessionHandler>(
        &self,
        kind: &str,
    ) -> Result<crate::sessions::Sessions<H>, crate::error::Error> {
        let kind = crate::model::SessionKind::new(kind)
            .map_err(|e| crate::error::Error::InvalidInput(format!("invalid kind: {e}")))?;
        if self.core.registry.get(&kind).is_none() {
            return Err(crate::error::Error::UnknownKind(kind.to_string()));
        }
        Ok(crate::sessions::Sessions::new(self.core.clone(), kind))
    }

    /// A client of this node's HTTP API, with this node's first admin
    /// token (if it has one).
    pub fn client(&self) -> crate::client::Client {
        let client = crate::client::Client::new(self.addr.to_string());
        match &*self.core.security {
            Security::Enforced { tokens, .. } => match tokens.first(Role::Admin) {
                Some(token) => client.with_token(token),
                None => client,
            },
            Security::Insecure => client,
        }
    }

    /// Sessions running on this node right now.
    pub fn running_sessions(&self) -> Vec<crate::model::SessionId> {
        self.core.runtime.running_ids()
    }

    /// Graceful stop: stop this node's sessions, have the leader move them at
    /// once, wait (bounded) until they moved, then stop.
    pub async fn shutdown(self) {
        let core = self.core.clone();
        let me = core.me;
        core.runtime.release(None).await;
        let owned = core.view.read(|a| a.state.sessions_owned_by(me).count());
        if owned > 0 {
            info!(
                node = me,
                sessions = owned,
                "handing sessions over before stopping"
            );
            let handed: Result<crate::scheduler::HandoffReport, String> =
                if core.leader() == Some(me) {
                    crate::scheduler::drain(&core, me, true).await
                } else {
                    let request = crate::scheduler::DrainRequest {
                        node: me,
                        released: true,
                    };
                    core.on_leader("/internal/leader/drain", &request).await
                };
            if let Err(e) = handed {
                warn!(node = me, error = %e, "handoff failed; failure detection will move the sessions");
            }
            let mut applied = core.view.subscribe();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                applied
                    .wait_for(|_| core.view.read(|a| a.state.sessions_owned_by(me).count()) == 0),
            )
            .await;
        }
        self.kill().await;
    }

    /// Immediate stop, as close to a crash as a process can do to itself:
    /// no handoff. Storage is closed when the call returns.
    pub async fn kill(mut self) {
        let _ = self.shutdown_tx.send(true);
        let _ = self.core.raft.shutdown().await;
        self.batcher.abort();
        // Tasks see the shutdown signal and end (the runtime stops its
        // session tasks); whatever is still running after a moment is aborted.
        for mut task in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_millis(500), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        // Connections close after the request in hand; do not wait for long.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        info!(node = self.core.me, "node stopped");
    }
}

async fn join_cluster(
    core: &Core,
    via: &str,
    me: NodeId,
    advertise: &str,
) -> Result<JoinAnswer, String> {
    let request = JoinRequest {
        id: me,
        addr: advertise.to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer: Result<Result<JoinAnswer, String>, _> = core
            .transport
            .post_json(0, via, "/internal/join", &request, Duration::from_secs(30))
            .await;
        match answer {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) if Instant::now() < deadline && e.contains("in progress") => {}
            Ok(Err(e)) => return Err(e),
            Err(e) if Instant::now() < deadline && e.not_delivered() => {}
            Err(e) => return Err(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Leader: adds a node as learner, waits until it caught up, then makes it a
/// voter. Retries while another membership change is in progress.
pub(crate) async fn admit(core: &Core, request: &JoinRequest) -> Result<JoinAnswer, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    if request.id == 0 {
        return Err("node ids start at 1".into());
    }
    if crate::raft::voters(&core.raft).contains(&request.id)
        && core.node_addr(request.id).as_deref() != Some(request.addr.as_str())
    {
        return Err(format!(
            "node {} is already a voter at another address",
            request.id
        ));
    }
    // The new node must answer, with the cluster secret, at the address it
    // gives, as the node it claims to be.
    let answered: Result<NodeId, _> = core
        .transport
        .post_json(
            request.id,
            &request.addr,
            "/internal/whoami",
            &(),
            Duration::from_secs(5),
        )
        .await;
    match answered {
        Ok(id) if id == request.id => {}
        Ok(id) => {
            return Err(format!(
                "{} answers as node {id}, not node {}",
                request.addr, request.id
            ))
        }
        Err(e) => {
            return Err(format!(
                "the joining node does not answer at its address: {e}"
            ))
        }
    }
    let node = BasicNode {
        addr: request.addr.clone(),
    };
    loop {
        let result = match core.raft.add_learner(request.id, node.clone(), true).await {
            Ok(_) => core
                .raft
                .change_membership(ChangeMembers::AddVoterIds([request.id].into()), false)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => break,
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))
                if Instant::now() < deadline =>
            {
                warn!(error = %e, "membership change busy; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let cluster = cluster_name(core)?;
    Ok(JoinAnswer { cluster })
}

fn cluster_name(core: &Core) -> Result<String, String> {
    let name = core
        .cluster
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if name.is_empty() {
        return Err("this node has not finished joining".into());
    }
    Ok(name)
}
