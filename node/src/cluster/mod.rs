//! The grid as one member sees it: its identity, the metadata state, the partition groups
//! it hosts, routing of requests to partition leaders, and member liveness.
//!
//! - [`grid`]: the [`Grid`] that owns everything below and serves the API and peers
//! - [`group`]: one Raft group with its write batcher and read barrier
//! - [`bootstrap`]: first start, registration, opening and deleting hosted replicas
//! - [`liveness`]: member pings, coalesced heartbeats and elections for all groups
//! - [`expiry`]: the TTL sweeper of partition leaders
//! - [`meta`]: the replicated metadata (members, partition table, moves)
//! - [`placement`]: where replicas go (pure rules); [`driver`]: the metadata leader's loop
//!   that applies them; [`mover`]: partition leaders carrying out moves and handoffs

pub mod bootstrap;
pub mod driver;
pub mod expiry;
pub mod grid;
pub mod group;
pub mod liveness;
pub mod meta;
pub mod mover;
pub mod placement;

pub use grid::Grid;

/// The partition of `key`: `xxh3_64(key bytes) mod partition_count`.
///
/// The map name is not hashed, so the same key (a device id) lands in the same partition in
/// every map and structure, and per-device data stays together. xxh3 (seed 0) is a fixed,
/// documented algorithm: the mapping never changes for a given partition count.
pub fn partition_of(key: &str, partition_count: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(partition_count.max(1))) as u32
}

/// Milliseconds since the Unix epoch by this member's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_mapping_is_stable_and_spread() {
        // Pinned values: changing the hash would move every key of an existing grid.
        assert_eq!(partition_of("device-1", 271), partition_of("device-1", 271));
        let pinned: Vec<u32> = ["device-1", "device-2", "sensor/42", ""]
            .iter()
            .map(|k| partition_of(k, 271))
            .collect();
        assert_eq!(pinned, PINNED);
        let mut counts = vec![0u32; 271];
        for i in 0..271_000 {
            counts[partition_of(&format!("device-{i}"), 271) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min > Some(850) && max < Some(1150), "{min:?}..{max:?}");
    }

    const PINNED: [u32; 4] = [107, 135, 19, 209];
}
