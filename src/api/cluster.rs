//! Cluster routes (status, drain, undrain, rebalance, remove), the health probes
//! and the metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::ServerState;

use super::error::ApiError;
use super::views::{ClusterView, NodeView, NodeViewStatus};
use crate::error::Error;
use crate::model::{NodeId, Rejection};
use crate::peer::DrainRequest;
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
        })
        .await
        .map_err(Error::from)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

/// `POST /v1/nodes/{id}/undrain`: a Draining node takes new sessions again.
pub(super) async fn undrain_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = node_id(&id)?;
    let known = core.view.read(|a| a.state.nodes.contains_key(&id));
    if !known {
        return Err(Rejection::NoSuchNode(id).into());
    }
    core.undrain(id).await.map_err(Error::from)?;
    Ok(Json(serde_json::json!({"node": id, "status": "up"})))
}

pub(super) async fn rebalance(State(core): State<AppState>) -> Result<Response, ApiError> {
    let report = core.rebalance().await.map_err(Error::from)?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

pub(super) async fn remove_node(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = node_id(&id)?;
    let voters = crate::raft::voters(&core.raft);
    if !voters.contains(&id) {
        return Err(Rejection::NoSuchNode(id).into());
    }
    core.remove(id).await.map_err(Error::from)?;
    Ok(Json(serde_json::json!({"removed": id})))
}

/// Liveness: the process serves HTTP.
pub(super) async fn live(State(core): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"node": core.me, "live": true}))
}

/// Readiness (`/v1/health`, `/v1/health/ready`): 200 only while writes and
/// reads through this node can succeed: it holds a valid lease (granted by
/// a leader that heard a quorum recently, and applied up to the grant), it
/// knows a leader that is a member, and, when it leads, a quorum
/// acknowledged it within the quorum window.
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

pub(super) async fn metrics(State(core): State<AppState>) -> Response {
    let text: String = gauges(&core)
        .iter()
        .map(|(name, help, value)| {
            format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n")
        })
        .collect();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Name, help and value of every gauge.
fn gauges(core: &Service) -> [(&'static str, &'static str, f64); 10] {
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
    let lease_valid = lease_valid(core);
    let flag = |b: bool| f64::from(u8::from(b));
    [
        ("minos_raft_term", "Current Raft term.", term as f64),
        (
            "minos_raft_leader",
            "Current leader id (0 when unknown).",
            leader.unwrap_or(0) as f64,
        ),
        (
            "minos_raft_is_leader",
            "1 when this node is the leader.",
            flag(is_leader),
        ),
        (
            "minos_raft_last_log_index",
            "Last log index.",
            last_log as f64,
        ),
        (
            "minos_raft_applied_index",
            "Last applied log index.",
            applied as f64,
        ),
        (
            "minos_sessions_total",
            "Sessions in the table.",
            sessions as f64,
        ),
        (
            "minos_sessions_owned",
            "Sessions this node owns.",
            owned as f64,
        ),
        (
            "minos_sessions_running",
            "Session tasks running on this node.",
            core.runtime.running() as f64,
        ),
        ("minos_nodes_up", "Nodes Up in the table.", nodes_up as f64),
        (
            "minos_lease_valid",
            "1 while this node holds a valid lease.",
            flag(lease_valid),
        ),
    ]
}
