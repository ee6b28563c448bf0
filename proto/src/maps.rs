//! Map requests and answers: entries, processors (with the device shadow's arguments) and
//! batches.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

/// Largest map name, in bytes.
pub const MAX_MAP_NAME_BYTES: usize = 128;
/// Largest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value (JSON text), in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Deepest nesting of a value.
pub const MAX_DEPTH: usize = 100;
/// Most keys in one batch request.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Processor names, as `POST /v1/maps/{map}/{key}/process` takes them.
pub const PROCESSORS: [&str; 4] = ["merge_patch", "increment", "update_if", "shadow"];

/// A processor and its arguments, as named in `POST /v1/maps/{map}/{key}/process`:
/// `{"processor": "<name>", "args": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "processor", content = "args", rename_all = "snake_case")]
pub enum Processor {
    /// RFC 7396 JSON merge patch of the current value (absent counts as `{}`).
    MergePatch {
        /// The patch.
        patch: Value,
    },
    /// Adds `by` to the number at JSON pointer `field`, creating it (from 0) when absent.
    Increment {
        /// JSON pointer, e.g. `/counters/boots`.
        field: String,
        /// The amount (integer or float).
        by: Number,
    },
    /// Applies `patch` only if the value at `field` equals `equals` (`null` matches absent).
    UpdateIf {
        /// JSON pointer of the field to test.
        field: String,
        /// Expected value.
        equals: Value,
        /// Merge patch to apply when the condition holds.
        patch: Value,
    },
    /// Device shadow update (desired and reported documents, delta, per-field timestamps).
    Shadow(ShadowUpdate),
}

/// The arguments of the `shadow` processor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowUpdate {
    /// Sections to merge.
    pub state: ShadowPatch,
    /// Apply only if the shadow currently has this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// The `state` of an update. Absent sections are left alone; `null` clears a section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPatch {
    /// Merged into `state.desired`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub desired: Option<Value>,
    /// Merged into `state.reported`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub reported: Option<Value>,
}

/// Keeps an explicit `null` as `Some(Value::Null)` (serde would read it as `None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Read consistency of `GET` and batch gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Through the partition leader, after a leadership check (the default).
    #[default]
    Linearizable,
    /// From any voter replica, possibly behind.
    Stale,
}

impl Consistency {
    /// The consistency named `s`, if it names one.
    pub fn parse(s: &str) -> Option<Consistency> {
        match s {
            "linearizable" => Some(Consistency::Linearizable),
            "stale" => Some(Consistency::Stale),
            _ => None,
        }
    }
}

/// `PUT /v1/maps/{map}/{key}`: the new version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The entry's new version.
    pub version: u64,
}

/// An entry: `GET /v1/maps/{map}/{key}` and processor results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Key.
    pub key: String,
    /// Value: the JSON text as stored, so numbers come back exactly as written (integers
    /// of any size included).
    pub value: Box<RawValue>,
    /// Version (a partition revision).
    pub version: u64,
    /// Wall-clock expiry (ms since the Unix epoch), for entries with a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `DELETE /v1/maps/{map}/{key}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Key.
    pub key: String,
    /// Always true.
    pub deleted: bool,
    /// The version the entry had.
    pub version: u64,
}

/// One entry of a batch put.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPutEntry {
    /// Key.
    pub key: String,
    /// Any JSON value.
    pub value: Box<RawValue>,
    /// Time to live in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// Body of `POST /v1/batch/maps/{map}/put`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPut {
    /// Entries, 1 to [`MAX_BATCH_KEYS`].
    pub entries: Vec<BatchPutEntry>,
}

/// Body of `POST /v1/batch/maps/{map}/get`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGet {
    /// Keys, 1 to [`MAX_BATCH_KEYS`].
    pub keys: Vec<String>,
    /// Read consistency: `linearizable` (default) or `stale` (see [`Consistency::parse`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<String>,
}

/// One result of a batch put, in request order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchPutResult {
    /// Key.
    pub key: String,
    /// The new version, when written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorDetail>,
}

/// Answer of a batch put.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchPutResults {
    /// One per entry, in request order.
    pub results: Vec<BatchPutResult>,
}

/// One result of a batch get, in request order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchGetResult {
    /// Key.
    pub key: String,
    /// Whether the entry exists (absent when the read failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<bool>,
    /// The value, when found, as stored (see [`Entry::value`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
    /// The version, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Expiry, for found entries with a TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Why the read failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorDetail>,
}

/// Answer of a batch get.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchGetResults {
    /// One per key, in request order.
    pub entries: Vec<BatchGetResult>,
}
