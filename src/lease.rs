//! Ownership leases: the node side (a keeper that renews with the leader) and
//! the leader side (grants and the record of when each node was last heard).
//!
//! A node records its monotonic time `t0` before it asks; a grant makes its
//! lease valid until `t0 + lease_duration`. After a lapse (or at start) a new
//! grant counts only once the node has applied the log up to the leader's
//! last log index at grant time, so a node that was cut off or restarted
//! never runs sessions from a stale view of who owns what.
//!
//! The leader grants only while a quorum acknowledged it within
//! `quorum_window` (a deposed leader cannot keep leases alive), and records
//! the time it heard each node for the failure detector.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use openraft::ServerState;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Timing;
use crate::control::{decide_grant, down_verdicts, quorum_is_fresh, Grant, GrantInputs};
use crate::model::{Detection, NodeId};
use crate::peer::{LeaseAnswer, LeaseRequest, Transport};
use crate::raft::MinosRaft;
use crate::store::StateView;
use crate::sync::Recover;

/// What the lease keeper and the leader's grant need from their node.
#[derive(Clone)]
pub(crate) struct LeaseEnv {
    pub me: NodeId,
    pub raft: MinosRaft,
    pub view: StateView,
    pub transport: Transport,
    pub timing: Timing,
    pub liveness: Liveness,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This process's random id, sent with every lease request and with
    /// the graceful stop's drain.
    pub instance: u64,
}

/// This node's ownership lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// End of validity (monotonic); `None` before the first grant.
    pub valid_until: Option<Instant>,
    /// Sessions may run only once this log index is applied locally.
    pub required_applied: u64,
}

impl Lease {
    /// True when sessions may run: the lease has not ended and the local
    /// state has caught up with the grant.
    pub fn is_valid(&self, now: Instant, applied_index: u64) -> bool {
        matches!(self.valid_until, Some(until) if now < until)
            && applied_index >= self.required_applied
    }
}

/// Leader-side record of node liveness (reset on every new term).
#[derive(Clone, Default)]
pub struct Liveness {
    inner: Arc<Mutex<LivenessInner>>,
}

#[derive(Default)]
struct LivenessInner {
    term: u64,
    last_heard: HashMap<NodeId, Instant>,
    dead: BTreeSet<NodeId>,
    wants_up: BTreeSet<NodeId>,
    /// Nodes drained by their own graceful stop, with the stopping process's
    /// instance (forgotten on an operator's drain or a new term).
    stopped: HashMap<NodeId, u64>,
}

impl Liveness {
    fn with<T>(&self, f: impl FnOnce(&mut LivenessInner) -> T) -> T {
        f(&mut self.inner.lock().recover())
    }

    /// A new leader treats every node as heard at its election time, so it
    /// waits a full node timeout before declaring anyone Down.
    pub fn start_term(&self, term: u64, nodes: impl Iterator<Item = NodeId>) {
        let now = Instant::now();
        self.with(|inner| {
            inner.term = term;
            inner.last_heard = nodes.map(|n| (n, now)).collect();
            inner.dead.clear();
            inner.wants_up.clear();
            inner.stopped.clear();
        });
    }

    /// `node` drains itself as process `instance` stops (recorded before
    /// the drain is proposed), or, with `None`, an operator drains it.
    pub fn drained(&self, node: NodeId, stopping: Option<u64>) {
        self.with(|inner| match stopping {
            Some(instance) => inner.stopped.insert(node, instance),
            None => inner.stopped.remove(&node),
        });
    }

    /// True when `node`'s last drain was the graceful stop of a process
    /// other than `instance`: the asking process started since.
    pub fn restarted_since_stop(&self, node: NodeId, instance: u64) -> bool {
        self.with(|inner| inner.stopped.get(&node).is_some_and(|i| *i != instance))
    }

    /// The process of `node` is gone (connection closed, then refused);
    /// true when that is news (it was not marked dead since last heard).
    pub fn mark_dead(&self, node: NodeId) -> bool {
        self.with(|inner| inner.dead.insert(node))
    }

    fn heard(&self, node: NodeId, wants_up: bool) {
        let now = Instant::now();
        self.with(|inner| {
            inner.last_heard.insert(node, now);
            inner.dead.remove(&node);
            if wants_up {
                inner.wants_up.insert(node);
                inner.stopped.remove(&node);
            }
        });
    }

    /// Nodes to declare Down now (dead, or silent too long), with how each
    /// was found, and nodes that asked to be Up again.
    pub fn verdicts(
        &self,
        node_timeout: std::time::Duration,
        candidates: &[NodeId],
    ) -> (Vec<(NodeId, Detection)>, Vec<NodeId>) {
        let now = Instant::now();
        self.with(|inner| {
            // A candidate never heard counts as heard now.
            for node in candidates {
                inner.last_heard.entry(*node).or_insert(now);
            }
            let down = down_verdicts(
                now,
                node_timeout,
                &inner.last_heard,
                &inner.dead,
                candidates,
            );
            let down = down
                .into_iter()
                .map(|node| {
                    let how = if inner.dead.contains(&node) {
                        Detection::ProcessGone
                    } else {
                        Detection::LeaseTimeout
                    };
                    (node, how)
                })
                .collect();
            let up = std::mem::take(&mut inner.wants_up).into_iter().collect();
            (down, up)
        })
    }

