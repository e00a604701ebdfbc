//! HTTP: the public JSON API (`/v1/...`, `/metrics`) and the internal routes
//! (`/internal/...`: Raft RPCs, forwarded writes, leases, presence, calls,
//! handoffs). They are separate routers so the internal one can later require
//! a cluster secret and the public one an API token.
//!
//! Every error leaves as `{"error": {"code", "message"}}` with a 4xx/5xx
//! status decided in one place ([`ApiError`]); bad input is refused before
//! anything reaches the log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::error::Error;
use crate::lease::LeaseRequest;
use crate::model::{
    CallKey, Command, NodeId, NodeStatus, Rejection, Session, SessionId, SessionKind,
};
use crate::node::{Core, JoinRequest};
use crate::raft::WriteError;
use crate::runtime::CallError;
use crate::scheduler::{DrainRequest, HandoffReport, ReleaseRequest};
use crate::state::SessionStatus;
use crate::wire::{decode_bin, TypeConfig};

type AppState = Arc<Core>;

/// An error answer: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Error::UnknownKind(_) => (StatusCode::BAD_REQUEST, "unknown_kind"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Exists(_) => (StatusCode::CONFLICT, "exists"),
            Error::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "state_too_large"),
            Error::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        Error::from(e).into()
    }
}

impl From<Rejection> for ApiError {
    fn from(e: Rejection) -> Self {
        match e {
            Rejection::NoSuchSession(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            Rejection::SessionExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "exists", e.to_string())
            }
            Rejection::StaleEpoch { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_epoch", e.to_string())
            }
            Rejection::StaleVersion { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_version", e.to_string())
            }
            Rejection::NoSuchNode(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "no_such_node", e.to_string())
            }
            Rejection::DuplicateCall { .. } => {
                ApiError::new(StatusCode::CONFLICT, "duplicate_call", e.to_string())
            }
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        let (status, code) = match &e {
            CallError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            CallError::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            CallError::StateTooLarge(..) => (StatusCode::PAYLOAD_TOO_LARGE, "state_too_large"),
            CallError::Unavailable(..) | CallError::NotHere => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            CallError::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            rejection.body_text(),
        )
    } else {
        ApiError::bad_request("bad_body", rejection.body_text())
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(body_error)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid request body: {e}")))
}

fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::new(text)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("invalid session id: {e}")))
}

/// A session as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// Handler kind.
    pub kind: String,
    /// Owner, if placed.
    pub owner: Option<NodeId>,
    /// Ownership epoch.
    pub epoch: u64,
    /// Number of committed state updates.
    #[serde(default)]
    pub version: u64,
    /// `placed`, `moving` or `unplaced`.
    pub status: SessionStatus,
    /// Last committed state.
    pub state: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

fn session_view(session: &Session, status: SessionStatus) -> SessionView {
    SessionView {
        id: session.id.to_string(),
        kind: session.kind.to_string(),
        owner: session.owner,
        epoch: session.epoch.0,
        version: session.version,
        status,
        state: session.state.to_value(),
        created_at: session.created_at,
        updated_at: session.updated_at,
    }
}

/// Largest JSON body of an internal request (leases, releases, joins and
/// the leader's operations); a forwarded call is bounded like a public
/// call body, Raft traffic by [`raft_body_limit`].
const INTERNAL_JSON_LIMIT: usize = 64 * 1024;
/// Longest a request may take before it is answered 408 (the call timeout
/// ceiling plus slack). The presence stream is exempt: it never ends.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);
/// Longest wait a caller may ask of a call (`timeout_ms`).
pub const MAX_CALL_TIMEOUT_MS: u64 = 60_000;

