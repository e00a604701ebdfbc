//! A typed client of the public HTTP API, used by the CLI, the benchmark and
//! tests (and by any Rust program that talks to a minos cluster).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::api::{ClusterView, EventPage, HistoryView, PlacementView, SessionPage, SessionView};
use crate::model::NodeId;
pub use crate::peer::{CallReply, HandoffReport};

pub use crate::model::new_call_key;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// Human message.
        message: String,
    },
    /// The request did not get an answer (connection refused, timeout).
    #[error("cannot reach {addr}: {}", causes(source))]
    Transport {
        /// Node address.
        addr: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The answer could not be decoded.
    #[error("unexpected answer from {addr}: {message}")]
    Decode {
        /// Node address.
        addr: String,
        /// Cause.
        message: String,
    },
}

/// Why a request got no answer: the operating system's reason when there
/// is one ("connection refused", not reqwest's "error sending request for
/// url (...): client error (Connect): tcp connect error: ..."), else the
/// error and its causes, innermost last.
fn causes(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (timed out)".into();
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = cause {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                _ => io.to_string(),
            };
        }
        cause = inner.source();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

impl ClientError {
    /// True when the node could not be connected to at all (nothing
    /// listens there, or it is unreachable).
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport { source, .. } if source.is_connect())
    }

    /// HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Error code of an API error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A session to create.
#[derive(Clone, Debug, Serialize)]
pub struct NewSession {
    /// Session id.
    pub id: String,
    /// Handler kind (default `kv`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// First state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<serde_json::Value>,
}

/// The error of a non-2xx answer: its `{"error": {code, message}}` body, or
/// the raw text under code `http` when the body is not one.
fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error.code,
            message: body.error.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: "http".into(),
            message: String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

/// Attempts of a keyed call whose connection broke in transport.
const CALL_ATTEMPTS: u32 = 3;

