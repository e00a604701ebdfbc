//! The seed's cluster test, as a user writes it with the test kit: a game
//! started on node 1 is served by another node after node 1 stops, with the
//! actions it had acknowledged, and no sleep anywhere.

use std::time::Duration;

use minos::client::NewSession;
use minos::testkit::Cluster;
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(10);

/// An id that placement puts on node 1 of a fresh three-node cluster, so the
/// game starts on node 1 as in the seed.
fn game_id_on_node1(prefix: &str) -> String {
    let nodes = [1, 2, 3];
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| {
            let id = minos::model::SessionId::new(id.as_str()).expect("valid id");
            minos::placement::place(&id, &nodes) == Some(1)
        })
        .expect("some id lands on node 1")
}

async fn start_game_on_node1(cluster: &Cluster, id: &str) -> Result<(), String> {
    let client = cluster.client(1);
    client
        .create_session(&NewSession {
            id: id.into(),
            kind: Some("minotaur".into()),
            state: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    for player in ["ariadne", "theseus"] {
        client
            .call(id, &json!({"op": "join", "player": player}), None)
            .await
            .map_err(|e| e.to_string())?;
        client
            .call(
                id,
                &json!({"op": "register_action", "player": player, "action": {"move": "north"}}),
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Calls the game through node 2: it must answer from another node than
/// node 1, with both actions registered before node 1 went away.
async fn assert_served_elsewhere_with_its_state(
    cluster: &Cluster,
    game: &str,
) -> Result<(), String> {
    let reply = cluster
        .client(2)
        .call(game, &json!({"op": "get_game"}), Some(DEADLINE))
        .await
        .map_err(|e| e.to_string())?;
    assert_ne!(reply.owner, 1, "the game must be served by another node");
    assert_eq!(reply.reply["id"], game);
    assert_eq!(
        reply.reply["registered_actions"]
            .as_object()
            .map(|a| a.len()),
        Some(2)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn game_session_is_restarted_on_another_node() -> Result<(), String> {
    let mut cluster = Cluster::start(3).await?;
    let game = game_id_on_node1("ABC");
    start_game_on_node1(&cluster, &game).await?;
    cluster.await_owner(&game, |n| n == 1, DEADLINE).await?;

    cluster.stop(1).await;

    assert_served_elsewhere_with_its_state(&cluster, &game).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn game_session_survives_a_crash_of_its_node() -> Result<(), String> {
    let mut cluster = Cluster::start(3).await?;
    let game = game_id_on_node1("XYZ");
    start_game_on_node1(&cluster, &game).await?;
    cluster.await_owner(&game, |n| n == 1, DEADLINE).await?;

    cluster.kill(1).await;

    assert_served_elsewhere_with_its_state(&cluster, &game).await?;
    cluster.shutdown().await;
    Ok(())
}
