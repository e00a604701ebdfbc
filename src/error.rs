//! The library's error type for embedding services: one enum for everything
//! a typed session operation can answer. The HTTP API maps it to status
//! codes in `api/error.rs`, the only place that knows about HTTP.

use crate::model::{NodeId, Rejection, SessionId};
use crate::peer::{CallError, LeaderError};
use crate::raft::WriteError;

/// Why a session operation failed. New variants may be added: match with a
/// catch-all arm.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is invalid (bad id, bad message); nothing was written.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// No handler is registered for this kind.
    #[error("unknown session kind {0:?}")]
    UnknownKind(String),
    /// The session does not exist.
    #[error("session {0} does not exist")]
    NotFound(SessionId),
    /// A session with this id exists already.
    #[error("session {0} already exists")]
    Exists(SessionId),
    /// The handler refused the message or first state; nothing was committed.
    #[error("rejected by the session: {0}")]
    Rejected(String),
    /// The state is over the size limit; nothing was committed.
    #[error("state is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Size of the refused state.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// No leader or no quorum; nothing was written.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// Not possible right now (session moving past the timeout, node
    /// shutting down); nothing was written.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The operation may or may not have taken effect.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The log refused a write that raced another one (a stale epoch or
    /// version, a key already used); nothing was written. `code` names
    /// which: `stale_epoch`, `stale_version`, `duplicate_call`.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Human message.
        message: String,
    },
    /// No such node in the cluster.
    #[error("node {0} is not a member")]
    NoSuchNode(NodeId),
    /// The request cannot be done in the cluster's present shape (removing
    /// the last voter, say); nothing was changed.
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Timeout(_) | WriteError::Failed(_) => Error::OutcomeUnknown(e.to_string()),
            WriteError::NoLeader => Error::NoQuorum(e.to_string()),
            WriteError::ShuttingDown => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<LeaderError> for Error {
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::NoLeader => Error::NoQuorum(e.to_string()),
            LeaderError::NotAMember(node) => Error::NoSuchNode(node),
            LeaderError::NotAllowed(reason) => Error::NotAllowed(reason),
            LeaderError::NotLeader(_) | LeaderError::Failed(_) => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<Rejection> for Error {
    fn from(e: Rejection) -> Self {
        match e {
            Rejection::NoSuchSession(id) => Error::NotFound(id),
            Rejection::SessionExists(id) => Error::Exists(id),
            Rejection::NoSuchNode(node) => Error::NoSuchNode(node),
            Rejection::StaleEpoch { .. } => Error::Conflict {
                code: "stale_epoch",
                message: e.to_string(),
            },
            Rejection::StaleVersion { .. } => Error::Conflict {
                code: "stale_version",
                message: e.to_string(),
            },
            Rejection::DuplicateCall { .. } => Error::Conflict {
                code: "duplicate_call",
                message: e.to_string(),
            },
        }
    }
}

impl From<CallError> for Error {
    fn from(e: CallError) -> Self {
        match e {
            CallError::NotFound(id) => Error::NotFound(id),
            CallError::Rejected(message) => Error::Rejected(message),
            CallError::StateTooLarge(size, limit) => Error::TooLarge { size, limit },
            CallError::Unavailable(..) | CallError::NotHere => Error::Unavailable(e.to_string()),
            CallError::OutcomeUnknown(message) => Error::OutcomeUnknown(message),
        }
    }
}