/// Client of one node's HTTP API (any node accepts any request).
#[derive(Clone)]
pub struct Client {
    addr: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    /// A client of the node at `addr` (`host:port` or `http://host:port`).
    pub fn new(addr: impl Into<String>) -> Self {
        let addr = addr.into();
        let addr = addr
            .strip_prefix("http://")
            .map(str::to_string)
            .unwrap_or(addr);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            addr,
            http,
            token: None,
        }
    }

    /// The same client, sending `token` as `Authorization: Bearer`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The node address this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `request` with this client's bearer token, if it has one.
    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let request = self.authorized(request);
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                addr: self.addr.clone(),
                source,
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                addr: self.addr.clone(),
                source,
            })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                addr: self.addr.clone(),
                message: e.to_string(),
            });
        }
        Err(api_error(status.as_u16(), &bytes))
    }

    /// Creates a session.
    pub async fn create_session(&self, session: &NewSession) -> Result<SessionView, ClientError> {
        self.send(self.http.post(self.url("/v1/sessions")).json(session))
            .await
    }

    /// Creates a session that runs only where `placement` allows (see
    /// [`PlacementView`]); it answers `unplaced` with a reason while no Up
    /// node fits.
    pub async fn create_session_placed(
        &self,
        session: &NewSession,
        placement: &PlacementView,
    ) -> Result<SessionView, ClientError> {
        #[derive(Serialize)]
        struct Placed<'a> {
            #[serde(flatten)]
            session: &'a NewSession,
            placement: &'a PlacementView,
        }
        let body = Placed { session, placement };
        self.send(self.http.post(self.url("/v1/sessions")).json(&body))
            .await
    }

    /// Reads a session (linearizable).
    pub async fn get_session(&self, id: &str) -> Result<SessionView, ClientError> {
        self.send(self.http.get(self.url(&format!("/v1/sessions/{id}"))))
            .await
    }

    /// Lists one page of sessions.
    pub async fn list_sessions(
        &self,
        owner: Option<NodeId>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<SessionPage, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(owner) = owner {
            query.push(("owner", owner.to_string()));
        }
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.send(self.http.get(self.url("/v1/sessions")).query(&query))
            .await
    }

    /// Sends a message to a live session, with a fresh idempotency key: if
    /// the session's owner fails mid-call, the node retries it until the
    /// timeout and the call takes effect exactly once.
    pub async fn call(
        &self,
        id: &str,
        msg: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<CallReply, ClientError> {
        self.call_with_key(id, msg, timeout, Some(&new_call_key()))
            .await
    }

    /// Sends a message with the given idempotency key (`None`: without one;
    /// a call whose owner fails mid-call then answers 503 `outcome_unknown`).
    /// Sending the same key again, to any node, applies the call at most
    /// once and answers the recorded reply while the session remembers it.
    pub async fn call_with_key(
        &self,
        id: &str,
        msg: &serde_json::Value,
        timeout: Option<Duration>,
        key: Option<&str>,
    ) -> Result<CallReply, ClientError> {
        let request = || {
            let mut request = self
                .http
                .post(self.url(&format!("/v1/sessions/{id}/call")))
                .json(msg);
            if let Some(key) = key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(timeout) = timeout {
                request = request
                    .query(&[("timeout_ms", timeout.as_millis().to_string())])
                    .timeout(timeout + Duration::from_secs(5));
            }
            request
        };
        // A kept-alive connection the node closed just as the call was sent
        // (a node stopping, an idle timeout) fails in transport. With a key
        // the call is safe to send again (it takes effect at most once); a
        // refused connection is not retried (the node is not there), and
        // once an attempt may have been delivered, a later refusal reports
        // that attempt's error: the call may have run.
        let mut attempts = 0;
        let mut maybe_delivered: Option<ClientError> = None;
        loop {
            attempts += 1;
            match self.send(request()).await {
                Err(ClientError::Transport { source, addr })
                    if key.is_some()
                        && !source.is_connect()
                        && !source.is_timeout()
                        && attempts < CALL_ATTEMPTS =>
                {
                    maybe_delivered.get_or_insert(ClientError::Transport { source, addr });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(ClientError::Transport { source, addr }) if source.is_connect() => {
                    return Err(maybe_delivered.unwrap_or(ClientError::Transport { source, addr }));
                }
                other => return other,
            }
        }
    }

    /// Sends a typed message and decodes the typed reply.
    pub async fn call_typed<M: Serialize, R: DeserializeOwned>(
        &self,
        id: &str,
        msg: &M,
    ) -> Result<R, ClientError> {
        let msg = serde_json::to_value(msg).map_err(|e| ClientError::Decode {
            addr: self.addr.clone(),
            message: e.to_string(),
        })?;
        let reply = self.call(id, &msg, None).await?;
        serde_json::from_value(reply.reply).map_err(|e| ClientError::Decode {
            addr: self.addr.clone(),
            message: e.to_string(),
        })
    }

    /// A session's placement history: why and when it changed owner.
    pub async fn session_history(&self, id: &str) -> Result<HistoryView, ClientError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/sessions/{id}/history"))),
        )
        .await
    }

    /// A page of the cluster's recent moves after sequence number `after`.
    pub async fn events(&self, after: u64, limit: usize) -> Result<EventPage, ClientError> {
        let query = [("after", after.to_string()), ("limit", limit.to_string())];
        self.send(self.http.get(self.url("/v1/events")).query(&query))
            .await
    }

    /// Opens a Server-Sent Events stream (`path` with its query) and calls
    /// `each(event, data)` for every event until the stream ends or `each`
    /// returns false.
    pub async fn follow(
        &self,
        path: &str,
        mut each: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        let request = self.authorized(self.http.get(self.url(path)));
        let transport = |source| ClientError::Transport {
            addr: self.addr.clone(),
            source,
        };
        let mut response = request.send().await.map_err(transport)?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.map_err(transport)?;
            return Err(api_error(status, &bytes));
        }
        let mut buffer = String::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = "message";
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event = name.trim();
                    } else if let Some(text) = line.strip_prefix("data:") {
                        data.push_str(text.trim_start());
                    }
                }
                if !data.is_empty() && !each(event, &data) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Deletes a session.
    pub async fn delete_session(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.delete(self.url(&format!("/v1/sessions/{id}"))))
            .await
    }

    /// Cluster status as this node sees it.
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        self.send(self.http.get(self.url("/v1/cluster"))).await
    }

    /// Health of this node (an error when it is not healthy).
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.get(self.url("/v1/health"))).await
    }

    /// Drains a node: its sessions move away at once.
    pub async fn drain(&self, node: NodeId) -> Result<HandoffReport, ClientError> {
        self.send(self.http.post(self.url(&format!("/v1/nodes/{node}/drain"))))
            .await
    }

    /// Makes a Draining node Up again: it takes new sessions again
    /// (`rebalance` moves sessions back to it).
    pub async fn undrain(&self, node: NodeId) -> Result<serde_json::Value, ClientError> {
        self.send(
            self.http
                .post(self.url(&format!("/v1/nodes/{node}/undrain"))),
        )
        .await
    }

    /// Moves sessions back to their placement choice.
    pub async fn rebalance(&self) -> Result<HandoffReport, ClientError> {
        self.send(self.http.post(self.url("/v1/cluster/rebalance")))
            .await
    }

    /// Removes a node from the cluster.
    pub async fn remove_node(&self, node: NodeId) -> Result<serde_json::Value, ClientError> {
        self.send(self.http.delete(self.url(&format!("/v1/nodes/{node}"))))
            .await
    }
}
