//! The transport of all peer traffic: one pooled HTTP client (and one that
//! opens a fresh connection per request, for forwarded calls), the cluster
//! secret on every request, injected faults (in-process partitions for
//! tests), and the per-peer record of the last successful AppendEntries,
//! which the leader uses to know that a quorum still follows it. The raw
//! `post_*` methods are private to `peer`: every other module uses the
//! typed requests of [`super::client`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::model::{Command, CommandResult, NodeId, SessionId};
use crate::sync::Recover;

/// Faults injected by tests: peers this node must not reach (in-process
/// partitions), and a write held back so that its outcome is unknown to its
/// proposer while it may still land.
#[derive(Clone, Default)]
pub struct Faults {
    blocked: Arc<RwLock<BTreeSet<NodeId>>>,
    held: Arc<Mutex<Option<HoldRequest>>>,
    lost_replies: Arc<Mutex<BTreeSet<SessionId>>>,
    reconcile_frozen: Arc<std::sync::atomic::AtomicBool>,
}

/// A pending [`Faults::hold_next_update`]: taken by the write path.
pub(crate) struct HoldRequest {
    pub session: SessionId,
    pub release: oneshot::Receiver<()>,
    pub outcome: oneshot::Sender<Result<Vec<CommandResult>, String>>,
}

/// The test's end of a held write (`Faults::hold_next_update`, reached
/// through `testkit::Cluster::hold_next_update`).
pub struct HeldWrite {
    release: Option<oneshot::Sender<()>>,
    outcome: oneshot::Receiver<Result<Vec<CommandResult>, String>>,
}

impl HeldWrite {
    /// Sends the held write to the leader now.
    pub fn release(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }

    /// Releases the write (if not yet) and waits, up to `timeout`, for what
    /// the cluster made of it: the results of the batch's commands, or why
    /// it failed.
    pub async fn outcome(mut self, timeout: Duration) -> Result<Vec<CommandResult>, String> {
        self.release();
        match tokio::time::timeout(timeout, self.outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the held write was dropped".into()),
            Err(_) => Err(format!(
                "no held write ended within {timeout:?} (was one ever proposed?)"
            )),
        }
    }
}

impl Faults {
    /// True when traffic to `target` is cut.
    pub fn is_blocked(&self, target: NodeId) -> bool {
        self.blocked.read().recover().contains(&target)
    }

    /// Cuts (or restores) traffic to `target`.
    pub fn set_blocked(&self, target: NodeId, blocked: bool) {
        let mut set = self.blocked.write().recover();
        if blocked {
            set.insert(target);
        } else {
            set.remove(&target);
        }
    }

    /// Holds back this node's next write batch that updates `session`: its
    /// proposer is told at once that the outcome is unknown (as after a
    /// leader crash with the write in flight), and the batch goes to the
    /// leader only when the returned handle releases it. The write may then
    /// land after its proposer gave up on it.
    pub fn hold_next_update(&self, session: SessionId) -> HeldWrite {
        let (release_tx, release) = oneshot::channel();
        let (outcome, outcome_rx) = oneshot::channel();
        *self.held.lock().recover() = Some(HoldRequest {
            session,
            release,
            outcome,
        });
        HeldWrite {
            release: Some(release_tx),
            outcome: outcome_rx,
        }
    }

    /// Whether a hold is armed (a test's; never in production).
    pub(crate) fn hold_armed(&self) -> bool {
        self.held.lock().recover().is_some()
    }

    /// The pending hold, if `commands` update its session.
    pub(crate) fn take_hold(&self, commands: &[Command]) -> Option<HoldRequest> {
        let mut held = self.held.lock().recover();
        let matches = held.as_ref().is_some_and(|hold| {
            commands.iter().any(|c| {
                matches!(c, Command::UpdateState { id, .. } | Command::UpdateStateKeyed { id, .. }
                    if *id == hold.session)
            })
        });
        if matches {
            held.take()
        } else {
            None
        }
    }

    /// Loses the answer of the next call to `session` forwarded to this
    /// node: the call runs here, then the forwarding node sees the
    /// connection fail (as when this node dies after handling it).
    pub fn lose_next_call_reply(&self, session: SessionId) {
        self.lost_replies.lock().recover().insert(session);
    }

    /// True (once) when the answer of this call to `session` must be lost.
    pub(crate) fn take_lost_reply(&self, session: &SessionId) -> bool {
        self.lost_replies.lock().recover().remove(session)
    }

    /// Freezes (or thaws) this node's reconciler: while frozen it starts
    /// and stops no session task, so a task outlives its session's move
    /// (as on a busy node whose reconciler has not run yet).
    pub fn freeze_reconcile(&self, frozen: bool) {
        self.reconcile_frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }

