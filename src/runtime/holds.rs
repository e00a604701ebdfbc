//! What the reconciler remembers between passes, and the released
//! sessions held back from running here until their move away is
//! committed, or at most until the hold expires.

use std::collections::BTreeSet;

use foldhash::HashMap;

use tokio::time::Instant;

use crate::model::{Epoch, NodeId, SessionId};
use crate::state::ClusterState;

/// Released sessions: the epoch each was released at, and until when it is
/// held back at the latest. A hold ends early once the move away is
/// committed (another owner under a later epoch), so a session that comes
/// back soon runs at once.
#[derive(Default)]
pub(super) struct Holds {
    pub(super) by_id: HashMap<SessionId, (Epoch, Instant)>,
    /// The earliest expiry among the holds.
    pub(super) next_expiry: Option<Instant>,
}

impl Holds {
    pub(super) fn hold(&mut self, id: SessionId, epoch: Epoch, until: Instant) {
        self.by_id.insert(id, (epoch, until));
        self.next_expiry = Some(self.next_expiry.map_or(until, |at| at.min(until)));
    }

    /// A hold stays while it has not expired and the table still shows the
    /// session here or at the released epoch.
    fn still_held(
        state: &ClusterState,
        me: NodeId,
        now: Instant,
        id: &SessionId,
        hold: &(Epoch, Instant),
    ) -> bool {
        hold.1 > now
            && state
                .sessions
                .get(id)
                .is_some_and(|s| s.owner == Some(me) || s.epoch == hold.0)
    }

    pub(super) fn refresh_all(&mut self, state: &ClusterState, me: NodeId, now: Instant) {
        self.by_id
            .retain(|id, hold| Self::still_held(state, me, now, id, hold));
        self.next_expiry = self.by_id.values().map(|(_, until)| *until).min();
    }

    /// Ends the holds of `ids` that no longer apply.
    pub(super) fn refresh(
        &mut self,
        state: &ClusterState,
        me: NodeId,
        now: Instant,
        ids: &BTreeSet<SessionId>,
    ) {
        if self.by_id.is_empty() {
            return;
        }
        for id in ids {
            let ended = self
                .by_id
                .get(id)
                .is_some_and(|hold| !Self::still_held(state, me, now, id, hold));
            if ended {
                self.by_id.remove(id);
            }
        }
    }

    /// Ends the holds that expired by `now` (looked at only once the
    /// earliest expiry has passed); returns their sessions.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<SessionId> {
        if self.next_expiry.is_none_or(|at| at > now) {
            return Vec::new();
        }
        let expired: Vec<SessionId> = self
            .by_id
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.by_id.remove(id);
        }
        self.next_expiry = self.by_id.values().map(|(_, until)| *until).min();
        expired
    }
}

/// What the reconciler remembers between passes.
#[derive(Default)]
pub(super) struct Pass {
    /// Whether this node could run sessions, and whether it was Down in the
    /// table, at the last pass (`None` before the first): a change of
    /// either means a full pass.
    pub(super) last: Option<(bool, bool)>,
    /// Sessions to look at again: wanted, but their earlier task was still
    /// finishing, or left for a later pass.
    pub(super) pending: BTreeSet<SessionId>,
}

impl Pass {
    /// The sessions the next incremental pass looks at, the pending ones
    /// and `changed`, `n` at most; and the rest, for a later pass.
    pub(super) fn take_chunk(
        &mut self,
        mut changed: BTreeSet<SessionId>,
        n: usize,
    ) -> (BTreeSet<SessionId>, BTreeSet<SessionId>) {
        let mut ids = std::mem::take(&mut self.pending);
        if ids.len() < changed.len() {
            std::mem::swap(&mut ids, &mut changed);
        }
        ids.extend(changed);
        let rest = match ids.iter().nth(n).cloned() {
            Some(first_of_rest) => ids.split_off(&first_of_rest),
            None => BTreeSet::new(),
        };
        (ids, rest)
    }

    /// Keeps `later` and `deferred` for the next pass. `later` is most of
    /// what a mass failover left: it becomes the set (inserting its ids one
    /// by one on every pass cost seconds).
    pub(super) fn keep(&mut self, mut later: BTreeSet<SessionId>, deferred: Vec<SessionId>) {
        if self.pending.is_empty() {
            self.pending = later;
        } else {
            self.pending.append(&mut later);
        }
        self.pending.extend(deferred);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<usize>) -> BTreeSet<SessionId> {
        range
            .map(|n| SessionId::new(format!("s{n:04}")).expect("id"))
            .collect()
    }

    #[test]
    fn a_pass_takes_a_chunk_of_pending_and_changed_and_keeps_the_rest() {
        let mut pass = Pass {
            pending: ids(0..6),
            ..Pass::default()
        };
        let (chunk, rest) = pass.take_chunk(ids(4..10), 4);
        assert_eq!(chunk, ids(0..4));
        assert_eq!(rest, ids(4..10));
        assert!(pass.pending.is_empty());
        pass.keep(rest, vec![SessionId::new("s0001").expect("id")]);
        let mut expected = ids(4..10);
        expected.extend(ids(1..2));
        assert_eq!(pass.pending, expected);
        let (chunk, rest) = pass.take_chunk(BTreeSet::new(), 100);
        assert_eq!(chunk, expected);
        assert!(rest.is_empty());
    }
}
