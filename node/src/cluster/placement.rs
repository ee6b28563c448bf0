//! Where replicas live. At bootstrap, replicas and preferred leaders are spread round-robin
//! so that every member holds (and leads) the same number of partitions, within one.

use crate::raft::NodeId;

/// Initial replica lists. Replica slots are dealt round-robin over the sorted members
/// (partition `p` takes slots `p*rf .. p*rf+rf-1`, mod n), so replica counts differ by at most
/// one. The preferred leader (moved to the front) is the replica leading the fewest
/// partitions so far, which spreads leaders as evenly.
pub fn initial(members: &[NodeId], partitions: u32, rf: u32) -> Vec<Vec<NodeId>> {
    let mut sorted = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    let rf = (rf as usize).clamp(1, n);
    let mut led = vec![0usize; n];
    (0..partitions as usize)
        .map(|p| {
            let slots: Vec<usize> = (0..rf).map(|j| (p * rf + j) % n).collect();
            let lead = (0..rf).min_by_key(|j| (led[slots[*j]], *j)).unwrap_or(0);
            led[slots[lead]] += 1;
            let mut replicas: Vec<NodeId> = slots.iter().map(|s| sorted[*s]).collect();
            let leader = replicas.remove(lead);
            replicas.insert(0, leader);
            replicas
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn replicas_and_leaders_are_balanced_and_distinct() {
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
            let members: Vec<NodeId> = (1..=n).collect();
            let table = initial(&members, 271, rf);
            let mut held = BTreeMap::<NodeId, usize>::new();
            let mut led = BTreeMap::<NodeId, usize>::new();
            for replicas in &table {
                let mut d = replicas.clone();
                d.sort_unstable();
                d.dedup();
                assert_eq!(d.len(), replicas.len(), "distinct replicas");
                *led.entry(replicas[0]).or_default() += 1;
                for r in replicas {
                    *held.entry(*r).or_default() += 1;
                }
            }
            for counts in [&held, &led] {
                let (min, max) = (counts.values().min(), counts.values().max());
                assert!(
                    max.zip(min).is_some_and(|(a, b)| a - b <= 1),
                    "n={n} rf={rf} {counts:?}"
                );
            }
        }
    }
}
