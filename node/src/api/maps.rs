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
use serde_json::Value;

use devicegrid_proto::maps::{
    BatchGet, BatchGetResult, BatchGetResults, BatchPut, BatchPutResult, BatchPutResults,
    Consistency, Deleted, Entry, Written, MAX_BATCH_KEYS, PROCESSORS,
};
use devicegrid_proto::ErrorCode;

use super::error::detail_of;
use super::ApiError;
use crate::cluster::Grid;
use crate::structures::check::{check_key, check_map, json_text, MAX_TTL_SECONDS};
use crate::structures::map::{MapOp, OpOutcome, Record, MAX_VALUE_BYTES};
use crate::structures::processor::{self, Processor};
use crate::{Error, Result};

/// Query parameters of map routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapQuery {
    /// `linearizable` (default) or `stale`.
    consistency: Option<String>,
    /// Time to live in seconds (writes).
    ttl: Option<String>,
}

fn path_pair(path: Result<Path<(String, String)>, PathRejection>) -> Result<(String, String)> {
    let Path((map, key)) =
        path.map_err(|e| Error::bad_request(ErrorCode::InvalidPath, e.body_text()))?;
    check_map(&map)?;
    check_key(&key)?;
    Ok((map, key))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::bad_request(
                ErrorCode::BodyTooLarge,
                format!("request bodies are limited (values: {MAX_VALUE_BYTES} bytes)"),
            )
        } else {
            Error::bad_request(ErrorCode::InvalidBody, e.body_text())
        }
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::bad_request(
            ErrorCode::InvalidJson,
            format!("the body is not valid: {e}"),
        )
    })
}

fn query(q: Result<Query<MapQuery>, QueryRejection>) -> Result<MapQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::bad_request(ErrorCode::InvalidQuery, e.body_text()))
}

fn stale(consistency: Option<&str>) -> Result<bool> {
    match consistency.map(|c| (c, Consistency::parse(c))) {
        None | Some((_, Some(Consistency::Linearizable))) => Ok(false),
        Some((_, Some(Consistency::Stale))) => Ok(true),
        Some((other, None)) => Err(Error::bad_request(
            ErrorCode::InvalidConsistency,
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
            ErrorCode::InvalidTtl,
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
                ErrorCode::InvalidVersion,
                "If-Match must be an entry version (a non-negative integer)",
            )
        });
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        if v.to_str().map(str::trim).ok() == Some("*") {
            return Ok(Some(0));
        }
        return Err(Error::bad_request(
            ErrorCode::InvalidVersion,
            "only If-None-Match: * is supported",
        ));
    }
    Ok(None)
}

/// A stored value as its JSON text (checked JSON when written), returned verbatim.
fn value_of(text: &str) -> Box<RawValue> {
    RawValue::from_string(text.to_string()).unwrap_or_else(|_| null())
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_default()
}

fn entry(key: &str, r: &Record) -> Entry {
    Entry {
        key: key.to_string(),
        value: value_of(&r.value),
        version: r.version,
        expires_at_ms: r.expires_at_ms,
    }
}

