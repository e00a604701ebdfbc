//! External handler kinds: a kind served by an app process beside the node
//! (`minos serve --external-kind KIND=URL`), called over HTTP with JSON as
//! docs/external-handlers.md describes. To the runtime an external kind is
//! a handler like any other: a call's new state is committed with the
//! owner's epoch and version before the reply leaves, so an answer from a
//! deposed owner is fenced by the log. What is not like a Rust handler: the
//! answer takes a round trip, may fail, and the app may be gone; each
//! `App` keeps whether it answers, for the node's readiness and its
//! self-drain (`node::apps`).

mod protocol;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

use crate::handler::{
    DynHandler, Failure, HandlerError, LiveSession, Pending, Registry, SessionContext,
};
use crate::model::{SessionKind, StateJson};
use crate::sync::Recover;

pub(crate) use protocol::Envelope;

/// One external kind as configured: `KIND=URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalKind {
    /// The kind.
    pub kind: SessionKind,
    /// The app's URL (`http://`).
    pub url: reqwest::Url,
}

impl std::str::FromStr for ExternalKind {
    type Err = String;

    /// Parses `KIND=URL` (an `http://` URL: minos speaks plain HTTP to the
    /// app, which should listen on loopback).
    fn from_str(text: &str) -> Result<Self, String> {
        let (kind, url) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not KIND=URL"))?;
        let kind =
            SessionKind::new(kind.trim()).map_err(|e| format!("kind {kind:?} in {text:?}: {e}"))?;
        let url = reqwest::Url::parse(url.trim()).map_err(|e| format!("URL {url:?}: {e}"))?;
        if url.scheme() != "http" || url.host().is_none() {
            return Err(format!("URL {url}: give an http://host:port/path URL"));
        }
        Ok(ExternalKind { kind, url })
    }
}

impl std::fmt::Display for ExternalKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind, self.url)
    }
}

impl serde::Serialize for ExternalKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Request timeout of a health check.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// An app serving one external kind, and whether it answers.
pub(crate) struct App {
    pub(crate) kind: SessionKind,
    url: reqwest::Url,
    http: reqwest::Client,
    /// Largest answer body read.
    max_answer: usize,
    ready: AtomicBool,
    /// Why the last health check failed.
    error: Mutex<Option<String>>,
    /// Woken when a request found the app unreachable: check it now.
    pub(crate) nudge: Notify,
}

