//! Placement constraints on an in-process cluster: nodes carry labels and
//! a capacity, sessions that require `pool=games` land only on the node
//! that has it, become `unplaced` with a reason when that node is killed
//! (while unconstrained ones move to the survivors, within their
//! capacity), and are placed on it again once it is back. Bad placements
//! are refused with 400. Every wait is a condition with a deadline.

use std::time::Duration;

use minos::api::PlacementView;
use minos::client::{ClientError, NewSession};
use minos::labels::NodeTraits;
use minos::state::SessionStatus;
use minos::testkit::{await_until, Cluster};
use tracing::info;

const DEADLINE: Duration = Duration::from_secs(20);

fn traits(labels: &[(&str, &str)], max_sessions: Option<u64>) -> NodeTraits {
    NodeTraits {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        max_sessions,
    }
}

fn new_session(id: &str) -> NewSession {
    NewSession {
        id: id.into(),
        kind: Some("kv".into()),
        state: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constrained_sessions_wait_unplaced_for_a_fitting_node() -> Result<(), String> {
    let mut cluster = Cluster::builder(3)
        .traits(1, traits(&[("zone", "a")], Some(4)))
        .traits(2, traits(&[("zone", "b"), ("pool", "games")], None))
        .traits(3, traits(&[("zone", "c")], None))
        .start()
        .await?;
    let client = cluster.client(1);

    info!("--- every node's labels reach the table");
    await_until("labels in /v1/cluster", DEADLINE, || {
        let client = client.clone();
        async move {
            let view = client.cluster().await.ok()?;
            let node = |id| view.nodes.iter().find(|n| n.id == id);
            let games = node(2)?.labels.get("pool").map(String::as_str) == Some("games");
            (games && node(1)?.max_sessions == Some(4) && node(3)?.labels.len() == 1).then_some(())
        }
    })
    .await?;

    info!("--- constrained sessions land on node 2 only");
    let games = PlacementView {
        labels: [("pool".to_string(), "games".to_string())].into(),
        spread: None,
    };
    for n in 0..4 {
        let created = client
            .create_session_placed(&new_session(&format!("g{n}")), &games)
            .await
            .map_err(|e| format!("create g{n}: {e}"))?;
        assert_eq!(created.owner, Some(2), "{created:?}");
        assert_eq!(created.placement.as_ref(), Some(&games));
    }
    for n in 0..6 {
        client
            .create_session(&new_session(&format!("p{n}")))
            .await
            .map_err(|e| format!("create p{n}: {e}"))?;
    }
    cluster
        .await_owner("g0", |owner| owner == 2, DEADLINE)
        .await?;

    info!("--- kill node 2: the constrained sessions are unplaced, with a reason");
    cluster.kill(2).await;
    for n in 0..4 {
        let id = format!("g{n}");
        let session = await_until(&format!("{id} unplaced"), DEADLINE, || {
            let (client, id) = (client.clone(), id.clone());
            async move {
                let s = client.get_session(&id).await.ok()?;
                (s.status == SessionStatus::Unplaced).then_some(s)
            }
        })
        .await?;
        assert_eq!(session.owner, None);
        assert_eq!(
            session.unplaced.as_deref(),
            Some("no Up node has pool=games")
        );
    }
    // The unconstrained sessions moved, node 1 within its capacity of 4.
    let view = await_until("node 2's plain sessions moved", DEADLINE, || {
        let client = client.clone();
        async move {
            let view = client.cluster().await.ok()?;
            let unplaced = view.by_status.get("unplaced").copied().unwrap_or(0);
            let moving = view.by_status.get("moving").copied().unwrap_or(0);
            (unplaced == 4 && moving == 0).then_some(view)
        }
    })
    .await?;
    let node1 = view.nodes.iter().find(|n| n.id == 1).ok_or("no node 1")?;
    assert!(node1.sessions <= 4, "node 1 holds {} > 4", node1.sessions);

    info!("--- node 2 returns: they are placed on it again");
    cluster.restart(2).await?;
    for n in 0..4 {
        cluster
            .await_owner(&format!("g{n}"), |owner| owner == 2, DEADLINE)
            .await?;
    }
    let session = client.get_session("g0").await.map_err(|e| e.to_string())?;
    assert_eq!((session.owner, session.unplaced), (Some(2), None));

    info!("--- a bad placement is refused with 400");
    let bad = PlacementView {
        labels: [("pool".to_string(), "no games".to_string())].into(),
        spread: None,
    };
    match client
        .create_session_placed(&new_session("bad"), &bad)
        .await
    {
        Err(ClientError::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (400, "invalid_placement"))
        }
        other => return Err(format!("bad placement answered {other:?}")),
    }
    cluster.shutdown().await;
    Ok(())
}

/// The automatic rebalance after a node returns makes at most
/// `rebalance_moves_per_sec` moves a second: its moves come in entries of
/// at most that many, each following the one before by at least its share
/// of a second, and every session still ends on its placement choice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automatic_rebalance_is_rate_bounded() -> Result<(), String> {
    const PER_SEC: usize = 4;
    let timing = minos::config::Timing {
        rebalance_after: Duration::from_millis(300),
        rebalance_moves_per_sec: PER_SEC as u32,
        ..Default::default()
    };
    let mut cluster = Cluster::builder(3).timing(timing).start().await?;
    let client = cluster.client(1);
    let ids: Vec<String> = (0..24).map(|n| format!("r{n}")).collect();
    for id in &ids {
        client
            .create_session(&new_session(id))
            .await
            .map_err(|e| format!("create {id}: {e}"))?;
    }
    let home: Vec<&String> = ids
        .iter()
        .filter(|id| {
            let id = minos::model::SessionId::new(id.as_str()).expect("id");
            minos::placement::place(&id, &[1, 2, 3]) == Some(3)
        })
        .collect();
    assert!(
        home.len() > PER_SEC,
        "only {} sessions on node 3",
        home.len()
    );
    let after = client
        .events(0, 1000)
        .await
        .map_err(|e| e.to_string())?
        .next;

    info!("--- node 3 dies and returns; its sessions come back at {PER_SEC}/s");
    cluster.kill(3).await;
    await_until("node 3's sessions moved", DEADLINE, || {
        let client = client.clone();
        async move {
            let view = client.cluster().await.ok()?;
            let node3 = view.nodes.iter().find(|n| n.id == 3)?;
            (node3.sessions == 0).then_some(())
        }
    })
    .await?;
    cluster.restart(3).await?;
    for id in &home {
        cluster
            .await_owner(id, |owner| owner == 3, DEADLINE)
            .await?;
    }
    let events = client
        .events(after, 1000)
        .await
        .map_err(|e| e.to_string())?;
    let mut entries: std::collections::BTreeMap<u64, (chrono::DateTime<chrono::Utc>, usize)> =
        Default::default();
    for event in &events.events {
        if event.placement.reason == minos::model::MoveReason::Rebalance {
            entries
                .entry(event.placement.index)
                .or_insert((event.placement.at, 0))
                .1 += 1;
        }
    }
    let moved: usize = entries.values().map(|(_, n)| n).sum();
    assert_eq!(moved, home.len(), "{entries:?}");
    let entries: Vec<_> = entries.into_values().collect();
    for pair in entries.windows(2) {
        let ((first, count), (next, _)) = (pair[0], pair[1]);
        assert!(count <= PER_SEC, "{count} moves in one entry");
        let share = chrono::Duration::milliseconds((count * 1000 / PER_SEC) as i64 - 50);
        assert!(
            next - first >= share,
            "{entries:?}: faster than {PER_SEC}/s"
        );
    }
    cluster.shutdown().await;
    Ok(())
}
