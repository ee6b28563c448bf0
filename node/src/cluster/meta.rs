//! The metadata group's replicated state: members, the partition table and grid settings.
//!
//! Only the metadata group applies [`MetaCommand`]s. Every member keeps the latest applied
//! [`MetaState`] in a watch channel; partitions are created and routed from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::placement;
use crate::raft::NodeId;

/// Lifecycle of a member. Only `Active` is used until elastic membership lands; the other
/// states are part of the stored format from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Registered, not yet holding replicas.
    Joining,
    /// Holding replicas and serving.
    Active,
    /// Giving its replicas away.
    Draining,
    /// Holds nothing; safe to stop.
    Decommissioned,
}

impl MemberState {
    /// The name used in the API (`joining`, `active`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Draining => "draining",
            MemberState::Decommissioned => "decommissioned",
        }
    }
}

/// A member as the metadata group records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Stable member id.
    pub id: NodeId,
    /// Advertised `host:port` of its HTTP endpoint (API and peer traffic).
    pub addr: String,
    /// Lifecycle state.
    pub state: MemberState,
}

/// The metadata group's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaState {
    /// Number of partitions, fixed at bootstrap.
    pub partition_count: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Members by id.
    pub members: BTreeMap<NodeId, MemberInfo>,
    /// Replicas of each partition; the first is the preferred leader.
    pub partitions: Vec<Vec<NodeId>>,
    /// Incremented by every change.
    pub epoch: u64,
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
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Address of member `id`.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.members.get(&id).map(|m| m.addr.as_str())
    }
}

/// A change of the metadata state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Records the initial members and creates the partition table; ignored once done.
    Bootstrap {
        /// The initial members.
        members: Vec<MemberInfo>,
        /// Number of partitions.
        partition_count: u32,
        /// Requested replicas per partition (capped at the member count).
        replication_factor: u32,
    },
}

/// Applies `cmd`; returns whether it changed anything.
pub fn apply(state: &mut MetaState, cmd: &MetaCommand) -> bool {
    match cmd {
        MetaCommand::Bootstrap {
            members,
            partition_count,
            replication_factor,
        } => {
            if state.bootstrapped() || members.is_empty() || *partition_count == 0 {
                return false;
            }
            state.members = members.iter().map(|m| (m.id, m.clone())).collect();
            let ids: Vec<NodeId> = state.members.keys().copied().collect();
            let rf = (*replication_factor).clamp(1, ids.len() as u32);
            state.partition_count = *partition_count;
            state.replication_factor = rf;
            state.partitions = placement::initial(&ids, *partition_count, rf);
            state.epoch += 1;
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId) -> MemberInfo {
        MemberInfo {
            id,
            addr: format!("127.0.0.1:{}", 7000 + id),
            state: MemberState::Active,
        }
    }

    #[test]
    fn bootstrap_happens_once_and_caps_replication() {
        let mut s = MetaState::default();
        let cmd = MetaCommand::Bootstrap {
            members: vec![member(1), member(2)],
            partition_count: 7,
            replication_factor: 3,
        };
        assert!(apply(&mut s, &cmd));
        assert_eq!(s.replication_factor, 2);
        assert_eq!(s.partitions.len(), 7);
        assert!(s.partitions.iter().all(|r| r.len() == 2));
        let again = MetaCommand::Bootstrap {
            members: vec![member(9)],
            partition_count: 3,
            replication_factor: 1,
        };
        assert!(!apply(&mut s, &again));
        assert_eq!(s.members.len(), 2);
        assert_eq!(s.epoch, 1);
    }
}
