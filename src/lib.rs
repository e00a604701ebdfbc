//! # minos: a consensus-backed session scheduler
//!
//! Each live session (a game, a room, a workflow) runs on exactly one node of
//! a cluster. A Raft log (openraft, with sled on disk) records who owns each
//! session and its last committed state; when a node stops, crashes or is cut
//! off, the leader moves its sessions to the survivors, which resume them from
//! that state. A session comes back once, quickly, with its state, or the
//! caller is told clearly why not (no quorum).
//!
//! Embed it by implementing [`SessionHandler`] for your session type and
//! starting a [`Node`] in your own tokio runtime. The quick start below runs
//! a three-node cluster in this process, starts a game on it, crashes its
//! owner and calls the game again on the new owner:
//!
// The example needs the `testkit` feature (on by default).
#![cfg_attr(feature = "testkit", doc = "```")]
#![cfg_attr(not(feature = "testkit"), doc = "```ignore")]
//! use std::time::Duration;
//! use minos::handlers::minotaur::{Minotaur, MinotaurMessage, MinotaurReply};
//! use minos::testkit::Cluster;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cluster = Cluster::start(3).await?;
//! let games = cluster.node(1).ok_or("node 1")?.sessions::<Minotaur>("minotaur")?;
//! games.start("game-1").await?;
//! let join = MinotaurMessage::Join { player: "ariadne".into() };
//! let first = games.call("game-1", &join).await?;
//!
//! // Crash the owner: no handoff, like kill -9.
//! cluster.kill(first.owner).await;
//!
//! // Any surviving node reaches the game on its new owner, with its state.
//! let survivor = cluster.ids().into_iter().find(|n| *n != first.owner).ok_or("survivor")?;
//! let games = cluster.node(survivor).ok_or("survivor")?.sessions::<Minotaur>("minotaur")?;
//! let again = games.call("game-1", &MinotaurMessage::GetGame {}).await?;
//! assert_ne!(again.owner, first.owner);
//! match again.reply {
//!     MinotaurReply::Game(game) => assert!(game.players.contains_key("ariadne")),
//!     other => panic!("unexpected reply {other:?}"),
//! }
//! cluster.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! The same sessions are reachable over HTTP/JSON (`minos::api`), from the
//! `minos` CLI, and through the typed [`Client`].
//!
//! # Features
//!
//! - `tools` (default): the `minos` binary and its tools, `minos::bench`
//!   and `minos::chaos`, with the crates only they use (clap, plotters,
//!   indicatif, todc-utils); implies `testkit`.
//! - `testkit`: `minos::testkit`, in-process and process clusters for tests
//!   (tempfile, libc).
//!
//! A service embedding minos depends on it with `default-features = false`
//! (and `features = ["testkit"]` in its dev-dependencies to test with
//! in-process clusters, as the example above does).
#![warn(missing_docs)]

pub mod api;
pub mod auth;
#[cfg(feature = "tools")]
pub mod bench;
#[cfg(feature = "tools")]
pub mod chaos;
pub mod client;
pub mod config;
#[cfg(feature = "tools")]
pub mod config_file;
pub(crate) mod control;
pub mod error;
pub mod external;
pub mod handler;
pub mod handlers;
pub mod labels;
pub(crate) mod lease;
pub mod metrics;
pub mod model;
pub mod node;
pub mod peer;
pub mod placement;
pub(crate) mod raft;
pub mod runtime;
pub(crate) mod scheduler;
pub(crate) mod serve;
pub(crate) mod service;
pub mod sessions;
pub mod state;
pub(crate) mod store;
pub(crate) mod sync;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod wire;

pub use client::Client;
pub use config::{Limits, Timing};
pub use error::Error;
pub use handler::{HandlerError, Registry, SessionContext, SessionHandler};
pub use node::{Node, NodeBuilder, StartError};
/// The JSON library of handler first states and of the HTTP API.
pub use serde_json;
pub use sessions::{Reply, Sessions};
