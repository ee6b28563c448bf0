//! # DeviceGrid wire contract
//!
//! The types every party to a grid agrees on: members, the operator, the end-to-end suite,
//! the benchmark driver and (later) the smart client. A change here is a change of the
//! protocol; every type is serde, JSON on the public API and MessagePack between members.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`auth`] | users, roles, grants and the permission a request needs; admin API bodies |
//! | [`error`] | [`ErrorCode`] (one enum, its HTTP status decided once), the error body with routing facts |
//! | [`maps`] | map requests and answers, processors and their arguments, limits |
//! | [`views`] | cluster, member and partition views; member states, move reasons and phases |
//! | `entries` (feature `peer`) | what Raft entries carry: map operations, metadata commands and state |
//! | `peer` (feature `peer`) | member-to-member messages and the shared Raft type config |
//!
//! Keys map to partitions with [`partition_of`], the same function on every party.

#![deny(missing_docs)]

pub mod auth;
pub mod error;
pub mod maps;
pub mod views;

#[cfg(feature = "peer")]
pub mod entries;
#[cfg(feature = "peer")]
pub mod peer;

pub use error::{ErrorBody, ErrorCode, ErrorDetail, LeaderHint, Routing};
pub use views::{MemberState, MoveReason, NodeId};

/// The name serde gives a unit variant on the wire (`snake_case`): the one source of the
/// names of codes, states and phases, for `Display` and metric labels.
pub(crate) fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// The partition of `key`: `xxh3_64(key bytes) mod partition_count`.
///
/// The map name is not hashed, so the same key (a device id) lands in the same partition in
/// every map and structure, and per-device data stays together. xxh3 (seed 0) is a fixed,
/// documented algorithm: the mapping never changes for a given partition count.
pub fn partition_of(key: &str, partition_count: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % u64::from(partition_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_mapping_is_stable_and_spread() {
        // Pinned values: changing the hash would move every key of an existing grid.
        let pinned: Vec<u32> = ["device-1", "device-2", "sensor/42", ""]
            .iter()
            .map(|k| partition_of(k, 271))
            .collect();
        assert_eq!(pinned, [107, 135, 19, 209]);
        let mut counts = vec![0u32; 271];
        for i in 0..271_000 {
            counts[partition_of(&format!("device-{i}"), 271) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min > Some(850) && max < Some(1150), "{min:?}..{max:?}");
    }
}
