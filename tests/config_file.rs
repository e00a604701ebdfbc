//! `minos serve --config FILE` and `minos config check FILE` through the
//! real binary: the example deploy/minos.toml, unknown keys, precedence of
//! flags and environment over the file, and a node started from a file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use minos::testkit::await_until;
use minos::testkit::process::{free_ports, write_private};

fn minos() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minos"));
    // The test's own environment must not configure the nodes.
    for (key, _) in std::env::vars() {
        if key.starts_with("MINOS_") {
            command.env_remove(key);
        }
    }
    command.env("NO_COLOR", "1");
    command
}

fn run(command: &mut Command) -> Output {
    command.stdin(Stdio::null()).output().expect("minos runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/minos.toml")
}

/// Credentials files in `dir`: (cluster secret, tokens).
fn credentials(dir: &Path) -> (PathBuf, PathBuf) {
    let secret = dir.join("cluster.secret");
    let tokens = dir.join("tokens");
    write_private(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    write_private(
        &tokens,
        "admin admin-token-0123456789abcdef\nclient client-token-0123456789abcdef\n",
    )
    .unwrap();
    (secret, tokens)
}

#[test]
fn the_example_file_checks_with_its_credentials_present() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, tokens) = credentials(dir.path());
    let out = run(minos()
        .args(["config", "check"])
        .arg(example())
        .env("MINOS_CLUSTER_SECRET_FILE", &secret)
        .env("MINOS_TOKEN_FILE", &tokens));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    for line in [
        "id = 1",
        "listen = \"127.0.0.1:7101\"",
        "heartbeat-ms = 50",
        "max-connections = 8192",
        "# timing this node runs with: heartbeat 50 ms, election timeout 150-300 ms, lease 500 ms",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    // The environment overrode the file's credentials paths.
    assert!(stdout.contains(&secret.display().to_string()), "{stdout}");
}

#[test]
fn missing_credentials_files_fail_the_check_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tokens) = credentials(dir.path());
    let missing = dir.path().join("no-such.secret");
    let out = run(minos()
        .args(["config", "check"])
        .arg(example())
        .env("MINOS_CLUSTER_SECRET_FILE", &missing)
        .env("MINOS_TOKEN_FILE", &tokens));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such.secret"), "{stderr}");
}

#[test]
fn an_unknown_key_fails_with_exit_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("minos.toml");
    let example = std::fs::read_to_string(example()).unwrap();
    std::fs::write(&file, format!("{example}\nnode-timout-ms = 900\n")).unwrap();
    for args in [&["config", "check"][..], &["serve", "--config"][..]] {
        let out = run(minos().args(args).arg(&file));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("unknown key `node-timout-ms`"),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn a_bad_value_in_the_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, tokens) = credentials(dir.path());
    let file = dir.path().join("minos.toml");
    let cases = [
        ("id = 0\n", "invalid value '0' for '--id"),
        ("id = \"one\"\n", "line 1: invalid type"),
        ("lease-ms = 900\n", "must be below the node timeout"),
        ("call-keys-kept = 0\n", "--call-keys-kept"),
    ];
    for (line, want) in cases {
        let body = format!(
            "{line}listen = \"127.0.0.1:1\"\ndata-dir = \"d\"\npeers = \"1=127.0.0.1:1\"\n\
             cluster-secret-file = {secret:?}\ntoken-file = {tokens:?}\n"
        );
        let body = if line.starts_with("id") {
            body
        } else {
            format!("id = 1\n{body}")
        };
        std::fs::write(&file, body).unwrap();
        let out = run(minos().args(["config", "check"]).arg(&file));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {stderr}");
        assert!(stderr.contains(want), "{line}: want {want:?} in {stderr}");
    }
}

