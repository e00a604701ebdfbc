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
