//! The crate's error type. HTTP status codes are decided once, in `api::error`.

use crate::raft::GroupId;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong serving a request or running a member.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something malformed or over a limit; `code` is machine-readable.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable error code, e.g. `invalid_json`.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// The named entry or resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An `If-Match` version did not match the entry's current version.
    #[error("version mismatch: expected {expected}, current {}", current.map_or("absent".to_string(), |v| v.to_string()))]
    VersionMismatch {
        /// The version the client asked for.
        expected: u64,
        /// The entry's current version, `None` when absent.
        current: Option<u64>,
    },
    /// An entry processor refused to run on the current value (e.g. a failed condition).
    #[error("{message}")]
    ProcessorFailed {
        /// Machine-readable error code, e.g. `condition_failed`.
        code: String,
        /// Human-readable explanation.
        message: String,
    },
    /// This member does not lead the group; `leader` is the best known leader.
    #[error("group {group} is led by {leader:?}, not this member")]
    NotLeader {
        /// The group asked for.
        group: GroupId,
        /// The leader this member knows of.
        leader: Option<u64>,
    },
    /// The request did not reach a member that can serve it (the member is down, unknown, or
    /// does not host the group). Nothing was applied; routing tries another replica.
    #[error("member {member} cannot serve {group}: {message}")]
    NotDelivered {
        /// The group asked for.
        group: GroupId,
        /// The member tried.
        member: u64,
        /// Why.
        message: String,
    },
    /// The group has no quorum or no reachable leader right now; the client may retry.
    #[error("group {group} is unavailable: {message}")]
    Unavailable {
        /// The group that could not serve.
        group: GroupId,
        /// What was tried.
        message: String,
    },
    /// A write was sent but no answer came before the deadline: it may or may not have been
    /// applied, so it must not be retried blindly.
    #[error("group {group}: {message}; the write may or may not have been applied")]
    OutcomeUnknown {
        /// The group written to.
        group: GroupId,
        /// What happened.
        message: String,
    },
    /// The grid refused a change in its current state (e.g. a drain that would leave too
    /// few members); `code` is machine-readable.
    #[error("{message}")]
    Refused {
        /// Machine-readable error code, e.g. `drain_refused`.
        code: String,
        /// Why.
        message: String,
    },
    /// Persistent storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A failure of this member that the client cannot fix.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::BadRequest`].
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// Label for metrics and logs.
    pub fn code(&self) -> &str {
        match self {
            Error::BadRequest { code, .. } => code,
            Error::NotFound(_) => "not_found",
            Error::VersionMismatch { .. } => "version_mismatch",
            Error::ProcessorFailed { code, .. } => code,
            Error::NotLeader { .. } => "not_leader",
            Error::NotDelivered { .. } => "unavailable",
            Error::Unavailable { .. } => "unavailable",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::Refused { code, .. } => code,
            Error::Storage(_) => "storage",
            Error::Internal(_) => "internal",
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
