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
        let Row {
            kind,
            state,
            version,
            recorded,
            moved_at,
        } = self.row_of(id, epoch, new_slot && settled, known)?;
        // A parked session's next task: settled only from a row that has
        // the last write of the task before it.
        let settled = settled && restart.is_none_or(|min| version >= min);
        let (handler, live) = self.load(id, &kind, &state)?;
        let deadline = live.next_deadline();
        if new_slot && deadline.is_none() && self.env.park_after.is_some() {
            // Nothing to do until a call comes: parked, ready here.
            if let Some(at) = moved_at {
                task::observe_failover(&self.env, at);
            }
            return Some(Running {
                id: id.clone(),
                epoch,
                settled,
                min_version: 0,
                live: None,
            });
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

    /// The kind's handler and the live state made from `state`.
    #[allow(clippy::type_complexity)]
    fn load(
        &self,
        id: &SessionId,
        kind: &crate::model::SessionKind,
        state: &crate::model::StateJson,
    ) -> Option<(
        Arc<dyn crate::handler::DynHandler>,
        Box<dyn crate::handler::LiveSession>,
    )> {
        let Some(handler) = self.registry.get(kind).cloned() else {
            warn!(session = %id, %kind, "no handler registered for this kind; session not started");
            return None;
        };
        match handler.start(state) {
            Ok(live) => Some((handler, live)),
            Err(e) => {
                warn!(session = %id, error = %e, "session state does not load; not started");
                None
            }
        }
    }

    /// The session's row under `epoch`, as a task starts from it; `moved_at`
    /// when `moved` (a new epoch here) and the row shows a move.
    /// `known`: the row as the pass read it (no second look-up).
    fn row_of(
        &self,
        id: &SessionId,
        epoch: Epoch,
        moved: bool,
        known: Option<&Session>,
    ) -> Option<Row> {
        let row = |s: &Session| {
            if s.epoch != epoch {
                return None;
            }
            // A new epoch here on a session not just created: a move.
            let moved_at = (moved && s.updated_at != s.created_at).then_some(s.updated_at);
            Some(Row {
                kind: s.kind.clone(),
                state: s.state.clone(),
                version: s.version,
                recorded: s.calls.clone(),
                moved_at,
            })
        };
        match known {
            Some(session) => row(session),
            None => self
                .env
                .view
                .read(|a| a.state.sessions.get(id).and_then(|s| row(s))),
        }
    }
}
