//! Cluster routes (status, drain, undrain, rebalance, remove), the health probes
//! and the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ServerState;

use super::error::{ApiError, ErrorBody};
use super::views::{
    AppView, ClusterView, HealthView, LiveView, NodeView, NodeViewStatus, RemovedView,
    UndrainedView,
};
use crate::error::Error;
use crate::model::{NodeId, Rejection};
use crate::peer::{DrainRequest, HandoffReport};
use crate::service::Service;

type AppState = Arc<Service>;

/// True when this node knows its table is current: as leader, a quorum
/// acknowledged it within the quorum window (a leader cut off from its
/// quorum still names itself leader: openraft does not step down; same rule
/// as the lease grant); elsewhere a valid lease is the proof, since only a
/// leader that heard a quorum recently grants one.
fn has_quorum(core: &Service, state: ServerState, lease_valid: bool) -> bool {
    if state == ServerState::Leader {
        crate::lease::fresh_quorum(&core.lease_env)
    } else {
        lease_valid
    }
}

fn lease_valid(core: &Service) -> bool {
    core.lease
        .borrow()
        .is_valid(tokio::time::Instant::now(), core.view.applied_index())
}

/// Cluster status
///
/// Leader and term, each node with its status and session count, sessions
/// by status, as the answering node knows them.
#[utoipa::path(
    get,
    path = "/v1/cluster",
    tag = "cluster",
    responses((status = 200, description = "The cluster", body = ClusterView))
)]
pub(super) async fn cluster_status(State(core): State<AppState>) -> Json<ClusterView> {
    let (leader, term, state) = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader, m.current_term, m.state)
    };
    let quorum = leader.is_some() && has_quorum(&core, state, lease_valid(&core));
    let view = core.view.read(|a| {
        let counts = a.state.sessions_per_node();
        // Counted per owner, not per session: the cost is the number of nodes.
        let mut by_status = BTreeMap::new();
        for owner in a.state.owners() {
            let name = serde_json::to_value(a.state.status_under(owner))
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *by_status.entry(name).or_insert(0) += a.state.count_of(owner);
        }
        ClusterView {
            leader,
            term,
            answered_by: core.me,
            quorum,
            nodes: a
                .state
                .nodes
                .values()
                .map(|n| NodeView {
                    id: n.id,
                    addr: n.addr.clone(),
                    // Without a quorum the table may be stale: a node shown
                    // Up may be dead. This node only knows itself.
                    status: if quorum || n.id == core.me {
                        n.status.into()
                    } else {
                        NodeViewStatus::Unknown
                    },
                    sessions: counts.get(&n.id).copied().unwrap_or(0),
                    labels: n.traits.labels.clone(),
                    max_sessions: n.traits.max_sessions,
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

/// Drain a node
///
/// It takes no new sessions and hands its sessions over to the others.
#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/drain",
    tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses(
        (status = 202, description = "Drained; what moved", body = HandoffReport),
        (status = 400, description = "Invalid node id", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 503, description = "No leader or quorum", body = ErrorBody),
    )
)]
pub(super) async fn drain_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = node_id(&id)?;
    let known = core.view.read(|a| a.state.nodes.contains_key(&id));
    if !known {
        return Err(Rejection::NoSuchNode(id).into());
    }
    let report = core
        .drain(DrainRequest {
            node: id,
            released: false,
            instance: 0,
        })
        .await
        .map_err(Error::from)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// Undrain a node
///
/// A Draining node takes new sessions again.
#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/undrain",
    tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses(
        (status = 200, description = "Up again", body = UndrainedView),
        (status = 400, description = "Invalid node id", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 409, description = "Not allowed in its state", body = ErrorBody),
        (status = 503, description = "No leader or quorum", body = ErrorBody),
    )
)]
pub(super) async fn undrain_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<UndrainedView>, ApiError> {
    let id = node_id(&id)?;
    let known = core.view.read(|a| a.state.nodes.contains_key(&id));
    if !known {
        return Err(Rejection::NoSuchNode(id).into());
    }
    core.undrain(id).await.map_err(Error::from)?;
    Ok(Json(UndrainedView {
        node: id,
        status: "up".into(),
    }))
}

/// Rebalance
///
/// Moves sessions to their placement choice among the eligible nodes,
/// with the same handoff as a drain.
#[utoipa::path(
    post,
    path = "/v1/cluster/rebalance",
    tag = "cluster",
    responses(
        (status = 202, description = "What moved", body = HandoffReport),
        (status = 503, description = "No leader or quorum", body = ErrorBody),
    )
)]
pub(super) async fn rebalance(State(core): State<AppState>) -> Result<Response, ApiError> {
    let report = core.rebalance().await.map_err(Error::from)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// Remove a node
///
/// From the Raft membership and the table; its sessions are placed again.
#[utoipa::path(
    delete,
    path = "/v1/nodes/{id}",
    tag = "cluster",
    params(("id" = u64, Path, description = "Node id")),
    responses(
        (status = 200, description = "Removed", body = RemovedView),
        (status = 400, description = "Invalid node id", body = ErrorBody),
        (status = 404, description = "Not a voter", body = ErrorBody),
        (status = 409, description = "Not allowed (the last voter, say)", body = ErrorBody),
        (status = 503, description = "No leader or quorum", body = ErrorBody),
    )
)]
pub(super) async fn remove_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RemovedView>, ApiError> {
    let id = node_id(&id)?;
    let voters = crate::raft::voters(&core.raft);
    if !voters.contains(&id) {
        return Err(Rejection::NoSuchNode(id).into());
    }
    core.remove(id).await.map_err(Error::from)?;
    Ok(Json(RemovedView { removed: id }))
}

