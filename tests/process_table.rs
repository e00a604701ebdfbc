//! Multi-process tests of the replicated session table (issue 3): real
//! `minos serve` processes on loopback, real sled on disk, real signals.
//!
//! Bad input is refused at the edge with a documented 4xx and never reaches
//! the log; the CLI maps failures to exit codes; a node never opens another
//! cluster's or node's data and never forks on restart; without a quorum
//! writes fail fast with 503 and the cluster resumes by itself; acknowledged
//! creates survive a crash of every node; a killed leader is replaced quickly;
//! a follower that missed a snapshot's worth of log catches up.
//!
//! Every wait is a condition with a deadline; every load loop is bounded in
//! count and time. Measurements are printed with `eprintln!` (run with
//! `--nocapture` to see them).

#[path = "common/process.rs"]
mod process_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use minos::client::{Client, ClientError, NewSession};
use minos::model::NodeId;
use minos::testkit::await_until;
use minos::testkit::process::{free_ports, ProcessCluster, ProcessOptions, Signal};
use process_common::{admin_http, all_sessions, metric, BIN};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

/// Bound on waits for things that normally take well under a second.
const DEADLINE: Duration = Duration::from_secs(20);

async fn start_cluster(serve_args: &[&str]) -> Result<ProcessCluster, String> {
    let mut options = ProcessOptions::new(BIN);
    options.serve_args = serve_args.iter().map(|s| s.to_string()).collect();
    ProcessCluster::start(options).await
}

async fn last_log_index(http: &reqwest::Client, addr: &str) -> Result<u64, String> {
    Ok(metric(http, addr, "minos_raft_last_log_index").await? as u64)
}

async fn applied_index(http: &reqwest::Client, addr: &str) -> Result<u64, String> {
    Ok(metric(http, addr, "minos_raft_applied_index").await? as u64)
}

/// Sends one raw request; returns the status and the body as JSON
/// (`Value::String` with the raw text when the body is not JSON).
async fn raw(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Value), String> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_vec());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, body))
}

/// Asserts the documented error shape `{"error":{"code","message"}}`.
fn assert_error(what: &str, status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        status, want_status,
        "{what}: status {status} (want {want_status}), body {body}"
    );
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("{what}: no \"error\" object in {body}"));
    assert_eq!(
        body.as_object().map(|o| o.len()),
        Some(1),
        "{what}: only \"error\" at the top level: {body}"
    );
    assert_eq!(
        error["code"].as_str(),
        Some(want_code),
        "{what}: error code in {body}"
    );
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: empty error message in {body}"
    );
}

