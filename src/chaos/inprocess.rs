//! The in-process backend: the test kit's [`Cluster`], whose nodes share
//! this process. It crashes nodes (no handoff) and cuts Raft, lease and
//! forwarding traffic between them (clients still reach every node); it
//! cannot freeze a node.

use std::time::Duration;

use super::backend::Backend;
use super::schedule::Capabilities;
use crate::config::Timing;
use crate::model::NodeId;
use crate::testkit::Cluster;

/// A [`Backend`] over an in-process [`Cluster`].
pub struct InProcessBackend {
    cluster: Cluster,
    lease: Duration,
}

impl InProcessBackend {
    /// Starts `nodes` in-process nodes with `timing`.
    pub async fn start(nodes: u64, timing: Timing) -> Result<Self, String> {
        let lease = timing.lease_duration;
        let cluster = Cluster::builder(nodes).timing(timing).start().await?;
        Ok(Self { cluster, lease })
    }

    /// The cluster (for extra assertions).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

impl Backend for InProcessBackend {
    fn name(&self) -> String {
        "inprocess".into()
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
            pause: false,
            isolate: true,
            cut: true,
        }
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    async fn kill(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.kill(node).await;
        Ok(())
    }

    async fn restart(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.restart(node).await
    }

    async fn isolate(&mut self, node: NodeId) -> Result<(), String> {
        self.cluster.isolate(node);
        Ok(())
    }

    async fn cut(&mut self, a: NodeId, b: NodeId) -> Result<(), String> {
        self.cluster.partition(a, b);
        Ok(())
    }

    async fn heal(&mut self) -> Result<(), String> {
        self.cluster.heal();
        Ok(())
    }
}
