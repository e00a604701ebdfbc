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

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{
    Applied, CallRetention, Command, CommandResult, Epoch, Move, NodeId, NodeInfo, NodeStatus,
    Proposal, RecordedCall, Rejection, Session, SessionId, SessionKind, StateJson,
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Members by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Sessions by id.
    pub sessions: BTreeMap<SessionId, Session>,
    /// Last epoch handed out. Epochs come from this table-wide counter so a
    /// session deleted and created again never reuses an epoch of its
    /// earlier life (a late write from that life stays fenced).
    pub last_epoch: Epoch,
}

impl ClusterState {
    /// Applies one log entry; one result per command, in order.
    pub fn apply(&mut self, proposal: &Proposal) -> Vec<CommandResult> {
        match proposal {
            Proposal::V1 { at, commands } => commands
                .iter()
                .map(|command| self.apply_command(command, *at))
                .collect(),
        }
    }

    /// Applies one command at the proposer's time `at`.
    pub fn apply_command(&mut self, command: &Command, at: DateTime<Utc>) -> CommandResult {
        match command {
            Command::AddNode { id, addr } => {
                // Re-registering keeps the status: it must not cancel a drain
                // or revive a Down node without NodeUp.
                self.nodes
                    .entry(*id)
                    .and_modify(|node| node.addr = addr.clone())
                    .or_insert_with(|| NodeInfo {
                        id: *id,
                        addr: addr.clone(),
                        status: NodeStatus::Up,
                        since: at,
                    });
                Ok(Applied::Done)
            }
            Command::RemoveNode { id } => self.remove_node(*id, at),
            Command::NodeDown { id } => self.set_status(*id, NodeStatus::Down, at),
            Command::NodeUp { id } => self.set_status(*id, NodeStatus::Up, at),
            Command::Drain { id } => self.set_status(*id, NodeStatus::Draining, at),
            Command::CreateSession {
                id,
                kind,
                state,
                owner,
            } => self.create_session(id, kind, state, *owner, at),
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
            Command::Settle { id, epoch, version } => {
                let session = self.current_session(id, *epoch, *version)?;
                session.version += 1;
                Ok(Applied::Session(Box::new(session.clone())))
            }
            Command::Reassign { moves } => Ok(Applied::Moved(self.reassign(moves, at))),
            Command::DeleteSession { id } => match self.sessions.remove(id) {
                Some(_) => Ok(Applied::Done),
                None => Err(Rejection::NoSuchSession(id.clone())),
            },
        }
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
    fn remove_node(&mut self, id: NodeId, at: DateTime<Utc>) -> CommandResult {
        if self.nodes.remove(&id).is_none() {
            return Err(Rejection::NoSuchNode(id));
        }
        for session in self.sessions.values_mut() {
            if session.owner == Some(id) {
                self.last_epoch = self.last_epoch.next();
                session.owner = None;
                session.epoch = self.last_epoch;
                session.updated_at = at;
            }
        }
        Ok(Applied::Done)
    }

    fn create_session(
        &mut self,
        id: &SessionId,
        kind: &SessionKind,
        state: &StateJson,
        owner: Option<NodeId>,
        at: DateTime<Utc>,
    ) -> CommandResult {
        if self.sessions.contains_key(id) {
            return Err(Rejection::SessionExists(id.clone()));
        }
        // An owner that is not a member would own nothing: leave it unplaced.
        let owner = owner.filter(|node| self.nodes.contains_key(node));
        self.last_epoch = self.last_epoch.next();
        let session = Session {
            id: id.clone(),
            kind: kind.clone(),
            owner,
            epoch: self.last_epoch,
            version: 0,
            state: state.clone(),
            created_at: at,
            updated_at: at,
            calls: Vec::new(),
        };
        self.sessions.insert(id.clone(), session.clone());
        Ok(Applied::Session(Box::new(session)))
    }

    /// Carries out the moves whose `from_epoch` is still current and whose
    /// target is a member (or none); each gets a new epoch.
    fn reassign(
        &mut self,
        moves: &[Move],
        at: DateTime<Utc>,
    ) -> Vec<(SessionId, Option<NodeId>, Epoch)> {
        let mut moved = Vec::with_capacity(moves.len());
        for step in moves {
            let target_known = step.to.is_none_or(|node| self.nodes.contains_key(&node));
            let Some(session) = self.sessions.get_mut(&step.id) else {
                continue;
            };
            if session.epoch != step.from_epoch || !target_known {
                continue;
            }
            self.last_epoch = self.last_epoch.next();
            session.owner = step.to;
            session.epoch = self.last_epoch;
            session.updated_at = at;
            moved.push((session.id.clone(), session.owner, session.epoch));
        }
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
        match session.owner.and_then(|owner| self.nodes.get(&owner)) {
            None => {
                if session.owner.is_some() {
                    SessionStatus::Moving
                } else {
                    SessionStatus::Unplaced
                }
            }
            Some(node) if node.status == NodeStatus::Up => SessionStatus::Placed,
            Some(_) => SessionStatus::Moving,
        }
    }

    /// Number of sessions owned by each node (nodes without sessions included).
    pub fn sessions_per_node(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.nodes.keys().map(|id| (*id, 0)).collect();
        for owner in self.sessions.values().filter_map(|s| s.owner) {
            *counts.entry(owner).or_default() += 1;
        }
        counts
    }

    /// Sessions owned by `node`.
    pub fn sessions_owned_by(&self, node: NodeId) -> impl Iterator<Item = &Session> {
        self.sessions
            .values()
            .filter(move |s| s.owner == Some(node))
    }
}
