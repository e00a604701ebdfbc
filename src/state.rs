//! The replicated table as a pure state machine.
//!
//! `ClusterState::apply` is a deterministic function of the current state and
//! one log entry: no I/O, no clock reads (the proposer's time comes inside the
//! entry), no randomness. Every node applying the same log ends with the same
//! state; snapshots are this struct serialized.
//!
//! Invariants (checked by the property tests at the bottom):
//! - every session has at most one owner, and an owner is a known node;
//! - a session's epoch never decreases, and grows on every change of owner;
//! - a session disappears only through `DeleteSession`;
//! - a state update applies only on the current epoch and version, and
//!   every applied update raises the version by one;
//! - a rejected command changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::OrdMap;

mod index;
use index::OwnerIndex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    Applied, CallRetention, Command, CommandResult, Detection, Epoch, Move, MoveReason, NodeId,
    NodeInfo, NodeStatus, NodeTraits, Placement, Proposal, RecordedCall, Rejection, Requirement,
    Session, SessionId, SessionKind, StateJson, HISTORY_KEEP,
};

/// Where a session stands, derived from its owner's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Its owner is Up.
    Placed,
    /// Its owner is Down, Draining or gone; a move is pending.
    Moving,
    /// No node was eligible when it was last placed.
    Unplaced,
}

/// The whole replicated table.
///
/// `sessions` is read freely but changed only here, so the derived owner
/// index always matches it (checked by the property tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Table")]
pub struct ClusterState {
    /// Members by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Sessions by id (change them only through [`ClusterState::apply`]).
    /// A persistent map: a copy is O(1) and shares every row, so a snapshot
    /// is taken without holding up the writers (see [`ClusterState::copy`]).
    pub sessions: OrdMap<SessionId, Arc<Session>>,
    /// Last epoch handed out. Epochs come from this table-wide counter so a
    /// session deleted and created again never reuses an epoch of its
    /// earlier life (a late write from that life stays fenced).
    pub last_epoch: Epoch,
    /// The latest changes of owner of the whole table (creates excluded),
    /// oldest first, at most [`EVENTS_KEPT`]: a persistent vector, so a
    /// snapshot copies it in O(1).
    pub events: imbl::Vector<Event>,
    /// Sequence number of the last placement event (history and events).
    pub last_event: u64,
    /// Sequence number of the newest event dropped from `events`.
    pub events_dropped_through: u64,
    /// Session ids by owner (`None`: unplaced), counts per node and kind,
    /// unplaced ids by requirement; derived from `sessions`: not
    /// serialized, rebuilt on load. It makes "sessions of node N", counts
    /// per node and repair cost what they touch, not the table size.
    #[serde(skip)]
    index: OwnerIndex,
}

/// The serialized form of [`ClusterState`] (without the derived index).
#[derive(Deserialize)]
struct Table {
    nodes: BTreeMap<NodeId, NodeInfo>,
    #[serde(deserialize_with = "rows_by_their_id")]
    sessions: OrdMap<SessionId, Arc<Session>>,
    last_epoch: Epoch,
    events: imbl::Vector<Event>,
    last_event: u64,
    events_dropped_through: u64,
}

/// Reads the sessions map keyed by each row's own id (one copy of the
/// text for the key, the row and the index; the decoded key is dropped). A
/// key that differs from its row's id is refused: the map is keyed by id.
fn rows_by_their_id<'de, D: serde::Deserializer<'de>>(
    decoder: D,
) -> Result<OrdMap<SessionId, Arc<Session>>, D::Error> {
    struct Rows;
    impl<'de> serde::de::Visitor<'de> for Rows {
        type Value = OrdMap<SessionId, Arc<Session>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("sessions by id")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            let mut rows = OrdMap::new();
            let mut kinds: BTreeSet<SessionKind> = BTreeSet::new();
            while let Some((key, mut row)) = map.next_entry::<SessionId, Arc<Session>>()? {
                if key != row.id {
                    return Err(serde::de::Error::custom(format!(
                        "session {key} holds the row of {}",
                        row.id
                    )));
                }
                // A decoded row is not shared yet: this clones nothing.
                let kind = index::share_kind(&mut kinds, &row.kind);
                Arc::make_mut(&mut row).kind = kind;
                rows.insert(row.id.clone(), row);
            }
            Ok(rows)
        }
    }
    decoder.deserialize_map(Rows)
}

