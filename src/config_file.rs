//! `minos serve --config FILE`: the TOML configuration file.
//!
//! Every `minos serve` flag has a key of the same name without the leading
//! dashes (`--node-timeout-ms 800` is `node-timeout-ms = 800`); an unknown
//! key is an error that names it. A flag given on the command line or in
//! its `MINOS_*` environment variable wins over the file.
//!
//! How: the command line is parsed once with the serve flags' "required"
//! rules relaxed, only to find `--config` and to learn, through
//! [`clap::ArgMatches::value_source`], which flags the user gave. Each key of
//! the file whose flag was not given becomes a flag appended to the command
//! line, which is then parsed for real: the file's values go through the
//! same parsers, ranges and conflict rules as flags, and the required flags
//! are required again. Relative paths in the file are relative to the
//! file's directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};

/// The keys of a configuration file: the flags of `minos serve` (see
/// `minos serve --help` for what each one means). deploy/minos.toml lists
/// every key with its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeFile {
    /// `--id`.
    pub id: Option<u64>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--peer-listen`.
    pub peer_listen: Option<String>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--peers`.
    pub peers: Option<String>,
    /// `--join`.
    pub join: Option<String>,
    /// `--cluster-secret-file`.
    pub cluster_secret_file: Option<PathBuf>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: Option<bool>,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: Option<u64>,
    /// `--election-timeout-min-ms`.
    pub election_timeout_min_ms: Option<u64>,
    /// `--election-timeout-max-ms`.
    pub election_timeout_max_ms: Option<u64>,
    /// `--node-timeout-ms`.
    pub node_timeout_ms: Option<u64>,
    /// `--lease-ms`.
    pub lease_ms: Option<u64>,
    /// `--rebalance-after-ms`.
    pub rebalance_after_ms: Option<u64>,
    /// `--rebalance-max-moves-per-sec`.
    pub rebalance_max_moves_per_sec: Option<u64>,
    /// `--label`, each `KEY=VALUE`.
    pub label: Option<Vec<String>>,
    /// `--max-sessions`.
    pub max_sessions: Option<u64>,
    /// `--snapshot-every`.
    pub snapshot_every: Option<u64>,
    /// `--log-format` (`text` or `json`).
    pub log_format: Option<String>,
    /// `--max-state-bytes`.
    pub max_state_bytes: Option<u64>,
    /// `--call-keys-kept`.
    pub call_keys_kept: Option<u64>,
    /// `--call-keys-max-age-s`.
    pub call_keys_max_age_s: Option<u64>,
    /// `--history-per-session`.
    pub history_per_session: Option<u64>,
    /// `--external-kind` (a list of `KIND=URL`).
    pub external_kind: Option<Vec<String>>,
    /// `--external-timeout-ms`.
    pub external_timeout_ms: Option<u64>,
    /// `--park-after-ms`.
    pub park_after_ms: Option<u64>,
    /// `--max-connections`.
    pub max_connections: Option<u64>,
    /// `--max-connections-per-ip`.
    pub max_connections_per_ip: Option<u64>,
}

/// What `minos config check` verifies of a resolved serve configuration
/// beyond the flags' own parsers (the credentials files aside): the timing
/// rules, and that the peers list gives this node its advertise address.
/// Returns the timing it resolves to, as a TOML comment.
pub fn check(
    id: u64,
    peers: Option<&str>,
    advertise: Option<&str>,
    timing: &crate::config::TimingFlags,
) -> Result<String, String> {
    let timing = crate::config::Timing::from_flags(timing)?;
    if let Some(peers) = peers {
        let peers = crate::node::parse_peers(peers)?;
        let mine = peers
            .get(&id)
            .ok_or_else(|| format!("peers do not include this node's id {id}"))?;
        if let Some(advertise) = advertise.filter(|a| a != mine) {
            return Err(format!(
                "peers give node {id} the address {mine}, but advertise is {advertise}"
            ));
        }
    }
    let ms = |d: std::time::Duration| d.as_millis();
    Ok(format!(
        "# timing this node runs with: heartbeat {} ms, election timeout {}-{} ms, \
         lease {} ms (renewed every {} ms), node timeout {} ms, quorum window {} ms, drift margin {} ms",
        ms(timing.heartbeat),
        ms(timing.election_timeout_min),
        ms(timing.election_timeout_max),
        ms(timing.lease_duration),
        ms(timing.lease_interval),
        ms(timing.node_timeout),
        ms(timing.quorum_window),
        ms(timing.drift_margin),
    ))
}

