//! The server side of the internal routes: authentication (the cluster
//! secret, checked before any body is read), body limits, decoding, the
//! Raft RPC checks every node applies even to authenticated peers, and
//! encoding of the answers. What each request does is the node's business:
//! it implements [`PeerHandler`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use tokio::sync::watch;

use super::messages::{
    CallError, CallReply, DrainRequest, ForwardedCall, HandoffReport, JoinAnswer, JoinRefusal,
    JoinRequest, LeaderError, LeaseAnswer, LeaseRequest, ReleaseRequest,
};
use super::paths;
use crate::auth::{Security, PEER_SECRET_HEADER};
use crate::model::{Command, NodeId, SessionId};
use crate::wire::{decode_bin, TypeConfig};

/// Largest JSON body of an internal request (leases, releases, joins and
/// the leader's operations); a forwarded call is bounded like a public
/// call body, Raft traffic by [`PeerHandler::raft_body_limit`].
const INTERNAL_JSON_LIMIT: usize = 64 * 1024;
/// Terms above this are refused: openraft computes `term + 1` when it
/// elects, and a term near `u64::MAX` would overflow it (and be saved).
pub const MAX_TERM: u64 = u64::MAX / 2;

type Append = AppendEntriesRequest<TypeConfig>;
type Appended = Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>;
type Voted = Result<VoteResponse<NodeId>, RaftError<NodeId>>;
type Snapshot = InstallSnapshotRequest<TypeConfig>;
type Installed = Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>;
type Handoff = Result<HandoffReport, LeaderError>;

/// What a node does with each internal request.
pub(crate) trait PeerHandler: Send + Sync + 'static {
    /// The write path's answer to a forwarded batch.
    type ProposeAnswer: Serialize + Send;
    /// Who may make peer requests.
    fn security(&self) -> &Security;
    /// Body limit of the Raft routes and of forwarded batches.
    fn raft_body_limit(&self) -> usize;
    /// Body limit of a forwarded call.
    fn call_body_limit(&self) -> usize;
    /// The members this node knows (voters and learners); `None` while it
    /// knows no membership (a joining node).
    fn known_members(&self) -> Option<BTreeSet<NodeId>>;
    /// Ends when this node stops.
    fn shutdown(&self) -> watch::Receiver<bool>;
    /// True (once) when the answer to this forwarded call must be lost
    /// (injected fault).
    fn lose_reply(&self, id: &SessionId) -> bool;
    fn append(&self, request: Append) -> impl Future<Output = Appended> + Send;
    fn vote(&self, request: VoteRequest<NodeId>) -> impl Future<Output = Voted> + Send;
    fn install_snapshot(&self, request: Snapshot) -> impl Future<Output = Installed> + Send;
    fn propose(&self, commands: Vec<Command>) -> impl Future<Output = Self::ProposeAnswer> + Send;
    fn read_index(&self) -> impl Future<Output = Result<u64, LeaderError>> + Send;
    fn lease(&self, request: LeaseRequest) -> LeaseAnswer;
    fn call(&self, id: SessionId, call: ForwardedCall) -> impl Future<Output = Called> + Send;
    fn release(&self, request: ReleaseRequest) -> impl Future<Output = Done> + Send;
    fn join(&self, request: JoinRequest) -> impl Future<Output = Joined> + Send;
    fn whoami(&self) -> NodeId;
    fn leader_drain(&self, request: DrainRequest) -> impl Future<Output = Handoff> + Send;
    fn leader_undrain(&self, node: NodeId) -> impl Future<Output = Done> + Send;
    fn leader_rebalance(&self) -> impl Future<Output = Handoff> + Send;
    fn leader_remove(&self, node: NodeId) -> impl Future<Output = Done> + Send;
}

type Called = Result<CallReply, CallError>;
type Joined = Result<JoinAnswer, JoinRefusal>;
type Done = Result<(), LeaderError>;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message.into()}});
    (status, Json(body)).into_response()
}

