//! What the public API answers: sessions, pages of sessions, the cluster.
//! The typed client (`minos::Client`) decodes these.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{NodeId, NodeStatus, Requirement, Session};
use crate::state::{ClusterState, SessionStatus};

/// A session as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
#[schema(as = Session)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// Handler kind.
    pub kind: String,
    /// Owner, if placed.
    #[schema(value_type = Option<u64>)]
    pub owner: Option<NodeId>,
    /// Ownership epoch.
    pub epoch: u64,
    /// Number of committed state updates.
    #[serde(default)]
    pub version: u64,
    /// `placed`, `moving` or `unplaced`.
    #[schema(value_type = SessionStatusDoc)]
    pub status: SessionStatus,
    /// Last committed state (any JSON value the handler keeps).
    pub state: serde_json::Value,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Where it may run, when it was created with a requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementView>,
    /// Why it has no owner (only while `status` is `unplaced`), e.g.
    /// `no Up node has pool=games`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<String>,
}

/// Where a session may run: `{"labels": {"pool": "games"}, "spread": "zone"}`.
/// It runs only on a node carrying every label of `labels` (`minos serve
/// --label pool=games`) and below its `--max-sessions`. With `spread`, only
/// on a node carrying that label, and among those on the label value whose
/// nodes hold the fewest sessions of the same kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PlacementRequirement)]
pub struct PlacementView {
    /// Labels the node must carry, each with this value (at most 16;
    /// keys and values 1 to 63 characters of `A-Z a-z 0-9 _ . / -`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A label key to spread the kind's sessions over (e.g. `zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<String>,
}

impl PlacementView {
    /// The requirement it describes, checked.
    pub fn requirement(&self) -> Result<Requirement, crate::labels::InvalidLabel> {
        let need = Requirement {
            labels: self.labels.clone(),
            spread: self.spread.clone(),
        };
        need.validate()?;
        Ok(need)
    }
}

impl From<&Requirement> for PlacementView {
    fn from(need: &Requirement) -> Self {
        Self {
            labels: need.labels.clone(),
            spread: need.spread.clone(),
        }
    }
}

/// Where a session stands (the schema of `crate::state::SessionStatus`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = SessionStatus)]
#[allow(dead_code)]
pub(super) enum SessionStatusDoc {
    /// Its owner is Up.
    Placed,
    /// Its owner is Down, Draining or gone; a move is pending.
    Moving,
    /// No node was eligible when it was last placed.
    Unplaced,
}

pub(super) fn session_view(state: &ClusterState, session: &Session) -> SessionView {
    let status = state.session_status(session);
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
        placement: (!session.placement.is_empty()).then(|| session.placement.as_ref().into()),
        unplaced: crate::placement::unplaced_reason(state, session),
    }
}

/// A page of sessions.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionPage {
    /// The sessions, in id order.
    pub sessions: Vec<SessionView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next: Option<String>,
}

/// A node's status as `/v1/cluster` shows it: the table's status, or
/// `unknown` where the answering node cannot confirm it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = NodeStatus)]
pub enum NodeViewStatus {
    /// Up in the table, confirmed.
    Up,
    /// Draining in the table, confirmed.
    Draining,
    /// Down in the table, confirmed.
    Down,
    /// The answering node has no quorum (no leader, or a leader no quorum
    /// acknowledged recently): its table may be stale, so it shows every
    /// node but itself as unknown.
    Unknown,
}

impl From<NodeStatus> for NodeViewStatus {
    fn from(status: NodeStatus) -> Self {
        match status {
            NodeStatus::Up => Self::Up,
            NodeStatus::Draining => Self::Draining,
            NodeStatus::Down => Self::Down,
        }
    }
}

impl PartialEq<NodeStatus> for NodeViewStatus {
    fn eq(&self, other: &NodeStatus) -> bool {
        *self == Self::from(*other)
    }
}

impl NodeViewStatus {
    /// The word the API and the CLI show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Draining => "draining",
            Self::Down => "down",
            Self::Unknown => "unknown",
        }
    }
}

/// A node as `/v1/cluster` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Node)]
pub struct NodeView {
    /// Node id.
    #[schema(value_type = u64)]
    pub id: NodeId,
    /// HTTP address.
    pub addr: String,
    /// `up`, `draining`, `down`, or `unknown` without a quorum.
    pub status: NodeViewStatus,
    /// Sessions it owns.
    pub sessions: usize,
    /// Its labels (`minos serve --label`), when it has any.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Most sessions placement gives it (`--max-sessions`), when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u64>,
}

/// The answer of `/v1/cluster`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Cluster)]
pub struct ClusterView {
    /// Current leader as this node knows it.
    #[schema(value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    /// Raft term.
    pub term: u64,
    /// Node that answered.
    #[schema(value_type = u64)]
    pub answered_by: NodeId,
    /// True when the answering node knows its table is current: it leads
    /// and a quorum acknowledged it within the quorum window, or it holds a
    /// valid lease (granted only by such a leader). Without it the other
    /// nodes show as `unknown`.
    #[serde(default)]
    pub quorum: bool,
    /// Members.
    pub nodes: Vec<NodeView>,
    /// Total sessions.
    pub sessions: usize,
    /// Sessions by status.
    pub by_status: BTreeMap<String, usize>,
}

/// `/v1/health`, `/v1/health/ready`: this node's view of whether it can
/// serve (200 when ready, 503 otherwise, with the same body).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Health)]
pub(super) struct HealthView {
    /// Node that answered.
    #[schema(value_type = u64)]
    pub node: NodeId,
    /// Leader as this node knows it.
    #[schema(value_type = Option<u64>)]
    pub leader: Option<NodeId>,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    /// Last applied log index.
    pub applied_index: u64,
    /// Applied up to its lease's grant.
    pub caught_up: bool,
    /// A quorum acknowledged the leader recently (see `Cluster.quorum`).
    pub quorum: bool,
    /// It holds a valid lease.
    pub lease_valid: bool,
    /// This node's external apps (`--external-kind`); the node is ready only
    /// while each answers its health checks. Empty without external kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppView>,
}

/// One external app of a node, in its health answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = App)]
pub(super) struct AppView {
    /// The kind it serves.
    pub kind: String,
    /// It answered its last health check.
    pub ready: bool,
    /// Why it counts as not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `/v1/health/live`: the process serves HTTP.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Live)]
pub(super) struct LiveView {
    /// Node that answered.
    #[schema(value_type = u64)]
    pub node: NodeId,
    /// Always true.
    pub live: bool,
}

/// The answer of `POST /v1/nodes/{id}/undrain`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Undrained)]
pub(super) struct UndrainedView {
    /// The node.
    #[schema(value_type = u64)]
    pub node: NodeId,
    /// Always `up`.
    pub status: String,
}

/// The answer of `DELETE /v1/nodes/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Removed)]
pub(super) struct RemovedView {
    /// The node removed from the membership.
    #[schema(value_type = u64)]
    pub removed: NodeId,
}

/// The answer of `DELETE /v1/sessions/{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Deleted)]
pub(super) struct DeletedView {
    /// The session deleted.
    pub deleted: String,
}
