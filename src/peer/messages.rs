//! The requests and answers peers exchange on the internal routes (JSON
//! bodies; Raft's own messages are openraft's types in bincode).

use serde::{Deserialize, Serialize};

use crate::model::{CallKey, Epoch, NodeId, SessionId};

/// A node asks the leader for a lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The asking node.
    pub node: NodeId,
    /// True on the first request after the process started.
    pub fresh: bool,
    /// This process's own random id (a restart gets a new one).
    pub instance: u64,
}

/// The leader's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// Whether the lease was granted.
    pub granted: bool,
    /// The leader's last log index at grant time.
    pub leader_last_log: u64,
    /// Why it was refused.
    pub reason: Option<String>,
}

/// What a handoff moved.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HandoffReport {
    /// Sessions whose move was committed.
    pub moved: usize,
    /// Sessions that could not be handed over (owner unreachable).
    pub skipped: usize,
}

/// A node lets go of sessions: it stops their tasks (finishing the call in
/// hand) and holds them until the move is committed or the hold expires.
/// Only the leader of `term` may ask.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// The asking leader.
    pub from: NodeId,
    /// Its term.
    pub term: u64,
    /// Sessions to release; `None` releases all the node owns (drain).
    pub sessions: Option<Vec<SessionId>>,
}

/// Asks the leader to drain a node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrainRequest {
    /// The node to drain.
    pub node: NodeId,
    /// True when the node itself asks and has stopped its sessions already.
    pub released: bool,
    /// With `released`: the stopping process's `LeaseRequest::instance`, so
    /// a leader that commits the stop late still lets a restarted process
    /// of the node be Up again. 0 otherwise.
    pub instance: u64,
}

/// Asked of any member by a node that wants to join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The new node's id.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
}

/// Why a leader's operation (drain, rebalance, remove, read index,
/// release) was not done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LeaderError {
    /// No leader is known (no quorum, or an election is running).
    #[error("no leader: the cluster has no quorum or is electing one")]
    NoLeader,
    /// The node asked is not the leader (or, for a release, the asker is
    /// not this node's leader).
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The node named is not a member.
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    /// Not possible in the cluster's present shape.
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The leader could not be asked, or the operation failed on its way
    /// (a write timed out, a quorum did not confirm in time).
    #[error("{0}")]
    Failed(String),
}

/// Why a join was not done.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum JoinRefusal {
    /// Not now (a membership change in progress, no leader yet): ask again.
    #[error("busy: {0}")]
    Busy(String),
    /// Never (bad id, an address that does not answer as the node).
    #[error("{0}")]
    Refused(String),
}

/// What a joining node learns.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// Identity name of the cluster.
    pub cluster: String,
}

/// A successful call.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallReply {
    /// The handler's reply.
    pub reply: serde_json::Value,
    /// Node that ran the session.
    #[schema(value_type = u64)]
    pub owner: NodeId,
    /// Epoch it ran under.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
}

/// Why a call did not succeed.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// No such session.
    #[error("session {0} does not exist")]
    NotFound(SessionId),
    /// The handler rejected the message (nothing was committed).
    #[error("rejected by the session: {0}")]
    Rejected(String),
    /// The new state is over the size limit (nothing was committed).
    #[error("new state is {0} bytes; the limit is {1}")]
    StateTooLarge(usize, usize),
    /// The session was not available before the timeout (moving, no quorum).
    #[error("session {0} not available within the timeout: {1}")]
    Unavailable(SessionId, String),
    /// The call may or may not have run (owner lost mid-call, commit unconfirmed).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// This node does not run the session (internal; the router retries).
    #[error("not running here")]
    NotHere,
}

/// A call forwarded to the session's owner (the body of the internal route).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedCall {
    /// The message.
    pub msg: serde_json::Value,
    /// The caller's idempotency key, if any.
    pub key: Option<CallKey>,
}
