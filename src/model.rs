//! Domain types shared by every layer: validated identifiers, the replicated
//! session and node records, the log command format and its outcomes.
//!
//! Everything here is plain data. Identifiers are validated once at the edge
//! (`SessionId::new`, also when deserialized) and can never be invalid inside.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

pub use crate::labels::{NodeTraits, Requirement};

/// A node of the cluster. Raft node ids, placement and ownership all use it.
pub type NodeId = u64;

/// Longest accepted session id, in bytes.
pub const SESSION_ID_MAX_LEN: usize = 128;

/// Why a session id or kind name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`SESSION_ID_MAX_LEN`].
    #[error("id is {0} bytes long; at most {SESSION_ID_MAX_LEN} are allowed")]
    TooLong(usize),
    /// The id holds a character outside `[A-Za-z0-9_.:-]`.
    #[error("id contains {0:?}; only A-Z a-z 0-9 _ . : - are allowed")]
    BadCharacter(char),
}

fn validate_name(text: &str) -> Result<(), InvalidId> {
    if text.is_empty() {
        return Err(InvalidId::Empty);
    }
    if text.len() > SESSION_ID_MAX_LEN {
        return Err(InvalidId::TooLong(text.len()));
    }
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        Some(bad) => Err(InvalidId::BadCharacter(bad)),
        None => Ok(()),
    }
}

/// Defines a validated name type (1 to 128 characters of `[A-Za-z0-9_.:-]`)
/// that serializes as a plain string and can never hold an invalid value.
/// The text is a [`SmolStr`]: up to 23 bytes it is kept inline, so the
/// table's key, its row, the owner index, the events and the runtime each
/// hold a copy of 24 bytes, and comparing two ids (a mass failover compares
/// dozens a move, descending ordered maps) reads no memory beyond the map's
/// own nodes; a longer name is shared (`Arc<str>`), a clone a reference count.
/// It (de)serializes from and to a borrowed `str`, without a `String` in
/// between.
macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(SmolStr);

        impl $name {
            #[doc = concat!("Validates `text` as a ", $what, ".")]
            pub fn new(text: impl AsRef<str>) -> Result<Self, InvalidId> {
                let text = text.as_ref();
                validate_name(text)?;
                Ok(Self(SmolStr::new(text)))
            }

            #[doc = concat!("The ", $what, " as text.")]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(text: String) -> Result<Self, InvalidId> {
                Self::new(text)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0.to_string()
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str(concat!("a ", $what))
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        $name::new(text).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(Visit)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
    };
}

validated_name!(
    /// A validated session id: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
    SessionId,
    "session id"
);

validated_name!(
    /// The name of a registered session handler kind (same alphabet as ids).
    SessionKind,
    "kind name"
);

validated_name!(
    /// A caller's idempotency key (same alphabet as ids): calls with the same
    /// key to one session take effect at most once (see [`RecordedCall`]).
    CallKey,
    "call key"
);

/// Ownership generation of a session. Epochs come from one table-wide
/// counter, so a session's epoch grows on every change of owner and is never
/// reused, even by a session deleted and created again; an update carrying
/// any other epoch is rejected (fencing).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Liveness and eligibility of a node as recorded in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Alive and eligible for new sessions.
    Up,
    /// Alive, handing its sessions over; not eligible for new ones.
    Draining,
    /// Declared dead by the leader; its sessions are moved away.
    Down,
}

/// A member of the cluster as the replicated table knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id (also its Raft id).
    pub id: NodeId,
    /// `host:port` where its HTTP API listens.
    pub addr: String,
    /// Current status.
    pub status: NodeStatus,
    /// When the status last changed (proposer's clock).
    pub since: DateTime<Utc>,
    /// Its labels and capacity, as it last told the table (`SetNodeTraits`).
    pub traits: NodeTraits,
}

/// Session state as canonical JSON text. Kept as text inside the log so the
/// binary Raft encoding never has to understand JSON. Shared, not copied: the
/// table, the owner's task and every answer that carries the state hold one
/// allocation (a clone is a reference count).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateJson(pub std::sync::Arc<str>);

impl Default for StateJson {
    fn default() -> Self {
        StateJson("".into())
    }
}

impl StateJson {
    /// Serializes a value as state.
    pub fn from_value(value: &serde_json::Value) -> Self {
        StateJson(value.to_string().into())
    }

