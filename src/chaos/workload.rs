//! The workload: clients that append unique values to `kv` sessions and read
//! them back, through random nodes, each request bounded by a timeout and
//! recorded with its start, end and outcome.
//!
//! Clients of both workloads (this one and [`super::register`]) tell a
//! [`WriteTap`] about every write they are about to send and every owner
//! that answered, so that the driver can inject a fault while a write is in
//! flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::history::{classify, Op, OpKind, Outcome};
use super::rng::SplitMix64;
use crate::client::Client;
use crate::model::NodeId;

/// The field every append pushes onto.
pub const FIELD: &str = "log";

/// A write a client is about to send.
#[derive(Clone, Debug)]
pub struct WriteSent {
    /// Client that sends it.
    pub client: u32,
    /// Session it goes to.
    pub session: String,
    /// Node it is sent through.
    pub node: NodeId,
    /// What it does (`append c1-3`, `set r7-2`).
    pub what: String,
    /// True for a register workload write.
    pub register: bool,
    /// Owner that last answered a call to this session, if any did.
    pub owner: Option<NodeId>,
}

/// Where clients publish the writes they send and the owners they see.
pub struct WriteTap {
    latest: watch::Sender<Option<WriteSent>>,
    owners: Mutex<BTreeMap<String, NodeId>>,
}

impl Default for WriteTap {
    fn default() -> Self {
        Self {
            latest: watch::Sender::new(None),
            owners: Mutex::new(BTreeMap::new()),
        }
    }
}

impl WriteTap {
    /// A receiver that sees every newest write from now on.
    pub fn subscribe(&self) -> watch::Receiver<Option<WriteSent>> {
        self.latest.subscribe()
    }

    /// A client is about to send a write.
    pub fn sent(&self, client: u32, session: &str, node: NodeId, what: String, register: bool) {
        let owner = self.owner(session);
        self.latest.send_replace(Some(WriteSent {
            client,
            session: session.to_string(),
            node,
            what,
            register,
            owner,
        }));
    }

    /// `owner` answered a call to `session`.
    pub fn owner_seen(&self, session: &str, owner: NodeId) {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.get(session) != Some(&owner) {
            owners.insert(session.to_string(), owner);
        }
    }

    /// The owner that last answered a call to `session`.
    pub fn owner(&self, session: &str) -> Option<NodeId> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.get(session).copied()
    }
}

/// Shared settings of the clients.
pub struct Workload {
    /// Session ids.
    pub sessions: Vec<String>,
    /// Nodes and a client of each.
    pub nodes: Vec<(NodeId, Client)>,
    /// Start of the run: every timestamp is relative to it.
    pub t0: Instant,
    /// No request starts after this.
    pub deadline: Instant,
    /// Server-side call timeout; the client gives up one second later.
    pub request_timeout: Duration,
    /// Appends sent to each session at most (keeps states small); once a
    /// session reached it, its operations are reads.
    pub max_appends_per_session: u64,
    /// Requests per client at most.
    pub max_ops_per_client: usize,
    /// Percentage of operations that are appends.
    pub append_percent: u64,
    /// Appends sent per session so far.
    pub appends_sent: Vec<AtomicU64>,
    /// Where writes and owners are published.
    pub tap: Arc<WriteTap>,
}

impl Workload {
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_micros() as u64
    }
}

/// One client: requests back to back until the deadline or its op budget.
pub async fn client(workload: Arc<Workload>, id: u32, seed: u64) -> Vec<Op> {
    let mut rng = SplitMix64::fork(seed, 1000 + u64::from(id));
    let mut ops = Vec::new();
    let mut sent = 0u64;
    if workload.sessions.is_empty() || workload.nodes.is_empty() {
        return ops;
    }
    while Instant::now() < workload.deadline && ops.len() < workload.max_ops_per_client {
        let index = rng.below(workload.sessions.len() as u64) as usize;
        let session = &workload.sessions[index];
        let (node, client) = &workload.nodes[rng.below(workload.nodes.len() as u64) as usize];
        let append = rng.percent(workload.append_percent)
            && workload.appends_sent[index].fetch_add(1, Ordering::Relaxed)
                < workload.max_appends_per_session;
        let kind = if append {
            sent += 1;
            OpKind::Append(format!("c{id}-{sent}"))
        } else {
            OpKind::Read
        };
        let msg = match &kind {
            OpKind::Append(value) => json!({"op": "append", "field": FIELD, "value": value}),
            _ => json!({"op": "get"}),
        };
        if let OpKind::Append(value) = &kind {
            workload
                .tap
                .sent(id, session, *node, format!("append {value}"), false);
        }
        let start = Instant::now();
        let answer = tokio::time::timeout(
            workload.request_timeout + Duration::from_secs(1),
            client.call(session, &msg, Some(workload.request_timeout)),
        )
        .await
        .ok();
        let end = Instant::now();
        let outcome = classify(&kind, answer);
        if let Outcome::Ok { owner, .. } = &outcome {
            workload.tap.owner_seen(session, *owner);
        }
        let failed = !matches!(outcome, Outcome::Ok { .. });
        ops.push(Op {
            client: id,
            session: session.clone(),
            node: *node,
            kind,
            start_us: workload.micros(start),
            end_us: workload.micros(end),
            outcome,
        });
        if failed {
            // Back off a little so a dead node does not turn into a hot loop.
            let pause = Duration::from_millis(rng.between(5, 30));
            tokio::time::sleep_until((Instant::now() + pause).min(workload.deadline)).await;
        }
    }
    ops
}
