//! HTTP: the public JSON API (`/v1/...`, `/metrics`) and the health probes,
//! over the service layer. Every public route but the probes needs a bearer
//! token with the role [`needed_role`] names. The internal routes are
//! `peer::server`'s.
//!
//! Every error leaves as `{"error": {"code", "message"}}` with a 4xx/5xx
//! status decided in one place ([`ApiError`]); bad input is refused before
//! anything reaches the log.

mod cluster;
mod error;
mod events;
mod openapi;
mod page;
mod sessions;
#[cfg(test)]
mod tests;
mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;

pub use self::error::ApiError;
pub(crate) use self::events::follow_session;
pub use self::events::{EventPage, EventView, HistoryView, SessionChange, WatchEnd};
pub use self::openapi::document as openapi_document;
pub use self::sessions::IDEMPOTENCY_KEY;
pub use self::views::{
    ClusterView, NodeView, NodeViewStatus, PlacementView, SessionPage, SessionView,
};
use crate::auth::Role;
use crate::service::Service;

type AppState = Arc<Service>;

/// Longest wait a caller may ask of a call (`timeout_ms`).
pub const MAX_CALL_TIMEOUT_MS: u64 = 60_000;

/// Every public route: method, path, handler. The router is built from
/// this table alone, and a test holds it equal to the OpenAPI document's
/// routes (each handler carries its `#[utoipa::path]`; add it to
/// `openapi::ApiDoc` and to [`needed_role`] too).
fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    vec![
        (Method::POST, "/v1/sessions", post(sessions::create_session)),
        (Method::GET, "/v1/sessions", get(sessions::list_sessions)),
        (Method::GET, "/v1/sessions/:id", get(sessions::get_session)),
        (
            Method::DELETE,
            "/v1/sessions/:id",
            delete(sessions::delete_session),
        ),
        (
            Method::POST,
            "/v1/sessions/:id/call",
            post(sessions::call_session),
        ),
        (
            Method::GET,
            "/v1/sessions/:id/history",
            get(events::session_history),
        ),
        (
            Method::GET,
            "/v1/sessions/:id/watch",
            get(events::watch_session),
        ),
        (Method::GET, "/v1/events", get(events::list_events)),
        (Method::GET, "/v1/events/watch", get(events::watch_events)),
        (Method::GET, "/v1/cluster", get(cluster::cluster_status)),
        (
            Method::POST,
            "/v1/cluster/rebalance",
            post(cluster::rebalance),
        ),
        (
            Method::POST,
            "/v1/nodes/:id/drain",
            post(cluster::drain_node),
        ),
        (
            Method::POST,
            "/v1/nodes/:id/undrain",
            post(cluster::undrain_node),
        ),
        (
            Method::DELETE,
            "/v1/nodes/:id",
            delete(cluster::remove_node),
        ),
        (Method::GET, "/v1/health", get(cluster::health)),
        (Method::GET, "/v1/health/ready", get(cluster::ready)),
        (Method::GET, "/v1/health/live", get(cluster::live)),
        (Method::GET, "/metrics", get(cluster::metrics)),
        (Method::GET, "/v1/openapi.json", get(openapi::openapi_json)),
        (Method::GET, "/", get(page::status_page)),
    ]
}

/// The (method, path) of every public route, as the router has them.
#[cfg(test)]
pub(crate) fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The routers of one node: the public routes (open, or a bearer token
/// with the role [`needed_role`] names, checked on each route), the
/// internal routes (cluster secret, checked before a body is read), each
/// with its own body limit.
pub(crate) fn router(core: Arc<Service>) -> Router {
    let public_limit = core.limits.request_body_bytes();
    let mut public = Router::new();
    for (_, path, handler) in routes() {
        // Routes of one path merge their methods.
        public = public.route(path, handler);
    }
    let public = public
        .route_layer(middleware::from_fn_with_state(core.clone(), authorize))
        .layer(DefaultBodyLimit::max(public_limit));
    public
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            crate::serve::REQUEST_TIMEOUT,
        ))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route") })
        .with_state(core)
}

/// The role a public route needs; `None` for none. Anything not listed
/// needs `admin`, so a new route is closed until it is listed here.
pub fn needed_role(method: &Method, route: &str) -> Option<Role> {
    match (method.as_str(), route) {
        (_, "/v1/health" | "/v1/health/ready" | "/v1/health/live") => None,
        // Static: the API's contract (also in the repository), and the
        // status page's shell, whose script reads its data with a token.
        ("GET", "/v1/openapi.json" | "/") => None,
        (
            "GET",
            "/v1/sessions"
            | "/v1/sessions/:id"
            | "/v1/sessions/:id/history"
            | "/v1/sessions/:id/watch"
            | "/v1/events"
            | "/v1/events/watch"
            | "/v1/cluster",
        )
        | ("POST", "/v1/sessions" | "/v1/sessions/:id/call") => Some(Role::Client),
        // Cluster operations, listed to say so (anything unlisted is admin too).
        ("POST", "/v1/nodes/:id/drain" | "/v1/nodes/:id/undrain" | "/v1/cluster/rebalance")
        | ("DELETE", "/v1/nodes/:id" | "/v1/sessions/:id")
        | ("GET", "/metrics") => Some(Role::Admin),
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

/// Refuses a JSON POST whose body is not declared JSON (a browser form or
/// `text/plain` request from another origin).
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
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