#[test]
fn environment_and_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (secret, tokens) = credentials(dir.path());
    let out = run(minos()
        .args(["config", "check"])
        .arg(example())
        .env("MINOS_CLUSTER_SECRET_FILE", &secret)
        .env("MINOS_TOKEN_FILE", &tokens)
        .env("MINOS_HEARTBEAT_MS", "40"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("heartbeat-ms = 40"), "{stdout}");
    // A flag wins over the file: this one breaks the timing rule, and the
    // refusal shows that it, not the file's 150, was used.
    let out = run(minos()
        .args(["serve", "--config"])
        .arg(example())
        .args(["--election-timeout-min-ms", "350"])
        .env("MINOS_CLUSTER_SECRET_FILE", &secret)
        .env("MINOS_TOKEN_FILE", &tokens));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("election timeout min (350 ms)"), "{stderr}");
    // --insecure on the command line drops the file's credentials instead
    // of conflicting with them.
    let out = run(minos()
        .args(["config", "check"])
        .arg(example())
        .env("MINOS_INSECURE", "true"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("insecure = true"), "{stdout}");
    assert!(!stdout.contains("token-file"), "{stdout}");
}

/// Every `minos serve` flag has a key in deploy/minos.toml (set, or shown
/// commented out with its default).
#[test]
fn the_example_file_has_a_key_for_every_serve_flag() {
    let out = run(minos().args(["serve", "--help"]));
    let help = text(&out.stdout);
    let example = std::fs::read_to_string(example()).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches([',', '.', ')', '`']))
        .filter(|w| !w.is_empty() && !["help", "config", "addr", "token"].contains(w))
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .collect();
    assert!(flags.len() >= 15, "too few flags found in:\n{help}");
    for flag in flags {
        let set = format!("\n{flag} = ");
        let shown = format!("\n# {flag} = ");
        assert!(
            example.contains(&set) || example.contains(&shown),
            "deploy/minos.toml has no key {flag:?}"
        );
    }
}

/// A node runs from a file alone (a one-node cluster, insecure), with
/// relative paths taken from the file's directory.
#[tokio::test]
async fn a_node_starts_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1).unwrap()[0];
    let file = dir.path().join("minos.toml");
    std::fs::write(
        &file,
        format!(
            "id = 1\nlisten = \"127.0.0.1:{port}\"\ndata-dir = \"data\"\n\
             peers = \"1=127.0.0.1:{port}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    let mut child = minos()
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = minos::Client::new(format!("127.0.0.1:{port}"));
    // Healthy (true) or exited (false), whichever comes first.
    let healthy = await_until("the node healthy", Duration::from_secs(30), || {
        let exited = child.try_wait().unwrap().is_some();
        let client = client.clone();
        async move {
            if client.health().await.is_ok() {
                return Some(true);
            }
            exited.then_some(false)
        }
    })
    .await
    .unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    assert!(healthy, "the node did not become healthy");
    assert!(
        dir.path().join("data").is_dir(),
        "data-dir is relative to the file"
    );
}

/// A list key (`label = [..]`) becomes the repeated flag: `config check`
/// prints it back as it was given, and a bad label in it is refused with
/// exit 2 naming the file and the label.
#[test]
fn labels_in_the_file_become_flags_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("minos.toml");
    let base = "id = 1\nlisten = \"127.0.0.1:7101\"\ndata-dir = \"d\"\n\
                peers = \"1=127.0.0.1:7101\"\ninsecure = true\nmax-sessions = 100\n";
    std::fs::write(
        &file,
        format!("{base}label = [\"zone=a\", \"pool=games\"]\n"),
    )
    .unwrap();
    let out = run(minos().args(["config", "check"]).arg(&file));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("label = [\"zone=a\", \"pool=games\"]"),
        "{stdout}"
    );
    assert!(stdout.contains("max-sessions = 100"), "{stdout}");
    std::fs::write(&file, format!("{base}label = [\"nokey\"]\n")).unwrap();
    let out = run(minos().args(["config", "check"]).arg(&file));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("label \"nokey\" is not KEY=VALUE"),
        "{stderr}"
    );
}

/// `--label` without `=` is a usage error: exit 2 and one line saying why.
#[test]
fn a_bad_label_flag_is_one_line_and_exit_2() {
    let out = run(minos().args([
        "serve",
        "--id",
        "1",
        "--listen",
        "127.0.0.1:7101",
        "--data-dir",
        "d",
        "--peers",
        "1=127.0.0.1:7101",
        "--insecure",
        "--label",
        "nokey",
    ]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("label \"nokey\" is not KEY=VALUE"),
        "{stderr}"
    );
}
