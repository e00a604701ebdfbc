//! The external handler protocol's bodies (docs/external-handlers.md), as
//! pure functions: the request for each op, the checks on each answer, and
//! the envelope minos commits (`{"state": S, "deadline": T}`).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::handler::{Failure, SessionContext};
use crate::model::{SessionKind, StateJson};

/// What minos commits for an external kind: the app's state and its timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Envelope {
    pub(crate) state: Value,
    pub(crate) deadline: Option<DateTime<Utc>>,
}

impl Envelope {
    /// Reads a committed envelope.
    pub(crate) fn parse(state: &StateJson) -> Result<Self, String> {
        serde_json::from_str(&state.0)
            .map_err(|e| format!("stored state is not an external kind's envelope: {e}"))
    }

    /// The canonical text committed to the log.
    pub(crate) fn to_state(&self) -> StateJson {
        // An envelope of JSON values always serializes.
        StateJson(serde_json::to_string(self).unwrap_or_default().into())
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The health check.
pub(crate) fn ping(kind: &SessionKind) -> Value {
    json!({"op": "ping", "kind": kind.as_str()})
}

/// The fields every session op carries.
fn session_request(
    op: &str,
    kind: &SessionKind,
    ctx: &SessionContext,
) -> serde_json::Map<String, Value> {
    let fields = [
        ("op", Value::from(op)),
        ("kind", Value::from(kind.as_str())),
        ("session", Value::from(ctx.id.as_str())),
        ("epoch", Value::from(ctx.epoch.0)),
        ("version", Value::from(ctx.version)),
        ("owner", Value::from(ctx.owner)),
        ("now", Value::from(time(ctx.now))),
    ];
    fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// `create`: the creator's initial value.
pub(crate) fn create(kind: &SessionKind, ctx: &SessionContext, initial: Option<Value>) -> Value {
    let mut body = session_request("create", kind, ctx);
    body.insert("initial".into(), initial.unwrap_or(Value::Null));
    Value::Object(body)
}

/// `call` or `deadline` on the committed envelope (`msg` for a call).
pub(crate) fn on_state(
    kind: &SessionKind,
    ctx: &SessionContext,
    envelope: &Envelope,
    msg: Option<Value>,
) -> Value {
    let op = if msg.is_some() { "call" } else { "deadline" };
    let mut body = session_request(op, kind, ctx);
    body.insert("state".into(), envelope.state.clone());
    body.insert(
        "deadline".into(),
        envelope
            .deadline
            .map_or(Value::Null, |at| Value::String(time(at))),
    );
    if let Some(msg) = msg {
        body.insert("msg".into(), msg);
    }
    Value::Object(body)
}

/// An answer's body, as the app sent it.
#[derive(Debug, Deserialize)]
struct Answer {
    epoch: Option<u64>,
    version: Option<u64>,
    #[serde(default)]
    reply: Value,
    state: Option<Value>,
    #[serde(default)]
    deadline: Option<DateTime<Utc>>,
}

fn parse(body: &[u8]) -> Result<Answer, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        Failure::Unavailable(format!("the app's answer does not fit the protocol: {e}"))
    })
}

/// The first envelope from a `create` answer.
pub(crate) fn created(body: &[u8]) -> Result<Envelope, Failure> {
    let answer = parse(body)?;
    let state = answer
        .state
        .ok_or_else(|| Failure::Unavailable("the app's create answer has no \"state\"".into()))?;
    Ok(Envelope {
        state,
        deadline: answer.deadline,
    })
}

/// A `call` or `deadline` answer: the reply, and the new envelope (`None`:
/// unchanged). Refused unless it echoes the request's epoch and version.
pub(crate) fn answered(
    body: &[u8],
    ctx: &SessionContext,
) -> Result<(Value, Option<Envelope>), Failure> {
    let answer = parse(body)?;
    if answer.epoch != Some(ctx.epoch.0) || answer.version != Some(ctx.version) {
        return Err(Failure::Unavailable(format!(
            "the app answered for epoch {:?} version {:?}, asked for epoch {} version {}: refused",
            answer.epoch, answer.version, ctx.epoch.0, ctx.version
        )));
    }
    let envelope = answer.state.map(|state| Envelope {
        state,
        deadline: answer.deadline,
    });
    Ok((answer.reply, envelope))
}

/// A 422 answer's reason (`{"error": "why"}`), or its text.
pub(crate) fn refusal(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Refusal {
        error: String,
    }
    match serde_json::from_slice::<Refusal>(body) {
        Ok(refusal) => refusal.error,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Epoch, SessionId};

    fn ctx() -> SessionContext {
        SessionContext {
            id: SessionId::new("g1").unwrap(),
            now: DateTime::parse_from_rfc3339("2026-12-01T17:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            owner: 2,
            epoch: Epoch(7),
            version: 12,
        }
    }

    #[test]
    fn a_call_carries_the_committed_state_and_its_fence() {
        let envelope = Envelope {
            state: json!({"n": 1}),
            deadline: None,
        };
        let kind = SessionKind::new("game").unwrap();
        let body = on_state(&kind, &ctx(), &envelope, Some(json!({"add": 2})));
        assert_eq!(
            body,
            json!({"op": "call", "kind": "game", "session": "g1", "epoch": 7, "version": 12,
                   "owner": 2, "now": "2026-12-01T17:00:00.123Z", "state": {"n": 1},
                   "deadline": null, "msg": {"add": 2}})
        );
    }

    #[test]
    fn an_answer_for_another_epoch_or_version_is_refused() {
        let good = br#"{"epoch": 7, "version": 12, "reply": 3, "state": {"n": 3}}"#;
        let (reply, envelope) = answered(good, &ctx()).unwrap();
        assert_eq!(reply, json!(3));
        assert_eq!(envelope.unwrap().state, json!({"n": 3}));
        for bad in [
            &br#"{"epoch": 6, "version": 12, "reply": 3, "state": {}}"#[..],
            br#"{"epoch": 7, "version": 11, "reply": 3, "state": {}}"#,
            br#"{"reply": 3, "state": {}}"#,
            b"not json",
            b"[1]",
        ] {
            assert!(matches!(
                answered(bad, &ctx()),
                Err(Failure::Unavailable(_))
            ));
        }
    }

    #[test]
    fn an_answer_without_state_changes_nothing() {
        let read = br#"{"epoch": 7, "version": 12, "reply": {"n": 1}}"#;
        assert_eq!(answered(read, &ctx()).unwrap().1, None);
    }

    #[test]
    fn the_envelope_round_trips_with_its_deadline() {
        let envelope =
            created(br#"{"state": [1], "deadline": "2026-12-01T18:00:00+01:00"}"#).unwrap();
        let text = envelope.to_state();
        assert_eq!(
            &*text.0,
            r#"{"state":[1],"deadline":"2026-12-01T17:00:00Z"}"#
        );
        assert_eq!(Envelope::parse(&text).unwrap(), envelope);
        assert!(Envelope::parse(&StateJson("{\"n\":1}".into())).is_err());
    }

    #[test]
    fn a_refusal_gives_its_reason() {
        assert_eq!(refusal(br#"{"error": "already joined"}"#), "already joined");
        assert_eq!(refusal(b"plain"), "plain");
    }
}
