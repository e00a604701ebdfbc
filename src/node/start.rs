//! Starting a node, as a list of steps: check the configuration, bind,
//! check the data directory's identity, open storage and Raft, wire the
//! parts (each with its own environment), serve HTTP, bootstrap or join,
//! then spawn the background tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Membership, Node, NodeBuilder, StartError};
use crate::auth::Security;
use crate::lease::{Lease, LeaseEnv, Liveness};
use crate::model::NodeId;
use crate::peer::{JoinAnswer, JoinRefusal, JoinRequest, Network, Transport};
use crate::raft::{raft_config, MinosRaft, Proposer, WritePath};
use crate::runtime::{Runtime, TaskEnv};
use crate::scheduler::SchedulerEnv;
use crate::service::Service;
use crate::store::{self, Identity};
use crate::sync::Recover;

/// The name a bootstrapped cluster's identity records: its peers list.
pub(super) fn peers_cluster_name(peers: &BTreeMap<NodeId, String>) -> String {
    let list: Vec<String> = peers
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect();
    format!("peers:{}", list.join(","))
}

/// What the identity check found.
struct Stored {
    identity: Option<Identity>,
    /// Set when the node has no identity yet and must join through this address.
    join_via: Option<String>,
}

/// Storage and Raft, opened.
struct Opened {
    db: sled::Db,
    raft: MinosRaft,
    view: store::StateView,
    transport: Transport,
}

/// The wired parts a running node keeps.
struct Wired {
    service: Arc<Service>,
    batcher: JoinHandle<()>,
    lease_tx: watch::Sender<Lease>,
    shutdown_tx: watch::Sender<bool>,
}

impl Node {
    pub(super) async fn start(mut builder: NodeBuilder) -> Result<Node, StartError> {
        let (security, membership) = check_config(&builder)?;
        let given = builder.listener.take();
        let given_peer = builder.peer_listener.take();
        let bound = bind(given, given_peer, &builder, &membership).await?;
        let (local, advertise) = (bound.local, bound.advertise.clone());
        let stored = check_identity(&builder, &membership)?;
        let opened = open(&builder, &security).await?;
        let wired = wire(&builder, security, &membership, &stored, &opened);
        let servers = serve(bound, &wired.service, &builder);
        let mut node = Node {
            service: wired.service.clone(),
            addr: local,
            shutdown_tx: wired.shutdown_tx,
            batcher: wired.batcher,
            tasks: Vec::new(),
            servers,
        };
        if let Err(e) =
            join_or_bootstrap(&node.service, &builder, &membership, stored, &advertise).await
        {
            node.kill().await;
            return Err(e);
        }
        drop(opened.db);
        // sled creates its files with the process umask: close them to others.
        store::restrict_permissions(&builder.data_dir).map_err(StartError::Storage)?;
        node.tasks = spawn_tasks(&node.service, wired.lease_tx);
        info!(node = builder.id, addr = %local, "node started");
        Ok(node)
    }
}

/// Credentials and membership must be given; the peers must name this node.
fn check_config(builder: &NodeBuilder) -> Result<(Arc<Security>, Membership), StartError> {
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
    let membership = builder
        .membership
        .clone()
        .ok_or_else(|| StartError::Config("give either peers or a join address".into()))?;
    let mut kinds = std::collections::BTreeSet::new();
    if let Some(twice) = builder.externals.iter().find(|e| !kinds.insert(&e.kind)) {
        return Err(StartError::Config(format!(
            "external kind {} is given twice",
            twice.kind
        )));
    }
    if let Membership::Peers(peers) = &membership {
        if !peers.contains_key(&builder.id) {
            return Err(StartError::Config(format!(
                "peers do not include this node's id {}",
                builder.id
            )));
        }
    }
    Ok((security, membership))
}

/// The bound listeners.
struct Bound {
    public: TcpListener,
    /// A separate listener for the peer routes, if asked for.
    peer: Option<TcpListener>,
    local: SocketAddr,
    /// The address peers use (which the peers list must give this node).
    advertise: String,
}