/// Flags that exclude each other: when the user gives one side (flag or
/// environment), the file's keys of the other side are dropped, so that a
/// flag overrides the file instead of conflicting with it.
const EXCLUSIVE: &[(&[&str], &[&str])] = &[
    (&["insecure"], &["cluster-secret-file", "token-file"]),
    (&["peers"], &["join"]),
];

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The command line itself is wrong (or asks for help): clap's own
    /// error, to be shown with [`clap::Error::exit`].
    #[error("{0}")]
    Cli(clap::Error),
    /// The file cannot be read.
    #[error("cannot read the config file {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not valid TOML, has an unknown key, or a value of the
    /// wrong type.
    #[error("config file {file}{at}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// ` line N` when known.
        at: String,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value of the file (or the resolved configuration) is refused.
    #[error("config file {0}: {1}")]
    Value(String, String),
}

impl ConfigFileError {
    /// The error as one line (clap's own errors included).
    pub fn one_line(&self) -> String {
        match self {
            ConfigFileError::Cli(e) => clap_reason(e),
            other => other.to_string(),
        }
    }
}

impl ServeFile {
    /// Reads and checks `path`; relative paths in it become relative to
    /// the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigFileError::Read(name.clone(), e))?;
        let mut file = Self::parse(&name, &text)?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in [
            &mut file.data_dir,
            &mut file.cluster_secret_file,
            &mut file.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(file)
    }