    /// Puts back a node's wish to be Up (its NodeUp could not be written).
    pub fn retry_up(&self, node: NodeId) {
        self.with(|inner| {
            inner.wants_up.insert(node);
        });
    }
}

/// A random id for this process (`LeaseEnv::instance`); the clock's
/// nanoseconds if the system has no randomness to give.
pub(crate) fn new_instance() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// Leader side: decides a lease request.
pub(crate) fn grant(env: &LeaseEnv, request: &LeaseRequest) -> LeaseAnswer {
    let (state, last_log, term) = {
        let metrics = env.raft.metrics();
        let m = metrics.borrow();
        (m.state, m.last_log_index.unwrap_or(0), m.current_term)
    };
    let inputs = GrantInputs {
        is_leader: state == ServerState::Leader,
        fresh_quorum: fresh_quorum(env),
        in_office: env.liveness.with(|inner| inner.term) == term,
        member: crate::raft::node_addr(&env.raft, request.node).is_some(),
        status: env
            .view
            .read(|a| a.state.nodes.get(&request.node).map(|node| node.status)),
        fresh: request.fresh,
        restarted_since_stop: env
            .liveness
            .restarted_since_stop(request.node, request.instance),
    };
    match decide_grant(&inputs) {
        Grant::Refuse(reason) => {
            env.metrics.lease_denied(reason);
            LeaseAnswer {
                granted: false,
                leader_last_log: 0,
                reason: Some(reason.into()),
            }
        }
        Grant::Grant { wants_up } => {
            env.metrics.lease_grants.inc();
            env.liveness.heard(request.node, wants_up);
            LeaseAnswer {
                granted: true,
                leader_last_log: last_log,
                reason: None,
            }
        }
    }
}

/// True when a quorum of voters acknowledged this node's AppendEntries
/// within the quorum window (the rule of lease grants and of readiness).
pub(crate) fn fresh_quorum(env: &LeaseEnv) -> bool {
    let voters = crate::raft::voters(&env.raft);
    let acked = env.transport.clock.quorum_acked_at(env.me, &voters);
    quorum_is_fresh(acked, Instant::now(), env.timing.quorum_window)
}

/// Node side: renews this node's lease every `lease_interval`, and at once
/// when the leader changes.
pub(crate) async fn keep_lease(env: Arc<LeaseEnv>, lease: watch::Sender<Lease>) {
    let mut fresh = true;
    let mut metrics = env.raft.metrics();
    let mut ticker = tokio::time::interval(env.timing.lease_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_leader = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = metrics.changed() => {
                if changed.is_err() { return; }
                let leader = metrics.borrow_and_update().current_leader;
                if leader == last_leader { continue; }
                last_leader = leader;
            }
        }
        let Some(leader) = env.raft.metrics().borrow().current_leader else {
            continue;
        };
        let request = LeaseRequest {
            node: env.me,
            fresh,
            instance: env.instance,
        };
        let t0 = Instant::now();
        let answer = if leader == env.me {
            Some(grant(&env, &request))
        } else if let Some(addr) = crate::raft::node_addr(&env.raft, leader) {
            env.transport
                .lease(leader, &addr, &request, env.timing.lease_duration / 2)
                .await
                .ok()
        } else {
            None
        };
        let Some(answer) = answer.filter(|a| a.granted) else {
            continue;
        };
        fresh = false;
        let now = Instant::now();
        lease.send_modify(|current| {
            // Only a lapse in time resets the catch-up requirement; a lease that
            // is still catching up keeps its (older, smaller) target.
            let lapsed = !matches!(current.valid_until, Some(until) if now < until);
            current.valid_until = Some(t0 + env.timing.lease_duration);
            if lapsed {
                current.required_applied = answer.leader_last_log;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_graceful_stop_of_another_process_counts_as_a_restart() {
        let liveness = Liveness::default();
        assert!(!liveness.restarted_since_stop(2, 7), "never stopped");
        liveness.drained(2, Some(7));
        assert!(
            !liveness.restarted_since_stop(2, 7),
            "the stopping process itself"
        );
        assert!(
            liveness.restarted_since_stop(2, 8),
            "a process started since"
        );
        assert!(!liveness.restarted_since_stop(3, 8), "another node");
        liveness.drained(2, None);
        assert!(
            !liveness.restarted_since_stop(2, 8),
            "an operator's drain is kept across restarts' renewals"
        );
        liveness.drained(2, Some(7));
        liveness.start_term(9, [1, 2, 3].into_iter());
        assert!(
            !liveness.restarted_since_stop(2, 8),
            "forgotten by a new term"
        );
    }
}
