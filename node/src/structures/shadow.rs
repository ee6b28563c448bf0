//! Device shadows in the manner of AWS IoT Device Shadow.
//!
//! A shadow document is stored as the map value:
//!
//! ```json
//! {"state": {"desired": {..}, "reported": {..}, "delta": {..}},
//!  "metadata": {"desired": {"field": {"timestamp": 1700000000}}, "reported": {..}},
//!  "version": 3, "timestamp": 1700000000}
//! ```
//!
//! An update names `state.desired` and/or `state.reported`; each is merged into the
//! document with JSON merge patch semantics (a `null` field deletes it, a `null` section
//! clears it). `delta` holds the desired fields whose value differs from the reported one,
//! compared recursively through objects. An optional `version` makes the update conditional
//! on the shadow's current version (`version_conflict` otherwise). Timestamps are the
//! leader's clock in Unix seconds.

use serde_json::{json, Map, Value};

use devicegrid_proto::ErrorCode;

use crate::structures::processor::{Refusal, ShadowUpdate};

/// Top-level fields of a shadow document.
const SHADOW_FIELDS: [&str; 4] = ["state", "metadata", "version", "timestamp"];

/// Checks the shape of an update.
pub fn validate(u: &ShadowUpdate) -> Result<(), Refusal> {
    if u.state.desired.is_none() && u.state.reported.is_none() {
        return Err(refuse(
            ErrorCode::InvalidShadow,
            "state must name desired and/or reported",
        ));
    }
    for (name, section) in [
        ("desired", &u.state.desired),
        ("reported", &u.state.reported),
    ] {
        if let Some(v) = section {
            if !(v.is_object() || v.is_null()) {
                return Err(refuse(
                    ErrorCode::InvalidShadow,
                    format!("state.{name} must be an object or null"),
                ));
            }
        }
    }
    Ok(())
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Applies `u` to the shadow document `current` (None: a new shadow).
pub fn apply(current: Option<Value>, u: &ShadowUpdate, now_ms: u64) -> Result<Value, Refusal> {
    let mut doc = match current {
        Some(Value::Object(m)) if m.keys().all(|k| SHADOW_FIELDS.contains(&k.as_str())) => m,
        Some(_) => return Err(refuse(
            ErrorCode::NotAShadow,
            "the entry holds a value that is not a shadow document; keep shadows in their own map",
        )),
        None => Map::new(),
    };
    let version = doc.get("version").and_then(Value::as_u64).unwrap_or(0);
    if let Some(expected) = u.version {
        if expected != version {
            return Err(refuse(
                ErrorCode::VersionConflict,
                format!("shadow version is {version}, update expected {expected}"),
            ));
        }
    }
    let ts = now_ms / 1000;
    let mut state = take_object(&mut doc, "state");
    let mut metadata = take_object(&mut doc, "metadata");
    for (name, patch) in [
        ("desired", &u.state.desired),
        ("reported", &u.state.reported),
    ] {
        match patch {
            None => {}
            Some(Value::Null) => {
                state.remove(name);
                metadata.remove(name);
            }
            Some(patch) => {
                let section = state.entry(name).or_insert_with(|| json!({}));
                json_patch::merge(section, patch);
                let stamps = metadata.entry(name).or_insert_with(|| json!({}));
                json_patch::merge(stamps, &timestamps(patch, ts));
                for m in [&mut state, &mut metadata] {
                    if m.get(name)
                        .is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
                    {
                        m.remove(name);
                    }
                }
            }
        }
    }
    state.remove("delta");
    if let (Some(Value::Object(d)), reported) = (state.get("desired"), state.get("reported")) {
        let delta = delta(d, reported.and_then(Value::as_object));
        if !delta.is_empty() {
            state.insert("delta".into(), Value::Object(delta));
        }
    }
    doc.insert("state".into(), Value::Object(state));
    doc.insert("metadata".into(), Value::Object(metadata));
    doc.insert("version".into(), json!(version + 1));
    doc.insert("timestamp".into(), json!(ts));
    Ok(Value::Object(doc))
}

fn take_object(doc: &mut Map<String, Value>, name: &str) -> Map<String, Value> {
    match doc.remove(name) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// A merge patch that sets `{"timestamp": ts}` for every leaf `patch` sets and removes the
/// stamps of the fields it deletes.
fn timestamps(patch: &Value, ts: u64) -> Value {
    match patch {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let stamp = match v {
                        Value::Null => Value::Null,
                        Value::Object(_) => timestamps(v, ts),
                        _ => json!({ "timestamp": ts }),
                    };
                    (k.clone(), stamp)
                })
                .collect(),
        ),
        _ => json!({ "timestamp": ts }),
    }
}