struct CliOutput {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the `minos` CLI (bounded to 30 s).
async fn cli(args: &[&str]) -> Result<CliOutput, String> {
    let child = tokio::process::Command::new(BIN)
        .args(args)
        .env_remove("MINOS_ADDR")
        .env_remove("MINOS_LOG")
        .env_remove("MINOS_TOKEN")
        .env_remove("MINOS_TOKEN_FILE")
        .env_remove("MINOS_CLUSTER_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .map_err(|_| format!("minos {args:?} did not exit within 30 s"))?
        .map_err(|e| format!("minos {args:?}: {e}"))?;
    Ok(CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn assert_cli_failure(what: &str, out: &CliOutput, code: i32, contains: &str) {
    assert_eq!(
        out.code,
        Some(code),
        "{what}: exit code; stderr {:?}",
        out.stderr
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "{what}: stderr must be one line: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains(contains),
        "{what}: stderr {:?} should mention {contains:?}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "{what}: nothing on stdout: {:?}",
        out.stdout
    );
}

/// Creates a session, treating 409 as success when an earlier attempt whose
/// outcome was unknown did commit (the caller checks the state afterwards).
async fn create_or_exists(client: &Client, id: &str, state: &Value) -> Result<(), ClientError> {
    match client
        .create_session(&NewSession {
            id: id.into(),
            kind: None,
            state: Some(state.clone()),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// 1. Bad input
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_a_4xx_and_never_reaches_the_log() -> Result<(), String> {
    // Each malformed request, sent raw to the three nodes in turn, gets its
    // documented 4xx and error body, and the leader's last log index does not
    // move (checked after every request; a valid write at the end shows the
    // check can fail); the CLI maps the same failures to exit codes 1/2.
    let started = Instant::now();
    let mut cluster = start_cluster(&["--max-state-bytes", "1024"]).await?;
    let http = admin_http(&cluster);
    let leader = cluster.await_leader(Instant::now() + DEADLINE).await?;
    let leader_addr = cluster.addr(leader);
    let ids = cluster.ids();
    let url = |node: NodeId, path: &str| format!("http://{}{}", cluster.addr(node), path);

    eprintln!("--- a session to call, to duplicate and to compare with");
    let existing = cluster
        .client(1)
        .create_session(&NewSession {
            id: "present".into(),
            kind: None,
            state: Some(json!({"v": 1})),
        })
        .await
        .map_err(|e| e.to_string())?;
    let before_table = all_sessions(&cluster.client(leader)).await?;
    assert_eq!(before_table.len(), 1);
    let term_before = cluster
        .client(leader)
        .cluster()
        .await
        .map_err(|e| e.to_string())?
        .term;

    let long_id = "x".repeat(129);
    let id_129 = format!(r#"{{"id":"{long_id}"}}"#);
    let get_129 = format!("GET /v1/sessions/{long_id}");
    let big_state = format!(r#"{{"id":"big","state":{{"v":"{}"}}}}"#, "y".repeat(2000));
    let big_set = format!(r#"{{"op":"set","value":{{"v":"{}"}}}}"#, "y".repeat(2000));
    let huge_body = format!(
        r#"{{"id":"huge","state":{{"v":"{}"}}}}"#,
        "z".repeat(1024 + 64 * 1024 + 1)
    );
    const SESSIONS: &str = "POST /v1/sessions";
    const CALL: &str = "POST /v1/sessions/present/call";
    let cases = [
        (SESSIONS, r#"{"id":"bad id"}"#, "400 invalid_id"),
        (SESSIONS, r#"{"id":"a/b"}"#, "400 invalid_id"),
        (SESSIONS, r#"{"id":"caf\u00e9"}"#, "400 invalid_id"),
        (SESSIONS, r#"{"id":""}"#, "400 invalid_id"),
        (SESSIONS, &id_129, "400 invalid_id"),
        (SESSIONS, r#"{"id":"#, "400 bad_json"),
        (SESSIONS, "", "400 bad_json"),
        (SESSIONS, "id=abc", "400 bad_json"),
        (SESSIONS, "null", "400 bad_json"),
        (SESSIONS, r#"["a"]"#, "400 bad_json"),
        (SESSIONS, r#"{"id":"ok","owner":2}"#, "400 bad_json"),
        (SESSIONS, r#"{"id":5}"#, "400 bad_json"),
        (SESSIONS, r#"{"id":"ok","kind":7}"#, "400 bad_json"),
        (SESSIONS, r#"{"kind":"kv"}"#, "400 bad_json"),
        (SESSIONS, r#"{"id":"k","kind":"chess"}"#, "400 unknown_kind"),
        (SESSIONS, r#"{"id":"k","kind":"a b"}"#, "400 invalid_kind"),
        (SESSIONS, r#"{"id":"ok","state":5}"#, "422 rejected"),
        (SESSIONS, &big_state, "413 state_too_large"),
        (SESSIONS, &huge_body, "413 too_large"),
        ("GET /v1/sessions/bad%20id", "", "400 invalid_id"),
        (&get_129, "", "400 invalid_id"),
        ("GET /v1/sessions/missing", "", "404 not_found"),
        ("DELETE /v1/sessions/bad%20id", "", "400 invalid_id"),
        ("POST /v1/sessions/a%20b/call", "{}", "400 invalid_id"),
        ("POST /v1/sessions/nope/call", "{}", "404 not_found"),
        (CALL, "{", "400 bad_json"),
        (
            "POST /v1/sessions/present/call?timeout_ms=soon",
            "{}",
            "400 bad_query",
        ),
        (CALL, r#"{"op":"explode"}"#, "422 rejected"),
        (CALL, &big_set, "413 state_too_large"),
        ("GET /v1/sessions?limit=0", "", "400 bad_query"),
        ("GET /v1/sessions?limit=abc", "", "400 bad_query"),
        ("GET /v1/sessions?limit=-1", "", "400 bad_query"),
        ("GET /v1/sessions?limit=1001", "", "400 bad_query"),
        ("GET /v1/sessions?owner=abc", "", "400 bad_query"),
        ("GET /v1/sessions?sort=id", "", "400 bad_query"),
        ("GET /v1/sessions?after=bad%20id", "", "400 invalid_id"),
        ("POST /v1/nodes/abc/drain", "", "400 invalid_node"),
        ("POST /v1/nodes/9/drain", "", "404 no_such_node"),
        ("GET /v1/nothing", "", "404 no_route"),
    ];
    let log_before = last_log_index(&http, &leader_addr).await?;
    eprintln!(
        "--- {} malformed requests; leader {leader} at log index {log_before}",
        cases.len()
    );
    for (n, (request, body, expect)) in cases.iter().enumerate() {
        let node = ids[n % ids.len()];
        let (method, path) = request.split_once(' ').ok_or("request line")?;
        let method: Method = method.parse().map_err(|e| format!("{e}"))?;
        // POSTs always carry the body (maybe empty); GET and DELETE none.
        let body = (method == Method::POST).then_some(body.as_bytes());
        let (status, code) = expect.split_once(' ').ok_or("expectation")?;
        let status: u16 = status.parse().map_err(|e| format!("{e}"))?;
        let shown: String = String::from_utf8_lossy(body.unwrap_or_default())
            .chars()
            .take(60)
            .collect();
        let what = format!("{request} {shown} (node {node})");
        let (got, answer) = raw(&http, method, &url(node, path), body).await?;
        assert_error(&what, got, &answer, status, code);
        let log_now = last_log_index(&http, &leader_addr).await?;
        assert_eq!(
            log_now, log_before,
            "{what}: the leader's log moved from {log_before} to {log_now}"
        );
    }
    // Nothing changed on any node either.
    for id in cluster.ids() {
        let table = all_sessions(&cluster.client(id)).await?;
        assert_eq!(table, before_table, "node {id}: table changed by bad input");
    }

    eprintln!(
        "--- refused by the table: duplicate create (409), delete of an unknown session (404)"
    );
    for (n, node) in ids.iter().enumerate() {
        let (got, answer) = raw(
            &http,
            Method::POST,
            &url(*node, "/v1/sessions"),
            Some(br#"{"id":"present","state":{"v":99}}"#),
        )
        .await?;
        assert_error(
            &format!("duplicate create (node {node})"),
            got,
            &answer,
            409,
            "exists",
        );
        let (got, answer) = raw(
            &http,
            Method::DELETE,
            &url(*node, &format!("/v1/sessions/missing-{n}")),
            None,
        )
        .await?;
        assert_error(
            &format!("DELETE unknown (node {node})"),
            got,
            &answer,
            404,
            "not_found",
        );
    }
    let log_after_table = last_log_index(&http, &leader_addr).await?;
    // These are decided by the state machine, so they may cost a rejected
    // log entry each; the table itself must not change.
    eprintln!(
        "duplicate creates and unknown deletes moved the log by {} entries (6 requests)",
        log_after_table - log_before
    );
    for id in cluster.ids() {
        let table = all_sessions(&cluster.client(id)).await?;
        assert_eq!(
            table, before_table,
            "node {id}: table changed by a refused create/delete"
        );
    }
    let term_after = cluster
        .client(leader)
        .cluster()
        .await
        .map_err(|e| e.to_string())?
        .term;
    assert_eq!(
        term_before, term_after,
        "no election happened during the checks"
    );

    eprintln!("--- the CLI: exit 2 for bad usage/input, 1 for server-side failure");
    let addr1 = cluster.addr(1);
    let token = cluster.credentials().admin_token.clone();
    let out = cli(&[
        "session", "start", "bad id", "--token", &token, "--addr", &addr1,
    ])
    .await?;
    assert_cli_failure("session start 'bad id'", &out, 2, "invalid");
    let out = cli(&[
        "session", "get", "missing", "--token", &token, "--addr", &addr1,
    ])
    .await?;
    assert_cli_failure("session get missing", &out, 2, "not");
    let out = cli(&[
        "session",
        "start",
        "cli-bad-state",
        "--state",
        "{oops",
        "--token",
        &token,
        "--addr",
        &addr1,
    ])
    .await?;
    assert_cli_failure("--state '{oops'", &out, 2, "--state");
    let out = cli(&[
        "session",
        "start",
        "cli-big",
        "--state",
        &format!(r#"{{"v":"{}"}}"#, "y".repeat(2000)),
        "--token",
        &token,
        "--addr",
        &addr1,
    ])
    .await?;
    assert_cli_failure("--state over the limit", &out, 2, "413");
    let out = cli(&[
        "session", "call", "present", "{oops", "--token", &token, "--addr", &addr1,
    ])
    .await?;
    assert_cli_failure("call with bad JSON", &out, 2, "JSON");
    let closed = free_ports(1).map_err(|e| e.to_string())?[0];
    let out = cli(&[
        "session",
        "get",
        "present",
        "--token",
        &token,
        "--addr",
        &format!("127.0.0.1:{closed}"),
    ])
    .await?;
    assert_cli_failure("closed port", &out, 1, "cannot reach");
    assert_eq!(
        last_log_index(&http, &leader_addr).await?,
        log_after_table,
        "the failed CLI commands wrote nothing"
    );
    for id in ["cli-bad-state", "cli-big"] {
        let err = cluster.client(2).get_session(id).await.err();
        assert_eq!(
            err.and_then(|e| e.status()),
            Some(404),
            "{id} must not exist"
        );
    }

    eprintln!("--- controls: valid requests at the limits are accepted and do reach the log");
    let out = cli(&[
        "session",
        "start",
        "cli-ok",
        "--state",
        r#"{"a":1}"#,
        "--token",
        &token,
        "--addr",
        &addr1,
    ])
    .await?;
    assert_eq!(out.code, Some(0), "valid CLI create: {}", out.stderr);
    let printed: Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("CLI output: {e}"))?;
    assert_eq!(printed["id"], "cli-ok");
    assert_eq!(printed["state"], json!({"a": 1}));
    let id128 = "x".repeat(128);
    let at_limit = json!({"v": "y".repeat(1000)});
    assert!(
        serde_json::to_vec(&at_limit)
            .map_err(|e| e.to_string())?
            .len()
            <= 1024
    );
    let created = cluster
        .client(3)
        .create_session(&NewSession {
            id: id128.clone(),
            kind: None,
            state: Some(at_limit.clone()),
        })
        .await
        .map_err(|e| format!("128-char id with a state at the limit: {e}"))?;
    assert_eq!(created.id, id128);
    assert!(
        last_log_index(&http, &leader_addr).await? > log_after_table,
        "accepted writes must show in the log index (else the checks above prove nothing)"
    );
    let present = cluster
        .client(2)
        .get_session("present")
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(
        present.state, existing.state,
        "refused calls left the state alone"
    );
    assert_eq!(present.epoch, existing.epoch);
    eprintln!("bad-input test took {:?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. Foreign data, disagreeing peers, restarts
// ---------------------------------------------------------------------------

/// Every file under `dir` with its bytes.
fn snapshot_files(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in
            std::fs::read_dir(&current).map_err(|e| format!("{}: {e}", current.display()))?
        {
            let path = entry.map_err(|e| e.to_string())?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let relative = path
                    .strip_prefix(dir)
                    .map_err(|e| e.to_string())?
                    .to_path_buf();
                files.insert(relative, bytes);
            }
        }
    }
    Ok(files)
}

/// Runs `minos serve` that must refuse to start: exit 2 within 20 s with a
/// one-line message containing `contains`.
async fn assert_serve_refused(what: &str, args: &[String], contains: &str) -> Result<(), String> {
    let mut command = tokio::process::Command::new(BIN);
    command
        .arg("serve")
        .args(args)
        .env("MINOS_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .map_err(|_| format!("{what}: minos serve did not refuse (still running after 20 s)"))?
        .map_err(|e| format!("{what}: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{what}: exit {:?}: {}", output.status.code(), stderr.trim());
    assert_eq!(
        output.status.code(),
        Some(2),
        "{what}: exit code; stderr {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{what}: one line: {stderr:?}"
    );
    assert!(stderr.contains("refusing to start"), "{what}: {stderr:?}");
    assert!(
        stderr.contains(contains),
        "{what}: {stderr:?} should mention {contains:?}"
    );
    Ok(())
}

fn count_lines(cluster: &ProcessCluster, id: NodeId, needle: &str) -> usize {
    std::fs::read_to_string(cluster.dir().join(format!("node{id}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Ids and states of a table (owners may legitimately change on failover).
fn ids_and_states(table: &BTreeMap<String, minos::api::SessionView>) -> BTreeMap<String, Value> {
    table
        .iter()
        .map(|(id, s)| (id.clone(), s.state.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_data_or_disagreeing_peers_are_refused_and_restarts_do_not_fork(
) -> Result<(), String> {
    // Restarting nodes with their own flags (after SIGTERM and SIGKILL) keeps
    // their log (no second initialization, same voters, term not lower, same
    // table); `minos serve` on a data dir of another cluster, of another node,
    // or with disagreeing --peers exits 2 with one clear line and leaves the
    // directory byte-for-byte unchanged, after which the rightful node starts
    // on it with its whole table.
    let mut cluster = start_cluster(&[]).await?;
    let http = admin_http(&cluster);
    let started = Instant::now();
    for n in 0..6 {
        let id = format!("keep-{n}");
        cluster
            .client(1 + n % 3)
            .create_session(&NewSession {
                id: id.clone(),
                kind: None,
                state: Some(json!({"n": n})),
            })
            .await
            .map_err(|e| e.to_string())?;
        // A committed change after the create: the table must keep the last state.
        cluster
            .client(1 + (n + 1) % 3)
            .call(
                &id,
                &json!({"op": "merge", "value": {"touched": true}}),
                Some(DEADLINE),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let baseline = ids_and_states(&all_sessions(&cluster.client(1)).await?);
    assert_eq!(baseline.len(), 6);
    assert!(baseline.values().all(|s| s["touched"] == true));
    let voters: BTreeSet<NodeId> = cluster.ids().into_iter().collect();

    for (node, signal) in [(2, Signal::Term), (3, Signal::Kill)] {
        eprintln!("--- {signal:?} node {node}, then restart it with the same flags");
        let before = cluster
            .client(node)
            .cluster()
            .await
            .map_err(|e| e.to_string())?;
        let log_before = last_log_index(&http, &cluster.addr(node)).await?;
        let reinit_before = count_lines(&cluster, node, "not initializing again");
        let init_before = count_lines(&cluster, node, " cluster initialized");
        match signal {
            Signal::Term => cluster.term(node).await?,
            _ => cluster.kill(node).await?,
        }
        let restarting = Instant::now();
        cluster.restart(node).await?;
        eprintln!(
            "node {node} healthy {:?} after restart",
            restarting.elapsed()
        );
        assert_eq!(
            count_lines(&cluster, node, " cluster initialized"),
            init_before,
            "node {node} initialized the cluster again on restart"
        );
        assert_eq!(
            count_lines(&cluster, node, "not initializing again"),
            reinit_before + 1,
            "node {node} saw its existing cluster on restart"
        );
        let log_after = last_log_index(&http, &cluster.addr(node)).await?;
        assert!(
            log_after >= log_before,
            "node {node}: log went back from {log_before} to {log_after}"
        );
        let after = cluster
            .client(node)
            .cluster()
            .await
            .map_err(|e| e.to_string())?;
        assert!(after.term >= before.term, "node {node}: term went back");
        let nodes: BTreeSet<NodeId> = after.nodes.iter().map(|n| n.id).collect();
        assert_eq!(nodes, voters, "node {node}: same members");
        let leaders: BTreeSet<Option<NodeId>> =
            futures::future::join_all(cluster.ids().into_iter().map(|id| {
                let client = cluster.client(id);
                async move { client.cluster().await.ok().and_then(|v| v.leader) }
            }))
            .await
            .into_iter()
            .collect();
        assert_eq!(
            leaders.len(),
            1,
            "all nodes agree on one leader: {leaders:?}"
        );
        assert!(
            leaders.iter().all(Option::is_some),
            "a leader is known: {leaders:?}"
        );
        let table = all_sessions(&cluster.client(node)).await?;
        assert_eq!(
            ids_and_states(&table),
            baseline,
            "node {node}: table after restart"
        );
        assert!(
            table.values().all(|s| s.owner.is_some()),
            "every session has an owner"
        );
    }

    eprintln!("--- stop node 1 gracefully and try to start foreign configurations on its data");
    let log_before_stop = last_log_index(&http, &cluster.addr(1)).await?;
    cluster.term(1).await?;
    let data = cluster.dir().join("node1");
    let files_stopped = snapshot_files(&data)?;
    assert!(!files_stopped.is_empty(), "node 1 has data on disk");
    let other_ports = free_ports(3).map_err(|e| e.to_string())?;
    let other_addr = |i: usize| format!("127.0.0.1:{}", other_ports[i]);
    let other_peers = format!(
        "1={},2={},3={}",
        other_addr(0),
        other_addr(1),
        other_addr(2)
    );
    let data_arg = data.display().to_string();
    let own_addr = cluster.addr(1);
    let extra = free_ports(1).map_err(|e| e.to_string())?[0];
    let secret_arg = cluster.dir().join("cluster.secret").display().to_string();
    let tokens_arg = cluster.dir().join("tokens").display().to_string();
    let serve = |id: &str, listen: &str, peers: &str| -> Vec<String> {
        [
            "--id",
            id,
            "--listen",
            listen,
            "--data-dir",
            &data_arg,
            "--peers",
            peers,
            "--cluster-secret-file",
            &secret_arg,
            "--token-file",
            &tokens_arg,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "node 1 of another cluster (different peers) on this data",
            serve("1", &other_addr(0), &other_peers),
            "belongs to cluster",
        ),
        (
            "node 2 of another cluster on node 1's data",
            serve("2", &other_addr(1), &other_peers),
            "belongs to node 1",
        ),
        (
            "peers with an extra node",
            serve(
                "1",
                &own_addr,
                &format!("{},4=127.0.0.1:{extra}", cluster.peers()),
            ),
            "belongs to cluster",
        ),
        (
            "peers missing node 3",
            serve(
                "1",
                &own_addr,
                &format!("1={},2={}", cluster.addr(1), cluster.addr(2)),
            ),
            "belongs to cluster",
        ),
        (
            "peers giving node 2 another address",
            serve(
                "1",
                &own_addr,
                &format!(
                    "1={},2=127.0.0.1:{extra},3={}",
                    cluster.addr(1),
                    cluster.addr(3)
                ),
            ),
            "belongs to cluster",
        ),
    ];
    let mut files_before = files_stopped.clone();
    for (n, (what, args, contains)) in cases.iter().enumerate() {
        assert_serve_refused(what, args, contains).await?;
        let files_after = snapshot_files(&data)?;
        let changed: Vec<&PathBuf> = files_before
            .keys()
            .chain(files_after.keys())
            .filter(|p| files_before.get(*p) != files_after.get(*p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if n == 0 {
            // The identity lives inside sled, so the first refused start opens
            // sled, whose crash recovery may rewrite its own files (the node
            // that ran on them did not close them); nothing outside sled/ may
            // appear or change.
            eprintln!("first refused start: sled rewrote {changed:?}");
            assert!(
                changed.iter().all(|p| p.starts_with("sled")),
                "{what}: files outside sled/ changed: {changed:?}"
            );
        } else {
            assert!(
                changed.is_empty(),
                "{what}: the refused start modified {changed:?}"
            );
        }
        files_before = files_after;
    }

    eprintln!("--- node 1 restarts on its data with its own flags");
    cluster.restart(1).await?;
    let table = all_sessions(&cluster.client(1)).await?;
    assert_eq!(
        ids_and_states(&table),
        baseline,
        "node 1: table after the refused starts"
    );
    let log_restarted = last_log_index(&http, &cluster.addr(1)).await?;
    assert!(
        log_restarted >= log_before_stop,
        "node 1 kept its log: {log_before_stop} before, {log_restarted} after"
    );
    cluster
        .client(1)
        .create_session(&NewSession {
            id: "after-refusals".into(),
            kind: None,
            state: None,
        })
        .await
        .map_err(|e| format!("the cluster takes writes again: {e}"))?;
    eprintln!("restart/refusal test took {:?}", started.elapsed());
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. No quorum
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_fail_fast_and_the_cluster_resumes_by_itself() -> Result<(), String>
{
    // With two of three nodes SIGKILLed (once keeping a follower, once keeping
    // the leader), a create through the survivor answers 503 within 2.5 s and
    // the survivor's health says it has no usable leader; once the two are
    // restarted a create succeeds and every earlier session is still there.
    let mut cluster = start_cluster(&[]).await?;
    let http = admin_http(&cluster);
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    for n in 0..3 {
        let id = format!("before-{n}");
        let state = json!({"n": n});
        create_or_exists(&cluster.client(1), &id, &state)
            .await
            .map_err(|e| e.to_string())?;
        expected.insert(id, state);
    }
    for (r, round) in ["leader and a follower", "two followers"]
        .into_iter()
        .enumerate()
    {
        let leader = cluster.await_leader(Instant::now() + DEADLINE).await?;
        let followers: Vec<NodeId> = cluster
            .ids()
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        let (survivor, killed) = if round == "two followers" {
            (leader, [followers[0], followers[1]])
        } else {
            (followers[0], [leader, followers[1]])
        };
        eprintln!("--- SIGKILL the {round} (nodes {killed:?}); node {survivor} survives");
        for node in killed {
            cluster.signal(node, Signal::Kill)?;
        }
        for node in killed {
            cluster.await_exit(node, DEADLINE).await?;
        }

        let id = format!("no-quorum-{r}");
        let asked = Instant::now();
        let answer = cluster
            .client(survivor)
            .create_session(&NewSession {
                id: id.clone(),
                kind: None,
                state: None,
            })
            .await;
        let elapsed = asked.elapsed();
        eprintln!("create without quorum through node {survivor}: {elapsed:?}: {answer:?}");
        let error = answer.err().ok_or("a create without a quorum must fail")?;
        assert_eq!(error.status(), Some(503), "create without quorum: {error}");
        assert!(
            matches!(
                error.code(),
                Some("no_quorum" | "outcome_unknown" | "unavailable")
            ),
            "503 code: {error}"
        );
        assert!(
            elapsed <= Duration::from_millis(2500),
            "the 503 took {elapsed:?}"
        );

        let asked = Instant::now();
        let read = cluster.client(survivor).get_session("before-0").await;
        let elapsed = asked.elapsed();
        eprintln!(
            "linearizable read without quorum: {elapsed:?}: {:?}",
            read.as_ref().err()
        );
        assert_eq!(
            read.err().and_then(|e| e.status()),
            Some(503),
            "a read without quorum is refused"
        );
        assert!(
            elapsed <= Duration::from_millis(2500),
            "the read's 503 took {elapsed:?}"
        );

        let health_url = format!("http://{}/v1/health", cluster.addr(survivor));
        let since = Instant::now();
        let health = await_until(
            &format!("node {survivor}'s health to report no usable leader"),
            Duration::from_secs(3),
            || {
                let http = http.clone();
                let url = health_url.clone();
                async move {
                    let (status, body) = raw(&http, Method::GET, &url, None).await.ok()?;
                    (status == 503 || body["leader"].is_null()).then_some((status, body))
                }
            },
        )
        .await?;
        eprintln!("survivor health after {:?}: {health:?}", since.elapsed());

        eprintln!("--- restart nodes {killed:?}");
        let restarting = Instant::now();
        for node in killed {
            cluster.restart(node).await?;
        }
        let id = format!("resumed-{r}");
        let state = json!({"round": round});
        let client = cluster.client(survivor);
        await_until("a create through the survivor", DEADLINE, || {
            let (client, id, state) = (client.clone(), id.clone(), state.clone());
            async move { create_or_exists(&client, &id, &state).await.ok() }
        })
        .await?;
        eprintln!(
            "writes resumed {:?} after the restarts began",
            restarting.elapsed()
        );
        expected.insert(id, state);
    }
    for node in cluster.ids() {
        let table = all_sessions(&cluster.client(node)).await?;
        for (id, state) in &expected {
            let session = table.get(id).ok_or(format!("node {node}: {id} missing"))?;
            assert_eq!(&session.state, state, "node {node}: state of {id}");
        }
        // A write that timed out may have committed later: its outcome was unknown.
        let extra: Vec<&String> = table
            .keys()
            .filter(|id| !expected.contains_key(*id))
            .collect();
        assert!(
            extra.iter().all(|id| id.starts_with("no-quorum-")),
            "node {node}: unexpected sessions {extra:?}"
        );
        eprintln!("node {node}: writes refused for lack of quorum that committed later: {extra:?}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 4. Crash of every node under concurrent writes
// ---------------------------------------------------------------------------

/// What a writer saw: acknowledged creates and their states, and how many
/// answers left the outcome unknown.
#[derive(Default)]
struct WriterLog {
    acked: Vec<(String, Value, Option<NodeId>)>,
    unknown: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_creates_survive_a_sigkill_of_every_node() -> Result<(), String> {
    // Four writers create sessions through all three nodes; all three
    // processes are SIGKILLed mid-stream without settling, then restarted:
    // every create that had been acknowledged with 201 is on every node with
    // its state and an owner, and the three tables are identical.
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 400;
    const ACKED_BEFORE_KILL: usize = 300;
    let mut cluster = start_cluster(&[]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Arc<Mutex<Vec<WriterLog>>> = Arc::new(Mutex::new(
        (0..WRITERS).map(|_| WriterLog::default()).collect(),
    ));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = cluster.client(1 + (w as u64) % 3);
        let (stop, logs) = (stop.clone(), logs.clone());
        writers.push(tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(60);
            for n in 0..PER_WRITER {
                if stop.load(Ordering::SeqCst) || Instant::now() > until {
                    break;
                }
                let id = format!("crash-w{w}-{n:04}");
                let state =
                    json!({"writer": w, "n": n, "note": format!("write {n} of writer {w}")});
                let answer = client
                    .create_session(&NewSession {
                        id: id.clone(),
                        kind: None,
                        state: Some(state.clone()),
                    })
                    .await;
                let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
                match answer {
                    Ok(view) => logs[w].acked.push((id, state, view.owner)),
                    Err(_) => logs[w].unknown.push(id),
                }
            }
        }));
    }
    let acked_count = || {
        logs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|l| l.acked.len())
            .sum::<usize>()
    };
    let writing = Instant::now();
    await_until("creates to be acknowledged", DEADLINE, || {
        let count = acked_count();
        async move { (count >= ACKED_BEFORE_KILL).then_some(()) }
    })
    .await?;
    eprintln!(
        "--- SIGKILL all three nodes after {} acknowledged creates in {:?}",
        acked_count(),
        writing.elapsed()
    );
    for node in cluster.ids() {
        cluster.signal(node, Signal::Kill)?;
    }
    stop.store(true, Ordering::SeqCst);
    for node in cluster.ids() {
        cluster.await_exit(node, DEADLINE).await?;
    }
    for writer in writers {
        writer.await.map_err(|e| e.to_string())?;
    }
    let logs = std::mem::take(&mut *logs.lock().unwrap_or_else(|p| p.into_inner()));
    let acked: Vec<&(String, Value, Option<NodeId>)> = logs.iter().flat_map(|l| &l.acked).collect();
    let unknown: BTreeSet<&String> = logs.iter().flat_map(|l| &l.unknown).collect();
    eprintln!(
        "{} acknowledged, {} with unknown outcome",
        acked.len(),
        unknown.len()
    );

    eprintln!("--- restart all three");
    let restarting = Instant::now();
    for node in cluster.ids() {
        cluster.launch(node)?;
    }
    for node in cluster.ids() {
        let client = cluster.client(node);
        await_until(
            &format!("node {node} healthy after the crash"),
            DEADLINE,
            || {
                let client = client.clone();
                async move { client.health().await.ok() }
            },
        )
        .await
        .map_err(|e| format!("{e}; log: {}", cluster.log_tail(node, 20)))?;
        assert!(cluster.is_running(node), "node {node} runs");
    }
    eprintln!(
        "all healthy {:?} after the restart began",
        restarting.elapsed()
    );

    let mut tables = Vec::new();
    for node in cluster.ids() {
        let table = all_sessions(&cluster.client(node)).await?;
        let mut moved = 0;
        for (id, state, owner) in &acked {
            let session = table
                .get(id)
                .ok_or(format!("node {node}: acknowledged create {id} is lost"))?;
            assert_eq!(&session.state, state, "node {node}: state of {id}");
            assert!(session.owner.is_some(), "node {node}: {id} has no owner");
            if session.owner != *owner {
                moved += 1;
            }
        }
        let acked_ids: BTreeSet<&String> = acked.iter().map(|(id, _, _)| id).collect();
        let others: Vec<&String> = table.keys().filter(|id| !acked_ids.contains(id)).collect();
        assert!(
            others.iter().all(|id| unknown.contains(id)),
            "node {node}: sessions nobody created: {others:?}"
        );
        eprintln!(
            "node {node}: {} sessions; {} unknown-outcome creates committed; {moved} owners changed",
            table.len(),
            others.len()
        );
        tables.push(table);
    }
    // The restarted owners settle their sessions (one `Settle` each, which
    // raises the version), so the tables may differ while those entries are
    // being applied: they must agree once the log has reached every node.
    if !tables.windows(2).all(|w| w[0] == w[1]) {
        await_until("the three nodes to list the same table", DEADLINE, || {
            let clients: Vec<Client> = cluster.ids().iter().map(|n| cluster.client(*n)).collect();
            async move {
                let mut tables = Vec::new();
                for client in &clients {
                    tables.push(all_sessions(client).await.ok()?);
                }
                tables.windows(2).all(|w| w[0] == w[1]).then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. Leader crash
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_leader_is_replaced_and_writes_resume_within_3s() -> Result<(), String> {
    // Three times: SIGKILL the leader, then create through a survivor until it
    // succeeds; it must within 3 s of the kill, under a new leader with a
    // higher term; the old leader rejoins and every session is kept.
    let mut cluster = start_cluster(&[]).await?;
    let mut expected: BTreeMap<String, Value> = BTreeMap::new();
    let mut measured = Vec::new();
    for round in 0..3 {
        let leader = cluster.await_leader(Instant::now() + DEADLINE).await?;
        let survivor = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .ok_or("no follower")?;
        let term = cluster
            .client(survivor)
            .cluster()
            .await
            .map_err(|e| e.to_string())?
            .term;
        let id = format!("after-kill-{round}");
        let state = json!({"round": round});
        eprintln!("--- round {round}: SIGKILL leader {leader} (term {term}); write through node {survivor}");
        let client = cluster.client(survivor);
        let killed = Instant::now();
        cluster.signal(leader, Signal::Kill)?;
        let leader_seen = await_until("a new leader", Duration::from_secs(3), || {
            let client = client.clone();
            async move {
                let view = client.cluster().await.ok()?;
                view.leader
                    .filter(|l| *l != leader)
                    .map(|l| (l, view.term, killed.elapsed()))
            }
        })
        .await?;
        await_until(
            "a create through a survivor",
            Duration::from_secs(3),
            || {
                let (client, id, state) = (client.clone(), id.clone(), state.clone());
                async move { create_or_exists(&client, &id, &state).await.ok() }
            },
        )
        .await?;
        let write_ok = killed.elapsed();
        eprintln!(
            "round {round}: new leader {} (term {}) seen after {:?}; write succeeded after {write_ok:?}",
            leader_seen.0, leader_seen.1, leader_seen.2
        );
        assert!(leader_seen.1 > term, "the new leader has a higher term");
        assert!(
            write_ok <= Duration::from_secs(3),
            "write resumed after {write_ok:?}"
        );
        measured.push(write_ok);
        expected.insert(id, state);
        cluster.await_exit(leader, DEADLINE).await?;
        cluster.restart(leader).await?;
    }
    eprintln!("write resumed after a leader SIGKILL: {measured:?}");
    for node in cluster.ids() {
        for (id, state) in &expected {
            let session = cluster
                .client(node)
                .get_session(id)
                .await
                .map_err(|e| format!("node {node}: {id}: {e}"))?;
            assert_eq!(&session.state, state, "node {node}: state of {id}");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. Snapshot catch-up
// ---------------------------------------------------------------------------

/// The first log index still stored by a stopped node: DESIGN.md's storage
/// contract is a sled database (`<data-dir>/sled`) with a `log` tree keyed by
/// big-endian u64 indexes, so its first key is where the log begins after
/// purges.
fn first_stored_log_index(data_dir: &Path) -> Result<Option<u64>, String> {
    let db =
        sled::open(data_dir.join("sled")).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let log = db.open_tree("log").map_err(|e| e.to_string())?;
    let first = log.first().map_err(|e| e.to_string())?;
    first
        .map(|(key, _)| {
            <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| format!("log key of {} bytes", key.len()))
        })
        .transpose()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_missed_a_snapshot_worth_of_log_catches_up() -> Result<(), String> {
    // A follower is SIGKILLed while four writers push creates through the
    // leader until the leader's log is 5000 (the snapshot policy) + 300
    // entries past the follower's; restarted, the follower reaches the
    // leader's applied index and serves the last sessions, and the leader's
    // purged log (read from its sled after the test) starts past the
    // follower's last entry, so the follower can only have caught up from a
    // snapshot.
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 4000;
    const SNAPSHOT_EVERY: u64 = 5000; // `--snapshot-every` below
    let mut cluster = start_cluster(&["--snapshot-every", "5000"]).await?;
    let http = admin_http(&cluster);
    let leader = cluster.await_leader(Instant::now() + DEADLINE).await?;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or("no follower")?;
    cluster
        .client(leader)
        .create_session(&NewSession {
            id: "first".into(),
            kind: None,
            state: Some(json!({"first": true})),
        })
        .await
        .map_err(|e| e.to_string())?;
    let leader_addr = cluster.addr(leader);
    let follower_last = await_until("the follower to have the leader's log", DEADLINE, || {
        let (http, leader_addr, follower_addr) =
            (http.clone(), leader_addr.clone(), cluster.addr(follower));
        async move {
            let l = last_log_index(&http, &leader_addr).await.ok()?;
            let f = last_log_index(&http, &follower_addr).await.ok()?;
            (l == f).then_some(f)
        }
    })
    .await?;
    eprintln!("--- SIGKILL follower {follower} at log index {follower_last}");
    cluster.kill(follower).await?;

    let target = follower_last + SNAPSHOT_EVERY + 300;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = cluster.client(leader);
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut last_acked = None;
            let mut failures = 0usize;
            for n in 0..PER_WRITER {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("snap-w{w}-{n:05}");
                let state = json!({"w": w, "n": n});
                match client
                    .create_session(&NewSession {
                        id: id.clone(),
                        kind: None,
                        state: Some(state.clone()),
                    })
                    .await
                {
                    Ok(_) => last_acked = Some((id, state)),
                    Err(_) => failures += 1,
                }
            }
            (last_acked, failures)
        }));
    }
    let writing = Instant::now();
    let reached = await_until(
        &format!("the leader's log to reach index {target}"),
        // About 10 s on a quiet machine; under two CPU hogs (scripts/
        // stress-test.sh) creates ran at 55-75/s, so allow minutes.
        Duration::from_secs(300),
        || {
            let (http, leader_addr) = (http.clone(), leader_addr.clone());
            async move {
                last_log_index(&http, &leader_addr)
                    .await
                    .ok()
                    .filter(|i| *i >= target)
            }
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut last_acked = Vec::new();
    let mut failures = 0;
    for writer in writers {
        let (last, failed) = writer.await.map_err(|e| e.to_string())?;
        last_acked.extend(last);
        failures += failed;
    }
    let elapsed = writing.elapsed();
    let sessions = metric(&http, &leader_addr, "minos_sessions").await?;
    let leader_log = last_log_index(&http, &leader_addr).await?;
    eprintln!(
        "{sessions} sessions, log {follower_last} -> {leader_log} in {elapsed:?}: {:.0} creates/s, {:.0} log entries/s; {failures} failed writes",
        sessions / elapsed.as_secs_f64(),
        (leader_log - follower_last) as f64 / elapsed.as_secs_f64()
    );
    reached?;
    assert_eq!(failures, 0, "no write failed with two of three nodes up");

    eprintln!("--- restart follower {follower}");
    let leader_applied = applied_index(&http, &leader_addr).await?;
    let restarting = Instant::now();
    if let Err(e) = cluster.restart(follower).await {
        return Err(format!(
            "{e}; follower log: {}\nleader log: {}",
            cluster.log_tail(follower, 30),
            cluster.log_tail(leader, 30)
        ));
    }
    let healthy_after = restarting.elapsed();
    let follower_addr = cluster.addr(follower);
    await_until(
        &format!("follower {follower} to apply index {leader_applied}"),
        Duration::from_secs(30),
        || {
            let (http, addr) = (http.clone(), follower_addr.clone());
            async move {
                applied_index(&http, &addr)
                    .await
                    .ok()
                    .filter(|i| *i >= leader_applied)
            }
        },
    )
    .await?;
    eprintln!(
        "follower healthy after {healthy_after:?}, applied {leader_applied} after {:?}",
        restarting.elapsed()
    );
    let follower_sessions = metric(&http, &follower_addr, "minos_sessions").await?;
    assert!(
        follower_sessions >= sessions,
        "follower has {follower_sessions} sessions, leader had {sessions}"
    );
    assert_eq!(
        last_acked.len(),
        WRITERS,
        "every writer had acknowledged creates"
    );
    for (id, state) in &last_acked {
        let session = cluster
            .client(follower)
            .get_session(id)
            .await
            .map_err(|e| format!("follower GET {id}: {e}"))?;
        assert_eq!(&session.state, state, "follower: state of {id}");
    }

    eprintln!("--- stop every node and read the leader's purged log index from its sled");
    for node in cluster.ids() {
        cluster.kill(node).await?;
    }
    let first = first_stored_log_index(&cluster.dir().join(format!("node{leader}")))?;
    let follower_first = first_stored_log_index(&cluster.dir().join(format!("node{follower}")))?;
    eprintln!(
        "leader {leader}'s log now starts at {first:?}; follower {follower} (stopped at {follower_last}) at {follower_first:?}"
    );
    assert!(
        first.is_some_and(|f| f > follower_last + 1),
        "the leader still has the log after index {follower_last} (first stored {first:?}), so no snapshot was needed"
    );
    Ok(())
}
