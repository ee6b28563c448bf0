//! Map routes. Inputs are checked here, before anything reaches a partition; limits are the
//! constants of [`crate::structures::map`].

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::ApiError;
use crate::cluster::Grid;
use crate::structures::map::{
    MapOp, OpOutcome, Record, MAX_KEY_BYTES, MAX_MAP_NAME_BYTES, MAX_VALUE_BYTES,
};
use crate::structures::processor::{self, Processor};
use crate::{Error, Result};

/// Most keys in one batch request.
pub const MAX_BATCH_KEYS: usize = 1000;
/// Longest accepted TTL: ten years, in seconds.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3600;
const PROCESSORS: [&str; 4] = ["merge_patch", "increment", "update_if", "shadow"];

/// Query parameters of map routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapQuery {
    /// `linearizable` (default) or `stale`.
    consistency: Option<String>,
    /// Time to live in seconds (writes).
    ttl: Option<String>,
}

fn check_map(map: &str) -> Result<()> {
    let ok = !map.is_empty()
        && map.len() <= MAX_MAP_NAME_BYTES
        && map
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(
            "invalid_map_name",
            format!("map names are 1-{MAX_MAP_NAME_BYTES} characters of A-Z a-z 0-9 _ - ."),
        ))
    }
}

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::bad_request(
            "invalid_key",
            format!("keys are 1-{MAX_KEY_BYTES} bytes"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "invalid_key",
            "keys must not contain control characters",
        ));
    }
    Ok(())
}

fn path_pair(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String)> {
    let Path((map, key)) = path.map_err(|e| Error::bad_request("invalid_path", e.body_text()))?;
    check_map(&map)?;
    check_key(&key)?;
    Ok((map, key))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::bad_request(
                "body_too_large",
                format!("request bodies are limited (values: {MAX_VALUE_BYTES} bytes)"),
            )
        } else {
            Error::bad_request("invalid_body", e.body_text())
        }
    })
}

/// The body as validated JSON text.
fn json_text(bytes: &[u8]) -> Result<String> {
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(Error::bad_request(
            "body_too_large",
            format!("values are limited to {MAX_VALUE_BYTES} bytes"),
        ));
    }
    let raw: &RawValue = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    Ok(raw.get().to_string())
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_request("invalid_json", format!("the body is not valid: {e}")))
}

fn query(q: Result<Query<MapQuery>, QueryRejection>) -> Result<MapQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::bad_request("invalid_query", e.body_text()))
}

fn stale(consistency: Option<&str>) -> Result<bool> {
    match consistency {
        None | Some("linearizable") => Ok(false),
        Some("stale") => Ok(true),
        Some(other) => Err(Error::bad_request(
            "invalid_consistency",
            format!("consistency must be linearizable or stale, not {other:?}"),
        )),
    }
}

/// `?ttl=<seconds>` as milliseconds.
fn ttl_ms(raw: Option<&str>) -> Result<Option<u64>> {
    raw.map(|r| ttl_seconds_ms(r.parse().ok(), r)).transpose()
}

/// A TTL in whole seconds (`None`: not a number) as milliseconds, or `invalid_ttl`.
fn ttl_seconds_ms(seconds: Option<u64>, shown: &str) -> Result<u64> {
    match seconds {
        Some(s) if (1..=MAX_TTL_SECONDS).contains(&s) => Ok(s * 1000),
        _ => Err(Error::bad_request(
            "invalid_ttl",
            format!("ttl is whole seconds between 1 and {MAX_TTL_SECONDS}, not {shown:?}"),
        )),
    }
}

/// `If-Match: <version>` (quotes allowed) or `If-None-Match: *` (version 0: only if absent).
fn if_version(headers: &HeaderMap) -> Result<Option<u64>> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let s = v.to_str().unwrap_or("").trim().trim_matches('"');
        return s.parse::<u64>().map(Some).map_err(|_| {
            Error::bad_request(
                "invalid_version",
                "If-Match must be an entry version (a non-negative integer)",
            )
        });
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().map(str::trim).ok() == Some("*") {
            return Ok(Some(0));
        }
        return Err(Error::bad_request(
            "invalid_version",
            "only If-None-Match: * is supported",
        ));
    }
    Ok(None)
}

fn record_json(key: &str, r: &Record) -> Value {
    let value: Value = serde_json::from_str(&r.value).unwrap_or(Value::Null);
    let mut v = json!({ "key": key, "value": value, "version": r.version });
    if let Some(t) = r.expires_at_ms {
        v["expires_at_ms"] = json!(t);
    }
    v
}

