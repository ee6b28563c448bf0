//! Where replicas live: the placement rules, as pure functions of the metadata state.
//!
//! - [`initial`] deals the partition table at bootstrap.
//! - [`plan`] is one round of the placement driver (run by the metadata leader, see
//!   [`crate::cluster::driver`]): the metadata commands that bring the table closer to
//!   balance. It repairs first (replicas on draining, failed or missing members, partitions
//!   short of the replication factor), then evens out replica counts, then preferred leaders.
//!
//! One rule picks every new replica's member, at bootstrap and later: a member not holding
//! the partition, in a zone the partition's other replicas are not in if possible, holding
//! the fewest replicas, lowest id first. Counts then stay within one of each other whenever
//! zones allow it.

use std::collections::{BTreeMap, BTreeSet};

use crate::structures::meta::{self, MemberState, MetaCommand, MetaOutcome, MetaState, MoveReason};
use devicegrid_proto::NodeId;

/// The initial table: `partitions` replica lists of `rf` members (capped at the member
/// count); the first replica of each is the preferred leader, chosen among its replicas as
/// the one leading the fewest partitions so far.
pub fn initial(members: &[(NodeId, Option<String>)], partitions: u32, rf: u32) -> Vec<Vec<NodeId>> {
    let zones: BTreeMap<NodeId, Option<String>> = members.iter().cloned().collect();
    let ids: Vec<NodeId> = zones.keys().copied().collect();
    let rf = (rf as usize).clamp(1, ids.len().max(1));
    let mut held: BTreeMap<NodeId, usize> = ids.iter().map(|id| (*id, 0)).collect();
    let mut led: BTreeMap<NodeId, usize> = held.clone();
    let mut table = Vec::with_capacity(partitions as usize);
    for _ in 0..partitions {
        let mut replicas: Vec<NodeId> = Vec::with_capacity(rf);
        for _ in 0..rf {
            let Some(c) = pick_member(&ids, &replicas, &zones, &held) else {
                break;
            };
            *held.entry(c).or_default() += 1;
            replicas.push(c);
        }
        if let Some(i) = (0..replicas.len()).min_by_key(|i| (led[&replicas[*i]], *i)) {
            let leader = replicas.remove(i);
            *led.entry(leader).or_default() += 1;
            replicas.insert(0, leader);
        }
        table.push(replicas);
    }
    table
}

/// The member for a new replica of a partition currently on `others`: see the module docs.
fn pick_member(
    candidates: &[NodeId],
    others: &[NodeId],
    zones: &BTreeMap<NodeId, Option<String>>,
    held: &BTreeMap<NodeId, usize>,
) -> Option<NodeId> {
    candidates
        .iter()
        .copied()
        .filter(|c| !others.contains(c))
        .min_by_key(|c| {
            let same_zone = others
                .iter()
                .filter(|o| zones.get(*o) == zones.get(c))
                .count();
            (same_zone, held.get(c).copied().unwrap_or(0), *c)
        })
}

/// Distinct zones among `replicas`.
fn zone_count(replicas: &[NodeId], zones: &BTreeMap<NodeId, Option<String>>) -> usize {
    replicas
        .iter()
        .map(|r| zones.get(r).cloned().flatten())
        .collect::<BTreeSet<_>>()
        .len()
}

/// What the placement driver knows besides the metadata state.
#[derive(Debug, Default)]
pub struct PlanInput {
    /// Members that answer the metadata leader's pings (itself included).
    pub alive: BTreeSet<NodeId>,
    /// Members down for longer than the failure grace period.
    pub failed: BTreeSet<NodeId>,
    /// Most moves in progress at once.
    pub max_moves: usize,
    /// Most preferred-leader changes per round.
    pub max_leader_changes: usize,
    /// Now, in ms since the epoch.
    pub now_ms: u64,
}

