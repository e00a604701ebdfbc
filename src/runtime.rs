//! The session runtime on every node: one task per session this node owns
//! while it holds a valid lease, and the routing of calls to the owner.
//!
//! Invariants:
//! - a task runs only while this node owns the session in the applied state,
//!   holds a valid lease, and has not released the session for a handoff;
//! - a task checks the lease again before every call, so a node resumed from
//!   a pause answers nothing after its lease ended;
//! - a task answers no call before the table row it starts from is settled:
//!   unless its epoch is new to this node, it first commits a
//!   [`Command::Settle`] and starts from the state that returns, so no
//!   earlier write of its epoch whose outcome was unknown can land behind
//!   its back (an unknown outcome is settled by the log, never guessed);
//! - a state change is committed with the task's epoch before the reply
//!   leaves; a stale epoch stops the task (fencing); a write whose outcome
//!   is unknown is settled the same way before the task answers anything
//!   else, and written again if it did not land;
//! - a call is retried on another attempt only when it certainly did not
//!   run (refused before handling, or never delivered), when it is a query
//!   (the kind says it changes nothing), or when it carries a key: a keyed
//!   call's effect is recorded with the session in the entry that commits
//!   it, so any owner answers a retry with the recorded reply and applies
//!   nothing; otherwise its outcome is reported as unknown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::handler::{DynHandler, HandlerError, LiveSession, SessionContext};
use crate::lease::Lease;
use crate::model::{
    Applied, CallKey, CallRetention, Command, Epoch, NodeId, NodeStatus, RecordedCall, Rejection,
    SessionId, StateJson,
};
use crate::network::{InternalError, Transport};
use crate::raft::{Proposer, WriteError};
use crate::store::StateView;

/// Calls waiting in one session's mailbox.
const MAILBOX: usize = 256;
/// How long a released session is held back before this node may run it
/// again (if the move was never committed).
const HOLD: Duration = Duration::from_secs(3);
/// How long a call in flight to a session's old owner may still report that
/// it was never delivered, after the move was seen.
const MOVED_GRACE: Duration = Duration::from_millis(20);
/// First pause between routing attempts while a session is moving.
const RETRY_PAUSE: Duration = Duration::from_millis(2);
/// Longest pause between two attempts on an unchanged route.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Pause before a settle is tried again after its own outcome was unknown.
const SETTLE_PAUSE: Duration = Duration::from_millis(10);

/// A successful call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CallReply {
    /// The handler's reply.
    pub reply: serde_json::Value,
    /// Node that ran the session.
    pub owner: NodeId,
    /// Epoch it ran under.
    pub epoch: Epoch,
}

/// Why a call did not succeed.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// No such session.
    #[error("session {0} does not exist")]
    NotFound(SessionId),
    /// The handler rejected the message (nothing was committed).
    #[error("rejected by the session: {0}")]
    Rejected(String),
    /// The new state is over the size limit (nothing was committed).
    #[error("new state is {0} bytes; the limit is {1}")]
    StateTooLarge(usize, usize),
    /// The session was not available before the timeout (moving, no quorum).
    #[error("session {0} not available within the timeout: {1}")]
    Unavailable(SessionId, String),
    /// The call may or may not have run (owner lost mid-call, commit unconfirmed).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// This node does not run the session (internal; the router retries).
    #[error("not running here")]
    NotHere,
}

struct Call {
    msg: serde_json::Value,
    key: Option<CallKey>,
    reply: oneshot::Sender<Result<CallReply, CallError>>,
}

/// A call forwarded to the session's owner (the body of the internal route).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedCall {
    /// The message.
    pub msg: serde_json::Value,
    /// The caller's idempotency key, if any.
    pub key: Option<CallKey>,
}

struct Running {
    id: SessionId,
    epoch: Epoch,
    mailbox: mpsc::Sender<Call>,
    task: JoinHandle<()>,
    /// Set when the task must answer no more calls (it was replaced or
    /// released); it finishes the commit in hand, then exits.
    stop: Arc<AtomicBool>,
}

