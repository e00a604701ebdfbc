//! In-process tests of the game server: three servers in this test process,
//! each with a temp data dir and OS-chosen loopback ports, driven through
//! their game routes over real HTTP. No sleeps: every wait is a condition
//! with a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use minos::model::NodeId;
use minos::testkit::await_until;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::server::{Config, GameServer};
use minos::node::parse_peers;

const DEADLINE: Duration = Duration::from_secs(10);

/// Three game servers and the directory their data lives in.
struct Servers {
    running: BTreeMap<NodeId, GameServer>,
    _dir: tempfile::TempDir,
}

impl Servers {
    async fn start() -> Result<Servers, String> {
        let dir = tempfile::Builder::new()
            .prefix("minotaur-example-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut listeners = BTreeMap::new();
        for id in 1..=3 {
            let game = bind().await?;
            let minos = bind().await?;
            listeners.insert(id, (game, minos));
        }
        let mut peers = BTreeMap::new();
        for (id, (_, minos)) in &listeners {
            peers.insert(
                *id,
                minos.local_addr().map_err(|e| e.to_string())?.to_string(),
            );
        }
        let credentials = minos::testkit::Credentials::generate()?;
        let starts = listeners.into_iter().map(|(id, (game, minos))| {
            let config = Config::new(
                id,
                dir.path().join(format!("node{id}")),
                peers.clone(),
                credentials.security(),
            );
            async move { (id, GameServer::start(config, game, minos).await) }
        });
        let mut running = BTreeMap::new();
        for (id, started) in futures::future::join_all(starts).await {
            running.insert(id, started.map_err(|e| format!("server {id}: {e}"))?);
        }
        let servers = Servers { running, _dir: dir };
        for id in servers.running.keys() {
            let addr = servers.addr(*id);
            await_until(
                &format!("server {id} to be healthy"),
                DEADLINE,
                || async move {
                    let (status, _) = get(addr, "/health").await.ok()?;
                    (status == StatusCode::OK).then_some(())
                },
            )
            .await?;
        }
        Ok(servers)
    }

    fn addr(&self, id: NodeId) -> SocketAddr {
        self.running[&id].game_addr()
    }

    async fn kill(&mut self, id: NodeId) {
        if let Some(server) = self.running.remove(&id) {
            server.kill().await;
        }
    }

    async fn shutdown(mut self) {
        for id in self.running.keys().copied().collect::<Vec<_>>() {
            self.kill(id).await;
        }
    }
}

async fn bind() -> Result<TcpListener, String> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("a default HTTP client builds")
}

