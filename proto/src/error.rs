//! The one list of error codes, their HTTP statuses, and the error body every route answers:
//! `{"error": {"code": "...", "message": "...", ...routing facts}}`.

use serde::{Deserialize, Serialize};

/// Every machine-readable error code of the API (serialized in snake_case).
///
/// The HTTP status of a code is decided here, once ([`ErrorCode::status`]); clients decide
/// what to do from the code, never from the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // 400: malformed input
    /// The body is not (valid) JSON.
    InvalidJson,
    /// The body could not be read.
    InvalidBody,
    /// A path segment could not be parsed.
    InvalidPath,
    /// A query parameter is unknown or malformed.
    InvalidQuery,
    /// A map name outside `A-Z a-z 0-9 _ - .` or too long.
    InvalidMapName,
    /// A key that is empty, too long or has control characters.
    InvalidKey,
    /// A TTL that is not whole seconds in range.
    InvalidTtl,
    /// An `If-Match` / `If-None-Match` that is not an entry version.
    InvalidVersion,
    /// `consistency` other than `linearizable` or `stale`.
    InvalidConsistency,
    /// A batch that is empty or over the key limit.
    InvalidBatch,
    /// A processor request without a processor name.
    InvalidProcessor,
    /// Processor arguments that do not fit the processor.
    InvalidProcessorArgs,
    /// A processor name the grid does not know.
    UnknownProcessor,
    /// A member id that is not a positive number.
    InvalidMemberId,
    /// A member configuration that does not validate.
    InvalidConfig,
    /// A request body over its limit (413).
    BodyTooLarge,
    /// A known route called with another method (405).
    MethodNotAllowed,
    /// A JSON value the grid does not store: a number beyond the range of a 64-bit float,
    /// or nesting deeper than `maps::MAX_DEPTH`.
    InvalidValue,
    /// A user or role name outside `a-z 0-9 . _ -` or too long.
    InvalidName,
    /// A role that does not fit (no grants, too many, `admin` redefined), or a user naming
    /// a role that does not exist.
    InvalidRole,

    // 401, 403, 429
    /// This client identity sent more requests than its rate allows (429, `Retry-After`).
    RateLimited,
    /// No bearer token, or one the grid does not know (401, with `WWW-Authenticate`).
    Unauthenticated,
    /// The user's roles do not grant the action on the resource (403).
    Forbidden,

    // 404
    /// No such entry or route.
    NotFound,
    /// No such member in the metadata group (the operator shrinks on this answer).
    MemberNotFound,
    /// No such user.
    UserNotFound,
    /// No such role.
    RoleNotFound,

    // 409: refused in the current state
    /// A processor's JSON pointer does not fit the current value (not an index, out of
    /// range, or into a scalar).
    InvalidField,
    /// A processor's condition did not hold.
    ConditionFailed,
    /// A role some user still holds cannot be removed.
    RoleInUse,
    /// The last user holding `admin` cannot be removed or lose the role.
    LastAdmin,
    /// `increment` on a field that is not a number.
    NotANumber,
    /// A shadow update named a version that is not the current one.
    VersionConflict,
    /// A shadow update of the wrong shape.
    InvalidShadow,
    /// The stored value is not a shadow document.
    NotAShadow,
    /// A processor result or value nested deeper than the limit.
    ValueTooDeep,
    /// A processor result over the value limit.
    ValueTooLarge,
    /// A stored value that does not parse (never written by this grid).
    UnreadableValue,
    /// Draining would leave fewer active members than the replication factor.
    DrainRefused,
    /// A move that does not fit the partition's current state.
    InvalidMove,
    /// A metadata change naming members that are not registered.
    NoMembers,
    /// A member id already registered with another data directory.
    WrongDataDir,

    // 412
    /// `If-Match` did not match the entry's version.
    VersionMismatch,

    // 503: nothing was written, retry after `retry_after_ms`
    /// This member is not the leader (smart clients re-route to `leader`).
    NotLeader,
    /// No quorum or no reachable leader for the partition.
    Unavailable,
    /// The member's queues are full; nothing was written.
    Overloaded,

    // 504
    /// A write was sent but its outcome is not known: it must not be retried blindly.
    OutcomeUnknown,

    /// The member's disk is nearly full: nothing was written; retry elsewhere or later
    /// (507).
    InsufficientStorage,
    // 500
    /// Persistent storage failed.
    Storage,
    /// A failure of the member that the client cannot fix.
    Internal,

    /// A code this version does not know (sent by a newer member).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status of the code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            BodyTooLarge => 413,
            MethodNotAllowed => 405,
            InvalidJson | InvalidBody | InvalidPath | InvalidQuery | InvalidMapName
            | InvalidKey | InvalidTtl | InvalidVersion | InvalidConsistency | InvalidBatch
            | InvalidProcessor | InvalidProcessorArgs | UnknownProcessor | InvalidMemberId
            | InvalidConfig | InvalidName | InvalidRole | InvalidValue => 400,
            Unauthenticated => 401,
            RateLimited => 429,
            Forbidden => 403,
            NotFound | MemberNotFound | UserNotFound | RoleNotFound => 404,
            InvalidField | ConditionFailed | NotANumber | VersionConflict | InvalidShadow
            | NotAShadow | ValueTooDeep | ValueTooLarge | UnreadableValue | DrainRefused
            | InvalidMove | NoMembers | WrongDataDir | RoleInUse | LastAdmin => 409,
            VersionMismatch => 412,
            NotLeader | Unavailable | Overloaded => 503,
            OutcomeUnknown => 504,
            InsufficientStorage => 507,
            Storage | Internal | Unknown => 500,
        }
    }

    /// Whether a client may send the same request again, after `Retry-After` (nothing was
    /// applied).
    pub fn retryable(self) -> bool {
        matches!(self.status(), 429 | 503)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::wire_name(self))
    }
}

