//! One session's task on its owner: it settles its row first (unless its
//! epoch is new here), then handles calls and deadlines one at a time and
//! commits each state change, with its epoch and version, before replying.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use super::{Call, TaskEnv, SETTLE_PAUSE};
use crate::handler::{DynHandler, Failure, LiveSession, SessionContext};
use crate::model::{
    Applied, CallKey, Command, Epoch, RecordedCall, Rejection, SessionId, StateJson,
};
use crate::peer::{CallError, CallReply};
use crate::raft::WriteError;

pub(super) struct SessionTask {
    pub(super) env: TaskEnv,
    pub(super) id: SessionId,
    pub(super) epoch: Epoch,
    pub(super) handler: Arc<dyn DynHandler>,
    /// The handler's live state while calls are waiting; put away when the
    /// mailbox is empty and made again from `committed` (which the table
    /// shares) on the next call, so an idle session holds its state once.
    pub(super) live: Option<Box<dyn LiveSession>>,
    /// The live state's next deadline, kept while it is put away.
    pub(super) deadline: Option<chrono::DateTime<Utc>>,
    /// No deadline fires before this: set when firing one failed (an
    /// external app that refused or did not answer is asked again later).
    pub(super) not_before: Option<chrono::DateTime<Utc>>,
    pub(super) committed: StateJson,
    /// Version of `committed` in the table: the next update builds on it.
    pub(super) version: u64,
    /// The keyed calls the table remembers for this session (as of `version`).
    pub(super) calls: Vec<RecordedCall>,
    /// True once `committed` and `version` are known to be the table's and
    /// no earlier write of this epoch can still land (see [`Command::Settle`]).
    pub(super) settled: bool,
    pub(super) stop: Arc<AtomicBool>,
    /// Set when this task ends because it was idle (its session parks):
    /// its last version + 1.
    pub(super) parked: Arc<std::sync::atomic::AtomicU64>,
    /// The handler kind (a metric label).
    pub(super) kind: crate::model::SessionKind,
    /// When the table shows this session moved here (the move's commit,
    /// proposer's clock), if this task starts because of a move.
    pub(super) moved_at: Option<chrono::DateTime<Utc>>,
}

/// Pause before a deadline whose handling failed is tried again.
const DEADLINE_RETRY: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

enum Commit {
    Done,
    /// This task must stop: fenced, deleted, or the outcome is unknown.
    Stop(CallError),
}

impl SessionTask {
    fn context(&self) -> SessionContext {
        SessionContext {
            id: self.id.clone(),
            now: Utc::now(),
            owner: self.env.me,
            epoch: self.epoch,
            version: self.version,
        }
    }

    /// When the next deadline fires: the live state's, held back after a
    /// failed attempt.
    fn due(&self) -> Option<chrono::DateTime<Utc>> {
        let at = self.deadline?;
        Some(self.not_before.map_or(at, |not_before| at.max(not_before)))
    }

    pub(super) async fn run(mut self, calls: mpsc::Receiver<Box<Call>>) {
        debug!(node = self.env.me, session = %self.id, epoch = %self.epoch, "session task started");
        let parked = self.serve(calls).await;
        self.env.live_tasks.fetch_sub(1, Ordering::SeqCst);
        if parked {
            // Idle: the slot stays, parked; nothing for the reconciler to do.
            self.parked.store(self.version + 1, Ordering::SeqCst);
            debug!(node = self.env.me, session = %self.id, "session task parked");
        } else {
            debug!(node = self.env.me, session = %self.id, "session task stopped");
            self.env.kick.notify_one();
        }
    }