/// Placement events the table keeps for `GET /v1/events`.
pub const EVENTS_KEPT: usize = 10_000;

/// An owner holding at least 1/`WALK_SHARE` of the table has its rows read
/// by walking the table (see [`ClusterState::rows_of`]).
const WALK_SHARE: usize = 8;

/// A change of owner of one session, in the table's recent events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The session.
    pub session: SessionId,
    /// The change.
    pub placement: Placement,
}

/// What every command of one entry is applied with.
struct Ctx {
    at: DateTime<Utc>,
    index: u64,
    history_keep: usize,
}

/// A copy of the table's serialized part, taken in O(number of nodes):
/// it serializes exactly as [`ClusterState`] does (tested), so a snapshot
/// is encoded from it after the lock is released.
#[derive(Clone, Debug, Serialize)]
pub struct TableCopy {
    nodes: BTreeMap<NodeId, NodeInfo>,
    sessions: OrdMap<SessionId, Arc<Session>>,
    last_epoch: Epoch,
    events: imbl::Vector<Event>,
    last_event: u64,
    events_dropped_through: u64,
}

impl ClusterState {
    /// A table from its rows (an older snapshot format), with no events.
    pub fn restore(
        nodes: BTreeMap<NodeId, NodeInfo>,
        sessions: impl IntoIterator<Item = Session>,
        last_epoch: Epoch,
    ) -> Self {
        Self::from(Table {
            nodes,
            sessions: sessions.into_iter().map(|s| (s.id.clone(), s)).collect(),
            last_epoch,
            events: imbl::Vector::new(),
            last_event: 0,
            events_dropped_through: 0,
        })
    }
}

impl From<Table> for ClusterState {
    fn from(table: Table) -> Self {
        let mut index = OwnerIndex::default();
        for session in table.sessions.values() {
            index.kind(&session.kind);
            index.add(session);
        }
        Self {
            nodes: table.nodes,
            sessions: table.sessions,
            last_epoch: table.last_epoch,
            events: table.events,
            last_event: table.last_event,
            events_dropped_through: table.events_dropped_through,
            index,
        }
    }
}

/// What applying entries changed, for readers that follow the table
/// incrementally (the runtime starts and stops only the tasks of changed
/// sessions instead of scanning the table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Sessions created, deleted, moved or written, each with its owner
    /// after the last of those changes (`None`: unplaced or deleted), so a
    /// node skips, without a look-up, the sessions that are neither its
    /// own nor running on it (in a mass failover, most of what changed).
    pub sessions: BTreeMap<SessionId, Option<NodeId>>,
    /// A node was added, removed or changed status.
    pub nodes: bool,
    /// The whole table was replaced (a snapshot was installed): look at all of it.
    pub all: bool,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && !self.nodes && !self.all
    }

    /// Adds `other` to these changes.
    pub fn merge(&mut self, other: Changes) {
        if self.sessions.is_empty() {
            self.sessions = other.sessions;
        } else {
            self.sessions.extend(other.sessions);
        }
        self.nodes |= other.nodes;
        self.all |= other.all;
    }
}

impl ClusterState {
    /// A copy of the serialized part of the table, for a snapshot.
    pub fn copy(&self) -> TableCopy {
        TableCopy {
            nodes: self.nodes.clone(),
            sessions: self.sessions.clone(),
            last_epoch: self.last_epoch,
            events: self.events.clone(),
            last_event: self.last_event,
            events_dropped_through: self.events_dropped_through,
        }
    }

