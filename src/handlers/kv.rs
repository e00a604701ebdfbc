//! The `kv` kind: a session whose state is one JSON object, read and changed
//! with `get`, `set`, `merge` and `append`.
//!
//! It is the smallest useful handler and the one the tests and benchmarks
//! drive: every message except `get` changes the state, so every such call
//! goes through a Raft commit before it is answered. The document is always a
//! JSON object: `create` and `set` refuse anything else, so `merge` and
//! `append` always have keys to work on.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::handler::{HandlerError, SessionContext, SessionHandler};

/// Kind name under which [`Kv`] is registered.
pub const KIND: &str = "kv";

/// A JSON document session.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kv;

/// A message to a `kv` session, tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum KvMessage {
    /// `{"op":"get"}`: answers the whole document. (A struct variant, so
    /// that `deny_unknown_fields` applies to it too; serde ignores extra
    /// fields on unit variants of internally tagged enums.)
    Get {},
    /// `{"op":"set","value":{...}}`: replaces the whole document.
    Set {
        /// The new document; must be an object.
        value: Value,
    },
    /// `{"op":"merge","value":{...}}`: inserts or overwrites the given
    /// top-level keys (a shallow merge; a `null` value is stored as `null`).
    Merge {
        /// Keys to write; must be an object.
        value: Value,
    },
    /// `{"op":"append","field":F,"value":V}`: pushes `V` onto the array at
    /// `F`, creating the array when `F` is absent.
    Append {
        /// Top-level key of the array.
        field: String,
        /// Element to push.
        value: Value,
    },
}

fn expect_object(value: Value, what: &str) -> Result<Map<String, Value>, HandlerError> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(HandlerError::new(format!(
            "{what} must be a JSON object, not {}",
            json_type(&other)
        ))),
    }
}

