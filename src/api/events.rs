//! Placement history and watching: why each session moved (from the
//! committed log, so every node answers alike), the table's recent moves,
//! and Server-Sent Event streams of moves and of one session's changes.
//!
//! Streams are bounded: the event stream reads the table's bounded event
//! list on each applied entry (a watcher that falls behind it is told of
//! the gap); a session stream follows the state view's broadcast of changed
//! sessions, and a watcher that falls behind it is ended with the reason
//! `lagged` (the writers never wait for a watcher). Both end when the node
//! shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::{IntoParams, ToSchema};

use super::error::{session_id, ApiError, ErrorBody};
use super::sessions::barrier;
use crate::model::{Epoch, NodeId, Placement, Rejection, Session, SessionId, StateJson};
use crate::service::Service;
use crate::store::Update;

type AppState = Arc<Service>;

/// `GET /v1/sessions/{id}/history`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = History)]
pub struct HistoryView {
    /// The session.
    #[schema(value_type = String)]
    pub session: SessionId,
    /// Its changes of owner, oldest first (the last ones kept).
    pub events: Vec<Placement>,
}

/// One change of owner in `GET /v1/events`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Event)]
pub struct EventView {
    /// The session that moved.
    #[schema(value_type = String)]
    pub session: SessionId,
    /// The change.
    #[serde(flatten)]
    pub placement: Placement,
}

/// `GET /v1/events`: a page of recent moves.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    /// Moves after `after`, oldest first.
    pub events: Vec<EventView>,
    /// Pass as `after` for the next page (the last `seq` seen).
    pub next: u64,
    /// The oldest `seq` the table still keeps (`null`: none yet).
    pub oldest: Option<u64>,
    /// True when moves after `after` are no longer kept (the table keeps
    /// the last 10,000): the page starts at the oldest one kept.
    pub missed: bool,
}

/// Placement history of a session
///
/// Its last changes of owner with their reasons, from the committed log
/// (every node answers alike).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/history",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The history", body = HistoryView),
        (status = 400, description = "Invalid id", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "No quorum for a linearizable read", body = ErrorBody),
    )
)]
pub(super) async fn session_history(
    State(core): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<HistoryView>, ApiError> {
    let id = session_id(&id)?;
    barrier(&core).await?;
    core.view
        .read(|a| {
            a.state.sessions.get(&id).map(|s| HistoryView {
                session: id.clone(),
                events: s.history.clone(),
            })
        })
        .map(Json)
        .ok_or_else(|| Rejection::NoSuchSession(id).into())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Moves with a `seq` above this one (default 0; the watch: from now).
    after: Option<u64>,
    /// Page size, 1 to 1000 (default 100; not for the watch).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

const EVENTS_PAGE_MAX: usize = 1000;

/// Moves with `seq` above `after`, at most `limit`.
fn events_after(core: &Service, after: u64, limit: usize) -> EventPage {
    core.view.read(|a| {
        let events = &a.state.events;
        let oldest = events.front().map(|e| e.placement.seq);
        // The first event with `seq` above `after` (creates take sequence
        // numbers too, so positions are found by search): the comparison
        // never answers Equal, so the search ends at that insertion point.
        let start = events
            .binary_search_by(|e| e.placement.seq.cmp(&after).then(std::cmp::Ordering::Less))
            .unwrap_or_else(|i| i);
        let page: Vec<EventView> = events
            .iter()
            .skip(start)
            .take(limit)
            .map(|e| EventView {
                session: e.session.clone(),
                placement: e.placement.clone(),
            })
            .collect();
        let next = page.last().map_or(after, |e| e.placement.seq);
        EventPage {
            events: page,
            next,
            oldest,
            missed: a.state.events_dropped_through > after,
        }
    })
}

/// Recent moves
///
/// The cluster's moves after `after`, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "sessions",
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of moves", body = EventPage),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 503, description = "No quorum for a linearizable read", body = ErrorBody),
    )
)]
pub(super) async fn list_events(
    State(core): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > EVENTS_PAGE_MAX {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("limit must be 1..={EVENTS_PAGE_MAX}"),
        ));
    }
    barrier(&core).await?;
    Ok(Json(events_after(&core, query.after.unwrap_or(0), limit)))
}