/// The routers of one node: health probes (open), the public API (bearer
/// token with the role [`needed_role`] names), the internal routes (cluster
/// secret, checked before a body is read), each with its own body limit.
pub(crate) fn router(core: Arc<Core>) -> Router {
    let public_limit = core.limits.max_state_bytes + 64 * 1024;
    let open = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/health/ready", get(health))
        .route("/v1/health/live", get(live));
    let public = Router::new()
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/:id", get(get_session).delete(delete_session))
        .route("/v1/sessions/:id/call", post(call_session))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/rebalance", post(rebalance))
        .route("/v1/nodes/:id/drain", post(drain_node))
        .route("/v1/nodes/:id", axum::routing::delete(remove_node))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(core.clone(), authorize))
        .layer(DefaultBodyLimit::max(public_limit));
    let raft = Router::new()
        .route("/internal/raft/append", post(raft_append))
        .route("/internal/raft/vote", post(raft_vote))
        .route("/internal/raft/snapshot", post(raft_snapshot))
        .route("/internal/propose", post(propose_forwarded))
        .layer(DefaultBodyLimit::max(raft_body_limit(&core)));
    let internal = Router::new()
        .route("/internal/read_index", post(read_index))
        .route("/internal/lease", post(lease))
        .route("/internal/release", post(release))
        .route("/internal/join", post(join))
        .route("/internal/whoami", post(whoami))
        .route("/internal/leader/drain", post(leader_drain))
        .route("/internal/leader/rebalance", post(leader_rebalance))
        .route("/internal/leader/remove", post(leader_remove))
        .layer(DefaultBodyLimit::max(INTERNAL_JSON_LIMIT))
        .merge(raft)
        .merge(
            Router::new()
                .route("/internal/call/:id", post(call_local))
                .layer(DefaultBodyLimit::max(public_limit)),
        );
    let timed = open
        .merge(public)
        .merge(internal.route_layer(middleware::from_fn_with_state(core.clone(), peer_only)))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ));
    let presence = Router::new()
        .route("/internal/presence", get(presence))
        .route_layer(middleware::from_fn_with_state(core.clone(), peer_only));
    timed
        .merge(presence)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .with_state(core)
}

/// An AppendEntries or a forwarded batch holds many commands, each with a
/// state of up to the state limit. A limit below a real batch would stall
/// replication for good, so it is generous (only peers that presented the
/// cluster secret get this far).
fn raft_body_limit(core: &Core) -> usize {
    ((core.limits.max_state_bytes + 64 * 1024) * 64).max(64 * 1024 * 1024)
}

/// The role a public route needs; `None` for none. Anything not listed
/// needs `admin`, so a new route is closed until it is listed here.
pub fn needed_role(method: &Method, route: &str) -> Option<Role> {
    match (method.as_str(), route) {
        (_, "/v1/health" | "/v1/health/ready" | "/v1/health/live") => None,
        ("GET", "/v1/sessions" | "/v1/sessions/:id" | "/v1/cluster")
        | ("POST", "/v1/sessions" | "/v1/sessions/:id/call") => Some(Role::Client),
        _ => Some(Role::Admin),
    }
}

async fn authorize(
    State(core): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("", |m| m.as_str());
    let Some(needed) = needed_role(request.method(), route) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match core.security.role_of(presented) {
        Ok(role) if role.allows(needed) => next.run(request).await,
        Ok(role) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this route needs the {needed:?} role; the token has {role:?}").to_lowercase(),
        )
        .into_response(),
        Err(reason) => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

async fn peer_only(State(core): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(crate::auth::PEER_SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    if core.security.peer_allowed(presented) {
        next.run(request).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "internal routes need the cluster secret",
        )
        .into_response()
    }
}

/// Refuses a JSON POST whose body is not declared JSON (a browser form or
/// `text/plain` request from another origin).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match declared.as_deref() {
        Some("application/json") => Ok(()),
        Some(other) if other.starts_with("application/") && other.ends_with("+json") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON, sent with Content-Type: application/json",
        )),
    }
}

// ---- public API ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    id: String,
    kind: Option<String>,
    state: Option<serde_json::Value>,
}