fn with_etag(version: u64, body: Value) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn write_one(grid: &Grid, key: &str, op: MapOp) -> Result<OpOutcome> {
    let p = grid.partition_for(key)?;
    grid.write(p, vec![op])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Internal("no outcome".into()))
}

fn outcome_error(key: &str, expected: Option<u64>, o: OpOutcome) -> Error {
    match o {
        OpOutcome::VersionMismatch { current } => Error::VersionMismatch {
            expected: expected.unwrap_or(0),
            current,
        },
        OpOutcome::NotFound => Error::NotFound(format!("no entry {key:?}")),
        OpOutcome::Failed { code, message } => Error::ProcessorFailed { code, message },
        other => Error::Internal(format!("unexpected outcome {other:?}")),
    }
}

/// `PUT /v1/maps/{map}/{key}`.
pub async fn put_entry(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<MapQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (map, key) = path_pair(path)?;
    let q = query(q)?;
    let if_version = if_version(&headers)?;
    let ttl_ms = ttl_ms(q.ttl.as_deref())?;
    let value = json_text(&body_bytes(body)?)?;
    let op = MapOp::Put {
        map,
        key: key.clone(),
        value,
        if_version,
        ttl_ms,
    };
    match write_one(&grid, &key, op).await? {
        OpOutcome::Written { version, .. } => Ok(with_etag(version, json!({ "version": version }))),
        other => Err(outcome_error(&key, if_version, other).into()),
    }
}

/// `GET /v1/maps/{map}/{key}`.
pub async fn get_entry(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<MapQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (map, key) = path_pair(path)?;
    let q = query(q)?;
    let stale = stale(q.consistency.as_deref())?;
    if q.ttl.is_some() {
        return Err(Error::bad_request("invalid_query", "ttl applies to writes").into());
    }
    let p = grid.partition_for(&key)?;
    let rec = grid
        .read(p, vec![(map, key.clone())], stale)
        .await?
        .into_iter()
        .next()
        .flatten();
    match rec {
        Some(r) => Ok(with_etag(r.version, record_json(&key, &r))),
        None => Err(Error::NotFound(format!("no entry {key:?}")).into()),
    }
}

/// `DELETE /v1/maps/{map}/{key}`.
pub async fn delete_entry(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (map, key) = path_pair(path)?;
    let if_version = if_version(&headers)?;
    let op = MapOp::Delete {
        map,
        key: key.clone(),
        if_version,
    };
    match write_one(&grid, &key, op).await? {
        OpOutcome::Deleted { version } => Ok(Json(
            json!({ "key": key, "deleted": true, "version": version }),
        )),
        other => Err(outcome_error(&key, if_version, other).into()),
    }
}

/// Parses `{"processor": "<name>", "args": {...}}`.
fn parse_processor(bytes: &[u8]) -> Result<Processor> {
    let v: Value = parse_json(bytes)?;
    let name = v
        .get("processor")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            Error::bad_request(
                "invalid_processor",
                "the body names a processor: {\"processor\": \"...\", \"args\": {...}}",
            )
        })?;
    if !PROCESSORS.contains(&name.as_str()) {
        return Err(Error::bad_request(
            "unknown_processor",
            format!(
                "unknown processor {name:?}; known: {}",
                PROCESSORS.join(", ")
            ),
        ));
    }
    let p: Processor = serde_json::from_value(v)
        .map_err(|e| Error::bad_request("invalid_processor_args", format!("{name}: {e}")))?;
    processor::validate(&p).map_err(|r| {
        Error::bad_request(
            "invalid_processor_args",
            format!("{}: {}", r.code, r.message),
        )
    })?;
    Ok(p)
}

/// `POST /v1/maps/{map}/{key}/process`.
pub async fn process_entry(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (map, key) = path_pair(path)?;
    let processor = parse_processor(&body_bytes(body)?)?;
    let op = MapOp::Process {
        map,
        key: key.clone(),
        processor,
    };
    match write_one(&grid, &key, op).await? {
        OpOutcome::Written { version, value } => {
            let value: Value = value
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or(Value::Null);
            Ok(with_etag(
                version,
                json!({ "key": key, "value": value, "version": version }),
            ))
        }
        other => Err(outcome_error(&key, None, other).into()),
    }
}

/// One entry of a batch put.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEntry {
    key: String,
    value: Box<RawValue>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// Body of `POST /v1/batch/maps/{map}/put`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPut {
    entries: Vec<BatchEntry>,
}

