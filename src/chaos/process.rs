//! The process backend: real `minos serve` processes on loopback
//! ([`ProcessCluster`]), crashed with SIGKILL and frozen with SIGSTOP. All
//! nodes share the loopback interface, so it cannot partition them.

use std::path::PathBuf;
use std::time::Duration;

use super::backend::Backend;
use super::schedule::Capabilities;
use crate::model::NodeId;
use crate::testkit::process::{ProcessCluster, ProcessOptions, Signal};

/// A [`Backend`] over real processes.
pub struct ProcessBackend {
    cluster: ProcessCluster,
}

impl ProcessBackend {
    /// Starts three nodes of the `minos` binary `bin` with `serve_args`;
    /// data and logs go to `dir` (a temporary directory when `None`).
    pub async fn start(
        bin: PathBuf,
        serve_args: Vec<String>,
        dir: Option<PathBuf>,
    ) -> Result<Self, String> {
        let mut options = ProcessOptions::new(bin);
        options.serve_args = serve_args;
        options.dir = dir;
        let cluster = ProcessCluster::start(options).await?;
        Ok(Self { cluster })
    }

    /// The cluster.
    pub fn cluster(&self) -> &ProcessCluster {
        &self.cluster
    }
}

impl Backend for ProcessBackend {
    fn name(&self) -> String {
        "process".into()
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.cluster.ids()
    }

    fn client_addr(&self, node: NodeId) -> String {
        self.cluster.addr(node)
    }

    fn client_token(&self) -> Option<String> {
        Some(self.cluster.credentials().client_token.clone())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kill: true,
            pause: true,
            isolate: false,
            cut: false,
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn kill(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.kill(node).await
    }

    async fn restart(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.restart(node).await
    }

    async fn pause(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.signal(node, Signal::Stop)
    }

    async fn resume(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.signal(node, Signal::Cont)
    }

    fn log_tail(&self, node: NodeId) -> String {
        self.cluster.log_tail(node, 30)
    }

    fn log(&self, node: NodeId) -> String {
        self.cluster.log(node)
    }
}
