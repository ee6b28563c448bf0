//! The crate's error type. Codes and their HTTP statuses are the wire contract's
//! ([`ErrorCode`]); the body is built once, in `api::error`.

use devicegrid_proto::entries::GroupId;
use devicegrid_proto::peer::WireError;
use devicegrid_proto::{ErrorCode, Routing};

use crate::config::ConfigError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong serving a request or running a member.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something malformed or over a limit; `code` is machine-readable.
    #[error("{message}")]
    BadRequest {
        /// Machine-readable error code, e.g. `invalid_json`.
        code: ErrorCode,
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
        code: ErrorCode,
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
        code: ErrorCode,
        /// Why.
        message: String,
    },
    /// This member's queues for the group are full: nothing was written, the client should
    /// back off (503 `overloaded` with `Retry-After`).
    #[error("group {group} is overloaded: {message}")]
    Overloaded {
        /// The group whose queue is full.
        group: GroupId,
        /// Which queue.
        message: String,
    },
    /// The member's configuration does not validate.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A partition call failed; `routing` says where it was sent, for smart clients.
    #[error("{source}")]
    Routed {
        /// What went wrong.
        source: Box<Error>,
        /// Partition, leader and table version as this member knew them.
        routing: Routing,
    },
    /// Certificates or keys for peer TLS are missing or do not fit this member.
    #[error("tls: {0}")]
    Tls(String),
    /// Persistent storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// A failure of this member that the client cannot fix.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::BadRequest`].
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The machine-readable code (its HTTP status is [`ErrorCode::status`]).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::BadRequest { code, .. }
            | Error::ProcessorFailed { code, .. }
            | Error::Refused { code, .. } => *code,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            Error::NotLeader { .. } => ErrorCode::NotLeader,
            Error::NotDelivered { .. } | Error::Unavailable { .. } => ErrorCode::Unavailable,
            Error::Overloaded { .. } => ErrorCode::Overloaded,
            Error::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            Error::Config(_) | Error::Tls(_) => ErrorCode::InvalidConfig,
            Error::Routed { source, .. } => source.code(),
            Error::Storage(_) => ErrorCode::Storage,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The error without its routing facts.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Routed { source, .. } => source.inner(),
            other => other,
        }
    }

    /// Attaches routing facts (replacing earlier ones).
    pub fn routed(self, routing: Routing) -> Error {
        let source = match self {
            Error::Routed { source, .. } => source,
            other => Box::new(other),
        };
        Error::Routed { source, routing }
    }

    /// The error as it crosses to another member.
    pub fn to_wire(&self) -> WireError {
        match self.inner() {
            Error::NotLeader { leader, .. } => WireError::NotLeader { leader: *leader },
            Error::NotDelivered { member, .. } => WireError::NotHosted { member: *member },
            Error::Unavailable { message, .. } => WireError::Unavailable(message.clone()),
            // As a refusal with its code: peers of the previous release decode it (a new
            // variant would fail their whole batch during a rolling upgrade).
            Error::Overloaded { message, .. } => WireError::Refused {
                code: ErrorCode::Overloaded,
                message: message.clone(),
            },
            Error::OutcomeUnknown { message, .. } => WireError::OutcomeUnknown(message.clone()),
            Error::Refused { code, message } => WireError::Refused {
                code: *code,
                message: message.clone(),
            },
            other => WireError::Other(other.to_string()),
        }
    }

    /// A wire error from another member, about `group`.
    pub fn from_wire(w: WireError, group: GroupId) -> Error {
        match w {
            WireError::NotLeader { leader } => Error::NotLeader { group, leader },
            WireError::NotHosted { member } => Error::NotDelivered {
                group,
                member,
                message: "it does not host the group".into(),
            },
            WireError::Unavailable(message) => Error::Unavailable { group, message },
            WireError::Refused {
                code: ErrorCode::Overloaded,
                message,
            } => Error::Overloaded { group, message },
            WireError::OutcomeUnknown(message) => Error::OutcomeUnknown { group, message },
            WireError::Refused { code, message } => Error::Refused { code, message },
            WireError::Other(m) => Error::Internal(m),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
