//! The table's derived owner index: session ids by owner, placed sessions
//! counted per node and kind (spread), and unplaced ones grouped by their
//! requirement (so repair looks only at the groups some node can take).
//! Never serialized: rebuilt from the rows on load; changed only with them.

use std::collections::{BTreeMap, BTreeSet};

use crate::labels::Requirement;
use crate::model::{NodeId, Session, SessionId, SessionKind};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct OwnerIndex {
    /// Session ids by owner (`None`: unplaced).
    pub(super) by_owner: BTreeMap<Option<NodeId>, BTreeSet<SessionId>>,
    /// Placed sessions per node and kind.
    pub(super) kinds: BTreeMap<(NodeId, SessionKind), usize>,
    /// Unplaced sessions by requirement.
    pub(super) unplaced: BTreeMap<Requirement, BTreeSet<SessionId>>,
}

impl OwnerIndex {
    /// Indexes `session` under its current owner.
    pub(super) fn add(&mut self, session: &Session) {
        let id = session.id.clone();
        self.by_owner
            .entry(session.owner)
            .or_default()
            .insert(id.clone());
        match session.owner {
            Some(node) => *self.kinds.entry((node, session.kind.clone())).or_default() += 1,
            None => {
                self.unplaced
                    .entry(session.placement.clone())
                    .or_default()
                    .insert(id);
            }
        }
    }

    /// Takes `session` out from under its current owner.
    pub(super) fn remove(&mut self, session: &Session) {
        let owner = session.owner;
        if let Some(ids) = self.by_owner.get_mut(&owner) {
            ids.remove(&session.id);
            if ids.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
        match owner {
            Some(node) => {
                let key = (node, session.kind.clone());
                if let Some(count) = self.kinds.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        self.kinds.remove(&key);
                    }
                }
            }
            None => {
                if let Some(ids) = self.unplaced.get_mut(&session.placement) {
                    ids.remove(&session.id);
                    if ids.is_empty() {
                        self.unplaced.remove(&session.placement);
                    }
                }
            }
        }
    }
}
