//! The scale and roll decisions, as pure functions of what the reconciler observed.
//!
//! Scale-down follows the TiDB and CockroachDB operators: the desired size comes from the
//! spec only (never from the observed members); the highest ordinal is drained through the
//! grid first, one member at a time, and the StatefulSet shrinks only once that member is
//! decommissioned. A drain that makes no progress for too long is reported as stalled.
//! Image changes roll one pod at a time (the StatefulSet uses `OnDelete`), highest ordinal
//! first, only while the grid reports every partition fully replicated.

use std::time::Duration;

use devicegrid_proto::MemberState;

/// A member as the grid reports it (`GET /v1/members`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GridMember {
    /// Member id (pod ordinal + 1).
    pub id: u64,
    /// Lifecycle state.
    pub state: MemberState,
    /// Replicas it still holds.
    pub partitions_held: u64,
}

/// What to do about the StatefulSet's size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScaleStep {
    /// The StatefulSet has the desired size.
    Steady,
    /// Raise the StatefulSet to `to` replicas; the new members join and receive partitions.
    Grow {
        /// New replica count.
        to: i32,
    },
    /// Ask the grid to drain `member` (the highest ordinal above the desired size).
    Drain {
        /// Member id.
        member: u64,
    },
    /// `member` is draining; wait (`stalled` once it has taken longer than allowed).
    WaitForDrain {
        /// Member id.
        member: u64,
        /// Replicas it still holds.
        left: u64,
        /// Whether the drain has run longer than the stall timeout.
        stalled: bool,
    },
    /// `member` holds nothing: shrink the StatefulSet to `to`, removing its pod.
    Shrink {
        /// Member id.
        member: u64,
        /// New replica count.
        to: i32,
    },
    /// The grid cannot be reached: nothing is removed until it answers.
    WaitForGrid {
        /// Member id.
        member: u64,
    },
}

/// The next scale step from the desired size (spec), the StatefulSet's current size, the
/// grid's members, and how long the current drain has been running.
pub fn scale_step(
    desired: i32,
    current: i32,
    members: Option<&[GridMember]>,
    draining_for: Option<Duration>,
    stall_after: Duration,
) -> ScaleStep {
    let desired = desired.max(1);
    if current < desired {
        return ScaleStep::Grow { to: desired };
    }
    if current == desired {
        return ScaleStep::Steady;
    }
    // The highest ordinal goes first; its member id is the StatefulSet's size.
    let member = current as u64;
    let Some(members) = members else {
        return ScaleStep::WaitForGrid { member };
    };
    // A member missing from this view may still be one (the view can lag): the drain
    // request asks the metadata group, which answers "not a member" only for a member that
    // never joined, and so holds nothing.
    let Some(m) = members.iter().find(|m| m.id == member) else {
        return ScaleStep::Drain { member };
    };
    match m.state {
        MemberState::Decommissioned if m.partitions_held == 0 => ScaleStep::Shrink {
            member,
            to: current - 1,
        },
        MemberState::Draining | MemberState::Decommissioned => ScaleStep::WaitForDrain {
            member,
            left: m.partitions_held,
            stalled: draining_for.is_some_and(|d| d > stall_after),
        },
        MemberState::Joining | MemberState::Active => ScaleStep::Drain { member },
        // Reported by a newer member: nothing is decided on a state not understood.
        MemberState::Unknown => ScaleStep::WaitForGrid { member },
    }
}

/// A member pod during a roll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// Its `controller-revision-hash` label.
    pub revision: String,
    /// Whether it is ready (and not being deleted).
    pub ready: bool,
}