async fn listen(
    given: Option<TcpListener>,
    addr: Option<&String>,
) -> Result<Option<TcpListener>, StartError> {
    match (given, addr) {
        (Some(listener), _) => Ok(Some(listener)),
        (None, Some(addr)) => TcpListener::bind(addr)
            .await
            .map(Some)
            .map_err(|e| StartError::Listen(addr.clone(), e)),
        (None, None) => Ok(None),
    }
}

/// Binds the public listener (and the peer listener when asked for); the
/// address peers use must be the one the peers list gives this node.
async fn bind(
    given: Option<TcpListener>,
    given_peer: Option<TcpListener>,
    builder: &NodeBuilder,
    membership: &Membership,
) -> Result<Bound, StartError> {
    let public = listen(given, builder.listen.as_ref())
        .await?
        .ok_or_else(|| StartError::Config("no listen address".into()))?;
    let peer = listen(given_peer, builder.peer_listen.as_ref()).await?;
    let addr_of = |l: &TcpListener| {
        l.local_addr()
            .map_err(|e| StartError::Listen("listener".into(), e))
    };
    let local = addr_of(&public)?;
    let peer_local = peer.as_ref().map(addr_of).transpose()?.unwrap_or(local);
    let advertise = builder
        .advertise
        .clone()
        .unwrap_or_else(|| peer_local.to_string());
    if let Membership::Peers(peers) = membership {
        if peers.get(&builder.id) != Some(&advertise) {
            return Err(StartError::Config(format!(
                "peers give node {} the address {:?}, but it listens on {advertise}",
                builder.id,
                peers.get(&builder.id)
            )));
        }
    }
    Ok(Bound {
        public,
        peer,
        local,
        advertise,
    })
}

/// Serves the public routes, and the peer routes on their own listener or
/// beside the public ones.
fn serve(bound: Bound, service: &Arc<Service>, builder: &NodeBuilder) -> Vec<JoinHandle<()>> {
    let public = crate::api::router(service.clone());
    let peer = crate::peer::server::router(service.clone());
    let spawn = |listener, app| {
        tokio::spawn(crate::serve::serve(
            listener,
            app,
            builder.conn_limits,
            service.shutdown.clone(),
        ))
    };
    match bound.peer {
        Some(peer_listener) => vec![spawn(bound.public, public), spawn(peer_listener, peer)],
        None => vec![spawn(bound.public, public.merge(peer))],
    }
}

/// Never opens data of another node or cluster: the identity lives in a
/// plain file, checked before sled is opened, so a refused start touches
/// nothing.
fn check_identity(builder: &NodeBuilder, membership: &Membership) -> Result<Stored, StartError> {
    let (me, dir) = (builder.id, &builder.data_dir);
    std::fs::create_dir_all(dir)
        .map_err(|e| StartError::Storage(format!("{}: {e}", dir.display())))?;
    store::restrict_permissions(dir).map_err(StartError::Storage)?;
    let identity = store::read_identity(dir).map_err(StartError::Storage)?;
    let mut join_via = None;
    match (&identity, membership) {
        (Some(identity), _) if identity.node_id != me => {
            return Err(StartError::Identity(format!(
                "data dir {} belongs to node {}, not node {me}",
                dir.display(),
                identity.node_id
            )));
        }
        (Some(identity), Membership::Peers(peers))
            if identity.cluster.starts_with("peers:")
                && identity.cluster != peers_cluster_name(peers) =>
        {
            return Err(StartError::Identity(format!(
                "data dir {} belongs to cluster '{}', but --peers describe '{}'",
                dir.display(),
                identity.cluster,
                peers_cluster_name(peers)
            )));
        }
        (Some(_), _) => {}
        (None, Membership::Peers(peers)) => {
            let fresh = Identity {
                node_id: me,
                cluster: peers_cluster_name(peers),
            };
            store::write_identity(dir, &fresh).map_err(StartError::Storage)?;
        }
        (None, Membership::Join(addr)) => join_via = Some(addr.clone()),
    }
    Ok(Stored { identity, join_via })
}

