//! The session routes: create, get, list, call, delete.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{parse_json, session_id, ApiError, ErrorBody};
use super::views::{session_view, DeletedView, PlacementView, SessionPage, SessionView};
use super::{require_json, MAX_CALL_TIMEOUT_MS};
use crate::error::Error;
use crate::model::{CallKey, Command, NodeId, Rejection, SessionKind};
use crate::peer::CallError;
use crate::service::Service;

type AppState = Arc<Service>;

/// A new session.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    /// Session id: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
    id: String,
    /// Handler kind; `kv` when absent.
    kind: Option<String>,
    /// First state, as the kind takes it; the kind's default when absent.
    state: Option<serde_json::Value>,
    /// Where it may run; anywhere when absent. Kept with the session: a
    /// failover, drain or rebalance places it by the same rule.
    placement: Option<PlacementView>,
}

/// Create a session
///
/// The leader places it on an eligible node; it starts there at once.
#[utoipa::path(
    post,
    path = "/v1/sessions",
    tag = "sessions",
    request_body = CreateRequest,
    responses(
        (status = 201, description = "Created", body = SessionView),
        (status = 400, description = "Bad id, kind, state, placement or JSON", body = ErrorBody),
        (status = 409, description = "A session with this id exists", body = ErrorBody),
        (status = 413, description = "Body or state too large", body = ErrorBody),
        (status = 415, description = "Body not declared JSON", body = ErrorBody),
        (status = 503, description = "No quorum, or the outcome is unknown", body = ErrorBody),
    )
)]
pub(super) async fn create_session(
    State(core): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    // The route's body limit (the state limit + 64 KiB) answers 413 `too_large`.
    let request: CreateRequest = parse_json(body)?;
    let id = session_id(&request.id)?;
    let kind_name = request
        .kind
        .unwrap_or_else(|| crate::handlers::kv::KIND.to_string());
    let kind = SessionKind::new(kind_name.clone())
        .map_err(|e| ApiError::bad_request("invalid_kind", format!("invalid kind: {e}")))?;
    let placement = match &request.placement {
        None => crate::model::Requirement::default(),
        Some(placement) => placement.requirement().map_err(|e| {
            ApiError::bad_request("invalid_placement", format!("invalid placement: {e}"))
        })?,
    };
    let session = crate::service::create_session(&core, id, kind, request.state, placement)
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
    let view = core.view.read(|a| session_view(&a.state, &session));
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub(super) async fn barrier(core: &Service) -> Result<(), ApiError> {
    core.read_barrier().await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_quorum",
            format!("linearizable read not possible: {e}"),
        )
    })
}

/// Get a session
///
/// A linearizable read: it reflects every write acknowledged before it.
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "No quorum for a linearizable read", body = ErrorBody),
    )
)]
pub(super) async fn get_session(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let id = session_id(&id)?;
    barrier(&core).await?;
    core.view
        .read(|a| a.state.sessions.get(&id).map(|s| session_view(&a.state, s)))
        .map(Json)
        .ok_or_else(|| Rejection::NoSuchSession(id).into())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only the sessions this node owns.
    #[param(value_type = Option<u64>)]
    owner: Option<NodeId>,
    /// Start after this session id (the `next` of the previous page).
    after: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

const LIST_MAX: usize = 1000;

/// List sessions
///
/// In id order, a page at a time; a linearizable read.
#[utoipa::path(
    get,
    path = "/v1/sessions",
    tag = "sessions",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sessions", body = SessionPage),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 503, description = "No quorum for a linearizable read", body = ErrorBody),
    )
)]
pub(super) async fn list_sessions(
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
        let mut matching: Box<dyn Iterator<Item = &crate::model::Session>> = match query.owner {
            // The owner index: a page costs the page, not the table.
            Some(owner) => Box::new(a.state.sessions_of_after(Some(owner), after.as_ref())),
            None => Box::new(
                a.state
                    .sessions
                    .range((start, Bound::Unbounded))
                    .map(|(_, s)| &**s),
            ),
        };
        let sessions: Vec<SessionView> = matching
            .by_ref()
            .take(limit)
            .map(|s| session_view(&a.state, s))
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

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct CallQuery {
    /// Longest wait in milliseconds, 1 to 60000 (default 5000).
    #[param(minimum = 1, maximum = 60000)]
    timeout_ms: Option<u64>,
}

/// Header that carries a call's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Call a session
///
/// The message goes to the session's owner, which handles it and commits
/// the new state before it replies. With an `Idempotency-Key`, a retry is
/// answered with the first reply and applies nothing.
#[utoipa::path(
    post,
    path = "/v1/sessions/{id}/call",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "Session id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 128 characters of `A-Z a-z 0-9 _ . : -`"),
        CallQuery,
    ),
    request_body(content = serde_json::Value, description = "The message, as the session's kind takes it"),
    responses(
        (status = 200, description = "The reply", body = crate::runtime::CallReply),
        (status = 400, description = "Bad id, key, query or JSON", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "A conflicting call", body = ErrorBody),
        (status = 413, description = "Body or new state too large", body = ErrorBody),
        (status = 415, description = "Body not declared JSON", body = ErrorBody),
        (status = 422, description = "The session rejected the message", body = ErrorBody),
        (status = 503, description = "Not available in time, or the outcome is unknown", body = ErrorBody),
    )
)]
pub(super) async fn call_session(
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

/// Delete a session
#[utoipa::path(
    delete,
    path = "/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedView),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "No quorum, or the outcome is unknown", body = ErrorBody),
    )
)]
pub(super) async fn delete_session(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeletedView>, ApiError> {
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
    Ok(Json(DeletedView {
        deleted: id.as_str().to_string(),
    }))
}
