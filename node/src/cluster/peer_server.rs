//! The serving side of member-to-member traffic: every [`PeerRequest`] a peer sends is
//! answered here (Raft RPCs to the hosted groups, pings, metadata calls, forwarded reads
//! and writes, status and leadership handoffs).
//!
//! The caller is a member of the grid (its TLS certificate says which, see
//! `transport::server`). A request that speaks for a member speaks for the caller: Raft
//! messages carry the caller's vote, a ping and a `Join` name the caller, a leadership
//! handoff comes from a voter of the group. Forwarded reads and writes meet the API's input
//! rules (`structures::check`) and must belong to the partition they are sent to.

use std::sync::Arc;

use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta_client::MetaClient;
use crate::cluster::mover;
use crate::cluster::router::{Answer, Call, Router};
use crate::cluster::views::Views;
use crate::raft::{GroupId, NodeId};
use crate::runtime::Tasks;
use crate::structures::check::{check_key, check_map, check_op};
use crate::transport::{PeerRequest, PeerResponse, RaftRpc};
use devicegrid_proto::entries::{MetaCall, MetaCommand};
use devicegrid_proto::partition_of;

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
    /// Serves one request from member `from`.
    pub async fn handle(&self, from: NodeId, req: PeerRequest) -> PeerResponse {
        if let Err(why) = self.check(from, &req) {
            return PeerResponse::Invalid(why);
        }
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

    /// Whether member `from` may send `req`, and whether it is well formed.
    fn check(&self, from: NodeId, req: &PeerRequest) -> Result<(), String> {
        let speaks_for = |who: Option<NodeId>, what: &str| {
            if who == Some(from) {
                Ok(())
            } else {
                Err(format!("member {from} sent a {what} of member {who:?}"))
            }
        };
        match req {
            PeerRequest::Ping { from: claimed } => speaks_for(Some(*claimed), "ping"),
            PeerRequest::Raft { rpc, .. } => match rpc {
                RaftRpc::Append(r) => speaks_for(r.vote.leader_id().voted_for(), "append"),
                RaftRpc::Vote(r) => speaks_for(r.vote.leader_id().voted_for(), "vote request"),
                RaftRpc::Snapshot(r) => speaks_for(r.vote.leader_id().voted_for(), "snapshot"),
            },
            PeerRequest::Meta {
                call: MetaCall::Propose(MetaCommand::Join { id, .. }),
                forwarded: false,
            } => speaks_for(Some(*id), "join"),
            PeerRequest::Meta { .. } | PeerRequest::Status => Ok(()),
            PeerRequest::Elect { group } => match self.groups.get(*group) {
                Some(g)
                    if g.raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .voter_ids()
                        .any(|v| v == from) =>
                {
                    Ok(())
                }
                // Not hosted here: answered `NoGroup` below.
                None => Ok(()),
                Some(_) => Err(format!(
                    "member {from} is not a voter of {group} and cannot hand its leadership over"
                )),
            },
            PeerRequest::Write { group, ops } => {
                let targets: Vec<_> = ops.iter().map(|op| op.target()).collect();
                for op in ops {
                    check_op(op).map_err(|e| e.to_string())?;
                }
                self.check_partition(*group, &targets)
            }
            PeerRequest::Read { group, keys, .. } => {
                let targets: Vec<_> = keys.iter().map(|(m, k)| (m.as_str(), k.as_str())).collect();
                for (map, key) in &targets {
                    check_map(map)
                        .and_then(|_| check_key(key))
                        .map_err(|e| e.to_string())?;
                }
                self.check_partition(*group, &targets)
            }
        }
    }

    /// Every `(map, key)` belongs to the partition `group`.
    fn check_partition(&self, group: GroupId, targets: &[(&str, &str)]) -> Result<(), String> {
        let GroupId::Partition(p) = group else {
            return Err("map operations go to partitions".into());
        };
        if targets.is_empty() {
            return Err("no operations".into());
        }
        let count = self.groups.meta_state().partition_count;
        if count == 0 {
            // Not bootstrapped: no partition is hosted here, the request is answered so.
            return Ok(());
        }
        match targets
            .iter()
            .find(|(_, key)| partition_of(key, count) != p)
        {
            Some((map, key)) => Err(format!(
                "{map}/{key} does not belong to partition {p} of {count}"
            )),
            None => Ok(()),
        }
    }
}