impl App {
    fn new(spec: &ExternalKind, timeout: Duration, max_state_bytes: usize) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(PING_TIMEOUT))
            .tcp_nodelay(true)
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        App {
            kind: spec.kind.clone(),
            url: spec.url.clone(),
            http,
            max_answer: max_state_bytes.saturating_mul(2) + 64 * 1024,
            ready: AtomicBool::new(false),
            error: Mutex::new(Some("not checked yet".into())),
            nudge: Notify::new(),
        }
    }

    /// True while the last health check was answered.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Why the app counts as not ready (`None` while it is ready).
    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().recover().clone()
    }

    /// Sends a health check; records and returns whether it was answered.
    pub(crate) async fn check(&self) -> bool {
        let result = self
            .post(&protocol::ping(&self.kind), Some(PING_TIMEOUT))
            .await;
        let error = result.err().map(|failure| match failure {
            Failure::Rejected(why) => format!("the app refused the health check: {why}"),
            Failure::Unavailable(why) | Failure::Unreachable(why) => why,
        });
        self.ready.store(error.is_none(), Ordering::SeqCst);
        *self.error.lock().recover() = error;
        self.is_ready()
    }

    /// POSTs one request and reads the answer (HTTP 200), bounded in size.
    async fn post(&self, body: &Value, timeout: Option<Duration>) -> Result<Vec<u8>, Failure> {
        let mut request = self
            .http
            .post(self.url.clone())
            .header("x-minos-kind", self.kind.as_str())
            .json(body);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let mut response = request.send().await.map_err(|e| self.failed(e))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(e))? {
            if bytes.len() + chunk.len() > self.max_answer {
                return Err(Failure::Unavailable(format!(
                    "the app's answer is over {} bytes",
                    self.max_answer
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        match status.as_u16() {
            200 => Ok(bytes),
            422 => Err(Failure::Rejected(protocol::refusal(&bytes))),
            other => Err(Failure::Unavailable(format!(
                "the app answered HTTP {other}: {}",
                protocol::refusal(&bytes)
            ))),
        }
    }

    /// A transport error: a timeout is a definite "no answer"; anything
    /// else (refused, reset) means the app may be gone: checked at once.
    fn failed(&self, e: reqwest::Error) -> Failure {
        if e.is_timeout() {
            return Failure::Unavailable(format!(
                "the app for kind {} did not answer in time",
                self.kind
            ));
        }
        self.nudge.notify_one();
        let why = crate::peer::error_chain(&e);
        Failure::Unreachable(format!(
            "the app for kind {} at {} is unreachable: {why}",
            self.kind, self.url
        ))
    }
}

/// Registers each external kind in `registry`; returns the apps, for the
/// node's health checks.
pub(crate) fn register(
    registry: &mut Registry,
    kinds: &[ExternalKind],
    timeout: Duration,
    max_state_bytes: usize,
) -> Vec<Arc<App>> {
    kinds
        .iter()
        .map(|spec| {
            let app = Arc::new(App::new(spec, timeout, max_state_bytes));
            registry.register_dyn(spec.kind.clone(), Arc::new(Handler(app.clone())));
            app
        })
        .collect()
}

/// An external kind, as the runtime drives it.
struct Handler(Arc<App>);

impl DynHandler for Handler {
    fn create<'a>(
        &'a self,
        ctx: &'a SessionContext,
        initial: Option<Value>,
    ) -> Pending<'a, StateJson> {
        Box::pin(async move {
            let body = protocol::create(&self.0.kind, ctx, initial);
            let answer = self.0.post(&body, None).await?;
            Ok(protocol::created(&answer)?.to_state())
        })
    }

    fn start(&self, state: &StateJson) -> Result<Box<dyn LiveSession>, HandlerError> {
        let envelope = Envelope::parse(state).map_err(HandlerError)?;
        Ok(Box::new(Live {
            app: self.0.clone(),
            envelope,
            text: state.clone(),
        }))
    }

    /// Every message may change the state: a call whose attempt broke is
    /// `outcome_unknown` (or retried under its key), never blindly repeated.
    fn is_query(&self, _msg: &Value) -> bool {
        false
    }

    /// An app's envelope may carry a deadline: its state is read on start.
    fn has_deadlines(&self) -> bool {
        true
    }
}

/// A running external session: its committed envelope (and the text of it,
/// which the table shares).
struct Live {
    app: Arc<App>,
    envelope: Envelope,
    text: StateJson,
}

impl Live {
    /// One `call` (with `msg`) or `deadline` round trip; the new envelope,
    /// if the app sent a state, becomes the live state.
    async fn ask(&mut self, ctx: &SessionContext, msg: Option<Value>) -> Result<Value, Failure> {
        let body = protocol::on_state(&self.app.kind, ctx, &self.envelope, msg);
        let answer = self.app.post(&body, None).await?;
        let (reply, envelope) = protocol::answered(&answer, ctx)?;
        if let Some(envelope) = envelope {
            self.text = envelope.to_state();
            self.envelope = envelope;
        }
        Ok(reply)
    }
}

impl LiveSession for Live {
    fn handle<'a>(&'a mut self, ctx: &'a SessionContext, msg: Value) -> Pending<'a, Value> {
        Box::pin(self.ask(ctx, Some(msg)))
    }

    fn state(&self) -> StateJson {
        self.text.clone()
    }

    fn next_deadline(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.envelope.deadline
    }

    fn on_deadline<'a>(&'a mut self, ctx: &'a SessionContext) -> Pending<'a, ()> {
        Box::pin(async move {
            let before = self.text.clone();
            self.ask(ctx, None).await?;
            if self.text == before {
                return Err(Failure::Unavailable(
                    "the app's deadline answer carries no new state".into(),
                ));
            }
            Ok(())
        })
    }
}
