//! Crate tests that drive a node's internals (the leader's operations)
//! in an in-process cluster. They live here, on the top floor, so the
//! modules under test never import the test kit.

use std::time::Duration;

use crate::model::{NodeId, NodeStatus};
use crate::testkit::{await_until, Cluster};

/// The graceful stop of a node's old process lands after its restarted
/// process had its first lease (its drain request was slow): the node
/// is made Up again instead of staying Draining for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_graceful_stop_does_not_leave_the_restarted_node_draining() {
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let within = Duration::from_secs(30);
    let leader = cluster.await_leader(within).await.expect("leader");
    let node = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("node");
    let old = cluster
        .node(node)
        .expect("node")
        .service()
        .lease_env
        .instance;
    cluster.restart(node).await.expect("restart");
    let status = |cluster: &Cluster| {
        cluster
            .node(leader)
            .expect("leader")
            .read_state(|s| s.nodes.get(&node).map(|n| n.status))
    };
    await_until("the restarted node Up", within, || {
        let up = status(&cluster) == Some(NodeStatus::Up);
        async move { up.then_some(()) }
    })
    .await
    .expect("restarted node Up");
    let leader_env = cluster
        .node(leader)
        .expect("leader")
        .service()
        .scheduler
        .clone();
    crate::scheduler::drain(&leader_env, node, Some(old))
        .await
        .expect("the late stop's drain");
    // (It may be Up again already: a renewal can come within
    // microseconds. Without the stop record it stays Draining.)
    await_until("the node Up again", within, || {
        let up = status(&cluster) == Some(NodeStatus::Up);
        async move { up.then_some(()) }
    })
    .await
    .expect("the restarted node made Up again after the late stop");
    cluster.shutdown().await;
}

/// A session moves away from its owner while the owner is cut off. Once
/// the owner is back (the move applied, a lease held again) but before its
/// reconciler has stopped the old task, a call that still reaches the old
/// task (forwarded by a node whose view is older) gets no answer from the
/// old epoch: a query would be answered from a state that is no longer the
/// session's. The reconciler is frozen to hold that window open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_session_moved_answers_nothing_before_it_is_stopped() {
    use crate::peer::server::PeerHandler;
    use crate::peer::{CallError, ForwardedCall};
    let timing = crate::config::Timing {
        // No rebalance moves the session back while the test looks.
        rebalance_after: Duration::from_secs(3600),
        ..Default::default()
    };
    let limits = crate::config::Limits {
        park_after: None,
        ..Default::default()
    };
    let cluster = Cluster::builder(3)
        .timing(timing)
        .limits(limits)
        .start()
        .await
        .expect("cluster");
    let within = Duration::from_secs(30);
    let leader = cluster.await_leader(within).await.expect("leader");
    let (id, old_owner) = session_on_a_follower(&cluster, leader, within).await;
    let append = serde_json::json!({"op": "append", "field": "log", "value": "a"});
    let before = cluster
        .await_call(old_owner, &id, append, |r| r.owner == old_owner, within)
        .await
        .expect("a write on the first owner");
    let session = crate::model::SessionId::new(&id).expect("id");

    cluster.freeze_reconcile(old_owner, true);
    let new_owner = move_while_cut_off(&cluster, leader, old_owner, &session, before.epoch).await;
    let old = cluster.node(old_owner).expect("old owner");
    assert!(
        old.running_sessions().contains(&session),
        "the frozen reconciler kept the old task"
    );

    let get = ForwardedCall {
        msg: serde_json::json!({"op": "get"}),
        key: None,
    };
    let answer = old.service().call(session.clone(), get).await;
    assert!(
        matches!(answer, Err(CallError::NotHere)),
        "the old task answered under epoch {} after the move: {answer:?}",
        before.epoch
    );

    cluster.freeze_reconcile(old_owner, false);
    let after = cluster
        .await_call(
            old_owner,
            &id,
            serde_json::json!({"op": "get"}),
            |r| r.epoch > before.epoch,
            within,
        )
        .await
        .expect("a read through the old owner");
    assert_eq!(after.owner, new_owner);
    cluster.shutdown().await;
}

/// Cuts `old_owner` off until the leader has moved `session` (above
/// `epoch`) away from it, heals, and waits until the old owner has applied
/// the move and holds a lease again; the new owner.
async fn move_while_cut_off(
    cluster: &Cluster,
    leader: NodeId,
    old_owner: NodeId,
    session: &crate::model::SessionId,
    epoch: crate::model::Epoch,
) -> NodeId {
    let within = Duration::from_secs(30);
    cluster.isolate(old_owner);
    let moved = |node: NodeId| {
        cluster.node(node).expect("node").read_state(|s| {
            s.sessions
                .get(session)
                .filter(|s| s.epoch > epoch)
                .and_then(|s| s.owner)
        })
    };
    let new_owner = await_until("the session to move away", within, || {
        let owner = moved(leader);
        async move { owner }
    })
    .await
    .expect("moved");
    assert_ne!(new_owner, old_owner);
    cluster.heal();
    await_until("the old owner to apply the move", within, || {
        let seen = moved(old_owner).is_some();
        async move { seen.then_some(()) }
    })
    .await
    .expect("move applied on the old owner");
    cluster
        .await_healthy(old_owner, within)
        .await
        .expect("old owner holds a lease again");
    new_owner
}