async fn create_session(
    State(core): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let bytes = body.map_err(body_error)?;
    if bytes.len() > core.limits.max_state_bytes + 64 * 1024 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "request body is {} bytes; the state limit is {}",
                bytes.len(),
                core.limits.max_state_bytes
            ),
        ));
    }
    let request: CreateRequest = parse_json(Ok(bytes))?;
    let id = session_id(&request.id)?;
    let kind_name = request
        .kind
        .unwrap_or_else(|| crate::handlers::kv::KIND.to_string());
    let kind = SessionKind::new(kind_name.clone())
        .map_err(|e| ApiError::bad_request("invalid_kind", format!("invalid kind: {e}")))?;
    let session = crate::sessions::create_session(&core, id, kind, request.state)
        .await
        .map_err(|e| match e {
            Error::UnknownKind(_) => {
                let known: Vec<String> = core.registry.kinds().map(|k| k.to_string()).collect();
                ApiError::bad_request(
                    "unknown_kind",
                    format!("unknown kind {kind_name:?}; this node knows {known:?}"),
                )
            }
            other => other.into(),
        })?;
    let status = core.view.read(|a| a.state.session_status(&session));
    Ok((StatusCode::CREATED, Json(session_view(&session, status))).into_response())
}

async fn barrier(core: &Core) -> Result<(), ApiError> {
    core.read_barrier().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            format!("linearizable read not possible: {e}"),
        )
    })
}

async fn get_session(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let id = session_id(&id)?;
    barrier(&core).await?;
    core.view
        .read(|a| {
            a.state
                .sessions
                .get(&id)
                .map(|s| session_view(s, a.state.session_status(s)))
        })
        .map(Json)
        .ok_or_else(|| Rejection::NoSuchSession(id).into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    owner: Option<NodeId>,
    after: Option<String>,
    limit: Option<usize>,
}

/// A page of sessions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionPage {
    /// The sessions, in id order.
    pub sessions: Vec<SessionView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next: Option<String>,
}

const LIST_MAX: usize = 1000;

async fn list_sessions(
    State(core): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SessionPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > LIST_MAX {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1..={LIST_MAX}"),
        ));
    }
    let after = query.after.as_deref().map(session_id).transpose()?;
    barrier(&core).await?;
    let page = core.view.read(|a| {
        use std::ops::Bound;
        let start = match &after {
            Some(id) => Bound::Excluded(id.clone()),
            None => Bound::Unbounded,
        };
        let mut matching = a
            .state
            .sessions
            .range((start, Bound::Unbounded))
            .map(|(_, s)| s)
            .filter(|s| query.owner.is_none() || s.owner == query.owner);
        let sessions: Vec<SessionView> = matching
            .by_ref()
            .take(limit)
            .map(|s| session_view(s, a.state.session_status(s)))
            .collect();
        let next = if matching.next().is_some() {
            sessions.last().map(|s| s.id.clone())
        } else {
            None
        };
        SessionPage { sessions, next }
    });
    Ok(Json(page))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallQuery {
    timeout_ms: Option<u64>,
}

/// Header that carries a call's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn call_session(
    State(core): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<CallQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::runtime::CallReply>, ApiError> {
    let id = session_id(&id)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| CallKey::new(text).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_key",
                        "Idempotency-Key must be 1 to 128 characters of A-Z a-z 0-9 _ . : -",
                    )
                })?,
        ),
    };
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let timeout_ms = query.timeout_ms.unwrap_or(5000);
    if !(1..=MAX_CALL_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("timeout_ms must be 1..={MAX_CALL_TIMEOUT_MS}"),
        ));
    }
    let timeout = Duration::from_millis(timeout_ms);
    require_json(&headers)?;
    // The session is looked up before its message is parsed: a large body
    // to a session that does not exist costs no parsing.
    if !core.view.read(|a| a.state.sessions.contains_key(&id)) {
        // It may have been created a moment ago through another node.
        barrier(&core).await?;
        if !core.view.read(|a| a.state.sessions.contains_key(&id)) {
            return Err(CallError::NotFound(id).into());
        }
    }
    let msg: serde_json::Value = parse_json(body)?;
    Ok(Json(core.runtime.call(&id, msg, timeout, key).await?))
}