    /// Parses the text of a file named `name` (for messages).
    pub fn parse(name: &str, text: &str) -> Result<Self, ConfigFileError> {
        toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" line {line}")
                })
                .unwrap_or_default();
            let message = e.message().trim().replace('\n', " ");
            let message = match message.strip_prefix("unknown field ") {
                Some(rest) => format!(
                    "unknown key {} (the keys are the `minos serve` flags without the dashes)",
                    rest.split(',').next().unwrap_or(rest)
                ),
                None => message,
            };
            ConfigFileError::Invalid {
                file: name.to_string(),
                at,
                message,
            }
        })
    }

    /// The keys the file sets, each with the flags that give its value
    /// (`--key=value`; a `true` switch is `--key`, a `false` one nothing; a
    /// list is the flag once per item).
    pub fn flags(&self) -> Vec<(String, Vec<OsString>)> {
        let Ok(table) = toml::Table::try_from(self) else {
            return Vec::new();
        };
        table
            .into_iter()
            .map(|(key, value)| {
                let flag = |value: toml::Value| match value {
                    toml::Value::Boolean(true) => Some(OsString::from(format!("--{key}"))),
                    toml::Value::Boolean(false) => None,
                    toml::Value::String(s) => Some(OsString::from(format!("--{key}={s}"))),
                    // A list (`label = ["zone=a", "pool=games"]`) is one
                    // flag of comma-separated values.
                    toml::Value::Array(items) => {
                        let items: Vec<String> = items
                            .iter()
                            .map(|item| match item {
                                toml::Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect();
                        Some(OsString::from(format!("--{key}={}", items.join(","))))
                    }
                    other => Some(OsString::from(format!("--{key}={other}"))),
                };
                let flags = match value {
                    toml::Value::Array(items) => items.into_iter().filter_map(flag).collect(),
                    other => flag(other).into_iter().collect(),
                };
                (key, flags)
            })
            .collect()
    }
}

/// The clap id of a key (`data-dir` -> `data_dir`).
fn arg_id(key: &str) -> String {
    key.replace('-', "_")
}

/// True when the user gave this flag on the command line or in the
/// environment.
fn given(matches: &clap::ArgMatches, key: &str) -> bool {
    let id = arg_id(key);
    // An id serve does not know (a key without a flag) was not given; the
    // flag made of it then fails the final parse, naming the file.
    matches.try_contains_id(&id).unwrap_or(false)
        && matches!(
            matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
}

/// The command with the `serve` subcommand's required rules switched off
/// (the first pass, which only looks for `--config`).
fn relaxed(command: clap::Command) -> clap::Command {
    command.mut_subcommand("serve", |serve| {
        let ids: Vec<clap::Id> = serve.get_arguments().map(|a| a.get_id().clone()).collect();
        ids.into_iter().fold(serve, |serve, id| {
            serve.mut_arg(id, |arg| {
                arg.required(false)
                    .required_unless_present(clap::builder::Resettable::<clap::Id>::Reset)
            })
        })
    })
}

/// The command line with the config file's values added: `argv` itself
/// when it does not run `serve --config FILE`. `command` is the CLI's
/// command (`Cli::command()`), with a `serve` subcommand that has a
/// `config` argument.
pub fn argv_with_file(
    command: clap::Command,
    mut argv: Vec<OsString>,
) -> Result<(Vec<OsString>, Option<PathBuf>), ConfigFileError> {
    let matches = match relaxed(command.clone()).try_get_matches_from(&argv) {
        Ok(matches) => matches,
        // Help, version and errors as the real command shows them (its
        // usage line lists the required flags).
        Err(e) => {
            let real = command.try_get_matches_from(&argv).err().unwrap_or(e);
            return Err(ConfigFileError::Cli(real));
        }
    };
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok((argv, None));
    };
    let Some(path) = serve.get_one::<PathBuf>("config").cloned() else {
        return Ok((argv, None));
    };
    let file = ServeFile::load(&path)?;
    let mut dropped: Vec<&str> = Vec::new();
    for (a, b) in EXCLUSIVE {
        if a.iter().any(|k| given(serve, k)) {
            dropped.extend_from_slice(b);
        }
        if b.iter().any(|k| given(serve, k)) {
            dropped.extend_from_slice(a);
        }
    }
    for (key, flag) in file.flags() {
        if given(serve, &key) || dropped.contains(&key.as_str()) {
            continue;
        }
        argv.extend(flag);
    }
    Ok((argv, Some(path)))
}

/// Parses the command line of `P` (the CLI), with the values of
/// `serve --config FILE` added. An error of the final parse caused by the
/// file names the file.
pub fn parse<P: clap::Parser>(
    argv: impl IntoIterator<Item = OsString>,
) -> Result<P, ConfigFileError> {
    let (argv, file) = argv_with_file(P::command(), argv.into_iter().collect())?;
    P::try_parse_from(&argv).map_err(|e| match file {
        Some(file) if !matches!(e.kind(), clap::error::ErrorKind::DisplayHelp) => {
            ConfigFileError::Value(file.display().to_string(), clap_reason(&e))
        }
        _ => ConfigFileError::Cli(e),
    })
}

/// The first line of a clap error, without clap's `error: ` prefix.
pub fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    // The first paragraph (a missing-arguments error lists them below its
    // first line), as one line.
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect();
    let line = first.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = ServeFile::parse("m.toml", "id = 1\nlisten = \"a:1\"\nhartbeat-ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `hartbeat-ms`"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = ServeFile::parse("m.toml", "id = \"one\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.toml line 1"), "{e}");
    }

    #[test]
    fn flags_carry_values_and_switches() {
        let file = ServeFile::parse(
            "m.toml",
            "id = 2\npeers = \"1=a:1,2=b:2\"\ninsecure = true\nheartbeat-ms = 40\n\
             external-kind = [\"game=http://127.0.0.1:4000/m\", \"room=http://127.0.0.1:4001/\"]\n",
        )
        .unwrap();
        let flags: Vec<String> = file
            .flags()
            .into_iter()
            .flat_map(|(_, f)| f.into_iter().map(|f| f.to_string_lossy().into_owned()))
            .collect();
        for want in [
            "--id=2",
            "--peers=1=a:1,2=b:2",
            "--insecure",
            "--heartbeat-ms=40",
            "--external-kind=game=http://127.0.0.1:4000/m",
            "--external-kind=room=http://127.0.0.1:4001/",
        ] {
            assert!(flags.iter().any(|f| f == want), "{want} missing: {flags:?}");
        }
        let off = ServeFile::parse("m.toml", "insecure = false\n").unwrap();
        assert_eq!(off.flags(), vec![("insecure".to_string(), vec![])]);
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "data-dir = \"data\"\ntoken-file = \"/abs/tokens\"\n").unwrap();
        let file = ServeFile::load(&path).unwrap();
        assert_eq!(file.data_dir, Some(dir.path().join("data")));
        assert_eq!(file.token_file, Some(PathBuf::from("/abs/tokens")));
    }
}
