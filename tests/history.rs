//! Placement history and watching, on real `minos serve` processes: after a
//! node is killed, each of its sessions' history shows the move with reason
//! `node_down` / `process_gone`, alike on every node; `/v1/events` lists the
//! moves and its watch stream sends them live; a session's watch stream
//! sends each committed change and ends when the session is deleted; and,
//! once the killed node is back, the leader moves its sessions back to it
//! by itself (automatic rebalance).
//!
//! Every wait is a condition with a deadline.

#[path = "common/process.rs"]
mod process_common;

use std::time::Duration;

use minos::client::NewSession;
use minos::model::{Detection, MoveReason, NodeId};
use minos::testkit::await_until;
use minos::testkit::process::{ProcessCluster, ProcessOptions};
use process_common::BIN;
use serde_json::json;

/// Bound on waits for things that normally take well under a second.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_sessions_show_why_they_moved_on_every_node() -> Result<(), String> {
    let mut options = ProcessOptions::new(BIN);
    options.serve_args = vec!["--rebalance-after-ms".into(), "500".into()];
    let mut cluster = ProcessCluster::start(options).await?;
    let leader = cluster
        .await_leader(tokio::time::Instant::now() + DEADLINE)
        .await?;
    let victim: NodeId = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or("no follower")?;
    let client = cluster.client(leader);
    for n in 0..24 {
        client
            .create_session(&NewSession {
                id: format!("h{n}"),
                kind: Some("kv".into()),
                state: Some(json!({ "n": n })),
            })
            .await
            .map_err(|e| format!("create h{n}: {e}"))?;
    }
    let owned: Vec<String> = client
        .list_sessions(Some(victim), None, Some(100))
        .await
        .map_err(|e| e.to_string())?
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(
        owned.len() >= 2,
        "node {victim} owns {} of 24 sessions",
        owned.len()
    );
    let id = owned[0].clone();
    let created = client
        .session_history(&id)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(created.events.len(), 1, "{created:?}");
    assert_eq!(created.events[0].reason, MoveReason::Created);
    assert_eq!(created.events[0].to, Some(victim));

    // Watch the session's changes and the cluster's moves from a survivor.
    let survivor = cluster
        .ids()
        .into_iter()
        .find(|n| *n != victim && *n != leader)
        .unwrap_or(leader);
    let watcher = cluster.client(survivor);
    let (moves_tx, mut moves_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let watch_moves = tokio::spawn({
        let watcher = watcher.clone();
        async move {
            let _ = watcher
                .follow("/v1/events/watch", |event, data| {
                    moves_tx.send((event.into(), data.into())).is_ok()
                })
                .await;
        }
    });

    cluster.kill(victim).await?;
    // Every node answers the same history: moved by node_down, detected as
    // a process that is gone.
    for node in cluster.ids().into_iter().filter(|n| *n != victim) {
        let history = await_until("the move in the history", DEADLINE, || {
            let client = cluster.client(node);
            let id = id.clone();
            async move {
                let history = client.session_history(&id).await.ok()?;
                (history.events.len() == 2).then_some(history)
            }
        })
        .await?;
        let moved = &history.events[1];
        assert_eq!(moved.reason, MoveReason::NodeDown, "{history:?}");
        assert_eq!(moved.detected, Some(Detection::ProcessGone), "{history:?}");
        assert_eq!(moved.from, Some(victim));
        assert!(moved.to.is_some_and(|to| to != victim), "{history:?}");
        assert!(moved.epoch > history.events[0].epoch);
        assert!(moved.index > 0, "the log index is recorded");
    }
    // The event list and the live stream carry every one of those moves.
    let page = client.events(0, 1000).await.map_err(|e| e.to_string())?;
    for session in &owned {
        assert!(
            page.events.iter().any(
                |e| e.session.as_str() == session && e.placement.reason == MoveReason::NodeDown
            ),
            "{session} missing from /v1/events: {page:?}"
        );
    }
    let mut streamed = std::collections::BTreeSet::new();
    while streamed.len() < owned.len() {
        let (event, data) = tokio::time::timeout(DEADLINE, moves_rx.recv())
            .await
            .map_err(|_| format!("only {streamed:?} of {owned:?} streamed"))?
            .ok_or("the event stream ended")?;
        assert_eq!(event, "move", "{data}");
        let moved: serde_json::Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        if moved["reason"] == "node_down" {
            streamed.insert(moved["session"].as_str().unwrap_or_default().to_string());
        }
    }
    watch_moves.abort();

    // A session's stream: a write, then the delete ends it.
    let (changes_tx, mut changes_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let watch_one = tokio::spawn({
        let watcher = watcher.clone();
        let path = format!("/v1/sessions/{id}/watch");
        async move {
            let _ = watcher
                .follow(&path, |event, data| {
                    changes_tx.send((event.into(), data.into())).is_ok()
                })
                .await;
        }
    });
    let (event, first) = next_change(&mut changes_rx).await?;
    assert_eq!(event, "change");
    let version = first["version"].as_u64().ok_or("no version")?;
    client
        .call(&id, &json!({"op": "set", "value": {"n": 99}}), None)
        .await
        .map_err(|e| e.to_string())?;
    let (event, written) = loop {
        let (event, value) = next_change(&mut changes_rx).await?;
        if value["state"] == json!({"n": 99}) {
            break (event, value);
        }
    };
    assert_eq!(event, "change");
    assert!(written["version"].as_u64() > Some(version), "{written}");
    client
        .delete_session(&id)
        .await
        .map_err(|e| e.to_string())?;
    let (event, end) = loop {
        let (event, value) = next_change(&mut changes_rx).await?;
        if event == "end" {
            break (event, value);
        }
    };
    assert_eq!(
        (event.as_str(), end["reason"].as_str()),
        ("end", Some("deleted"))
    );
    watch_one.abort();

    // The killed node comes back; the leader moves its sessions back to it
    // by itself, recording why.
    cluster.launch(victim)?;
    cluster
        .await_healthy(victim, tokio::time::Instant::now() + DEADLINE)
        .await?;
    let back = owned[1..].to_vec();
    await_until("the automatic rebalance", DEADLINE, || {
        let client = cluster.client(leader);
        let back = back.clone();
        async move {
            for id in &back {
                let history = client.session_history(id).await.ok()?;
                let last = history.events.last()?;
                if !(last.reason == MoveReason::Rebalance && last.to == Some(victim)) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    Ok(())
}

/// The next event of a session's watch stream, as (event, JSON data).
async fn next_change(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> Result<(String, serde_json::Value), String> {
    let (event, data) = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .map_err(|_| "no change streamed")?
        .ok_or("stream ended")?;
    let value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
    Ok((event, value))
}