async fn delete_session(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = session_id(&id)?;
    // An unknown session is answered without writing a rejected entry.
    if !core.view.read(|a| a.state.sessions.contains_key(&id)) {
        barrier(&core).await?;
        if !core.view.read(|a| a.state.sessions.contains_key(&id)) {
            return Err(Rejection::NoSuchSession(id).into());
        }
    }
    core.proposer
        .propose(Command::DeleteSession { id: id.clone() })
        .await??;
    Ok(Json(serde_json::json!({"deleted": id.as_str()})))
}

/// A node as `/v1/cluster` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// HTTP address.
    pub addr: String,
    /// `up`, `draining` or `down`.
    pub status: NodeStatus,
    /// Sessions it owns.
    pub sessions: usize,
}

/// The answer of `/v1/cluster`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// Current leader as this node knows it.
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Node that answered.
    pub answered_by: NodeId,
    /// Members.
    pub nodes: Vec<NodeView>,
    /// Total sessions.
    pub sessions: usize,
    /// Sessions by status.
    pub by_status: BTreeMap<String, usize>,
}

async fn cluster_status(State(core): State<AppState>) -> Json<ClusterView> {
    let (leader, term) = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.current_term)
    };
    let view = core.view.read(|a| {
        let counts = a.state.sessions_per_node();
        let mut by_status = BTreeMap::new();
        for session in a.state.sessions.values() {
            let status = serde_json::to_value(a.state.session_status(session))
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *by_status.entry(status).or_insert(0) += 1;
        }
        ClusterView {
            leader,
            term,
            answered_by: core.me,
            nodes: a
                .state
                .nodes
                .values()
                .map(|n| NodeView {
                    id: n.id,
                    addr: n.addr.clone(),
                    status: n.status,
                    sessions: counts.get(&n.id).copied().unwrap_or(0),
                })
                .collect(),
            sessions: a.state.sessions.len(),
            by_status,
        }
    });
    Json(view)
}

fn node_id(text: &str) -> Result<NodeId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("invalid_node", format!("invalid node id {text:?}")))
}

async fn drain_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = node_id(&id)?;
    let known = core.view.read(|a| a.state.nodes.contains_key(&id));
    if !known {
        return Err(Rejection::NoSuchNode(id).into());
    }
    let report: HandoffReport = core
        .on_leader(
            "/internal/leader/drain",
            &DrainRequest {
                node: id,
                released: false,
            },
        )
        .await
        .map_err(ApiError::unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

async fn rebalance(State(core): State<AppState>) -> Result<Response, ApiError> {
    let report: HandoffReport = core
        .on_leader("/internal/leader/rebalance", &())
        .await
        .map_err(ApiError::unavailable)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

async fn remove_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = node_id(&id)?;
    let voters = crate::raft::voters(&core.raft);
    if !voters.contains(&id) {
        return Err(Rejection::NoSuchNode(id).into());
    }
    let () = core
        .on_leader("/internal/leader/remove", &id)
        .await
        .map_err(ApiError::unavailable)?;
    Ok(Json(serde_json::json!({"removed": id})))
}

/// Liveness: the process serves HTTP.
async fn live(State(core): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"node": core.me, "live": true}))
}