fn with_etag(version: u64, body: impl serde::Serialize) -> Response {
    let mut resp = Json(body).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&format!("\"{version}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

async fn write_one(grid: &Grid, key: &str, op: MapOp) -> Result<OpOutcome> {
    let p = grid.router.partition_for(key)?;
    grid.router
        .write(p, vec![op])
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
        OpOutcome::Written { version, .. } => Ok(with_etag(version, Written { version })),
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
        return Err(Error::bad_request(ErrorCode::InvalidQuery, "ttl applies to writes").into());
    }
    let p = grid.router.partition_for(&key)?;
    let rec = grid
        .router
        .read(p, vec![(map, key.clone())], stale)
        .await?
        .into_iter()
        .next()
        .flatten();
    match rec {
        Some(r) => Ok(with_etag(r.version, entry(&key, &r))),
        None => Err(Error::NotFound(format!("no entry {key:?}")).into()),
    }
}

/// `DELETE /v1/maps/{map}/{key}`.
pub async fn delete_entry(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Deleted>, ApiError> {
    let (map, key) = path_pair(path)?;
    let if_version = if_version(&headers)?;
    let op = MapOp::Delete {
        map,
        key: key.clone(),
        if_version,
    };
    match write_one(&grid, &key, op).await? {
        OpOutcome::Deleted { version } => Ok(Json(Deleted {
            key,
            deleted: true,
            version,
        })),
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
                ErrorCode::InvalidProcessor,
                "the body names a processor: {\"processor\": \"...\", \"args\": {...}}",
            )
        })?;
    if !PROCESSORS.contains(&name.as_str()) {
        return Err(Error::bad_request(
            ErrorCode::UnknownProcessor,
            format!(
                "unknown processor {name:?}; known: {}",
                PROCESSORS.join(", ")
            ),
        ));
    }
    let p: Processor = serde_json::from_value(v)
        .map_err(|e| Error::bad_request(ErrorCode::InvalidProcessorArgs, format!("{name}: {e}")))?;
    processor::validate(&p).map_err(|r| {
        Error::bad_request(
            ErrorCode::InvalidProcessorArgs,
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
        OpOutcome::Written { version, value } => Ok(with_etag(
            version,
            Entry {
                key,
                value: value.as_deref().map_or_else(null, value_of),
                version,
                expires_at_ms: None,
            },
        )),
        other => Err(outcome_error(&key, None, other).into()),
    }
}

fn batch_map(path: Result<Path<String>, PathRejection>) -> Result<String> {
    let Path(map) = path.map_err(|e| Error::bad_request(ErrorCode::InvalidPath, e.body_text()))?;
    check_map(&map)?;
    Ok(map)
}

fn check_batch_len(n: usize) -> Result<()> {
    if n == 0 || n > MAX_BATCH_KEYS {
        return Err(Error::bad_request(
            ErrorCode::InvalidBatch,
            format!("a batch holds 1-{MAX_BATCH_KEYS} keys, not {n}"),
        ));
    }
    Ok(())
}

/// Groups item indexes by partition.
fn by_partition<'a>(
    grid: &Grid,
    keys: impl Iterator<Item = &'a str>,
) -> Result<BTreeMap<u32, Vec<usize>>> {
    let mut parts: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.enumerate() {
        parts
            .entry(grid.router.partition_for(k)?)
            .or_default()
            .push(i);
    }
    Ok(parts)
}

/// `POST /v1/batch/maps/{map}/put`: each key is written atomically on its own; results
/// come back in request order.
pub async fn batch_put(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchPutResults>, ApiError> {
    let map = batch_map(path)?;
    let req: BatchPut = parse_json(&body_bytes(body)?)?;
    check_batch_len(req.entries.len())?;
    let mut ops = Vec::with_capacity(req.entries.len());
    for e in &req.entries {
        check_key(&e.key)?;
        let value = json_text(e.value.get().as_bytes())?;
        let ttl_ms = e
            .ttl
            .map(|t| ttl_seconds_ms(Some(t), &t.to_string()))
            .transpose()?;
        ops.push(MapOp::Put {
            map: map.clone(),
            key: e.key.clone(),
            value,
            if_version: None,
            ttl_ms,
        });
    }
    let parts = by_partition(&grid, req.entries.iter().map(|e| e.key.as_str()))?;
    let calls = parts.into_iter().map(|(p, idx)| {
        let ops: Vec<MapOp> = idx.iter().map(|i| ops[*i].clone()).collect();
        let grid = grid.clone();
        async move { (idx, grid.router.write(p, ops).await) }
    });
    let mut results: Vec<BatchPutResult> = req
        .entries
        .iter()
        .map(|e| BatchPutResult {
            key: e.key.clone(),
            version: None,
            error: None,
        })
        .collect();
    for (idx, outcome) in futures::future::join_all(calls).await {
        for (n, i) in idx.iter().enumerate() {
            let r = &mut results[*i];
            match &outcome {
                Ok(o) => match o.get(n) {
                    Some(OpOutcome::Written { version, .. }) => r.version = Some(*version),
                    other => {
                        let e = Error::Internal(format!("unexpected outcome {other:?}"));
                        r.error = Some(detail_of(&e));
                    }
                },
                Err(e) => r.error = Some(detail_of(e)),
            }
        }
    }
    Ok(Json(BatchPutResults { results }))
}

/// `POST /v1/batch/maps/{map}/get`.
pub async fn batch_get(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchGetResults>, ApiError> {
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
        async move { (idx, grid.router.read(p, keys, stale).await) }
    });
    let mut entries: Vec<BatchGetResult> = req
        .keys
        .iter()
        .map(|key| BatchGetResult {
            key: key.clone(),
            found: None,
            value: None,
            version: None,
            expires_at_ms: None,
            error: None,
        })
        .collect();
    for (idx, records) in futures::future::join_all(calls).await {
        for (n, i) in idx.iter().enumerate() {
            let r = &mut entries[*i];
            match &records {
                Ok(found) => {
                    let rec = found.get(n).cloned().flatten();
                    r.found = Some(rec.is_some());
                    if let Some(rec) = rec {
                        r.value = Some(value_of(&rec.value));
                        r.version = Some(rec.version);
                        r.expires_at_ms = rec.expires_at_ms;
                    }
                }
                Err(e) => r.error = Some(detail_of(e)),
            }
        }
    }
    Ok(Json(BatchGetResults { entries }))
}
