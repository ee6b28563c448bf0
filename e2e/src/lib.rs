//! # DeviceGrid end-to-end suite
//!
//! Runs against whatever cluster `KUBECONFIG` names: the local single-node cluster of
//! `e2e/cluster/cluster.sh` (`make e2e`) or a kind cluster (`make e2e-kind`). The suite
//! itself is in `tests/grid_on_kubernetes.rs`; this crate holds its tools.
//!
//! - [`settings`]: what the suite needs to know about the cluster, from the environment
//!   (images, kubectl and helm binaries, how to run a command on a node)
//! - [`tools`]: kubectl, helm and node commands with deadlines and their output in errors
//! - [`grid`]: the grid's HTTP API reached through its client Service (HTTPS with the grid's
//!   CA and admin token), and a writer that records every acknowledged write
//! - [`checks`]: what each step waits for: a settled grid (its own view and the DeviceGrid's
//!   status agree), a pod back after a restart, acknowledged writes and devices intact
//! - [`diag`]: what a failed step prints: the grid's status, pods, volumes, events and log
//!   excerpts of the operator and the members
//! - [`wait`]: polling with a deadline; a timeout reports the last observation and the
//!   diagnostics

pub mod checks;
pub mod diag;
pub mod grid;
pub mod settings;
pub mod tools;
pub mod wait;
