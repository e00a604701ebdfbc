//! The docker backend: the three-node compose cluster of
//! `docker-compose.yml` (image built `FROM scratch` around the minos
//! binary). Each node sits on two networks: `raft` (internal, node to node;
//! every node advertises its address there) and `client` (the published
//! loopback port the chaos clients use).
//!
//! Faults: `docker kill -s KILL` and `docker start`; `docker pause` and
//! `unpause` (the cgroup freezer, like SIGSTOP); isolation by `docker network
//! disconnect` from `raft` (clients still reach the node), healed by
//! `connect` with the same address; and a partial partition (one link cut,
//! both ends still reach the third node) by `iptables` DROP rules run with
//! the host's `iptables` inside the container's network namespace
//! (`nsenter -t PID -n`), since a scratch image has no iptables of its own.
//! Without `nsenter`/`iptables` (or root) link cuts are reported as not
//! injected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use super::backend::Backend;
use super::schedule::Capabilities;
use crate::model::NodeId;

/// Default compose project (`scripts/docker-cluster.sh` uses it).
pub const DEFAULT_PROJECT: &str = "minos";
/// Port the nodes listen on inside their containers.
pub const NODE_PORT: u16 = 7100;
/// Longest wait for one docker command.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the compose cluster is.
#[derive(Clone, Debug)]
pub struct DockerOptions {
    /// Compose project name (containers are `{project}_node{N}_1`).
    pub project: String,
    /// Number of nodes.
    pub nodes: u64,
    /// API token the chaos clients send.
    pub token: Option<String>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        Self {
            project: DEFAULT_PROJECT.into(),
            nodes: 3,
            token: None,
        }
    }
}

/// Runs `program args`, bounded; returns stdout, or an error with stderr.
pub async fn run_command(program: &str, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("`{program} {}` timed out", args.join(" ")))?
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

async fn docker(args: &[&str]) -> Result<String, String> {
    run_command("docker", args).await
}

/// True when `docker info` answers.
pub async fn docker_available() -> bool {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .await
        .is_ok()
}

struct DockerNode {
    container: String,
    raft_ip: String,
    client_addr: String,
}

/// A [`Backend`] over the compose cluster.
pub struct DockerBackend {
    options: DockerOptions,
    raft_network: String,
    nodes: Vec<(NodeId, DockerNode)>,
    can_cut: bool,
}

impl DockerBackend {
    /// Finds the running compose cluster of `options.project`.
    pub async fn attach(options: DockerOptions) -> Result<Self, String> {
        let raft_network = format!("{}_raft", options.project);
        let mut nodes = Vec::new();
        for id in 1..=options.nodes {
            let container = format!("{}_node{id}_1", options.project);
            let raft_ip = docker(&[
                "inspect",
                "-f",
                &format!("{{{{(index .NetworkSettings.Networks \"{raft_network}\").IPAddress}}}}"),
                &container,
            ])
            .await
            .map_err(|e| {
                format!("no container {container} on network {raft_network} (is the cluster up? scripts/docker-cluster.sh start): {e}")
            })?;
            let published = docker(&["port", &container, &format!("{NODE_PORT}/tcp")]).await?;
            let client_addr = published
                .lines()
                .find(|l| l.starts_with("127.0.0.1:"))
                .ok_or(format!(
                    "{container} publishes no loopback port for {NODE_PORT} ({published:?})"
                ))?
                .to_string();
            nodes.push((
                id,
                DockerNode {
                    container,
                    raft_ip,
                    client_addr,
                },
            ));
        }
        let mut backend = Self {
            options,
            raft_network,
            nodes,
            can_cut: false,
        };
        backend.can_cut = backend.probe_iptables().await;
        Ok(backend)
    }

