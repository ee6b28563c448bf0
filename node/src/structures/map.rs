//! Maps: versioned JSON entries with TTL, compare-and-set and entry processors.
//!
//! An entry's version is the partition's revision at its last write: a counter that every
//! mutation in the partition increments (as etcd's `mod_revision`). Versions of one key only
//! grow, even across delete and re-create, so `If-Match` never matches a different
//! incarnation of a key. `If-Match: 0` means "only if absent".

use crate::storage::{decode, encode, sm_space, Overlay};
use crate::structures::processor;
use crate::Result;

pub use devicegrid_proto::entries::{MapBatch, MapOp, OpOutcome, Record};
pub use devicegrid_proto::maps::{MAX_DEPTH, MAX_KEY_BYTES, MAX_MAP_NAME_BYTES, MAX_VALUE_BYTES};
use devicegrid_proto::ErrorCode;

/// Nesting depth of a JSON value (a scalar is 1), without recursion.
pub fn depth(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Storage key suffix of an entry within its partition.
pub fn entry_key(map: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + map.len() + key.len());
    k.push(sm_space::MAP);
    k.extend_from_slice(map.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Splits an entry key suffix (as made by [`entry_key`]) back into map and key.
pub fn split_entry_key(suffix: &[u8]) -> Option<(String, String)> {
    let rest = suffix.strip_prefix(&[sm_space::MAP])?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let map = std::str::from_utf8(&rest[..nul]).ok()?;
    let key = std::str::from_utf8(&rest[nul + 1..]).ok()?;
    Some((map.to_string(), key.to_string()))
}

/// Reads a live entry (expired entries read as absent).
pub fn read(view: &Overlay<'_>, map: &str, key: &str, now_ms: u64) -> Result<Option<Record>> {
    Ok(match view.get(&entry_key(map, key))? {
        Some(bytes) => Some(decode::<Record>(&bytes)?).filter(|r| !r.expired(now_ms)),
        None => None,
    })
}

/// Up to `limit` entries of partition `group` whose expiry is at or before `now_ms`, as
/// `Expire` operations (read from the expiry index, not by scanning the data).
pub fn due_expiries(
    tree: &sled::Tree,
    group: u32,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<MapOp>> {
    let from = crate::storage::group_key(group, &[sm_space::EXPIRY]);
    let to = crate::storage::group_key(group, &expiry_key(now_ms, &[0xff]));
    let view = Overlay::new(tree, group);
    let mut ops = Vec::new();
    for item in tree.range(from..to) {
        if ops.len() >= limit {
            break;
        }
        let (k, _) = item?;
        let Some((map, key)) = split_entry_key(&k[4 + 9..]) else {
            continue;
        };
        if let Some(bytes) = view.get(&entry_key(&map, &key))? {
            let r: Record = decode(&bytes)?;
            ops.push(MapOp::Expire {
                map,
                key,
                version: r.version,
            });
        }
    }
    Ok(ops)
}

/// Applies one batch; `revision` is the partition's revision counter.
pub fn apply_batch(
    view: &mut Overlay<'_>,
    revision: &mut u64,
    batch: &MapBatch,
) -> Result<Vec<OpOutcome>> {
    batch
        .ops
        .iter()
        .map(|op| apply_op(view, revision, batch.now_ms, op))
        .collect()
}

fn version_ok(if_version: Option<u64>, current: Option<&Record>) -> bool {
    match (if_version, current) {
        (None, _) => true,
        (Some(0), None) => true,
        (Some(v), Some(r)) => r.version == v,
        (Some(_), None) => false,
    }
}

/// Key suffix of an entry in the expiry index: `0x03 expires_at_ms(BE) entry_key`.
pub fn expiry_key(expires_at_ms: u64, entry_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + entry_key.len());
    k.push(sm_space::EXPIRY);
    k.extend_from_slice(&expires_at_ms.to_be_bytes());
    k.extend_from_slice(entry_key);
    k
}

/// Removes the entry at `k` (whose stored record is `old`).
fn remove(view: &mut Overlay<'_>, revision: &mut u64, k: &[u8], old: &Record) {
    *revision += 1;
    if let Some(t) = old.expires_at_ms {
        view.remove(&expiry_key(t, k));
    }
    view.remove(k);
}

/// Writes the entry at `k`, replacing `old` (expired or not), and keeps the expiry index.
fn write(
    view: &mut Overlay<'_>,
    revision: &mut u64,
    k: &[u8],
    old: Option<&Record>,
    value: String,
    expires_at_ms: Option<u64>,
) -> Result<u64> {
    *revision += 1;
    if let Some(t) = old.and_then(|r| r.expires_at_ms) {
        view.remove(&expiry_key(t, k));
    }
    if let Some(t) = expires_at_ms {
        view.put(&expiry_key(t, k), Vec::new());
    }
    let record = Record {
        value,
        version: *revision,
        expires_at_ms,
    };
    view.put(k, encode(&record)?);
    Ok(*revision)
}

fn apply_op(view: &mut Overlay<'_>, revision: &mut u64, now: u64, op: &MapOp) -> Result<OpOutcome> {
    let (map, key) = op.target();
    let k = entry_key(map, key);
    // `raw` may be expired but still stored; `current` is what clients see.
    let raw: Option<Record> = view.get(&k)?.map(|b| decode(&b)).transpose()?;
    let current = raw.clone().filter(|r| !r.expired(now));
    Ok(match op {
        MapOp::Put {
            value,
            if_version,
            ttl_ms,
            ..
        } => {
            if !version_ok(*if_version, current.as_ref()) {
                return Ok(OpOutcome::VersionMismatch {
                    current: current.map(|r| r.version),
                });
            }
            let expires = ttl_ms.map(|t| now.saturating_add(t));
            let version = write(view, revision, &k, raw.as_ref(), value.clone(), expires)?;
            OpOutcome::Written {
                version,
                value: None,
            }
        }
        MapOp::Delete { if_version, .. } => match current {
            None if if_version.is_some_and(|v| v != 0) => {
                OpOutcome::VersionMismatch { current: None }
            }
            None => OpOutcome::NotFound,
            Some(r) if !version_ok(*if_version, Some(&r)) => OpOutcome::VersionMismatch {
                current: Some(r.version),
            },
            Some(r) => {
                remove(view, revision, &k, &r);
                OpOutcome::Deleted { version: r.version }
            }
        },
        MapOp::Process { processor, .. } => {
            // Everything that depends on the data becomes an outcome, never an `Err`: an
            // `Err` from `apply` is fatal to the group on every replica.
            let old = match &current {
                Some(r) => match serde_json::from_str(&r.value) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        return Ok(OpOutcome::Failed {
                            code: ErrorCode::UnreadableValue,
                            message: format!(
                                "the stored value is not JSON a processor can read: {e}"
                            ),
                        })
                    }
                },
                None => None,
            };
            match processor::run(processor, old, now) {
                Ok(new) if depth(&new) > MAX_DEPTH => OpOutcome::Failed {
                    code: ErrorCode::ValueTooDeep,
                    message: format!("the result would nest deeper than {MAX_DEPTH} levels"),
                },
                Ok(new) => {
                    let text = new.to_string();
                    if text.len() > MAX_VALUE_BYTES {
                        return Ok(OpOutcome::Failed {
                            code: ErrorCode::ValueTooLarge,
                            message: format!("the result would exceed {MAX_VALUE_BYTES} bytes"),
                        });
                    }
                    let expires = current.and_then(|r| r.expires_at_ms);
                    let version = write(view, revision, &k, raw.as_ref(), text.clone(), expires)?;
                    OpOutcome::Written {
                        version,
                        value: Some(text),
                    }
                }
                Err(f) => OpOutcome::Failed {
                    code: f.code,
                    message: f.message,
                },
            }
        }
        MapOp::Expire { version, .. } => match raw {
            Some(r) if r.version == *version && r.expired(now) => {
                remove(view, revision, &k, &r);
                OpOutcome::Deleted { version: r.version }
            }
            _ => OpOutcome::NotFound,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, if_version: Option<u64>, ttl_ms: Option<u64>) -> MapOp {
        MapOp::Put {
            map: "devices".into(),
            key: key.into(),
            value: value.into(),
            if_version,
            ttl_ms,
        }
    }

    fn run(db: &sled::Tree, rev: &mut u64, now_ms: u64, ops: Vec<MapOp>) -> Vec<OpOutcome> {
        let mut view = Overlay::new(db, 7);
        let out = apply_batch(&mut view, rev, &MapBatch { now_ms, ops }).expect("apply");
        view.commit(&[sm_space::APPLIED]).expect("commit");
        out
    }

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        db.open_tree("sm").expect("tree")
    }

    #[test]
    fn put_get_versions_and_cas() {
        let t = tree();
        let mut rev = 0;
        let out = run(
            &t,
            &mut rev,
            1,
            vec![put("a", "1", None, None), put("a", "2", Some(1), None)],
        );
        assert_eq!(
            out[0],
            OpOutcome::Written {
                version: 1,
                value: None
            }
        );
        assert_eq!(
            out[1],
            OpOutcome::Written {
                version: 2,
                value: None
            }
        );
        let out = run(
            &t,
            &mut rev,
            1,
            vec![put("a", "3", Some(1), None), put("b", "1", Some(0), None)],
        );
        assert_eq!(out[0], OpOutcome::VersionMismatch { current: Some(2) });
        assert_eq!(
            out[1],
            OpOutcome::Written {
                version: 3,
                value: None
            }
        );
        let view = Overlay::new(&t, 7);
        assert_eq!(
            read(&view, "devices", "a", 1)
                .expect("read")
                .map(|r| r.value),
            Some("2".into())
        );
        // another group's range is separate
        assert_eq!(
            read(&Overlay::new(&t, 8), "devices", "a", 1).expect("read"),
            None
        );
    }

    #[test]
    fn delete_and_recreate_never_reuses_a_version() {
        let t = tree();
        let mut rev = 0;
        run(&t, &mut rev, 1, vec![put("a", "1", None, None)]);
        let del = MapOp::Delete {
            map: "devices".into(),
            key: "a".into(),
            if_version: Some(1),
        };
        assert_eq!(
            run(&t, &mut rev, 1, vec![del.clone()])[0],
            OpOutcome::Deleted { version: 1 }
        );
        assert_eq!(
            run(&t, &mut rev, 1, vec![del])[0],
            OpOutcome::VersionMismatch { current: None }
        );
        let out = run(
            &t,
            &mut rev,
            1,
            vec![put("a", "1", None, None), put("a", "x", Some(1), None)],
        );
        assert_eq!(
            out[0],
            OpOutcome::Written {
                version: 3,
                value: None
            }
        );
        assert_eq!(out[1], OpOutcome::VersionMismatch { current: Some(3) });
    }

    #[test]
    fn ttl_hides_and_expire_removes() {
        let t = tree();
        let mut rev = 0;
        run(&t, &mut rev, 1_000, vec![put("a", "1", None, Some(500))]);
        let view = Overlay::new(&t, 7);
        assert!(read(&view, "devices", "a", 1_499).expect("read").is_some());
        assert!(read(&view, "devices", "a", 1_500).expect("read").is_none());
        let exp = MapOp::Expire {
            map: "devices".into(),
            key: "a".into(),
            version: 1,
        };
        assert_eq!(
            run(&t, &mut rev, 1_200, vec![exp.clone()])[0],
            OpOutcome::NotFound
        );
        assert_eq!(
            run(&t, &mut rev, 1_600, vec![exp])[0],
            OpOutcome::Deleted { version: 1 }
        );
        // an expired entry counts as absent for If-Match: 0
        run(&t, &mut rev, 2_000, vec![put("b", "1", None, Some(10))]);
        assert_eq!(
            run(&t, &mut rev, 3_000, vec![put("b", "2", Some(0), None)])[0],
            OpOutcome::Written {
                version: rev,
                value: None
            }
        );
    }

    #[test]
    fn processors_cannot_store_what_cannot_be_read_back() {
        let t = tree();
        let mut rev = 0;
        let deep = format!("{}1{}", "[".repeat(99), "]".repeat(99));
        run(&t, &mut rev, 1, vec![put("d", &deep, None, None)]);
        let patch: serde_json::Value =
            serde_json::from_str(&format!("{{\"a\": {deep}}}")).expect("json");
        let p = MapOp::Process {
            map: "devices".into(),
            key: "d".into(),
            processor: processor::Processor::MergePatch { patch },
        };
        let out = run(&t, &mut rev, 1, vec![p.clone()]);
        assert!(
            matches!(&out[0], OpOutcome::Failed { code, .. } if *code == ErrorCode::ValueTooDeep),
            "{out:?}"
        );
        // A stored value that does not parse is an outcome, not a failed apply.
        let mut view = Overlay::new(&t, 7);
        let bad = Record {
            value: "{".into(),
            version: 9,
            expires_at_ms: None,
        };
        view.put(&entry_key("devices", "d"), encode(&bad).expect("encode"));
        view.commit(&[sm_space::APPLIED]).expect("commit");
        let out = run(&t, &mut rev, 1, vec![p]);
        assert!(
            matches!(&out[0], OpOutcome::Failed { code, .. } if *code == ErrorCode::UnreadableValue),
            "{out:?}"
        );
    }

    #[test]
    fn expiry_index_follows_writes_and_deletes() {
        let t = tree();
        let mut rev = 0;
        run(
            &t,
            &mut rev,
            1_000,
            vec![
                put("a", "1", None, Some(100)),
                put("b", "1", None, Some(5_000)),
            ],
        );
        run(&t, &mut rev, 1_000, vec![put("b", "2", None, Some(200))]); // re-armed earlier
        run(
            &t,
            &mut rev,
            1_000,
            vec![put("c", "1", None, Some(100)), put("c", "2", None, None)],
        ); // TTL dropped
        let due = due_expiries(&t, 7, 1_300, 10).expect("due");
        let keys: Vec<&str> = due.iter().map(|o| o.target().1).collect();
        assert_eq!(keys, vec!["a", "b"]);
        assert!(due_expiries(&t, 7, 1_050, 10).expect("due").is_empty());
        run(&t, &mut rev, 1_300, due);
        assert!(
            due_expiries(&t, 7, u64::MAX - 1, 10)
                .expect("due")
                .is_empty(),
            "index emptied"
        );
        assert_eq!(
            read(&Overlay::new(&t, 7), "devices", "c", 2_000)
                .expect("read")
                .map(|r| r.value),
            Some("2".into())
        );
    }

    #[test]
    fn entry_keys_round_trip() {
        let k = entry_key("devices", "dev\0/1");
        assert_eq!(
            split_entry_key(&k),
            Some(("devices".into(), "dev\0/1".into()))
        );
    }
}
