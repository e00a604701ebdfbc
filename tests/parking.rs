//! Parked sessions: a session with nothing to do (no call for
//! `park_after`, no timer) gives up its task and live state, keeps running
//! here in the table's eyes, and its next call starts the task again with
//! its committed state; also after a failover. A session with a timer
//! keeps its task. Every wait is a condition with a deadline.

use std::time::Duration;

use minos::client::NewSession;
use minos::config::Limits;
use minos::model::NodeId;
use minos::testkit::{await_until, Cluster};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn tasks(cluster: &Cluster) -> usize {
    (1..=3)
        .filter_map(|id: NodeId| cluster.node(id))
        .map(|node| node.session_tasks())
        .sum()
}

fn running(cluster: &Cluster) -> usize {
    (1..=3)
        .filter_map(|id: NodeId| cluster.node(id))
        .map(|node| node.running_sessions().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_sessions_park_and_their_next_call_brings_them_back() -> Result<(), String> {
    let limits = Limits {
        park_after: Some(Duration::from_millis(1000)),
        ..Limits::default()
    };
    let mut cluster = Cluster::builder(3).limits(limits).start().await?;
    let client = cluster.client(1);
    let ids: Vec<String> = (0..30).map(|n| format!("park-{n}")).collect();
    for id in &ids {
        let new = NewSession {
            id: id.clone(),
            kind: None,
            state: None,
        };
        client
            .create_session(&new)
            .await
            .map_err(|e| e.to_string())?;
    }
    await_until("every new session runs, parked", WAIT, || async {
        (running(&cluster) == ids.len() && tasks(&cluster) == 0).then_some(())
    })
    .await
    .map_err(|e| {
        format!(
            "{e}: {} running, {} tasks",
            running(&cluster),
            tasks(&cluster)
        )
    })?;

    // Right after its call a session has a task (it parks only after
    // park_after of idleness, so each look comes well before that).
    let mut seen_a_task = false;
    for id in &ids {
        let msg = json!({"op": "append", "field": "log", "value": "first"});
        client
            .call(id, &msg, None)
            .await
            .map_err(|e| e.to_string())?;
        seen_a_task |= tasks(&cluster) > 0;
    }
    assert!(seen_a_task, "a call starts a task");
    await_until("the called sessions park again", WAIT, || async {
        (tasks(&cluster) == 0).then_some(())
    })
    .await?;

    // A game has a timer: it keeps its task while parked kv sessions idle.
    let game = NewSession {
        id: "game-1".into(),
        kind: Some("minotaur".into()),
        state: None,
    };
    client
        .create_session(&game)
        .await
        .map_err(|e| e.to_string())?;
    await_until("the game has a task", WAIT, || async {
        (tasks(&cluster) == 1).then_some(())
    })
    .await?;

    // Parked sessions fail over: their next call runs on a survivor with
    // the committed state.
    let owner = cluster.await_owner(&ids[0], |_| true, WAIT).await?;
    cluster.kill(owner).await;
    let survivor = (1..=3).find(|n| *n != owner).ok_or("no survivor")?;
    for id in &ids {
        let msg = json!({"op": "append", "field": "log", "value": "second"});
        let reply = cluster
            .client(survivor)
            .call(id, &msg, Some(Duration::from_secs(10)))
            .await
            .map_err(|e| format!("{id}: {e}"))?;
        assert_ne!(reply.owner, owner);
        let got = cluster
            .client(survivor)
            .call(id, &json!({"op": "get"}), None)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(got.reply["log"], json!(["first", "second"]), "{id}");
    }
    Ok(())
}