/// Readiness (`/v1/health`, `/v1/health/ready`): 200 only while writes and
/// reads through this node can succeed: it holds a valid lease (granted by
/// a leader that heard a quorum recently, and applied up to the grant), it
/// knows a leader that is a member, and, when it leads, a quorum
/// acknowledged it within the quorum window.
async fn health(State(core): State<AppState>) -> Response {
    let (leader, state) = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.state)
    };
    let lease = *core.lease.borrow();
    let applied = core.view.applied_index();
    let caught_up = applied >= lease.required_applied && lease.valid_until.is_some();
    let lease_valid = lease.is_valid(tokio::time::Instant::now(), applied);
    let voters = crate::raft::voters(&core.raft);
    let leader_is_member = leader.is_some_and(|l| voters.contains(&l));
    // A leader cut off from its quorum still names itself leader (openraft
    // does not step down); it can neither write nor read. Same rule as the
    // lease grant. Elsewhere a valid lease is the proof: only a leader that
    // heard a quorum recently grants one.
    let quorum = if state == ServerState::Leader {
        core.transport
            .clock
            .quorum_acked_at(core.me, &voters)
            .is_some_and(|at| at.elapsed() <= core.timing.quorum_window)
    } else {
        lease_valid
    };
    let body = serde_json::json!({
        "node": core.me,
        "leader": leader,
        "role": format!("{state:?}").to_lowercase(),
        "applied_index": applied,
        "caught_up": caught_up,
        "quorum": quorum,
        "lease_valid": lease_valid,
    });
    if leader_is_member && caught_up && quorum && lease_valid {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn metrics(State(core): State<AppState>) -> Response {
    let (term, leader, last_log, applied, is_leader) = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (
            m.current_term,
            m.current_leader,
            m.last_log_index.unwrap_or(0),
            m.last_applied.map(|l| l.index).unwrap_or(0),
            m.state == ServerState::Leader,
        )
    };
    let (sessions, owned, nodes_up) = core.view.read(|a| {
        (
            a.state.sessions.len(),
            a.state.sessions_owned_by(core.me).count(),
            a.state.eligible_nodes().len(),
        )
    });
    let lease_valid = core
        .lease
        .borrow()
        .is_valid(tokio::time::Instant::now(), core.view.applied_index());
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    };
    gauge("minos_raft_term", "Current Raft term.", term as f64);
    gauge(
        "minos_raft_leader",
        "Current leader id (0 when unknown).",
        leader.unwrap_or(0) as f64,
    );
    gauge(
        "minos_raft_is_leader",
        "1 when this node is the leader.",
        f64::from(u8::from(is_leader)),
    );
    gauge(
        "minos_raft_last_log_index",
        "Last log index.",
        last_log as f64,
    );
    gauge(
        "minos_raft_applied_index",
        "Last applied log index.",
        applied as f64,
    );
    gauge(
        "minos_sessions_total",
        "Sessions in the table.",
        sessions as f64,
    );
    gauge(
        "minos_sessions_owned",
        "Sessions this node owns.",
        owned as f64,
    );
    gauge(
        "minos_sessions_running",
        "Session tasks running on this node.",
        core.runtime.running() as f64,
    );
    gauge("minos_nodes_up", "Nodes Up in the table.", nodes_up as f64);
    gauge(
        "minos_lease_valid",
        "1 while this node holds a valid lease.",
        f64::from(u8::from(lease_valid)),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// ---- internal routes ----

fn bin<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn from_bin<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    decode_bin(body).map_err(|e| {
        Box::new((StatusCode::BAD_REQUEST, format!("bad binary body: {e}")).into_response())
    })
}

/// Terms above this are refused: openraft computes `term + 1` when it
/// elects, and a term near `u64::MAX` would overflow it (and be saved).
pub const MAX_TERM: u64 = u64::MAX / 2;

/// Refuses a Raft RPC that even an authenticated peer must not send: one
/// from a node outside the membership this node knows (unless it knows
/// none yet: a joining node), or with a term that could overflow, or
/// carrying entries of a term above the sender's.
fn check_raft_rpc(
    core: &Core,
    vote: &openraft::Vote<NodeId>,
    entry_terms: impl Iterator<Item = u64>,
) -> Result<(), ApiError> {
    let refuse = |message: String| Err(ApiError::new(StatusCode::FORBIDDEN, "refused", message));
    let term = vote.leader_id.term;
    if term > MAX_TERM {
        return refuse(format!("term {term} is out of range"));
    }
    if let Some(bad) = entry_terms.into_iter().find(|t| *t > term) {
        return refuse(format!(
            "an entry of term {bad} from a sender at term {term}"
        ));
    }
    let Some(sender) = vote.leader_id.voted_for() else {
        return refuse("the vote names no node".into());
    };
    let metrics = core.raft.metrics();
    let m = metrics.borrow();
    let membership = m.membership_config.membership();
    let knows_members = membership.voter_ids().next().is_some();
    if knows_members && membership.get_node(&sender).is_none() {
        return refuse(format!("node {sender} is not a member"));
    }
    Ok(())
}

