//! What Raft entries carry and what applying them returns: map operations of a partition,
//! and commands of the metadata group with the state they build.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::{Role, User};
use crate::maps::Processor;
use crate::views::{MemberState, Move, MoveReason, NodeId};
use crate::ErrorCode;

/// A Raft group of the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GroupId {
    /// The metadata group: members and partition table.
    Meta,
    /// A data partition.
    Partition(u32),
}

impl GroupId {
    /// The 4-byte prefix of the group's keys in storage.
    pub fn to_key(self) -> u32 {
        match self {
            GroupId::Meta => u32::MAX,
            GroupId::Partition(p) => p,
        }
    }

    /// The partition, for a partition group.
    pub fn partition(self) -> Option<u32> {
        match self {
            GroupId::Meta => None,
            GroupId::Partition(p) => Some(p),
        }
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Meta => write!(f, "meta"),
            GroupId::Partition(p) => write!(f, "p{p}"),
        }
    }
}

/// A stored map entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The value as JSON text.
    pub value: String,
    /// The partition revision of the last write.
    pub version: u64,
    /// Wall-clock expiry (ms since the Unix epoch), if the entry has a TTL.
    pub expires_at_ms: Option<u64>,
}

impl Record {
    /// Whether the entry is gone at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// One mutation of one map entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MapOp {
    /// Set the value.
    Put {
        /// Map name.
        map: String,
        /// Entry key.
        key: String,
        /// The new value as JSON text.
        value: String,
        /// Write only if the current version is this (0: only if absent).
        if_version: Option<u64>,
        /// Time to live in milliseconds.
        ttl_ms: Option<u64>,
    },
    /// Remove the entry.
    Delete {
        /// Map name.
        map: String,
        /// Entry key.
        key: String,
        /// Remove only if the current version is this.
        if_version: Option<u64>,
    },
    /// Run an entry processor on the current value.
    Process {
        /// Map name.
        map: String,
        /// Entry key.
        key: String,
        /// What to run.
        processor: Processor,
    },
    /// Drop an expired entry (proposed by the partition leader's sweeper).
    Expire {
        /// Map name.
        map: String,
        /// Entry key.
        key: String,
        /// Only if the entry still has this version.
        version: u64,
    },
}

impl MapOp {
    /// The map and key the operation touches.
    pub fn target(&self) -> (&str, &str) {
        match self {
            MapOp::Put { map, key, .. }
            | MapOp::Delete { map, key, .. }
            | MapOp::Process { map, key, .. }
            | MapOp::Expire { map, key, .. } => (map, key),
        }
    }
}

/// Operations applied together in one Raft entry, with the leader's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapBatch {
    /// Leader wall clock when proposed (ms since the Unix epoch).
    pub now_ms: u64,
    /// The operations, applied in order.
    pub ops: Vec<MapOp>,
}

/// The result of one [`MapOp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpOutcome {
    /// The entry was written.
    Written {
        /// Its new version.
        version: u64,
        /// The new value, returned by processors.
        value: Option<String>,
    },
    /// The entry was removed.
    Deleted {
        /// The version it had.
        version: u64,
    },
    /// There was no entry.
    NotFound,
    /// `if_version` did not match.
    VersionMismatch {
        /// The current version, if any.
        current: Option<u64>,
    },
    /// The processor refused to run.
    Failed {
        /// Machine-readable code.
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
}

/// A member as the metadata group records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Stable member id.
    pub id: NodeId,
    /// Advertised `host:port` of its peer endpoint.
    pub addr: String,
    /// Advertised `host:port` of its client API (absent: registered by a release that served
    /// both on `addr`).
    #[serde(default)]
    pub client_addr: Option<String>,
    /// Failure zone (a Kubernetes node's `topology.kubernetes.io/zone`), if known.
    #[serde(default)]
    pub zone: Option<String>,
    /// Lifecycle state.
    pub state: MemberState,
}

/// One partition in the table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Replicas the partition should have; the first is the preferred leader. During a move
    /// the target is already listed and the source is not.
    pub replicas: Vec<NodeId>,
    /// Incremented by every start, end or cancel of a move; identifies a move.
    pub version: u64,
    /// Whether the group has been created (initialized by its first replica and led once).
    /// Until then its replicas are as bootstrapped and nothing moves; after, replicas are
    /// only ever added by the group's leader.
    #[serde(default)]
    pub created: bool,
}

/// The metadata group's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    /// Number of partitions, fixed at bootstrap.
    pub partition_count: u32,
    /// Replicas per partition the grid aims for (fewer while there are fewer members).
    pub replication_factor: u32,
    /// Members by id.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// The partition table.
    pub partitions: Vec<PartitionInfo>,
    /// Moves in progress, by partition (at most one per partition).
    #[serde(default)]
    pub moves: BTreeMap<u32, Move>,
    /// Moves finished since bootstrap.
    #[serde(default)]
    pub moves_finished: u64,
    /// Incremented by every change.
    pub epoch: u64,
    /// Users by name.
    #[serde(default)]
    pub users: BTreeMap<String, User>,
    /// Roles by name (besides the built-in `admin`).
    #[serde(default)]
    pub roles: BTreeMap<String, Role>,
}

impl MetaState {
    /// Whether the partition table exists.
    pub fn bootstrapped(&self) -> bool {
        !self.partitions.is_empty()
    }

