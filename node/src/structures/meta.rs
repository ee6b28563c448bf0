//! The metadata group's state machine: members, the partition table, replica moves and
//! grid settings.
//!
//! Only the metadata group applies [`MetaCommand`]s, and [`apply`] is a pure function of
//! the state and the command, so every replica reaches the same state. Checks that depend on
//! the state (may this member drain?) are made here, at apply time, not by the proposer.
//! Every member keeps the latest applied [`MetaState`] in a watch channel; partitions are
//! hosted, moved and routed from it. The types themselves are part of the wire contract
//! (`devicegrid_proto::entries`).

use std::collections::BTreeSet;

pub use devicegrid_proto::entries::{
    MemberInfo, MetaCall, MetaCommand, MetaOutcome, MetaReply, MetaState, PartitionInfo,
};
pub use devicegrid_proto::views::{MemberState, Move, MoveReason};
use devicegrid_proto::ErrorCode;

use crate::structures::{auth, placement};
use devicegrid_proto::NodeId;

fn refused(code: ErrorCode, message: String) -> MetaOutcome {
    MetaOutcome::Refused { code, message }
}

/// Applies `cmd` to `state`.
pub fn apply(state: &mut MetaState, cmd: &MetaCommand) -> MetaOutcome {
    let outcome = apply_inner(state, cmd);
    if outcome == MetaOutcome::Applied {
        state.epoch += 1;
    }
    outcome
}