    /// Parses the state back into a JSON value.
    pub fn to_value(&self) -> serde_json::Value {
        // The text was produced by serde_json (validated at the edge).
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Size in bytes of the JSON text.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the text is empty (never for a stored session).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for StateJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One row of the replicated session table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Session id.
    pub id: SessionId,
    /// Handler kind that runs it.
    pub kind: SessionKind,
    /// Node that runs it, `None` while no node is eligible.
    pub owner: Option<NodeId>,
    /// Ownership generation.
    pub epoch: Epoch,
    /// Number of state updates committed so far. An update names the version
    /// it was built on (compare-and-set), so a late write from an earlier
    /// task can never overwrite a newer state, even under the same epoch.
    pub version: u64,
    /// Last committed state.
    pub state: StateJson,
    /// When it was created (proposer's clock).
    pub created_at: DateTime<Utc>,
    /// When its state or owner last changed (proposer's clock).
    pub updated_at: DateTime<Utc>,
    /// The latest keyed calls that changed the state, oldest first, bounded
    /// by the [`CallRetention`] each keyed write carries. They move with the
    /// session, so any later owner answers a retry from here.
    pub calls: Vec<RecordedCall>,
    /// Its changes of owner, oldest first: the last ones, as many as the
    /// entry that recorded the newest allowed (`--history-per-session`).
    pub history: Vec<Placement>,
    /// Where it may run (empty: anywhere), given at create. Shared: every
    /// unconstrained row points at one empty requirement (8 bytes a row
    /// instead of 48; serialized as the requirement itself).
    #[serde(deserialize_with = "crate::labels::shared_requirement")]
    pub placement: std::sync::Arc<Requirement>,
}

/// A keyed call whose state change was committed, with the reply it got:
/// a retry of the same key is answered with this reply and changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedCall {
    /// The caller's key.
    pub key: CallKey,
    /// The reply, as JSON text.
    pub reply: String,
    /// When the owner handled the call (owner's clock, carried in the entry).
    pub at: DateTime<Utc>,
}

/// How many keyed calls a session keeps, and for how long. It travels in
/// every keyed write, so every node prunes the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRetention {
    /// Keep at most this many (at least 1: the newest is always kept).
    pub keep_last: u32,
    /// Drop a call older than this, in seconds, measured against the time
    /// of the entry that records a newer one.
    pub keep_for_secs: u64,
    /// Keep at most this many bytes of recorded replies (the newest is kept
    /// whatever its size).
    pub keep_bytes: u64,
}

impl Default for CallRetention {
    fn default() -> Self {
        Self {
            keep_last: 64,
            keep_for_secs: 600,
            keep_bytes: 256 * 1024,
        }
    }
}

impl RecordedCall {
    /// The call with this key among `calls`, if it is still remembered.
    pub fn find<'a>(calls: &'a [RecordedCall], key: &CallKey) -> Option<&'a RecordedCall> {
        calls.iter().find(|c| c.key == *key)
    }
}

impl Session {
    /// The recorded call with this key, if it is still remembered.
    pub fn recorded_call(&self, key: &CallKey) -> Option<&RecordedCall> {
        RecordedCall::find(&self.calls, key)
    }

    /// Appends `call` and prunes by `retention` at time `at` (pure: the
    /// state machine and the owner's task compute the same list).
    pub fn record_call(&mut self, call: RecordedCall, retention: CallRetention, at: DateTime<Utc>) {
        self.calls.push(call);
        let oldest_kept =
            at - chrono::Duration::seconds(retention.keep_for_secs.min(1 << 40) as i64);
        let newest = self.calls.len() - 1;
        let mut index = 0;
        self.calls.retain(|c| {
            let keep = index == newest || c.at >= oldest_kept;
            index += 1;
            keep
        });
        let keep_last = retention.keep_last.max(1) as usize;
        if self.calls.len() > keep_last {
            self.calls.drain(..self.calls.len() - keep_last);
        }
        let mut bytes: u64 = self.calls.iter().map(|c| c.reply.len() as u64).sum();
        while self.calls.len() > 1 && bytes > retention.keep_bytes {
            bytes -= self.calls.remove(0).reply.len() as u64;
        }
    }
}

/// One ownership change inside a [`Command::Reassign`]. It is conditional:
/// it applies only if the session is still at `from_epoch`, so a stale or
/// repeated plan is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// Session to move.
    pub id: SessionId,
    /// Epoch the planner saw; the move is skipped if it changed.
    pub from_epoch: Epoch,
    /// New owner, or `None` to leave it unplaced.
    pub to: Option<NodeId>,
}

