//! The operator's one error type: what a reconcile pass, the grid client and leader election
//! can fail with, each variant labelled for the reconcile-error metric.

use devicegrid_proto::ErrorDetail;

/// Errors of the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The grid has no namespace (it is a namespaced resource; the API server sets it).
    #[error("the DeviceGrid has no namespace")]
    MissingNamespace,
    /// The grid has no uid yet, so children cannot name it as their owner.
    #[error("the DeviceGrid has no uid")]
    MissingUid,
    /// A child object (or the status) could not be built from the spec.
    #[error("building the {0}: {1}")]
    Build(String, #[source] serde_json::Error),
    /// The grid's peer CA could not be made (e.g. `<namespace>.<grid>` is not a valid
    /// cluster name: 1-63 characters of a-z A-Z 0-9 . _ -).
    #[error("peer CA: {0}")]
    Pki(#[source] devicegrid_pki::PkiError),
    /// The peer CA Secret exists but lacks the CA certificate or key; members cannot start
    /// with it. The operator does not replace it (that would rotate the CA).
    #[error(
        "peer CA Secret {secret} has no {key:?}: delete it to have a new CA made, or add the key"
    )]
    PeerCaIncomplete {
        /// The Secret's name.
        secret: String,
        /// The missing key.
        key: &'static str,
    },
    /// A Secret the grid's security needs is missing or lacks a key (a Secret named in
    /// `spec.tls` or `spec.auth`, or the admin token the operator made).
    #[error("Secret {secret} ({purpose}): {problem}")]
    SecretUnusable {
        /// The Secret's name.
        secret: String,
        /// What it is for, e.g. `spec.tls.secretName`.
        purpose: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The Kubernetes API refused or failed; the pass is retried with backoff.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The grid's admin API could not be reached, or its answer could not be read.
    #[error("grid: {url}: {source}")]
    GridRequest {
        /// The URL asked.
        url: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// The grid's admin API answered with an error the operator has no plan for.
    #[error("grid: {url}: {status}{}", describe(.detail.as_deref()))]
    GridAnswer {
        /// The URL asked.
        url: String,
        /// The HTTP status of the answer.
        status: reqwest::StatusCode,
        /// The grid's error body, when the answer had one (boxed: it is rare and large).
        detail: Option<Box<ErrorDetail>>,
    },
    /// The leader Lease settings cannot work (checked before standing for leadership).
    #[error("lease: {0}")]
    LeaseSettings(String),
    /// The leader Lease could not be read or written.
    #[error("lease: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the leader Lease while this one was leading: the binary exits
    /// and Kubernetes restarts it as a candidate.
    #[error("lost the leader Lease {0}")]
    LostLeadership(String),
}

/// ` code: message` of a grid error body, or nothing.
fn describe(detail: Option<&ErrorDetail>) -> String {
    detail.map_or_else(String::new, |d| format!(" {}: {}", d.code, d.message))
}

impl Error {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingNamespace => "missing_namespace",
            Error::MissingUid => "missing_uid",
            Error::Build(..) => "build",
            Error::Pki(_) | Error::PeerCaIncomplete { .. } => "peer_ca",
            Error::SecretUnusable { .. } => "secret",
            Error::Kube(_) => "kubernetes",
            Error::GridRequest { .. } | Error::GridAnswer { .. } => "grid",
            Error::LeaseSettings(_) => "lease_settings",
            Error::Lease(_) => "lease",
            Error::LostLeadership(_) => "lost_leadership",
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