/// Creates sessions until one is owned by a node other than `leader`
/// (cutting off the leader would only add an election); its id and owner.
async fn session_on_a_follower(
    cluster: &Cluster,
    leader: NodeId,
    within: Duration,
) -> (String, NodeId) {
    let client = cluster.client(leader);
    for n in 0..30 {
        let id = format!("moved-{n}");
        let new = crate::client::NewSession {
            id: id.clone(),
            kind: None,
            state: None,
        };
        client.create_session(&new).await.expect("create");
        let owner = cluster
            .await_owner(&id, |_| true, within)
            .await
            .expect("owner");
        if owner != leader {
            return (id, owner);
        }
    }
    panic!("30 sessions, all on the leader");
}

/// A follower cut off while megabytes of entries commit catches up through
/// AppendEntries shortened to the byte budget (each accepted as a partial
/// success) and ends with the leader's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_entries_larger_than_one_append_carries() {
    let cluster = Cluster::start(3).await.expect("cluster");
    let within = Duration::from_secs(60);
    let leader = cluster.await_leader(within).await.expect("leader");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    cluster.isolate(follower);
    let client = cluster.client(leader);
    let blob = "x".repeat(100 * 1024);
    let sessions = 24;
    let bytes = sessions * blob.len() as u64;
    assert!(bytes > 8 * crate::peer::APPEND_BUDGET);
    for n in 0..sessions {
        let new = crate::client::NewSession {
            id: format!("big-{n}"),
            kind: None,
            state: Some(serde_json::json!({ "blob": blob, "n": n })),
        };
        client.create_session(&new).await.expect("create");
    }
    let last = cluster
        .node(leader)
        .expect("leader")
        .applied()
        .borrow()
        .to_owned();
    cluster.heal();
    cluster
        .await_applied(follower, last, within)
        .await
        .expect("the follower caught up");
    let rows = |node: NodeId| {
        cluster.node(node).expect("node").read_state(|s| {
            (0..sessions)
                .map(|n| {
                    let id = crate::model::SessionId::new(format!("big-{n}")).expect("id");
                    s.sessions.get(&id).map(|row| row.state.0.to_string())
                })
                .collect::<Vec<_>>()
        })
    };
    let on_follower = rows(follower);
    assert!(
        on_follower.iter().all(Option::is_some),
        "every session reached the follower"
    );
    assert_eq!(on_follower, rows(leader));
    cluster.shutdown().await;
}

/// A crashed node's sessions, more than one reconciler pass takes, all run
/// on the survivors: the passes that follow pick up the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_larger_than_a_reconciler_pass_runs_every_session() {
    use futures::StreamExt;
    let mut cluster = Cluster::start(3).await.expect("cluster");
    let within = Duration::from_secs(120);
    let leader = cluster.await_leader(within).await.expect("leader");
    let total = 3 * crate::runtime::PASS_CHUNK + 1200;
    let client = cluster.client(leader);
    let failed = futures::stream::iter(0..total)
        .map(|n| {
            let client = client.clone();
            async move {
                let new = crate::client::NewSession {
                    id: format!("many-{n}"),
                    kind: None,
                    state: None,
                };
                client.create_session(&new).await.is_err()
            }
        })
        .buffer_unordered(32)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "creates failed");
    let owned = |cluster: &Cluster, node: NodeId| {
        cluster.node(leader).expect("leader").read_state(|s| {
            s.sessions
                .values()
                .filter(|s| s.owner == Some(node))
                .count()
        })
    };
    let victim = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let on_victim = owned(&cluster, victim);
    assert!(
        on_victim > crate::runtime::PASS_CHUNK,
        "the victim owns {on_victim} sessions, no more than one pass takes"
    );
    cluster.kill(victim).await;
    let survivors: Vec<NodeId> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != victim)
        .collect();
    await_until("every session running on the survivors", within, || {
        let running: usize = survivors
            .iter()
            .map(|id| cluster.node(*id).map_or(0, |n| n.running_sessions().len()))
            .sum();
        let done = running == total && owned(&cluster, victim) == 0;
        async move { done.then_some(()) }
    })
    .await
    .expect("all running");
    cluster.shutdown().await;
}