/// The stored document as an object. Stored states come from `create` or
/// `set`, which only accept objects; anything else was written by something
/// other than this kind, and is reported rather than panicked on.
fn document(state: &mut Value) -> Result<&mut Map<String, Value>, HandlerError> {
    state
        .as_object_mut()
        .ok_or_else(|| HandlerError::new("the stored kv state is not a JSON object"))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl SessionHandler for Kv {
    type State = Value;
    type Msg = KvMessage;
    type Reply = Value;

    fn create(&self, _ctx: &SessionContext, initial: Option<Value>) -> Result<Value, HandlerError> {
        match initial {
            None => Ok(Value::Object(Map::new())),
            Some(value) => expect_object(value, "a kv state").map(Value::Object),
        }
    }

    fn is_query(&self, msg: &KvMessage) -> bool {
        matches!(msg, KvMessage::Get {})
    }

    /// A kv session has no timer.
    fn has_deadlines(&self) -> bool {
        false
    }

    fn handle(
        &self,
        _ctx: &SessionContext,
        state: &mut Value,
        msg: KvMessage,
    ) -> Result<Value, HandlerError> {
        match msg {
            KvMessage::Get {} => Ok(state.clone()),
            KvMessage::Set { value } => {
                *document(state)? = expect_object(value, "the value of set")?;
                Ok(json!({ "ok": true }))
            }
            KvMessage::Merge { value } => {
                let additions = expect_object(value, "the value of merge")?;
                document(state)?.extend(additions);
                Ok(json!({ "ok": true }))
            }
            KvMessage::Append { field, value } => {
                let entry = document(state)?
                    .entry(field.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                match entry {
                    Value::Array(items) => {
                        items.push(value);
                        Ok(json!({ "len": items.len() }))
                    }
                    other => Err(HandlerError::new(format!(
                        "field {field:?} is {}, not an array",
                        json_type(other)
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::model::{Epoch, SessionId};

    fn ctx() -> SessionContext {
        SessionContext {
            id: SessionId::new("doc").unwrap(),
            now: Utc::now(),
            owner: 1,
            epoch: Epoch(1),
            version: 0,
        }
    }

    fn message(value: Value) -> KvMessage {
        serde_json::from_value(value).expect("a valid kv message")
    }

    fn call(state: &mut Value, msg: Value) -> Result<Value, HandlerError> {
        Kv.handle(&ctx(), state, message(msg))
    }

    #[test]
    fn create_without_state_gives_an_empty_object() {
        // A session created with no state starts as `{}`.
        assert_eq!(Kv.create(&ctx(), None).unwrap(), json!({}));
    }

    #[test]
    fn create_accepts_any_object() {
        // Any object is kept as it was sent.
        let initial = json!({"a": 1, "nested": {"b": [1, 2]}});
        assert_eq!(Kv.create(&ctx(), Some(initial.clone())).unwrap(), initial);
    }

    #[test]
    fn create_rejects_non_objects() {
        // Scalars, arrays and null are refused as first states.
        for initial in [json!(null), json!(1), json!("x"), json!([1]), json!(true)] {
            let error = Kv.create(&ctx(), Some(initial.clone())).unwrap_err();
            assert!(
                error.0.contains("must be a JSON object"),
                "{initial}: {error}"
            );
        }
    }

    #[test]
    fn get_answers_the_whole_document_and_changes_nothing() {
        // `get` returns the document as stored.
        let mut state = json!({"a": 1});
        assert_eq!(
            call(&mut state, json!({"op": "get"})).unwrap(),
            json!({"a": 1})
        );
        assert_eq!(state, json!({"a": 1}));
    }

    #[test]
    fn set_replaces_the_whole_document() {
        // `set` drops the old keys and answers `{"ok": true}`.
        let mut state = json!({"a": 1, "b": 2});
        let reply = call(&mut state, json!({"op": "set", "value": {"c": 3}})).unwrap();
        assert_eq!(reply, json!({"ok": true}));
        assert_eq!(state, json!({"c": 3}));
    }

    #[test]
    fn set_rejects_a_non_object_and_keeps_the_document() {
        // A non-object value is refused; the document is untouched.
        let mut state = json!({"a": 1});
        let error = call(&mut state, json!({"op": "set", "value": [1, 2]})).unwrap_err();
        assert!(error.0.contains("an array"), "{error}");
        assert_eq!(state, json!({"a": 1}));
    }

    #[test]
    fn merge_inserts_and_overwrites_top_level_keys() {
        // `merge` is shallow: given keys replace old values whole, others stay.
        let mut state = json!({"a": 1, "b": {"x": 1}, "keep": true});
        let reply = call(
            &mut state,
            json!({"op": "merge", "value": {"a": 2, "b": {"y": 2}, "c": null}}),
        )
        .unwrap();
        assert_eq!(reply, json!({"ok": true}));
        assert_eq!(
            state,
            json!({"a": 2, "b": {"y": 2}, "c": null, "keep": true})
        );
    }

    #[test]
    fn merge_rejects_a_non_object() {
        // Merging a scalar makes no sense and is refused.
        let mut state = json!({"a": 1});
        let error = call(&mut state, json!({"op": "merge", "value": 5})).unwrap_err();
        assert!(error.0.contains("a number"), "{error}");
        assert_eq!(state, json!({"a": 1}));
    }

    #[test]
    fn append_creates_the_array_then_pushes_onto_it() {
        // The first append creates the array; each reply is the new length.
        let mut state = json!({});
        let first = call(
            &mut state,
            json!({"op": "append", "field": "log", "value": "a"}),
        );
        assert_eq!(first.unwrap(), json!({"len": 1}));
        let second = call(
            &mut state,
            json!({"op": "append", "field": "log", "value": {"b": 2}}),
        );
        assert_eq!(second.unwrap(), json!({"len": 2}));
        assert_eq!(state, json!({"log": ["a", {"b": 2}]}));
    }

    #[test]
    fn append_rejects_a_field_that_is_not_an_array() {
        // Appending to a scalar field is refused and changes nothing.
        let mut state = json!({"count": 3});
        let error = call(
            &mut state,
            json!({"op": "append", "field": "count", "value": 1}),
        )
        .unwrap_err();
        assert!(error.0.contains("\"count\" is a number"), "{error}");
        assert_eq!(state, json!({"count": 3}));
    }

    #[test]
    fn writes_to_a_stored_non_object_are_rejected() {
        // A stored state that is not an object (never produced by this kind) is
        // reported, not panicked on; `get` still answers it.
        let mut state = json!([1]);
        assert!(call(&mut state, json!({"op": "merge", "value": {}})).is_err());
        assert_eq!(call(&mut state, json!({"op": "get"})).unwrap(), json!([1]));
    }

    #[test]
    fn malformed_messages_do_not_deserialize() {
        // Unknown ops, missing fields and unknown fields are refused before the
        // handler runs (the runtime answers them as 422).
        for bad in [
            json!({"op": "delete"}),
            json!({"op": "set"}),
            json!({"op": "append", "value": 1}),
            json!({"op": "set", "value": {}, "extra": 1}),
            json!({"op": "get", "extra": 1}),
            json!({"value": {}}),
        ] {
            assert!(
                serde_json::from_value::<KvMessage>(bad.clone()).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
