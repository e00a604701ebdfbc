//! Handoffs in an in-process cluster: sessions a node released for a
//! rebalance and that come back to it soon after (their new owner crashed)
//! run again at once, not after the release hold (3 s) runs out.

use std::time::{Duration, Instant};

use minos::client::NewSession;
use minos::testkit::Cluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_handed_over_by_rebalance_come_back_at_once_when_their_new_owner_dies(
) -> Result<(), String> {
    let deadline = Duration::from_secs(10);
    let mut cluster = Cluster::start(3).await?;
    let client = cluster.client(1);
    let ids: Vec<String> = (0..30).map(|n| format!("room-{n}")).collect();
    for id in &ids {
        client
            .create_session(&NewSession {
                id: id.clone(),
                kind: None,
                state: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        client
            .call(id, &json!({"op":"append","field":"log","value":id}), None)
            .await
            .map_err(|e| e.to_string())?;
    }

    eprintln!("--- crash node 3, restart it, rebalance: nodes 1 and 2 hand sessions back to 3");
    cluster.kill(3).await;
    for id in &ids {
        cluster.await_owner(id, |n| n != 3, deadline).await?;
    }
    cluster.restart(3).await?;
    minos::testkit::await_until("node 3 to be Up again", deadline, || async {
        let view = cluster.client(1).cluster().await.ok()?;
        view.nodes
            .iter()
            .any(|n| n.id == 3 && n.status == minos::model::NodeStatus::Up)
            .then_some(())
    })
    .await?;
    let report = cluster
        .client(1)
        .rebalance()
        .await
        .map_err(|e| e.to_string())?;
    assert!(report.moved > 0, "rebalance moved nothing: {report:?}");
    let moved_to_3: Vec<String> = {
        let mut on_3 = Vec::new();
        for id in &ids {
            if cluster.await_owner(id, |_| true, deadline).await? == 3 {
                on_3.push(id.clone());
            }
        }
        on_3
    };
    assert!(!moved_to_3.is_empty(), "no session moved to node 3");

    eprintln!("--- crash node 3 at once: its sessions go back to nodes 1 and 2, which released them moments ago");
    let crashed = Instant::now();
    cluster.kill(3).await;
    for id in &moved_to_3 {
        let reply = cluster
            .client(1)
            .call(id, &json!({"op":"get"}), Some(Duration::from_millis(1500)))
            .await
            .map_err(|e| format!("{id} did not come back within 1.5 s: {e}"))?;
        assert_ne!(reply.owner, 3);
        assert_eq!(reply.reply["log"], json!([id]), "{id} lost its state");
    }
    let took = crashed.elapsed();
    eprintln!("--- {} sessions back in {took:?}", moved_to_3.len());
    cluster.shutdown().await;
    Ok(())
}

/// With no eligible node (all draining), a new session is created
/// `unplaced` and is placed and runs as soon as a node is eligible again
/// (here: a drained node that restarts becomes Up on its first lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_with_no_eligible_node_waits_unplaced_then_runs() -> Result<(), String> {
    let deadline = Duration::from_secs(10);
    let mut cluster = Cluster::start(3).await?;
    let client = cluster.client(1);
    for node in 1..=3 {
        client.drain(node).await.map_err(|e| e.to_string())?;
    }
    let created = client
        .create_session(&NewSession {
            id: "orphan".into(),
            kind: None,
            state: Some(json!({"n": 1})),
        })
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(created.owner, None);
    assert_eq!(created.status, minos::state::SessionStatus::Unplaced);

    eprintln!("--- restart node 2: it comes back Up and takes the session");
    cluster.restart(2).await?;
    let owner = cluster.await_owner("orphan", |_| true, deadline).await?;
    assert_eq!(owner, 2, "only node 2 is eligible");
    let reply = cluster
        .client(1)
        .call("orphan", &json!({"op": "get"}), Some(deadline))
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(reply.reply, json!({"n": 1}));
    let session = client
        .get_session("orphan")
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(session.status, minos::state::SessionStatus::Placed);
    cluster.shutdown().await;
    Ok(())
}
