//! Entry processors: functions of the current value that run atomically in the partition
//! state machine, so concurrent updates of one entry never lose each other's changes.

use serde_json::{Map, Number, Value};

pub use devicegrid_proto::maps::{Processor, ShadowPatch, ShadowUpdate};
use devicegrid_proto::ErrorCode;

use crate::structures::shadow;

/// Why a processor refused to run; becomes a 409 with its code.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Explanation.
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Checks arguments that can be checked without the current value.
pub fn validate(p: &Processor) -> Result<(), Refusal> {
    match p {
        Processor::Increment { field, .. } | Processor::UpdateIf { field, .. } => {
            check_pointer(field)
        }
        Processor::Shadow(u) => shadow::validate(u),
        Processor::MergePatch { .. } => Ok(()),
    }
}

/// Most segments of a JSON pointer.
const MAX_POINTER_SEGMENTS: usize = 32;

fn check_pointer(field: &str) -> Result<(), Refusal> {
    if field.matches('/').count() > MAX_POINTER_SEGMENTS {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            format!("field pointers have at most {MAX_POINTER_SEGMENTS} segments"),
        ));
    }
    if field.is_empty() || !field.starts_with('/') {
        return Err(Refusal::new(
            ErrorCode::InvalidField,
            format!("field {field:?} must be a JSON pointer such as \"/counters/boots\""),
        ));
    }
    Ok(())
}

/// Runs `p` on `current` (None when the entry is absent) at leader time `now_ms`.
pub fn run(p: &Processor, current: Option<Value>, now_ms: u64) -> Result<Value, Refusal> {
    validate(p)?;
    match p {
        Processor::MergePatch { patch } => {
            let mut v = current.unwrap_or_else(|| Value::Object(Map::new()));
            json_patch::merge(&mut v, patch);
            Ok(v)
        }
        Processor::Increment { field, by } => {
            let mut v = current.unwrap_or_else(|| Value::Object(Map::new()));
            let slot = pointer_slot(&mut v, field)?;
            let next = add(slot, by).ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotANumber,
                    format!("{field} holds {slot}, not a number"),
                )
            })?;
            *slot = Value::Number(next);
            Ok(v)
        }
        Processor::UpdateIf {
            field,
            equals,
            patch,
        } => {
            let mut v = current.unwrap_or_else(|| Value::Object(Map::new()));
            let actual = v.pointer(field).cloned().unwrap_or(Value::Null);
            if &actual != equals {
                return Err(Refusal::new(
                    ErrorCode::ConditionFailed,
                    format!("{field} is {actual}, expected {equals}"),
                ));
            }
            json_patch::merge(&mut v, patch);
            Ok(v)
        }
        Processor::Shadow(u) => shadow::apply(current, u, now_ms),
    }
}

/// Sum of a JSON value (null counts as 0) and a number; integers stay integers unless they
/// overflow or either side is a float.
fn add(current: &Value, by: &Number) -> Option<Number> {
    let cur = match current {
        Value::Null => Number::from(0),
        Value::Number(n) => n.clone(),
        _ => return None,
    };
    if let (Some(a), Some(b)) = (cur.as_i64(), by.as_i64()) {
        if let Some(s) = a.checked_add(b) {
            return Some(Number::from(s));
        }
    }
    Number::from_f64(cur.as_f64()? + by.as_f64()?)
}

/// The slot at JSON pointer `field`, creating missing objects on the way.
fn pointer_slot<'v>(v: &'v mut Value, field: &str) -> Result<&'v mut Value, Refusal> {
    let mut slot = v;
    for raw in field.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        slot = match slot {
            Value::Object(m) => m.entry(token).or_insert(Value::Null),
            Value::Array(a) => {
                let i: usize = token.parse().map_err(|_| {
                    Refusal::new(
                        ErrorCode::InvalidField,
                        format!("{field}: {token:?} is not an index"),
                    )
                })?;
                a.get_mut(i).ok_or_else(|| {
                    Refusal::new(
                        ErrorCode::InvalidField,
                        format!("{field}: index {i} out of range"),
                    )
                })?
            }
            other => {
                return Err(Refusal::new(
                    ErrorCode::InvalidField,
                    format!("{field}: cannot descend into {other}"),
                ))
            }
        };
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Processor {
        serde_json::from_value(v).expect("processor")
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let p = parse(
            json!({"processor": "merge_patch", "args": {"patch": {"a": null, "b": {"c": 1}}}}),
        );
        let out = run(&p, Some(json!({"a": 1, "b": {"d": 2}})), 0).expect("run");
        assert_eq!(out, json!({"b": {"c": 1, "d": 2}}));
        assert_eq!(run(&p, None, 0).expect("run"), json!({"b": {"c": 1}}));
    }

    #[test]
    fn increment_creates_keeps_integers_and_refuses_strings() {
        let p = parse(json!({"processor": "increment", "args": {"field": "/c/boots", "by": 2}}));
        assert_eq!(run(&p, None, 0).expect("run"), json!({"c": {"boots": 2}}));
        assert_eq!(
            run(&p, Some(json!({"c": {"boots": 40}})), 0).expect("run"),
            json!({"c": {"boots": 42}})
        );
        let f = parse(json!({"processor": "increment", "args": {"field": "/t", "by": 0.5}}));
        assert_eq!(
            run(&f, Some(json!({"t": 1})), 0).expect("run"),
            json!({"t": 1.5})
        );
        let big = parse(json!({"processor": "increment", "args": {"field": "/n", "by": 1}}));
        assert_eq!(
            run(&big, Some(json!({"n": i64::MAX})), 0).expect("run"),
            json!({"n": 9.223372036854776e18})
        );
        let err = run(&p, Some(json!({"c": {"boots": "x"}})), 0).expect_err("string");
        assert_eq!(err.code, ErrorCode::NotANumber);
        let bad = parse(json!({"processor": "increment", "args": {"field": "boots", "by": 1}}));
        assert_eq!(
            run(&bad, None, 0).expect_err("pointer").code,
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn update_if_applies_only_when_the_condition_holds() {
        let p = parse(json!({"processor": "update_if",
            "args": {"field": "/fw", "equals": "1.0", "patch": {"fw": "1.1"}}}));
        assert_eq!(
            run(&p, Some(json!({"fw": "1.0"})), 0).expect("run"),
            json!({"fw": "1.1"})
        );
        assert_eq!(
            run(&p, Some(json!({"fw": "1.1"})), 0)
                .expect_err("cond")
                .code,
            ErrorCode::ConditionFailed
        );
        let absent = parse(json!({"processor": "update_if",
            "args": {"field": "/owner", "equals": null, "patch": {"owner": "me"}}}));
        assert_eq!(run(&absent, None, 0).expect("run"), json!({"owner": "me"}));
    }

    #[test]
    fn unknown_processor_does_not_parse() {
        assert!(
            serde_json::from_value::<Processor>(json!({"processor": "nope", "args": {}})).is_err()
        );
    }
}
