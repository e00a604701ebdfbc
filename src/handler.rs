//! The `SessionHandler` trait users implement, and its type-erased form the
//! runtime drives.
//!
//! A handler is pure logic over a typed state: it never does I/O for the
//! runtime's sake. The runtime commits the state after every call that
//! changed it, before the reply leaves, so an acknowledged change survives any
//! failover. Timers are absolute times kept in the state
//! ([`SessionHandler::next_deadline`]), so they survive failover too.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use crate::model::{Epoch, NodeId, SessionId, SessionKind, StateJson};

/// What a handler knows about the call it is serving.
#[derive(Clone, Debug)]
pub struct SessionContext {
    /// The session.
    pub id: SessionId,
    /// Wall-clock time of this call (read once by the runtime).
    pub now: DateTime<Utc>,
    /// The node running the session.
    pub owner: NodeId,
    /// The ownership epoch the session runs under.
    pub epoch: Epoch,
    /// The version of the committed state this call builds on (0 at create).
    pub version: u64,
}

/// Why a handler refused a message or a first state. Answered as HTTP 422.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    /// A rejection with a message for the caller.
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError(message.into())
    }
}

/// Logic of one kind of session (a game, a room, a workflow).
///
/// The state is what gets committed through Raft and survives failover; keep
/// anything that must survive in it, including timers as absolute times.
pub trait SessionHandler: Send + Sync + 'static {
    /// The session's state.
    type State: Serialize + DeserializeOwned + Send + 'static;
    /// A message a caller sends.
    type Msg: DeserializeOwned + Send;
    /// The answer to a message.
    type Reply: Serialize + Send;

    /// Builds the first state from what the creator sent (`None` when it sent
    /// no state). Runs once, on the node that accepts the create.
    fn create(
        &self,
        ctx: &SessionContext,
        initial: Option<serde_json::Value>,
    ) -> Result<Self::State, HandlerError>;

    /// Handles one message. Changes to `state` are committed before the reply
    /// is sent; if the handler returns an error, its changes are discarded.
    fn handle(
        &self,
        ctx: &SessionContext,
        state: &mut Self::State,
        msg: Self::Msg,
    ) -> Result<Self::Reply, HandlerError>;

    /// True when `msg` never changes the state (a read). A query whose
    /// attempt broke (its owner died mid-call) is retried by the router
    /// instead of answering `outcome_unknown`; a query that does change the
    /// state is refused (HTTP 422), so retrying one is always safe.
    fn is_query(&self, _msg: &Self::Msg) -> bool {
        false
    }

    /// False when no state of this kind ever has a deadline (the kind
    /// leaves [`SessionHandler::next_deadline`] as it is): a session of
    /// it that comes to a node with nothing to do is then parked without
    /// its state being read, which is most of what starting the sessions
    /// of a dead node costs. Keep the default (true) if `next_deadline`
    /// can return a time.
    fn has_deadlines(&self) -> bool {
        true
    }

    /// The next time [`SessionHandler::on_deadline`] must run, if any.
    fn next_deadline(&self, _state: &Self::State) -> Option<DateTime<Utc>> {
        None
    }

    /// Runs when the deadline has passed (at once if it passed while the
    /// session was moving). The new state is committed like a call's.
    fn on_deadline(&self, _ctx: &SessionContext, _state: &mut Self::State) {}
}

/// Why a session's logic produced no new state (nothing is committed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The logic refused the message or first state (HTTP 422).
    Rejected(String),
    /// An external app gave no usable answer (HTTP 503).
    Unavailable(String),
    /// An external app could not be reached: the call never ran here and is
    /// tried again where the session runs next.
    Unreachable(String),
}

impl From<HandlerError> for Failure {
    fn from(e: HandlerError) -> Self {
        Failure::Rejected(e.0)
    }
}

/// The answer of a session's logic, to be awaited: at once for a Rust
/// handler, after a round trip for an external one.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, Failure>> + Send + 'a>>;

/// A handler with its types erased to JSON, as the runtime stores it.
pub(crate) trait DynHandler: Send + Sync + 'static {
    fn create<'a>(
        &'a self,
        ctx: &'a SessionContext,
        initial: Option<serde_json::Value>,
    ) -> Pending<'a, StateJson>;
    fn start(&self, state: &StateJson) -> Result<Box<dyn LiveSession>, HandlerError>;
    /// [`SessionHandler::is_query`]; false for a message that does not fit.
    fn is_query(&self, msg: &serde_json::Value) -> bool;
    /// [`SessionHandler::has_deadlines`].
    fn has_deadlines(&self) -> bool;
}