/// One round of the placement driver: commands to propose, in order. Each is applied to a
/// scratch copy of the state as it is chosen, so later choices see earlier ones.
pub fn plan(state: &MetaState, input: &PlanInput) -> Vec<MetaCommand> {
    let mut s = state.clone();
    let mut out = Vec::new();
    let mut push = |s: &mut MetaState, cmd: MetaCommand| {
        if meta::apply(s, &cmd) == MetaOutcome::Applied {
            out.push(cmd);
        }
    };
    if !s.bootstrapped() {
        return out;
    }
    let members: Vec<(NodeId, MemberState)> = s.members.values().map(|m| (m.id, m.state)).collect();
    for (id, state) in members {
        if state == MemberState::Joining && input.alive.contains(&id) {
            push(&mut s, MetaCommand::Activate { id });
        }
        if state == MemberState::Draining {
            push(&mut s, MetaCommand::Decommission { id });
        }
    }
    // (A move to a member that has failed is rolled back by the partition's leader, the
    // only one that knows whether the target already became a voter.)
    let eligible: Vec<NodeId> = s
        .active()
        .map(|m| m.id)
        .filter(|id| input.alive.contains(id) && !input.failed.contains(id))
        .collect();
    let zones: BTreeMap<NodeId, Option<String>> =
        s.members.values().map(|m| (m.id, m.zone.clone())).collect();
    let budget = |s: &MetaState| input.max_moves.saturating_sub(s.moves.len());

    // Repairs: replicas on members that cannot keep them, partitions short of replicas.
    for p in 0..s.partition_count {
        if budget(&s) == 0 {
            break;
        }
        if s.moves.contains_key(&p) || !created(&s, p) {
            continue;
        }
        let replicas = s.replicas(p).to_vec();
        let bad = replicas
            .iter()
            .copied()
            .find(|r| s.state(*r) != Some(MemberState::Active) || input.failed.contains(r));
        let short = replicas.len() < (s.replication_factor as usize).min(eligible.len());
        if bad.is_none() && !short {
            continue;
        }
        let others: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|r| Some(*r) != bad)
            .collect();
        let Some(to) = pick_member(&eligible, &others, &zones, &replica_counts(&s)) else {
            continue;
        };
        let reason = match bad {
            None => MoveReason::Repair,
            Some(b) if s.state(b) == Some(MemberState::Draining) => MoveReason::Drain,
            Some(_) => MoveReason::Failure,
        };
        push(
            &mut s,
            MetaCommand::StartMove {
                partition: p,
                from: bad,
                to,
                reason,
                now_ms: input.now_ms,
            },
        );
    }

    // Balance: move a replica from the fullest member to the emptiest while they differ
    // by more than one.
    while budget(&s) > 0 {
        let held = replica_counts(&s);
        let by_count = |id: &NodeId| (held.get(id).copied().unwrap_or(0), *id);
        let (Some(hi), Some(lo)) = (
            eligible.iter().copied().max_by_key(by_count),
            eligible.iter().copied().min_by_key(by_count),
        ) else {
            break;
        };
        if by_count(&hi).0 <= by_count(&lo).0 + 1 {
            break;
        }
        // Prefer partitions `hi` does not lead: a leader's move costs an election.
        let candidate = (0..s.partition_count)
            .filter(|p| !s.moves.contains_key(p) && created(&s, *p))
            .filter(|p| {
                let r = s.replicas(*p);
                if !r.contains(&hi) || r.contains(&lo) {
                    return false;
                }
                let after: Vec<NodeId> = r.iter().map(|x| if *x == hi { lo } else { *x }).collect();
                zone_count(&after, &zones) >= zone_count(r, &zones)
            })
            .min_by_key(|p| (s.replicas(*p).first() == Some(&hi), *p));
        let Some(partition) = candidate else { break };
        push(
            &mut s,
            MetaCommand::StartMove {
                partition,
                from: Some(hi),
                to: lo,
                reason: MoveReason::Balance,
                now_ms: input.now_ms,
            },
        );
    }

    // Preferred leaders: an eligible member first, and counts within one.
    let mut changes = 0;
    while changes < input.max_leader_changes {
        let led = leader_counts(&s, &eligible);
        let count = |id: &NodeId| led.get(id).copied().unwrap_or(usize::MAX);
        let mut chosen = None;
        for p in (0..s.partition_count).filter(|p| created(&s, *p)) {
            let r = s.replicas(p);
            let Some(first) = r.first() else { continue };
            let best = r
                .iter()
                .filter(|x| eligible.contains(x))
                .min_by_key(|x| (count(x), **x))
                .copied();
            let Some(best) = best else { continue };
            // A member that is only briefly unreachable keeps its preference.
            let keeps =
                s.state(*first) == Some(MemberState::Active) && !input.failed.contains(first);
            if keeps && !eligible.contains(first) {
                continue;
            }
            if best != *first && (!keeps || count(first) > count(&best) + 1) {
                chosen = Some((p, best));
                break;
            }
        }
        let Some((partition, leader)) = chosen else {
            break;
        };
        push(
            &mut s,
            MetaCommand::SetPreferredLeader { partition, leader },
        );
        changes += 1;
    }
    out
}

