//! Questions to the cluster under attack, each bounded in time: health,
//! the leader, a session's owner, sessions created and answering, and the
//! final log of a session.

use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::chaos::history::log_of;
use crate::client::{Client, NewSession};
use crate::model::NodeId;
use crate::testkit::await_until;

/// 32 bits that differ from run to run (not part of the seed's schedule).
pub(super) fn run_tag() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (nanos >> 32) ^ u64::from(std::process::id())) as u32
}

/// The owner of `session` in the table, asking the nodes briefly in turn.
pub(super) async fn session_owner(clients: &[(NodeId, Client)], session: &str) -> Option<NodeId> {
    for (_, client) in clients {
        let view = tokio::time::timeout(Duration::from_millis(300), client.get_session(session))
            .await
            .ok()
            .and_then(Result::ok);
        if let Some(owner) = view.and_then(|v| v.owner) {
            return Some(owner);
        }
    }
    None
}

/// The leader reported with the highest term, asking every node briefly.
pub(super) async fn current_leader(clients: &[(NodeId, Client)]) -> Option<NodeId> {
    let asks = clients.iter().map(|(_, client)| async move {
        tokio::time::timeout(Duration::from_millis(300), client.cluster())
            .await
            .ok()
            .and_then(Result::ok)
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .filter(|view| view.leader.is_some())
        .max_by_key(|view| view.term)
        .and_then(|view| view.leader)
}

/// Waits until every node answers `/v1/health` with 200.
pub async fn await_all_healthy(
    clients: &[(NodeId, Client)],
    timeout: Duration,
) -> Result<(), String> {
    await_until("every node to be healthy", timeout, || async {
        let asks = clients.iter().map(|(_, client)| async move {
            matches!(
                tokio::time::timeout(Duration::from_millis(500), client.health()).await,
                Ok(Ok(_))
            )
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .all(|healthy| healthy)
            .then_some(())
    })
    .await
}

/// Creates `kv` sessions `ids` (an existing one is fine).
pub(super) async fn create_sessions(
    clients: &[(NodeId, Client)],
    ids: &[String],
    timeout: Duration,
) -> Result<(), String> {
    for id in ids {
        let mut attempt = 0usize;
        await_until(&format!("session {id} to be created"), timeout, || {
            attempt += 1;
            let client = clients[attempt % clients.len()].1.clone();
            let id = id.clone();
            async move {
                let new = NewSession {
                    id,
                    kind: Some("kv".into()),
                    state: None,
                };
                match client.create_session(&new).await {
                    Ok(_) => Some(()),
                    Err(e) if e.code() == Some("exists") => Some(()),
                    Err(_) => None,
                }
            }
        })
        .await?;
    }
    Ok(())
}

/// Waits until a `get` call to `session` succeeds through some node.
pub(super) async fn await_answering(
    clients: &[(NodeId, Client)],
    session: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut attempt = 0usize;
    await_until(&format!("session {session} to answer"), timeout, || {
        attempt += 1;
        let client = clients[attempt % clients.len()].1.clone();
        async move {
            client
                .call(
                    session,
                    &json!({"op": "get"}),
                    Some(Duration::from_millis(1000)),
                )
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await
}

/// The final log of a session: a linearizable `GET /v1/sessions/{id}`.
pub(super) async fn final_log(
    clients: &[(NodeId, Client)],
    session: &str,
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0usize;
    loop {
        attempt += 1;
        let client = &clients[attempt % clients.len()].1;
        let error = match client.get_session(session).await {
            Ok(view) => return log_of(&view.state),
            Err(e) if e.code() == Some("not_found") => return Err(e.to_string()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "no final read of {session} within {timeout:?}; last error: {error}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
