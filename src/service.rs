//! The service layer of a node: what the public routes, the typed
//! `Sessions<H>` and the peer routes do, written once over the node's
//! handles. Linearizable reads (read index from the leader, then wait
//! until applied), leader-only operations (run here when leading, else
//! forwarded), session create, join admission, and the [`PeerHandler`]
//! of the internal routes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ChangeMembers};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use crate::auth::Security;
use crate::config::{Limits, Timing};
use crate::error::Error;
use crate::handler::{Failure, Registry, SessionContext};
use crate::lease::{Lease, LeaseEnv};
use crate::model::{Applied, Command, Epoch, NodeId, NodeStatus, Session, SessionId, SessionKind};
use crate::peer::server::PeerHandler;
use crate::peer::{
    CallError, CallReply, DrainRequest, ForwardedCall, HandoffReport, JoinAnswer, JoinRefusal,
    JoinRequest, LeaderError, LeaseAnswer, LeaseRequest, ReleaseRequest, Transport,
};
use crate::raft::{ForwardError, MinosRaft, Proposer};
use crate::runtime::Runtime;
use crate::scheduler::SchedulerEnv;
use crate::store::StateView;
use crate::sync::Recover;
use crate::wire::TypeConfig;

/// A node's handles, as the service layer uses them.
pub(crate) struct Service {
    pub(crate) me: NodeId,
    pub(crate) raft: MinosRaft,
    pub(crate) view: StateView,
    pub(crate) proposer: Proposer,
    pub(crate) transport: Transport,
    pub(crate) timing: Timing,
    pub(crate) limits: Limits,
    pub(crate) registry: Registry,
    /// The apps of this node's external kinds.
    pub(crate) apps: Vec<Arc<crate::external::App>>,
    pub(crate) security: Arc<Security>,
    pub(crate) lease: watch::Receiver<Lease>,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The leader's lease grant and liveness record.
    pub(crate) lease_env: Arc<LeaseEnv>,
    /// The leader's handoffs.
    pub(crate) scheduler: Arc<SchedulerEnv>,
    /// Identity name of the cluster (empty until a joining node is admitted).
    pub(crate) cluster: std::sync::RwLock<String>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// This node's labels and capacity, as given at start.
    pub(crate) traits: crate::model::NodeTraits,
}

/// Longest wait for a leader's answer to a read index.
const POLL: Duration = Duration::from_millis(10);

/// The index a linearizable read waits for, from what the leader's
/// `ensure_linearizable` answered (its commit point, or the first entry of
/// its term if later) and the last index of its log, read after it.
///
/// openraft 0.9's read index alone is not enough after a leader restarts:
/// a leader that restarts before anyone else is elected takes up its term
/// again (`Engine::startup`), with the commit point it had saved (not
/// flushed: it can be older than entries it had committed and acknowledged
/// before it died) and the first entry of its term, committed long ago, as
/// its "noop"; so it answers a read index below an acknowledged write, a
/// follower that had not yet learned of that commit serves the read from
/// its older table, and the read misses the write (found by the chaos
/// suite's linearizability checker, likeliest cause: a table read after a
/// SIGKILL of the leader, restarted within 0.43 s, returned the value
/// before a write acknowledged 50 ms before the read started). Every
/// acknowledged write is in the leader's log (it was flushed there before
/// it counted towards its commit), so waiting for the last index of that
/// log covers it; the price is waiting, under writes, for the entries in
/// flight to commit. The last index is taken from openraft's metrics, which
/// may lag its core by a little but never below the log a restarted leader
/// loaded at start-up, and `ensure_linearizable` has passed through the
/// core since.
pub(crate) fn read_index_of(confirmed: Option<u64>, last_log: Option<u64>) -> u64 {
    confirmed.max(last_log).unwrap_or(0)
}

