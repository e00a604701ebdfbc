//! The table's derived owner index: session ids by owner, placed sessions
//! counted per node and kind (spread), and unplaced ones grouped by their
//! requirement (so repair looks only at the groups some node can take).
//! Never serialized: rebuilt from the rows on load; changed only with them.

use std::collections::{BTreeMap, BTreeSet};

use crate::labels::Requirement;
use crate::model::{NodeId, Session, SessionId, SessionKind};

#[derive(Clone, Debug, Default)]
pub(super) struct OwnerIndex {
    /// Session ids by owner (`None`: unplaced).
    pub(super) by_owner: BTreeMap<Option<NodeId>, BTreeSet<SessionId>>,
    /// Placed sessions per node and kind (nested, so a lookup borrows the
    /// kind instead of cloning it).
    pub(super) kinds: BTreeMap<NodeId, BTreeMap<SessionKind, usize>>,
    /// Unplaced sessions by requirement.
    pub(super) unplaced: BTreeMap<Requirement, BTreeSet<SessionId>>,
    /// Every kind name a row has held: rows share one copy of each
    /// (memory, and the kind compared on every move stays in cache).
    names: BTreeSet<SessionKind>,
}

/// Two indexes are equal when they index the same rows: the shared kind
/// names are a cache (a table read back from a snapshot holds only the
/// kinds its rows use, one built by `apply` also those of deleted rows).
impl PartialEq for OwnerIndex {
    fn eq(&self, other: &Self) -> bool {
        self.by_owner == other.by_owner
            && self.kinds == other.kinds
            && self.unplaced == other.unplaced
    }
}

impl Eq for OwnerIndex {}

impl OwnerIndex {
    /// The shared copy of `kind` (made the shared one if it is new).
    pub(super) fn kind(&mut self, kind: &SessionKind) -> SessionKind {
        share_kind(&mut self.names, kind)
    }

    /// Indexes `session` under its current owner.
    pub(super) fn add(&mut self, session: &Session) {
        self.put(
            session.owner,
            &session.kind,
            &session.placement,
            session.id.clone(),
        );
    }

    /// Takes `session` out from under its current owner.
    pub(super) fn remove(&mut self, session: &Session) {
        self.take(session);
    }

    /// Moves `session`'s entry from its current owner to `to` (call before
    /// changing its owner), reusing the indexed id instead of a new copy.
    pub(super) fn move_owner(&mut self, session: &Session, to: Option<NodeId>) {
        let id = self.take(session).unwrap_or_else(|| session.id.clone());
        self.put(to, &session.kind, &session.placement, id);
    }

    fn put(
        &mut self,
        owner: Option<NodeId>,
        kind: &SessionKind,
        placement: &Requirement,
        id: SessionId,
    ) {
        match owner {
            Some(node) => {
                let kinds = self.kinds.entry(node).or_default();
                match kinds.get_mut(kind) {
                    Some(count) => *count += 1,
                    None => {
                        kinds.insert(kind.clone(), 1);
                    }
                }
            }
            None => {
                let group = match self.unplaced.get_mut(placement) {
                    Some(group) => group,
                    None => self.unplaced.entry(placement.clone()).or_default(),
                };
                group.insert(id.clone());
            }
        }
        self.by_owner.entry(owner).or_default().insert(id);
    }

    /// Removes `session`'s entries; answers the id the index held.
    fn take(&mut self, session: &Session) -> Option<SessionId> {
        let owner = session.owner;
        let mut id = None;
        if let Some(ids) = self.by_owner.get_mut(&owner) {
            id = ids.take(&session.id);
            if ids.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
        match owner {
            Some(node) => {
                if let Some(kinds) = self.kinds.get_mut(&node) {
                    if let Some(count) = kinds.get_mut(&session.kind) {
                        *count -= 1;
                        if *count == 0 {
                            kinds.remove(&session.kind);
                        }
                    }
                    if kinds.is_empty() {
                        self.kinds.remove(&node);
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
        id
    }
}

/// The copy of `kind` in `names` (`kind` itself, added, if it is new): the
/// one copy of a kind name every row holding it shares.
pub(super) fn share_kind(names: &mut BTreeSet<SessionKind>, kind: &SessionKind) -> SessionKind {
    match names.get(kind) {
        Some(shared) => shared.clone(),
        None => {
            names.insert(kind.clone());
            kind.clone()
        }
    }
}