    /// Replicas of partition `p` (empty before bootstrap or when out of range).
    pub fn replicas(&self, p: u32) -> &[NodeId] {
        self.partitions
            .get(p as usize)
            .map(|i| i.replicas.as_slice())
            .unwrap_or(&[])
    }

    /// Version of partition `p`'s replica set.
    pub fn version(&self, p: u32) -> u64 {
        self.partitions.get(p as usize).map_or(0, |i| i.version)
    }

    /// Address of member `id`.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.addr.as_str())
    }

    /// Client API address of member `id` (its peer address when it registered none).
    pub fn client_addr(&self, id: NodeId) -> Option<&str> {
        self.members
            .get(&id)
            .map(|m| m.client_addr.as_deref().unwrap_or(&m.addr))
    }

    /// State of member `id`.
    pub fn state(&self, id: NodeId) -> Option<MemberState> {
        self.members.get(&id).map(|m| m.state)
    }

    /// Partitions `id` holds a replica of, or gives one away from.
    pub fn held_by(&self, id: NodeId) -> impl Iterator<Item = u32> + '_ {
        (0..self.partition_count).filter(move |p| {
            self.replicas(*p).contains(&id) || self.moves.get(p).is_some_and(|m| m.from == Some(id))
        })
    }

    /// Whether member `id` must keep a replica of `p`: it is listed, or a move away from it
    /// has not finished.
    pub fn hosts(&self, id: NodeId, p: u32) -> bool {
        self.replicas(p).contains(&id) || self.moves.get(&p).is_some_and(|m| m.from == Some(id))
    }

    /// Active members.
    pub fn active(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members
            .values()
            .filter(|m| m.state == MemberState::Active)
    }
}

/// A change of the metadata state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Registers a member or updates its address and zone. A decommissioned member that
    /// comes back joins again (it holds nothing).
    Join {
        /// Member id.
        id: NodeId,
        /// Advertised peer address.
        addr: String,
        /// Failure zone.
        zone: Option<String>,
        /// Advertised client API address.
        #[serde(default)]
        client_addr: Option<String>,
    },
    /// Makes the listed registered members active and creates the partition table; ignored
    /// once done.
    Bootstrap {
        /// The initial members (registered before).
        members: Vec<NodeId>,
        /// Number of partitions.
        partition_count: u32,
        /// Replicas per partition.
        replication_factor: u32,
    },
    /// A joining member becomes active (and eligible for replicas).
    Activate {
        /// Member id.
        id: NodeId,
    },
    /// Starts moving every replica off a member. Refused when the active members left
    /// would be fewer than the replication factor.
    Drain {
        /// Member id.
        id: NodeId,
    },
    /// A draining member that holds nothing is decommissioned.
    Decommission {
        /// Member id.
        id: NodeId,
    },
    /// Starts a move (see [`Move`]).
    StartMove {
        /// Partition.
        partition: u32,
        /// Replica replaced, if any.
        from: Option<NodeId>,
        /// New replica.
        to: NodeId,
        /// Why.
        reason: MoveReason,
        /// Start time (ms since the epoch).
        now_ms: u64,
    },
    /// The partition's committed Raft voters equal its table entry: the move is done.
    FinishMove {
        /// Partition.
        partition: u32,
        /// The move's version ([`Move::version`]).
        version: u64,
        /// The group's voters, as its leader committed them.
        voters: Vec<NodeId>,
    },
    /// Rolls a move back: the source is listed again, the target not. Proposed by the
    /// partition leader only, and only while the target is not a voter.
    CancelMove {
        /// Partition.
        partition: u32,
        /// The move's version ([`Move::version`]).
        version: u64,
    },
    /// The partition's group exists (its first leader reports it).
    PartitionCreated {
        /// Partition.
        partition: u32,
    },
    /// Makes `leader` the partition's preferred leader (first in its replica list).
    SetPreferredLeader {
        /// Partition.
        partition: u32,
        /// One of its replicas.
        leader: NodeId,
    },
    // New variants go last, so entries already in logs decode as they were written.
    /// Creates or changes a user. `token_sha256` replaces its token; `None` keeps it (the
    /// user must exist then). Every role must exist.
    PutUser {
        /// User name.
        name: String,
        /// Role names.
        roles: Vec<String>,
        /// SHA-256 of a new token, lowercase hex.
        token_sha256: Option<String>,
    },
    /// Removes a user; refused for the last user holding `admin`.
    DeleteUser {
        /// User name.
        name: String,
    },
    /// Creates or replaces a role (not `admin`).
    PutRole {
        /// Role name.
        name: String,
        /// Its grants.
        role: Role,
    },
    /// Removes a role no user holds.
    DeleteRole {
        /// Role name.
        name: String,
    },
    /// Creates the user `admin` with this token if the grid has no user yet (the bootstrap
    /// admin secret); ignored once any user exists.
    BootstrapAdmin {
        /// SHA-256 of the token, lowercase hex.
        token_sha256: String,
    },
}

/// A request for the metadata leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCall {
    /// Commit a command.
    Propose(MetaCommand),
    /// The version of a partition in the latest committed state (a linearizable read).
    Version(u32),
}

/// The metadata leader's answer to a [`MetaCall`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    /// What the command did.
    Outcome(MetaOutcome),
    /// The partition's version.
    Version(u64),
}

/// What applying a [`MetaCommand`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// The state changed.
    Applied,
    /// Nothing to do (already so, or no longer applicable).
    Unchanged,
    /// Refused, with an error code and a message for the caller.
    Refused {
        /// Machine-readable code (`member_not_found`, `drain_refused`, ...).
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
}