/// A running session's state and handler, type-erased.
pub(crate) trait LiveSession: Send {
    fn handle<'a>(
        &'a mut self,
        ctx: &'a SessionContext,
        msg: serde_json::Value,
    ) -> Pending<'a, serde_json::Value>;
    fn state(&self) -> StateJson;
    fn next_deadline(&self) -> Option<DateTime<Utc>>;
    fn on_deadline<'a>(&'a mut self, ctx: &'a SessionContext) -> Pending<'a, ()>;
}

struct Erased<H>(Arc<H>);

struct Live<H: SessionHandler> {
    handler: Arc<H>,
    state: H::State,
}

fn to_state_json<T: Serialize>(state: &T) -> Result<StateJson, HandlerError> {
    serde_json::to_string(state)
        .map(|text| StateJson(text.into()))
        .map_err(|e| HandlerError::new(format!("state does not serialize: {e}")))
}

impl<H: SessionHandler> DynHandler for Erased<H> {
    fn create<'a>(
        &'a self,
        ctx: &'a SessionContext,
        initial: Option<serde_json::Value>,
    ) -> Pending<'a, StateJson> {
        let state = self
            .0
            .create(ctx, initial)
            .and_then(|state| to_state_json(&state))
            .map_err(Failure::from);
        Box::pin(std::future::ready(state))
    }

    fn start(&self, state: &StateJson) -> Result<Box<dyn LiveSession>, HandlerError> {
        let state: H::State = serde_json::from_str(&state.0)
            .map_err(|e| HandlerError::new(format!("stored state does not fit the kind: {e}")))?;
        Ok(Box::new(Live {
            handler: self.0.clone(),
            state,
        }))
    }

    fn is_query(&self, msg: &serde_json::Value) -> bool {
        H::Msg::deserialize(msg).is_ok_and(|msg| self.0.is_query(&msg))
    }

    fn has_deadlines(&self) -> bool {
        self.0.has_deadlines()
    }
}

impl<H: SessionHandler> Live<H> {
    fn handle_now(
        &mut self,
        ctx: &SessionContext,
        msg: serde_json::Value,
    ) -> Result<serde_json::Value, HandlerError> {
        let msg: H::Msg = serde_json::from_value(msg)
            .map_err(|e| HandlerError::new(format!("message does not fit the kind: {e}")))?;
        let reply = self.handler.handle(ctx, &mut self.state, msg)?;
        serde_json::to_value(reply)
            .map_err(|e| HandlerError::new(format!("reply does not serialize: {e}")))
    }
}

impl<H: SessionHandler> LiveSession for Live<H> {
    fn handle<'a>(
        &'a mut self,
        ctx: &'a SessionContext,
        msg: serde_json::Value,
    ) -> Pending<'a, serde_json::Value> {
        Box::pin(std::future::ready(
            self.handle_now(ctx, msg).map_err(Failure::from),
        ))
    }

    fn state(&self) -> StateJson {
        // Serializing a state that deserialized before cannot fail for serde_json
        // data types; fall back to null rather than panic.
        to_state_json(&self.state).unwrap_or_else(|_| StateJson("null".into()))
    }

    fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.handler.next_deadline(&self.state)
    }

    fn on_deadline<'a>(&'a mut self, ctx: &'a SessionContext) -> Pending<'a, ()> {
        self.handler.on_deadline(ctx, &mut self.state);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Handler kinds by name. Every node of a cluster must register the same kinds.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: BTreeMap<SessionKind, Arc<dyn DynHandler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` under `kind`, replacing any earlier one.
    ///
    /// # Panics
    /// If `kind` is not a valid kind name (a programming error).
    pub fn register<H: SessionHandler>(&mut self, kind: &str, handler: H) -> &mut Self {
        let kind = SessionKind::new(kind).expect("kind names use [A-Za-z0-9_.:-]");
        self.kinds.insert(kind, Arc::new(Erased(Arc::new(handler))));
        self
    }

    /// Names of the registered kinds.
    pub fn kinds(&self) -> impl Iterator<Item = &SessionKind> {
        self.kinds.keys()
    }

    /// Registers an already type-erased handler (an external kind).
    pub(crate) fn register_dyn(&mut self, kind: SessionKind, handler: Arc<dyn DynHandler>) {
        self.kinds.insert(kind, handler);
    }

    pub(crate) fn get(&self, kind: &SessionKind) -> Option<&Arc<dyn DynHandler>> {
        self.kinds.get(kind)
    }
}
