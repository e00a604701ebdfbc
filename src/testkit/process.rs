//! A cluster of real `minos serve` processes on loopback, for multi-process
//! tests and the benchmark: real binaries, real sled on disk, real signals.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Client;
use crate::model::NodeId;

/// A signal to send to a node's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Graceful stop (the node hands its sessions over, then exits).
    Term,
    /// Crash.
    Kill,
    /// Freeze (the process keeps its sockets open but answers nothing).
    Stop,
    /// Resume after [`Signal::Stop`].
    Cont,
}

impl Signal {
    fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }
}

/// Options of a [`ProcessCluster`].
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// The `minos` binary.
    pub bin: PathBuf,
    /// Number of nodes.
    pub nodes: u64,
    /// Extra flags for every `minos serve`.
    pub serve_args: Vec<String>,
    /// Extra flags for one node's `minos serve` (after `serve_args`).
    pub node_args: BTreeMap<NodeId, Vec<String>>,
    /// Where data and logs go (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// How long to wait for a leader and healthy nodes.
    pub start_timeout: Duration,
    /// A host name for the peers list and `--advertise` (`localhost`, say)
    /// instead of 127.0.0.1: the nodes then reach each other by a DNS name,
    /// resolved at each connection, as in Kubernetes. They still listen
    /// on 127.0.0.1, where the clients of [`ProcessCluster::client`] go.
    pub peer_host: Option<String>,
}

impl ProcessOptions {
    /// Three nodes of `bin` with default flags.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            bin: bin.into(),
            nodes: 3,
            serve_args: Vec::new(),
            node_args: BTreeMap::new(),
            dir: None,
            start_timeout: Duration::from_secs(30),
            peer_host: None,
        }
    }
}

struct ProcNode {
    child: Option<Child>,
    addr: String,
    /// The address the peers list gives it (`addr` unless a peer host is set).
    advertise: String,
}

/// Real node processes. Dropping it kills every process it started.
pub struct ProcessCluster {
    options: ProcessOptions,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    peers: String,
    nodes: BTreeMap<NodeId, ProcNode>,
    credentials: super::Credentials,
}

/// Ports [`free_ports`] picks from: below Linux's ephemeral range
/// (32768-60999), so a node restarted on its port never finds it taken by
/// an outgoing connection (a peer reconnecting to it, say).
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Picks free loopback ports outside the ephemeral range (bound and
/// released; a tiny race with another process probing the same port is
/// accepted). Processes and calls start at different offsets.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id().wrapping_mul(7919) + NEXT.fetch_add(97, Ordering::Relaxed);
    let mut listeners = Vec::with_capacity(count);
    for step in 0..span {
        if listeners.len() == count {
            break;
        }
        let port = TEST_PORTS.start + ((start + step) % span) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    if listeners.len() < count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("fewer than {count} free ports in {TEST_PORTS:?}"),
        ));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Writes a file only its owner may read (mode 0600).
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

