//! Placement constraints as data: a node's labels and capacity
//! ([`NodeTraits`]) and a session's requirement ([`Requirement`]: the
//! labels its node must carry, and a label to spread its kind over).
//!
//! Pure leaf, validated once at the edge (the CLI's `--label`, the create
//! body) like the ids of `model`; the table and the log hold only valid
//! values. Both types are part of the log format (`Command::SetNodeTraits`,
//! `Command::CreateSessionPlaced`) and of the snapshot: change them only
//! with a new format version.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

/// Label keys to values (a `BTreeMap`: the same order on every node).
pub type Labels = BTreeMap<String, String>;

/// Longest label key or value, in bytes.
pub const LABEL_MAX_LEN: usize = 63;

/// Most labels a node carries or a session requires.
pub const LABELS_MAX: usize = 16;

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidLabel {
    /// `KEY=VALUE` without the `=`.
    #[error("label {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// A key or value that is empty, too long, or holds a bad character.
    #[error("label {0} {1:?} must be 1 to 63 characters of A-Z a-z 0-9 _ . / -")]
    BadName(&'static str, String),
    /// More than [`LABELS_MAX`] labels.
    #[error("at most {LABELS_MAX} labels are allowed")]
    TooMany,
}

fn check_name(what: &'static str, text: &str) -> Result<(), InvalidLabel> {
    let good = !text.is_empty()
        && text.len() <= LABEL_MAX_LEN
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-'));
    if good {
        Ok(())
    } else {
        Err(InvalidLabel::BadName(what, text.to_string()))
    }
}

/// Parses `KEY=VALUE` (the `--label` and `--require` flags).
pub fn parse_label(text: &str) -> Result<(String, String), InvalidLabel> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| InvalidLabel::NotKeyValue(text.to_string()))?;
    check_name("key", key)?;
    check_name("value", value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks every key and value of `labels`, and their number.
pub fn check_labels(labels: &Labels) -> Result<(), InvalidLabel> {
    if labels.len() > LABELS_MAX {
        return Err(InvalidLabel::TooMany);
    }
    for (key, value) in labels {
        check_name("key", key)?;
        check_name("value", value)?;
    }
    Ok(())
}

/// `k1=v1,k2=v2`: labels as the CLI and the unplaced reasons show them.
pub fn describe(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(",")
}

/// What a node tells the table about itself (`minos serve --label`,
/// `--max-sessions`), written by the node through `Command::SetNodeTraits`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTraits {
    /// Its labels.
    pub labels: Labels,
    /// Most sessions placement gives it (`None`: no limit).
    pub max_sessions: Option<u64>,
}

/// Where a session may run: on a node carrying every label of `labels`,
/// and, with `spread`, on a node carrying that label, preferring the label
/// value that holds the fewest sessions of the session's kind. The empty
/// requirement (the default) lets a session run anywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Requirement {
    /// Labels the node must carry, each with this value.
    pub labels: Labels,
    /// A label key to spread the kind's sessions over.
    pub spread: Option<String>,
}

/// `need` as a session row holds it: the empty requirement is one shared
/// value, any other its own.
pub fn share(need: &Requirement) -> Arc<Requirement> {
    static EMPTY: OnceLock<Arc<Requirement>> = OnceLock::new();
    if need.is_empty() {
        EMPTY
            .get_or_init(|| Arc::new(Requirement::default()))
            .clone()
    } else {
        Arc::new(need.clone())
    }
}

/// Reads a row's requirement through [`share`] (a restarted node's
/// unconstrained rows share one again).
pub(crate) fn shared_requirement<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Arc<Requirement>, D::Error> {
    let need = Requirement::deserialize(deserializer)?;
    Ok(share(&need))
}

impl Requirement {
    /// Checks the labels and the spread key.
    pub fn validate(&self) -> Result<(), InvalidLabel> {
        check_labels(&self.labels)?;
        match &self.spread {
            Some(key) => check_name("key", key),
            None => Ok(()),
        }
    }

    /// True for the requirement every node meets.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.spread.is_none()
    }

    /// True when a node with `labels` may run the session (capacity aside):
    /// it carries every required label and, with spread, the spread key.
    pub fn admits(&self, labels: &Labels) -> bool {
        self.labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .spread
                .as_ref()
                .is_none_or(|key| labels.contains_key(key))
    }
}

impl fmt::Display for Requirement {
    /// `pool=games` (`,spread=zone` added), or `any` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels = describe(&self.labels);
        match (&self.spread, labels.is_empty()) {
            (None, true) => f.write_str("any"),
            (None, false) => f.write_str(&labels),
            (Some(key), true) => write!(f, "a {key} label"),
            (Some(key), false) => write!(f, "{labels} and a {key} label"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_as_key_value_and_bad_ones_say_why() {
        assert_eq!(parse_label("zone=a"), Ok(("zone".into(), "a".into())));
        assert_eq!(
            parse_label("nokey"),
            Err(InvalidLabel::NotKeyValue("nokey".into()))
        );
        assert!(parse_label("=a").is_err());
        assert!(parse_label("zone=").is_err());
        assert!(parse_label("zone=a b").is_err());
        assert!(parse_label("topology.kubernetes.io/zone=eu-1a").is_ok());
    }

    #[test]
    fn a_requirement_admits_nodes_with_its_labels_and_spread_key() {
        let node: Labels = [("pool".into(), "games".into()), ("zone".into(), "a".into())].into();
        let mut need = Requirement::default();
        assert!(need.admits(&Labels::new()));
        need.labels.insert("pool".into(), "games".into());
        assert!(need.admits(&node));
        assert!(!need.admits(&Labels::new()));
        need.spread = Some("rack".into());
        assert!(!need.admits(&node));
        need.spread = Some("zone".into());
        assert!(need.admits(&node));
        assert_eq!(need.to_string(), "pool=games and a zone label");
    }
}