fn apply_inner(s: &mut MetaState, cmd: &MetaCommand) -> MetaOutcome {
    match cmd {
        MetaCommand::Join {
            id,
            addr,
            zone,
            client_addr,
        } => match s.members.get_mut(id) {
            Some(m) if m.addr == *addr && m.zone == *zone && m.client_addr == *client_addr => {
                if m.state == MemberState::Decommissioned {
                    m.state = MemberState::Joining;
                    MetaOutcome::Applied
                } else {
                    MetaOutcome::Unchanged
                }
            }
            Some(m) => {
                m.addr = addr.clone();
                m.zone = zone.clone();
                m.client_addr = client_addr.clone();
                if m.state == MemberState::Decommissioned {
                    m.state = MemberState::Joining;
                }
                MetaOutcome::Applied
            }
            None if *id == 0 => {
                refused(ErrorCode::InvalidMemberId, "member id 0 is reserved".into())
            }
            None => {
                s.members.insert(
                    *id,
                    MemberInfo {
                        id: *id,
                        addr: addr.clone(),
                        client_addr: client_addr.clone(),
                        zone: zone.clone(),
                        state: MemberState::Joining,
                    },
                );
                MetaOutcome::Applied
            }
        },
        MetaCommand::Bootstrap {
            members,
            partition_count,
            replication_factor,
        } => {
            if s.bootstrapped() || *partition_count == 0 {
                return MetaOutcome::Unchanged;
            }
            let ids: BTreeSet<NodeId> = members
                .iter()
                .copied()
                .filter(|id| s.members.contains_key(id))
                .collect();
            if ids.is_empty() {
                return refused(
                    ErrorCode::NoMembers,
                    "no registered member to bootstrap".into(),
                );
            }
            for id in &ids {
                if let Some(m) = s.members.get_mut(id) {
                    m.state = MemberState::Active;
                }
            }
            let candidates: Vec<(NodeId, Option<String>)> = ids
                .iter()
                .filter_map(|id| s.members.get(id).map(|m| (m.id, m.zone.clone())))
                .collect();
            s.partition_count = *partition_count;
            s.replication_factor = (*replication_factor).max(1);
            s.partitions = placement::initial(&candidates, *partition_count, s.replication_factor)
                .into_iter()
                .map(|replicas| PartitionInfo {
                    replicas,
                    version: 0,
                    created: false,
                })
                .collect();
            MetaOutcome::Applied
        }
        MetaCommand::Activate { id } => match s.members.get_mut(id) {
            Some(m) if m.state == MemberState::Joining && !s.partitions.is_empty() => {
                m.state = MemberState::Active;
                MetaOutcome::Applied
            }
            _ => MetaOutcome::Unchanged,
        },
        MetaCommand::Drain { id } => {
            let Some(state) = s.state(*id) else {
                return refused(
                    ErrorCode::MemberNotFound,
                    format!("member {id} is not a member"),
                );
            };
            match state {
                MemberState::Draining | MemberState::Decommissioned | MemberState::Unknown => {
                    MetaOutcome::Unchanged
                }
                MemberState::Joining => {
                    set_state(s, *id, MemberState::Decommissioned);
                    MetaOutcome::Applied
                }
                MemberState::Active => {
                    let left = s.active().filter(|m| m.id != *id).count() as u32;
                    if left < s.replication_factor {
                        return refused(
                            ErrorCode::DrainRefused,
                            format!(
                                "draining member {id} would leave {left} active member(s), \
                                 fewer than the replication factor {}",
                                s.replication_factor
                            ),
                        );
                    }
                    set_state(s, *id, MemberState::Draining);
                    MetaOutcome::Applied
                }
            }
        }
        MetaCommand::Decommission { id } => {
            if s.state(*id) != Some(MemberState::Draining) || s.held_by(*id).next().is_some() {
                return MetaOutcome::Unchanged;
            }
            set_state(s, *id, MemberState::Decommissioned);
            MetaOutcome::Applied
        }
        MetaCommand::StartMove {
            partition,
            from,
            to,
            reason,
            now_ms,
        } => {
            let p = *partition;
            let Some(info) = s.partitions.get(p as usize) else {
                return refused(
                    ErrorCode::InvalidMove,
                    format!("partition {p} does not exist"),
                );
            };
            let valid = info.created
                && !s.moves.contains_key(&p)
                && s.state(*to) == Some(MemberState::Active)
                && !info.replicas.contains(to)
                && from.is_none_or(|f| info.replicas.contains(&f));
            if !valid {
                return MetaOutcome::Unchanged;
            }
            let mut version = 0;
            if let Some(info) = s.partitions.get_mut(p as usize) {
                info.replicas.retain(|r| Some(*r) != *from);
                info.replicas.push(*to);
                info.version += 1;
                version = info.version;
            }
            s.moves.insert(
                p,
                Move {
                    version,
                    from: *from,
                    to: *to,
                    reason: *reason,
                    started_ms: *now_ms,
                },
            );
            MetaOutcome::Applied
        }
        MetaCommand::FinishMove {
            partition,
            version,
            voters,
        } => {
            let done = s
                .moves
                .get(partition)
                .is_some_and(|m| m.version == *version)
                && same_set(s.replicas(*partition), voters);
            if !done {
                return MetaOutcome::Unchanged;
            }
            s.moves.remove(partition);
            s.moves_finished += 1;
            if let Some(info) = s.partitions.get_mut(*partition as usize) {
                info.version += 1;
            }
            MetaOutcome::Applied
        }
        MetaCommand::CancelMove { partition, version } => {
            if s.moves.get(partition).is_none_or(|m| m.version != *version) {
                return MetaOutcome::Unchanged;
            }
            let Some(mv) = s.moves.remove(partition) else {
                return MetaOutcome::Unchanged;
            };
            if let Some(info) = s.partitions.get_mut(*partition as usize) {
                info.replicas.retain(|r| *r != mv.to);
                if let Some(f) = mv.from {
                    info.replicas.push(f);
                }
                info.version += 1;
            }
            MetaOutcome::Applied
        }
        MetaCommand::PartitionCreated { partition } => {
            match s.partitions.get_mut(*partition as usize) {
                Some(info) if !info.created => {
                    info.created = true;
                    MetaOutcome::Applied
                }
                _ => MetaOutcome::Unchanged,
            }
        }
        MetaCommand::SetPreferredLeader { partition, leader } => {
            match s.partitions.get_mut(*partition as usize) {
                Some(info) if info.replicas.first() != Some(leader) => {
                    let Some(i) = info.replicas.iter().position(|r| r == leader) else {
                        return MetaOutcome::Unchanged;
                    };
                    let l = info.replicas.remove(i);
                    info.replicas.insert(0, l);
                    MetaOutcome::Applied
                }
                _ => MetaOutcome::Unchanged,
            }
        }
        MetaCommand::PutUser { .. }
        | MetaCommand::DeleteUser { .. }
        | MetaCommand::PutRole { .. }
        | MetaCommand::DeleteRole { .. }
        | MetaCommand::BootstrapAdmin { .. } => auth::apply(s, cmd),
    }
}

