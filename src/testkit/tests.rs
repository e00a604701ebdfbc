//! Crate tests that drive a node's internals (the leader's operations)
//! in an in-process cluster. They live here, on the top floor, so the
//! modules under test never import the test kit.

use std::time::Duration;

use crate::model::NodeStatus;
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
