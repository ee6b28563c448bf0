//! The input rules of map operations, in one place: the HTTP API checks each part as it
//! parses a request, and the peer server checks whole operations a peer forwards, with the
//! same functions, so a peer cannot write what a client could not.

use serde_json::value::RawValue;

use devicegrid_proto::entries::MapOp;
use devicegrid_proto::maps::{MAX_KEY_BYTES, MAX_MAP_NAME_BYTES, MAX_VALUE_BYTES};
use devicegrid_proto::ErrorCode;

use crate::structures::processor;
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

/// A value: JSON text of at most [`MAX_VALUE_BYTES`], returned as its text.
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
        let refused = [
            (put("", "d-1", "1", None), ErrorCode::InvalidMapName),
            (put("a b", "d-1", "1", None), ErrorCode::InvalidMapName),
            (put("m", "", "1", None), ErrorCode::InvalidKey),
            (put("m", "a\nb", "1", None), ErrorCode::InvalidKey),
            (put("m", "k", "{", None), ErrorCode::InvalidJson),
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