fn sse_json(kind: &str, value: &impl Serialize) -> SseEvent {
    SseEvent::default()
        .event(kind)
        .json_data(value)
        .unwrap_or_else(|_| SseEvent::default().event("error"))
}

/// The SSE response of a stream, with keep-alive comments.
fn sse(
    stream: impl Stream<Item = SseEvent> + Send + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    use futures::StreamExt;
    Sse::new(stream.map(Ok)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /v1/events/watch?after=SEQ`: moves as they are applied, as SSE
/// events `move` (an [`EventView`]); `gap` (`{"missed_after": SEQ,
/// "oldest": SEQ}`) when the table no longer keeps some moves the watcher
/// has not seen; the stream ends with `end` when the node stops.
#[utoipa::path(
    get,
    path = "/v1/events/watch",
    tag = "sessions",
    params(EventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events: `move` (an Event), `gap`, `end`", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 503, description = "No quorum for a linearizable read", body = ErrorBody),
    )
)]
pub(super) async fn watch_events(
    State(core): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    barrier(&core).await?;
    let after = query
        .after
        .unwrap_or_else(|| core.view.read(|a| a.state.last_event));
    let follower = EventFollower {
        applied: core.view.subscribe(),
        shutdown: core.shutdown.clone(),
        core,
        after,
        queued: std::collections::VecDeque::new(),
        ended: false,
    };
    let stream = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((event, follower))
    });
    Ok(sse(stream))
}

/// The state of one watch of the cluster's moves.
struct EventFollower {
    core: Arc<Service>,
    /// The last `seq` queued.
    after: u64,
    applied: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Events read from the table, not sent yet, in order.
    queued: std::collections::VecDeque<SseEvent>,
    ended: bool,
}

impl EventFollower {
    /// The next event of the stream (`None`: it is over).
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queued.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let page = events_after(&self.core, self.after, EVENTS_PAGE_MAX);
            if page.missed {
                let gap = serde_json::json!({"missed_after": self.after, "oldest": page.oldest});
                self.queued.push_back(sse_json("gap", &gap));
            }
            self.after = page.next;
            self.queued
                .extend(page.events.iter().map(|e| sse_json("move", e)));
            if !self.queued.is_empty() {
                continue;
            }
            tokio::select! {
                changed = self.applied.changed() => if changed.is_err() { return None },
                _ = self.shutdown.changed() => {
                    self.ended = true;
                    return Some(sse_json("end", &serde_json::json!({"reason": "node_stopping"})));
                }
            }
        }
    }
}

/// One committed change of a session, in its watch stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionChange {
    /// The session.
    pub session: SessionId,
    /// Its version after the change.
    pub version: u64,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its owner.
    pub owner: Option<NodeId>,
    /// Its state, as JSON.
    pub state: serde_json::Value,
}

impl SessionChange {
    fn of(session: &Session) -> Self {
        Self {
            session: session.id.clone(),
            version: session.version,
            epoch: session.epoch,
            owner: session.owner,
            state: StateJson::to_value(&session.state),
        }
    }
}

/// Why a session watch ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WatchEnd {
    /// `deleted`, `lagged` (the watcher fell behind; reconnect with
    /// `from_version`), or `node_stopping`.
    pub reason: String,
}