/// Body of `POST /v1/batch/maps/{map}/get`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchGet {
    keys: Vec<String>,
    #[serde(default)]
    consistency: Option<String>,
}

fn batch_map(path: Result<Path<String>, PathRejection>) -> Result<String> {
    let Path(map) = path.map_err(|e| Error::bad_request("invalid_path", e.body_text()))?;
    check_map(&map)?;
    Ok(map)
}

fn check_batch_len(n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH_KEYS {
        return Err(Error::bad_request(
            "invalid_batch",
            format!("a batch holds 1-{MAX_BATCH_KEYS} keys, not {n}"),
        ));
    }
    Ok(())
}

fn error_json(e: &Error) -> Value {
    super::error::body_of(e)["error"].clone()
}

/// Groups item indexes by partition.
fn by_partition<'a>(
    grid: &Grid,
    keys: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<u32, Vec<usize>>> {
    let mut parts: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.enumerate() {
        parts.entry(grid.partition_for(k)?).or_default().push(i);
    }
    Ok(parts)
}

/// `POST /v1/batch/maps/{map}/put`: each key is written atomically on its own; results
/// come back in request order.
pub async fn batch_put(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let map = batch_map(path)?;
    let req: BatchPut = parse_json(&body_bytes(body)?)?;
    check_batch_len(req.entries.len())?;
    let mut ops = Vec::with_capacity(req.entries.len());
    for e in &req.entries {
        check_key(&e.key)?;
        if e.value.get().len() > MAX_VALUE_BYTES {
            return Err(Error::bad_request(
                "body_too_large",
                format!("values are limited to {MAX_VALUE_BYTES} bytes"),
            )
            .into());
        }
        let ttl_ms = e
            .ttl
            .map(|t| ttl_seconds_ms(Some(t), &t.to_string()))
            .transpose()?;
        ops.push(MapOp::Put {
            map: map.clone(),
            key: e.key.clone(),
            value: e.value.get().to_string(),
            if_version: None,
            ttl_ms,
        });
    }
    let parts = by_partition(&grid, req.entries.iter().map(|e| e.key.as_str()))?;
    let calls = parts.into_iter().map(|(p, idx)| {
        let ops: Vec<MapOp> = idx.iter().map(|i| ops[*i].clone()).collect();
        let grid = grid.clone();
        async move { (idx, grid.write(p, ops).await) }
    });
    let mut results = vec![Value::Null; req.entries.len()];
    for (idx, outcome) in futures::future::join_all(calls).await {
        for (n, i) in idx.iter().enumerate() {
            let key = &req.entries[*i].key;
            results[*i] = match &outcome {
                Ok(o) => match o.get(n) {
                    Some(OpOutcome::Written { version, .. }) => {
                        json!({ "key": key, "version": version })
                    }
                    other => {
                        json!({ "key": key, "error": { "code": "internal", "message": format!("{other:?}") } })
                    }
                },
                Err(e) => json!({ "key": key, "error": error_json(e) }),
            };
        }
    }
    Ok(Json(json!({ "results": results })))
}

/// `POST /v1/batch/maps/{map}/get`.
pub async fn batch_get(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let map = batch_map(path)?;
    let req: BatchGet = parse_json(&body_bytes(body)?)?;
    check_batch_len(req.keys.len())?;
    for k in &req.keys {
        check_key(k)?;
    }
    let stale = stale(req.consistency.as_deref())?;
    let parts = by_partition(&grid, req.keys.iter().map(String::as_str))?;
    let calls = parts.into_iter().map(|(p, idx)| {
        let keys: Vec<(String, String)> = idx
            .iter()
            .map(|i| (map.clone(), req.keys[*i].clone()))
            .collect();
        let grid = grid.clone();
        async move { (idx, grid.read(p, keys, stale).await) }
    });
    let mut entries = vec![Value::Null; req.keys.len()];
    for (idx, records) in futures::future::join_all(calls).await {
        for (n, i) in idx.iter().enumerate() {
            let key = &req.keys[*i];
            entries[*i] = match &records {
                Ok(r) => match r.get(n).cloned().flatten() {
                    Some(rec) => {
                        let mut v = record_json(key, &rec);
                        v["found"] = json!(true);
                        v
                    }
                    None => json!({ "key": key, "found": false }),
                },
                Err(e) => json!({ "key": key, "error": error_json(e) }),
            };
        }
    }
    Ok(Json(json!({ "entries": entries })))
}
