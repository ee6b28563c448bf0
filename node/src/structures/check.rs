//! The input rules of map operations, in one place: the HTTP API checks each part as it
//! parses a request, and the peer server checks whole operations a peer forwards, with the
//! same functions, so a peer cannot write what a client could not.

use serde_json::value::RawValue;

use devicegrid_proto::entries::MapOp;
use devicegrid_proto::maps::{MAX_DEPTH, MAX_KEY_BYTES, MAX_MAP_NAME_BYTES, MAX_VALUE_BYTES};
use devicegrid_proto::ErrorCode;

use crate::structures::{map, processor};
use crate::{Error, Result};

/// Longest accepted TTL: ten years, in seconds.
pub const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// Map names: 1-128 characters of `A-Z a-z 0-9 _ - .`.
pub fn check_map(map: &str) -> Result<()> {
    let ok = !map.is_empty()
        && map.len() <= MAX_MAP_NAME_BYTES
        && map
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            ErrorCode::InvalidMapName,
            format!("map names are 1-{MAX_MAP_NAME_BYTES} characters of A-Z a-z 0-9 _ - ."),
        ))
    }
}

/// Keys: 1-512 bytes, no control characters.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::bad_request(
            ErrorCode::InvalidKey,
            format!("keys are 1-{MAX_KEY_BYTES} bytes"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::bad_request(
            ErrorCode::InvalidKey,
            "keys must not contain control characters",
        ));
    }
    Ok(())
}

/// A value: JSON text of at most [`MAX_VALUE_BYTES`] that every reader can take back:
/// numbers within the range of a 64-bit float, nesting at most [`MAX_DEPTH`] levels.
/// Returned as its text, which is what is stored and served (integers stay exact).
pub fn json_text(bytes: &[u8]) -> Result<String> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(Error::bad_request(
            ErrorCode::BodyTooLarge,
            format!("values are limited to {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let raw: &RawValue = serde_json::from_slice(bytes).map_err(|e| {
        Error::bad_request(ErrorCode::InvalidJson, format!("the body is not JSON: {e}"))
    })?;
    // Parsed once more as a value: numbers out of range and nesting beyond what serde_json
    // reads back (128) fail here; deeper than MAX_DEPTH fails below.
    let invalid = |why: String| Error::bad_request(ErrorCode::InvalidValue, why);
    let value: serde_json::Value = serde_json::from_str(raw.get()).map_err(|e| {
        invalid(format!(
            "the value cannot be stored: {e} (numbers must fit a 64-bit float, nesting at \
             most {MAX_DEPTH} levels)"
        ))
    })?;
    if map::depth(&value) > MAX_DEPTH {
        return Err(invalid(format!("values nest at most {MAX_DEPTH} levels")));
    }
    Ok(raw.get().to_string())
}

/// A whole operation as a peer forwards it: every part as the API would check it. Expiries
/// are proposed by a partition's leader itself, never forwarded.
pub fn check_op(op: &MapOp) -> Result<()> {
    let (map, key) = op.target();
    check_map(map)?;
    check_key(key)?;
    match op {
        MapOp::Put { value, ttl_ms, .. } => {
            json_text(value.as_bytes())?;
            if ttl_ms.is_some_and(|t| t == 0 || t > MAX_TTL_SECONDS * 1000) {
                return Err(Error::bad_request(
                    ErrorCode::InvalidTtl,
                    format!("ttl is between 1 and {MAX_TTL_SECONDS} seconds"),
                ));
            }
            Ok(())
        }
        MapOp::Delete { .. } => Ok(()),
        MapOp::Process { processor, .. } => processor::validate(processor).map_err(|r| {
            Error::bad_request(
                ErrorCode::InvalidProcessorArgs,
                format!("{}: {}", r.code, r.message),
            )
        }),
        MapOp::Expire { .. } => Err(Error::bad_request(
            ErrorCode::InvalidBody,
            "expiries are proposed by the partition's leader, not forwarded",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(map: &str, key: &str, value: &str, ttl_ms: Option<u64>) -> MapOp {
        MapOp::Put {
            map: map.into(),
            key: key.into(),
            value: value.into(),
            if_version: None,
            ttl_ms,
        }
    }

    #[test]
    fn forwarded_operations_meet_the_api_rules() {
        assert!(check_op(&put("devices", "d-1", "{\"a\":1}", Some(1000))).is_ok());
        let big = "123456789012345678901234567890";
        assert_eq!(
            json_text(big.as_bytes()).ok().as_deref(),
            Some(big),
            "kept exact"
        );
        let deep = format!("{}1{}", "[".repeat(99), "]".repeat(99));
        assert!(json_text(deep.as_bytes()).is_ok(), "100 levels");
        let refused = [
            (put("", "d-1", "1", None), ErrorCode::InvalidMapName),
            (put("a b", "d-1", "1", None), ErrorCode::InvalidMapName),
            (put("m", "", "1", None), ErrorCode::InvalidKey),
            (put("m", "a\nb", "1", None), ErrorCode::InvalidKey),
            (put("m", "k", "{", None), ErrorCode::InvalidJson),
            (put("m", "k", "1e400", None), ErrorCode::InvalidValue),
            (put("m", "k", "-1e309", None), ErrorCode::InvalidValue),
            (
                put(
                    "m",
                    "k",
                    &format!("{}1{}", "[".repeat(101), "]".repeat(101)),
                    None,
                ),
                ErrorCode::InvalidValue,
            ),
            (
                put(
                    "m",
                    "k",
                    &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
                    None,
                ),
                ErrorCode::InvalidValue,
            ),
            (
                put("m", "k", &"1".repeat(MAX_VALUE_BYTES + 1), None),
                ErrorCode::BodyTooLarge,
            ),
            (put("m", "k", "1", Some(0)), ErrorCode::InvalidTtl),
            (
                MapOp::Expire {
                    map: "m".into(),
                    key: "k".into(),
                    version: 1,
                },
                ErrorCode::InvalidBody,
            ),
        ];
        for (op, code) in refused {
            assert_eq!(check_op(&op).map_err(|e| e.code()), Err(code), "{op:?}");
        }
    }
}