/// Desired fields whose value differs from the reported one.
fn delta(
    desired: &Map<String, Value>,
    reported: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, want) in desired {
        let have = reported.and_then(|r| r.get(k));
        match (want, have) {
            (Value::Object(w), Some(Value::Object(h))) => {
                let sub = delta(w, Some(h));
                if !sub.is_empty() {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
            _ if Some(want) != have => {
                out.insert(k.clone(), want.clone());
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(v: Value) -> ShadowUpdate {
        serde_json::from_value(v).expect("update")
    }

    #[test]
    fn desired_then_reported_converges_and_clears_delta() {
        let s1 = apply(
            None,
            &update(json!({"state": {"desired": {"led": "on", "cfg": {"rate": 5, "mode": "a"}}}})),
            10_000,
        )
        .expect("desired");
        assert_eq!(
            s1["state"]["delta"],
            json!({"led": "on", "cfg": {"rate": 5, "mode": "a"}})
        );
        assert_eq!(
            s1["metadata"]["desired"]["cfg"]["rate"],
            json!({"timestamp": 10})
        );
        assert_eq!(s1["version"], json!(1));

        let s2 = apply(
            Some(s1),
            &update(json!({"state": {"reported": {"led": "on", "cfg": {"rate": 5, "mode": "b"}}}})),
            20_000,
        )
        .expect("reported");
        assert_eq!(s2["state"]["delta"], json!({"cfg": {"mode": "a"}}));
        assert_eq!(s2["metadata"]["reported"]["led"], json!({"timestamp": 20}));
        assert_eq!(s2["metadata"]["desired"]["led"], json!({"timestamp": 10}));
        assert_eq!(s2["version"], json!(2));

        let s3 = apply(
            Some(s2),
            &update(json!({"state": {"desired": {"cfg": {"mode": null}}}, "version": 2})),
            30_000,
        )
        .expect("converged");
        assert!(s3["state"].get("delta").is_none(), "{s3}");
        assert!(s3["metadata"]["desired"]["cfg"].get("mode").is_none());
    }

    #[test]
    fn null_section_clears_and_version_is_checked() {
        let s1 = apply(
            None,
            &update(json!({"state": {"desired": {"a": 1}, "reported": {"a": 2}}})),
            0,
        )
        .expect("s1");
        let s2 = apply(
            Some(s1.clone()),
            &update(json!({"state": {"desired": null}})),
            0,
        )
        .expect("s2");
        assert!(s2["state"].get("desired").is_none());
        assert!(s2["state"].get("delta").is_none());
        assert_eq!(s2["state"]["reported"], json!({"a": 2}));
        let err = apply(
            Some(s1),
            &update(json!({"state": {"reported": {"a": 3}}, "version": 7})),
            0,
        )
        .expect_err("conflict");
        assert_eq!(err.code, ErrorCode::VersionConflict);
    }

    #[test]
    fn malformed_updates_are_refused() {
        assert!(validate(&update(json!({"state": {}}))).is_err());
        assert!(validate(&update(json!({"state": {"desired": 3}}))).is_err());
        assert!(serde_json::from_value::<ShadowUpdate>(json!({"state": {"wanted": {}}})).is_err());
        assert_eq!(
            apply(
                Some(json!(5)),
                &update(json!({"state": {"desired": {}}})),
                0
            )
            .expect_err("scalar")
            .code,
            ErrorCode::NotAShadow
        );
    }

    #[test]
    fn update_survives_the_raft_log_encoding() {
        let u = update(json!({"state": {"desired": null, "reported": {"x": 1}}}));
        let bytes = rmp_serde::to_vec_named(&u).expect("encode");
        assert_eq!(
            rmp_serde::from_slice::<ShadowUpdate>(&bytes).expect("decode"),
            u
        );
    }
}