/// The pod to delete next in a roll to `update_revision`, if any: only when the StatefulSet
/// has all its `replicas` pods, every one ready, and the grid reports no partition that is
/// under-replicated or without a leader (`unsettled`; `None` when unknown); highest ordinal
/// first. A pod deleted by the previous step is missing or not ready until its replacement
/// has rejoined, so this waits for it.
pub fn next_pod_to_roll(
    pods: &[PodState],
    replicas: i32,
    update_revision: &str,
    unsettled: Option<u64>,
) -> Option<i32> {
    let outdated = pods.iter().filter(|p| p.revision != update_revision);
    let next = outdated.map(|p| p.ordinal).max()?;
    let complete = (0..replicas).all(|o| pods.iter().any(|p| p.ordinal == o));
    let settled = complete && pods.iter().all(|p| p.ready) && unsettled == Some(0);
    settled.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, state: MemberState, held: u64) -> GridMember {
        GridMember {
            id,
            state,
            partitions_held: held,
        }
    }

    const STALL: Duration = Duration::from_secs(600);

    #[test]
    fn scale_up_raises_the_statefulset_at_once() {
        assert_eq!(
            scale_step(5, 3, None, None, STALL),
            ScaleStep::Grow { to: 5 }
        );
        assert_eq!(scale_step(3, 3, None, None, STALL), ScaleStep::Steady);
        assert_eq!(
            scale_step(0, 1, None, None, STALL),
            ScaleStep::Steady,
            "never below one"
        );
    }

    #[test]
    fn scale_down_drains_the_highest_ordinal_before_shrinking() {
        let mut ms = vec![
            member(1, MemberState::Active, 163),
            member(2, MemberState::Active, 163),
            member(3, MemberState::Active, 163),
            member(4, MemberState::Active, 162),
            member(5, MemberState::Active, 162),
        ];
        // Desired 3 of 5: member 5 first, whatever the others do.
        assert_eq!(
            scale_step(3, 5, Some(&ms), None, STALL),
            ScaleStep::Drain { member: 5 }
        );
        ms[4] = member(5, MemberState::Draining, 40);
        assert_eq!(
            scale_step(3, 5, Some(&ms), Some(Duration::from_secs(30)), STALL),
            ScaleStep::WaitForDrain {
                member: 5,
                left: 40,
                stalled: false
            }
        );
        assert_eq!(
            scale_step(3, 5, Some(&ms), Some(Duration::from_secs(900)), STALL),
            ScaleStep::WaitForDrain {
                member: 5,
                left: 40,
                stalled: true
            }
        );
        ms[4] = member(5, MemberState::Decommissioned, 0);
        assert_eq!(
            scale_step(3, 5, Some(&ms), None, STALL),
            ScaleStep::Shrink { member: 5, to: 4 }
        );
        // Then member 4, never both at once.
        ms.pop();
        assert_eq!(
            scale_step(3, 4, Some(&ms), None, STALL),
            ScaleStep::Drain { member: 4 }
        );
        // A member still joining is drained too (the grid decommissions it at once).
        ms[3] = member(4, MemberState::Joining, 0);
        assert_eq!(
            scale_step(3, 4, Some(&ms), None, STALL),
            ScaleStep::Drain { member: 4 }
        );
        // A state from a newer member is not acted on.
        ms[3] = member(4, MemberState::Unknown, 10);
        assert_eq!(
            scale_step(3, 4, Some(&ms), None, STALL),
            ScaleStep::WaitForGrid { member: 4 }
        );
        // A member the grid's view does not list is asked about through a drain.
        ms.pop();
        assert_eq!(
            scale_step(3, 4, Some(&ms), None, STALL),
            ScaleStep::Drain { member: 4 }
        );
        // A grid that cannot be asked is waited for.
        assert_eq!(
            scale_step(3, 4, None, None, STALL),
            ScaleStep::WaitForGrid { member: 4 }
        );
    }

    fn pod(ordinal: i32, revision: &str, ready: bool) -> PodState {
        PodState {
            ordinal,
            revision: revision.into(),
            ready,
        }
    }

    #[test]
    fn rolls_one_pod_at_a_time_while_fully_replicated() {
        let pods = vec![pod(0, "a", true), pod(1, "a", true), pod(2, "a", true)];
        assert_eq!(next_pod_to_roll(&pods, 3, "b", Some(0)), Some(2));
        assert_eq!(
            next_pod_to_roll(&pods, 3, "b", Some(4)),
            None,
            "wait for replication"
        );
        assert_eq!(
            next_pod_to_roll(&pods, 3, "b", None),
            None,
            "grid not reachable"
        );
        let rolling = vec![pod(0, "a", true), pod(1, "a", true), pod(2, "b", false)];
        assert_eq!(
            next_pod_to_roll(&rolling, 3, "b", Some(0)),
            None,
            "a pod is not ready"
        );
        let next = vec![pod(0, "a", true), pod(1, "a", true), pod(2, "b", true)];
        assert_eq!(next_pod_to_roll(&next, 3, "b", Some(0)), Some(1));
        let replaced = vec![pod(0, "a", true), pod(1, "a", true)];
        assert_eq!(
            next_pod_to_roll(&replaced, 3, "b", Some(0)),
            None,
            "the deleted pod is not back yet"
        );
        let done = vec![pod(0, "b", true), pod(1, "b", true), pod(2, "b", true)];
        assert_eq!(next_pod_to_roll(&done, 3, "b", Some(0)), None);
    }
}
