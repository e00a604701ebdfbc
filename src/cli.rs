//! The `minos` binary's command line: every command, flag and help text
//! (clap derive), and its parsing. `main.rs` carries the commands out.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use minos::config::{Timing, TimingFlags};
use minos::model::NodeId;

/// `minos --version`: the crate version and the git commit it was built
/// from (`unknown` outside a git checkout; see build.rs).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MINOS_GIT_COMMIT"),
    ")"
);

/// The environment variables that are not a flag's (those show with their
/// flag).
pub(crate) const ENVIRONMENT: &str = "\
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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How a command reaches a node (only on the commands that talk to one).
#[derive(Args, Clone, Debug)]
pub(crate) struct Conn {
    /// Node to talk to, as HOST:PORT (any node accepts any request).
    #[arg(
        long,
        env = "MINOS_ADDR",
        default_value = "127.0.0.1:7101",
        value_name = "HOST:PORT",
        value_parser = parse_addr
    )]
    pub(crate) addr: String,
    /// API token (default: the file MINOS_TOKEN_FILE names, else
    /// admin.token in MINOS_CLUSTER_DIR or ./.minos-cluster, where
    /// scripts/cluster.sh writes it).
    #[arg(long, env = "MINOS_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Print the answer as JSON (`cluster status` prints a table without
    /// it; the other commands print JSON either way).
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--addr`: `host:port` with a numeric port (a bare `7101` would be taken
/// as a host name and fail far from here).
/// A `KEY=VALUE` label (clap shows the reason on one line, exit 2).
pub(crate) fn parse_label(text: &str) -> Result<(String, String), String> {
    minos::labels::parse_label(text).map_err(|e| e.to_string())
}

/// [`parse_label`], kept as the text (`minos config check` prints it back).
pub(crate) fn check_label(text: &str) -> Result<String, String> {
    parse_label(text).map(|_| text.to_string())
}

impl ServeArgs {
    /// The `--label` flags as labels (each checked by clap already).
    pub(crate) fn labels(&self) -> minos::labels::Labels {
        self.label
            .iter()
            .filter_map(|text| minos::labels::parse_label(text).ok())
            .collect()
    }
}

pub(crate) fn parse_addr(text: &str) -> Result<String, String> {
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line (tracing-subscriber's JSON formatter).
    Json,
}

// One value per process, parsed once: boxing `ServeArgs` would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print the cluster's moves as they are committed (one JSON line each:
    /// session, from, to, reason, ...), from sequence number --after on.
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// Start after this sequence number (default: from now on; 0: every
        /// move the cluster still keeps).
        #[arg(long)]
        after: Option<u64>,
    },
    /// Print the OpenAPI 3.1 document of the HTTP API (what
    /// `GET /v1/openapi.json` serves), e.g. `minos openapi > docs/openapi.json`.
    Openapi,
}

#[derive(Subcommand)]
pub(crate) enum ConfigCommand {
    /// Check a `minos serve --config` file (with the MINOS_* environment
    /// applied, credentials files read) and print the configuration it gives.
    Check {
        /// The TOML file (deploy/minos.toml lists every key).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub(crate) enum BenchCli {
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
pub(crate) fn timing_help(what: &str, default: Duration, with_node_timeout: &str) -> String {
    format!(
        "{what} [default: {} ms{with_node_timeout}]",
        default.as_millis()
    )
}

/// Also the keys of `--config` files (src/config_file.rs): serialized for
/// `minos config check`.
#[derive(Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) struct ServeArgs {
    /// TOML file with any of these flags as keys (`node-timeout-ms = 800`);
    /// flags and MINOS_* variables override it.
    #[arg(long, env = "MINOS_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// This node's id (a positive integer).
    #[arg(long, env = "MINOS_ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) id: NodeId,
    /// Address to listen on.
    #[arg(long, env = "MINOS_LISTEN")]
    pub(crate) listen: String,
    /// A separate address for the internal (peer) routes; the listen
    /// address then serves only the public API (default: both on --listen).
    #[arg(long, env = "MINOS_PEER_LISTEN")]
    pub(crate) peer_listen: Option<String>,
    /// Address the other nodes use (default: the peer listen address, else
    /// the listen address). `--peers` must give this node this address.
    #[arg(long, env = "MINOS_ADVERTISE")]
    pub(crate) advertise: Option<String>,
    /// Directory for this node's data.
    #[arg(long, env = "MINOS_DATA_DIR")]
    pub(crate) data_dir: PathBuf,
    /// All voters: `1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103`.
    #[arg(
        long,
        env = "MINOS_PEERS",
        conflicts_with = "join",
        required_unless_present = "join"
    )]
    pub(crate) peers: Option<String>,
    /// Join a running cluster through this member's address.
    #[arg(long, env = "MINOS_JOIN")]
    pub(crate) join: Option<String>,
    /// File with the cluster secret every peer request carries (one secret
    /// a line: the first is sent, all are accepted, for rotation).
    #[arg(long, env = "MINOS_CLUSTER_SECRET_FILE")]
    pub(crate) cluster_secret_file: Option<PathBuf>,
    /// File with the API tokens, one `ROLE TOKEN` a line (roles: admin, client).
    #[arg(long, env = "MINOS_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// No authentication at all, for experiments: anyone who reaches the
    /// port can change the cluster.
    #[arg(long, env = "MINOS_INSECURE", conflicts_with_all = ["cluster_secret_file", "token_file"])]
    pub(crate) insecure: bool,
    // Timing: the help text (with the default) is built from
    // `Timing::default()`, so it cannot drift from what serve runs with.
    #[arg(long, env = "MINOS_HEARTBEAT_MS", value_name = "MS",
          help = timing_help("Raft heartbeat interval", Timing::default().heartbeat, ""))]
    pub(crate) heartbeat_ms: Option<u64>,
    #[arg(long, env = "MINOS_ELECTION_TIMEOUT_MIN_MS", value_name = "MS",
          help = timing_help("Election timeout, lower bound", Timing::default().election_timeout_min, ""))]
    pub(crate) election_timeout_min_ms: Option<u64>,
    #[arg(long, env = "MINOS_ELECTION_TIMEOUT_MAX_MS", value_name = "MS",
          help = timing_help("Election timeout, upper bound", Timing::default().election_timeout_max, ""))]
    pub(crate) election_timeout_max_ms: Option<u64>,
    #[arg(long, env = "MINOS_NODE_TIMEOUT_MS", value_name = "MS",
          help = timing_help(
              "Node timeout: silence after which the leader declares a node Down; the lease (60 %), \
               quorum window (20 %) and drift margin (5 %) follow from it unless given",
              Timing::default().node_timeout, ""))]
    pub(crate) node_timeout_ms: Option<u64>,
    #[arg(long, env = "MINOS_LEASE_MS", value_name = "MS",
          help = timing_help("Lease duration", Timing::default().lease_duration,
                             "; 60 % of --node-timeout-ms when that is given"))]
    pub(crate) lease_ms: Option<u64>,
    #[arg(long, env = "MINOS_REBALANCE_AFTER_MS", value_name = "MS",
          help = timing_help(
              "After a node comes back Up, wait this long (every node Up), then move sessions \
               back to their placement choice; 0: never (minos cluster rebalance by hand)",
              Timing::default().rebalance_after, ""))]
    pub(crate) rebalance_after_ms: Option<u64>,
    /// Moves per second the automatic rebalance makes at most (each a
    /// graceful handoff); `minos cluster rebalance` is not bounded.
    #[arg(long, env = "MINOS_REBALANCE_MAX_MOVES_PER_SEC", value_name = "MOVES",
          default_value_t = minos::config::Timing::default().rebalance_moves_per_sec,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) rebalance_max_moves_per_sec: u32,
    /// A placement label of this node, KEY=VALUE (repeat it, or separate
    /// with commas): sessions that require KEY=VALUE run only on nodes
    /// carrying it.
    #[arg(long = "label", env = "MINOS_LABEL", value_name = "KEY=VALUE",
          value_delimiter = ',', value_parser = check_label)]
    pub(crate) label: Vec<String>,
    /// Most sessions placement gives this node (a full node takes no new
    /// ones) [default: no limit].
    #[arg(long, env = "MINOS_MAX_SESSIONS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_sessions: Option<u64>,
    /// Raft log entries between two snapshots of the table (half that to
    /// that many; each node a third of it apart from the others); with more
    /// than ten times as many sessions, one entry per 10 sessions
    /// [default: 20000].
    #[arg(long, env = "MINOS_SNAPSHOT_EVERY", value_name = "ENTRIES",
          value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub(crate) snapshot_every: Option<u64>,
    /// Log line format on stderr.
    #[arg(long, env = "MINOS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// Largest session state in bytes.
    #[arg(long, env = "MINOS_MAX_STATE_BYTES", default_value_t = 1024 * 1024)]
    pub(crate) max_state_bytes: usize,
    /// Keyed calls each session remembers (a retry of a remembered key
    /// applies nothing and gets the recorded reply).
    #[arg(long, env = "MINOS_CALL_KEYS_KEPT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) call_keys_kept: u32,
    /// How long a session remembers a keyed call, in seconds.
    #[arg(long, env = "MINOS_CALL_KEYS_MAX_AGE_S", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    pub(crate) call_keys_max_age_s: u64,
    /// Changes of owner each session's placement history keeps
    /// (`minos session history ID`).
    #[arg(long, env = "MINOS_HISTORY_PER_SESSION", default_value_t = minos::model::HISTORY_KEEP,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) history_per_session: u32,
    /// A kind served by an app beside this node (docs/external-handlers.md);
    /// repeatable, one KIND=URL each (an http:// URL, usually on loopback).
    #[arg(
        long = "external-kind",
        env = "MINOS_EXTERNAL_KIND",
        value_name = "KIND=URL",
        value_delimiter = ','
    )]
    pub(crate) external_kind: Vec<minos::external::ExternalKind>,
    /// Longest wait for an external app's answer, in milliseconds.
    #[arg(long, env = "MINOS_EXTERNAL_TIMEOUT_MS", value_name = "MS",
          default_value_t = minos::node::DEFAULT_EXTERNAL_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub(crate) external_timeout_ms: u64,
    /// A session idle this long (no call, no timer pending) gives up its task
    /// and live state until its next call, in milliseconds; 0: sessions keep
    /// their task.
    #[arg(long, env = "MINOS_PARK_AFTER_MS", value_name = "MS",
          default_value_t = minos::config::DEFAULT_PARK_AFTER.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub(crate) park_after_ms: u64,
    /// Open HTTP connections this node accepts (more are closed at once).
    #[arg(long, env = "MINOS_MAX_CONNECTIONS", default_value_t = minos::node::ConnLimits::default().max_connections as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections: u32,
    /// Open HTTP connections per client IP address.
    #[arg(long, env = "MINOS_MAX_CONNECTIONS_PER_IP", default_value_t = minos::node::ConnLimits::default().max_connections_per_ip as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) max_connections_per_ip: u32,
}

#[derive(Subcommand)]
pub(crate) enum SessionCommand {
    /// Create a session (it starts on the node placement picks).
    #[command(alias = "create")]
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
        /// Run only on nodes with this label, KEY=VALUE (repeat it, or
        /// separate with commas).
        #[arg(long, value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
        require: Vec<(String, String)>,
        /// Spread the kind's sessions over this label's values (e.g. zone):
        /// run on the value holding the fewest of them.
        #[arg(long, value_name = "KEY")]
        spread: Option<String>,
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
    /// Why and when a session changed owner (from the committed log: every
    /// node answers the same).
    History {
        #[command(flatten)]
        conn: Conn,
        /// Session id.
        id: String,
    },
    /// Print each committed change of a session as it happens (one JSON
    /// line each) until it is deleted or the node stops.
    Watch {
        #[command(flatten)]
        conn: Conn,
        /// Session id.
        id: String,
        /// Resume: print the current row only if it is newer than this version.
        #[arg(long)]
        from_version: Option<u64>,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
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
pub(crate) enum NodeCommand {
    /// Move a node's sessions away now; it takes no new ones.
    Drain {
        #[command(flatten)]
        conn: Conn,
        /// Node id (default: the node --addr names, as a Kubernetes
        /// preStop hook drains its own pod).
        id: Option<NodeId>,
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

impl ServeArgs {
    /// The timing flags as given; [`Timing::from_flags`] derives the timing.
    pub(crate) fn timing_flags(&self) -> TimingFlags {
        TimingFlags {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_min_ms,
            election_timeout_max_ms: self.election_timeout_max_ms,
            lease_ms: self.lease_ms,
            node_timeout_ms: self.node_timeout_ms,
            rebalance_after_ms: self.rebalance_after_ms,
            snapshot_every: self.snapshot_every,
        }
    }
}

/// Parses the command line, with the keys of `serve --config FILE` added
/// as flags (src/config_file.rs). A bad value (`--addr 7101`) is one line
/// of clap's error and exit code 2, and so is a bad config file; help,
/// version and usage errors are clap's own.
pub(crate) fn parse() -> Cli {
    let e = match minos::config_file::parse(std::env::args_os()) {
        Ok(cli) => return cli,
        Err(minos::config_file::ConfigFileError::Cli(e)) => e,
        Err(file) => {
            eprintln!("minos: {file}");
            std::process::exit(2);
        }
    };
    if matches!(
        e.kind(),
        clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
    ) {
        let text = e.render().to_string();
        let line = text.lines().next().unwrap_or("invalid value");
        eprintln!("minos: {}", line.trim_start_matches("error: "));
        std::process::exit(2);
    }
    e.exit()
}
