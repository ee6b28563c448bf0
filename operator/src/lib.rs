//! # DeviceGrid operator
//!
//! Reconciles `DeviceGrid` resources (`devicegrid.io/v1alpha1`) into StatefulSets of grid
//! members.
//!
//! - [`crd`]: the custom resource's spec and status, its OpenAPI schema and CEL rules, and
//!   the generated CRD YAML (`devicegrid-operator crd`, checked in under `crds/`)
//! - [`builders`]: the objects a grid owns, built from its spec (pure functions)
//! - [`decisions`]: scale-up, drain-before-shrink scale-down and one-pod-at-a-time rolls
//!   (pure functions of what the reconciler observed)
//! - [`reconciler`]: the kube-rs controller: applies children, scales through the grid's
//!   drain API, rolls pods, writes status and events; retries failures with backoff
//! - [`leader`]: Lease-based leader election, so only one operator replica reconciles
//! - [`metrics`]: reconcile counters, durations and errors by kind; `/metrics`, `/healthz`,
//!   `/readyz`
//!
//! The binary (`src/main.rs`) parses flags, then runs the metrics endpoint and, while it
//! leads, the controllers. The Helm chart is `charts/devicegrid-operator`.

pub mod builders;
pub mod crd;
pub mod decisions;
pub mod leader;
pub mod metrics;
pub mod reconciler;

/// Errors of the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The grid has no namespace (it is a namespaced resource; the API server sets it).
    #[error("the DeviceGrid has no namespace")]
    MissingNamespace,
    /// The grid has no uid yet, so children cannot name it as their owner.
    #[error("the DeviceGrid has no uid")]
    MissingUid,
    /// A child object could not be built from the spec.
    #[error("building the {0}: {1}")]
    Build(String, #[source] serde_json::Error),
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "missing_namespace",
            Error::MissingUid => "missing_uid",
            Error::Build(..) => "build",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
