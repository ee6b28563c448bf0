//! # DeviceGrid member
//!
//! One `devicegrid` process is one member of a grid. The crate is layered; each layer
//! only calls the ones listed below it.
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`api`] | axum HTTP API: maps, cluster view, health, metrics, and the internal peer endpoint |
//! | [`cluster`] | the [`cluster::Grid`]: metadata state, partition table, hosting, routing, liveness |
//! | [`raft`] | openraft glue: type config, sled log store and state machine, group network |
//! | [`transport`] | member-to-member batches over HTTP, shared by every group |
//! | [`structures`] | deterministic logic the state machine applies (maps, processors, shadows) |
//! | [`storage`] | sled trees, key layout, group commit |
//! | [`config`] | the typed member configuration and its validation |
//! | [`metrics`] | Prometheus registry and the grid's metric families |
//!
//! The `devicegrid` binary (`src/main.rs`, `src/cli/`) parses flags into a [`config::Config`]
//! and runs `serve` (one member) or `dev` (a local multi-process grid).
//!
//! Keys map to partitions by [`cluster::partition_of`]; every partition is an openraft group
//! replicated on `replication_factor` members. A small metadata group holds the member list
//! and the partition table.

#![deny(missing_docs)]

pub mod api;
pub mod cluster;
pub mod config;
pub mod error;
pub mod metrics;
pub mod raft;
pub mod storage;
pub mod structures;
pub mod transport;

pub use error::{Error, Result};
