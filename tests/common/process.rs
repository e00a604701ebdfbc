//! Small helpers for multi-process tests (shared by several test crates;
//! include with `#[path = "common/process.rs"] mod process_common;`).
//!
//! Kept deliberately small and stable: relaunching nodes of a
//! [`ProcessCluster`] without waiting for health (needed to restart every node
//! after a whole-cluster crash, where no single node can become healthy
//! alone), reading one `/metrics` gauge, and reading a node's whole session
//! table page by page.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use minos::api::SessionView;
use minos::client::Client;
use minos::model::NodeId;
use minos::testkit::process::ProcessCluster;

/// The `minos` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_minos");

/// Node processes started by [`relaunch`]; dropping this SIGKILLs and reaps
/// them.
pub struct Relaunched {
    children: Vec<(NodeId, Child)>,
}

impl Relaunched {
    /// Pids of the relaunched nodes.
    pub fn pids(&self) -> Vec<(NodeId, u32)> {
        self.children.iter().map(|(id, c)| (*id, c.id())).collect()
    }

    /// True while the node's process runs.
    pub fn is_running(&mut self, id: NodeId) -> bool {
        self.children
            .iter_mut()
            .find(|(n, _)| *n == id)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Relaunched {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `ids` of `cluster` again (they must not be running) with the same
/// flags, data directories and log files as [`ProcessCluster`] uses, without
/// waiting for anything. `serve_args` must be the cluster's extra flags.
pub fn relaunch(
    cluster: &ProcessCluster,
    ids: &[NodeId],
    serve_args: &[String],
) -> Result<Relaunched, String> {
    let mut relaunched = Relaunched {
        children: Vec::new(),
    };
    for &id in ids {
        let dir: PathBuf = cluster.dir().to_path_buf();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node{id}.log")))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(cluster.addr(id))
            .arg("--data-dir")
            .arg(dir.join(format!("node{id}")))
            .arg("--peers")
            .arg(cluster.peers())
            .args(serve_args)
            .env(
                "MINOS_LOG",
                std::env::var("MINOS_LOG").unwrap_or("info,openraft=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {BIN}: {e}"))?;
        relaunched.children.push((id, child));
    }
    Ok(relaunched)
}

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