fn set_state(s: &mut MetaState, id: NodeId, state: MemberState) {
    if let Some(m) = s.members.get_mut(&id) {
        m.state = state;
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn join(s: &mut MetaState, id: NodeId, zone: Option<&str>) {
        let cmd = MetaCommand::Join {
            id,
            addr: format!("127.0.0.1:{}", 7100 + id),
            zone: zone.map(str::to_string),
            client_addr: Some(format!("127.0.0.1:{}", 7000 + id)),
        };
        assert_eq!(apply(s, &cmd), MetaOutcome::Applied);
    }

    /// A bootstrapped grid of members `1..=n`, every partition's group created.
    pub(crate) fn grid(n: u64, partitions: u32, rf: u32) -> MetaState {
        let mut s = MetaState::default();
        for id in 1..=n {
            join(&mut s, id, None);
        }
        let cmd = MetaCommand::Bootstrap {
            members: (1..=n).collect(),
            partition_count: partitions,
            replication_factor: rf,
        };
        assert_eq!(apply(&mut s, &cmd), MetaOutcome::Applied);
        for partition in 0..partitions {
            let created = MetaCommand::PartitionCreated { partition };
            assert_eq!(apply(&mut s, &created), MetaOutcome::Applied);
        }
        s
    }

    #[test]
    fn bootstrap_happens_once_with_registered_members() {
        let mut s = grid(2, 7, 3);
        assert_eq!(s.replication_factor, 3);
        assert_eq!(s.partitions.len(), 7);
        assert!(s.partitions.iter().all(|r| r.replicas.len() == 2));
        assert!(s.members.values().all(|m| m.state == MemberState::Active));
        let again = MetaCommand::Bootstrap {
            members: vec![9],
            partition_count: 3,
            replication_factor: 1,
        };
        assert_eq!(apply(&mut s, &again), MetaOutcome::Unchanged);
        assert_eq!(s.members.len(), 2);
        // Join of a known member with the same address changes nothing.
        let same = MetaCommand::Join {
            id: 1,
            addr: "127.0.0.1:7101".into(),
            zone: None,
            client_addr: Some("127.0.0.1:7001".into()),
        };
        assert_eq!(apply(&mut s, &same), MetaOutcome::Unchanged);
        let mut fresh = MetaState::default();
        let unregistered = MetaCommand::Bootstrap {
            members: vec![1],
            partition_count: 3,
            replication_factor: 1,
        };
        assert!(matches!(
            apply(&mut fresh, &unregistered),
            MetaOutcome::Refused { .. }
        ));
    }

    #[test]
    fn drain_is_refused_below_the_replication_factor() {
        let mut s = grid(3, 8, 3);
        let out = apply(&mut s, &MetaCommand::Drain { id: 2 });
        assert!(
            matches!(&out, MetaOutcome::Refused { code, .. } if *code == ErrorCode::DrainRefused),
            "{out:?}"
        );
        assert!(matches!(
            apply(&mut s, &MetaCommand::Drain { id: 9 }),
            MetaOutcome::Refused { code, .. } if code == ErrorCode::MemberNotFound
        ));
        join(&mut s, 4, None);
        assert_eq!(
            apply(&mut s, &MetaCommand::Activate { id: 4 }),
            MetaOutcome::Applied
        );
        assert_eq!(
            apply(&mut s, &MetaCommand::Drain { id: 2 }),
            MetaOutcome::Applied
        );
        assert_eq!(s.state(2), Some(MemberState::Draining));
        // Still holding replicas: not decommissioned yet.
        assert_eq!(
            apply(&mut s, &MetaCommand::Decommission { id: 2 }),
            MetaOutcome::Unchanged
        );
    }

    #[test]
    fn nothing_moves_before_the_group_exists() {
        let mut s = MetaState::default();
        for id in 1..=4 {
            join(&mut s, id, None);
        }
        let boot = MetaCommand::Bootstrap {
            members: vec![1, 2, 3, 4],
            partition_count: 1,
            replication_factor: 3,
        };
        apply(&mut s, &boot);
        let to = (1..=4).find(|id| !s.replicas(0).contains(id)).unwrap_or(4);
        let start = MetaCommand::StartMove {
            partition: 0,
            from: None,
            to,
            reason: MoveReason::Repair,
            now_ms: 1,
        };
        assert_eq!(apply(&mut s, &start), MetaOutcome::Unchanged);
        apply(&mut s, &MetaCommand::PartitionCreated { partition: 0 });
        assert_eq!(apply(&mut s, &start), MetaOutcome::Applied);
    }

    #[test]
    fn a_move_lists_the_target_then_finishes_or_rolls_back() {
        let mut s = grid(3, 4, 3);
        join(&mut s, 4, None);
        apply(&mut s, &MetaCommand::Activate { id: 4 });
        let before = s.replicas(0).to_vec();
        let start = MetaCommand::StartMove {
            partition: 0,
            from: Some(before[1]),
            to: 4,
            reason: MoveReason::Balance,
            now_ms: 1,
        };
        assert_eq!(apply(&mut s, &start), MetaOutcome::Applied);
        assert!(s.replicas(0).contains(&4) && !s.replicas(0).contains(&before[1]));
        assert!(
            s.hosts(before[1], 0),
            "the source keeps its replica meanwhile"
        );
        assert_eq!(s.version(0), 1);
        assert_eq!(
            apply(&mut s, &start),
            MetaOutcome::Unchanged,
            "one move at a time"
        );
        // Finishing needs the group's voters to match the table.
        let wrong = MetaCommand::FinishMove {
            partition: 0,
            version: 1,
            voters: before.clone(),
        };
        assert_eq!(apply(&mut s, &wrong), MetaOutcome::Unchanged);
        // Finishing or cancelling names the move: an older one's report changes nothing.
        let stale = MetaCommand::FinishMove {
            partition: 0,
            version: 0,
            voters: s.replicas(0).to_vec(),
        };
        assert_eq!(apply(&mut s, &stale), MetaOutcome::Unchanged);
        let mut rolled = s.clone();
        let cancel_old = MetaCommand::CancelMove {
            partition: 0,
            version: 7,
        };
        assert_eq!(apply(&mut rolled, &cancel_old), MetaOutcome::Unchanged);
        let cancel = MetaCommand::CancelMove {
            partition: 0,
            version: 1,
        };
        assert_eq!(apply(&mut rolled, &cancel), MetaOutcome::Applied);
        assert!(same_set(rolled.replicas(0), &before));
        let done = MetaCommand::FinishMove {
            partition: 0,
            version: 1,
            voters: s.replicas(0).to_vec(),
        };
        assert_eq!(apply(&mut s, &done), MetaOutcome::Applied);
        assert!(!s.hosts(before[1], 0));
        assert_eq!((s.moves.len(), s.moves_finished, s.version(0)), (0, 1, 2));
    }
}
