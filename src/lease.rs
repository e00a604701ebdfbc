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
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::{NodeId, NodeStatus};
use crate::node::Core;

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

/// A node asks the leader for a lease.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// The asking node.
    pub node: NodeId,
    /// True on the first request after the process started.
    pub fresh: bool,
}

/// The leader's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaseAnswer {
    /// Whether the lease was granted.
    pub granted: bool,
    /// The leader's last log index at grant time.
    pub leader_last_log: u64,
    /// Why it was refused.
    pub reason: Option<String>,
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
}

impl Liveness {
    fn with<T>(&self, f: impl FnOnce(&mut LivenessInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
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
        });
    }

    /// The process of `node` is gone (connection closed, then refused).
    pub fn mark_dead(&self, node: NodeId) {
        self.with(|inner| {
            inner.dead.insert(node);
        });
    }

    fn heard(&self, node: NodeId, wants_up: bool) {
        let now = Instant::now();
        self.with(|inner| {
            inner.last_heard.insert(node, now);
            inner.dead.remove(&node);
            if wants_up {
                inner.wants_up.insert(node);
            }
        });
    }

    /// Nodes to declare Down now (silent too long or dead), and nodes that
    /// asked to be Up again.
    pub fn verdicts(
        &self,
        node_timeout: std::time::Duration,
        candidates: impl Iterator<Item = NodeId>,
    ) -> (Vec<NodeId>, Vec<NodeId>) {
        let now = Instant::now();
        self.with(|inner| {
            let mut down = Vec::new();
            for node in candidates {
                let heard = *inner.last_heard.entry(node).or_insert(now);
                if inner.dead.contains(&node) || now.duration_since(heard) > node_timeout {
                    down.push(node);
                }
            }
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

/// Leader side: decides a lease request.
pub fn grant(core: &Core, request: &LeaseRequest) -> LeaseAnswer {
    let refuse = |reason: &str| LeaseAnswer {
        granted: false,
        leader_last_log: 0,
        reason: Some(reason.into()),
    };
    let (state, last_log, term) = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (m.state, m.last_log_index.unwrap_or(0), m.current_term)
    };
    if state != ServerState::Leader {
        return refuse("not the leader");
    }
    let voters = crate::raft::voters(&core.raft);
    let fresh_quorum = core
        .transport
        .clock
        .quorum_acked_at(core.me, &voters)
        .is_some_and(|at| at.elapsed() <= core.timing.quorum_window);
    if !fresh_quorum {
        return refuse("leader has not heard from a quorum recently");
    }
    if core.liveness.with(|inner| inner.term) != term {
        return refuse("leader is still taking office");
    }
    if core.node_addr(request.node).is_none() {
        return refuse("not a member of the cluster");
    }
    let status = core.view.read(|applied| {
        applied
            .state
            .nodes
            .get(&request.node)
            .map(|node| node.status)
    });
    let wants_up = match status {
        Some(NodeStatus::Down) => true,
        Some(NodeStatus::Draining) => request.fresh,
        _ => false,
    };
    core.liveness.heard(request.node, wants_up);
    LeaseAnswer {
        granted: true,
        leader_last_log: last_log,
        reason: None,
    }
}

/// Node side: renews this node's lease every `lease_interval`, and at once
/// when the leader changes.
pub async fn keep_lease(core: Arc<Core>, lease: watch::Sender<Lease>) {
    let mut fresh = true;
    let mut metrics = core.raft.metrics();
    let mut ticker = tokio::time::interval(core.timing.lease_interval);
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
        let Some(leader) = core.raft.metrics().borrow().current_leader else {
            continue;
        };
        let request = LeaseRequest {
            node: core.me,
            fresh,
        };
        let t0 = Instant::now();
        let answer = if leader == core.me {
            Some(grant(&core, &request))
        } else if let Some(addr) = core.node_addr(leader) {
            core.transport
                .post_json::<_, LeaseAnswer>(
                    leader,
                    &addr,
                    "/internal/lease",
                    &request,
                    core.timing.lease_duration / 2,
                )
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
            current.valid_until = Some(t0 + core.timing.lease_duration);
            if lapsed {
                current.required_applied = answer.leader_last_log;
            }
        });
    }
}