/// The internal routes of a node.
pub(crate) fn router<S: PeerHandler>(handler: Arc<S>) -> Router {
    let raft = Router::new()
        .route(paths::RAFT_APPEND, post(raft_append::<S>))
        .route(paths::RAFT_VOTE, post(raft_vote::<S>))
        .route(paths::RAFT_SNAPSHOT, post(raft_snapshot::<S>))
        .route(paths::PROPOSE, post(propose::<S>))
        .layer(DefaultBodyLimit::max(handler.raft_body_limit()));
    let calls = Router::new()
        .route(&format!("{}:id", paths::CALL), post(call::<S>))
        .layer(DefaultBodyLimit::max(handler.call_body_limit()));
    let timed = Router::new()
        .route(paths::READ_INDEX, post(read_index::<S>))
        .route(paths::LEASE, post(lease::<S>))
        .route(paths::RELEASE, post(release::<S>))
        .route(paths::JOIN, post(join::<S>))
        .route(paths::WHOAMI, post(whoami::<S>))
        .route(paths::LEADER_DRAIN, post(leader_drain::<S>))
        .route(paths::LEADER_UNDRAIN, post(leader_undrain::<S>))
        .route(paths::LEADER_REBALANCE, post(leader_rebalance::<S>))
        .route(paths::LEADER_REMOVE, post(leader_remove::<S>))
        .layer(DefaultBodyLimit::max(INTERNAL_JSON_LIMIT))
        .merge(raft)
        .merge(calls)
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            crate::serve::REQUEST_TIMEOUT,
        ));
    timed
        .route(paths::PRESENCE, get(presence::<S>))
        .route_layer(middleware::from_fn_with_state(
            handler.clone(),
            peer_only::<S>,
        ))
        .with_state(handler)
}

async fn peer_only<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(PEER_SECRET_HEADER)
        .and_then(|v| v.to_str().ok());
    if handler.security().peer_allowed(presented) {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "internal routes need the cluster secret",
        )
    }
}

fn bin<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn from_bin<T: for<'de> serde::Deserialize<'de>>(body: &[u8]) -> Result<T, Box<Response>> {
    decode_bin(body).map_err(|e| {
        Box::new((StatusCode::BAD_REQUEST, format!("bad binary body: {e}")).into_response())
    })
}

/// Why a Raft RPC is refused before openraft sees it, if it is.
///
/// Refused even from an authenticated peer: a term above [`MAX_TERM`]
/// (openraft's `term + 1` would overflow), entries of a term above the
/// sender's, and a sender outside the membership this node knows (unless
/// it knows none yet: a joining node accepts its leader).
pub(crate) fn raft_refusal(
    members: Option<&BTreeSet<NodeId>>,
    vote: &openraft::Vote<NodeId>,
    mut entry_terms: impl Iterator<Item = u64>,
) -> Option<String> {
    let term = vote.leader_id.term;
    if term > MAX_TERM {
        return Some(format!("term {term} is out of range"));
    }
    if let Some(bad) = entry_terms.find(|t| *t > term) {
        return Some(format!(
            "an entry of term {bad} from a sender at term {term}"
        ));
    }
    let Some(sender) = vote.leader_id.voted_for() else {
        return Some("the vote names no node".into());
    };
    match members {
        Some(members) if !members.contains(&sender) => {
            Some(format!("node {sender} is not a member"))
        }
        _ => None,
    }
}

fn check<S: PeerHandler>(
    handler: &S,
    vote: &openraft::Vote<NodeId>,
    entry_terms: impl Iterator<Item = u64>,
) -> Result<(), Box<Response>> {
    match raft_refusal(handler.known_members().as_ref(), vote, entry_terms) {
        Some(reason) => Err(Box::new(error(StatusCode::FORBIDDEN, "refused", reason))),
        None => Ok(()),
    }
}

