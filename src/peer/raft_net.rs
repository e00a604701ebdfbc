//! openraft's `RaftNetwork` over the peer transport: AppendEntries, Vote
//! and InstallSnapshot as bincode bodies on the `/internal/raft/*` routes.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use super::paths;
use super::transport::{InternalError, Transport};
use crate::model::NodeId;
use crate::wire::TypeConfig;

/// Encoded bytes of log entries one AppendEntries carries at most, unless
/// its first entry alone is larger (then it goes alone). Everyday entries
/// (a batch of writes, a few KB) are far below it, so it bounds only the
/// repair of a mass failover and the catch-up of a node that was away.
pub(crate) const APPEND_BUDGET: u64 = 256 * 1024;

/// How many of `entries`, from the first, fit in `budget` encoded bytes
/// (at least one when there is any).
fn within_budget<T: Serialize>(entries: &[T], budget: u64) -> usize {
    if entries.len() < 2 {
        // Heartbeats and single entries go whole: nothing to measure.
        return entries.len();
    }
    let mut total = 0u64;
    for (i, entry) in entries.iter().enumerate() {
        total = total.saturating_add(bincode::serialized_size(entry).unwrap_or(u64::MAX));
        if total > budget && i > 0 {
            return i;
        }
    }
    entries.len()
}

/// openraft's network factory: one cheap link per target sharing the client.
#[derive(Clone)]
pub struct Network {
    transport: Transport,
}

impl Network {
    /// A factory over `transport`.
    pub fn new(transport: Transport) -> Self {
        Self { transport }
    }
}

/// A link to one peer.
pub struct PeerLink {
    target: NodeId,
    addr: String,
    transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerLink {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .transport
            .post_bin(self.target, &self.addr, path, request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                InternalError::Unreachable(..) => RPCError::Unreachable(Unreachable::new(&e)),
                InternalError::Failed(..) => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    /// Sends at most [`APPEND_BUDGET`] bytes of the entries (always the
    /// first): openraft 0.9 gives the whole AppendEntries one heartbeat
    /// interval, and a follower handed 16 entries of a mass failover's
    /// moves (up to 4 MB) could not take them in time, missed its leader
    /// and campaigned. A shortened send that the follower accepts is
    /// reported as a partial success up to its last entry; the leader sends
    /// the rest next.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let keep = within_budget(&rpc.entries, APPEND_BUDGET);
        let shortened = (keep < rpc.entries.len()).then(|| {
            rpc.entries.truncate(keep);
            rpc.entries.last().map(|entry| entry.log_id)
        });
        let sent_at = Instant::now();
        let answer: AppendEntriesResponse<NodeId> =
            self.rpc(paths::RAFT_APPEND, &rpc, &option).await?;
        let answer = match (answer, shortened) {
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(last)
            }
            (answer, _) => answer,
        };
        if matches!(
            answer,
            AppendEntriesResponse::Success | AppendEntriesResponse::PartialSuccess(_)
        ) {
            self.transport.clock.record(self.target, sent_at);
        }
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(paths::RAFT_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc(paths::RAFT_VOTE, &rpc, &option).await
    }

    fn backoff(&self) -> Backoff {
        // openraft's default is a constant 500 ms, which would ignore a
        // returning node that long.
        Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

#[cfg(test)]
mod tests {
    use super::within_budget;

    fn blobs(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|n| vec![7u8; *n]).collect()
    }

    #[test]
    fn entries_are_cut_at_the_budget_but_the_first_always_goes() {
        // A Vec<u8> encodes as its length (8 bytes) and its bytes.
        assert_eq!(within_budget(&blobs(&[92, 92, 92]), 300), 3);
        assert_eq!(within_budget(&blobs(&[92, 92, 92]), 299), 2);
        assert_eq!(within_budget(&blobs(&[92, 92, 92]), 200), 2);
        assert_eq!(within_budget(&blobs(&[92, 92, 92]), 199), 1);
        assert_eq!(within_budget(&blobs(&[5000, 10]), 100), 1);
        assert_eq!(within_budget(&blobs(&[]), 100), 0);
    }
}