async fn raft_append(State(core): State<AppState>, body: Bytes) -> Response {
    let request = match from_bin::<AppendEntriesRequest<TypeConfig>>(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let terms = request.entries.iter().map(|e| e.log_id.leader_id.term);
    if let Err(refused) = check_raft_rpc(&core, &request.vote, terms) {
        return refused.into_response();
    }
    bin(&core.raft.append_entries(request).await)
}

async fn raft_vote(State(core): State<AppState>, body: Bytes) -> Response {
    let request = match from_bin::<VoteRequest<NodeId>>(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let terms = request.last_log_id.iter().map(|l| l.leader_id.term);
    if let Err(refused) = check_raft_rpc(&core, &request.vote, terms) {
        return refused.into_response();
    }
    bin(&core.raft.vote(request).await)
}

async fn raft_snapshot(State(core): State<AppState>, body: Bytes) -> Response {
    let request = match from_bin::<InstallSnapshotRequest<TypeConfig>>(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let terms = request.meta.last_log_id.iter().map(|l| l.leader_id.term);
    if let Err(refused) = check_raft_rpc(&core, &request.vote, terms) {
        return refused.into_response();
    }
    bin(&core.raft.install_snapshot(request).await)
}

async fn propose_forwarded(State(core): State<AppState>, body: Bytes) -> Response {
    match from_bin::<Vec<Command>>(&body) {
        Ok(commands) => bin(&core.write_path.accept_forwarded(commands).await),
        Err(response) => *response,
    }
}

async fn read_index(State(core): State<AppState>) -> Json<Result<u64, String>> {
    if core.leader() != Some(core.me) {
        return Json(Err("not the leader".into()));
    }
    let result =
        tokio::time::timeout(core.timing.write_timeout, core.raft.ensure_linearizable()).await;
    Json(match result {
        Ok(Ok(log_id)) => Ok(log_id.map(|l| l.index).unwrap_or(0)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("leader could not confirm a quorum in time".into()),
    })
}

async fn lease(State(core): State<AppState>, Json(request): Json<LeaseRequest>) -> Response {
    Json(crate::lease::grant(&core, &request)).into_response()
}

/// A response that never ends while this node runs: the leader holds it
/// open and learns of this process's death the moment the kernel closes it.
async fn presence(State(core): State<AppState>) -> Response {
    let shutdown = core.shutdown.clone();
    let stream = futures::stream::unfold(true, move |first| {
        let mut shutdown = shutdown.clone();
        async move {
            if !first {
                let tick = tokio::time::sleep(Duration::from_secs(1));
                tokio::select! {
                    _ = tick => {}
                    _ = shutdown.wait_for(|stop| *stop) => return None,
                }
            }
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b".")), false))
        }
    });
    Response::new(Body::from_stream(stream))
}

async fn call_local(
    State(core): State<AppState>,
    Path(id): Path<String>,
    Json(call): Json<crate::runtime::ForwardedCall>,
) -> Response {
    let Ok(id) = SessionId::new(id) else {
        return Json(Err::<crate::runtime::CallReply, _>(CallError::NotHere)).into_response();
    };
    let answer = core.runtime.call_local(&id, call.msg, call.key).await;
    if core.transport.faults.take_lost_reply(&id) {
        // Injected fault (tests): the call ran, its answer never arrives.
        return (StatusCode::BAD_GATEWAY, "reply lost (injected fault)").into_response();
    }
    Json(answer).into_response()
}

