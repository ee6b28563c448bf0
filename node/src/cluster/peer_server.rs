//! The serving side of member-to-member traffic: every [`PeerRequest`] a peer sends is
//! answered here (Raft RPCs to the hosted groups, pings, metadata calls, forwarded reads
//! and writes, status and leadership handoffs).

use std::sync::Arc;

use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta_client::MetaClient;
use crate::cluster::mover;
use crate::cluster::router::{Answer, Call, Router};
use crate::cluster::views::Views;
use crate::raft::GroupId;
use crate::runtime::Tasks;
use crate::transport::{PeerRequest, PeerResponse, RaftRpc};

/// Answers peers.
pub struct PeerServer {
    /// Hosted groups.
    pub groups: Arc<Groups>,
    /// Contact times for leader silence.
    pub liveness: Arc<Liveness>,
    /// Metadata calls.
    pub meta: Arc<MetaClient>,
    /// Forwarded reads and writes.
    pub router: Arc<Router>,
    /// Status reports.
    pub views: Arc<Views>,
    /// Campaigns started for peers run here.
    pub tasks: Tasks,
}

impl PeerServer {
    /// Serves one request from a peer.
    pub async fn handle(&self, req: PeerRequest) -> PeerResponse {
        match req {
            PeerRequest::Ping { .. } => PeerResponse::Pong {
                id: self.groups.id(),
                bootstrapped: self.groups.meta_state().bootstrapped(),
            },
            PeerRequest::Status => PeerResponse::Status(self.views.report()),
            PeerRequest::Meta { call, forwarded } => PeerResponse::Meta(
                self.meta
                    .handle(call, forwarded)
                    .await
                    .map_err(|e| e.to_wire()),
            ),
            PeerRequest::Elect { group } => match self.groups.get(group) {
                Some(g) => {
                    self.tasks.spawn(mover::campaign(g));
                    PeerResponse::Accepted
                }
                None => PeerResponse::NoGroup,
            },
            PeerRequest::Raft { group, rpc } => {
                let Some(g) = self.groups.get(group) else {
                    return PeerResponse::NoGroup;
                };
                match rpc {
                    RaftRpc::Append(r) => {
                        if r.vote.is_committed() {
                            g.touch_leader_contact(self.liveness.clock_ms());
                        }
                        PeerResponse::Append(g.raft.append_entries(r).await)
                    }
                    RaftRpc::Vote(r) => PeerResponse::Vote(g.raft.vote(r).await),
                    RaftRpc::Snapshot(r) => {
                        PeerResponse::Snapshot(g.raft.install_snapshot(r).await)
                    }
                }
            }
            PeerRequest::Write {
                group: GroupId::Partition(p),
                ops,
            } => PeerResponse::Write(
                self.router
                    .local(p, Call::Write(ops))
                    .await
                    .and_then(Answer::written)
                    .map_err(|e| e.to_wire()),
            ),
            PeerRequest::Read {
                group: GroupId::Partition(p),
                keys,
                stale,
            } => PeerResponse::Read(
                self.router
                    .local(p, Call::Read { keys, stale })
                    .await
                    .and_then(Answer::records)
                    .map_err(|e| e.to_wire()),
            ),
            PeerRequest::Write { .. } | PeerRequest::Read { .. } => {
                PeerResponse::Invalid("map operations go to partitions".into())
            }
        }
    }
}
