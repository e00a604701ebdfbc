//! The game server: one minos [`Node`] that runs the `minotaur` game
//! sessions and, on a listener of its own, the game's HTTP routes. The
//! routes talk to the games through the typed `Sessions<Minotaur>` (no JSON
//! is built for minos here); minos's own API keeps serving on the minos
//! listener, which is also the address the other nodes know this one by.
//!
//! `GET /health` answers 200 once the embedded node is healthy (it knows a
//! Raft leader and has caught up). The game routes are:
//!
//! | route                        | body                    | answer                              |
//! |------------------------------|-------------------------|-------------------------------------|
//! | `POST /games`                | `{"id"}`                | 201 `{"id","owner","epoch"}`        |
//! | `POST /games/:id/join`       | `{"player"}`            | 200 `{"game","owner","epoch"}`      |
//! | `POST /games/:id/act`        | `{"player","action"}`   | 200 `{"registered","owner","epoch"}`|
//! | `GET /games/:id`             |                         | 200 `{"game","owner","epoch"}`      |
//!
//! Errors are `{"error":{"code","message"}}`, mapped from [`minos::Error`]
//! in one place ([`GameError`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use minos::auth::Security;
use minos::handlers::minotaur::{self, Game, Minotaur, MinotaurMessage, MinotaurReply};
use minos::model::{Epoch, NodeId};
use minos::{Node, NodeBuilder, Sessions, Timing};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Everything a game server needs besides its two listeners.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's minos id.
    pub id: NodeId,
    /// Where minos keeps this node's log and state.
    pub data_dir: PathBuf,
    /// Every minos node's address (`id -> host:port`), this one included.
    pub peers: BTreeMap<NodeId, String>,
    /// Length of a game round.
    pub round_duration: chrono::Duration,
    /// How long a game route waits for a game that is moving to a new node.
    pub call_timeout: Duration,
    /// minos timing (leases, failure detection).
    pub timing: Timing,
    /// Credentials of the embedded minos node (cluster secret, tokens).
    pub security: Security,
}

impl Config {
    /// A config with one-day rounds, a 5 s call timeout and default timing.
    pub fn new(
        id: NodeId,
        data_dir: impl Into<PathBuf>,
        peers: BTreeMap<NodeId, String>,
        security: Security,
    ) -> Self {
        Self {
            id,
            data_dir: data_dir.into(),
            peers,
            round_duration: chrono::Duration::days(1),
            call_timeout: minos::sessions::DEFAULT_CALL_TIMEOUT,
            timing: Timing::default(),
            security,
        }
    }
}

/// A running game server.
pub struct GameServer {
    node: Node,
    game_addr: SocketAddr,
    stop_routes: oneshot::Sender<()>,
    routes: JoinHandle<()>,
}

impl GameServer {
    /// Starts the minos node on `minos_listener` and the game routes on
    /// `game_listener`.
    pub async fn start(
        config: Config,
        game_listener: TcpListener,
        minos_listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let node = NodeBuilder::new(config.id, &config.data_dir)
            .listener(minos_listener)
            .peers(config.peers.clone())
            .timing(config.timing.clone())
            .security(config.security.clone())
            .handler(
                minotaur::KIND,
                Minotaur::with_round_duration(config.round_duration),
            )
            .start()
            .await?;
        let games = Games {
            sessions: node.sessions::<Minotaur>(minotaur::KIND)?,
            call_timeout: config.call_timeout,
            node: node.id(),
            minos: node.client(),
        };
        let game_addr = game_listener.local_addr()?;
        let (stop_routes, stopped) = oneshot::channel::<()>();
        let app = routes(games);
        let routes = tokio::spawn(async move {
            let serve = axum::serve(game_listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                warn!(error = %e, "game routes stopped");
            }
        });
        Ok(Self {
            node,
            game_addr,
            stop_routes,
            routes,
        })
    }

    /// Address of the game routes.
    pub fn game_addr(&self) -> SocketAddr {
        self.game_addr
    }

    /// The embedded minos node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Graceful stop: the game routes finish their requests in hand, then
    /// the node hands its games over to the others and stops.
    pub async fn shutdown(mut self) {
        let _ = self.stop_routes.send(());
        if tokio::time::timeout(Duration::from_secs(5), &mut self.routes)
            .await
            .is_err()
        {
            self.routes.abort();
        }
        self.node.shutdown().await;
    }

    /// Crash-like stop: the routes stop at once and the node stops without
    /// handing anything over, as under `kill -9`.
    #[cfg_attr(not(test), allow(dead_code))] // the failover test crashes servers
    pub async fn kill(self) {
        self.routes.abort();
        let _ = self.routes.await;
        self.node.kill().await;
    }
}

/// Runs a game server until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    config: Config,
    game_listener: TcpListener,
    minos_listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let id = config.id;
    let server = GameServer::start(config, game_listener, minos_listener).await?;
    info!(
        node = id,
        game = %server.game_addr(),
        minos = %server.node().addr(),
        "game server started"
    );
    shutdown.await;
    info!("stopping: handing games over");
    server.shutdown().await;
    Ok(())
}

/// What every route shares.
#[derive(Clone)]
struct Games {
    sessions: Sessions<Minotaur>,
    call_timeout: Duration,
    node: NodeId,
    /// This node's own minos API, for `/health`.
    minos: minos::Client,
}

