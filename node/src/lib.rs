//! # DeviceGrid member
//!
//! One `devicegrid` process is one member of a grid. The crate is layered; each layer
//! only calls the ones listed below it.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`api`] | axum HTTP API: maps, cluster view, health, metrics, and the internal peer endpoint |
//! | [`cluster`] | the [`cluster::Grid`] and its parts: hosted groups, metadata client, router, peer server, views, loops |
//! | [`raft`] | openraft glue: sled log store, state machine generic over a [`raft::Machine`], group network |
//! | [`transport`] | member-to-member batches over HTTP, shared by every group |
//! | [`structures`] | deterministic logic the state machines apply (maps, processors, shadows, metadata, placement) |
//! | [`storage`] | sled trees, key layout, group commit |
//! | [`runtime`] | the member's task tree, the one bounded coalescing queue, the one periodic loop |
//! | [`config`], [`error`], [`metrics`] | beside the layers: typed settings, the crate's error, gauges fed a [`metrics::GridStats`] snapshot |
//!
//! `scripts/check-layers.py` (part of `make lint`) fails when a module uses one above it;
//! `docs/architecture.md` draws the map and follows a write and a read through it. Types that
//! cross the process boundary (API answers, error codes, peer messages, Raft entries) are the
//! wire contract's, in `devicegrid_proto`.
//!
//! The `devicegrid` binary (`src/main.rs`, `src/cli/`) parses flags into a [`config::Config`]
//! and runs `serve` (one member) or `dev` (a local multi-process grid).
//!
//! Keys map to partitions by [`devicegrid_proto::partition_of`]; every partition is an openraft group
//! replicated on `replication_factor` members. A small metadata group holds the member list
//! and the partition table.

#![deny(missing_docs)]

pub mod api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod metrics;
pub mod raft;
pub mod runtime;
pub mod storage;
pub mod structures;
pub mod transport;

pub use error::{Error, Result};