/// What a session task needs from its node.
#[derive(Clone)]
pub(crate) struct TaskEnv {
    pub me: NodeId,
    pub view: StateView,
    pub lease: watch::Receiver<Lease>,
    pub proposer: Proposer,
    pub max_state_bytes: usize,
    /// How many keyed calls each session remembers.
    pub retention: CallRetention,
    /// Wakes the reconciler (a task stopped by itself).
    pub kick: Arc<Notify>,
}

impl TaskEnv {
    fn lease_valid(&self) -> bool {
        self.lease
            .borrow()
            .is_valid(Instant::now(), self.view.applied_index())
    }
}

/// Live sessions of this node.
pub(crate) struct Runtime {
    env: TaskEnv,
    registry: crate::handler::Registry,
    transport: Transport,
    tasks: Mutex<HashMap<SessionId, Running>>,
    /// Released sessions: the epoch they were released at, and until when
    /// they are held back at the latest. A hold ends early once the move
    /// away is committed, so a session that comes back soon runs at once.
    held: Mutex<HashMap<SessionId, (Epoch, Instant)>>,
    stopping: AtomicBool,
    /// Tasks told to stop that may still be finishing a commit: no
    /// successor starts for the session until they are done.
    finishing: Mutex<HashMap<SessionId, JoinHandle<()>>>,
    /// The epoch each session last ran under here, while the table still
    /// shows it: a task under that epoch may have left a write whose outcome
    /// is unknown, so its successor settles first.
    ran: Mutex<HashMap<SessionId, Epoch>>,
    /// The table's last epoch when this process could first run sessions
    /// (lease held, log caught up). A session whose epoch is not above it
    /// may have run in an earlier life of this node, so its first task here
    /// settles first; a later epoch was handed to this process and to no
    /// other, and its row is final once its owner change is applied.
    boot_epoch: OnceLock<Epoch>,
}

impl Runtime {
    pub(crate) fn new(
        env: TaskEnv,
        registry: crate::handler::Registry,
        transport: Transport,
    ) -> Arc<Self> {
        Arc::new(Self {
            env,
            registry,
            transport,
            tasks: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            finishing: Mutex::new(HashMap::new()),
            ran: Mutex::new(HashMap::new()),
            boot_epoch: OnceLock::new(),
        })
    }