fn routes(games: Games) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/games", post(create_game))
        .route("/games/:id", get(get_game))
        .route("/games/:id/join", post(join_game))
        .route("/games/:id/act", post(act))
        .with_state(games)
}

#[derive(Deserialize)]
struct NewGame {
    id: String,
}

#[derive(Deserialize)]
struct JoinRequest {
    player: String,
}

#[derive(Deserialize)]
struct ActRequest {
    player: String,
    action: serde_json::Value,
}

/// A game and where it runs.
#[derive(Serialize)]
struct GameView {
    game: Game,
    owner: NodeId,
    epoch: Epoch,
}

#[derive(Serialize)]
struct Created {
    id: String,
    owner: Option<NodeId>,
    epoch: Epoch,
}

#[derive(Serialize)]
struct Registered {
    registered: usize,
    owner: NodeId,
    epoch: Epoch,
}

/// Healthy when the embedded node is: it knows a leader and has caught up.
async fn health(State(games): State<Games>) -> Response {
    match games.minos.health().await {
        Ok(minos) => {
            let body = serde_json::json!({ "node": games.node, "minos": minos });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            let body = serde_json::json!({ "node": games.node, "error": e.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn create_game(
    State(games): State<Games>,
    body: Result<Json<NewGame>, JsonRejection>,
) -> Result<Response, GameError> {
    let Json(new) = body?;
    let session = games.sessions.start(&new.id).await?;
    let created = Created {
        id: new.id,
        owner: session.owner,
        epoch: session.epoch,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn join_game(
    State(games): State<Games>,
    Path(id): Path<String>,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> Result<Json<GameView>, GameError> {
    let Json(join) = body?;
    let msg = MinotaurMessage::Join {
        player: join.player,
    };
    game_view(games.call(&id, &msg).await?)
}

async fn act(
    State(games): State<Games>,
    Path(id): Path<String>,
    body: Result<Json<ActRequest>, JsonRejection>,
) -> Result<Json<Registered>, GameError> {
    let Json(act) = body?;
    let msg = MinotaurMessage::RegisterAction {
        player: act.player,
        action: act.action,
    };
    let answer = games.call(&id, &msg).await?;
    match answer.reply {
        MinotaurReply::Registered { registered } => Ok(Json(Registered {
            registered,
            owner: answer.owner,
            epoch: answer.epoch,
        })),
        other => Err(GameError::UnexpectedReply(format!("{other:?}"))),
    }
}

async fn get_game(
    State(games): State<Games>,
    Path(id): Path<String>,
) -> Result<Json<GameView>, GameError> {
    game_view(games.call(&id, &MinotaurMessage::GetGame {}).await?)
}

impl Games {
    async fn call(
        &self,
        id: &str,
        msg: &MinotaurMessage,
    ) -> Result<minos::Reply<MinotaurReply>, minos::Error> {
        self.sessions
            .call_with_timeout(id, msg, self.call_timeout)
            .await
    }
}

fn game_view(answer: minos::Reply<MinotaurReply>) -> Result<Json<GameView>, GameError> {
    match answer.reply {
        MinotaurReply::Game(game) => Ok(Json(GameView {
            game: *game,
            owner: answer.owner,
            epoch: answer.epoch,
        })),
        other => Err(GameError::UnexpectedReply(format!("{other:?}"))),
    }
}

/// Why a game route failed; the one place that picks HTTP statuses.
#[derive(Debug)]
pub enum GameError {
    /// minos refused or could not do the operation.
    Minos(minos::Error),
    /// The request body is not the JSON the route expects.
    BadBody(String),
    /// The game answered with a reply of the wrong shape (a bug).
    UnexpectedReply(String),
}

impl From<minos::Error> for GameError {
    fn from(e: minos::Error) -> Self {
        GameError::Minos(e)
    }
}

impl From<JsonRejection> for GameError {
    fn from(e: JsonRejection) -> Self {
        GameError::BadBody(e.body_text())
    }
}

impl IntoResponse for GameError {
    fn into_response(self) -> Response {
        use minos::Error as E;
        let (status, code, message) = match self {
            GameError::BadBody(message) => (StatusCode::BAD_REQUEST, "bad_body", message),
            GameError::UnexpectedReply(reply) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "unexpected_reply",
                format!("the game answered {reply}"),
            ),
            GameError::Minos(e) => {
                let (status, code) = match &e {
                    E::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
                    E::NotFound(_) => (StatusCode::NOT_FOUND, "no_such_game"),
                    E::Exists(_) => (StatusCode::CONFLICT, "game_exists"),
                    // The game's rules refused it: player not joined, bad name.
                    E::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
                    E::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "game_too_large"),
                    // Every node registers `minotaur`; this is a deployment bug.
                    E::UnknownKind(_) => (StatusCode::INTERNAL_SERVER_ERROR, "misconfigured"),
                    // Nothing was written; retrying later is safe.
                    E::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
                    E::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    E::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                };
                (status, code, e.to_string())
            }
        };
        let body = Json(serde_json::json!({ "error": { "code": code, "message": message } }));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Nothing or maybe something was written; a retry after a moment
            // usually finds the game on its new node.
            return (status, [(header::RETRY_AFTER, "1")], body).into_response();
        }
        (status, body).into_response()
    }
}