/// Opens sled and starts Raft over it.
async fn open(builder: &NodeBuilder, security: &Security) -> Result<Opened, StartError> {
    let sled_dir: PathBuf = builder.data_dir.clone();
    let db = tokio::task::spawn_blocking(move || store::open_db(&sled_dir))
        .await
        .map_err(|e| StartError::Storage(e.to_string()))?
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let (log_store, sm_store) = store::open_stores(&db, &builder.data_dir)
        .map_err(|e| StartError::Storage(e.to_string()))?;
    let view = sm_store.view();
    let transport = Transport::new(
        builder.faults.clone(),
        security.peer_secret().map(String::from),
    );
    let config = Arc::new(raft_config(&builder.timing).map_err(StartError::Config)?);
    let network = Network::new(transport.clone());
    let raft = MinosRaft::new(builder.id, config, network, log_store, sm_store)
        .await
        .map_err(|e| {
            StartError::Storage(format!(
                "cannot read the log and state in {}: {e} (written by an incompatible minos version?)",
                builder.data_dir.display()
            ))
        })?;
    Ok(Opened {
        db,
        raft,
        view,
        transport,
    })
}

/// Builds each part with its own environment, and the service over them.
fn wire(
    builder: &NodeBuilder,
    security: Arc<Security>,
    membership: &Membership,
    stored: &Stored,
    opened: &Opened,
) -> Wired {
    let me = builder.id;
    let (raft, view, transport) = (&opened.raft, &opened.view, &opened.transport);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let write_path = Arc::new(WritePath {
        metrics: metrics.clone(),
        me,
        raft: raft.clone(),
        view: view.clone(),
        transport: transport.clone(),
        timing: builder.timing.clone(),
        history_keep: builder.limits.history_per_session,
    });
    let (proposer, batcher) = write_path.start();
    let (lease_tx, lease_rx) = watch::channel(Lease::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task_env = TaskEnv {
        me,
        view: view.clone(),
        lease: lease_rx.clone(),
        proposer: proposer.clone(),
        max_state_bytes: builder.limits.max_state_bytes,
        retention: builder.limits.call_retention,
        kick: Arc::new(Notify::new()),
        metrics: metrics.clone(),
        park_after: builder.limits.park_after,
        live_tasks: Default::default(),
    };
    let (registry, apps) = kinds(builder);
    let runtime = Runtime::new(task_env, registry.clone(), transport.clone());
    let (lease_env, scheduler) = leader_envs(builder, opened, &proposer, &runtime, &metrics);
    let cluster = match (&stored.identity, membership) {
        (Some(identity), _) => identity.cluster.clone(),
        (None, Membership::Peers(peers)) => peers_cluster_name(peers),
        (None, Membership::Join(_)) => String::new(),
    };
    let service = Arc::new(Service {
        me,
        raft: raft.clone(),
        view: view.clone(),
        proposer,
        transport: transport.clone(),
        timing: builder.timing.clone(),
        limits: builder.limits.clone(),
        registry,
        apps,
        security,
        lease: lease_rx,
        runtime,
        shutdown: shutdown_rx,
        lease_env,
        scheduler,
        cluster: std::sync::RwLock::new(cluster),
        metrics,
        traits: builder.traits.clone(),
    });
    Wired {
        service,
        batcher,
        lease_tx,
        shutdown_tx,
    }
}

/// The handler kinds, the external ones among them with their apps.
fn kinds(builder: &NodeBuilder) -> (crate::handler::Registry, Vec<Arc<crate::external::App>>) {
    let mut registry = builder.registry.clone();
    let apps = crate::external::register(
        &mut registry,
        &builder.externals,
        builder.external_timeout,
        builder.limits.max_state_bytes,
    );
    (registry, apps)
}

/// The environments of the lease keeper and grant, and of the leader's
/// scheduler.
fn leader_envs(
    builder: &NodeBuilder,
    opened: &Opened,
    proposer: &Proposer,
    runtime: &Arc<Runtime>,
    metrics: &Arc<crate::metrics::Metrics>,
) -> (Arc<LeaseEnv>, Arc<SchedulerEnv>) {
    let lease_env = Arc::new(LeaseEnv {
        me: builder.id,
        raft: opened.raft.clone(),
        view: opened.view.clone(),
        transport: opened.transport.clone(),
        timing: builder.timing.clone(),
        liveness: Liveness::default(),
        metrics: metrics.clone(),
        instance: crate::lease::new_instance(),
    });
    let scheduler = Arc::new(SchedulerEnv {
        me: builder.id,
        raft: opened.raft.clone(),
        view: opened.view.clone(),
        proposer: proposer.clone(),
        transport: opened.transport.clone(),
        timing: builder.timing.clone(),
        liveness: lease_env.liveness.clone(),
        runtime: runtime.clone(),
    });
    (lease_env, scheduler)
}

/// Joins through the given member (a node without identity), or
/// initializes the cluster with every peer (idempotent), checking that a
/// restarted node's voters agree with its peers list.
async fn join_or_bootstrap(
    service: &Service,
    builder: &NodeBuilder,
    membership: &Membership,
    stored: Stored,
    advertise: &str,
) -> Result<(), StartError> {
    let me = builder.id;
    if let Some(via) = stored.join_via {
        let answer = join_cluster(service, &via, me, advertise)
            .await
            .map_err(StartError::Join)?;
        *service.cluster.write().recover() = answer.cluster.clone();
        let identity = Identity {
            node_id: me,
            cluster: answer.cluster,
        };
        return store::write_identity(&builder.data_dir, &identity).map_err(StartError::Storage);
    }
    let Membership::Peers(peers) = membership else {
        return Ok(());
    };
    let members: BTreeMap<NodeId, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect();
    match service.raft.initialize(members).await {
        Ok(()) => info!(node = me, "cluster initialized"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            info!(
                node = me,
                "cluster already initialized; not initializing again"
            )
        }
        Err(e) => return Err(StartError::Raft(e.to_string())),
    }
    // A restarted node must not silently run with other voters than its
    // flags say.
    let voters = crate::raft::voters(&service.raft);
    let listed: BTreeSet<NodeId> = peers.keys().copied().collect();
    if !voters.is_empty() && !voters.is_subset(&listed) && !listed.is_subset(&voters) {
        return Err(StartError::Identity(format!(
            "--peers list {listed:?}, but the cluster's voters are {voters:?}"
        )));
    }
    Ok(())
}

/// Asks `via` to admit this node, retrying while the cluster is busy with
/// another membership change or not reachable yet (bounded: 60 s).
async fn join_cluster(
    service: &Service,
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
        let answer = service
            .transport
            .join(via, &request, Duration::from_secs(30))
            .await;
        match answer {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(JoinRefusal::Busy(_))) if Instant::now() < deadline => {}
            Ok(Err(refusal)) => return Err(refusal.to_string()),
            Err(e) if Instant::now() < deadline && e.not_delivered() => {}
            Err(e) => return Err(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lease keeper, the leader's supervisor, the reconciler, the leader
/// watch, the snapshot policy and the apps' watch.
fn spawn_tasks(service: &Arc<Service>, lease_tx: watch::Sender<Lease>) -> Vec<JoinHandle<()>> {
    let shutdown = service.shutdown.clone();
    vec![
        tokio::spawn(crate::lease::keep_lease(
            service.lease_env.clone(),
            lease_tx,
        )),
        tokio::spawn(crate::scheduler::supervise(
            service.scheduler.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(service.runtime.clone().reconcile_loop(shutdown.clone())),
        tokio::spawn(crate::service::announce_traits(service.clone())),
        tokio::spawn(crate::scheduler::watch_leader(
            service.scheduler.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(crate::raft::snapshot_policy(
            service.raft.clone(),
            service.view.clone(),
            service.timing.snapshot_every,
            shutdown.clone(),
        )),
        tokio::spawn(super::apps::watch(service.clone(), shutdown)),
    ]
}