/// A leader's request to let go of sessions. A request from anyone but the
/// leader this node follows (or from an older term) is refused; releasing
/// "all" holds the sessions this node owns now, with the same expiry as any
/// hold, so a release whose moves never come cannot stop a node for good.
async fn release(
    State(core): State<AppState>,
    Json(request): Json<ReleaseRequest>,
) -> Json<Result<(), String>> {
    let (leader, term) = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.current_term)
    };
    if request.term < term || leader.is_some_and(|l| l != request.from) {
        return Json(Err(format!(
            "release refused: node {} at term {} is not this node's leader (leader {leader:?}, term {term})",
            request.from, request.term
        )));
    }
    let sessions = match request.sessions {
        Some(ids) => ids,
        None => core.view.read(|a| {
            a.state
                .sessions_owned_by(core.me)
                .map(|s| s.id.clone())
                .collect()
        }),
    };
    core.runtime.release(Some(&sessions)).await;
    Json(Ok(()))
}

/// Proves to a leader admitting this node that it answers at its address.
async fn whoami(State(core): State<AppState>) -> Json<NodeId> {
    Json(core.me)
}

async fn join(
    State(core): State<AppState>,
    Json(request): Json<JoinRequest>,
) -> Json<Result<crate::node::JoinAnswer, String>> {
    if core.leader() == Some(core.me) {
        Json(crate::node::admit(&core, &request).await)
    } else {
        Json(core.on_leader("/internal/join", &request).await)
    }
}

async fn leader_drain(
    State(core): State<AppState>,
    Json(request): Json<DrainRequest>,
) -> Json<Result<HandoffReport, String>> {
    if core.leader() != Some(core.me) {
        return Json(core.on_leader("/internal/leader/drain", &request).await);
    }
    Json(crate::scheduler::drain(&core, request.node, request.released).await)
}

async fn leader_rebalance(State(core): State<AppState>) -> Json<Result<HandoffReport, String>> {
    if core.leader() != Some(core.me) {
        return Json(core.on_leader("/internal/leader/rebalance", &()).await);
    }
    Json(crate::scheduler::rebalance(&core).await)
}

