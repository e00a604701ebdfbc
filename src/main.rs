//! The `minos` binary: flag parsing, tracing set-up, and calls into the
//! library. Exit codes: 0 success, 1 server-side failure, 2 bad usage or input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::CommandFactory;
use minos::auth::{ClusterSecret, Security, Tokens};
use minos::client::{Client, ClientError, NewSession};
use minos::config::{Limits, Timing};
use minos::node::NodeBuilder;

mod cli;

/// The binary's allocator. A profile of three nodes under 64 clients of
/// state-changing calls (`perf record -a`, ARCHITECTURE.md) found a fifth
/// of all CPU in glibc's malloc and free: every request, log entry and
/// peer message allocates and frees from several threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::{
    BenchCli, Cli, ClusterCommand, Command, Conn, LogFormat, NodeCommand, ServeArgs, SessionCommand,
};

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match e.status() {
            Some(status) if (400..500).contains(&status) => 2,
            _ => 1,
        };
        let hint = if e.is_connect() {
            " (is a node running there? scripts/cluster.sh start starts three; --addr or MINOS_ADDR picks the node)"
        } else {
            ""
        };
        Failure {
            code,
            message: format!("{e}{hint}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, Failure> {
    serde_json::from_str(text).map_err(|e| usage(format!("{what} is not valid JSON: {e}")))
}

fn print_json(value: &impl serde::Serialize) {
    use std::io::Write;
    match serde_json::to_string_pretty(value) {
        // A closed pipe (`minos ... | head`) is not an error of ours.
        Ok(text) => {
            let _ = writeln!(std::io::stdout(), "{text}");
        }
        Err(e) => eprintln!("cannot print answer: {e}"),
    }
}

fn security(args: &ServeArgs) -> Result<Security, Failure> {
    if args.insecure {
        eprintln!("minos: WARNING: --insecure: no authentication; anyone who reaches this node can change the cluster");
        return Ok(Security::Insecure);
    }
    let (Some(secret), Some(tokens)) = (&args.cluster_secret_file, &args.token_file) else {
        return Err(usage(
            "give --cluster-secret-file and --token-file, or --insecure",
        ));
    };
    Ok(Security::Enforced {
        secret: ClusterSecret::from_file(secret).map_err(|e| usage(e.to_string()))?,
        tokens: Tokens::from_file(tokens).map_err(|e| usage(e.to_string()))?,
    })
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let mut timing = Timing::from_flags(&args.timing_flags()).map_err(usage)?;
    timing.rebalance_moves_per_sec = args.rebalance_max_moves_per_sec;
    let security = security(&args)?;
    // Files this process creates (sled's among them) are its own.
    // SAFETY: umask(2) only sets the process's file mode mask.
    unsafe { libc::umask(0o077) };
    let mut builder = NodeBuilder::new(args.id, &args.data_dir)
        .security(security)
        .listen(&args.listen)
        .timing(timing)
        .labels(args.labels())
        .max_sessions(args.max_sessions)
        .limits(Limits {
            max_state_bytes: args.max_state_bytes,
            call_retention: minos::model::CallRetention {
                keep_last: args.call_keys_kept,
                keep_for_secs: args.call_keys_max_age_s,
                ..Default::default()
            },
            history_per_session: args.history_per_session,
            park_after: (args.park_after_ms > 0)
                .then(|| std::time::Duration::from_millis(args.park_after_ms)),
        })
        .connection_limits(minos::node::ConnLimits {
            max_connections: args.max_connections as usize,
            max_connections_per_ip: args.max_connections_per_ip as usize,
            ..Default::default()
        });
    if let Some(advertise) = &args.advertise {
        builder = builder.advertise(advertise);
    }
    for kind in &args.external_kind {
        builder = builder.external_kind(kind.clone());
    }
    builder = builder.external_timeout(std::time::Duration::from_millis(args.external_timeout_ms));
    if let Some(peer_listen) = &args.peer_listen {
        builder = builder.peer_listen(peer_listen);
    }
    builder = match (&args.peers, &args.join) {
        (Some(peers), _) => builder.peers(minos::node::parse_peers(peers).map_err(usage)?),
        (None, Some(join)) => builder.join(join),
        (None, None) => return Err(usage("give --peers or --join")),
    };
    let node = builder.start().await.map_err(|e| match e {
        minos::node::StartError::Config(_) | minos::node::StartError::Identity(_) => {
            usage(e.to_string())
        }
        other => Failure {
            code: 1,
            message: other.to_string(),
        },
    })?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: handing sessions over, then stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: handing sessions over, then stopping"),
    }
    node.shutdown().await;
    Ok(())
}