/// Whether partition `p`'s group exists (until then it keeps its bootstrap replicas).
fn created(s: &MetaState, p: u32) -> bool {
    s.partitions.get(p as usize).is_some_and(|i| i.created)
}

/// Replicas listed per member.
pub fn replica_counts(s: &MetaState) -> BTreeMap<NodeId, usize> {
    let mut held = BTreeMap::new();
    for info in &s.partitions {
        for r in &info.replicas {
            *held.entry(*r).or_default() += 1;
        }
    }
    held
}

/// Preferred leaderships per member of `eligible` (zero included).
fn leader_counts(s: &MetaState, eligible: &[NodeId]) -> BTreeMap<NodeId, usize> {
    let mut led: BTreeMap<NodeId, usize> = eligible.iter().map(|id| (*id, 0)).collect();
    for info in &s.partitions {
        if let Some(l) = info.replicas.first() {
            if let Some(c) = led.get_mut(l) {
                *c += 1;
            }
        }
    }
    led
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structures::meta::tests::{grid, join};

    fn spread(counts: &BTreeMap<NodeId, usize>) -> usize {
        let (min, max) = (counts.values().min(), counts.values().max());
        max.zip(min).map_or(0, |(a, b)| a - b)
    }

    fn check_table(table: &[Vec<NodeId>]) -> (BTreeMap<NodeId, usize>, BTreeMap<NodeId, usize>) {
        let mut held = BTreeMap::<NodeId, usize>::new();
        let mut led = BTreeMap::<NodeId, usize>::new();
        for replicas in table {
            let d: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(d.len(), replicas.len(), "distinct replicas");
            *led.entry(replicas[0]).or_default() += 1;
            for r in replicas {
                *held.entry(*r).or_default() += 1;
            }
        }
        (held, led)
    }

    #[test]
    fn initial_replicas_and_leaders_are_balanced_and_distinct() {
        for (n, rf) in [
            (1u64, 3u32),
            (2, 3),
            (3, 3),
            (4, 3),
            (5, 3),
            (6, 3),
            (7, 2),
            (7, 3),
            (9, 5),
        ] {
            let members: Vec<(NodeId, Option<String>)> = (1..=n).map(|id| (id, None)).collect();
            let (held, led) = check_table(&initial(&members, 271, rf));
            assert!(spread(&held) <= 1, "n={n} rf={rf} {held:?}");
            assert!(spread(&led) <= 1, "n={n} rf={rf} {led:?}");
        }
    }

    #[test]
    fn replicas_of_a_partition_go_to_distinct_zones() {
        let zone = |id: NodeId| Some(format!("z{}", id % 3));
        let members: Vec<(NodeId, Option<String>)> = (1..=6).map(|id| (id, zone(id))).collect();
        let table = initial(&members, 64, 3);
        for r in &table {
            let zones: BTreeSet<_> = r.iter().map(|id| zone(*id)).collect();
            assert_eq!(zones.len(), 3, "{r:?}");
        }
        let (held, _) = check_table(&table);
        assert!(spread(&held) <= 1, "{held:?}");
    }

    /// Runs the driver, finishing every move at once, until it has nothing left to do.
    fn settle(s: &mut MetaState, input: &PlanInput) -> usize {
        let mut rounds = 0;
        loop {
            let cmds = plan(s, input);
            for c in &cmds {
                meta::apply(s, c);
            }
            let moving: Vec<(u32, u64)> = s.moves.iter().map(|(p, m)| (*p, m.version)).collect();
            for (p, version) in &moving {
                let voters = s.replicas(*p).to_vec();
                let finish = MetaCommand::FinishMove {
                    partition: *p,
                    version: *version,
                    voters,
                };
                assert_eq!(meta::apply(s, &finish), MetaOutcome::Applied);
            }
            if cmds.is_empty() {
                return rounds;
            }
            rounds += 1;
            assert!(rounds < 1000, "the driver does not converge");
        }
    }

    fn input(alive: impl IntoIterator<Item = NodeId>) -> PlanInput {
        PlanInput {
            alive: alive.into_iter().collect(),
            failed: BTreeSet::new(),
            max_moves: 8,
            max_leader_changes: 16,
            now_ms: 1,
        }
    }

    fn assert_balanced(s: &MetaState, members: &[NodeId]) {
        let held = replica_counts(s);
        let led = leader_counts(s, members);
        for id in members {
            assert!(held.contains_key(id), "member {id} holds nothing: {held:?}");
        }
        assert!(held.keys().all(|id| members.contains(id)), "{held:?}");
        assert!(spread(&held) <= 1, "{held:?}");
        assert!(spread(&led) <= 1, "{led:?}");
        for p in 0..s.partition_count {
            assert_eq!(
                s.replicas(p).len() as u32,
                s.replication_factor.min(members.len() as u32)
            );
        }
    }

    #[test]
    fn joining_members_receive_replicas_until_balanced() {
        let mut s = grid(3, 271, 3);
        join(&mut s, 4, None);
        join(&mut s, 5, None);
        let rounds = settle(&mut s, &input(1..=5));
        assert!(rounds > 1, "moves are bounded per round");
        assert_balanced(&s, &[1, 2, 3, 4, 5]);
        assert!(s.moves_finished > 0);
    }

    #[test]
    fn a_grid_grows_to_its_replication_factor() {
        let mut s = grid(1, 16, 3);
        assert!(s.partitions.iter().all(|p| p.replicas.len() == 1));
        join(&mut s, 2, None);
        join(&mut s, 3, None);
        settle(&mut s, &input(1..=3));
        assert_balanced(&s, &[1, 2, 3]);
    }

    #[test]
    fn draining_members_give_everything_away() {
        let mut s = grid(5, 271, 3);
        for id in [4, 5] {
            assert_eq!(
                meta::apply(&mut s, &MetaCommand::Drain { id }),
                MetaOutcome::Applied
            );
        }
        settle(&mut s, &input(1..=5));
        assert_eq!(s.state(4), Some(MemberState::Decommissioned));
        assert_eq!(s.state(5), Some(MemberState::Decommissioned));
        assert_balanced(&s, &[1, 2, 3]);
    }

    #[test]
    fn failed_members_are_replaced_and_unreachable_ones_are_not() {
        let mut s = grid(4, 64, 3);
        // Down but within the grace period: nothing moves.
        let mut waiting = input([1, 2, 3]);
        assert!(plan(&s, &waiting).is_empty());
        waiting.failed.insert(4);
        settle(&mut s, &waiting);
        assert!(s.held_by(4).next().is_none());
        for p in 0..64 {
            assert_eq!(s.replicas(p).len(), 3);
        }
    }
}
