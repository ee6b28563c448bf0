//! openraft's network over the shared [`Transport`]: each group gets a thin client that
//! tags its RPCs with the group id.

use std::sync::Arc;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{GroupId, MemberNode, NodeId, TypeConfig};
use crate::transport::{Lane, PeerRequest, PeerResponse, RaftRpc, Transport, TransportError};

/// Creates per-target clients for one group.
pub struct NetworkFactory {
    group: GroupId,
    transport: Arc<Transport>,
}

impl NetworkFactory {
    /// The network of `group`.
    pub fn new(group: GroupId, transport: Arc<Transport>) -> Self {
        NetworkFactory { group, transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = GroupClient;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> GroupClient {
        GroupClient {
            group: self.group,
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// Sends one group's RPCs to one member.
pub struct GroupClient {
    group: GroupId,
    target: NodeId,
    addr: String,
    transport: Arc<Transport>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, MemberNode, RaftError<NodeId, E>>;

impl GroupClient {
    async fn send<E: std::error::Error>(
        &self,
        lane: Lane,
        rpc: RaftRpc,
        option: &RPCOption,
    ) -> Result<PeerResponse, RpcErr<E>> {
        let req = PeerRequest::Raft {
            group: self.group,
            rpc,
        };
        match self
            .transport
            .call(&self.addr, lane, req, option.hard_ttl())
            .await
        {
            Ok(PeerResponse::NoGroup) => Err(RPCError::Unreachable(Unreachable::new(&Msg(
                format!("member {} does not host {}", self.target, self.group),
            )))),
            Ok(r) => Ok(r),
            Err(TransportError::NotSent(m)) => {
                Err(RPCError::Unreachable(Unreachable::new(&Msg(m))))
            }
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, r: PeerResponse) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&Msg(format!(
            "unexpected answer from {}: {r:?}",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        // Heartbeats must not queue behind large appends.
        let lane = if rpc.entries.is_empty() {
            Lane::Control
        } else {
            Lane::Raft
        };
        match self.send(lane, RaftRpc::Append(rpc), &option).await? {
            PeerResponse::Append(Ok(r)) => Ok(r),
            PeerResponse::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self
            .send(Lane::Bulk, RaftRpc::Snapshot(rpc), &option)
            .await?
        {
            PeerResponse::Snapshot(Ok(r)) => Ok(r),
            PeerResponse::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        match self
            .send(Lane::Control, RaftRpc::Vote(rpc), &option)
            .await?
        {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(other)),
        }
    }
}