/// A partition's leader as the answering member knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// Member id.
    pub id: u64,
    /// Its advertised client address, when the member is in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Where a request was routed when it failed, so a smart client can re-route without
/// guessing (as TiKV's `NotLeader` and `EpochNotMatch` carry the region and its leader).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routing {
    /// The partition the key maps to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Its leader, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
    /// The partition's version in the table (grows with every move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_version: Option<u64>,
    /// The partition table's version (the metadata epoch) the member routed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_version: Option<u64>,
}

/// The inside of an error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// `version_mismatch`: the entry's current version (`null`: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<Option<u64>>,
    /// 503: when to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Routing facts of partition errors.
    #[serde(flatten)]
    pub routing: Routing,
}

impl ErrorDetail {
    /// A detail with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorDetail {
            code,
            message: message.into(),
            current_version: None,
            retry_after_ms: None,
            routing: Routing::default(),
        }
    }
}

/// `{"error": {...}}`: the body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names_and_unknown_codes_parse() {
        for code in [
            ErrorCode::InvalidJson,
            ErrorCode::MemberNotFound,
            ErrorCode::Overloaded,
            ErrorCode::OutcomeUnknown,
        ] {
            let s = serde_json::to_string(&code).expect("encode");
            assert_eq!(s, format!("\"{code}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&s).expect("decode"), code);
        }
        let later: ErrorCode = serde_json::from_str("\"added_later\"").expect("decode");
        assert_eq!(later, ErrorCode::Unknown);
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorCode::BodyTooLarge.status(), 413);
        assert_eq!(ErrorCode::MemberNotFound.status(), 404);
        assert_eq!(ErrorCode::DrainRefused.status(), 409);
        assert_eq!(ErrorCode::VersionMismatch.status(), 412);
        assert_eq!(ErrorCode::Overloaded.status(), 503);
        assert!(ErrorCode::Overloaded.retryable());
        assert!(!ErrorCode::OutcomeUnknown.retryable());
    }

    #[test]
    fn routing_facts_sit_beside_the_code() {
        let mut d = ErrorDetail::new(ErrorCode::Unavailable, "no leader");
        d.routing = Routing {
            partition: Some(7),
            leader: Some(LeaderHint {
                id: 2,
                address: Some("127.0.0.1:7002".into()),
            }),
            partition_version: Some(3),
            table_version: Some(41),
        };
        let v = serde_json::to_value(ErrorBody { error: d.clone() }).expect("encode");
        assert_eq!(v["error"]["partition"], 7);
        assert_eq!(v["error"]["leader"]["address"], "127.0.0.1:7002");
        assert_eq!(v["error"]["table_version"], 41);
        let back: ErrorBody = serde_json::from_value(v).expect("decode");
        assert_eq!(back.error, d);
    }
}
