//! What a chaos run needs from the cluster under test: addresses for the
//! clients, and the faults it can inject. Backends: [`super::process`]
//! (real processes, signals), [`super::docker`] (the compose cluster: kill,
//! pause, network cuts) and [`super::inprocess`] (the test kit's in-process
//! cluster: crashes and partitions, deterministic enough for `cargo test`).

use std::time::Duration;

use super::schedule::Capabilities;
use crate::model::NodeId;

/// A cluster that faults can be injected into.
///
/// `restart` must bring a killed node back (it may wait until it is
/// healthy); `heal` restores every cut and isolation. The driver never
/// overlaps two faults, and undoes each one before the next.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Short name for reports.
    fn name(&self) -> String;
    /// Node ids.
    fn nodes(&self) -> Vec<NodeId>;
    /// Address (`host:port`) the clients use to reach a node.
    fn client_addr(&self, node: NodeId) -> String;
    /// API token the clients send (`None`: the cluster is insecure).
    fn client_token(&self) -> Option<String>;
    /// Faults this backend can inject.
    fn capabilities(&self) -> Capabilities;
    /// Lease duration of the nodes (pauses are drawn longer than this).
    fn lease(&self) -> Duration {
        Duration::from_millis(500)
    }
    /// Crash a node (SIGKILL).
    async fn kill(&mut self, node: NodeId) -> Result<(), String>;
    /// Start a killed node again on its data.
    async fn restart(&mut self, node: NodeId) -> Result<(), String>;
    /// Freeze a node.
    async fn pause(&mut self, node: NodeId) -> Result<(), String> {
        Err(format!("{}: cannot pause node {node}", self.name()))
    }
    /// Unfreeze a node.
    async fn resume(&mut self, node: NodeId) -> Result<(), String> {
        Err(format!("{}: cannot resume node {node}", self.name()))
    }
    /// Cut a node off from every peer; clients still reach it.
    async fn isolate(&mut self, node: NodeId) -> Result<(), String> {
        Err(format!("{}: cannot isolate node {node}", self.name()))
    }
    /// Cut the link between two nodes, both ways.
    async fn cut(&mut self, a: NodeId, b: NodeId) -> Result<(), String> {
        Err(format!("{}: cannot cut {a} <-> {b}", self.name()))
    }
    /// Restore every link.
    async fn heal(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Recent log lines of a node, for failure reports.
    fn log_tail(&self, _node: NodeId) -> String {
        String::new()
    }
    /// A node's whole log (empty when the backend keeps none), for the
    /// lines around a violation.
    fn log(&self, _node: NodeId) -> String {
        String::new()
    }
}