    /// Sessions of `owner` (`None`: unplaced) with ids after `after`, in id
    /// order (a page of them costs the page, not the table).
    pub fn sessions_of_after<'a>(
        &'a self,
        owner: Option<NodeId>,
        after: Option<&'a SessionId>,
    ) -> impl Iterator<Item = &'a Session> + 'a {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.index
            .by_owner
            .get(&owner)
            .into_iter()
            .flat_map(move |ids| ids.range((start, Bound::Unbounded)))
            .filter_map(|id| self.sessions.get(id).map(|s| &**s))
    }

    /// Applies one log entry; one result per command, in order.
    pub fn apply(&mut self, proposal: &Proposal) -> Vec<CommandResult> {
        self.apply_tracked(proposal, &mut Changes::default())
    }

    /// [`ClusterState::apply`], recording in `changes` what it changed.
    pub fn apply_tracked(
        &mut self,
        proposal: &Proposal,
        changes: &mut Changes,
    ) -> Vec<CommandResult> {
        self.apply_entry(proposal, 0, changes)
    }

    /// [`ClusterState::apply_tracked`] for the entry at log index `index`
    /// (recorded in placement events).
    pub fn apply_entry(
        &mut self,
        proposal: &Proposal,
        index: u64,
        changes: &mut Changes,
    ) -> Vec<CommandResult> {
        let (at, commands, history_keep) = match proposal {
            Proposal::V1 { at, commands } => (*at, commands, HISTORY_KEEP),
            Proposal::V2 {
                at,
                commands,
                history_keep,
            } => (*at, commands, *history_keep),
        };
        let ctx = Ctx {
            at,
            index,
            history_keep: history_keep.max(1) as usize,
        };
        commands
            .iter()
            .map(|command| self.apply_in(command, &ctx, changes))
            .collect()
    }

    /// Applies one command at the proposer's time `at`.
    pub fn apply_command(&mut self, command: &Command, at: DateTime<Utc>) -> CommandResult {
        self.apply_command_tracked(command, at, &mut Changes::default())
    }

    /// [`ClusterState::apply_command`], recording in `changes` what it changed.
    pub fn apply_command_tracked(
        &mut self,
        command: &Command,
        at: DateTime<Utc>,
        changes: &mut Changes,
    ) -> CommandResult {
        let ctx = Ctx {
            at,
            index: 0,
            history_keep: HISTORY_KEEP as usize,
        };
        self.apply_in(command, &ctx, changes)
    }

    fn apply_in(&mut self, command: &Command, ctx: &Ctx, changes: &mut Changes) -> CommandResult {
        let result = self.apply_one(command, ctx, changes);
        if result.is_ok() {
            match command {
                Command::AddNode { .. }
                | Command::RemoveNode { .. }
                | Command::NodeDown { .. }
                | Command::NodeUp { .. }
                | Command::Drain { .. }
                | Command::SetNodeTraits { .. } => changes.nodes = true,
                Command::CreateSession { id, .. }
                | Command::CreateSessionPlaced { id, .. }
                | Command::UpdateState { id, .. }
                | Command::UpdateStateKeyed { id, .. }
                | Command::Settle { id, .. } => {
                    let owner = match &result {
                        Ok(Applied::Session(row)) => row.owner,
                        _ => self.sessions.get(id).and_then(|s| s.owner),
                    };
                    changes.sessions.insert(id.clone(), owner);
                }
                Command::DeleteSession { id } => {
                    changes.sessions.insert(id.clone(), None);
                }
                // They record the sessions they moved (RemoveNode too).
                Command::Reassign { .. } | Command::Relocate { .. } | Command::Handoff { .. } => {}
            }
        }
        result
    }

    fn apply_one(&mut self, command: &Command, ctx: &Ctx, changes: &mut Changes) -> CommandResult {
        let at = ctx.at;
        match command {
            Command::AddNode { id, addr } => self.add_node(*id, addr, at),
            Command::RemoveNode { id } => self.remove_node(*id, ctx, changes),
            Command::NodeDown { id } => self.set_status(*id, NodeStatus::Down, at),
            Command::NodeUp { id } => self.set_status(*id, NodeStatus::Up, at),
            Command::Drain { id } => self.set_status(*id, NodeStatus::Draining, at),
            Command::CreateSession {
                id,
                kind,
                state,
                owner,
            } => self.create_session(id, kind, state, (*owner, &Requirement::default()), ctx),
            Command::CreateSessionPlaced {
                id,
                kind,
                state,
                owner,
                placement,
            } => self.create_session(id, kind, state, (*owner, placement), ctx),
            Command::SetNodeTraits { id, traits } => self.set_traits(*id, traits),
            Command::UpdateState {
                id,
                epoch,
                version,
                state,
            } => self.write_state(id, *epoch, *version, state, None, at),
            Command::UpdateStateKeyed {
                id,
                epoch,
                version,
                state,
                call,
                retention,
            } => self.write_state(id, *epoch, *version, state, Some((call, *retention)), at),
            Command::Settle { id, epoch, version } => self.settle(id, *epoch, *version),
            Command::Reassign { moves } => Ok(Applied::Moved(self.reassign(
                moves.iter().map(|m| (m, None)),
                (MoveReason::Reassign, None),
                ctx,
                changes,
            ))),
            Command::Relocate {
                moves,
                reason,
                detected,
            } => Ok(Applied::Moved(self.reassign(
                moves.iter().map(|m| (m, None)),
                (*reason, *detected),
                ctx,
                changes,
            ))),
            Command::Handoff { moves, reason } => Ok(Applied::Moved(self.reassign(
                moves.iter().map(|h| (&h.step, Some(h.from_version))),
                (*reason, None),
                ctx,
                changes,
            ))),
            Command::DeleteSession { id } => self.delete_session(id),
        }
    }

    /// Raises the version of an owner's row on its epoch and version
    /// (see [`Command::Settle`]); answers the row.
    fn settle(&mut self, id: &SessionId, epoch: Epoch, version: u64) -> CommandResult {
        let session = self.current_session(id, epoch, version)?;
        session.version += 1;
        Ok(Applied::Session(Box::new(session.clone())))
    }

    fn delete_session(&mut self, id: &SessionId) -> CommandResult {
        match self.sessions.remove(id) {
            Some(session) => {
                self.index.remove(&session);
                Ok(Applied::Done)
            }
            None => Err(Rejection::NoSuchSession(id.clone())),
        }
    }

    /// Adds a member as Up, or changes its address. Re-registering keeps
    /// the status: it must not cancel a drain or revive a Down node without
    /// NodeUp.
    fn add_node(&mut self, id: NodeId, addr: &str, at: DateTime<Utc>) -> CommandResult {
        self.nodes
            .entry(id)
            .and_modify(|node| node.addr = addr.to_string())
            .or_insert_with(|| NodeInfo {
                id,
                addr: addr.to_string(),
                status: NodeStatus::Up,
                since: at,
                traits: NodeTraits::default(),
            });
        Ok(Applied::Done)
    }

    /// A node's labels and capacity; sessions it owns stay where they are
    /// (a node no longer fitting one is left to rebalance).
    fn set_traits(&mut self, id: NodeId, traits: &NodeTraits) -> CommandResult {
        let node = self.nodes.get_mut(&id).ok_or(Rejection::NoSuchNode(id))?;
        node.traits = traits.clone();
        Ok(Applied::Done)
    }

    /// True when `node` is a member that may take one more session with
    /// `need`: it carries the labels and is below its `max_sessions`. The
    /// table holds to it whatever a plan said, so no entry ever breaks a
    /// constraint (a plan made on an older table is refused, not obeyed).
    pub fn can_take(&self, node: NodeId, need: &Requirement) -> bool {
        self.nodes.get(&node).is_some_and(|info| {
            need.admits(&info.traits.labels)
                && info
                    .traits
                    .max_sessions
                    .is_none_or(|max| (self.count_of(Some(node)) as u64) < max)
        })
    }

    /// An owner's write of a new state, on its epoch and version; a keyed
    /// one also records its call, and is refused if the key is remembered.
    fn write_state(
        &mut self,
        id: &SessionId,
        epoch: Epoch,
        version: u64,
        state: &StateJson,
        keyed: Option<(&RecordedCall, CallRetention)>,
        at: DateTime<Utc>,
    ) -> CommandResult {
        let session = self.current_session(id, epoch, version)?;
        if let Some((call, _)) = keyed {
            if session.recorded_call(&call.key).is_some() {
                return Err(Rejection::DuplicateCall {
                    id: id.clone(),
                    key: call.key.clone(),
                });
            }
        }
        session.state = state.clone();
        session.version += 1;
        session.updated_at = at;
        if let Some((call, retention)) = keyed {
            session.record_call(call.clone(), retention, at);
        }
        Ok(Applied::Session(Box::new(session.clone())))
    }

    /// Removes a member; its sessions become unplaced under a new epoch.
    fn remove_node(&mut self, id: NodeId, ctx: &Ctx, changes: &mut Changes) -> CommandResult {
        if self.nodes.remove(&id).is_none() {
            return Err(Rejection::NoSuchNode(id));
        }
        let owned = self
            .index
            .by_owner
            .get(&Some(id))
            .cloned()
            .unwrap_or_default();
        for session_id in &owned {
            if let Some(session) = self.sessions.get_mut(session_id).map(Arc::make_mut) {
                self.index.remove(session);
                self.last_epoch = self.last_epoch.next();
                session.owner = None;
                session.epoch = self.last_epoch;
                session.updated_at = ctx.at;
                self.index.add(session);
                let step = (Some(id), None, session.epoch);
                self.record(session_id, step, (MoveReason::NodeRemoved, None), ctx);
            }
        }
        changes
            .sessions
            .extend(owned.into_iter().map(|id| (id, None)));
        Ok(Applied::Done)
    }

    /// Records a change of owner (`from`, `to`, the new epoch) in the
    /// session's history (its last `history_keep`) and in the table's
    /// recent events (the last [`EVENTS_KEPT`]; creates are not events).
    fn record(
        &mut self,
        id: &SessionId,
        step: (Option<NodeId>, Option<NodeId>, Epoch),
        why: (MoveReason, Option<Detection>),
        ctx: &Ctx,
    ) {
        let placement = self.next_placement(step, why, ctx);
        if let Some(session) = self.sessions.get_mut(id).map(Arc::make_mut) {
            push_history(&mut session.history, placement.clone(), ctx.history_keep);
        }
        self.push_event(id, placement);
    }

    /// The next placement event (its sequence number taken).
    fn next_placement(
        &mut self,
        (from, to, epoch): (Option<NodeId>, Option<NodeId>, Epoch),
        (reason, detected): (MoveReason, Option<Detection>),
        ctx: &Ctx,
    ) -> Placement {
        self.last_event += 1;
        Placement {
            seq: self.last_event,
            index: ctx.index,
            at: ctx.at,
            epoch,
            from,
            to,
            reason,
            detected,
        }
    }

    /// Appends a change of owner to the bounded table events (a creation
    /// is only in the session's history).
    fn push_event(&mut self, id: &SessionId, placement: Placement) {
        self.events.push_back(Event {
            session: id.clone(),
            placement,
        });
        while self.events.len() > EVENTS_KEPT {
            if let Some(dropped) = self.events.pop_front() {
                self.events_dropped_through = dropped.placement.seq;
            }
        }
    }

    fn create_session(
        &mut self,
        id: &SessionId,
        kind: &SessionKind,
        state: &StateJson,
        (owner, placement): (Option<NodeId>, &Requirement),
        ctx: &Ctx,
    ) -> CommandResult {
        let at = ctx.at;
        if self.sessions.contains_key(id) {
            return Err(Rejection::SessionExists(id.clone()));
        }
        // An owner that is not a member would own nothing, one that cannot
        // take it must not: leave it unplaced (repair places it).
        let owner = owner.filter(|node| self.can_take(*node, placement));
        self.last_epoch = self.last_epoch.next();
        let created = (None, owner, self.last_epoch);
        let placement_event = self.next_placement(created, (MoveReason::Created, None), ctx);
        let mut session = Session {
            id: id.clone(),
            kind: self.index.kind(kind),
            owner,
            epoch: self.last_epoch,
            version: 0,
            state: state.clone(),
            created_at: at,
            updated_at: at,
            calls: Vec::new(),
            history: Vec::new(),
            placement: crate::labels::share(placement),
        };
        // A creation is in the session's history, not in the table events.
        push_history(&mut session.history, placement_event, ctx.history_keep);
        self.index.add(&session);
        let answer = session.clone();
        self.sessions.insert(id.clone(), Arc::new(session));
        Ok(Applied::Session(Box::new(answer)))
    }

    /// Carries out the moves whose `from_epoch` is still current and whose
    /// target is none or a member that can take the session (its labels,
    /// its capacity; a move to its own owner always can); each gets a new
    /// epoch (and, for a handoff move, whose version is the one given).
    fn reassign<'a>(
        &mut self,
        moves: impl ExactSizeIterator<Item = (&'a Move, Option<u64>)>,
        why: (MoveReason, Option<Detection>),
        ctx: &Ctx,
        changes: &mut Changes,
    ) -> Vec<(SessionId, Option<NodeId>, Epoch)> {
        let mut moved = Vec::with_capacity(moves.len());
        // Out of `self` while the moves run, so that each move looks its row
        // up once (checks and change through one `get_mut`) while the node,
        // index and event fields stay reachable; nothing below reads it.
        let mut sessions = std::mem::take(&mut self.sessions);
        for (step, version) in moves {
            let (id, to) = (&step.id, step.to);
            let Some(row) = sessions.get_mut(id) else {
                continue;
            };
            let fits = match to {
                None => true,
                Some(node) if row.owner == Some(node) => self.nodes.contains_key(&node),
                Some(node) => self.can_take(node, &row.placement),
            };
            let unchanged =
                row.epoch == step.from_epoch && version.is_none_or(|v| v == row.version);
            if !unchanged || !fits {
                continue;
            }
            let epoch = self.last_epoch.next();
            let placement = self.next_placement((row.owner, to, epoch), why, ctx);
            let session = Arc::make_mut(row);
            self.index.move_owner(session, to);
            self.last_epoch = epoch;
            session.owner = to;
            session.epoch = epoch;
            session.updated_at = ctx.at;
            push_history(&mut session.history, placement.clone(), ctx.history_keep);
            // The row's id, not the move's: its clones share the table's text.
            let id = session.id.clone();
            moved.push((id.clone(), to, epoch));
            self.push_event(&id, placement);
            changes.sessions.insert(id, to);
        }
        self.sessions = sessions;
        moved
    }

    /// The session `id` if `epoch` and `version` are its current ones (the
    /// condition of every owner's write).
    fn current_session(
        &mut self,
        id: &SessionId,
        epoch: Epoch,
        version: u64,
    ) -> Result<&mut Session, Rejection> {
        let session = self
            .sessions
            .get_mut(id)
            .map(Arc::make_mut)
            .ok_or_else(|| Rejection::NoSuchSession(id.clone()))?;
        if session.epoch != epoch || session.owner.is_none() {
            return Err(Rejection::StaleEpoch {
                id: id.clone(),
                given: epoch,
                current: session.epoch,
            });
        }
        if session.version != version {
            return Err(Rejection::StaleVersion {
                id: id.clone(),
                given: version,
                current: session.version,
            });
        }
        Ok(session)
    }

    fn set_status(&mut self, id: NodeId, status: NodeStatus, at: DateTime<Utc>) -> CommandResult {
        let node = self.nodes.get_mut(&id).ok_or(Rejection::NoSuchNode(id))?;
        if node.status != status {
            node.status = status;
            node.since = at;
        }
        Ok(Applied::Done)
    }

    /// Nodes that may receive sessions: Up, in id order.
    pub fn eligible_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|node| node.status == NodeStatus::Up)
            .map(|node| node.id)
            .collect()
    }

    /// Derived status of a session.
    pub fn session_status(&self, session: &Session) -> SessionStatus {
        self.status_under(session.owner)
    }

    /// Status of the sessions owned by `owner` (`None`: unplaced).
    pub fn status_under(&self, owner: Option<NodeId>) -> SessionStatus {
        match owner.map(|id| self.nodes.get(&id)) {
            None => SessionStatus::Unplaced,
            Some(Some(node)) if node.status == NodeStatus::Up => SessionStatus::Placed,
            Some(_) => SessionStatus::Moving,
        }
    }

    /// Number of sessions owned by each node (nodes without sessions
    /// included, and owners that are no longer members).
    pub fn sessions_per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for (owner, ids) in &self.index.by_owner {
            if let Some(owner) = owner {
                counts.insert(*owner, ids.len());
            }
        }
        counts
    }

    /// Sessions owned by `owner` (`None`: the unplaced ones), in id order;
    /// costs what it returns.
    pub fn sessions_of(&self, owner: Option<NodeId>) -> impl Iterator<Item = &Session> {
        self.rows_of(owner).map(|s| &**s)
    }

    /// The rows (shared) of the sessions owned by `owner`, in id order.
    /// An owner of a large share of the table (a dead node's third, which
    /// the plan of a mass failover reads) is served by one walk of the
    /// table rather than a look-up of each of its ids: the walk costs a
    /// row, a look-up a descent of the tree comparing ids as text.
    pub fn rows_of(&self, owner: Option<NodeId>) -> impl Iterator<Item = &Arc<Session>> {
        let ids = self.index.by_owner.get(&owner);
        let count = ids.map_or(0, BTreeSet::len);
        let walk = count.saturating_mul(WALK_SHARE) >= self.sessions.len() && count > 0;
        let (walked, looked_up) = if walk {
            let rows = self.sessions.values().filter(move |row| row.owner == owner);
            (Some(rows), None)
        } else {
            let rows = ids.into_iter().flatten();
            (None, Some(rows.filter_map(|id| self.sessions.get(id))))
        };
        walked
            .into_iter()
            .flatten()
            .chain(looked_up.into_iter().flatten())
    }

    /// Sessions owned by `node`.
    pub fn sessions_owned_by(&self, node: NodeId) -> impl Iterator<Item = &Session> {
        self.sessions_of(Some(node))
    }

    /// Number of sessions owned by `owner` (`None`: unplaced).
    pub fn count_of(&self, owner: Option<NodeId>) -> usize {
        self.index.by_owner.get(&owner).map_or(0, BTreeSet::len)
    }

    /// Owners that hold sessions (`None`: unplaced ones exist).
    pub fn owners(&self) -> impl Iterator<Item = Option<NodeId>> + '_ {
        self.index.by_owner.keys().copied()
    }

    /// Sessions of `kind` owned by `node` (for spread).
    pub fn count_of_kind(&self, node: NodeId, kind: &SessionKind) -> usize {
        self.index
            .kinds
            .get(&node)
            .and_then(|kinds| kinds.get(kind))
            .copied()
            .unwrap_or(0)
    }

    /// The unplaced sessions, grouped by their requirement (the empty one
    /// for unconstrained sessions), in requirement order.
    pub fn unplaced_groups(&self) -> impl Iterator<Item = (&Requirement, &BTreeSet<SessionId>)> {
        self.index.unplaced.iter()
    }
}

/// Appends `placement` to a session's history, keeping the last `keep`
/// (moves are rare: the vector is kept exact rather than doubled, with one
/// reallocation a move).
fn push_history(history: &mut Vec<Placement>, placement: Placement, keep: usize) {
    if history.len() >= keep {
        history.drain(..=history.len() - keep);
    }
    history.reserve_exact(1);
    history.push(placement);
}
