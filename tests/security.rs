//! Authentication and hostile peers, against real `minos serve` processes:
//! every internal route answers 401 without the cluster secret, every admin
//! route 403 to a client token and 401 without one, and Raft messages that
//! even an authenticated peer must not send (a term that would overflow,
//! a sender outside the membership) are refused without changing term,
//! vote, log or table, also after a restart.

#[path = "common/process.rs"]
mod process_common;

use std::time::Duration;

use minos::client::NewSession;
use minos::model::NodeId;
use minos::testkit::process::{ProcessCluster, ProcessOptions};
use minos::wire::TypeConfig;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use reqwest::Method;
use tokio::time::Instant;

use process_common::{admin_http, metric, BIN};

const DEADLINE: Duration = Duration::from_secs(30);

/// Every internal route, with the method it is served on.
const INTERNAL: &[(&str, &str)] = &[
    ("POST", "/internal/raft/append"),
    ("POST", "/internal/raft/vote"),
    ("POST", "/internal/raft/snapshot"),
    ("POST", "/internal/propose"),
    ("POST", "/internal/read_index"),
    ("POST", "/internal/lease"),
    ("GET", "/internal/presence"),
    ("POST", "/internal/call/s1"),
    ("POST", "/internal/release"),
    ("POST", "/internal/join"),
    ("POST", "/internal/whoami"),
    ("POST", "/internal/leader/drain"),
    ("POST", "/internal/leader/rebalance"),
    ("POST", "/internal/leader/remove"),
];

/// Every admin route (a client token gets 403).
const ADMIN: &[(&str, &str)] = &[
    ("DELETE", "/v1/sessions/s1"),
    ("POST", "/v1/cluster/rebalance"),
    ("POST", "/v1/nodes/2/drain"),
    ("DELETE", "/v1/nodes/2"),
    ("GET", "/metrics"),
];

