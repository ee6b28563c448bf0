//! What `GET /v1/cluster`, `/v1/members`, `/v1/partitions` and `/readyz` answer, and the
//! report each member gives of itself to build them.

use serde::{Deserialize, Serialize};

/// Member ids are stable numbers chosen by the operator (or `devicegrid dev`).
pub type NodeId = u64;

/// Lifecycle of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Registered, not yet given replicas.
    Joining,
    /// Holding replicas and serving.
    Active,
    /// Giving its replicas away.
    Draining,
    /// Holds nothing; safe to stop.
    Decommissioned,
    /// A state this version does not know (reported by a newer member); readers leave such
    /// a member alone.
    #[serde(other)]
    Unknown,
}

impl MemberState {
    /// Draining or decommissioned: on its way out of the grid.
    pub fn retiring(self) -> bool {
        matches!(self, MemberState::Draining | MemberState::Decommissioned)
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wire_name(self))
    }
}

/// Why a replica moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// Evening out replica counts (a member joined).
    Balance,
    /// The source member is draining.
    Drain,
    /// The source member has been down past the grace period.
    Failure,
    /// The partition has fewer replicas than the replication factor.
    Repair,
    /// A reason this version does not know (reported by a newer member).
    #[serde(other)]
    Unknown,
}

/// Where a partition leader is in a move or a leadership handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovePhase {
    /// Adding the new replica as a learner.
    AddingLearner,
    /// Waiting for the learner to catch up.
    CatchingUp,
    /// Changing voters through joint consensus.
    JointConsensus,
    /// Removing learners left from an earlier attempt.
    RemovingLearners,
    /// Reporting the finished move to the metadata group.
    Finishing,
    /// Handing leadership to the preferred leader.
    HandingOff,
    /// A phase this version does not know (reported by a newer member).
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for MovePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wire_name(self))
    }
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Grid name.
    pub cluster_name: String,
    /// The member that assembled this view.
    pub answered_by: NodeId,
    /// Whether the partition table exists.
    pub bootstrapped: bool,
    /// Metadata epoch (increments with every change of members or table).
    pub epoch: u64,
    /// Members in id order.
    pub members: Vec<MemberView>,
    /// Partition health.
    pub partitions: PartitionsView,
    /// Whether replicas and leaders are spread evenly.
    pub balance: BalanceView,
    /// Replica moves in progress.
    pub moves: Vec<MoveView>,
}

/// Balance in [`ClusterView`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceView {
    /// No move in progress, nothing under-replicated, every member active (or
    /// decommissioned) and reachable, replica and leader counts of active members within one.
    pub balanced: bool,
    /// Moves in progress.
    pub moves_in_progress: usize,
    /// Moves running longer than `move_stalled_after_ms`.
    pub moves_stalled: usize,
    /// Moves finished since bootstrap.
    pub moves_finished: u64,
    /// Largest minus smallest replica count among active members.
    pub replicas_spread: usize,
    /// Largest minus smallest leader count among active members.
    pub leaders_spread: usize,
}

/// A move in [`ClusterView`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveView {
    /// Partition.
    pub partition: u32,
    /// Replica being replaced, if any.
    pub from: Option<NodeId>,
    /// Member receiving the replica.
    pub to: NodeId,
    /// Why.
    pub reason: MoveReason,
    /// Time since it started.
    pub age_ms: u64,
    /// The partition leader's phase, when it reported one.
    pub phase: Option<MovePhase>,
    /// Entries the new replica is behind, when reported.
    pub lag: Option<u64>,
    /// Running longer than `move_stalled_after_ms`.
    pub stalled: bool,
}

/// One member in [`ClusterView`], and the answer of `GET /v1/members/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    /// Member id.
    pub id: NodeId,
    /// Advertised client API address.
    pub address: String,
    /// Advertised peer address (members only; absent from views of older releases).
    #[serde(default)]
    pub peer_address: Option<String>,
    /// Failure zone.
    pub zone: Option<String>,
    /// Lifecycle state.
    pub state: MemberState,
    /// Whether it answered for this view.
    pub reachable: bool,
    /// Whether its `/readyz` is green.
    pub ready: bool,
    /// Partitions it leads.
    pub partitions_led: usize,
    /// Partitions it holds a replica of (or is giving one away from): 0 once drained.
    pub partitions_held: usize,
}

/// Partition health in [`ClusterView`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionsView {
    /// Number of partitions.
    pub count: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Partitions with a replica missing or on a member that does not answer.
    pub under_replicated: usize,
    /// Partitions no answering member leads.
    pub without_leader: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_from_newer_members_parse_as_unknown() {
        let m: MemberState = serde_json::from_str("\"quarantined\"").expect("state");
        assert_eq!(m, MemberState::Unknown);
        assert!(!m.retiring());
        let p: MovePhase = serde_json::from_str("\"verifying\"").expect("phase");
        assert_eq!(p, MovePhase::Unknown);
        let r: MoveReason = serde_json::from_str("\"rebalance_zone\"").expect("reason");
        assert_eq!(r, MoveReason::Unknown);
        assert_eq!(
            serde_json::to_string(&MemberState::Draining).expect("encode"),
            "\"draining\""
        );
    }
}

/// A move as the partition table records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition's version once the move started; finishing or cancelling names it.
    pub version: u64,
    /// The replica being replaced (`None`: a replica is added).
    pub from: Option<NodeId>,
    /// The member receiving the replica.
    pub to: NodeId,
    /// Why.
    pub reason: MoveReason,
    /// When the metadata leader started it (ms since the epoch, its clock).
    pub started_ms: u64,
}

/// One row of `GET /v1/partitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    /// Partition.
    pub partition: u32,
    /// Replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// Version (grows with every move).
    pub version: u64,
    /// The move in progress.
    #[serde(rename = "move")]
    pub moving: Option<Move>,
}

/// `GET /readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyView {
    /// Whether the member can serve every partition it holds.
    pub ready: bool,
    /// Member id.
    pub member: NodeId,
    /// Whether the partition table exists.
    pub bootstrapped: bool,
    /// Replicas held.
    pub partitions_held: usize,
    /// Partitions led.
    pub partitions_led: usize,
    /// Held partitions without a usable leader.
    pub partitions_without_leader: usize,
}

/// A member's report of itself, for `GET /v1/cluster` and readiness.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveProgress {
    /// Partition.
    pub partition: u32,
    /// Where it is.
    pub phase: MovePhase,
    /// Log entries the slowest new replica is behind the leader.
    pub lag: u64,
}