    /// Number of session tasks running here.
    pub fn running(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Ids of the sessions running here.
    pub fn running_ids(&self) -> Vec<SessionId> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Keeps the set of running tasks equal to what this node should run.
    pub(crate) async fn reconcile_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.env.view.subscribe();
        let mut lease = self.env.lease.clone();
        loop {
            let wake_at = self.reconcile();
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = applied.changed() => {}
                _ = lease.changed() => {}
                _ = self.env.kick.notified() => {}
                _ = sleep => {}
                _ = shutdown.changed() => break,
            }
        }
        self.stop_all().await;
    }

    /// One reconciliation pass; returns when the next one is due at the latest.
    fn reconcile(&self) -> Option<Instant> {
        let now = Instant::now();
        let lease = *self.env.lease.borrow();
        let applied_index = self.env.view.applied_index();
        let mut wake_at = lease.valid_until.filter(|until| *until > now);
        let runnable = lease.is_valid(now, applied_index) && !self.stopping.load(Ordering::SeqCst);
        let held: Vec<SessionId> = {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            // A hold ends once the move away is committed (another owner
            // under a later epoch): the session may come back at once.
            self.env.view.read(|a| {
                held.retain(|id, (epoch, until)| {
                    *until > now
                        && a.state
                            .sessions
                            .get(id)
                            .is_some_and(|s| s.owner == Some(self.env.me) || s.epoch == *epoch)
                })
            });
            for (_, until) in held.values() {
                wake_at = Some(wake_at.map_or(*until, |w| w.min(*until)));
            }
            held.keys().cloned().collect()
        };
        let me = self.env.me;
        if runnable {
            self.boot_epoch
                .get_or_init(|| self.env.view.read(|a| a.state.last_epoch));
        }
        let boot_epoch = self.boot_epoch.get().copied().unwrap_or(Epoch(u64::MAX));
        let wanted: HashMap<SessionId, Epoch> = if runnable {
            self.env.view.read(|a| {
                let my_status = a.state.nodes.get(&me).map(|n| n.status);
                if my_status == Some(NodeStatus::Down) {
                    return HashMap::new();
                }
                a.state
                    .sessions_owned_by(me)
                    .filter(|s| !held.contains(&s.id))
                    .map(|s| (s.id.clone(), s.epoch))
                    .collect()
            })
        } else {
            HashMap::new()
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut finishing = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
        let mut ran = self.ran.lock().unwrap_or_else(|p| p.into_inner());
        let unwanted: Vec<SessionId> = tasks
            .iter()
            .filter(|(id, running)| {
                wanted.get(*id) != Some(&running.epoch) || running.task.is_finished()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in unwanted {
            if let Some(running) = tasks.remove(&id) {
                debug!(node = me, session = %id, "stopping session task");
                // A task dropped here may still be committing (a lease lapse
                // in the middle of a write): it must not answer another call,
                // and no successor may start before it is done.
                running.stop.store(true, Ordering::SeqCst);
                finishing.insert(id, running.task);
            }
        }
        finishing.retain(|_, task| !task.is_finished());
        if !finishing.is_empty() {
            // Their ends kick the reconciler too, but look again soon.
            let soon = now + RETRY_PAUSE;
            wake_at = Some(wake_at.map_or(soon, |w| w.min(soon)));
        }
        // A past run matters only while the table still shows its epoch.
        self.env.view.read(|a| {
            ran.retain(|id, epoch| a.state.sessions.get(id).is_some_and(|s| s.epoch == *epoch))
        });
        for (id, epoch) in wanted {
            if tasks.contains_key(&id) || finishing.contains_key(&id) {
                continue;
            }
            let settled = epoch > boot_epoch && ran.get(&id) != Some(&epoch);
            if let Some(running) = self.start_task(&id, epoch, settled) {
                ran.insert(id.clone(), epoch);
                tasks.insert(id, running);
            }
        }
        wake_at
    }

    /// Starts a task for `id` under `epoch` from the applied state. Unless
    /// `settled` (the epoch is new to this node), the task settles the row
    /// through the log before it answers anything.
    fn start_task(&self, id: &SessionId, epoch: Epoch, settled: bool) -> Option<Running> {
        let (kind, state, version, recorded) = self.env.view.read(|a| {
            a.state
                .sessions
                .get(id)
                .filter(|s| s.epoch == epoch)
                .map(|s| (s.kind.clone(), s.state.clone(), s.version, s.calls.clone()))
        })?;
        let Some(handler) = self.registry.get(&kind).cloned() else {
            warn!(session = %id, %kind, "no handler registered for this kind; session not started");
            return None;
        };
        let live = match handler.start(&state) {
            Ok(live) => live,
            Err(e) => {
                warn!(session = %id, error = %e, "session state does not load; not started");
                return None;
            }
        };
        let (mailbox, calls) = mpsc::channel(MAILBOX);
        let stop = Arc::new(AtomicBool::new(false));
        let task = SessionTask {
            env: self.env.clone(),
            id: id.clone(),
            epoch,
            handler,
            live,
            committed: state,
            version,
            calls: recorded,
            settled,
            stop: stop.clone(),
        };
        Some(Running {
            id: id.clone(),
            epoch,
            mailbox,
            task: tokio::spawn(task.run(calls)),
            stop,
        })
    }

    async fn stop_all(&self) {
        let drained: Vec<Running> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        join_stopped(drained).await;
    }

    /// Stops the given sessions (all when `None`) after the call in hand,
    /// and holds them back until their move is committed. With `None` the
    /// node also stops taking any session (drain, graceful stop).
    pub(crate) async fn release(&self, sessions: Option<&[SessionId]>) {
        let until = Instant::now() + HOLD;
        let epochs: HashMap<SessionId, Epoch> = match sessions {
            None => HashMap::new(),
            Some(ids) => self.env.view.read(|a| {
                ids.iter()
                    .filter_map(|id| a.state.sessions.get(id).map(|s| (id.clone(), s.epoch)))
                    .collect()
            }),
        };
        let stopped: Vec<Running> = {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            match sessions {
                None => {
                    self.stopping.store(true, Ordering::SeqCst);
                    tasks.drain().map(|(_, r)| r).collect()
                }
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| {
                        if let Some(epoch) = epochs.get(id) {
                            held.insert(id.clone(), (*epoch, until));
                        }
                        tasks.remove(id)
                    })
                    .collect(),
            }
        };
        join_stopped(stopped).await;
        self.env.kick.notify_one();
    }

    /// Handles a call here if this node runs the session; never forwards.
    pub(crate) async fn call_local(
        &self,
        id: &SessionId,
        msg: serde_json::Value,
        key: Option<CallKey>,
    ) -> Result<CallReply, CallError> {
        let mailbox = {
            let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.get(id).map(|r| r.mailbox.clone())
        };
        let Some(mailbox) = mailbox else {
            return Err(CallError::NotHere);
        };
        let (reply, answer) = oneshot::channel();
        if mailbox.send(Call { msg, key, reply }).await.is_err() {
            return Err(CallError::NotHere);
        }
        // A dropped reply means the task stopped before taking the call.
        answer.await.unwrap_or(Err(CallError::NotHere))
    }

    /// Routes a call to the session's owner, waiting while it moves, until
    /// `timeout`. With a `key`, or for a query, an attempt whose outcome is
    /// unknown is tried again (on whichever node owns the session then)
    /// until the timeout: the key makes the retry apply nothing if the
    /// first attempt took effect.
    pub async fn call(
        &self,
        id: &SessionId,
        msg: serde_json::Value,
        timeout: Duration,
        key: Option<CallKey>,
    ) -> Result<CallReply, CallError> {
        let deadline = Instant::now() + timeout;
        let mut applied = self.env.view.subscribe();
        let mut last_reason = String::from("no owner yet");
        // Why an earlier attempt may have run (keyed calls only).
        let mut maybe_ran: Option<String> = None;
        let mut query: Option<bool> = None;
        let mut backoff = RouteBackoff::default();
        loop {
            let route = self.env.view.read(|a| {
                a.state.sessions.get(id).map(|s| {
                    let owner = s
                        .owner
                        .and_then(|o| a.state.nodes.get(&o))
                        .filter(|n| n.status != NodeStatus::Down)
                        .map(|n| (n.id, n.addr.clone()));
                    (owner, s.epoch, s.kind.clone())
                })
            });
            let query = *query.get_or_insert_with(|| {
                route.as_ref().is_some_and(|(_, _, kind)| {
                    self.registry
                        .get(kind)
                        .is_some_and(|handler| handler.is_query(&msg))
                })
            });
            let attempt = match route {
                None => return Err(CallError::NotFound(id.clone())),
                Some((None, _, _)) => Err(CallError::NotHere),
                Some((Some((owner, _)), _, _)) if owner == self.env.me => {
                    let local = self.call_local(id, msg.clone(), key.clone());
                    match tokio::time::timeout_at(deadline, local).await {
                        Ok(answer) => answer,
                        // The task may be running it (a slow commit): say so.
                        Err(_) => Err(CallError::OutcomeUnknown(format!(
                            "session {id} did not answer within the timeout"
                        ))),
                    }
                }
                Some((Some((owner, addr)), epoch, _)) => {
                    let call = ForwardedCall {
                        msg: msg.clone(),
                        key: key.clone(),
                    };
                    self.forward(id, owner, &addr, epoch, &call, deadline, &mut applied)
                        .await
                }
            };
            match attempt {
                Err(CallError::NotHere) => {}
                Err(CallError::Unavailable(_, reason)) => last_reason = reason,
                // A query changed nothing, whatever happened to it.
                Err(CallError::OutcomeUnknown(reason)) if query => last_reason = reason,
                Err(CallError::OutcomeUnknown(reason)) if key.is_some() => {
                    debug!(session = %id, %reason, "keyed call's outcome unknown; trying again");
                    last_reason = reason.clone();
                    maybe_ran = Some(reason);
                }
                other => return other,
            }
            if Instant::now() >= deadline {
                return Err(match maybe_ran {
                    Some(reason) => CallError::OutcomeUnknown(format!(
                        "{reason}; retried with its key until the timeout"
                    )),
                    None => CallError::Unavailable(id.clone(), last_reason),
                });
            }
            // Wait until the session moves, or a pause that doubles while
            // attempts keep failing on the same route (the owner may be
            // starting the task or renewing its lease): thousands of calls
            // waiting out a mass failover must not become a storm of
            // connects to a dead owner.
            let route = self.route_of(id);
            let until = (Instant::now() + backoff.pause(route)).min(deadline);
            while let Ok(Ok(())) = tokio::time::timeout_at(until, applied.changed()).await {
                if self.route_of(id) != route {
                    break;
                }
            }
        }
    }

    /// The session's owner and epoch as this node's table shows them.
    fn route_of(&self, id: &SessionId) -> Route {
        self.env.view.read(|a| {
            a.state
                .sessions
                .get(id)
                .map_or((None, Epoch(0)), |s| (s.owner, s.epoch))
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        id: &SessionId,
        owner: NodeId,
        addr: &str,
        epoch: Epoch,
        call: &ForwardedCall,
        deadline: Instant,
        applied: &mut watch::Receiver<u64>,
    ) -> Result<CallReply, CallError> {
        let budget = deadline.saturating_duration_since(Instant::now());
        let path = format!("/internal/call/{id}");
        let request = self
            .transport
            .post_call::<_, Result<CallReply, CallError>>(owner, addr, &path, call, budget);
        tokio::pin!(request);
        let settle = |answer: Result<Result<CallReply, CallError>, InternalError>| match answer {
            Ok(result) => result,
            Err(e) if e.not_delivered() => Err(CallError::Unavailable(id.clone(), e.to_string())),
            Err(e) => Err(CallError::OutcomeUnknown(format!(
                "owner {owner} did not answer: {e}"
            ))),
        };
        loop {
            tokio::select! {
                answer = &mut request => return settle(answer),
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(CallError::OutcomeUnknown("node shutting down".into()));
                    }
                    let moved = self.env.view.read(|a| {
                        a.state.sessions.get(id).map(|s| s.epoch) != Some(epoch)
                    });
                    if moved {
                        // The attempt may still be connecting to a dead owner
                        // (then it was never delivered and can go to the new
                        // owner); give it a moment to say so.
                        return match tokio::time::timeout(MOVED_GRACE, &mut request).await {
                            Ok(answer) => settle(answer),
                            Err(_) => Err(CallError::OutcomeUnknown(format!(
                                "session moved away from node {owner} while the call was in flight"
                            ))),
                        };
                    }
                }
            }
        }
    }
}

/// A session's owner and epoch: a call retried on an unchanged route backs
/// off, one on a changed route (the session moved) goes at once.
type Route = (Option<NodeId>, Epoch);

/// Pauses between routing attempts of one call: [`RETRY_PAUSE`], doubling
/// while attempts fail on the same route, up to [`MAX_RETRY_PAUSE`].
#[derive(Default)]
struct RouteBackoff {
    route: Option<Route>,
    doublings: u32,
}

impl RouteBackoff {
    fn pause(&mut self, route: Route) -> Duration {
        if self.route == Some(route) {
            self.doublings = (self.doublings + 1).min(5);
        } else {
            self.route = Some(route);
            self.doublings = 0;
        }
        (RETRY_PAUSE * (1 << self.doublings)).min(MAX_RETRY_PAUSE)
    }
}

async fn join_stopped(stopped: Vec<Running>) {
    for running in stopped {
        running.stop.store(true, Ordering::SeqCst);
        drop(running.mailbox);
        // The task finishes the call in hand, then sees its mailbox closed.
        if let Err(e) = running.task.await {
            warn!(session = %running.id, error = %e, "session task ended abnormally");
        }
    }
}

struct SessionTask {
    env: TaskEnv,
    id: SessionId,
    epoch: Epoch,
    handler: Arc<dyn DynHandler>,
    live: Box<dyn LiveSession>,
    committed: StateJson,
    /// Version of `committed` in the table: the next update builds on it.
    version: u64,
    /// The keyed calls the table remembers for this session (as of `version`).
    calls: Vec<RecordedCall>,
    /// True once `committed` and `version` are known to be the table's and
    /// no earlier write of this epoch can still land (see [`Command::Settle`]).
    settled: bool,
    stop: Arc<AtomicBool>,
}

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
        }
    }

    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        debug!(node = self.env.me, session = %self.id, epoch = %self.epoch, "session task started");
        if !self.settled {
            // Calls wait in the mailbox meanwhile; if this fails they are
            // dropped unanswered (never run) and their routers retry.
            if self.settle().await.is_err() {
                debug!(node = self.env.me, session = %self.id, "session task could not settle; stopped");
                self.env.kick.notify_one();
                return;
            }
            self.restore();
        }
        let mut lease = self.env.lease.clone();
        loop {
            let deadline = self.live.next_deadline();
            let lease_ok = self.env.lease_valid();
            // Timers fire only under a valid lease; without one, wait for the
            // next renewal instead (the reconciler may stop this task first).
            let timer = async {
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
            };
            tokio::select! {
                call = calls.recv() => {
                    let Some(call) = call else { break };
                    if call.reply.is_closed() {
                        // Its caller gave up before it was taken: never run.
                        continue;
                    }
                    if !self.env.lease_valid() || self.stop.load(Ordering::SeqCst) {
                        let _ = call.reply.send(Err(CallError::NotHere));
                        continue;
                    }
                    if let Commit::Stop(_) = self.fire_due_deadline().await {
                        let _ = call.reply.send(Err(CallError::NotHere));
                        break;
                    }
                    let (answer, stop) = self.handle(call.msg, call.key).await;
                    let _ = call.reply.send(answer);
                    if stop {
                        break;
                    }
                }
                fire = timer => {
                    if fire {
                        if let Commit::Stop(_) = self.fire_due_deadline().await {
                            break;
                        }
                    }
                }
            }
        }
        debug!(node = self.env.me, session = %self.id, "session task stopped");
        self.env.kick.notify_one();
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
        match self.live.next_deadline() {
            Some(at) if at <= ctx.now => {
                self.live.on_deadline(&ctx);
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
        match self.live.handle(&ctx, msg) {
            Err(HandlerError(message)) => {
                self.restore();
                (Err(CallError::Rejected(message)), false)
            }
            Ok(_) if query && self.live.state() != self.committed => {
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
        let state = self.live.state();
        if state == self.committed {
            return Commit::Done;
        }
        let size = state.len() + call.as_ref().map_or(0, |c| c.reply.len());
        if size > self.env.max_state_bytes {
            return Commit::Stop(CallError::StateTooLarge(size, self.env.max_state_bytes));
        }
        loop {
            let command = match &call {
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
            };
            let unknown = match self.env.proposer.propose(command).await {
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
                Ok(Err(Rejection::StaleEpoch { .. }))
                | Ok(Err(Rejection::StaleVersion { .. }))
                | Ok(Err(Rejection::DuplicateCall { .. }))
                | Ok(Err(Rejection::NoSuchSession(_))) => return Commit::Stop(CallError::NotHere),
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

    fn restore(&mut self) {
        match self.handler.start(&self.committed) {
            Ok(live) => self.live = live,
            Err(e) => warn!(session = %self.id, error = %e, "could not restore committed state"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A call's pauses double while its route stays the same, stop at the
    // cap, and start over when the session moves.
    #[test]
    fn retries_back_off_on_an_unchanged_route_only() {
        let mut backoff = RouteBackoff::default();
        let at = |owner, epoch| (Some(owner), Epoch(epoch));
        let ms = |n| Duration::from_millis(n);
        let pauses: Vec<Duration> = (0..7).map(|_| backoff.pause(at(1, 5))).collect();
        assert_eq!(
            pauses,
            [ms(2), ms(4), ms(8), ms(16), ms(32), ms(50), ms(50)]
        );
        assert_eq!(backoff.pause(at(2, 6)), ms(2), "moved: no wait");
        assert_eq!(backoff.pause(at(2, 6)), ms(4));
    }
}