/// Follows one session: its row now (if newer than `from_version`), then
/// every change as it is applied, until it is deleted, the watcher lags or
/// the node stops. The Rust API's `Sessions::watch` and the SSE route both
/// read this.
pub(crate) fn follow_session(
    core: Arc<Service>,
    id: SessionId,
    from_version: Option<u64>,
) -> impl Stream<Item = Result<SessionChange, WatchEnd>> + Send + 'static {
    // Subscribed before the row is read: no change falls in between.
    let updates = core.view.watch_updates();
    let first = core
        .view
        .read(|a| a.state.sessions.get(&id).map(|s| SessionChange::of(s)));
    let follower = SessionFollower {
        shutdown: core.shutdown.clone(),
        core,
        id,
        updates,
        first: Some(first),
        from_version,
        sent: None,
        ended: false,
    };
    futures::stream::unfold(follower, |mut follower| async move {
        let item = follower.next().await?;
        Some((item, follower))
    })
}

/// The state of one session's watch.
struct SessionFollower {
    core: Arc<Service>,
    id: SessionId,
    updates: broadcast::Receiver<Update>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The row when the watch began (`Some(None)`: it did not exist).
    first: Option<Option<SessionChange>>,
    from_version: Option<u64>,
    /// The last (version, epoch) sent: a change of either is sent (a move
    /// changes the epoch and owner, a write the version and state).
    sent: Option<(u64, Epoch)>,
    ended: bool,
}

impl SessionFollower {
    fn end(&mut self, reason: &str) -> Option<Result<SessionChange, WatchEnd>> {
        self.ended = true;
        Some(Err(WatchEnd {
            reason: reason.into(),
        }))
    }

    /// The next item of the stream (`None`: it is over).
    async fn next(&mut self) -> Option<Result<SessionChange, WatchEnd>> {
        if self.ended {
            return None;
        }
        if let Some(first) = self.first.take() {
            let Some(change) = first else {
                return self.end("deleted");
            };
            self.sent = Some((change.version, change.epoch));
            // Resuming: the current row only if newer than what the watcher
            // has (versions in between are not kept).
            if self.from_version.is_none_or(|v| change.version > v) {
                return Some(Ok(change));
            }
        }
        loop {
            let update = tokio::select! {
                update = self.updates.recv() => update,
                _ = self.shutdown.changed() => return self.end("node_stopping"),
            };
            let row = match update {
                Ok(Update::Sessions(rows)) => {
                    match rows.iter().find(|(changed, _)| *changed == self.id) {
                        Some((_, row)) => row.as_deref().map(SessionChange::of),
                        None => continue,
                    }
                }
                Ok(Update::Reset) => self
                    .core
                    .view
                    .read(|a| a.state.sessions.get(&self.id).map(|s| SessionChange::of(s))),
                Err(broadcast::error::RecvError::Lagged(_)) => return self.end("lagged"),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let Some(change) = row else {
                return self.end("deleted");
            };
            if self.sent != Some((change.version, change.epoch)) {
                self.sent = Some((change.version, change.epoch));
                return Some(Ok(change));
            }
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct WatchQuery {
    /// Resume after this version (changes up to it are not sent again).
    from_version: Option<u64>,
}

/// `GET /v1/sessions/{id}/watch?from_version=V`: SSE events `change` (a
/// [`SessionChange`]) for each committed change (the current row first
/// when it is newer than `from_version`), then one `end` ([`WatchEnd`]).
#[utoipa::path(
    get,
    path = "/v1/sessions/{id}/watch",
    tag = "sessions",
    params(("id" = String, Path, description = "Session id"), WatchQuery),
    responses(
        (status = 200, description = "Server-Sent Events: `change` per committed change, then `end` (`deleted`, `lagged`, `node_stopping`)", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad id or query", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "No quorum for a linearizable read", body = ErrorBody),
    )
)]
pub(super) async fn watch_session(
    State(core): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    use futures::StreamExt;
    let Query(query) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let id = session_id(&id)?;
    barrier(&core).await?;
    if core.view.read(|a| !a.state.sessions.contains_key(&id)) {
        return Err(Rejection::NoSuchSession(id).into());
    }
    let stream = follow_session(core, id, query.from_version).map(|item| match item {
        Ok(change) => sse_json("change", &change),
        Err(end) => sse_json("end", &end),
    });
    Ok(sse(stream))
}
