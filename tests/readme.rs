//! README.md's CLI, checked against the real `minos` binary and a real
//! cluster of `minos serve` processes:
//!
//! - the failover demo and the CLI transcript run as written, in README
//!   order, and every sample output in the transcript must be what the
//!   commands print (see [`normalise`] for the few values that may differ);
//! - the CLI's surface: flags only where they apply, `--addr` validated,
//!   defaults and every environment variable in `--help`, and each of those
//!   variables in README, `--version` with the commit, completions;
//! - `node undrain` undoes `node drain`, and `cluster status` without a
//!   quorum shows the nodes it cannot confirm as `unknown`.

#[path = "common/process.rs"]
mod process_common;

use std::collections::BTreeMap;
use std::time::Duration;

use minos::api::{ClusterView, NodeViewStatus};
use minos::model::NodeId;
use minos::testkit::await_until;
use minos::testkit::process::{ProcessCluster, ProcessOptions};
use process_common::BIN;

const README: &str = include_str!("../README.md");

/// Fenced code blocks of a Markdown text: (info string, lines).
fn code_blocks(text: &str) -> Vec<(String, Vec<String>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.trim().to_string(), Vec::new())),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some((_, lines)), None) => lines.push(line.to_string()),
            (None, None) => {}
        }
    }
    blocks
}

/// The README's section under `heading` (to its next `## ` heading).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// What a command printed: stdout, then stderr (each command of the
/// samples prints on one of them), and its exit code.
struct Ran {
    code: Option<i32>,
    out: String,
}

/// Runs README's commands against a [`ProcessCluster`]: `minos ...` as the
/// real binary (its README addresses `127.0.0.1:710N` mapped to node N of
/// the test cluster), `scripts/cluster.sh kill|term|restart N` on the
/// cluster's processes (`start` is the cluster the test started), and
/// `export NAME=VALUE`.
struct Shell<'a> {
    cluster: &'a mut ProcessCluster,
    env: BTreeMap<String, String>,
    /// Values for placeholders in commands (`N`: the owner the demo notes).
    placeholders: BTreeMap<String, String>,
    dir: tempfile::TempDir,
}

