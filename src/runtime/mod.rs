//! The session runtime on every node: one task per session this node owns
//! while it holds a valid lease, and the routing of calls to the owner.
//!
//! Invariants:
//! - a task runs only while this node owns the session in the applied state,
//!   holds a valid lease, and has not released the session for a handoff;
//! - a task checks the lease again before every call, so a node resumed from
//!   a pause answers nothing after its lease ended, and it checks that the
//!   applied table still names this node and its epoch: between the apply
//!   of a move and the reconciler's next pass, a task of the old epoch
//!   answers nothing (a query answered from its state would be stale);
//! - a task answers no call before the table row it starts from is settled:
//!   unless its epoch is new to this node, it first commits a
//!   `Command::Settle` and starts from the state that returns, so no
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
//!
//! Parts: this file (tasks started and stopped by `reconcile`, releases),
//! `router` (a call's way to the owner), `task` (one session's task:
//! settle, handle, commit).

mod holds;
mod router;
mod slot;
mod start;
mod task;

use self::holds::{Holds, Pass};
use self::slot::{join_stopped, Running};

use std::collections::{BTreeMap, BTreeSet};

// Maps keyed by session id: seeded per process, far cheaper than SipHash
// on short keys (a mass failover inserts and looks up every moved id).
use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::lease::Lease;
use crate::model::{CallKey, CallRetention, Epoch, NodeId, Session, SessionId};
use crate::peer::Transport;
pub use crate::peer::{CallError, CallReply, ForwardedCall};
use crate::raft::Proposer;
use crate::store::StateView;
use crate::sync::Recover;

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
/// Sessions one incremental reconciler pass looks at, and tasks one pass
/// starts, at most; the rest wait for the next pass, after a yield. A mass
/// failover hands a survivor hundreds of thousands of sessions at once: in
/// one pass that held a worker thread (and the table's read lock, which the
/// apply of the next entries waits for) for seconds, and the node missed
/// its leader's heartbeats.
pub(crate) const PASS_CHUNK: usize = 2048;
/// How often a reconciler frozen by a test looks whether it was thawed.
const FROZEN_POLL: Duration = Duration::from_millis(5);

struct Call {
    msg: serde_json::Value,
    key: Option<CallKey>,
    reply: oneshot::Sender<Result<CallReply, CallError>>,
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
    pub metrics: Arc<crate::metrics::Metrics>,
    /// A task idle this long (no call, no timer) ends and parks its
    /// session; `None`: sessions always have a task.
    pub park_after: Option<Duration>,
    /// Session tasks alive on this node.
    pub live_tasks: Arc<std::sync::atomic::AtomicUsize>,
}

impl TaskEnv {
    fn lease_valid(&self) -> bool {
        self.lease
            .borrow()
            .is_valid(Instant::now(), self.view.applied_index())
    }
}

/// What a pass wants of each session it looked at: the row to run it
/// from (under the row's epoch), or `None` (it must not run here).
type Wanted = HashMap<SessionId, Option<Arc<Session>>>;

