//! openraft glue: one type config for every group (declared in the wire contract), the
//! sled-backed log store, the state machine generic over what it applies ([`Machine`]:
//! maps or metadata), and the network that carries every group's RPCs over the member's
//! shared [`transport`](crate::transport).

mod log_store;
mod machine;
mod network;
mod state_machine;

use std::fmt;
use std::sync::Arc;

pub use log_store::LogStore;
pub use machine::{Machine, MetaMachine, PartitionMachine};
pub use network::NetworkFactory;
pub use state_machine::StateMachineStore;

pub use devicegrid_proto::entries::GroupId;
pub use devicegrid_proto::peer::{MemberNode, Request, Response, TypeConfig};
pub use devicegrid_proto::NodeId;

/// A Raft group handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry of [`TypeConfig`].
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;

/// Entries a group keeps in its log after a snapshot, for followers a little behind: a
/// tenth of `snapshot_after_logs`, at most 100 (entries can be batches of up to 1 MiB, and
/// the member's log is bounded in bytes; a follower further behind gets the snapshot).
pub fn kept_after_snapshot(snapshot_after_logs: u64) -> u64 {
    (snapshot_after_logs / 10).min(100)
}

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
        max_in_snapshot_log_to_keep: kept_after_snapshot(snapshot_after_logs),
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
