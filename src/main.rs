//! The `minos` binary: flag parsing, tracing set-up, and calls into the
//! library. Exit codes: 0 success, 1 server-side failure, 2 bad usage or input.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use minos::auth::{ClusterSecret, Security, Tokens};
use minos::client::{Client, ClientError, NewSession};
use minos::config::{Limits, Timing, TimingFlags};
use minos::model::NodeId;
use minos::node::NodeBuilder;

/// `minos --version`: the crate version and the git commit it was built
/// from (`unknown` outside a git checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MINOS_GIT_COMMIT"),
    ")"
);

/// The environment variables that are not a flag's (those show with their
/// flag).
const ENVIRONMENT: &str = "\
Environment:
  MINOS_ADDR, MINOS_TOKEN  --addr and --token of the commands that talk to a node
  MINOS_TOKEN_FILE         a file holding the API token (when --token is not given)
  MINOS_CLUSTER_DIR        where scripts/cluster.sh keeps its cluster; the CLI reads
                           admin.token there (default: ./.minos-cluster)
  MINOS_LOG                log filter, tracing's EnvFilter syntax
                           (default: info,openraft=warn; e.g. MINOS_LOG=debug)
  MINOS_*                  every flag of `minos serve` (see minos serve --help)";

#[derive(Parser)]
#[command(
    name = "minos",
    version = VERSION,
    about = "A consensus-backed session scheduler",
    after_help = ENVIRONMENT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a command reaches a node (only on the commands that talk to one).
#[derive(Args, Clone, Debug)]
struct Conn {
    /// Node to talk to, as HOST:PORT (any node accepts any request).
    #[arg(
        long,
        env = "MINOS_ADDR",
        default_value = "127.0.0.1:7101",
        value_name = "HOST:PORT",
        value_parser = parse_addr
    )]
    addr: String,
    /// API token (default: the file MINOS_TOKEN_FILE names, else
    /// admin.token in MINOS_CLUSTER_DIR or ./.minos-cluster, where
    /// scripts/cluster.sh writes it).
    #[arg(long, env = "MINOS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the answer as JSON (`cluster status` prints a table without
    /// it; the other commands print JSON either way).
    #[arg(long)]
    json: bool,
}

/// `--addr`: `host:port` with a numeric port (a bare `7101` would be taken
/// as a host name and fail far from here).
fn parse_addr(text: &str) -> Result<String, String> {
    let expected = "expected HOST:PORT with a numeric port, e.g. 127.0.0.1:7101";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(expected.into());
    };
    if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
        return Err(expected.into());
    }
    Ok(text.to_string())
}

/// `minos serve --log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (tracing-subscriber's JSON formatter).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node.
    #[command(
        after_help = "Environment: every flag above also as its MINOS_* variable; \
MINOS_LOG sets the log filter (default info,openraft=warn)."
    )]
    Serve(ServeArgs),
    /// Start, inspect, call and stop sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Cluster-wide status and operations.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Node operations.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCli),
    /// Fault injection with a history checker (no lost write, never two owners).
    Chaos(minos::chaos::ChaosArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell),
    /// e.g. `minos completions bash > ~/.local/share/bash-completion/completions/minos`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum BenchCli {
    /// Redraw a failover plot from the JSON of an earlier run (no benchmark
    /// is run).
    Plot {
        /// JSON written by `minos bench failover --json`.
        #[arg(long)]
        json: PathBuf,
        /// The SVG to write.
        #[arg(long)]
        svg: PathBuf,
    },
    #[command(flatten)]
    Run(Box<minos::bench::BenchCommand>),
}

/// Help text of a timing flag: what it is and its default.
fn timing_help(what: &str, default: Duration, with_node_timeout: &str) -> String {
    format!(
        "{what} [default: {} ms{with_node_timeout}]",
        default.as_millis()
    )
}