async fn leader_remove(
    State(core): State<AppState>,
    Json(node): Json<NodeId>,
) -> Json<Result<(), String>> {
    if core.leader() != Some(core.me) {
        return Json(core.on_leader("/internal/leader/remove", &node).await);
    }
    let voters: std::collections::BTreeSet<NodeId> = crate::raft::voters(&core.raft)
        .into_iter()
        .filter(|v| *v != node)
        .collect();
    if voters.is_empty() {
        return Json(Err("cannot remove the last voter".into()));
    }
    let result = core.raft.change_membership(voters, false).await;
    Json(match result {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    //! Fuzzing of every decoder a peer's or a client's bytes reach, on stable
    //! Rust with proptest: random bytes and mutated valid encodings must
    //! decode or fail, never panic or allocate without bound.

    use openraft::raft::{AppendEntriesResponse, InstallSnapshotResponse, VoteResponse};
    use openraft::{CommittedLeaderId, LogId, Vote};
    use proptest::prelude::*;

    use super::*;
    use crate::lease::{LeaseAnswer, LeaseRequest};
    use crate::model::CommandResult;
    use crate::runtime::{CallReply, ForwardedCall};

    fn sample_append() -> Vec<u8> {
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(2, 1), 7)),
            entries: Vec::new(),
            leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 9)),
        };
        bincode::serialize(&request).expect("encode")
    }

    fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let len = base.len().max(1);
        prop::collection::vec((0..len, any::<u8>()), 1..8).prop_map(move |flips| {
            let mut bytes = base.clone();
            for (at, value) in flips {
                if at < bytes.len() {
                    bytes[at] = value;
                }
            }
            bytes
        })
    }

    /// Every bincode decoder of the peer routes and of their answers.
    fn decode_all_bin(bytes: &[u8]) {
        let _ = decode_bin::<AppendEntriesRequest<TypeConfig>>(bytes);
        let _ = decode_bin::<VoteRequest<NodeId>>(bytes);
        let _ = decode_bin::<InstallSnapshotRequest<TypeConfig>>(bytes);
        let _ = decode_bin::<Vec<Command>>(bytes);
        let _ = decode_bin::<AppendEntriesResponse<NodeId>>(bytes);
        let _ = decode_bin::<VoteResponse<NodeId>>(bytes);
        let _ = decode_bin::<InstallSnapshotResponse<NodeId>>(bytes);
        let _ = decode_bin::<Result<Vec<CommandResult>, String>>(bytes);
    }

    /// Every JSON decoder of the public and internal routes and answers.
    fn decode_all_json(bytes: &[u8]) {
        let _ = serde_json::from_slice::<CreateRequest>(bytes);
        let _ = serde_json::from_slice::<serde_json::Value>(bytes);
        let _ = serde_json::from_slice::<LeaseRequest>(bytes);
        let _ = serde_json::from_slice::<LeaseAnswer>(bytes);
        let _ = serde_json::from_slice::<ReleaseRequest>(bytes);
        let _ = serde_json::from_slice::<JoinRequest>(bytes);
        let _ = serde_json::from_slice::<DrainRequest>(bytes);
        let _ = serde_json::from_slice::<ForwardedCall>(bytes);
        let _ = serde_json::from_slice::<NodeId>(bytes);
        let _ = serde_json::from_slice::<Result<CallReply, CallError>>(bytes);
        let _ = serde_json::from_slice::<Result<HandoffReport, String>>(bytes);
        let _ = serde_json::from_slice::<Result<crate::node::JoinAnswer, String>>(bytes);
        let _ = serde_json::from_slice::<Result<u64, String>>(bytes);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decode_all_bin(&bytes);
            decode_all_json(&bytes);
        }

        #[test]
        fn mutated_raft_messages_never_panic_a_decoder(bytes in mutated(sample_append())) {
            decode_all_bin(&bytes);
        }

        #[test]
        fn mutated_json_never_panics_a_decoder(bytes in mutated(
            br#"{"id":"a","kind":"kv","state":{"x":[1,2,{"y":null}]},"node":2,"fresh":true,"sessions":["a"],"from":1,"term":3,"msg":{},"key":"k"}"#.to_vec()
        )) {
            decode_all_json(&bytes);
        }
    }

    #[test]
    fn a_length_prefix_beyond_the_body_is_an_error_not_an_allocation() {
        // A Vec<Command> claiming 2^60 elements in 8 bytes.
        let bytes = (1u64 << 60).to_le_bytes();
        assert!(decode_bin::<Vec<Command>>(&bytes).is_err());
        let bytes = [0xff; 8];
        assert!(decode_bin::<Vec<u8>>(&bytes).is_err());
    }

    #[test]
    fn public_routes_need_a_role_and_unknown_ones_need_admin() {
        assert_eq!(needed_role(&Method::GET, "/v1/health"), None);
        assert_eq!(needed_role(&Method::GET, "/v1/health/live"), None);
        assert_eq!(
            needed_role(&Method::POST, "/v1/sessions"),
            Some(Role::Client)
        );
        assert_eq!(
            needed_role(&Method::GET, "/v1/sessions/:id"),
            Some(Role::Client)
        );
        assert_eq!(
            needed_role(&Method::DELETE, "/v1/sessions/:id"),
            Some(Role::Admin)
        );
        assert_eq!(
            needed_role(&Method::POST, "/v1/nodes/:id/drain"),
            Some(Role::Admin)
        );
        assert_eq!(needed_role(&Method::GET, "/metrics"), Some(Role::Admin));
        assert_eq!(
            needed_role(&Method::GET, "/v1/some/new/route"),
            Some(Role::Admin)
        );
    }
}
