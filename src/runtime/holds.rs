//! What the reconciler remembers between passes, and the released
//! sessions held back from running here until their move away is
//! committed, or at most until the hold expires.

use std::collections::{BTreeSet, HashMap};

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
    /// finishing.
    pub(super) pending: BTreeSet<SessionId>,
}