/// Live sessions of this node.
pub(crate) struct Runtime {
    env: TaskEnv,
    registry: crate::handler::Registry,
    transport: Transport,
    tasks: Mutex<HashMap<SessionId, Running>>,
    /// Released sessions, held back until their move away is committed.
    held: Mutex<Holds>,
    /// What the reconciler remembers between passes.
    pass: Mutex<Pass>,
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
            held: Mutex::new(Holds::default()),
            pass: Mutex::new(Pass::default()),
            stopping: AtomicBool::new(false),
            finishing: Mutex::new(HashMap::new()),
            ran: Mutex::new(HashMap::new()),
            boot_epoch: OnceLock::new(),
        })
    }

    /// Number of sessions running here (with a task, or parked).
    pub fn running(&self) -> usize {
        self.tasks.lock().recover().len()
    }

    /// Number of session tasks alive here (the running sessions not parked).
    pub fn live_tasks(&self) -> usize {
        self.env.live_tasks.load(Ordering::SeqCst)
    }

    /// Ids of the sessions running here.
    pub fn running_ids(&self) -> Vec<SessionId> {
        self.tasks.lock().recover().keys().cloned().collect()
    }

    /// Keeps the set of running tasks equal to what this node should run.
    /// A pass looks at the whole table only when something about this node
    /// changed (its lease, its status, a task ending by itself); otherwise
    /// only at the sessions the applied entries changed, so an idle node
    /// with many sessions does no work per renewal or per entry.
    pub(crate) async fn reconcile_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.env.view.subscribe();
        let mut lease = self.env.lease.clone();
        let mut kicked = true;
        loop {
            if self.transport.faults.reconcile_frozen() {
                // A test holds this node's tasks as they are; look again soon.
                tokio::select! {
                    _ = tokio::time::sleep(FROZEN_POLL) => continue,
                    _ = shutdown.changed() => break,
                }
            }
            let (wake_at, more) = self.reconcile(kicked);
            kicked = false;
            if more && !*shutdown.borrow() {
                // The rest of a large change, after the others had a turn.
                tokio::task::yield_now().await;
                continue;
            }
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = applied.changed() => {}
                _ = lease.changed() => {}
                _ = self.env.kick.notified() => kicked = true,
                _ = sleep => {}
                _ = shutdown.changed() => break,
            }
        }
        self.stop_all().await;
    }

    /// One reconciliation pass (of everything when `kicked`: a task ended by
    /// itself); returns when the next one is due at the latest, and whether
    /// work was left for the next pass ([`PASS_CHUNK`]).
    fn reconcile(&self, kicked: bool) -> (Option<Instant>, bool) {
        let now = Instant::now();
        let lease = *self.env.lease.borrow();
        let applied_index = self.env.view.applied_index();
        let mut wake_at = lease.valid_until.filter(|until| *until > now);
        let runnable = lease.is_valid(now, applied_index) && !self.stopping.load(Ordering::SeqCst);
        if runnable {
            self.boot_epoch
                .get_or_init(|| self.env.view.read(|a| a.state.last_epoch));
        }
        let mut changes = self.env.view.take_changes();
        let ours = self.ours(std::mem::take(&mut changes.sessions));
        let me_down = self.env.view.read(|a| {
            a.state.nodes.get(&self.env.me).map(|n| n.status)
                == Some(crate::model::NodeStatus::Down)
        });
        let mut pass = self.pass.lock().recover();
        let full = kicked || changes.all || pass.last != Some((runnable, me_down));
        pass.last = Some((runnable, me_down));
        let mut held = self.held.lock().recover();
        let mut later = BTreeSet::new();
        let scope: Option<BTreeSet<SessionId>> = if full {
            pass.pending.clear();
            self.env
                .view
                .read(|a| held.refresh_all(&a.state, self.env.me, now));
            None
        } else {
            let (mut ids, rest) = pass.take_chunk(ours, PASS_CHUNK);
            later = rest;
            self.env.view.read(|a| {
                ids.extend(held.expire(now));
                held.refresh(&a.state, self.env.me, now, &ids);
            });
            Some(ids)
        };
        if let Some(until) = held.next_expiry {
            wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
        }
        let wanted = self.wanted(&held, runnable, scope.as_ref());
        drop(held);
        self.stop_unwanted(&wanted, scope.is_none());
        let (waiting, deferred) = self.start_wanted(wanted, scope.as_ref());
        if !waiting.is_empty() {
            // Stopped tasks still finishing kick the reconciler when they
            // end, but look at their sessions again soon.
            pass.pending.extend(waiting);
            let soon = now + RETRY_PAUSE;
            wake_at = Some(wake_at.map_or(soon, |w| w.min(soon)));
        }
        let more = !later.is_empty() || !deferred.is_empty();
        pass.keep(later, deferred);
        (wake_at, more)
    }

    /// The changed sessions this pass must look at: those this node owns
    /// after the change, and those it runs, stops, holds or ran (the rest,
    /// in a mass failover most of what changed, wants nothing here and is
    /// skipped without a look-up). Locks in the runtime's order: tasks,
    /// finishing, held, ran.
    fn ours(&self, changed: BTreeMap<SessionId, Option<NodeId>>) -> BTreeSet<SessionId> {
        let me = Some(self.env.me);
        let tasks = self.tasks.lock().recover();
        let finishing = self.finishing.lock().recover();
        let held = self.held.lock().recover();
        let ran = self.ran.lock().recover();
        changed
            .into_iter()
            .filter(|(id, owner)| {
                *owner == me
                    || tasks.contains_key(id)
                    || finishing.contains_key(id)
                    || held.by_id.contains_key(id)
                    || ran.contains_key(id)
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// The row (whose epoch it runs under) of each session in `scope` (all
    /// when `None`: every session this node owns) that should run here,
    /// `None` for those it should not run.
    fn wanted(&self, held: &Holds, runnable: bool, scope: Option<&BTreeSet<SessionId>>) -> Wanted {
        let me = self.env.me;
        let is_held = |id: &SessionId| held.by_id.contains_key(id);
        match scope {
            // Reads every session this node owns: maybe a long time.
            None => crate::sync::heavy(|| {
                self.env.view.read(|a| {
                    crate::control::wanted_sessions(&a.state, me, runnable, is_held)
                        .into_iter()
                        .map(|(id, row)| (id, Some(row)))
                        .collect()
                })
            }),
            Some(ids) => self
                .env
                .view
                .read(|a| crate::control::wanted_among(&a.state, me, runnable, is_held, ids)),
        }
    }

    /// Stops the tasks not wanted under their epoch (or ended by
    /// themselves): all tasks on a full pass, else those `wanted` names. A
    /// task stopped here may still be committing (a lease lapse in the
    /// middle of a write): it answers no other call, and no successor
    /// starts before it is done.
    fn stop_unwanted(&self, wanted: &Wanted, full: bool) {
        let mut tasks = self.tasks.lock().recover();
        let mut finishing = self.finishing.lock().recover();
        let unwanted_epoch = |id: &SessionId, running: &Running| {
            let epoch = wanted.get(id).and_then(|row| row.as_ref()).map(|s| s.epoch);
            epoch != Some(running.epoch) || running.ended_by_itself()
        };
        let unwanted: Vec<SessionId> = if full {
            tasks
                .iter()
                .filter(|(id, running)| unwanted_epoch(id, running))
                .map(|(id, _)| id.clone())
                .collect()
        } else {
            wanted
                .keys()
                .filter(|id| tasks.get(*id).is_some_and(|r| unwanted_epoch(id, r)))
                .cloned()
                .collect()
        };
        for id in unwanted {
            if let Some(live) = tasks.remove(&id).and_then(|running| running.live) {
                debug!(node = self.env.me, session = %id, "stopping session task");
                live.stop.store(true, Ordering::SeqCst);
                finishing.insert(id, live.task);
            }
        }
        finishing.retain(|_, task| !task.is_finished());
    }

    /// Starts a task for each wanted session that has none and whose
    /// earlier task has finished, [`PASS_CHUNK`] at most. A task starts
    /// settled only under an epoch handed to this process after it could
    /// first run sessions, under which no task ran here (invariant 10).
    /// Returns the wanted sessions whose earlier task is still finishing,
    /// and those left for the next pass.
    fn start_wanted(
        &self,
        wanted: Wanted,
        scope: Option<&BTreeSet<SessionId>>,
    ) -> (Vec<SessionId>, Vec<SessionId>) {
        let boot_epoch = self.boot_epoch.get().copied().unwrap_or(Epoch(u64::MAX));
        let mut tasks = self.tasks.lock().recover();
        let finishing = self.finishing.lock().recover();
        let mut ran = self.ran.lock().recover();
        // A past run matters only while the table still shows its epoch.
        self.env.view.read(|a| {
            let current = |id: &SessionId, epoch: &Epoch| {
                a.state.sessions.get(id).is_some_and(|s| s.epoch == *epoch)
            };
            match scope {
                None => ran.retain(|id, epoch| current(id, epoch)),
                Some(ids) => {
                    for id in ids {
                        if ran.get(id).is_some_and(|epoch| !current(id, epoch)) {
                            ran.remove(id);
                        }
                    }
                }
            }
        });
        let mut waiting = Vec::new();
        let mut deferred = Vec::new();
        let mut started = 0;
        for (id, row) in wanted {
            let Some(row) = row else { continue };
            let epoch = row.epoch;
            if tasks.contains_key(&id) {
                continue;
            }
            if finishing.contains_key(&id) {
                waiting.push(id);
                continue;
            }
            if started == PASS_CHUNK {
                deferred.push(id);
                continue;
            }
            started += 1;
            let settled = epoch > boot_epoch && ran.get(&id) != Some(&epoch);
            if let Some(running) = self.start_task(&id, epoch, settled, None, Some(&row)) {
                if running.live.is_some() {
                    ran.insert(id.clone(), epoch);
                }
                tasks.insert(id, running);
            }
        }
        (waiting, deferred)
    }

    async fn stop_all(&self) {
        let drained: Vec<Running> = self
            .tasks
            .lock()
            .recover()
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
            let mut tasks = self.tasks.lock().recover();
            let mut held = self.held.lock().recover();
            let mut ran = self.ran.lock().recover();
            match sessions {
                None => {
                    self.stopping.store(true, Ordering::SeqCst);
                    tasks.drain().map(|(_, r)| r).collect()
                }
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| {
                        if let Some(epoch) = epochs.get(id) {
                            held.hold(id.clone(), *epoch, until);
                            // Taken up again here after the hold (the move
                            // did not commit in time), it settles first even
                            // if it never ran: the settle raises the version,
                            // so a handoff that commits late is skipped.
                            ran.insert(id.clone(), *epoch);
                        }
                        tasks.remove(id)
                    })
                    .collect(),
            }
        };
        join_stopped(stopped).await;
        self.env.kick.notify_one();
    }

    /// Stops every session this node owns now (after the call in hand) and
    /// holds them back until their move is committed, at most the usual
    /// hold: a drain's release, which a later undrain must be able to undo
    /// (unlike [`Runtime::release`] with `None`, which stops the node for good).
    pub(crate) async fn release_owned(&self) {
        let owned: Vec<SessionId> = self.env.view.read(|a| {
            a.state
                .sessions_owned_by(self.env.me)
                .map(|s| s.id.clone())
                .collect()
        });
        self.release(Some(&owned)).await;
    }
}
