//! A session this node runs: its slot (with a task, or parked) and how a
//! task is told to stop and awaited.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::Call;
use crate::model::{Epoch, SessionId};

/// What a task starts from.
pub(super) struct Row {
    pub(super) kind: crate::model::SessionKind,
    pub(super) state: crate::model::StateJson,
    pub(super) version: u64,
    pub(super) recorded: Vec<crate::model::RecordedCall>,
    pub(super) moved_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A session this node runs: with a task, or parked (no task and no live
/// state until its next call: an idle session costs its table row and this
/// slot only).
pub(super) struct Running {
    pub(super) id: SessionId,
    pub(super) epoch: Epoch,
    /// Whether the next task starts settled (see [`Runtime::start_wanted`]).
    pub(super) settled: bool,
    /// The version the last task here left: a next task starts settled
    /// only from a row at least this new (this node may not yet have
    /// applied that task's last write).
    pub(super) min_version: u64,
    /// The task, while there is one.
    pub(super) live: Option<Live>,
}

/// A session's task.
pub(super) struct Live {
    /// Boxed calls: a tokio channel allocates its first block of 32 slots
    /// up front, so a slot of one pointer keeps an idle session's mailbox
    /// at about 300 bytes instead of 2 KiB.
    pub(super) mailbox: mpsc::Sender<Box<Call>>,
    pub(super) task: JoinHandle<()>,
    /// Set when the task must answer no more calls (it was replaced or
    /// released); it finishes the commit in hand, then exits.
    pub(super) stop: Arc<AtomicBool>,
    /// Set by the task when it ended because it was idle (the session is
    /// parked, not failed): its last version + 1; 0 while not parked.
    pub(super) parked: Arc<AtomicU64>,
}

impl Running {
    /// True when its task ended by itself for another reason than idleness
    /// (fenced, deleted, its state no longer loads): the reconciler decides.
    pub(super) fn ended_by_itself(&self) -> bool {
        self.live
            .as_ref()
            .is_some_and(|l| l.task.is_finished() && l.parked.load(Ordering::SeqCst) == 0)
    }

    /// A task that parked itself leaves a parked slot: its row was settled
    /// and it had no write in flight, so the next task starts settled from
    /// a row at least as new as the version it left.
    pub(super) fn take_parked(&mut self) {
        let parked = self
            .live
            .as_ref()
            .filter(|l| l.task.is_finished())
            .map_or(0, |l| l.parked.load(Ordering::SeqCst));
        if parked > 0 {
            self.live = None;
            self.settled = true;
            self.min_version = parked - 1;
        }
    }
}

pub(super) async fn join_stopped(stopped: Vec<Running>) {
    for (id, live) in stopped
        .into_iter()
        .filter_map(|running| Some((running.id, running.live?)))
    {
        live.stop.store(true, Ordering::SeqCst);
        drop(live.mailbox);
        // The task finishes the call in hand, then sees its mailbox closed.
        if let Err(e) = live.task.await {
            warn!(session = %id, error = %e, "session task ended abnormally");
        }
    }
}