fn print_cluster_table(view: &minos::api::ClusterView) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`minos cluster status | head`) ends the table quietly.
    macro_rules! out {
        ($($arg:tt)*) => {
            if writeln!(stdout, $($arg)*).is_err() {
                return;
            }
        };
    }
    out!(
        "leader: {}   term: {}   sessions: {}   (answered by node {})",
        view.leader.map_or("none".to_string(), |l| l.to_string()),
        view.term,
        view.sessions,
        view.answered_by
    );
    if !view.quorum {
        out!(
            "no quorum: node {} cannot confirm the other nodes (shown as unknown)",
            view.answered_by
        );
    }
    // The placement column only when some node has labels or a limit.
    let placed = view
        .nodes
        .iter()
        .any(|n| !n.labels.is_empty() || n.max_sessions.is_some());
    out!(
        "{:>4}  {:<22} {:<9} {:>8}{}",
        "ID",
        "ADDRESS",
        "STATUS",
        "SESSIONS",
        if placed { "  MAX   LABELS" } else { "" }
    );
    for node in &view.nodes {
        let status = node.status.as_str();
        let marker = if view.leader == Some(node.id) {
            " *"
        } else {
            ""
        };
        let placement = if placed {
            let max = node.max_sessions.map_or("-".to_string(), |m| m.to_string());
            format!("  {max:<5} {}", minos::labels::describe(&node.labels))
        } else {
            String::new()
        };
        out!(
            "{:>4}  {:<22} {:<9} {:>8}{placement}{marker}",
            node.id,
            node.addr,
            status,
            node.sessions
        );
    }
}

/// The CLI's token: `--token`/`MINOS_TOKEN`, else the file named by
/// `MINOS_TOKEN_FILE`, else `admin.token` where scripts/cluster.sh writes it
/// (`MINOS_CLUSTER_DIR`, or `.minos-cluster` in the working directory).
fn cli_token(flag: Option<String>) -> Result<Option<String>, Failure> {
    if let Some(token) = flag {
        return Ok(Some(token));
    }
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| {
                usage(format!(
                    "cannot read the token file {}: {e}",
                    path.display()
                ))
            })
    };
    if let Some(file) = std::env::var_os("MINOS_TOKEN_FILE") {
        return read(std::path::Path::new(&file)).map(Some);
    }
    let dir = std::env::var_os("MINOS_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".minos-cluster"));
    let default = dir.join("admin.token");
    if default.is_file() {
        return read(&default).map(Some);
    }
    Ok(None)
}

/// The client of a command's `--addr` and token.
fn client(conn: &Conn) -> Result<Client, Failure> {
    let mut client = Client::new(conn.addr.clone());
    if let Some(token) = cli_token(conn.token.clone())? {
        client = client.with_token(token);
    }
    Ok(client)
}