    /// True while a test froze the reconciler (never in production).
    pub(crate) fn reconcile_frozen(&self) -> bool {
        self.reconcile_frozen
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Restores traffic to every peer.
    pub fn clear(&self) {
        self.blocked.write().recover().clear();
    }
}

/// When each peer last answered an AppendEntries successfully (time the
/// request was sent, so the record never overstates freshness).
#[derive(Clone, Default)]
pub struct PeerClock {
    acked: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl PeerClock {
    pub(super) fn record(&self, peer: NodeId, sent_at: Instant) {
        let mut acked = self.acked.lock().recover();
        let slot = acked.entry(peer).or_insert(sent_at);
        if *slot < sent_at {
            *slot = sent_at;
        }
    }

    /// The latest instant by which a majority of `voters` (this node counted
    /// as acked now) had acknowledged this node's AppendEntries.
    pub fn quorum_acked_at(&self, me: NodeId, voters: &BTreeSet<NodeId>) -> Option<Instant> {
        let now = Instant::now();
        let acked = self.acked.lock().recover();
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|v| {
                if *v == me {
                    Some(now)
                } else {
                    acked.get(v).copied()
                }
            })
            .collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[majority - 1])
    }
}

/// Shared HTTP client and fault switches used by all internal traffic.
#[derive(Clone)]
pub struct Transport {
    /// Pooled HTTP client.
    pub http: reqwest::Client,
    /// Client that opens a fresh connection for every request: used to
    /// forward calls without an idempotency key, so a crashed owner shows
    /// as "connection refused" (not delivered, safe to retry) rather than
    /// as a reset on a stale pooled connection (outcome unknown).
    pub fresh: reqwest::Client,
    /// Injected faults.
    pub faults: Faults,
    /// AppendEntries acknowledgements per peer.
    pub clock: PeerClock,
    /// The cluster secret sent on every request (`None`: insecure mode).
    secret: Option<Arc<str>>,
}

/// An internal call failed.
#[derive(Debug, thiserror::Error)]
pub enum InternalError {
    /// The peer could not be reached; the request was not delivered.
    #[error("{0} unreachable: {1}")]
    Unreachable(String, String),
    /// The request may have been delivered but no usable answer came back.
    #[error("{0}: {1}")]
    Failed(String, String),
}

impl InternalError {
    /// True when the request certainly did not reach the peer.
    pub fn not_delivered(&self) -> bool {
        matches!(self, InternalError::Unreachable(..))
    }
}

impl Transport {
    /// A transport with a fresh pooled client, sending `secret` (the
    /// cluster secret) on every request.
    pub fn new(faults: Faults, secret: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let fresh = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http,
            fresh,
            faults,
            clock: PeerClock::default(),
            secret: secret.map(Arc::from),
        }
    }

    fn authenticated(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.secret {
            Some(secret) => request.header(crate::auth::PEER_SECRET_HEADER, &**secret),
            None => request,
        }
    }

    /// Opens the never-ending presence stream of the node at `addr`.
    pub async fn presence(&self, addr: &str) -> Result<reqwest::Response, reqwest::Error> {
        let url = format!("http://{addr}{}", super::paths::PRESENCE);
        self.authenticated(self.http.get(url))
            .send()
            .await?
            .error_for_status()
    }

    /// POSTs a bincode body to `http://{addr}{path}` and decodes a bincode answer.
    pub(super) async fn post_bin<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, InternalError> {
        let body = bincode::serialize(request)
            .map_err(|e| InternalError::Failed(addr.into(), e.to_string()))?;
        let bytes = self
            .send_with(&self.http, target, addr, path, timeout, |r| {
                r.header("content-type", "application/octet-stream")
                    .body(body)
            })
            .await?;
        crate::wire::decode_bin(&bytes)
            .map_err(|e| InternalError::Failed(addr.into(), format!("bad answer: {e}")))
    }

    /// POSTs a JSON body and decodes a JSON answer.
    pub(super) async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, InternalError> {
        self.json_with(&self.http, target, addr, path, request, timeout)
            .await
    }

    /// POSTs JSON with `client` ([`Transport::http`], or [`Transport::fresh`]
    /// for a forwarded call) and decodes a JSON answer.
    pub(super) async fn json_with<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        target: NodeId,
        addr: &str,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, InternalError> {
        let bytes = self
            .send_with(client, target, addr, path, timeout, |r| r.json(request))
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| InternalError::Failed(addr.into(), format!("bad answer: {e}")))
    }

    async fn send_with(
        &self,
        client: &reqwest::Client,
        target: NodeId,
        addr: &str,
        path: &str,
        timeout: Duration,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, InternalError> {
        if self.faults.is_blocked(target) {
            return Err(InternalError::Unreachable(
                addr.into(),
                "partitioned (injected)".into(),
            ));
        }
        let request = self.authenticated(build(
            client.post(format!("http://{addr}{path}")).timeout(timeout),
        ));
        let response = request.send().await.map_err(|e| classify(addr, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| InternalError::Failed(addr.into(), e.to_string()))?;
        if !status.is_success() {
            return Err(InternalError::Failed(
                addr.into(),
                format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            ));
        }
        Ok(bytes)
    }
}

fn classify(addr: &str, e: reqwest::Error) -> InternalError {
    if e.is_connect() {
        InternalError::Unreachable(addr.into(), chain(&e))
    } else {
        InternalError::Failed(addr.into(), chain(&e))
    }
}

/// An error with its causes (`error sending request: client error
/// (SendRequest): connection closed before message completed`): reqwest's
/// own message alone does not say what happened.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        source = inner.source();
    }
    text
}