/// One move of a handoff ([`Command::Handoff`]): a [`Move`] that also
/// needs the session's version unchanged. Its owner stopped the session
/// (released it) before the leader proposed the move, and takes it up again
/// only after committing a `Settle`, which raises the version: so a move
/// that commits late, after the owner's hold ran out, is skipped instead of
/// taking the session from an owner that serves it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffMove {
    /// The move, with the epoch the leader saw after the release.
    pub step: Move,
    /// Version the leader saw after the release.
    pub from_version: u64,
}

/// A change to the replicated table. Serialized into the log: variants may be
/// added at the end, never changed or reordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A node joins the table (or changes address) as Up.
    AddNode {
        /// Node id.
        id: NodeId,
        /// HTTP address.
        addr: String,
    },
    /// A node leaves the table; its sessions become unplaced.
    RemoveNode {
        /// Node id.
        id: NodeId,
    },
    /// The leader declares a node dead.
    NodeDown {
        /// Node id.
        id: NodeId,
    },
    /// A node is alive again and eligible.
    NodeUp {
        /// Node id.
        id: NodeId,
    },
    /// A node hands over its sessions and takes no new ones.
    Drain {
        /// Node id.
        id: NodeId,
    },
    /// A new session with its first owner (chosen by the leader).
    CreateSession {
        /// Session id.
        id: SessionId,
        /// Handler kind.
        kind: SessionKind,
        /// First state.
        state: StateJson,
        /// First owner.
        owner: Option<NodeId>,
    },
    /// The owner commits a new state; rejected unless `epoch` and `version`
    /// are current.
    UpdateState {
        /// Session id.
        id: SessionId,
        /// The writer's epoch.
        epoch: Epoch,
        /// The session version the new state was built on.
        version: u64,
        /// New state.
        state: StateJson,
    },
    /// A batch of ownership changes, each with its own condition.
    Reassign {
        /// The moves.
        moves: Vec<Move>,
    },
    /// Removes a session.
    DeleteSession {
        /// Session id.
        id: SessionId,
    },
    /// The owner settles what the table holds for its epoch: raises the
    /// version by one without changing the state, on the same condition as
    /// `UpdateState` (current epoch and version). Once it is applied, no
    /// earlier write of the same epoch whose outcome was unknown can land
    /// any more (it would carry an older version), so the state it returns
    /// is final until the owner writes again. A task answers no call until
    /// one of these has been applied (see the runtime).
    Settle {
        /// Session id.
        id: SessionId,
        /// The owner's epoch.
        epoch: Epoch,
        /// The version the owner believes current.
        version: u64,
    },
    /// `UpdateState` for a keyed call: the new state and the call's reply,
    /// recorded under its key in the same entry. Rejected as a duplicate if
    /// the session still remembers the key (it took effect already).
    UpdateStateKeyed {
        /// Session id.
        id: SessionId,
        /// The writer's epoch.
        epoch: Epoch,
        /// The session version the new state was built on.
        version: u64,
        /// New state.
        state: StateJson,
        /// The call, with its reply.
        call: RecordedCall,
        /// How many calls the session keeps.
        retention: CallRetention,
    },
    /// `Reassign` with the reason recorded in each session's placement
    /// history (what the scheduler writes).
    Relocate {
        /// The moves, each with its own condition.
        moves: Vec<Move>,
        /// Why they move.
        reason: MoveReason,
        /// How a dead owner was detected (with `NodeDown`).
        detected: Option<Detection>,
    },
    /// A node's labels and capacity (the node writes its own at start-up
    /// when the table's differ).
    SetNodeTraits {
        /// Node id.
        id: NodeId,
        /// Its labels and capacity.
        traits: NodeTraits,
    },
    /// `CreateSession` with a placement requirement, kept with the session.
    CreateSessionPlaced {
        /// Session id.
        id: SessionId,
        /// Handler kind.
        kind: SessionKind,
        /// First state.
        state: StateJson,
        /// First owner (chosen by the leader; `None`: nowhere fits).
        owner: Option<NodeId>,
        /// Where it may run.
        placement: Requirement,
    },
    /// `Relocate` of sessions their owner released (drain, rebalance):
    /// each move also needs the version the leader saw after the release.
    Handoff {
        /// The moves, each with its own condition.
        moves: Vec<HandoffMove>,
        /// Why they move.
        reason: MoveReason,
    },
}