impl ProcessCluster {
    /// Starts the processes and waits until every node is healthy.
    pub async fn start(options: ProcessOptions) -> Result<Self, String> {
        let (temp, dir) = match &options.dir {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("minos-cluster-")
                    .tempdir()
                    .map_err(|e| e.to_string())?;
                let path = temp.path().to_path_buf();
                (Some(temp), path)
            }
        };
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let credentials = super::Credentials::generate()?;
        write_private(&dir.join("cluster.secret"), &credentials.secret)?;
        write_private(&dir.join("tokens"), &credentials.token_file())?;
        let ports = free_ports(options.nodes as usize).map_err(|e| e.to_string())?;
        let addrs: BTreeMap<NodeId, String> = (1..=options.nodes)
            .zip(ports)
            .map(|(id, port)| (id, format!("127.0.0.1:{port}")))
            .collect();
        let advertise = |addr: &str| match &options.peer_host {
            Some(host) => format!("{host}:{}", addr.rsplit(':').next().unwrap_or_default()),
            None => addr.to_string(),
        };
        let peers = addrs
            .iter()
            .map(|(id, addr)| format!("{id}={}", advertise(addr)))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = addrs
            .into_iter()
            .map(|(id, addr)| {
                let advertise = advertise(&addr);
                (
                    id,
                    ProcNode {
                        child: None,
                        addr,
                        advertise,
                    },
                )
            })
            .collect();
        let mut cluster = Self {
            options,
            dir,
            _temp: temp,
            peers,
            nodes,
            credentials,
        };
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in &ids {
            cluster.spawn(*id)?;
        }
        let deadline = Instant::now() + cluster.options.start_timeout;
        for id in &ids {
            cluster.await_healthy(*id, deadline).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: NodeId) -> Result<(), String> {
        let node = self.nodes.get(&id).ok_or(format!("no node {id}"))?;
        let data = self.dir.join(format!("node{id}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{id}.log")))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        // With a peer host the peers list names this node by it.
        let advertise = match self.options.peer_host {
            Some(_) => vec!["--advertise".to_string(), node.advertise.clone()],
            None => Vec::new(),
        };
        let child = Command::new(&self.options.bin)
            .arg("serve")
            .arg("--id")
            .arg(id.to_string())
            .arg("--listen")
            .arg(&node.addr)
            .args(&advertise)
            .arg("--data-dir")
            .arg(&data)
            .arg("--peers")
            .arg(&self.peers)
            .arg("--cluster-secret-file")
            .arg(self.dir.join("cluster.secret"))
            .arg("--token-file")
            .arg(self.dir.join("tokens"))
            .args(&self.options.serve_args)
            .args(self.options.node_args.get(&id).into_iter().flatten())
            .env(
                "MINOS_LOG",
                std::env::var("MINOS_LOG").unwrap_or("info,openraft=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.options.bin.display()))?;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.child = Some(child);
        }
        Ok(())
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Directory with data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Address of a node.
    pub fn addr(&self, id: NodeId) -> String {
        self.nodes
            .get(&id)
            .map(|n| n.addr.clone())
            .unwrap_or_default()
    }

    /// The `--peers` value the nodes run with.
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// A client of a node, with the admin token.
    pub fn client(&self, id: NodeId) -> Client {
        Client::new(self.addr(id)).with_token(&self.credentials.admin_token)
    }

    /// The credentials the nodes run with (files `cluster.secret` and
    /// `tokens` in [`ProcessCluster::dir`]).
    pub fn credentials(&self) -> &super::Credentials {
        &self.credentials
    }

    /// Process id of a running node.
    pub fn pid(&self, id: NodeId) -> Option<u32> {
        self.nodes
            .get(&id)
            .and_then(|n| n.child.as_ref())
            .map(|c| c.id())
    }

    /// True while the node's process runs (not reaped).
    pub fn is_running(&mut self, id: NodeId) -> bool {
        match self.nodes.get_mut(&id).and_then(|n| n.child.as_mut()) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends a signal to a node's process.
    pub fn signal(&self, id: NodeId, signal: Signal) -> Result<(), String> {
        let pid = self.pid(id).ok_or(format!("node {id} is not running"))?;
        // SAFETY: kill(2) on a pid we spawned; no memory is touched.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal.raw()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("kill({pid}): {}", std::io::Error::last_os_error()))
        }
    }

    /// Waits (bounded) for a node's process to exit and reaps it.
    pub async fn await_exit(&mut self, id: NodeId, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.nodes.get_mut(&id).ok_or(format!("no node {id}"))?;
            let Some(child) = node.child.as_mut() else {
                return Ok(());
            };
            if let Ok(Some(_)) = child.try_wait() {
                node.child = None;
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("node {id} did not exit within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, id: NodeId) -> Result<(), String> {
        self.signal(id, Signal::Kill)?;
        self.await_exit(id, Duration::from_secs(10)).await
    }

    /// SIGTERM and wait for the graceful exit.
    pub async fn term(&mut self, id: NodeId) -> Result<(), String> {
        self.signal(id, Signal::Term)?;
        self.await_exit(id, Duration::from_secs(20)).await
    }

    /// Starts a stopped node's process again with the same flags and data,
    /// without waiting for it to be healthy (a node cannot be healthy alone
    /// when a whole cluster restarts).
    pub fn launch(&mut self, id: NodeId) -> Result<(), String> {
        if self.is_running(id) {
            return Err(format!("node {id} is running"));
        }
        self.spawn(id)
    }

    /// Starts a stopped node again with the same flags and data.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), String> {
        if self.is_running(id) {
            self.kill(id).await?;
        }
        self.spawn(id)?;
        let deadline = Instant::now() + self.options.start_timeout;
        self.await_healthy(id, deadline).await
    }

    /// Waits until `/v1/health` of a node answers 200.
    pub async fn await_healthy(&mut self, id: NodeId, deadline: Instant) -> Result<(), String> {
        let client = self.client(id);
        loop {
            if client.health().await.is_ok() {
                return Ok(());
            }
            if !self.is_running(id) {
                return Err(format!(
                    "node {id} exited; log: {}",
                    self.dir.join(format!("node{id}.log")).display()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("node {id} not healthy in time"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until some running node reports a leader; returns it.
    pub async fn await_leader(&mut self, deadline: Instant) -> Result<NodeId, String> {
        loop {
            for id in self.ids() {
                if !self.is_running(id) {
                    continue;
                }
                if let Ok(view) = self.client(id).cluster().await {
                    if let Some(leader) = view.leader {
                        if self.is_running(leader) {
                            return Ok(leader);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err("no leader in time".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The tail of a node's log (for failure messages).
    pub fn log_tail(&self, id: NodeId, lines: usize) -> String {
        let text = self.log(id);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A node's whole log, of every process it ran as (empty if unreadable).
    pub fn log(&self, id: NodeId) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{id}.log"))).unwrap_or_default()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                // SAFETY: signalling a child we spawned; a stopped child must be
                // resumed before it can die of SIGKILL's reaping.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