impl Service {
    /// The current leader, if known.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        crate::raft::leader(&self.raft)
    }

    fn leader_addr(&self) -> Result<(NodeId, String), LeaderError> {
        let leader = self.leader().ok_or(LeaderError::NoLeader)?;
        let addr = crate::raft::node_addr(&self.raft, leader)
            .ok_or_else(|| LeaderError::Failed(format!("address of leader {leader} unknown")))?;
        Ok((leader, addr))
    }

    /// The leader's own read index: it confirms with a quorum that it still
    /// leads, and answers the last index of its log, not only its commit
    /// point (see [`read_index_of`]).
    async fn local_read_index(&self, deadline: Instant) -> Result<u64, LeaderError> {
        match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => {
                let last = self.raft.metrics().borrow().last_log_index;
                Ok(read_index_of(log_id.map(|l| l.index), last))
            }
            Ok(Err(e)) => Err(LeaderError::NotLeader(e.to_string())),
            Err(_) => Err(LeaderError::Failed(
                "leader could not confirm a quorum in time".into(),
            )),
        }
    }

    /// Index a linearizable read must wait for, from the leader.
    pub(crate) async fn read_index(&self) -> Result<u64, LeaderError> {
        let started = Instant::now();
        let index = self.read_index_from_leader().await;
        self.metrics
            .read_index
            .observe(started.elapsed().as_secs_f64());
        index
    }

    async fn read_index_from_leader(&self) -> Result<u64, LeaderError> {
        let deadline = Instant::now() + self.timing.write_timeout;
        loop {
            let Some(leader) = self.leader() else {
                if Instant::now() >= deadline {
                    return Err(LeaderError::NoLeader);
                }
                tokio::time::sleep(POLL).await;
                continue;
            };
            if leader == self.me {
                return self.local_read_index(deadline).await;
            }
            let addr = crate::raft::node_addr(&self.raft, leader).ok_or_else(|| {
                LeaderError::Failed(format!("address of leader {leader} unknown"))
            })?;
            let budget = deadline.saturating_duration_since(Instant::now());
            match self.transport.read_index(leader, &addr, budget).await {
                Ok(result) => return result,
                Err(e) if e.not_delivered() && Instant::now() < deadline => {
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(LeaderError::Failed(e.to_string())),
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
    pub(crate) async fn read_barrier(&self) -> Result<(), LeaderError> {
        let index = self.read_index().await?;
        if self.await_applied(index, self.timing.write_timeout).await {
            Ok(())
        } else {
            Err(LeaderError::Failed(format!(
                "this node has not caught up to index {index}"
            )))
        }
    }

    /// Drains `request.node` (on the leader, wherever that is).
    pub(crate) async fn drain(&self, request: DrainRequest) -> Result<HandoffReport, LeaderError> {
        if self.leader() == Some(self.me) {
            let stopping = request.released.then_some(request.instance);
            return crate::scheduler::drain(&self.scheduler, request.node, stopping).await;
        }
        let (leader, addr) = self.leader_addr()?;
        flatten(self.transport.leader_drain(leader, &addr, &request).await)
    }

    /// Makes a Draining node Up again (on the leader, wherever that is): it
    /// takes new sessions again; `cluster rebalance` moves sessions back.
    /// A Down node is refused (it becomes Up when it is heard again), an Up
    /// node is left as it is.
    pub(crate) async fn undrain(&self, node: NodeId) -> Result<(), LeaderError> {
        if self.leader() != Some(self.me) {
            let (leader, addr) = self.leader_addr()?;
            return flatten(self.transport.leader_undrain(leader, &addr, node).await);
        }
        let status = self
            .view
            .read(|a| a.state.nodes.get(&node).map(|n| n.status));
        match status {
            None => Err(LeaderError::NotAMember(node)),
            Some(NodeStatus::Up) => Ok(()),
            Some(NodeStatus::Down) => Err(LeaderError::NotAllowed(format!(
                "node {node} is down; it becomes up by itself when it is heard again"
            ))),
            Some(NodeStatus::Draining) => {
                match self.proposer.propose(Command::NodeUp { id: node }).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(LeaderError::Failed(e.to_string())),
                    Err(e) => Err(LeaderError::Failed(e.to_string())),
                }
            }
        }
    }

    /// Rebalances (on the leader, wherever that is).
    pub(crate) async fn rebalance(&self) -> Result<HandoffReport, LeaderError> {
        if self.leader() == Some(self.me) {
            return crate::scheduler::rebalance(&self.scheduler).await;
        }
        let (leader, addr) = self.leader_addr()?;
        flatten(self.transport.leader_rebalance(leader, &addr).await)
    }

    /// Removes a voter (on the leader, wherever that is).
    pub(crate) async fn remove(&self, node: NodeId) -> Result<(), LeaderError> {
        if self.leader() != Some(self.me) {
            let (leader, addr) = self.leader_addr()?;
            return flatten(self.transport.leader_remove(leader, &addr, node).await);
        }
        let voters: BTreeSet<NodeId> = crate::raft::voters(&self.raft)
            .into_iter()
            .filter(|v| *v != node)
            .collect();
        if voters.is_empty() {
            return Err(LeaderError::NotAllowed(format!(
                "node {node} is the last voter"
            )));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map(drop)
            .map_err(|e| LeaderError::Failed(e.to_string()))
    }

    /// Admits a joining node (on the leader, wherever that is).
    pub(crate) async fn admit(&self, request: JoinRequest) -> Result<JoinAnswer, JoinRefusal> {
        if self.leader() == Some(self.me) {
            return admit(self, &request).await;
        }
        let (leader, addr) = self
            .leader_addr()
            .map_err(|e| JoinRefusal::Busy(e.to_string()))?;
        match self.transport.leader_join(leader, &addr, &request).await {
            Ok(answer) => answer,
            Err(e) if e.not_delivered() => Err(JoinRefusal::Busy(e.to_string())),
            Err(e) => Err(JoinRefusal::Refused(e.to_string())),
        }
    }
}

/// A forwarded leader operation: the leader's own refusal, or why it could
/// not be asked.
fn flatten<T>(answer: crate::peer::Answer<T>) -> Result<T, LeaderError> {
    answer.map_err(|e| LeaderError::Failed(e.to_string()))?
}

impl PeerHandler for Service {
    type ProposeAnswer = Result<Vec<crate::model::CommandResult>, ForwardError>;

    fn security(&self) -> &Security {
        &self.security
    }

    fn raft_body_limit(&self) -> usize {
        // An AppendEntries or a forwarded batch holds many commands, each
        // with a state of up to the limit. A limit below a real batch would
        // stall replication for good, so it is generous (only peers that
        // presented the cluster secret get this far).
        (self.limits.request_body_bytes() * 64).max(64 * 1024 * 1024)
    }

    fn call_body_limit(&self) -> usize {
        self.limits.request_body_bytes()
    }

    fn known_members(&self) -> Option<BTreeSet<NodeId>> {
        crate::raft::members(&self.raft)
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    fn lose_reply(&self, id: &SessionId) -> bool {
        self.transport.faults.take_lost_reply(id)
    }

    async fn append(
        &self,
        request: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.raft.append_entries(request).await
    }

    async fn vote(
        &self,
        request: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.raft.vote(request).await
    }

    async fn install_snapshot(
        &self,
        request: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.raft.install_snapshot(request).await
    }

    async fn propose(&self, commands: Vec<Command>) -> Self::ProposeAnswer {
        self.proposer.accept_forwarded(commands).await
    }

    async fn read_index(&self) -> Result<u64, LeaderError> {
        if self.leader() != Some(self.me) {
            return Err(LeaderError::NotLeader(format!(
                "node {} does not lead",
                self.me
            )));
        }
        self.local_read_index(Instant::now() + self.timing.write_timeout)
            .await
    }

    fn lease(&self, request: LeaseRequest) -> LeaseAnswer {
        crate::lease::grant(&self.lease_env, &request)
    }

    async fn call(&self, id: SessionId, call: ForwardedCall) -> Result<CallReply, CallError> {
        self.runtime.call_local(&id, call.msg, call.key).await
    }

    /// A leader's request to let go of sessions. A request from anyone but
    /// the leader this node follows (or from an older term) is refused;
    /// releasing "all" holds the sessions this node owns now, with the same
    /// expiry as any hold, so a release whose moves never come cannot stop
    /// a node for good.
    async fn release(&self, request: ReleaseRequest) -> Result<(), LeaderError> {
        let (leader, term) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_leader, m.current_term)
        };
        if request.term < term || leader.is_some_and(|l| l != request.from) {
            return Err(LeaderError::NotLeader(format!(
                "release refused: node {} at term {} is not this node's leader (leader {leader:?}, term {term})",
                request.from, request.term
            )));
        }
        match request.sessions {
            Some(ids) => self.runtime.release(Some(&ids)).await,
            None => self.runtime.release_owned().await,
        }
        Ok(())
    }

    async fn join(&self, request: JoinRequest) -> Result<JoinAnswer, JoinRefusal> {
        self.admit(request).await
    }

    fn whoami(&self) -> NodeId {
        self.me
    }

    async fn leader_drain(&self, request: DrainRequest) -> Result<HandoffReport, LeaderError> {
        self.drain(request).await
    }

    async fn leader_undrain(&self, node: NodeId) -> Result<(), LeaderError> {
        self.undrain(node).await
    }

    async fn leader_rebalance(&self) -> Result<HandoffReport, LeaderError> {
        self.rebalance().await
    }

    async fn leader_remove(&self, node: NodeId) -> Result<(), LeaderError> {
        self.remove(node).await
    }
}

/// Creates a session: the handler builds the first state, the leader places
/// it (on a node `placement` admits; unplaced when none can take it now),
/// and the create is committed before this returns.
pub(crate) async fn create_session(
    core: &Service,
    id: SessionId,
    kind: SessionKind,
    initial: Option<serde_json::Value>,
    placement: crate::model::Requirement,
) -> Result<Session, Error> {
    let handler = core
        .registry
        .get(&kind)
        .ok_or_else(|| Error::UnknownKind(kind.to_string()))?;
    let ctx = SessionContext {
        id: id.clone(),
        now: Utc::now(),
        owner: core.me,
        epoch: Epoch(0),
        version: 0,
    };
    let state = handler.create(&ctx, initial).await.map_err(|e| match e {
        Failure::Rejected(e) => Error::Rejected(format!("initial state rejected: {e}")),
        Failure::Unavailable(e) | Failure::Unreachable(e) => Error::Unavailable(e),
    })?;
    if state.len() > core.limits.max_state_bytes {
        return Err(Error::TooLarge {
            size: state.len(),
            limit: core.limits.max_state_bytes,
        });
    }
    // A duplicate is answered without writing a rejected entry: a session
    // seen locally is confirmed by a linearizable read first.
    if core.view.read(|a| a.state.sessions.contains_key(&id)) {
        core.read_barrier()
            .await
            .map_err(|e| Error::NoQuorum(e.to_string()))?;
        if core.view.read(|a| a.state.sessions.contains_key(&id)) {
            return Err(Error::Exists(id));
        }
    }
    // Unconstrained sessions keep the older command: the log of a cluster
    // that uses no constraints stays as it was.
    let command = if placement.is_empty() {
        Command::CreateSession {
            id,
            kind,
            state,
            owner: None,
        }
    } else {
        Command::CreateSessionPlaced {
            id,
            kind,
            state,
            owner: None,
            placement,
        }
    };
    match core.proposer.propose(command).await?? {
        Applied::Session(session) => Ok(*session),
        other => Err(Error::OutcomeUnknown(format!(
            "unexpected outcome {other:?}"
        ))),
    }
}

/// Leader: adds a node as learner, waits until it caught up, then makes it a
/// voter. Retries while another membership change is in progress.
async fn admit(core: &Service, request: &JoinRequest) -> Result<JoinAnswer, JoinRefusal> {
    let deadline = Instant::now() + Duration::from_secs(30);
    check_joiner(core, request).await?;
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
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                if Instant::now() >= deadline {
                    return Err(JoinRefusal::Busy(e.to_string()));
                }
                warn!(error = %e, "membership change busy; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(JoinRefusal::Refused(e.to_string())),
        }
    }
    let cluster = core.cluster.read().recover().clone();
    if cluster.is_empty() {
        return Err(JoinRefusal::Busy(
            "this node has not finished joining".into(),
        ));
    }
    Ok(JoinAnswer { cluster })
}

/// A joining node must have a valid id, must not take over another voter's
/// id, and must answer, with the cluster secret, at the address it gives,
/// as the node it claims to be.
async fn check_joiner(core: &Service, request: &JoinRequest) -> Result<(), JoinRefusal> {
    if request.id == 0 {
        return Err(JoinRefusal::Refused("node ids start at 1".into()));
    }
    let known_addr = crate::raft::node_addr(&core.raft, request.id);
    if crate::raft::voters(&core.raft).contains(&request.id)
        && known_addr.as_deref() != Some(request.addr.as_str())
    {
        return Err(JoinRefusal::Refused(format!(
            "node {} is already a voter at another address",
            request.id
        )));
    }
    let answered = core
        .transport
        .whoami(request.id, &request.addr, Duration::from_secs(5))
        .await;
    match answered {
        Ok(id) if id == request.id => Ok(()),
        Ok(id) => Err(JoinRefusal::Refused(format!(
            "{} answers as node {id}, not node {}",
            request.addr, request.id
        ))),
        Err(e) => Err(JoinRefusal::Refused(format!(
            "the joining node does not answer at its address: {e}"
        ))),
    }
}

/// Pause before a failed `SetNodeTraits` is tried again.
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);

/// Keeps this node's labels and capacity in the table: whenever the applied
/// table shows this node with other traits (at start-up, once admitted,
/// after a restart with new flags), writes `SetNodeTraits` through the
/// leader. Costs one row lookup per applied entry.
pub(crate) async fn announce_traits(service: Arc<Service>) {
    let mut applied = service.view.subscribe();
    let mut shutdown = service.shutdown.clone();
    loop {
        let stale = service.view.read(|a| {
            a.state
                .nodes
                .get(&service.me)
                .is_some_and(|node| node.traits != service.traits)
        });
        if stale {
            let command = Command::SetNodeTraits {
                id: service.me,
                traits: service.traits.clone(),
            };
            if let Err(e) = service.proposer.propose(command).await {
                tracing::debug!(error = %e, "labels not written yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(ANNOUNCE_RETRY) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
