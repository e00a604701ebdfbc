//! A three-member etcd cluster on loopback, started from the `etcd` binary
//! for the side-by-side rows of `minos bench throughput`: same machine, same
//! run, same load generator. Dropping it kills the members.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::testkit::process::free_ports;

/// Running etcd members.
pub(super) struct EtcdCluster {
    members: Vec<Child>,
    /// `host:port` of each member's client URL, in member order.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts three members with etcd's Raft timing set to minos's defaults
    /// (heartbeat 50 ms, election timeout 300 ms) and waits until each
    /// answers its health check.
    pub(super) async fn start(bin: &Path) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let ports = free_ports(6).map_err(|e| format!("ports: {e}"))?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[3 + i]);
        let initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", peer(i))).collect();
        let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let mut members = Vec::new();
        for (i, endpoint) in endpoints.iter().enumerate() {
            let data: PathBuf = dir.path().join(format!("m{i}"));
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log")))
                .map_err(|e| format!("etcd log: {e}"))?;
            let client = format!("http://{endpoint}");
            let child = Command::new(bin)
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "300"])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("{}: {e}", bin.display()))?;
            members.push(child);
        }
        let cluster = EtcdCluster {
            members,
            endpoints,
            _dir: dir,
        };
        cluster.await_healthy(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    async fn await_healthy(&self, within: Duration) -> Result<(), String> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        for endpoint in &self.endpoints {
            loop {
                let healthy = http
                    .get(format!("http://{endpoint}/health"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success());
                if let Some(response) = healthy {
                    let body = response.text().await.unwrap_or_default();
                    if body.contains("true") {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "etcd member {endpoint} not healthy within {within:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Index (in `endpoints`) of the current leader.
    pub(super) async fn leader(&self) -> Result<usize, String> {
        let http = reqwest::Client::new();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let status: serde_json::Value = http
                .post(format!("http://{endpoint}/v3/maintenance/status"))
                .json(&serde_json::json!({}))
                .send()
                .await
                .map_err(|e| format!("etcd status: {e}"))?
                .json()
                .await
                .map_err(|e| format!("etcd status: {e}"))?;
            let me = status["header"]["member_id"].as_str().unwrap_or("-");
            if status["leader"].as_str() == Some(me) {
                return Ok(index);
            }
        }
        Err("etcd has no leader".into())
    }

    /// Process ids of the members.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}
