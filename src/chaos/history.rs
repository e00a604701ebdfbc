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

use serde::{Deserialize, Serialize};

use crate::client::ClientError;
use crate::model::NodeId;
use crate::runtime::CallReply;

/// What a request asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// `{"op":"append","field":"log","value":V}` with a unique `V`.
    Append(String),
    /// `{"op":"get"}`.
    Read,
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
                };
                format!("ok owner {owner} epoch {epoch}: {seen}")
            }
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::Unknown(why) => format!("unknown: {why}"),
        };
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
        Err(ClientError::Api { status, code, .. }) => {
            let definite = (400..500).contains(&status)
                || (status == 503 && (code == "unavailable" || code == "no_quorum"));
            let why = format!("{status} {code}");
            if definite {
                Outcome::Failed(why)
            } else {
                Outcome::Unknown(why)
            }
        }
        Err(ClientError::Transport { source, .. }) if source.is_connect() => {
            Outcome::Failed(format!("not sent: {source}"))
        }
        Err(e) => Outcome::Unknown(e.to_string()),
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