/// A log entry's payload: the commands batched into it and the proposer's
/// wall-clock time, which `apply` uses instead of reading a clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// Format version 1 (placement history kept at [`HISTORY_KEEP`]).
    V1 {
        /// Proposer's wall-clock time.
        at: DateTime<Utc>,
        /// Commands, applied in order; each gets its own outcome.
        commands: Vec<Command>,
    },
    /// Format version 2: V1 plus the leader's bound on each session's
    /// placement history, so every node prunes alike.
    V2 {
        /// Proposer's wall-clock time.
        at: DateTime<Utc>,
        /// Commands, applied in order; each gets its own outcome.
        commands: Vec<Command>,
        /// Placement events kept per session (at least 1).
        history_keep: u32,
    },
}

/// Placement events kept per session by default (`--history-per-session`).
pub const HISTORY_KEEP: u32 = 64;

/// Why a session's owner changed (its placement history).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// The session was created (its first owner).
    Created,
    /// Its owner was declared Down.
    NodeDown,
    /// Its owner was drained by an operator.
    Drain,
    /// Its owner stopped gracefully (SIGTERM) and handed it over.
    GracefulStop,
    /// It was moved back to its placement choice.
    Rebalance,
    /// Its owner was removed from the cluster.
    NodeRemoved,
    /// It had no owner (no node was eligible) and got one.
    Placed,
    /// A move written before reasons were recorded.
    Reassign,
}

/// How the leader found a node dead (with [`MoveReason::NodeDown`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Detection {
    /// Its process was gone: its connection closed, then a new one was refused.
    ProcessGone,
    /// Nothing was heard from it for the node timeout (lease expired).
    LeaseTimeout,
}

/// One change of a session's owner, as committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Placement {
    /// Position in the table's event sequence (increases by one per event).
    pub seq: u64,
    /// Raft log index of the entry that made it.
    pub index: u64,
    /// When (the proposer's clock).
    pub at: DateTime<Utc>,
    /// The session's epoch after it.
    #[schema(value_type = u64)]
    pub epoch: Epoch,
    /// Owner before (`None`: none, or created).
    #[schema(value_type = Option<u64>)]
    pub from: Option<NodeId>,
    /// Owner after (`None`: unplaced, no node was eligible).
    #[schema(value_type = Option<u64>)]
    pub to: Option<NodeId>,
    /// Why.
    pub reason: MoveReason,
    /// How a dead owner was detected (`node_down` only, when known).
    pub detected: Option<Detection>,
}

/// What applying one command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Nothing to report.
    Done,
    /// The session as it is after the command.
    Session(Box<Session>),
    /// Moves that took effect (the others were stale and skipped).
    Moved(Vec<(SessionId, Option<NodeId>, Epoch)>),
}

/// Why a command was rejected by the state machine. Rejected commands change
/// nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The session does not exist.
    #[error("session {0} does not exist")]
    NoSuchSession(SessionId),
    /// A session with this id exists already.
    #[error("session {0} already exists")]
    SessionExists(SessionId),
    /// The writer's epoch is not the session's current epoch.
    #[error("stale epoch {given} for session {id}; current epoch is {current}")]
    StaleEpoch {
        /// Session id.
        id: SessionId,
        /// Epoch the writer carried.
        given: Epoch,
        /// Current epoch.
        current: Epoch,
    },
    /// The node is not in the table.
    #[error("node {0} is not a member")]
    NoSuchNode(NodeId),
    /// The writer built on an older state than the session's current one.
    #[error("stale version {given} for session {id}; current version is {current}")]
    StaleVersion {
        /// Session id.
        id: SessionId,
        /// Version the writer built on.
        given: u64,
        /// Current version.
        current: u64,
    },
    /// A keyed write whose key the session remembers: it took effect already.
    #[error("call {key} to session {id} took effect already")]
    DuplicateCall {
        /// Session id.
        id: SessionId,
        /// The key.
        key: CallKey,
    },
}

/// Outcome of one command.
pub type CommandResult = Result<Applied, Rejection>;

/// A fresh idempotency key: unique across processes and calls (a random
/// per-process seed, the process id, the time and a counter).
pub fn new_call_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{seed:016x}-{:x}-{nanos:x}-{count:x}", std::process::id())
}
