//! Replicated data structures: the deterministic logic the partition state machine applies.
//!
//! Nothing here talks to Raft or the network. Each operation reads and writes through an
//! [`Overlay`](crate::storage::Overlay) of its partition, and every input that could differ
//! between replicas (the clock) travels inside the Raft entry.

pub mod map;
pub mod processor;
pub mod shadow;