async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Value), String> {
    let response = http()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    Ok((status, response.json().await.map_err(|e| e.to_string())?))
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Result<(StatusCode, Value), String> {
    let response = http()
        .post(format!("http://{addr}{path}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    Ok((status, response.json().await.map_err(|e| e.to_string())?))
}

/// Asserts the status and returns the body.
fn expect(status: StatusCode, answer: (StatusCode, Value)) -> Value {
    assert_eq!(answer.0, status, "answer: {}", answer.1);
    answer.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_game_moves_with_its_state_when_its_server_is_killed() -> Result<(), String> {
    // A game created, joined and played through server 1's routes is served
    // by another server's route after its owner is killed, with both players
    // and both actions; the new owner is found by retrying GET with a deadline.
    let mut servers = Servers::start().await?;
    let one = servers.addr(1);

    eprintln!("--- create game `labyrinth` through server 1");
    let created = expect(
        StatusCode::CREATED,
        post(one, "/games", json!({"id": "labyrinth"})).await?,
    );
    assert_eq!(created["id"], "labyrinth");
    for player in ["ariadne", "theseus"] {
        let joined = expect(
            StatusCode::OK,
            post(one, "/games/labyrinth/join", json!({"player": player})).await?,
        );
        assert!(joined["game"]["players"].get(player).is_some(), "{joined}");
    }
    let acted = expect(
        StatusCode::OK,
        post(
            one,
            "/games/labyrinth/act",
            json!({"player": "ariadne", "action": {"move": "north"}}),
        )
        .await?,
    );
    assert_eq!(acted["registered"], 1);
    let acted = expect(
        StatusCode::OK,
        post(
            one,
            "/games/labyrinth/act",
            json!({"player": "theseus", "action": "wait"}),
        )
        .await?,
    );
    assert_eq!(acted["registered"], 2);
    let before = expect(StatusCode::OK, get(one, "/games/labyrinth").await?);
    let owner = before["owner"]
        .as_u64()
        .ok_or("the answer names an owner")?;
    let epoch = before["epoch"]
        .as_u64()
        .ok_or("the answer names an epoch")?;
    let running = servers.running[&owner].node().running_sessions();
    assert!(
        running.iter().any(|id| id.as_str() == "labyrinth"),
        "node {owner} answered for the game, so it runs it: {running:?}"
    );
    eprintln!("--- the game runs on node {owner} (epoch {epoch}); kill it");

    let survivor = *servers
        .running
        .keys()
        .find(|id| **id != owner)
        .ok_or("a survivor")?;
    // Read the game through the survivor first, as a load balancer would
    // spread requests: the survivor then holds a connection to the owner.
    let via = servers.addr(survivor);
    let seen = expect(StatusCode::OK, get(via, "/games/labyrinth").await?);
    assert_eq!(seen["owner"].as_u64(), Some(owner), "{seen}");

    servers.kill(owner).await;
    let killed_at = Instant::now();
    // GET only reads, so a 503 (the game is moving, or the call may not
    // have reached the dead owner) is safe to retry until the deadline.
    let refusals = std::sync::Mutex::new(Vec::new());
    let after = await_until(
        &format!("server {survivor} to serve the game from a new owner"),
        DEADLINE,
        || async {
            let (status, body) = get(via, "/games/labyrinth").await.ok()?;
            if status != StatusCode::OK {
                let mut refusals = refusals.lock().unwrap_or_else(|p| p.into_inner());
                refusals.push(format!("{status} {}", body["error"]["code"]));
            }
            (status == StatusCode::OK).then_some(body)
        },
    )
    .await?;
    eprintln!(
        "--- served through server {survivor} by node {} (epoch {}) {:?} after the kill; refused before: {:?}",
        after["owner"],
        after["epoch"],
        killed_at.elapsed(),
        refusals.lock().unwrap_or_else(|p| p.into_inner())
    );

    assert_ne!(after["owner"].as_u64(), Some(owner), "{after}");
    assert!(after["epoch"].as_u64() > Some(epoch), "{after}");
    assert_eq!(after["game"], before["game"], "the state moved intact");
    assert_eq!(
        after["game"]["registered_actions"]["ariadne"],
        json!({"move": "north"})
    );
    servers.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn game_routes_map_minos_errors_to_client_errors() -> Result<(), String> {
    // Each kind of bad request gets its own 4xx status and error code, and
    // leaves the game as it was; checked against a real three-node cluster.
    let servers = Servers::start().await?;
    let two = servers.addr(2);
    expect(
        StatusCode::CREATED,
        post(two, "/games", json!({"id": "maze"})).await?,
    );

    let cases = [
        (
            "create twice",
            post(two, "/games", json!({"id": "maze"})).await?,
            StatusCode::CONFLICT,
            "game_exists",
        ),
        (
            "bad id",
            post(two, "/games", json!({"id": "no spaces"})).await?,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "no id",
            post(two, "/games", json!({})).await?,
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            "no such game",
            get(two, "/games/nowhere").await?,
            StatusCode::NOT_FOUND,
            "no_such_game",
        ),
        (
            "join a missing game",
            post(two, "/games/nowhere/join", json!({"player": "icarus"})).await?,
            StatusCode::NOT_FOUND,
            "no_such_game",
        ),
        (
            "empty player name",
            post(two, "/games/maze/join", json!({"player": ""})).await?,
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
        ),
        (
            "act before joining",
            post(
                two,
                "/games/maze/act",
                json!({"player": "minos", "action": 1}),
            )
            .await?,
            StatusCode::UNPROCESSABLE_ENTITY,
            "rejected",
        ),
    ];
    for (what, (status, body), want_status, want_code) in cases {
        assert_eq!(status, want_status, "{what}: {body}");
        assert_eq!(body["error"]["code"], want_code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }

    let game = expect(StatusCode::OK, get(two, "/games/maze").await?);
    assert_eq!(
        game["game"]["players"],
        json!({}),
        "refused joins left no player"
    );
    assert_eq!(game["game"]["registered_actions"], json!({}));
    servers.shutdown().await;
    Ok(())
}

#[test]
fn peers_parse_from_the_flag_format() {
    // The --peers format round-trips ids and addresses and refuses bad lists.
    let peers = parse_peers("1=127.0.0.1:7301, 2=127.0.0.1:7302").expect("valid");
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[&2], "127.0.0.1:7302");
    for bad in ["", "1", "x=127.0.0.1:1", "1=a:1,1=b:2"] {
        assert!(parse_peers(bad).is_err(), "{bad:?} was accepted");
    }
}