/// Every client route (no token gets 401).
const CLIENT: &[(&str, &str)] = &[
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/s1"),
    ("POST", "/v1/sessions/s1/call"),
    ("GET", "/v1/cluster"),
];

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// Sends one request with the given headers; returns the status and body.
async fn send(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(u16, String), String> {
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = http.request(method.clone(), url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status().as_u16();
    // The presence stream never ends: read no body from a success.
    if status == 200 && url.ends_with("/internal/presence") {
        return Ok((status, String::new()));
    }
    let text = response.text().await.unwrap_or_default();
    Ok((status, text))
}

/// What must not change: the leader's term and last log index, every
/// node's vote term and session count.
#[derive(Debug, PartialEq)]
struct Footprint {
    terms: Vec<u64>,
    last_logs: Vec<u64>,
    sessions: Vec<u64>,
}

async fn footprint(cluster: &ProcessCluster, admin: &reqwest::Client) -> Result<Footprint, String> {
    let mut print = Footprint {
        terms: Vec::new(),
        last_logs: Vec::new(),
        sessions: Vec::new(),
    };
    for id in cluster.ids() {
        let addr = cluster.addr(id);
        print
            .terms
            .push(metric(admin, &addr, "minos_raft_term").await? as u64);
        print
            .last_logs
            .push(metric(admin, &addr, "minos_raft_last_log_index").await? as u64);
        print
            .sessions
            .push(metric(admin, &addr, "minos_sessions").await? as u64);
    }
    Ok(print)
}

/// Waits until the cluster is idle: every node has the same last log index
/// and has applied all of it; returns the footprint then.
async fn settled(cluster: &ProcessCluster, admin: &reqwest::Client) -> Result<Footprint, String> {
    minos::testkit::await_until(
        "every node to apply the same last log entry",
        DEADLINE,
        || async {
            // Applied indexes first, then the footprint: a footprint whose
            // last log equals an index already applied was read after that
            // entry took effect (read the other way round, a node's session
            // count could predate the apply of its last entry).
            let mut applied = Vec::new();
            for id in cluster.ids() {
                applied.push(
                    metric(admin, &cluster.addr(id), "minos_raft_applied_index")
                        .await
                        .ok()? as u64,
                );
            }
            let print = footprint(cluster, admin).await.ok()?;
            let uniform = print.last_logs.iter().all(|l| *l == print.last_logs[0]);
            (uniform && applied == print.last_logs).then_some(print)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_credentials_every_internal_and_admin_route_refuses_and_nothing_changes(
) -> Result<(), String> {
    let mut cluster = ProcessCluster::start(ProcessOptions::new(BIN)).await?;
    cluster.await_leader(Instant::now() + DEADLINE).await?;
    let http = http();
    let admin = admin_http(&cluster);
    let client_token = format!("Bearer {}", cluster.credentials().client_token);
    cluster
        .client(1)
        .create_session(&NewSession {
            id: "s1".into(),
            kind: None,
            state: Some(serde_json::json!({"v": 1})),
        })
        .await
        .map_err(|e| e.to_string())?;
    let before = settled(&cluster, &admin).await?;
    let base = format!("http://{}", cluster.addr(2));
    let json = ("content-type", "application/json");

    eprintln!("--- internal routes: 401 without the secret, with a wrong one, with a token");
    for (method, path) in INTERNAL {
        let url = format!("{base}{path}");
        let wrong = [("x-minos-cluster-secret", "0123456789abcdef0123456789abcdef")];
        let token = [("authorization", client_token.as_str())];
        for headers in [&[][..], &wrong[..], &token[..]] {
            let (status, body) = send(&http, method, &url, headers, b"{}".to_vec()).await?;
            assert_eq!(status, 401, "{method} {path} with {headers:?}: {body}");
        }
    }

    eprintln!("--- admin routes: 401 without a token or with a wrong one, 403 with a client token");
    for (method, path) in ADMIN {
        let url = format!("{base}{path}");
        let (status, body) = send(&http, method, &url, &[json], Vec::new()).await?;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        let bad = [("authorization", "Bearer not-a-token-0123456789")];
        let (status, body) = send(&http, method, &url, &bad, Vec::new()).await?;
        assert_eq!(status, 401, "{method} {path} with a wrong token: {body}");
        let client = [("authorization", client_token.as_str()), json];
        let (status, body) = send(&http, method, &url, &client, Vec::new()).await?;
        assert_eq!(status, 403, "{method} {path} with a client token: {body}");
        assert!(body.contains("forbidden"), "{body}");
    }

    eprintln!("--- client routes: 401 without a token");
    for (method, path) in CLIENT {
        let url = format!("{base}{path}");
        let (status, body) = send(&http, method, &url, &[json], b"{}".to_vec()).await?;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
    }

    eprintln!("--- a browser-style text/plain POST is refused (415) even with a token");
    let plain = [
        ("authorization", client_token.as_str()),
        ("content-type", "text/plain"),
    ];
    let (status, body) = send(
        &http,
        "POST",
        &format!("{base}/v1/sessions"),
        &plain,
        br#"{"id":"csrf"}"#.to_vec(),
    )
    .await?;
    assert_eq!(status, 415, "{body}");
    let (status, body) = send(
        &http,
        "POST",
        &format!("{base}/v1/sessions/s1/call"),
        &plain,
        br#"{"op":"put","key":"k","value":1}"#.to_vec(),
    )
    .await?;
    assert_eq!(status, 415, "{body}");

    eprintln!("--- health probes need no token");
    for path in ["/v1/health", "/v1/health/ready", "/v1/health/live"] {
        let (status, body) = send(&http, "GET", &format!("{base}{path}"), &[], Vec::new()).await?;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let after = settled(&cluster, &admin).await?;
    assert_eq!(before, after, "refused requests changed the cluster");

    eprintln!("--- control: the client token may create and call, and that does reach the log");
    let client =
        minos::Client::new(cluster.addr(3)).with_token(&cluster.credentials().client_token);
    client
        .create_session(&NewSession {
            id: "by-client".into(),
            kind: None,
            state: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    let reply = client
        .call(
            "by-client",
            &serde_json::json!({"op": "set", "value": {"k": 2}}),
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(reply.reply, serde_json::json!({"ok": true}));
    let err = client.delete_session("by-client").await.err();
    assert_eq!(
        err.and_then(|e| e.status()),
        Some(403),
        "a client may not delete"
    );
    let changed = settled(&cluster, &admin).await?;
    assert!(
        changed.last_logs[0] > after.last_logs[0],
        "the control writes must reach the log: {after:?} -> {changed:?}"
    );
    Ok(())
}

fn bin<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("bincode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_messages_with_an_overflowing_term_or_from_a_non_member_change_nothing(
) -> Result<(), String> {
    let mut cluster = ProcessCluster::start(ProcessOptions::new(BIN)).await?;
    let leader = cluster.await_leader(Instant::now() + DEADLINE).await?;
    let http = http();
    let admin = admin_http(&cluster);
    let secret = cluster.credentials().secret.clone();
    let peer = [
        ("x-minos-cluster-secret", secret.as_str()),
        ("content-type", "application/octet-stream"),
    ];
    let before = settled(&cluster, &admin).await?;
    let term = before.terms[0];
    let stranger: NodeId = 99;

    // The request that used to brick the cluster: an AppendEntries with
    // term u64::MAX, now sent even with the secret, to every node.
    let overflow = |from: NodeId, term: u64| AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, from),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "append, term u64::MAX",
            "/internal/raft/append",
            bin(&overflow(leader, u64::MAX)),
        ),
        (
            "append, term u64::MAX - 1",
            "/internal/raft/append",
            bin(&overflow(leader, u64::MAX - 1)),
        ),
        (
            "vote, term u64::MAX",
            "/internal/raft/vote",
            bin(&VoteRequest::<NodeId>::new(
                Vote::new(u64::MAX, leader),
                None,
            )),
        ),
        (
            "append from a non-member at the next term",
            "/internal/raft/append",
            bin(&overflow(stranger, term + 1)),
        ),
        (
            "vote for a non-member at the next term",
            "/internal/raft/vote",
            bin(&VoteRequest::<NodeId>::new(
                Vote::new(term + 1, stranger),
                None,
            )),
        ),
        ("garbage", "/internal/raft/append", vec![0xff; 64]),
        ("garbage", "/internal/raft/vote", vec![0x01, 0x02, 0x03]),
        ("garbage", "/internal/propose", vec![0xff; 16]),
    ];
    for id in cluster.ids() {
        for (what, path, body) in &cases {
            let url = format!("http://{}{path}", cluster.addr(id));
            let (status, text) = send(&http, "POST", &url, &peer, body.clone()).await?;
            eprintln!("node {id}: {what}: {status} {text}");
            assert!(
                status == 400 || status == 403,
                "node {id}: {what}: expected a refusal, got {status} {text}"
            );
        }
    }
    let after = settled(&cluster, &admin).await?;
    assert_eq!(
        before, after,
        "a refused Raft message changed term, log or table"
    );

    eprintln!("--- every node still serves, also after a restart (the term was never saved)");
    let restarted = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap_or(1);
    cluster.restart(restarted).await?;
    for id in cluster.ids() {
        cluster.await_healthy(id, Instant::now() + DEADLINE).await?;
    }
    let reply = cluster
        .client(restarted)
        .create_session(&NewSession {
            id: "after-restart".into(),
            kind: None,
            state: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(reply.id, "after-restart");
    let restarted_print = settled(&cluster, &admin).await?;
    assert!(
        restarted_print.terms.iter().all(|t| *t < u64::MAX / 2),
        "terms stay small: {restarted_print:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_peer_listener_the_public_port_serves_no_peer_route_and_the_peer_port_no_public_one(
) -> Result<(), String> {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let credentials = minos::testkit::Credentials::generate()?;
    let mut listeners = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let public = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        peers.insert(
            id,
            peer.local_addr().map_err(|e| e.to_string())?.to_string(),
        );
        listeners.insert(id, (public, peer));
    }
    let mut nodes = Vec::new();
    for (id, (public, peer)) in listeners {
        let node = minos::NodeBuilder::new(id, dir.path().join(format!("node{id}")))
            .listener(public)
            .peer_listener(peer)
            .peers(peers.clone())
            .security(credentials.security())
            .start()
            .await
            .map_err(|e| format!("node {id}: {e}"))?;
        nodes.push(node);
    }
    let client = nodes[0].client();
    minos::testkit::await_until("a healthy node 1", DEADLINE, || async {
        client.health().await.ok()
    })
    .await?;
    client
        .create_session(&NewSession {
            id: "split".into(),
            kind: None,
            state: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    let reply = nodes[2]
        .client()
        .call("split", &serde_json::json!({"op": "get"}), None)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(reply.reply, serde_json::json!({}));

    let http = http();
    let secret = [("x-minos-cluster-secret", credentials.secret.as_str())];
    let public = format!("http://{}", nodes[0].addr());
    let peer = format!("http://{}", peers[&1]);
    let (status, _) = send(
        &http,
        "POST",
        &format!("{public}/internal/whoami"),
        &secret,
        Vec::new(),
    )
    .await?;
    assert_eq!(
        status, 404,
        "the public port serves no peer route, even with the secret"
    );
    let (status, body) = send(
        &http,
        "POST",
        &format!("{peer}/internal/whoami"),
        &secret,
        Vec::new(),
    )
    .await?;
    assert_eq!(
        (status, body.as_str()),
        (200, "1"),
        "the peer port serves them"
    );
    let (status, _) = send(&http, "GET", &format!("{peer}/v1/health"), &[], Vec::new()).await?;
    assert_eq!(status, 404, "the peer port serves no public route");
    for node in nodes {
        node.kill().await;
    }
    Ok(())
}

#[tokio::test]
async fn serve_without_credentials_refuses_to_start_with_one_line() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = minos::testkit::process::free_ports(1).map_err(|e| e.to_string())?[0];
    let addr = format!("127.0.0.1:{port}");
    let output = tokio::process::Command::new(BIN)
        .args([
            "serve",
            "--id",
            "1",
            "--listen",
            &addr,
            "--peers",
            &format!("1={addr}"),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("MINOS_CLUSTER_SECRET_FILE")
        .env_remove("MINOS_TOKEN_FILE")
        .env_remove("MINOS_INSECURE")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .map_err(|_| "minos serve without credentials kept running".to_string())?
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.contains("--cluster-secret-file") && stderr.contains("--insecure"),
        "{stderr}"
    );
    Ok(())
}
