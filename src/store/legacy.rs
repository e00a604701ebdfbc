//! The snapshot formats of earlier versions, read once when a data
//! directory written by one is opened (or such a snapshot arrives):
//!
//! - V1: kept in sled by the versions before placement history (sessions
//!   without `history`, no events);
//! - V2: the snapshot file before placement constraints (nodes without
//!   `traits`, sessions without `placement`), written without the format
//!   tag that [`super::SNAPSHOT_TAG`] now puts in front.
//!
//! Log entries need no conversion: `Command` only ever gains variants.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use openraft::{LogId, StoredMembership};
use serde::Deserialize;

use crate::model::{
    Epoch, NodeId, NodeInfo, NodeStatus, NodeTraits, Placement, RecordedCall, Requirement, Session,
    SessionId, SessionKind, StateJson,
};
use crate::state::{ClusterState, Event};

#[derive(Deserialize)]
struct NodeInfoV2 {
    id: NodeId,
    addr: String,
    status: NodeStatus,
    since: DateTime<Utc>,
}

impl From<NodeInfoV2> for NodeInfo {
    fn from(old: NodeInfoV2) -> Self {
        NodeInfo {
            id: old.id,
            addr: old.addr,
            status: old.status,
            since: old.since,
            traits: NodeTraits::default(),
        }
    }
}

fn nodes(old: BTreeMap<NodeId, NodeInfoV2>) -> BTreeMap<NodeId, NodeInfo> {
    old.into_iter().map(|(id, n)| (id, n.into())).collect()
}

#[derive(Deserialize)]
struct SessionV1 {
    id: SessionId,
    kind: SessionKind,
    owner: Option<NodeId>,
    epoch: Epoch,
    version: u64,
    state: StateJson,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    calls: Vec<RecordedCall>,
}

#[derive(Deserialize)]
struct SessionV2 {
    id: SessionId,
    kind: SessionKind,
    owner: Option<NodeId>,
    epoch: Epoch,
    version: u64,
    state: StateJson,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    calls: Vec<RecordedCall>,
    history: Vec<Placement>,
}

impl From<SessionV2> for Session {
    fn from(s: SessionV2) -> Self {
        Session {
            id: s.id,
            kind: s.kind,
            owner: s.owner,
            epoch: s.epoch,
            version: s.version,
            state: s.state,
            created_at: s.created_at,
            updated_at: s.updated_at,
            calls: s.calls,
            history: s.history,
            placement: crate::labels::share(&Requirement::default()),
        }
    }
}

impl From<SessionV1> for Session {
    fn from(s: SessionV1) -> Self {
        SessionV2 {
            id: s.id,
            kind: s.kind,
            owner: s.owner,
            epoch: s.epoch,
            version: s.version,
            state: s.state,
            created_at: s.created_at,
            updated_at: s.updated_at,
            calls: s.calls,
            history: Vec::new(),
        }
        .into()
    }
}

#[derive(Deserialize)]
struct TableV1 {
    nodes: BTreeMap<NodeId, NodeInfoV2>,
    sessions: BTreeMap<SessionId, SessionV1>,
    last_epoch: Epoch,
}

#[derive(Deserialize)]
struct TableV2 {
    nodes: BTreeMap<NodeId, NodeInfoV2>,
    sessions: BTreeMap<SessionId, SessionV2>,
    last_epoch: Epoch,
    events: Vec<Event>,
    last_event: u64,
    events_dropped_through: u64,
}

#[derive(Deserialize)]
pub(super) struct AppliedV1 {
    state: TableV1,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

#[derive(Deserialize)]
pub(super) struct AppliedV2 {
    state: TableV2,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
}

impl From<AppliedV1> for super::Applied {
    fn from(old: AppliedV1) -> Self {
        let sessions = old.state.sessions.into_values().map(Session::from);
        super::Applied {
            state: ClusterState::restore(nodes(old.state.nodes), sessions, old.state.last_epoch),
            last_applied: old.last_applied,
            membership: old.membership,
        }
    }
}

impl From<AppliedV2> for super::Applied {
    fn from(old: AppliedV2) -> Self {
        let table = old.state;
        let sessions = table.sessions.into_values().map(Session::from);
        let mut state = ClusterState::restore(nodes(table.nodes), sessions, table.last_epoch);
        state.events = table.events.into_iter().collect();
        state.last_event = table.last_event;
        state.events_dropped_through = table.events_dropped_through;
        super::Applied {
            state,
            last_applied: old.last_applied,
            membership: old.membership,
        }
    }
}
