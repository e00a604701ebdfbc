//! Small helpers for multi-process tests (shared by several test crates;
//! include with `#[path = "common/process.rs"] mod process_common;`).
//!
//! Kept deliberately small and stable: an admin HTTP client, reading one
//! `/metrics` gauge, and
//! reading a node's whole session table page by page. (Restarting every node
//! without waiting for health is `ProcessCluster::launch`.)
#![allow(dead_code)]

use std::collections::BTreeMap;

use minos::api::SessionView;
use minos::client::Client;

/// An HTTP client that sends the cluster's admin token on every request
/// (for raw requests to routes the typed client does not cover).
pub fn admin_http(cluster: &minos::testkit::process::ProcessCluster) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!("Bearer {}", cluster.credentials().admin_token);
    headers.insert(
        reqwest::header::AUTHORIZATION,
        bearer.parse().expect("a token is a valid header value"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// The `minos` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_minos");

/// One gauge of a node's `/metrics` (Prometheus text).
pub async fn metric(http: &reqwest::Client, addr: &str, name: &str) -> Result<f64, String> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .map_err(|e| format!("GET /metrics of {addr}: {e}"))?
        .text()
        .await
        .map_err(|e| format!("GET /metrics of {addr}: {e}"))?;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
        .ok_or_else(|| format!("{addr}: no gauge {name} in /metrics"))
}

/// Every session as `client`'s node lists it, following `next` pages of
/// 1000 (bounded to 1000 pages).
pub async fn all_sessions(client: &Client) -> Result<BTreeMap<String, SessionView>, String> {
    let mut sessions = BTreeMap::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let page = client
            .list_sessions(None, after.as_deref(), Some(1000))
            .await
            .map_err(|e| format!("list sessions on {}: {e}", client.addr()))?;
        for session in page.sessions {
            sessions.insert(session.id.clone(), session);
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(sessions),
        }
    }
    Err(format!(
        "{}: more than 1000 pages of sessions",
        client.addr()
    ))
}
