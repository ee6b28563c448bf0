//! # DeviceGrid operator
//!
//! Reconciles `DeviceGrid` resources (`devicegrid.io/v1alpha1`) into StatefulSets of grid
//! members.
//!
//! # Layout
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`crd`] | the custom resource's spec and status, its OpenAPI schema and CEL rules, and the generated CRD YAML (`devicegrid-operator crd`, checked in under `crds/`) |
//! | [`builders`] | the objects a grid owns, built from its spec (pure functions) |
//! | [`decisions`] | scale-up, drain-before-shrink scale-down and one-pod-at-a-time rolls (pure functions of what a pass observed) |
//! | [`status`] | the phase and conditions a grid shows, built from what a pass observed and did (pure functions) |
//! | [`grid_api`] | the client of a grid's admin API: its cluster view and drain requests, read as the wire contract's types ([`devicegrid_proto`]) |
//! | [`reconciler`] | one reconcile pass: applies children, scales through the grid's drain API, rolls pods, writes status and Events |
//! | [`controller`] | the kube-rs controllers (one per watched namespace), their shared context, metrics and retry backoff of failed passes |
//! | [`leader`] | Lease-based leader election, so only one operator replica reconciles |
//! | [`metrics`] | reconcile counters, durations and errors by kind; `/metrics`, `/healthz`, `/readyz` |
//! | [`error`] | the crate's one [`Error`], with a label per kind for metrics |
//!
//! The binary (`src/main.rs`) parses flags, then runs the metrics endpoint and, while it
//! leads, the controllers. The Helm chart is `charts/devicegrid-operator`.

pub mod builders;
pub mod controller;
pub mod crd;
pub mod decisions;
pub mod error;
pub mod grid_api;
pub mod leader;
pub mod metrics;
pub mod reconciler;
pub mod status;

pub use error::{Error, Result};