#[derive(Args)]
struct ServeArgs {
    /// This node's id (a positive integer).
    #[arg(long, env = "MINOS_ID", value_parser = clap::value_parser!(u64).range(1..))]
    id: NodeId,
    /// Address to listen on.
    #[arg(long, env = "MINOS_LISTEN")]
    listen: String,
    /// A separate address for the internal (peer) routes; the listen
    /// address then serves only the public API (default: both on --listen).
    #[arg(long, env = "MINOS_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// Address the other nodes use (default: the peer listen address, else
    /// the listen address). `--peers` must give this node this address.
    #[arg(long, env = "MINOS_ADVERTISE")]
    advertise: Option<String>,
    /// Directory for this node's data.
    #[arg(long, env = "MINOS_DATA_DIR")]
    data_dir: PathBuf,
    /// All voters: `1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103`.
    #[arg(
        long,
        env = "MINOS_PEERS",
        conflicts_with = "join",
        required_unless_present = "join"
    )]
    peers: Option<String>,
    /// Join a running cluster through this member's address.
    #[arg(long, env = "MINOS_JOIN")]
    join: Option<String>,
    /// File with the cluster secret every peer request carries (one secret
    /// a line: the first is sent, all are accepted, for rotation).
    #[arg(long, env = "MINOS_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// File with the API tokens, one `ROLE TOKEN` a line (roles: admin, client).
    #[arg(long, env = "MINOS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// No authentication at all, for experiments: anyone who reaches the
    /// port can change the cluster.
    #[arg(long, env = "MINOS_INSECURE", conflicts_with_all = ["cluster_secret_file", "token_file"])]
    insecure: bool,
    // Timing: the help text (with the default) is built from
    // `Timing::default()`, so it cannot drift from what serve runs with.
    #[arg(long, env = "MINOS_HEARTBEAT_MS", value_name = "MS",
          help = timing_help("Raft heartbeat interval", Timing::default().heartbeat, ""))]
    heartbeat_ms: Option<u64>,
    #[arg(long, env = "MINOS_ELECTION_TIMEOUT_MIN_MS", value_name = "MS",
          help = timing_help("Election timeout, lower bound", Timing::default().election_timeout_min, ""))]
    election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "MINOS_ELECTION_TIMEOUT_MAX_MS", value_name = "MS",
          help = timing_help("Election timeout, upper bound", Timing::default().election_timeout_max, ""))]
    election_timeout_max_ms: Option<u64>,
    #[arg(long, env = "MINOS_NODE_TIMEOUT_MS", value_name = "MS",
          help = timing_help(
              "Node timeout: silence after which the leader declares a node Down; the lease (60 %), \
               quorum window (20 %) and drift margin (5 %) follow from it unless given",
              Timing::default().node_timeout, ""))]
    node_timeout_ms: Option<u64>,
    #[arg(long, env = "MINOS_LEASE_MS", value_name = "MS",
          help = timing_help("Lease duration", Timing::default().lease_duration,
                             "; 60 % of --node-timeout-ms when that is given"))]
    lease_ms: Option<u64>,
    /// Log line format on stderr.
    #[arg(long, env = "MINOS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Largest session state in bytes.
    #[arg(long, env = "MINOS_MAX_STATE_BYTES", default_value_t = 1024 * 1024)]
    max_state_bytes: usize,
    /// Keyed calls each session remembers (a retry of a remembered key
    /// applies nothing and gets the recorded reply).
    #[arg(long, env = "MINOS_CALL_KEYS_KEPT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    call_keys_kept: u32,
    /// How long a session remembers a keyed call, in seconds.
    #[arg(long, env = "MINOS_CALL_KEYS_MAX_AGE_S", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    call_keys_max_age_s: u64,
    /// Open HTTP connections this node accepts (more are closed at once).
    #[arg(long, env = "MINOS_MAX_CONNECTIONS", default_value_t = minos::node::ConnLimits::default().max_connections as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections: u32,
    /// Open HTTP connections per client IP address.
    #[arg(long, env = "MINOS_MAX_CONNECTIONS_PER_IP", default_value_t = minos::node::ConnLimits::default().max_connections_per_ip as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_ip: u32,
}

