//! The grid as one member sees it: its groups, the metadata client, routing of requests to
//! partition leaders, the peer server, views, and the member's loops.
//!
//! - [`grid`]: the [`Grid`]: start and stop, and the wiring of the parts below
//! - [`groups`]: the hosted Raft groups and the published metadata state
//! - [`group`]: one Raft group with its write batcher and read barrier
//! - [`meta_client`]: proposals and reads through the metadata leader
//! - [`router`]: partition reads and writes, sent to the leader, with redirects and retries
//! - [`peer_server`]: answers to peers' requests
//! - [`views`]: this member's report and the cluster views
//! - loops, each handed the narrow handle it needs:
//!   [`bootstrap`] (first start, registration, hosting replicas),
//!   [`liveness`] (pings, member-wide heartbeats and elections),
//!   [`expiry`] (the TTL sweeper of partition leaders),
//!   [`compactor`] (snapshots of groups that keep the Raft log's oldest segment),
//!   [`driver`] (the metadata leader's placement loop),
//!   [`mover`] (partition leaders carrying out moves and handoffs)
//!
//! The metadata state machine and the placement rules are pure logic in
//! [`crate::structures`].

pub mod bootstrap;
pub mod compactor;
pub mod driver;
pub mod expiry;
pub mod grid;
pub mod group;
pub mod groups;
pub mod liveness;
pub mod meta_client;
pub mod mover;
pub mod peer_server;
pub mod router;
pub mod views;

pub use devicegrid_proto::partition_of;
pub use grid::Grid;

/// Milliseconds since the Unix epoch by this member's clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
