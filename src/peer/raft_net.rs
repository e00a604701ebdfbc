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
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let sent_at = Instant::now();
        let answer: AppendEntriesResponse<NodeId> =
            self.rpc(paths::RAFT_APPEND, &rpc, &option).await?;
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
