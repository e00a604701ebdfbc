//! Typed sessions for embedding services: start, call, read and stop a
//! session of a registered kind with the handler's own message and reply
//! types (serde underneath). The same sessions stay callable over HTTP with
//! JSON.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::handler::SessionHandler;
use crate::model::{CallKey, Command, Epoch, NodeId, Session, SessionId, SessionKind};
use crate::service::{create_session, Service};

/// Default time a typed call waits while its session moves.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A typed reply with where it was answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply<R> {
    /// The handler's reply.
    pub reply: R,
    /// Node that ran the session.
    pub owner: NodeId,
    /// Epoch it ran under.
    pub epoch: Epoch,
}

/// Sessions of one kind, seen through a local [`crate::Node`].
pub struct Sessions<H> {
    core: Arc<Service>,
    kind: SessionKind,
    _handler: PhantomData<fn() -> H>,
}

impl<H> Clone for Sessions<H> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
            kind: self.kind.clone(),
            _handler: PhantomData,
        }
    }
}

fn session_id(id: &str) -> Result<SessionId, Error> {
    SessionId::new(id).map_err(|e| Error::InvalidInput(format!("invalid session id: {e}")))
}

impl<H: SessionHandler> Sessions<H> {
    pub(crate) fn new(core: Arc<Service>, kind: SessionKind) -> Self {
        Self {
            core,
            kind,
            _handler: PhantomData,
        }
    }

    /// Starts a session with the handler's default first state.
    pub async fn start(&self, id: &str) -> Result<Session, Error> {
        let anywhere = crate::model::Requirement::default();
        create_session(
            &self.core,
            session_id(id)?,
            self.kind.clone(),
            None,
            anywhere,
        )
        .await
    }

    /// Starts a session with the handler's default first state that runs
    /// only where `placement` allows (labels, spread; see
    /// [`crate::placement::Planner`]). It stays unplaced while no Up node
    /// fits, and is placed as soon as one does.
    pub async fn start_placed(
        &self,
        id: &str,
        placement: crate::model::Requirement,
    ) -> Result<Session, Error> {
        placement
            .validate()
            .map_err(|e| Error::InvalidInput(format!("invalid placement: {e}")))?;
        create_session(
            &self.core,
            session_id(id)?,
            self.kind.clone(),
            None,
            placement,
        )
        .await
    }

    /// Starts a session with `initial` as the creator's first state (the
    /// handler's `create` validates it).
    pub async fn start_with<S: Serialize>(&self, id: &str, initial: &S) -> Result<Session, Error> {
        let initial = serde_json::to_value(initial)
            .map_err(|e| Error::InvalidInput(format!("initial state does not serialize: {e}")))?;
        create_session(
            &self.core,
            session_id(id)?,
            self.kind.clone(),
            Some(initial),
            crate::model::Requirement::default(),
        )
        .await
    }

    /// Sends a message to the live session wherever it runs, waiting up to
    /// [`DEFAULT_CALL_TIMEOUT`] while it moves.
    pub async fn call(&self, id: &str, msg: &H::Msg) -> Result<Reply<H::Reply>, Error>
    where
        H::Msg: Serialize,
        H::Reply: DeserializeOwned,
    {
        self.call_with_timeout(id, msg, DEFAULT_CALL_TIMEOUT).await
    }

    /// [`Sessions::call`] with an explicit timeout.
    pub async fn call_with_timeout(
        &self,
        id: &str,
        msg: &H::Msg,
        timeout: Duration,
    ) -> Result<Reply<H::Reply>, Error>
    where
        H::Msg: Serialize,
        H::Reply: DeserializeOwned,
    {
        let id = session_id(id)?;
        let msg = serde_json::to_value(msg)
            .map_err(|e| Error::InvalidInput(format!("message does not serialize: {e}")))?;
        if !self.core.view.read(|a| a.state.sessions.contains_key(&id)) {
            self.core
                .read_barrier()
                .await
                .map_err(|e| Error::NoQuorum(e.to_string()))?;
        }
        let key = CallKey::new(crate::model::new_call_key()).ok();
        let answer = self.core.runtime.call(&id, msg, timeout, key).await?;
        let reply = serde_json::from_value(answer.reply).map_err(|e| {
            Error::OutcomeUnknown(format!(
                "the reply does not decode as this kind's reply: {e}"
            ))
        })?;
        Ok(Reply {
            reply,
            owner: answer.owner,
            epoch: answer.epoch,
        })
    }

    /// The last committed state (linearizable read).
    pub async fn state(&self, id: &str) -> Result<H::State, Error> {
        let id = session_id(id)?;
        self.core
            .read_barrier()
            .await
            .map_err(|e| Error::NoQuorum(e.to_string()))?;
        let state = self
            .core
            .view
            .read(|a| a.state.sessions.get(&id).map(|s| s.state.clone()))
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        serde_json::from_str(&state.0)
            .map_err(|e| Error::Rejected(format!("stored state does not fit this kind: {e}")))
    }

    /// Each committed change of the session (its row now first), from this
    /// node, until it is deleted, this watcher falls too far behind, or the
    /// node stops: the stream then ends with `Err(WatchEnd)` saying which.
    /// A slow watcher never slows the session (it is ended instead).
    pub fn watch(
        &self,
        id: &str,
    ) -> Result<
        impl futures::Stream<Item = Result<crate::api::SessionChange, crate::api::WatchEnd>>,
        Error,
    > {
        Ok(crate::api::follow_session(
            self.core.clone(),
            session_id(id)?,
            None,
        ))
    }

    /// Deletes the session.
    pub async fn stop(&self, id: &str) -> Result<(), Error> {
        let id = session_id(id)?;
        self.core
            .proposer
            .propose(Command::DeleteSession { id })
            .await??;
        Ok(())
    }
}