impl<'a> Shell<'a> {
    fn new(cluster: &'a mut ProcessCluster) -> Self {
        Self {
            cluster,
            env: BTreeMap::new(),
            placeholders: BTreeMap::new(),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// README's addresses to the test cluster's.
    fn to_cluster(&self, text: &str) -> String {
        let mut text = text.to_string();
        for id in self.cluster.ids() {
            text = text.replace(&format!("127.0.0.1:{}", 7100 + id), &self.cluster.addr(id));
        }
        text
    }

    /// The test cluster's addresses to README's.
    fn to_readme(&self, text: &str) -> String {
        let mut text = text.to_string();
        for id in self.cluster.ids() {
            text = text.replace(&self.cluster.addr(id), &format!("127.0.0.1:{}", 7100 + id));
        }
        text
    }

    /// Runs one command line; `None` for a line that is not a command
    /// this shell knows (it must not be in a checked block).
    async fn run(&mut self, line: &str) -> Result<Ran, String> {
        let (line, echo_code) = match line.trim().strip_suffix("; echo $?") {
            Some(command) => (command, true),
            None => (line.trim(), false),
        };
        let mut words: Vec<String> = shlex::split(line)
            .ok_or_else(|| format!("cannot split {line:?}"))?
            .into_iter()
            .take_while(|w| !w.starts_with('#'))
            .map(|w| self.placeholders.get(&w).cloned().unwrap_or(w))
            .collect();
        let mut env = self.env.clone();
        while let Some((name, value)) = words.first().and_then(|w| w.split_once('=')) {
            if !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                break;
            }
            env.insert(name.to_string(), self.to_cluster(value));
            words.remove(0);
        }
        let ran = match words.first().map(String::as_str) {
            Some("minos") => self.minos(&words[1..], &env).await?,
            Some("export") => {
                for assignment in &words[1..] {
                    let (name, value) = assignment
                        .split_once('=')
                        .ok_or_else(|| format!("export {assignment:?}"))?;
                    self.env.insert(name.to_string(), self.to_cluster(value));
                }
                Ran {
                    code: Some(0),
                    out: String::new(),
                }
            }
            Some("scripts/cluster.sh") => self.cluster_sh(&words[1..]).await?,
            _ => return Err(format!("README command not known to this test: {line:?}")),
        };
        Ok(if echo_code {
            Ran {
                out: format!("{}{}\n", ran.out, ran.code.unwrap_or(-1)),
                code: Some(0),
            }
        } else {
            ran
        })
    }

    async fn minos(&self, args: &[String], env: &BTreeMap<String, String>) -> Result<Ran, String> {
        let args: Vec<String> = args.iter().map(|a| self.to_cluster(a)).collect();
        let mut command = tokio::process::Command::new(BIN);
        command
            .args(&args)
            .current_dir(self.dir.path())
            .env_remove("MINOS_ADDR")
            .env_remove("MINOS_LOG")
            .env_remove("MINOS_TOKEN_FILE")
            .env_remove("MINOS_CLUSTER_DIR")
            // What scripts/cluster.sh would have the CLI read from admin.token.
            .env("MINOS_TOKEN", &self.cluster.credentials().admin_token)
            .envs(env)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .map_err(|_| format!("minos {args:?} did not exit within 30 s"))?
            .map_err(|e| format!("minos {args:?}: {e}"))?;
        Ok(Ran {
            code: output.status.code(),
            out: self.to_readme(&format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
        })
    }

    async fn cluster_sh(&mut self, args: &[String]) -> Result<Ran, String> {
        let node = |i: usize| -> Result<NodeId, String> {
            args.get(i)
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("scripts/cluster.sh {args:?}: no node id"))
        };
        match args.first().map(String::as_str) {
            Some("start") => {}
            Some("kill") => self.cluster.kill(node(1)?).await?,
            Some("term") => self.cluster.term(node(1)?).await?,
            Some("restart") => {
                let id = node(1)?;
                self.cluster.restart(id).await?;
                // cluster.sh restart waits for health; the samples after it
                // need the node Up in the table too (placement of new
                // sessions), which follows within a lease interval or two.
                await_status(self.cluster, 1, id, NodeViewStatus::Up).await?;
            }
            other => {
                return Err(format!(
                    "scripts/cluster.sh {other:?} not known to this test"
                ))
            }
        }
        Ok(Ran {
            code: Some(0),
            out: String::new(),
        })
    }
}

/// Waits (20 s at most) until node `ask` shows node `id` with `status`.
async fn await_status(
    cluster: &ProcessCluster,
    ask: NodeId,
    id: NodeId,
    status: NodeViewStatus,
) -> Result<ClusterView, String> {
    let last = std::sync::Mutex::new(String::new());
    await_until("a node status", Duration::from_secs(20), || {
        let client = cluster.client(ask);
        let last = &last;
        async move {
            match client.cluster().await {
                Ok(view) if view.nodes.iter().any(|n| n.id == id && n.status == status) => {
                    Some(view)
                }
                Ok(view) => {
                    *last.lock().unwrap() = format!("{view:?}");
                    None
                }
                Err(e) => {
                    *last.lock().unwrap() = e.to_string();
                    None
                }
            }
        }
    })
    .await
    .map_err(|_| {
        format!(
            "node {ask} did not show node {id} {status:?} within 20 s; last: {}",
            last.lock().unwrap()
        )
    })
}

/// Output as compared with README's samples. Normalised, and nothing else:
/// - RFC 3339 timestamps in quotes (`created_at`, `updated_at`, a game's
///   `round_end_time`): the wall clock, as `"<time>"`;
/// - the leader and term in `cluster status`'s first line, and the `*`
///   after the leader's row: which node wins the first election varies;
/// - runs of spaces, to one: the test cluster's ports have more digits
///   than README's 7101-7103, which shifts the table's columns.
fn normalise(text: &str) -> String {
    text.lines()
        .map(|line| {
            let mut line = timestamps(line);
            if let Some(rest) = line.strip_prefix("leader: ") {
                let after_term = rest
                    .find("sessions:")
                    .map_or(String::new(), |i| rest[i..].to_string());
                line = format!("leader: <id> term: <n> {after_term}");
            }
            let line = line.strip_suffix(" *").unwrap_or(&line).to_string();
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replaces every quoted RFC 3339 timestamp with `"<time>"`.
fn timestamps(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        let Some(end) = rest.find('"') else { break };
        let inner = &rest[..end];
        if chrono::DateTime::parse_from_rfc3339(inner).is_ok() {
            out.push_str("<time>");
        } else {
            out.push_str(inner);
        }
        out.push('"');
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The samples of a transcript block: each `$ command` and the lines after
/// it up to the next command.
fn transcript(lines: &[String]) -> Vec<(String, String)> {
    let mut samples: Vec<(String, String)> = Vec::new();
    for line in lines {
        match line.strip_prefix("$ ") {
            Some(command) => samples.push((command.to_string(), String::new())),
            None => {
                if let Some((_, out)) = samples.last_mut() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    samples
}

fn owner_of(json: &str) -> Result<NodeId, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))?;
    value["owner"]
        .as_u64()
        .ok_or_else(|| format!("no owner in {json}"))
}

/// README from the failover demo through the CLI transcript, as a reader
/// follows it: the demo's commands run as written (its `N` is the owner
/// `session get` printed), then every sample of the transcript must print
/// what README shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_demo_and_samples_are_what_the_commands_print() -> Result<(), String> {
    let mut cluster = ProcessCluster::start(ProcessOptions::new(BIN)).await?;
    let mut shell = Shell::new(&mut cluster);

    eprintln!("--- README: the failover demo");
    let demo = code_blocks(section(README, "## The failover demo"))
        .into_iter()
        .find(|(info, _)| info == "sh")
        .ok_or("the failover demo has no sh block")?
        .1;
    let mut owner_before = None;
    let mut last = String::new();
    for line in demo
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let ran = shell.run(line).await?;
        eprintln!("$ {line}\n{}", ran.out);
        assert_eq!(ran.code, Some(0), "{line}: {}", ran.out);
        if line.contains("minos session get GAME-1") {
            let owner = owner_of(&ran.out)?;
            owner_before = Some(owner);
            shell.placeholders.insert("N".into(), owner.to_string());
        }
        if line.contains("'{\"op\":\"get_game\"}'") {
            last = ran.out;
        }
    }
    let owner_before = owner_before.ok_or("the demo never ran session get GAME-1")?;
    // What README says of the run: placed on node 1, answered after the kill
    // by another node at a higher epoch, with ariadne's action.
    assert_eq!(owner_before, 1, "README says the game was placed on node 1");
    let answer: serde_json::Value =
        serde_json::from_str(&last).map_err(|e| format!("the get_game answer: {e}: {last}"))?;
    assert_ne!(answer["owner"].as_u64(), Some(owner_before), "{answer}");
    assert!(answer["epoch"].as_u64() > Some(1), "{answer}");
    // README names them: node 2 at epoch 2 (placement is deterministic).
    assert_eq!(
        (answer["owner"].as_u64(), answer["epoch"].as_u64()),
        (Some(2), Some(2)),
        "README says: answered by node 2 at epoch 2; {answer}"
    );
    assert_eq!(
        answer["reply"]["registered_actions"]["ariadne"],
        serde_json::json!({"move": "north"}),
        "{answer}"
    );

    eprintln!("--- README: the CLI transcript");
    let blocks: Vec<Vec<String>> = code_blocks(section(README, "## CLI"))
        .into_iter()
        .filter(|(info, lines)| info == "text" && lines.iter().any(|l| l.starts_with("$ minos")))
        .map(|(_, lines)| lines)
        .collect();
    assert!(!blocks.is_empty(), "README's CLI section has no transcript");
    let mut mismatches = Vec::new();
    let mut actual_transcript = String::new();
    for block in &blocks {
        for (command, expected) in transcript(block) {
            let ran = shell.run(&command).await?;
            actual_transcript.push_str(&format!("$ {command}\n{}", ran.out));
            if normalise(&ran.out) != normalise(&expected) {
                mismatches.push(format!(
                    "$ {command}\nREADME:\n{expected}printed:\n{}",
                    ran.out
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "README samples differ from what the commands print:\n{}\n--- the whole transcript as printed:\n{actual_transcript}",
        mismatches.join("\n")
    );
    Ok(())
}

/// Runs the binary without a cluster (bounded to 30 s).
async fn minos(args: &[&str]) -> Result<(Option<i32>, String, String), String> {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(args)
            .env_remove("MINOS_ADDR")
            .env_remove("MINOS_TOKEN")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("minos {args:?} did not exit within 30 s"))?
    .map_err(|e| format!("minos {args:?}: {e}"))?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

async fn help(args: &[&str]) -> Result<String, String> {
    let mut args = args.to_vec();
    args.push("--help");
    let (code, out, err) = minos(&args).await?;
    assert_eq!(code, Some(0), "minos {args:?}: {err}");
    Ok(out)
}

/// Every `MINOS_*` name in a text.
fn env_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("MINOS_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let name = name.trim_end_matches('_').to_string();
        if name != "MINOS" && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[tokio::test]
async fn the_cli_shows_flags_where_they_apply_and_documents_its_environment() -> Result<(), String>
{
    // --addr and --token only on the commands that talk to a node.
    for command in [
        &["serve"][..],
        &["bench"],
        &["bench", "failover"],
        &["bench", "plot"],
        &["chaos"],
        &["completions"],
    ] {
        let text = help(command).await?;
        for flag in ["--addr <", "--token <"] {
            assert!(
                !text.contains(flag),
                "minos {command:?} --help shows {flag}:\n{text}"
            );
        }
    }
    for command in [
        &["session", "start"][..],
        &["session", "get"],
        &["session", "list"],
        &["session", "call"],
        &["session", "stop"],
        &["cluster", "status"],
        &["cluster", "rebalance"],
        &["node", "drain"],
        &["node", "undrain"],
        &["node", "remove"],
    ] {
        let text = help(command).await?;
        for shown in [
            "--addr <HOST:PORT>",
            "MINOS_ADDR",
            "--token",
            "MINOS_TOKEN",
            "--json",
        ] {
            assert!(
                text.contains(shown),
                "minos {command:?} --help lacks {shown}:\n{text}"
            );
        }
    }

    // Defaults visible: serve's timing flags show Timing::default().
    let serve = help(&["serve"]).await?;
    let defaults = minos::config::Timing::default();
    for (flag, value) in [
        ("--heartbeat-ms", defaults.heartbeat),
        ("--election-timeout-min-ms", defaults.election_timeout_min),
        ("--election-timeout-max-ms", defaults.election_timeout_max),
        ("--node-timeout-ms", defaults.node_timeout),
        ("--lease-ms", defaults.lease_duration),
    ] {
        let text = serve.split(flag).nth(1).unwrap_or("");
        let until_next = &text[..text.find("[env:").unwrap_or(text.len())];
        let want = format!("[default: {} ms", value.as_millis());
        assert!(
            until_next.contains(&want),
            "{flag}: {want:?} not in {until_next:?}"
        );
    }
    assert!(serve.contains("--log-format"), "{serve}");
    assert!(serve.contains("MINOS_LOG"), "{serve}");

    // Every environment variable of every help text is in README.
    let mut texts = vec![help(&[]).await?, serve.clone()];
    for command in [
        &["session", "get"][..],
        &["cluster", "status"],
        &["bench", "failover"],
        &["chaos"],
    ] {
        texts.push(help(command).await?);
    }
    let names = env_names(&texts.join("\n"));
    for name in [
        "MINOS_LOG",
        "MINOS_TOKEN_FILE",
        "MINOS_CLUSTER_DIR",
        "MINOS_ADDR",
        "MINOS_ID",
    ] {
        assert!(
            names.contains(&name.to_string()),
            "--help lacks {name}: {names:?}"
        );
    }
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !README.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "in --help, not in README: {missing:?}");

    // --version names the commit (or `unknown` outside a git checkout).
    let (code, version, _) = minos(&["--version"]).await?;
    assert_eq!(code, Some(0));
    assert!(version.contains("(commit "), "{version}");

    // A bare port is refused with one line naming the expected form.
    for bad in ["7101", "127.0.0.1", "localhost:http", ":7101"] {
        let (code, out, err) = minos(&["session", "get", "x", "--addr", bad]).await?;
        assert_eq!(code, Some(2), "--addr {bad}: {out}{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "--addr {bad}: {err:?}");
        assert!(err.contains("HOST:PORT"), "--addr {bad}: {err:?}");
    }
    let (code, _, err) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(["cluster", "status"])
            .env("MINOS_ADDR", "7101")
            .output(),
    )
    .await
    .map_err(|_| "timed out")?
    .map(|o| {
        (
            o.status.code(),
            (),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    })
    .map_err(|e| e.to_string())?;
    assert_eq!(code, Some(2), "MINOS_ADDR=7101: {err}");
    assert!(err.contains("HOST:PORT"), "{err}");

    // Completions for a shell.
    let (code, script, err) = minos(&["completions", "bash"]).await?;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        script.contains("minos") && script.contains("undrain"),
        "{script}"
    );
    let (code, _, _) = minos(&["completions", "tcsh-or-so"]).await?;
    assert_eq!(code, Some(2));
    Ok(())
}

/// `node drain` then `node undrain` through the CLI: the node is Up again
/// (and takes sessions); then, with two of three nodes killed, `cluster
/// status` on the survivor shows them as `unknown`, not `up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn undrain_undoes_a_drain_and_status_without_quorum_is_unknown() -> Result<(), String> {
    let mut cluster = ProcessCluster::start(ProcessOptions::new(BIN)).await?;
    let mut shell = Shell::new(&mut cluster);
    let node1 = shell.cluster.addr(1);
    shell.env.insert("MINOS_ADDR".into(), node1);
    let shell = &mut shell;

    let ran = shell.run("minos node drain 3").await?;
    assert_eq!(ran.code, Some(0), "{}", ran.out);
    await_status(shell.cluster, 1, 3, NodeViewStatus::Draining).await?;
    let ran = shell.run("minos cluster status").await?;
    assert!(ran.out.contains("draining"), "{}", ran.out);

    let ran = shell.run("minos node undrain 3").await?;
    assert_eq!(ran.code, Some(0), "{}", ran.out);
    let answer: serde_json::Value = serde_json::from_str(&ran.out).map_err(|e| e.to_string())?;
    assert_eq!(answer, serde_json::json!({"node": 3, "status": "up"}));
    // Through another node than the leader too, and on an Up node: no-op.
    let ran = shell
        .run("MINOS_ADDR=127.0.0.1:7102 minos node undrain 3")
        .await?;
    assert_eq!(ran.code, Some(0), "{}", ran.out);
    for ask in [1, 2, 3] {
        await_status(shell.cluster, ask, 3, NodeViewStatus::Up).await?;
    }
    // Up means eligible again: new sessions are placed on it.
    for i in 0..12 {
        let ran = shell.run(&format!("minos session start u{i}")).await?;
        assert_eq!(ran.code, Some(0), "{}", ran.out);
    }
    let view = shell
        .cluster
        .client(1)
        .cluster()
        .await
        .map_err(|e| e.to_string())?;
    let on_3 = view.nodes.iter().find(|n| n.id == 3).map(|n| n.sessions);
    assert!(
        on_3 > Some(0),
        "node 3 took no session after undrain: {view:?}"
    );
    // An unknown node: 404, exit 2.
    let ran = shell.run("minos node undrain 9").await?;
    assert_eq!(ran.code, Some(2), "{}", ran.out);

    let ran = shell.run("minos cluster status --json").await?;
    let view: ClusterView = serde_json::from_str(&ran.out).map_err(|e| e.to_string())?;
    assert!(view.quorum, "{view:?}");

    // Two of three gone: node 1 cannot confirm them. The table it holds
    // still says Up (no quorum commits NodeDown), so without the rule they
    // would show `up` forever.
    shell.cluster.kill(2).await?;
    shell.cluster.kill(3).await?;
    let last = std::sync::Mutex::new(String::new());
    // `run` needs the shell mutably; each probe borrows it in turn.
    let shared = tokio::sync::Mutex::new(&mut *shell);
    let view = await_until("the dead nodes unknown", Duration::from_secs(20), || {
        let (shared, last) = (&shared, &last);
        async move {
            let ran = shared
                .lock()
                .await
                .run("minos cluster status --json")
                .await
                .ok()?;
            *last.lock().unwrap() = ran.out.clone();
            let view = serde_json::from_str::<ClusterView>(&ran.out).ok()?;
            let unknown = |id| {
                view.nodes
                    .iter()
                    .any(|n| n.id == id && n.status == NodeViewStatus::Unknown)
            };
            (unknown(2) && unknown(3)).then_some(view)
        }
    })
    .await
    .map_err(|_| {
        format!(
            "node 1 still shows the dead nodes as known after 20 s: {}",
            last.lock().unwrap()
        )
    })?;
    assert!(!view.quorum, "{view:?}");
    let me = view.nodes.iter().find(|n| n.id == 1).map(|n| n.status);
    assert_ne!(
        me,
        Some(NodeViewStatus::Unknown),
        "node 1 knows itself: {view:?}"
    );
    let ran = shell.run("minos cluster status").await?;
    assert_eq!(ran.code, Some(0), "{}", ran.out);
    assert!(ran.out.contains("no quorum"), "{}", ran.out);
    assert_eq!(ran.out.matches(" unknown ").count(), 2, "{}", ran.out);
    Ok(())
}