#[derive(Subcommand)]
enum SessionCommand {
    /// Create a session (it starts on the node placement picks).
    Start {
        #[command(flatten)]
        conn: Conn,
        /// Session id.
        id: String,
        /// Handler kind.
        #[arg(long, default_value = "kv")]
        kind: String,
        /// First state, as JSON.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show a session.
    Get {
        #[command(flatten)]
        conn: Conn,
        /// Session id.
        id: String,
    },
    /// List sessions.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only sessions owned by this node.
        #[arg(long)]
        owner: Option<NodeId>,
        /// Start after this id.
        #[arg(long)]
        after: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send a message to a live session and print its reply.
    Call {
        #[command(flatten)]
        conn: Conn,
        /// Session id.
        id: String,
        /// The message, as JSON.
        msg: String,
        /// How long to wait while the session moves.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Idempotency key (default: a fresh one per call, so a call whose
        /// owner fails mid-call is retried and applied exactly once; send
        /// the same key again to repeat a call safely).
        #[arg(long, conflicts_with = "no_key")]
        key: Option<String>,
        /// Send no key: a call cut off by a failure answers 503
        /// `outcome_unknown` and may or may not have run.
        #[arg(long)]
        no_key: bool,
    },
    /// Delete a session.
    Stop {
        #[command(flatten)]
        conn: Conn,
        /// Session id.
        id: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Leader, term and nodes (a table; --json for JSON). Without a quorum
    /// the answering node cannot confirm the others: they show as unknown.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Move sessions back to their placement choice (after a node returned).
    Rebalance {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Move a node's sessions away now; it takes no new ones.
    Drain {
        #[command(flatten)]
        conn: Conn,
        /// Node id.
        id: NodeId,
    },
    /// Undo a drain: a Draining node takes new sessions again (`cluster
    /// rebalance` then moves its share back).
    Undrain {
        #[command(flatten)]
        conn: Conn,
        /// Node id.
        id: NodeId,
    },
    /// Remove a node from the cluster.
    Remove {
        #[command(flatten)]
        conn: Conn,
        /// Node id.
        id: NodeId,
    },
}

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

impl ServeArgs {
    /// The timing flags as given; [`Timing::from_flags`] derives the timing.
    fn timing_flags(&self) -> TimingFlags {
        TimingFlags {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            lease_ms: self.lease_ms,
            node_timeout_ms: self.node_timeout_ms,
        }
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
    let timing = Timing::from_flags(&args.timing_flags()).map_err(usage)?;
    let security = security(&args)?;
    // Files this process creates (sled's among them) are its own.
    // SAFETY: umask(2) only sets the process's file mode mask.
    unsafe { libc::umask(0o077) };
    let mut builder = NodeBuilder::new(args.id, &args.data_dir)
        .security(security)
        .listen(&args.listen)
        .timing(timing)
        .limits(Limits {
            max_state_bytes: args.max_state_bytes,
            call_retention: minos::model::CallRetention {
                keep_last: args.call_keys_kept,
                keep_for_secs: args.call_keys_max_age_s,
                ..Default::default()
            },
        })
        .connection_limits(minos::node::ConnLimits {
            max_connections: args.max_connections as usize,
            max_connections_per_ip: args.max_connections_per_ip as usize,
            ..Default::default()
        });
    if let Some(advertise) = &args.advertise {
        builder = builder.advertise(advertise);
    }
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
    out!(
        "{:>4}  {:<22} {:<9} {:>8}",
        "ID",
        "ADDRESS",
        "STATUS",
        "SESSIONS"
    );
    for node in &view.nodes {
        let status = node.status.as_str();
        let marker = if view.leader == Some(node.id) {
            " *"
        } else {
            ""
        };
        out!(
            "{:>4}  {:<22} {:<9} {:>8}{marker}",
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
        } => {
            let client = client(&conn)?;
            let state = state.map(|s| parse_json("--state", &s)).transpose()?;
            let session = client
                .create_session(&NewSession {
                    id,
                    kind: Some(kind),
                    state,
                })
                .await?;
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
            print_json(&client(&conn)?.drain(id).await?);
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
    }
}

/// Parses the command line. A bad value (`--addr 7101`) is one line of
/// clap's error and exit code 2; help, version and usage errors are
/// clap's own.
fn parse() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
            ) =>
        {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid value");
            eprintln!("minos: {}", line.trim_start_matches("error: "));
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    }
}

fn main() -> ExitCode {
    let cli = parse();
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
