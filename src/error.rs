//! The library's error type for embedding services: one enum for everything
//! a typed session operation can answer. The HTTP API maps it to status
//! codes in `api.rs`, the only place that knows about HTTP.

use crate::model::{Rejection, SessionId};
use crate::raft::WriteError;
use crate::runtime::CallError;

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

impl From<Rejection> for Error {
    fn from(e: Rejection) -> Self {
        match e {
            Rejection::NoSuchSession(id) => Error::NotFound(id),
            Rejection::SessionExists(id) => Error::Exists(id),
            Rejection::StaleEpoch { .. }
            | Rejection::StaleVersion { .. }
            | Rejection::NoSuchNode(_)
            | Rejection::DuplicateCall { .. } => Error::Unavailable(e.to_string()),
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
