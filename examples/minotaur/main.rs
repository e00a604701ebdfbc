//! `minotaur`: a game server that embeds minos.
//!
//! Each process runs one minos node (the games live in its sessions and move
//! to another process when this one dies) and serves its own game routes on
//! a second listener. Start three with `scripts/minotaur-cluster.sh start`,
//! or by hand:
//!
//! ```text
//! cargo run --release --example minotaur -- --id 1 \
//!     --listen 127.0.0.1:7401 --minos-listen 127.0.0.1:7301 \
//!     --data-dir /tmp/minotaur/node1 \
//!     --peers 1=127.0.0.1:7301,2=127.0.0.1:7302,3=127.0.0.1:7303
//! ```
//!
//! This file only parses flags and sets up logging; `server.rs` is the
//! server, and it can be started from a test in-process.

mod server;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Parser;
use minos::model::NodeId;
use tokio::net::TcpListener;

/// A Minotaur game server embedding a minos node.
#[derive(Debug, Parser)]
#[command(name = "minotaur")]
struct Args {
    /// This node's minos id (a key of --peers).
    #[arg(long)]
    id: NodeId,
    /// Address of the game routes (`host:port`).
    #[arg(long)]
    listen: String,
    /// Address of the embedded minos node's API; must be this id's --peers address.
    #[arg(long)]
    minos_listen: String,
    /// Where minos keeps this node's data.
    #[arg(long)]
    data_dir: PathBuf,
    /// Every minos node: `1=host:port,2=host:port,...`.
    #[arg(long, value_parser = minos::node::parse_peers)]
    peers: BTreeMap<NodeId, String>,
    /// Length of a game round, in seconds.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(i64).range(1..=i64::from(u32::MAX)))]
    round_seconds: i64,
    /// File with the minos cluster secret (see `minos serve --help`).
    #[arg(long, required_unless_present = "insecure")]
    cluster_secret_file: Option<PathBuf>,
    /// File with the minos API tokens, `ROLE TOKEN` a line.
    #[arg(long, required_unless_present = "insecure")]
    token_file: Option<PathBuf>,
    /// Run the embedded minos node without authentication (experiments only).
    #[arg(long, conflicts_with_all = ["cluster_secret_file", "token_file"])]
    insecure: bool,
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let args = Args::parse();
    let game_listener = TcpListener::bind(&args.listen).await?;
    let minos_listener = TcpListener::bind(&args.minos_listen).await?;
    let security = match (&args.cluster_secret_file, &args.token_file) {
        (Some(secret), Some(tokens)) => minos::auth::Security::Enforced {
            secret: minos::auth::ClusterSecret::from_file(secret)?,
            tokens: minos::auth::Tokens::from_file(tokens)?,
        },
        _ => minos::auth::Security::Insecure,
    };
    let mut config = server::Config::new(args.id, args.data_dir, args.peers, security);
    config.round_duration = chrono::Duration::seconds(args.round_seconds);
    server::run(config, game_listener, minos_listener, shutdown_signal()).await
}