/// Liveness
///
/// The process serves HTTP.
#[utoipa::path(
    get,
    path = "/v1/health/live",
    tag = "health",
    responses((status = 200, description = "Live", body = LiveView))
)]
pub(super) async fn live(State(core): State<AppState>) -> Json<LiveView> {
    Json(LiveView {
        node: core.me,
        live: true,
    })
}

/// Readiness
///
/// 200 only while writes and reads through this node can succeed.
#[utoipa::path(
    get,
    path = "/v1/health/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthView),
        (status = 503, description = "Not ready", body = HealthView),
    )
)]
pub(super) async fn ready(state: State<AppState>) -> Response {
    health(state).await
}

/// Readiness (`/v1/health`, `/v1/health/ready`): 200 only while writes and
/// reads through this node can succeed: it holds a valid lease (granted by
/// a leader that heard a quorum recently, and applied up to the grant), it
/// knows a leader that is a member, and, when it leads, a quorum
/// acknowledged it within the quorum window.
#[utoipa::path(
    get,
    path = "/v1/health",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = HealthView),
        (status = 503, description = "Not ready", body = HealthView),
    )
)]
pub(super) async fn health(State(core): State<AppState>) -> Response {
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
    let quorum = has_quorum(&core, state, lease_valid);
    let apps = app_views(&core);
    let apps_ready = apps.iter().all(|app| app.ready);
    let body = HealthView {
        node: core.me,
        leader,
        role: format!("{state:?}").to_lowercase(),
        applied_index: applied,
        caught_up,
        quorum,
        lease_valid,
        apps,
    };
    if leader_is_member && caught_up && quorum && lease_valid && apps_ready {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// This node's external apps, as its health answer shows them.
fn app_views(core: &Service) -> Vec<AppView> {
    core.apps
        .iter()
        .map(|app| AppView {
            kind: app.kind.to_string(),
            ready: app.is_ready(),
            error: app.error(),
        })
        .collect()
}

/// Metrics
///
/// The node's metrics in the OpenMetrics text format, which Prometheus
/// scrapes (names in README's "Observability").
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "observability",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
pub(super) async fn metrics(State(core): State<AppState>) -> Response {
    set_gauges(&core);
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        core.metrics.render(),
    )
        .into_response()
}

/// Sets every gauge from Raft, the table and the runtime.
fn set_gauges(core: &Service) {
    let g = &core.metrics.gauges;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        g.raft_term.set(count(m.current_term));
        g.raft_leader.set(count(m.current_leader.unwrap_or(0)));
        g.raft_is_leader
            .set(i64::from(m.state == ServerState::Leader));
        g.raft_last_log_index
            .set(count(m.last_log_index.unwrap_or(0)));
        g.raft_applied_index
            .set(count(m.last_applied.map(|l| l.index).unwrap_or(0)));
    }
    let (sessions, owned, nodes_up) = core.view.read(|a| {
        (
            a.state.sessions.len(),
            a.state.count_of(Some(core.me)),
            a.state.eligible_nodes().len(),
        )
    });
    g.node_id.set(count(core.me));
    g.sessions.set(count(sessions as u64));
    g.sessions_owned.set(count(owned as u64));
    g.sessions_running.set(count(core.runtime.running() as u64));
    g.session_tasks.set(count(core.runtime.live_tasks() as u64));
    g.nodes_up.set(count(nodes_up as u64));
    g.lease_valid.set(i64::from(lease_valid(core)));
}
