//! How a session's slot starts: its row read (or handed over by the
//! pass that read it), its kind's handler and live state, and then a task,
//! or a parked slot when it has nothing to do until a call comes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::slot::{Live, Row, Running};
use super::task::{self, SessionTask};
use super::{Runtime, MAILBOX};
use crate::handler::DynHandler;
use crate::model::{Epoch, Session, SessionId};

impl Runtime {
    /// Starts a task for `id` under `epoch` from the applied state (`known`:
    /// its row as just read). Unless `settled` (the epoch is new to this
    /// node), the task settles the row through the log before it answers
    /// anything.
    pub(super) fn start_task(
        &self,
        id: &SessionId,
        epoch: Epoch,
        settled: bool,
        restart: Option<u64>,
        known: Option<&Session>,
    ) -> Option<Running> {
        let new_slot = restart.is_none();
        // A new slot of a kind with no timers parks at once, its state
        // not read (nothing to do until a call comes).
        let may_park = new_slot && self.env.park_after.is_some();
        let (handler, row) = match self.row_of(id, epoch, new_slot && settled, may_park, known)? {
            Start::Parked { moved_at } => return Some(self.parked(id, epoch, settled, moved_at)),
            Start::Task(handler, row) => (handler, row),
        };
        let Row {
            kind,
            state,
            version,
            recorded,
            moved_at,
        } = row;
        // A parked session's next task: settled only from a row that has
        // the last write of the task before it.
        let settled = settled && restart.is_none_or(|min| version >= min);
        let live = self.load(id, &handler, &state)?;
        let deadline = live.next_deadline();
        if may_park && deadline.is_none() {
            return Some(self.parked(id, epoch, settled, moved_at));
        }
        let (mailbox, calls) = mpsc::channel(MAILBOX);
        let stop = Arc::new(AtomicBool::new(false));
        let parked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = SessionTask {
            env: self.env.clone(),
            id: id.clone(),
            epoch,
            handler,
            deadline,
            not_before: None,
            live: Some(live),
            committed: state,
            version,
            calls: recorded,
            settled,
            stop: stop.clone(),
            parked: parked.clone(),
            kind,
            moved_at,
        };
        self.env.live_tasks.fetch_add(1, Ordering::SeqCst);
        Some(Running {
            id: id.clone(),
            epoch,
            settled,
            min_version: 0,
            live: Some(Live {
                mailbox,
                task: tokio::spawn(task.run(calls)),
                stop,
                parked,
            }),
        })
    }

    /// A parked slot, ready here (a move's failover observed).
    fn parked(
        &self,
        id: &SessionId,
        epoch: Epoch,
        settled: bool,
        moved_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Running {
        if let Some(at) = moved_at {
            task::observe_failover(&self.env, at);
        }
        Running {
            id: id.clone(),
            epoch,
            settled,
            min_version: 0,
            live: None,
        }
    }

    /// The live state `handler` makes from `state`.
    fn load(
        &self,
        id: &SessionId,
        handler: &Arc<dyn DynHandler>,
        state: &crate::model::StateJson,
    ) -> Option<Box<dyn crate::handler::LiveSession>> {
        match handler.start(state) {
            Ok(live) => Some(live),
            Err(e) => {
                warn!(session = %id, error = %e, "session state does not load; not started");
                None
            }
        }
    }

    /// How the session starts under `epoch`, from its row (`known`: as
    /// the pass read it, no second look-up): parked (when `may_park` and
    /// its kind has no timers: nothing of the row is copied), or a task
    /// with its kind's handler and what it needs of the row; `moved_at`
    /// when `moved` (a new epoch here) and the row shows a move.
    fn row_of(
        &self,
        id: &SessionId,
        epoch: Epoch,
        moved: bool,
        may_park: bool,
        known: Option<&Session>,
    ) -> Option<Start> {
        let start = |s: &Session| {
            if s.epoch != epoch {
                return None;
            }
            // A new epoch here on a session not just created: a move.
            let moved_at = (moved && s.updated_at != s.created_at).then_some(s.updated_at);
            let Some(handler) = self.registry.get(&s.kind) else {
                warn!(session = %id, kind = %s.kind, "no handler registered for this kind; session not started");
                return None;
            };
            if may_park && !handler.has_deadlines() {
                return Some(Start::Parked { moved_at });
            }
            let row = Row {
                kind: s.kind.clone(),
                state: s.state.clone(),
                version: s.version,
                recorded: s.calls.clone(),
                moved_at,
            };
            Some(Start::Task(handler.clone(), row))
        };
        match known {
            Some(session) => start(session),
            None => self
                .env
                .view
                .read(|a| a.state.sessions.get(id).and_then(|s| start(s))),
        }
    }
}

/// How a slot starts.
enum Start {
    /// Parked: its kind has no timers, so nothing happens before a call.
    Parked {
        moved_at: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// With a task: its kind's handler and the row it starts from.
    Task(Arc<dyn DynHandler>, Row),
}
