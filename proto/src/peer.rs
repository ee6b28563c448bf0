//! Member-to-member messages and the Raft type config every group shares. Only members speak
//! this (feature `peer`); it travels as MessagePack on the peer endpoint.

use std::io::Cursor;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::entries::{
    GroupId, MapBatch, MapOp, MetaCall, MetaCommand, MetaOutcome, MetaReply, OpOutcome, Record,
};
use crate::views::{MemberReport, NodeId};
use crate::ErrorCode;

/// Raft node info: the member's advertised `host:port`.
pub type MemberNode = openraft::BasicNode;

/// What a Raft entry carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// A change of the metadata group's state.
    Meta(MetaCommand),
    /// Map operations of one partition, applied together.
    Map(MapBatch),
}

/// What applying an entry returns to the proposer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to report (blank and membership entries).
    None,
    /// What the metadata command did.
    Meta(MetaOutcome),
    /// One outcome per operation of a [`MapBatch`].
    Map(Vec<OpOutcome>),
}

openraft::declare_raft_types!(
    /// The grid's Raft type config, shared by the metadata group and every partition.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = MemberNode,
);

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
    Status(MemberReport),
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
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// Anything else.
    Other(String),
}