    fn node(&self, id: NodeId) -> Result<&DockerNode, String> {
        self.nodes
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, node)| node)
            .ok_or(format!("no node {id}"))
    }

    /// `docker logs` of node `id`'s container with `flags` (stdout and
    /// stderr together; empty when docker cannot say).
    fn docker_logs(&self, id: NodeId, flags: &[&str]) -> String {
        let Ok(node) = self.node(id) else {
            return String::new();
        };
        std::process::Command::new("docker")
            .arg("logs")
            .args(flags)
            .arg(&node.container)
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    async fn pid(&self, id: NodeId) -> Result<String, String> {
        let container = &self.node(id)?.container;
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]).await?;
        if pid == "0" || pid.is_empty() {
            return Err(format!("{container} is not running"));
        }
        Ok(pid)
    }

    /// Runs the host's iptables in node `id`'s network namespace.
    async fn iptables(&self, id: NodeId, rule: &[&str]) -> Result<String, String> {
        let pid = self.pid(id).await?;
        let mut args = vec!["-t", &pid, "-n", "iptables", "-w"];
        args.extend_from_slice(rule);
        run_command("nsenter", &args).await
    }

    async fn probe_iptables(&self) -> bool {
        let Some((id, _)) = self.nodes.first() else {
            return false;
        };
        self.iptables(*id, &["-S", "OUTPUT"]).await.is_ok()
    }

    async fn await_running(&self, id: NodeId, running: bool) -> Result<(), String> {
        let container = &self.node(id)?.container;
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = if running { "true" } else { "false" };
        loop {
            let state = docker(&["inspect", "-f", "{{.State.Running}}", container]).await?;
            if state == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{container}: running is still {state}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The compose project.
    pub fn project(&self) -> &str {
        &self.options.project
    }
}

impl Backend for DockerBackend {
    fn name(&self) -> String {
        format!("docker({})", self.options.project)
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|(id, _)| *id).collect()
    }

    fn client_token(&self) -> Option<String> {
        self.options.token.clone()
    }

    fn client_addr(&self, node: NodeId) -> String {
        self.node(node)
            .map(|n| n.client_addr.clone())
            .unwrap_or_default()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kill: true,
            pause: true,
            isolate: true,
            cut: self.can_cut,
        }
    }

    async fn kill(&mut self, node: NodeId) -> Result<(), String> {
        let container = self.node(node)?.container.clone();
        docker(&["kill", "-s", "KILL", &container]).await?;
        self.await_running(node, false).await
    }

    async fn restart(&mut self, node: NodeId) -> Result<(), String> {
        let container = self.node(node)?.container.clone();
        docker(&["start", &container]).await?;
        self.await_running(node, true).await
    }

    async fn pause(&mut self, node: NodeId) -> Result<(), String> {
        docker(&["pause", &self.node(node)?.container])
            .await
            .map(drop)
    }

    async fn resume(&mut self, node: NodeId) -> Result<(), String> {
        docker(&["unpause", &self.node(node)?.container])
            .await
            .map(drop)
    }

    async fn isolate(&mut self, node: NodeId) -> Result<(), String> {
        let container = self.node(node)?.container.clone();
        docker(&["network", "disconnect", &self.raft_network, &container])
            .await
            .map(drop)
    }

    async fn cut(&mut self, a: NodeId, b: NodeId) -> Result<(), String> {
        if !self.can_cut {
            return Err("link cuts need nsenter and iptables on the host".into());
        }
        let ip_a = self.node(a)?.raft_ip.clone();
        let ip_b = self.node(b)?.raft_ip.clone();
        for (here, peer) in [(a, &ip_b), (b, &ip_a)] {
            self.iptables(here, &["-A", "INPUT", "-s", peer, "-j", "DROP"])
                .await?;
            self.iptables(here, &["-A", "OUTPUT", "-d", peer, "-j", "DROP"])
                .await?;
        }
        Ok(())
    }

    async fn heal(&mut self) -> Result<(), String> {
        let mut errors = Vec::new();
        let ids = self.nodes();
        for id in ids {
            let node = self.node(id)?;
            let (container, raft_ip) = (node.container.clone(), node.raft_ip.clone());
            let attached = docker(&[
                "inspect",
                "-f",
                "{{range $name, $n := .NetworkSettings.Networks}}{{$name}} {{end}}",
                &container,
            ])
            .await
            .map(|s| s.split_whitespace().any(|n| n == self.raft_network))
            .unwrap_or(true);
            if !attached {
                if let Err(e) = docker(&[
                    "network",
                    "connect",
                    "--ip",
                    &raft_ip,
                    &self.raft_network,
                    &container,
                ])
                .await
                {
                    errors.push(e);
                }
            }
            if self.can_cut {
                for chain in ["INPUT", "OUTPUT"] {
                    if let Err(e) = self.iptables(id, &["-F", chain]).await {
                        errors.push(e);
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn log_tail(&self, node: NodeId) -> String {
        self.docker_logs(node, &["--tail", "30"])
    }

    fn log(&self, node: NodeId) -> String {
        self.docker_logs(node, &[])
    }
}

/// Settings of a compose cluster started by [`ComposeCluster::up`].
#[derive(Clone, Debug)]
pub struct ComposeOptions {
    /// The repository's `docker-compose.yml`.
    pub compose_file: PathBuf,
    /// Compose project.
    pub project: String,
    /// Image to run.
    pub image: String,
    /// First three octets of the raft network (`10.231.7`).
    pub raft_subnet: String,
    /// First three octets of the client network.
    pub client_subnet: String,
    /// Published loopback ports of nodes 1, 2, 3.
    pub ports: [u16; 3],
    /// Directory with `cluster.secret` and `tokens`, mounted read-only at
    /// `/secrets` in every container (see [`write_secrets`]).
    pub secrets_dir: PathBuf,
}

/// User id the image runs as (the Dockerfile's `USER`).
pub const IMAGE_UID: u32 = 10001;

/// Writes `cluster.secret` and `tokens` for a compose cluster into `dir`,
/// readable by the image's user only: owned by [`IMAGE_UID`] with mode 0600
/// when this process may chown (root), else world-readable (a warning says
/// so; fine for a throwaway test cluster, not for anything else).
pub fn write_secrets(dir: &Path, credentials: &crate::testkit::Credentials) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = [
        ("cluster.secret", credentials.secret.clone()),
        ("tokens", credentials.token_file()),
    ];
    let mut owned = std::os::unix::fs::chown(dir, Some(IMAGE_UID), Some(IMAGE_UID)).is_ok();
    for (name, text) in &files {
        let path = dir.join(name);
        crate::testkit::process::write_private(&path, text)?;
        owned &= std::os::unix::fs::chown(&path, Some(IMAGE_UID), Some(IMAGE_UID)).is_ok();
    }
    if !owned {
        eprintln!(
            "warning: cannot give {} to uid {IMAGE_UID}; making the secrets world-readable",
            dir.display()
        );
        let open = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        open(dir, 0o755)?;
        for (name, _) in &files {
            open(&dir.join(name), 0o644)?;
        }
    }
    Ok(())
}

/// The chaos clients' token for `--backend docker`: `MINOS_TOKEN`, else
/// the file `MINOS_TOKEN_FILE` names, else `admin.token` in
/// `MINOS_DOCKER_DIR` (default `.minos-docker`, where
/// scripts/docker-cluster.sh writes it).
pub fn token_from_env() -> Result<Option<String>, String> {
    if let Ok(token) = std::env::var("MINOS_TOKEN") {
        return Ok(Some(token));
    }
    let file = match std::env::var_os("MINOS_TOKEN_FILE") {
        Some(file) => PathBuf::from(file),
        None => std::env::var_os("MINOS_DOCKER_DIR")
            .map_or_else(|| PathBuf::from(".minos-docker"), PathBuf::from)
            .join("admin.token"),
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// A compose cluster this process started; `down` (or drop) removes it.
pub struct ComposeCluster {
    options: ComposeOptions,
    up: bool,
}

fn compose_env(options: &ComposeOptions) -> Vec<(String, String)> {
    vec![
        ("MINOS_IMAGE".into(), options.image.clone()),
        ("MINOS_RAFT_SUBNET".into(), options.raft_subnet.clone()),
        ("MINOS_CLIENT_SUBNET".into(), options.client_subnet.clone()),
        ("MINOS_PORT_1".into(), options.ports[0].to_string()),
        ("MINOS_PORT_2".into(), options.ports[1].to_string()),
        ("MINOS_PORT_3".into(), options.ports[2].to_string()),
        (
            "MINOS_SECRETS_DIR".into(),
            options.secrets_dir.display().to_string(),
        ),
    ]
}

fn compose_command(options: &ComposeOptions, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new("docker-compose");
    command
        .arg("-f")
        .arg(&options.compose_file)
        .arg("-p")
        .arg(&options.project)
        .args(args)
        .envs(compose_env(options));
    command
}

impl ComposeCluster {
    /// `docker-compose up -d` with `options`.
    pub async fn up(options: ComposeOptions) -> Result<Self, String> {
        let mut cluster = Self { options, up: false };
        let mut command = tokio::process::Command::from(compose_command(
            &cluster.options,
            &["up", "-d", "--no-build"],
        ));
        command.kill_on_drop(true);
        cluster.up = true;
        let output = tokio::time::timeout(DOCKER_TIMEOUT, command.output())
            .await
            .map_err(|_| "docker-compose up timed out".to_string())?
            .map_err(|e| format!("cannot run docker-compose: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "docker-compose up failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(cluster)
    }

    /// Removes the containers and networks.
    pub fn down(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.up) {
            return Ok(());
        }
        let output = compose_command(&self.options, &["down", "-v", "-t", "1"])
            .output()
            .map_err(|e| format!("cannot run docker-compose: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// Builds image `tag` from the repository's `Dockerfile` around `bin`. A
/// static binary is copied alone; a dynamically linked one (a debug build
/// in tests) with the shared libraries `ldd` lists, so the scratch image
/// can still run it.
pub async fn build_image(dockerfile: &Path, bin: &Path, tag: &str) -> Result<(), String> {
    let context = tempfile::Builder::new()
        .prefix("minos-image-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let rootfs = context.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| e.to_string())?;
    // The data directory, owned by the image's user (the Dockerfile chowns
    // the whole rootfs), since a scratch image has no mkdir.
    std::fs::create_dir_all(rootfs.join("data")).map_err(|e| e.to_string())?;
    std::fs::copy(bin, rootfs.join("minos")).map_err(|e| format!("{}: {e}", bin.display()))?;
    let bin_text = bin.to_string_lossy().to_string();
    let libraries = run_command("ldd", &[&bin_text]).await.unwrap_or_default();
    for line in libraries.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            let target = rootfs.join(path.trim_start_matches('/'));
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::copy(path, &target).map_err(|e| format!("{path}: {e}"))?;
        }
    }
    let dockerfile = dockerfile.to_string_lossy().to_string();
    let context_text = context.path().to_string_lossy().to_string();
    docker(&["build", "-q", "-f", &dockerfile, "-t", tag, &context_text])
        .await
        .map(drop)
}
