//! Member-to-member traffic: every Raft RPC of every group, liveness pings and forwarded
//! client operations share one HTTP endpoint per member (`POST /internal/v1/peer`).
//!
//! Requests to one member are coalesced: whatever is queued when a send starts travels in
//! one MessagePack batch, so a sweep of heartbeats for hundreds of groups costs one HTTP
//! request per peer. Lanes keep slow traffic from delaying urgent traffic: control (pings,
//! votes, heartbeats, status), Raft appends, client (forwarded reads and writes, which wait
//! for commit) and bulk (snapshot chunks). Batches are capped in bytes, and a request whose
//! caller stopped waiting is dropped instead of sent.

mod client;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

pub use client::{Lane, Transport, TransportError};

use crate::cluster::meta::{MetaCall, MetaReply};
use crate::raft::{GroupId, NodeId, TypeConfig};
use crate::structures::map::{MapOp, OpOutcome, Record};

/// Path of the peer endpoint.
pub const PEER_PATH: &str = "/internal/v1/peer";

/// One request from a peer.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A Raft RPC for a group.
    Raft {
        /// The group.
        group: GroupId,
        /// The RPC.
        rpc: RaftRpc,
    },
    /// Liveness probe.
    Ping {
        /// Sender.
        from: NodeId,
    },
    /// Map writes for a partition this member should lead.
    Write {
        /// The partition's group.
        group: GroupId,
        /// Operations, applied in order in one Raft entry.
        ops: Vec<MapOp>,
    },
    /// Map reads.
    Read {
        /// The partition's group.
        group: GroupId,
        /// `(map, key)` pairs.
        keys: Vec<(String, String)>,
        /// Serve from this replica without a leadership check.
        stale: bool,
    },
    /// This member's view of its groups.
    Status,
    /// A request for the metadata leader. A member that does not lead the metadata group
    /// passes it on to the leader it knows, once (`forwarded` is then true).
    Meta {
        /// The request.
        call: MetaCall,
        /// Already passed on by another member.
        forwarded: bool,
    },
    /// Asks this member to campaign for the group's leadership: its leader is handing it
    /// over and has stopped taking writes.
    Elect {
        /// The group.
        group: GroupId,
    },
}

/// The Raft RPCs openraft sends.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// AppendEntries (and heartbeats).
    Append(AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to one [`PeerRequest`], in the same position of the batch.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// AppendEntries result.
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    /// Vote result.
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    /// Snapshot chunk result.
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// This member does not host the group.
    NoGroup,
    /// Liveness answer.
    Pong {
        /// Responder.
        id: NodeId,
        /// Whether the responder has the partition table (and so hosts its partitions).
        bootstrapped: bool,
    },
    /// Outcomes of a [`PeerRequest::Write`].
    Write(Result<Vec<OpOutcome>, WireError>),
    /// Records of a [`PeerRequest::Read`], in key order.
    Read(Result<Vec<Option<Record>>, WireError>),
    /// Answer to [`PeerRequest::Status`].
    Status(MemberStatus),
    /// Answer to [`PeerRequest::Meta`].
    Meta(Result<MetaReply, WireError>),
    /// Request accepted.
    Accepted,
    /// The request could not be decoded or handled.
    Invalid(String),
}

/// Errors of forwarded operations as they cross the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError {
    /// Not the leader; retry at `leader`.
    NotLeader {
        /// Best known leader.
        leader: Option<NodeId>,
    },
    /// The member does not host the group; nothing was applied.
    NotHosted {
        /// The member that answered.
        member: NodeId,
    },
    /// No quorum or no leader; nothing was applied.
    Unavailable(String),
    /// A write may or may not have been applied.
    OutcomeUnknown(String),
    /// Refused in the grid's current state.
    Refused {
        /// Machine-readable code.
        code: String,
        /// Why.
        message: String,
    },
    /// Anything else.
    Other(String),
}

impl WireError {
    /// Converts a local error for the wire.
    pub fn from_error(e: crate::Error) -> Self {
        match e {
            crate::Error::NotLeader { leader, .. } => WireError::NotLeader { leader },
            crate::Error::NotDelivered { member, .. } => WireError::NotHosted { member },
            crate::Error::Unavailable { message, .. } => WireError::Unavailable(message),
            crate::Error::OutcomeUnknown { message, .. } => WireError::OutcomeUnknown(message),
            crate::Error::Refused { code, message } => WireError::Refused { code, message },
            other => WireError::Other(other.to_string()),
        }
    }

    /// Converts a wire error back into a local one about `group`.
    pub fn into_error(self, group: GroupId) -> crate::Error {
        match self {
            WireError::NotLeader { leader } => crate::Error::NotLeader { group, leader },
            WireError::NotHosted { member } => crate::Error::NotDelivered {
                group,
                member,
                message: "it does not host the group".into(),
            },
            WireError::Unavailable(message) => crate::Error::Unavailable { group, message },
            WireError::OutcomeUnknown(message) => crate::Error::OutcomeUnknown { group, message },
            WireError::Refused { code, message } => crate::Error::Refused { code, message },
            WireError::Other(m) => crate::Error::Internal(m),
        }
    }
}

/// A member's report of itself, for `GET /v1/cluster` and readiness.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Member id.
    pub id: NodeId,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    /// Partitions this member leads.
    pub led: Vec<u32>,
    /// Partitions this member hosts a replica of.
    pub held: Vec<u32>,
    /// Partitions hosted here whose leader is unknown or not answering.
    pub leaderless: Vec<u32>,
    /// Whether this member leads the metadata group.
    pub meta_leader: bool,
    /// Moves and handoffs this member is carrying out as partition leader.
    #[serde(default)]
    pub moves: Vec<MoveProgress>,
}

/// A partition leader's progress on a move or a leadership handoff.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveProgress {
    /// Partition.
    pub partition: u32,
    /// `adding_learner`, `catching_up`, `joint_consensus`, `removing_learners`, `finishing`
    /// or `handing_off`.
    pub phase: String,
    /// Log entries the slowest new replica is behind the leader.
    pub lag: u64,
}