    /// Settles, then handles calls and deadlines until told to stop (false)
    /// or idle for `park_after` with no timer (true).
    async fn serve(&mut self, mut calls: mpsc::Receiver<Box<Call>>) -> bool {
        if !self.begin().await {
            return false;
        }
        let mut lease = self.env.lease.clone();
        loop {
            if let Some(live) = &self.live {
                self.deadline = live.next_deadline();
                if calls.is_empty() {
                    self.live = None;
                }
            }
            let timer = timer(&mut lease, self.env.lease_valid(), self.due());
            let idle = async {
                match self.env.park_after.filter(|_| self.deadline.is_none()) {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                call = calls.recv() => {
                    let Some(call) = call else { return false };
                    // Boxed: the idle task then holds no room for a call's
                    // future (1.7 KB unboxed).
                    if Box::pin(self.take_call(*call)).await {
                        return false;
                    }
                }
                fire = timer => {
                    if fire {
                        if let Commit::Stop(_) = Box::pin(self.fire_due_deadline()).await {
                            return false;
                        }
                    }
                }
                _ = idle => {
                    // A call that raced the park is dropped unanswered with
                    // the mailbox: never run, its router tries again.
                    if calls.is_empty() && !self.stop.load(Ordering::SeqCst) {
                        return true;
                    }
                }
            }
        }
    }

    /// Settles the row first unless this epoch is new here (calls wait in
    /// the mailbox meanwhile; if it fails they are dropped unanswered, never
    /// run, and their routers retry), and records the failover duration.
    /// False when the task must stop.
    async fn begin(&mut self) -> bool {
        if !self.settled {
            if Box::pin(self.settle()).await.is_err() {
                debug!(node = self.env.me, session = %self.id, "session task could not settle; stopped");
                return false;
            }
            self.restore();
        }
        if let Some(at) = self.moved_at.take() {
            observe_failover(&self.env, at);
        }
        true
    }

    /// Handles one call from the mailbox and answers it; true when the
    /// task must stop.
    async fn take_call(&mut self, call: Call) -> bool {
        if call.reply.is_closed() {
            // Its caller gave up before it was taken: never run.
            return false;
        }
        if !self.env.lease_valid() || self.stop.load(Ordering::SeqCst) || !self.is_current() {
            let _ = call.reply.send(Err(CallError::NotHere));
            return false;
        }
        if let Commit::Stop(_) = self.fire_due_deadline().await {
            let _ = call.reply.send(Err(CallError::NotHere));
            return true;
        }
        let span = tracing::debug_span!("call", node = self.env.me, session = %self.id, epoch = %self.epoch);
        let started = tokio::time::Instant::now();
        let (answer, stop) = self
            .handle(call.msg, call.key)
            .instrument(span.clone())
            .await;
        let (outcome, took) = (crate::metrics::call_outcome(&answer), started.elapsed());
        self.env.metrics.call(self.kind.as_str(), outcome, took);
        span.in_scope(|| debug!(outcome, micros = took.as_micros() as u64, "call handled"));
        let _ = call.reply.send(answer);
        stop
    }

    /// True while the applied table names this node as the owner under this
    /// task's epoch. Read after the lease (whose check reads the applied
    /// index), so the table seen is at least as new as the lease requires.
    /// A move is applied before the reconciler stops the old task; until
    /// then the task must answer nothing: a write would be fenced by the
    /// log, but a query is answered from the task's own state.
    fn is_current(&self) -> bool {
        self.env.view.read(|a| {
            a.state
                .sessions
                .get(&self.id)
                .is_some_and(|s| s.owner == Some(self.env.me) && s.epoch == self.epoch)
        })
    }

    /// Commits a [`Command::Settle`] for this task's epoch and takes the
    /// table's state and version from its answer. Once it is applied, no
    /// earlier write of this epoch can land any more (it would carry an
    /// older version), so what it returns is final until this task writes.
    /// Retried while the lease holds; fails when the session moved, was
    /// deleted, the lease ended or the task was told to stop.
    async fn settle(&mut self) -> Result<(), CallError> {
        loop {
            if self.stop.load(Ordering::SeqCst) || !self.env.lease_valid() {
                return Err(CallError::NotHere);
            }
            let command = Command::Settle {
                id: self.id.clone(),
                epoch: self.epoch,
                version: self.version,
            };
            match self.env.proposer.propose(command).await {
                Ok(Ok(Applied::Session(session))) => {
                    self.committed = session.state;
                    self.version = session.version;
                    self.calls = session.calls;
                    self.settled = true;
                    return Ok(());
                }
                // An earlier write (or settle) of this epoch landed: settle
                // on top of it; the answer carries the state.
                Ok(Err(Rejection::StaleVersion { current, .. })) => self.version = current,
                // Moved away or deleted: nothing of this epoch can land.
                Ok(Ok(_)) | Ok(Err(_)) | Err(WriteError::ShuttingDown) => {
                    return Err(CallError::NotHere)
                }
                // A settle whose own outcome is unknown is harmless: it only
                // raises the version, and the next one settles on top of it.
                Err(e) => {
                    debug!(session = %self.id, error = %e, "settle not confirmed; trying again");
                    tokio::time::sleep(SETTLE_PAUSE).await;
                }
            }
        }
    }

    async fn fire_due_deadline(&mut self) -> Commit {
        let ctx = self.context();
        match self.due() {
            Some(at) if at <= ctx.now => {
                let Some(live) = self.live_state() else {
                    return Commit::Stop(CallError::NotHere);
                };
                if let Err(failure) = live.on_deadline(&ctx).await {
                    warn!(session = %self.id, ?failure, "deadline not handled; trying again in 1 s");
                    self.restore();
                    self.not_before = Some(ctx.now + DEADLINE_RETRY);
                    return Commit::Done;
                }
                // A handler whose timer is still due after firing is asked
                // again only after a pause, not in a busy loop.
                let again = live.next_deadline().is_some_and(|next| next <= ctx.now);
                self.not_before = again.then(|| ctx.now + DEADLINE_RETRY);
                self.commit(None).await
            }
            _ => Commit::Done,
        }
    }

    fn reply(&self, reply: serde_json::Value) -> CallReply {
        CallReply {
            reply,
            owner: self.env.me,
            epoch: self.epoch,
        }
    }

    async fn handle(
        &mut self,
        msg: serde_json::Value,
        key: Option<CallKey>,
    ) -> (Result<CallReply, CallError>, bool) {
        if let Some(recorded) = key
            .as_ref()
            .and_then(|key| RecordedCall::find(&self.calls, key))
        {
            // A retry of a call that took effect: its reply, nothing applied.
            let reply = serde_json::from_str(&recorded.reply).unwrap_or(serde_json::Value::Null);
            return (Ok(self.reply(reply)), false);
        }
        let query = self.handler.is_query(&msg);
        let ctx = self.context();
        let Some(live) = self.live_state() else {
            return (Err(CallError::NotHere), true);
        };
        match live.handle(&ctx, msg).await {
            Err(failure) => {
                self.restore();
                let error = match failure {
                    Failure::Rejected(message) => CallError::Rejected(message),
                    Failure::Unavailable(message) => {
                        CallError::Unavailable(self.id.clone(), message)
                    }
                    // Never ran: the router tries again (the node hands the
                    // session over when its app stays unreachable).
                    Failure::Unreachable(_) => CallError::NotHere,
                };
                (Err(error), false)
            }
            Ok(_)
                if query
                    && self
                        .live
                        .as_ref()
                        .is_some_and(|l| l.state() != self.committed) =>
            {
                // Retrying a query must be safe: one that writes is refused.
                self.restore();
                (
                    Err(CallError::Rejected(
                        "the kind declares this message a query, but handling it changed the state"
                            .into(),
                    )),
                    false,
                )
            }
            Ok(reply) => {
                let call = key.map(|key| RecordedCall {
                    key,
                    reply: reply.to_string(),
                    at: ctx.now,
                });
                match self.commit(call).await {
                    Commit::Done => (Ok(self.reply(reply)), false),
                    Commit::Stop(CallError::StateTooLarge(size, limit)) => {
                        self.restore();
                        (Err(CallError::StateTooLarge(size, limit)), false)
                    }
                    Commit::Stop(error) => (Err(error), true),
                }
            }
        }
    }

    /// Commits the live state if it changed. A write whose outcome is
    /// unknown is settled through the log: if it landed the call is done,
    /// if it did not it is written again (it can no longer land late).
    /// A keyed call is recorded with the state in the same entry.
    async fn commit(&mut self, call: Option<RecordedCall>) -> Commit {
        let Some(state) = self.live.as_ref().map(|live| live.state()) else {
            return Commit::Done;
        };
        if state == self.committed {
            return Commit::Done;
        }
        let size = state.len() + call.as_ref().map_or(0, |c| c.reply.len());
        if size > self.env.max_state_bytes {
            return Commit::Stop(CallError::StateTooLarge(size, self.env.max_state_bytes));
        }
        loop {
            let command = self.write_command(&state, &call);
            let span = tracing::debug_span!("commit", node = self.env.me, session = %self.id, epoch = %self.epoch, version = self.version);
            let unknown = match self.env.proposer.propose(command).instrument(span).await {
                Ok(Ok(applied)) => {
                    self.committed = state;
                    match applied {
                        Applied::Session(session) => {
                            self.version = session.version;
                            self.calls = session.calls;
                        }
                        _ => self.version += 1,
                    }
                    return Commit::Done;
                }
                // Fenced, outdated, deleted, or (keyed) applied already: the
                // call did not take effect here; a retry finds its record.
                Ok(Err(
                    rejection @ (Rejection::StaleEpoch { .. }
                    | Rejection::StaleVersion { .. }
                    | Rejection::DuplicateCall { .. }
                    | Rejection::NoSuchSession(_)),
                )) => {
                    debug!(session = %self.id, epoch = %self.epoch, %rejection, "the log refused the new state; it is dropped");
                    return Commit::Stop(CallError::NotHere);
                }
                Ok(Err(other)) => other.to_string(),
                Err(WriteError::NoLeader) | Err(WriteError::ShuttingDown) => {
                    // Nothing was written; a successor settles and restarts
                    // from the committed state.
                    return Commit::Stop(CallError::Unavailable(
                        self.id.clone(),
                        "no leader to commit the new state".into(),
                    ));
                }
                Err(e) => e.to_string(),
            };
            debug!(session = %self.id, error = %unknown, "write outcome unknown; settling it");
            let before = self.committed.clone();
            if self.settle().await.is_err() {
                return Commit::Stop(CallError::OutcomeUnknown(unknown));
            }
            if self.committed == state {
                // It landed (only this task writes under this epoch, and
                // the state differs from the one it was built on).
                return Commit::Done;
            }
            if self.committed != before {
                // Cannot happen while this task is the only writer of its
                // epoch; do not build on a state the handler never saw.
                warn!(session = %self.id, "settled state is neither the old nor the new one");
                return Commit::Stop(CallError::OutcomeUnknown(unknown));
            }
        }
    }

    /// The write of `state` under this task's epoch and version, keyed when
    /// the call carried a key.
    fn write_command(&self, state: &StateJson, call: &Option<RecordedCall>) -> Command {
        match call {
            None => Command::UpdateState {
                id: self.id.clone(),
                epoch: self.epoch,
                version: self.version,
                state: state.clone(),
            },
            Some(call) => Command::UpdateStateKeyed {
                id: self.id.clone(),
                epoch: self.epoch,
                version: self.version,
                state: state.clone(),
                call: call.clone(),
                retention: self.env.retention,
            },
        }
    }

    /// Makes the live state again from the committed one.
    fn restore(&mut self) {
        self.live = None;
        self.deadline = None;
        if let Some(live) = self.live_state() {
            self.deadline = live.next_deadline();
        }
    }

    /// The live state, made from `committed` if it was put away (`None`
    /// only if the committed state no longer loads, which a state the
    /// handler produced always does).
    fn live_state(&mut self) -> Option<&mut Box<dyn LiveSession>> {
        if self.live.is_none() {
            match self.handler.start(&self.committed) {
                Ok(live) => self.live = Some(live),
                Err(e) => {
                    warn!(session = %self.id, error = %e, "could not load the committed state");
                    return None;
                }
            }
        }
        self.live.as_mut()
    }
}

/// Records how long a session took from its move's commit to being ready
/// on its new owner.
pub(super) fn observe_failover(env: &TaskEnv, moved_at: chrono::DateTime<Utc>) {
    let took = (Utc::now() - moved_at).to_std().unwrap_or(Duration::ZERO);
    env.metrics.failover.observe(took.as_secs_f64());
}

/// Waits for the session's deadline (true), or, without a valid lease, for
/// the next renewal (false): timers fire only under a valid lease (the
/// reconciler may stop the task first).
async fn timer(
    lease: &mut tokio::sync::watch::Receiver<crate::lease::Lease>,
    lease_ok: bool,
    deadline: Option<chrono::DateTime<Utc>>,
) -> bool {
    if !lease_ok {
        let _ = lease.changed().await;
        return false;
    }
    match deadline {
        Some(at) => {
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            true
        }
        None => std::future::pending().await,
    }
}
