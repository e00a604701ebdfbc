//! Everything between nodes, in one place: the transport (one pooled HTTP
//! client, the cluster secret on every request, injected faults), the typed
//! requests of every internal route (`client`), their bodies
//! (`messages`), openraft's network over it, and the server side of the
//! internal routes (`server`). No module outside `peer` writes an
//! internal path or encodes a peer body.

mod client;
pub use client::Answer;
mod messages;
mod raft_net;
#[cfg(test)]
pub(crate) use raft_net::APPEND_BUDGET;
pub(crate) mod server;
mod transport;

pub use messages::{
    CallError, CallReply, DrainRequest, ForwardedCall, HandoffReport, JoinAnswer, JoinRefusal,
    JoinRequest, LeaderError, LeaseAnswer, LeaseRequest, ReleaseRequest,
};
pub(crate) use raft_net::Network;
pub(crate) use transport::chain as error_chain;
pub use transport::{Faults, HeldWrite, InternalError, PeerClock, Transport};

/// The internal routes (served by [`server`], requested by [`client`]).
pub(crate) mod paths {
    pub const RAFT_APPEND: &str = "/internal/raft/append";
    pub const RAFT_VOTE: &str = "/internal/raft/vote";
    pub const RAFT_SNAPSHOT: &str = "/internal/raft/snapshot";
    pub const PROPOSE: &str = "/internal/propose";
    pub const READ_INDEX: &str = "/internal/read_index";
    pub const LEASE: &str = "/internal/lease";
    pub const PRESENCE: &str = "/internal/presence";
    /// Followed by the session id.
    pub const CALL: &str = "/internal/call/";
    pub const RELEASE: &str = "/internal/release";
    pub const JOIN: &str = "/internal/join";
    pub const WHOAMI: &str = "/internal/whoami";
    pub const LEADER_DRAIN: &str = "/internal/leader/drain";
    pub const LEADER_UNDRAIN: &str = "/internal/leader/undrain";
    pub const LEADER_REBALANCE: &str = "/internal/leader/rebalance";
    pub const LEADER_REMOVE: &str = "/internal/leader/remove";
}