/// `minos session ...`.
async fn session(command: SessionCommand) -> Result<(), Failure> {
    match command {
        SessionCommand::Start {
            conn,
            id,
            kind,
            state,
            require,
            spread,
        } => {
            let client = client(&conn)?;
            let state = state.map(|s| parse_json("--state", &s)).transpose()?;
            let new = NewSession {
                id,
                kind: Some(kind),
                state,
            };
            let session = if require.is_empty() && spread.is_none() {
                client.create_session(&new).await?
            } else {
                let placement = minos::api::PlacementView {
                    labels: require.into_iter().collect(),
                    spread,
                };
                client.create_session_placed(&new, &placement).await?
            };
            print_json(&session);
            Ok(())
        }
        SessionCommand::Get { conn, id } => {
            print_json(&client(&conn)?.get_session(&id).await?);
            Ok(())
        }
        SessionCommand::List {
            conn,
            owner,
            after,
            limit,
        } => {
            print_json(
                &client(&conn)?
                    .list_sessions(owner, after.as_deref(), Some(limit))
                    .await?,
            );
            Ok(())
        }
        SessionCommand::Call {
            conn,
            id,
            msg,
            timeout_ms,
            key,
            no_key,
        } => {
            let msg = parse_json("the message", &msg)?;
            if let Some(key) = &key {
                minos::model::CallKey::new(key.as_str())
                    .map_err(|e| usage(format!("--key: {e}")))?;
            }
            let key = match (key, no_key) {
                (_, true) => None,
                (Some(key), false) => Some(key),
                (None, false) => Some(minos::client::new_call_key()),
            };
            let timeout = Some(Duration::from_millis(timeout_ms));
            let reply = client(&conn)?
                .call_with_key(&id, &msg, timeout, key.as_deref())
                .await?;
            print_json(&reply);
            Ok(())
        }
        SessionCommand::Stop { conn, id } => {
            print_json(&client(&conn)?.delete_session(&id).await?);
            Ok(())
        }
        SessionCommand::History { conn, id } => {
            print_json(&client(&conn)?.session_history(&id).await?);
            Ok(())
        }
        SessionCommand::Watch {
            conn,
            id,
            from_version,
        } => {
            let path = match from_version {
                Some(v) => format!("/v1/sessions/{id}/watch?from_version={v}"),
                None => format!("/v1/sessions/{id}/watch"),
            };
            follow_lines(&client(&conn)?, &path).await
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Session(command) => session(command).await,
        Command::Cluster(ClusterCommand::Status { conn }) => {
            let view = client(&conn)?.cluster().await?;
            if conn.json {
                print_json(&view);
            } else {
                print_cluster_table(&view);
            }
            Ok(())
        }
        Command::Cluster(ClusterCommand::Rebalance { conn }) => {
            print_json(&client(&conn)?.rebalance().await?);
            Ok(())
        }
        Command::Node(NodeCommand::Drain { conn, id }) => {
            let client = client(&conn)?;
            let id = match id {
                Some(id) => id,
                None => client.cluster().await?.answered_by,
            };
            print_json(&client.drain(id).await?);
            Ok(())
        }
        Command::Node(NodeCommand::Undrain { conn, id }) => {
            print_json(&client(&conn)?.undrain(id).await?);
            Ok(())
        }
        Command::Node(NodeCommand::Remove { conn, id }) => {
            print_json(&client(&conn)?.remove_node(id).await?);
            Ok(())
        }
        Command::Watch { conn, after } => {
            let path = match after {
                Some(after) => format!("/v1/events/watch?after={after}"),
                None => "/v1/events/watch".to_string(),
            };
            follow_lines(&client(&conn)?, &path).await
        }
        Command::Openapi => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(minos::api::openapi_document().as_bytes());
            Ok(())
        }
        Command::Completions { shell } => {
            // Into a buffer first: a closed pipe is not an error of ours.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "minos", &mut script);
            use std::io::Write;
            let _ = std::io::stdout().write_all(&script);
            Ok(())
        }
        Command::Bench(BenchCli::Plot { json, svg }) => {
            minos::bench::plot::replot(&json, &svg).map_err(usage)?;
            eprintln!("latency CDF written to {}", svg.display());
            Ok(())
        }
        Command::Bench(BenchCli::Run(command)) => {
            minos::bench::run(*command).await.map_err(|e| Failure {
                code: e.exit_code(),
                message: e.to_string(),
            })
        }
        Command::Chaos(args) => minos::chaos::run(args).await.map_err(|e| Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }),
        Command::Config(cli::ConfigCommand::Check { file }) => config_check(file),
    }
}

/// `minos config check FILE`: resolves `minos serve --config FILE` as
/// `minos serve` would, checks it as far as possible without starting
/// (timing rules, peers, credentials files) and prints it as TOML.
fn config_check(file: PathBuf) -> Result<(), Failure> {
    let argv = ["minos", "serve", "--config"]
        .map(std::ffi::OsString::from)
        .into_iter()
        .chain([file.into_os_string()]);
    let cli: Cli = minos::config_file::parse(argv).map_err(|e| usage(e.one_line()))?;
    let Command::Serve(args) = cli.command else {
        return Err(usage("not a serve configuration"));
    };
    let (peers, advertise) = (args.peers.as_deref(), args.advertise.as_deref());
    let summary = minos::config_file::check(args.id, peers, advertise, &args.timing_flags())
        .map_err(usage)?;
    security(&args)?;
    let text = toml::to_string(&args).map_err(|e| usage(e.to_string()))?;
    println!("{text}\n{summary}");
    Ok(())
}

/// Prints each event of an SSE stream as one JSON line (`{"event": ..,
/// "data": ..}`), flushed at once, until the stream ends; stops quietly on
/// a closed pipe.
async fn follow_lines(client: &Client, path: &str) -> Result<(), Failure> {
    use std::io::Write;
    client
        .follow(path, |event, data| {
            let data: serde_json::Value =
                serde_json::from_str(data).unwrap_or(serde_json::Value::String(data.into()));
            let line = serde_json::json!({ "event": event, "data": data });
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
        })
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MINOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let json_logs =
        matches!(&cli.command, Command::Serve(args) if args.log_format == LogFormat::Json);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("minos: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("minos: {}", failure.message.lines().next().unwrap_or(""));
            ExitCode::from(failure.code)
        }
    }
}
