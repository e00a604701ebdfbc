//! The recorded history: every request the workload sent, with its start and
//! end on one monotonic clock, and what came back, classified as ok, failed
//! for certain (nothing was written), or unknown.
//!
//! Which answers are definite failures (read off `runtime.rs` and `api.rs`):
//! - 4xx: the call was refused before it ran (400 bad input, 404 no such
//!   session, 413 state too large, 422 rejected by the handler; nothing is
//!   committed in each case);
//! - 503 `unavailable`: the router answers it only when every attempt
//!   certainly did not run the call (no owner, the owner's task was absent
//!   or fenced, the forward was never delivered, or the commit found no
//!   leader, which writes nothing);
//! - 503 `no_quorum` on a call: the read barrier for an unknown session id
//!   failed before routing;
//! - a connection that could not be opened: nothing was sent.
//!
//! Everything else is unknown: 503 `outcome_unknown`, any other 5xx, a
//! connection that broke after the request was sent, and a client-side
//! timeout. An unknown append may or may not be in the final state.
//!
//! The register workload ([`super::register`]) records its `set`, `get` and
//! table reads in the same [`Op`]s, classified by the same rules.

use serde::{Deserialize, Serialize};

use crate::api::SessionView;
use crate::client::ClientError;
use crate::model::NodeId;
use crate::runtime::CallReply;

/// The key of a register session's document: `{"r": V}` holds the value V.
pub const REGISTER_KEY: &str = "r";

/// What a request asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// `{"op":"append","field":"log","value":V}` with a unique `V`.
    Append(String),
    /// `{"op":"get"}`.
    Read,
    /// Register workload: `{"op":"set","value":{"r":V}}` with a unique `V`.
    Set(String),
    /// Register workload: `{"op":"get"}`.
    Get,
    /// Register workload: the linearizable table read
    /// `GET /v1/sessions/{id}` (its `state` field).
    TableRead,
}

impl OpKind {
    /// True for the operations of the register workload.
    pub fn is_register(&self) -> bool {
        matches!(self, OpKind::Set(_) | OpKind::Get | OpKind::TableRead)
    }
}

/// A digest of a log seen by a read: its length, a hash of all its entries,
/// and its last entries (for reports). Storing whole logs for every read
/// would take gigabytes on a long run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDigest {
    /// Number of entries.
    pub len: u64,
    /// [`LogHasher`] over every entry in order.
    pub hash: u64,
    /// Up to the last three entries.
    pub tail: Vec<String>,
}

impl LogDigest {
    /// Digest of a whole log.
    pub fn of(log: &[String]) -> Self {
        let mut hasher = LogHasher::default();
        for entry in log {
            hasher.push(entry);
        }
        LogDigest {
            len: log.len() as u64,
            hash: hasher.finish(),
            tail: log[log.len().saturating_sub(3)..].to_vec(),
        }
    }
}

/// FNV-1a over the entries with a separator, so prefixes hash incrementally.
#[derive(Clone, Copy, Debug)]
pub struct LogHasher(u64);

