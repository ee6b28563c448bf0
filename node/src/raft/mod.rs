//! openraft glue: one type config for every group, the sled-backed log store and state
//! machine, and the network that carries every group's RPCs over the member's shared
//! [`transport`](crate::transport).

mod log_store;
mod network;
mod state_machine;

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use log_store::LogStore;
pub use network::NetworkFactory;
pub use state_machine::StateMachineStore;

use crate::cluster::meta::MetaCommand;
use crate::structures::map::{MapBatch, OpOutcome};

/// Member ids are stable numbers chosen by the operator (or `devicegrid dev`).
pub type NodeId = u64;
/// Raft node info: the member's advertised `host:port`.
pub type MemberNode = openraft::BasicNode;

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
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupId::Meta => write!(f, "meta"),
            GroupId::Partition(p) => write!(f, "p{p}"),
        }
    }
}

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
    Meta(crate::cluster::meta::MetaOutcome),
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

/// A Raft group handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry of [`TypeConfig`].
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;

/// openraft settings shared by every group of a member.
///
/// Per-group heartbeats and election timers are off: with hundreds of groups per member they
/// dominate idle CPU (see RAFT-NOTES). [`crate::cluster::liveness`] drives both member-wide:
/// it sends every group's heartbeats in one sweep (coalesced by the transport) and starts
/// elections only where a leader's member stopped answering. The tick itself stays on: a
/// leader removed from its group steps down on a tick.
/// `heartbeat_interval` is now only the timeout of AppendEntries and of the leadership check
/// of linearizable reads; `election_timeout_max` is the leader lease during which followers
/// refuse other candidates.
#[allow(clippy::result_large_err)] // openraft's ConfigError
pub fn group_config(
    cluster_name: &str,
    snapshot_after_logs: u64,
) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        cluster_name: cluster_name.to_string(),
        heartbeat_interval: 1000,
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        install_snapshot_timeout: 10_000,
        // Entries are at most ~1 MiB (see cluster::group), so an append stays well under the
        // peer endpoint's body limit.
        max_payload_entries: 32,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_after_logs),
        max_in_snapshot_log_to_keep: snapshot_after_logs / 10,
        snapshot_max_chunk_size: 4 * 1024 * 1024,
        enable_tick: true,
        enable_heartbeat: false,
        enable_elect: false,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// Wraps any error for openraft's storage error types.
pub(crate) fn any_error(e: impl fmt::Display) -> openraft::AnyError {
    openraft::AnyError::error(e.to_string())
}
