//! The typed client side of every internal route: one method per request,
//! over [`Transport`]. Answers that carry their own failure (`Result<_,
//! String>` from the peer) come back as they are; a failure to deliver or
//! to read the answer is the outer [`InternalError`].

use std::time::Duration;

use serde::de::DeserializeOwned;

use super::messages::{
    CallError, CallReply, DrainRequest, ForwardedCall, HandoffReport, JoinAnswer, JoinRefusal,
    JoinRequest, LeaderError, LeaseAnswer, LeaseRequest, ReleaseRequest,
};
use super::paths;
use super::transport::{InternalError, Transport};
use crate::model::{Command, NodeId, SessionId};

/// A peer's answer that may carry its own refusal.
pub type Answer<T> = Result<Result<T, LeaderError>, InternalError>;
/// A join's answer.
pub type Joined = Result<Result<JoinAnswer, JoinRefusal>, InternalError>;

impl Transport {
    /// Forwards a batch of commands to the leader (bincode both ways; the
    /// answer type is the write path's).
    pub async fn propose<Resp: DeserializeOwned>(
        &self,
        leader: NodeId,
        addr: &str,
        commands: &[Command],
        timeout: Duration,
    ) -> Result<Resp, InternalError> {
        self.post_bin(leader, addr, paths::PROPOSE, &commands, timeout)
            .await
    }

    /// Asks the leader for a read index.
    pub async fn read_index(&self, leader: NodeId, addr: &str, timeout: Duration) -> Answer<u64> {
        self.post_json(leader, addr, paths::READ_INDEX, &(), timeout)
            .await
    }

    /// Asks the leader for a lease.
    pub async fn lease(
        &self,
        leader: NodeId,
        addr: &str,
        request: &LeaseRequest,
        timeout: Duration,
    ) -> Result<LeaseAnswer, InternalError> {
        self.post_json(leader, addr, paths::LEASE, request, timeout)
            .await
    }

    /// Tells an owner to let go of sessions.
    pub async fn release(
        &self,
        node: NodeId,
        addr: &str,
        request: &ReleaseRequest,
        timeout: Duration,
    ) -> Answer<()> {
        self.post_json(node, addr, paths::RELEASE, request, timeout)
            .await
    }

    /// Forwards a call to the session's owner. A call without a key goes
    /// on a fresh connection: a crashed owner then shows as refused (not
    /// delivered, so the router tries the new owner) instead of as a reset
    /// of a stale pooled connection, which would answer `outcome_unknown`.
    /// A keyed call goes on the pooled connections: the router retries its
    /// unknown outcomes with its key, which applies nothing twice, so it
    /// need not pay a connect (and its teardown) per call.
    pub async fn call(
        &self,
        owner: NodeId,
        addr: &str,
        id: &SessionId,
        call: &ForwardedCall,
        timeout: Duration,
    ) -> Result<Result<CallReply, CallError>, InternalError> {
        let path = format!("{}{id}", paths::CALL);
        let client = match call.key {
            Some(_) => &self.http,
            None => &self.fresh,
        };
        self.json_with(client, owner, addr, &path, call, timeout)
            .await
    }

    /// Asks any member to admit this node (`target` 0: not a member yet).
    pub async fn join(&self, via: &str, request: &JoinRequest, timeout: Duration) -> Joined {
        self.post_json(0, via, paths::JOIN, request, timeout).await
    }

    /// Asks the node at `addr` which node it is.
    pub async fn whoami(
        &self,
        node: NodeId,
        addr: &str,
        timeout: Duration,
    ) -> Result<NodeId, InternalError> {
        self.post_json(node, addr, paths::WHOAMI, &(), timeout)
            .await
    }

    /// Has the leader drain a node.
    pub async fn leader_drain(
        &self,
        leader: NodeId,
        addr: &str,
        request: &DrainRequest,
    ) -> Answer<HandoffReport> {
        self.post_json(leader, addr, paths::LEADER_DRAIN, request, LEADER_TIMEOUT)
            .await
    }

    /// Has the leader make a Draining node Up again.
    pub async fn leader_undrain(&self, leader: NodeId, addr: &str, node: NodeId) -> Answer<()> {
        self.post_json(leader, addr, paths::LEADER_UNDRAIN, &node, LEADER_TIMEOUT)
            .await
    }

    /// Has the leader rebalance.
    pub async fn leader_rebalance(&self, leader: NodeId, addr: &str) -> Answer<HandoffReport> {
        self.post_json(leader, addr, paths::LEADER_REBALANCE, &(), LEADER_TIMEOUT)
            .await
    }

    /// Has the leader remove a voter.
    pub async fn leader_remove(&self, leader: NodeId, addr: &str, node: NodeId) -> Answer<()> {
        self.post_json(leader, addr, paths::LEADER_REMOVE, &node, LEADER_TIMEOUT)
            .await
    }

    /// Forwards a join to the leader.
    pub async fn leader_join(&self, leader: NodeId, addr: &str, request: &JoinRequest) -> Joined {
        self.post_json(leader, addr, paths::JOIN, request, LEADER_TIMEOUT)
            .await
    }
}

/// Longest wait for a leader's operation (membership changes retry inside).
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