impl Default for LogHasher {
    fn default() -> Self {
        LogHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl LogHasher {
    /// Adds one entry.
    pub fn push(&mut self, entry: &str) {
        for byte in entry.bytes().chain(std::iter::once(0xff)) {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Hash of the entries so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// What an acknowledged call returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Observed {
    /// An append answered `{"len": n}`: the value sits at position `n - 1`.
    Appended(u64),
    /// A read answered this log.
    Log(LogDigest),
    /// A register `set` answered `{"ok": true}`.
    Written,
    /// A register read saw this value (`None`: the empty first document).
    Value(Option<String>),
    /// An answer of an unexpected shape (itself reported as a violation).
    Malformed(String),
}

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Answered by the live session.
    Ok {
        /// Node that ran the session.
        owner: NodeId,
        /// Epoch it ran under.
        epoch: u64,
        /// What it answered.
        observed: Observed,
    },
    /// Certainly not applied.
    Failed(String),
    /// May or may not have been applied.
    Unknown(String),
}

/// One request of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Client that sent it.
    pub client: u32,
    /// Session id.
    pub session: String,
    /// Node the request was sent to.
    pub node: NodeId,
    /// What it asked.
    pub kind: OpKind,
    /// Start, microseconds since the run started (monotonic).
    pub start_us: u64,
    /// End, microseconds since the run started (monotonic).
    pub end_us: u64,
    /// What came back.
    pub outcome: Outcome,
}

impl Op {
    /// True when the call was acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }

    /// Owner and epoch of an acknowledged call.
    pub fn owner_epoch(&self) -> Option<(NodeId, u64)> {
        match &self.outcome {
            Outcome::Ok { owner, epoch, .. } => Some((*owner, *epoch)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.kind {
            OpKind::Append(v) => format!("append {v}"),
            OpKind::Read => "read".to_string(),
            OpKind::Set(v) => format!("set {v}"),
            OpKind::Get => "get".to_string(),
            OpKind::TableRead => "table read".to_string(),
        };
        let outcome = match &self.outcome {
            Outcome::Ok {
                owner,
                epoch,
                observed,
            } => {
                let seen = match observed {
                    Observed::Appended(n) => format!("len {n}"),
                    Observed::Log(d) => format!("log len {} ..{:?}", d.len, d.tail),
                    Observed::Malformed(m) => format!("malformed {m}"),
                    Observed::Written => "written".to_string(),
                    Observed::Value(Some(v)) => format!("value {v}"),
                    Observed::Value(None) => "value (empty document)".to_string(),
                };
                format!("ok owner {owner} epoch {epoch}: {seen}")
            }
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::Unknown(why) => format!("unknown: {why}"),
        };
        if self.kind.is_register() {
            // The register checker's failing windows list these: one line
            // each with client, node, kind and value, times and outcome.
            return write!(
                f,
                "client {:<3} node {} {:<18} start {:>10.1} ms  end {:>10.1} ms  {}",
                self.client,
                self.node,
                what,
                self.start_us as f64 / 1e3,
                self.end_us as f64 / 1e3,
                outcome
            );
        }
        write!(
            f,
            "[{:.3}s..{:.3}s] client {} via node {} {} on {}: {}",
            self.start_us as f64 / 1e6,
            self.end_us as f64 / 1e6,
            self.client,
            self.node,
            what,
            self.session,
            outcome
        )
    }
}

/// Classifies the answer to a call (`None`: the client gave up waiting).
pub fn classify(kind: &OpKind, answer: Option<Result<CallReply, ClientError>>) -> Outcome {
    let answer = match answer {
        None => return Outcome::Unknown("client timeout".into()),
        Some(answer) => answer,
    };
    match answer {
        Ok(reply) => Outcome::Ok {
            owner: reply.owner,
            epoch: reply.epoch.0,
            observed: observe(kind, &reply.reply),
        },
        Err(e) => classify_error(e),
    }
}

/// Classifies the answer to a table read `GET /v1/sessions/{id}` (`None`:
/// the client gave up waiting). `owner` is 0 when the session is unplaced.
pub fn classify_table_read(answer: Option<Result<SessionView, ClientError>>) -> Outcome {
    match answer {
        None => Outcome::Unknown("client timeout".into()),
        Some(Ok(view)) => Outcome::Ok {
            owner: view.owner.unwrap_or(0),
            epoch: view.epoch,
            observed: register_value(&view.state),
        },
        Some(Err(e)) => classify_error(e),
    }
}

/// A failed request: definite (nothing ran) or unknown, by the rules above.
fn classify_error(error: ClientError) -> Outcome {
    match error {
        ClientError::Api { status, code, .. } => {
            let definite = (400..500).contains(&status)
                || (status == 503 && (code == "unavailable" || code == "no_quorum"));
            let why = format!("{status} {code}");
            if definite {
                Outcome::Failed(why)
            } else {
                Outcome::Unknown(why)
            }
        }
        ClientError::Transport { source, .. } if source.is_connect() => {
            Outcome::Failed(format!("not sent: {source}"))
        }
        e => Outcome::Unknown(e.to_string()),
    }
}

/// Interprets a reply of the `kv` kind.
pub fn observe(kind: &OpKind, reply: &serde_json::Value) -> Observed {
    match kind {
        OpKind::Append(_) => match reply.get("len").and_then(|n| n.as_u64()) {
            Some(n) if n > 0 => Observed::Appended(n),
            _ => Observed::Malformed(reply.to_string()),
        },
        OpKind::Read => match log_of(reply) {
            Ok(log) => Observed::Log(LogDigest::of(&log)),
            Err(e) => Observed::Malformed(e),
        },
        OpKind::Set(_) => match reply.get("ok").and_then(|ok| ok.as_bool()) {
            Some(true) => Observed::Written,
            _ => Observed::Malformed(reply.to_string()),
        },
        OpKind::Get | OpKind::TableRead => register_value(reply),
    }
}

/// The value of a register document: `{}` (the first state) or `{"r": V}`
/// with a string `V`; anything else is malformed.
pub fn register_value(document: &serde_json::Value) -> Observed {
    match document.as_object() {
        Some(fields) if fields.is_empty() => Observed::Value(None),
        Some(fields) if fields.len() == 1 => match fields.get(REGISTER_KEY) {
            Some(serde_json::Value::String(value)) => Observed::Value(Some(value.clone())),
            _ => Observed::Malformed(document.to_string()),
        },
        _ => Observed::Malformed(document.to_string()),
    }
}

/// The `log` field of a `kv` document (absent means empty).
pub fn log_of(document: &serde_json::Value) -> Result<Vec<String>, String> {
    match document.get("log") {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("log entry {item} is not a string"))
            })
            .collect(),
        Some(other) => Err(format!("log is not an array: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Epoch;
    use serde_json::json;

    fn api(status: u16, code: &str) -> Option<Result<CallReply, ClientError>> {
        Some(Err(ClientError::Api {
            status,
            code: code.into(),
            message: String::new(),
        }))
    }

    #[test]
    fn definite_failures_are_refusals_and_unavailable_only() {
        let append = OpKind::Append("c1-1".into());
        for (status, code) in [
            (400, "bad_json"),
            (404, "not_found"),
            (413, "state_too_large"),
            (422, "rejected"),
            (503, "unavailable"),
            (503, "no_quorum"),
        ] {
            assert!(
                matches!(classify(&append, api(status, code)), Outcome::Failed(_)),
                "{status} {code}"
            );
        }
        for (status, code) in [(503, "outcome_unknown"), (500, "http"), (502, "http")] {
            assert!(
                matches!(classify(&append, api(status, code)), Outcome::Unknown(_)),
                "{status} {code}"
            );
        }
        assert!(matches!(classify(&append, None), Outcome::Unknown(_)));
        let decode = Some(Err(ClientError::Decode {
            addr: "x".into(),
            message: "eof".into(),
        }));
        assert!(matches!(classify(&append, decode), Outcome::Unknown(_)));
    }

    #[test]
    fn replies_are_observed() {
        let ok = Some(Ok(CallReply {
            reply: json!({"len": 3}),
            owner: 2,
            epoch: Epoch(7),
        }));
        assert_eq!(
            classify(&OpKind::Append("v".into()), ok),
            Outcome::Ok {
                owner: 2,
                epoch: 7,
                observed: Observed::Appended(3)
            }
        );
        let read = observe(&OpKind::Read, &json!({"log": ["a", "b"]}));
        assert_eq!(
            read,
            Observed::Log(LogDigest::of(&["a".into(), "b".into()]))
        );
        assert_eq!(
            observe(&OpKind::Read, &json!({})),
            Observed::Log(LogDigest::of(&[]))
        );
        assert!(matches!(
            observe(&OpKind::Read, &json!({"log": 3})),
            Observed::Malformed(_)
        ));
        assert!(matches!(
            observe(&OpKind::Append("v".into()), &json!({"ok": true})),
            Observed::Malformed(_)
        ));
    }

    #[test]
    fn register_replies_are_observed() {
        let set = OpKind::Set("r1-1".into());
        assert_eq!(observe(&set, &json!({"ok": true})), Observed::Written);
        assert!(matches!(
            observe(&set, &json!({"len": 1})),
            Observed::Malformed(_)
        ));
        assert_eq!(observe(&OpKind::Get, &json!({})), Observed::Value(None));
        assert_eq!(
            observe(&OpKind::Get, &json!({"r": "r1-1"})),
            Observed::Value(Some("r1-1".into()))
        );
        for odd in [json!({"r": 3}), json!({"r": "a", "x": 1}), json!([])] {
            assert!(
                matches!(observe(&OpKind::TableRead, &odd), Observed::Malformed(_)),
                "{odd}"
            );
        }
        let no_quorum = Some(Err(ClientError::Api {
            status: 503,
            code: "no_quorum".into(),
            message: String::new(),
        }));
        assert!(matches!(classify_table_read(no_quorum), Outcome::Failed(_)));
        assert!(matches!(classify_table_read(None), Outcome::Unknown(_)));
    }

    #[test]
    fn prefix_hashes_match_whole_log_digests() {
        let log: Vec<String> = ["a", "bc", "d"].iter().map(|s| s.to_string()).collect();
        let mut hasher = LogHasher::default();
        hasher.push("a");
        hasher.push("bc");
        assert_eq!(hasher.finish(), LogDigest::of(&log[..2]).hash);
        // The separator keeps ["ab","c"] apart from ["a","bc"].
        let other: Vec<String> = ["ab", "c"].iter().map(|s| s.to_string()).collect();
        assert_ne!(LogDigest::of(&other).hash, LogDigest::of(&log[..2]).hash);
    }
}