async fn raft_append<S: PeerHandler>(State(handler): State<Arc<S>>, body: Bytes) -> Response {
    let request: AppendEntriesRequest<TypeConfig> = match from_bin(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let terms = request.entries.iter().map(|e| e.log_id.leader_id.term);
    if let Err(refused) = check(&*handler, &request.vote, terms) {
        return *refused;
    }
    bin(&handler.append(request).await)
}

async fn raft_vote<S: PeerHandler>(State(handler): State<Arc<S>>, body: Bytes) -> Response {
    let request: VoteRequest<NodeId> = match from_bin(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let terms = request.last_log_id.iter().map(|l| l.leader_id.term);
    if let Err(refused) = check(&*handler, &request.vote, terms) {
        return *refused;
    }
    bin(&handler.vote(request).await)
}

async fn raft_snapshot<S: PeerHandler>(State(handler): State<Arc<S>>, body: Bytes) -> Response {
    let request: InstallSnapshotRequest<TypeConfig> = match from_bin(&body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let terms = request.meta.last_log_id.iter().map(|l| l.leader_id.term);
    if let Err(refused) = check(&*handler, &request.vote, terms) {
        return *refused;
    }
    bin(&handler.install_snapshot(request).await)
}

async fn propose<S: PeerHandler>(State(handler): State<Arc<S>>, body: Bytes) -> Response {
    match from_bin::<Vec<Command>>(&body) {
        Ok(commands) => bin(&handler.propose(commands).await),
        Err(response) => *response,
    }
}

async fn read_index<S: PeerHandler>(
    State(handler): State<Arc<S>>,
) -> Json<Result<u64, LeaderError>> {
    Json(handler.read_index().await)
}

async fn lease<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Json(request): Json<LeaseRequest>,
) -> Json<LeaseAnswer> {
    Json(handler.lease(request))
}

/// A response that never ends while this node runs: the leader holds it
/// open and learns of this process's death the moment the kernel closes it.
async fn presence<S: PeerHandler>(State(handler): State<Arc<S>>) -> Response {
    let shutdown = handler.shutdown();
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

async fn call<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Path(id): Path<String>,
    Json(call): Json<ForwardedCall>,
) -> Response {
    let Ok(id) = SessionId::new(id) else {
        return Json(Err::<CallReply, _>(CallError::NotHere)).into_response();
    };
    let answer = handler.call(id.clone(), call).await;
    if handler.lose_reply(&id) {
        // Injected fault (tests): the call ran, its answer never arrives.
        return (StatusCode::BAD_GATEWAY, "reply lost (injected fault)").into_response();
    }
    Json(answer).into_response()
}

async fn release<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Json(request): Json<ReleaseRequest>,
) -> Json<Done> {
    Json(handler.release(request).await)
}

async fn join<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Json(request): Json<JoinRequest>,
) -> Json<Joined> {
    Json(handler.join(request).await)
}

async fn whoami<S: PeerHandler>(State(handler): State<Arc<S>>) -> Json<NodeId> {
    Json(handler.whoami())
}

async fn leader_drain<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Json(request): Json<DrainRequest>,
) -> Json<Handoff> {
    Json(handler.leader_drain(request).await)
}

async fn leader_undrain<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Json(node): Json<NodeId>,
) -> Json<Done> {
    Json(handler.leader_undrain(node).await)
}

async fn leader_rebalance<S: PeerHandler>(State(handler): State<Arc<S>>) -> Json<Handoff> {
    Json(handler.leader_rebalance().await)
}

async fn leader_remove<S: PeerHandler>(
    State(handler): State<Arc<S>>,
    Json(node): Json<NodeId>,
) -> Json<Done> {
    Json(handler.leader_remove(node).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Vote;
    use proptest::prelude::*;

    proptest! {
        /// The rule, for every term and sender: refused exactly when the
        /// term is out of range, an entry is ahead of the sender, or a
        /// known membership lacks the sender.
        #[test]
        fn raft_refusal_follows_its_rule(
            term in prop_oneof![0u64..100, (MAX_TERM - 2)..=u64::MAX],
            sender in 0u64..8,
            entry_ahead in any::<bool>(),
            knows in any::<bool>(),
        ) {
            let members: BTreeSet<NodeId> = [1, 2, 3].into();
            let vote = Vote::new(term, sender);
            let entries = if entry_ahead { vec![term.saturating_add(1)] } else { vec![term] };
            let refused = raft_refusal(knows.then_some(&members), &vote, entries.into_iter()).is_some();
            let expected = term > MAX_TERM
                || (entry_ahead && term < u64::MAX)
                || (knows && !members.contains(&sender));
            prop_assert_eq!(refused, expected);
        }
    }
}
