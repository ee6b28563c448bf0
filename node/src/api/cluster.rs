//! Cluster view, health, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use devicegrid_proto::views::{PartitionView, ReadyView};

use crate::cluster::Grid;

/// `GET /v1/cluster`: members and partition health, from every member's own report.
pub async fn cluster(State(grid): State<Arc<Grid>>) -> Response {
    Json(grid.views.cluster_view().await).into_response()
}

/// `GET /healthz`: the process serves HTTP and every hosted Raft group runs (503 when a
/// group stopped on a storage failure: a restart brings it back); `storage` says whether
/// the disk keeps its reserve (`low`: writes are refused until space is freed, no restart
/// needed).
pub async fn healthz(State(grid): State<Arc<Grid>>) -> Response {
    let stopped: Vec<String> = grid
        .groups
        .all()
        .iter()
        .filter(|g| g.raft.metrics().borrow().running_state.is_err())
        .map(|g| g.id.to_string())
        .collect();
    let space = &grid.storage().space;
    let body = json!({
        "status": if stopped.is_empty() { "ok" } else { "failed" },
        "member": grid.id,
        "storage": if space.low() { "low" } else { "ok" },
        "disk_free_bytes": space.free(),
        "groups_stopped": stopped,
    });
    let status = if stopped.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /readyz`: bootstrapped, and every partition this member holds has a usable leader.
pub async fn readyz(State(grid): State<Arc<Grid>>) -> Response {
    let s = grid.views.report();
    let body = ReadyView {
        ready: s.ready,
        member: grid.id,
        bootstrapped: grid.groups.meta_state().bootstrapped(),
        partitions_held: s.held.len(),
        partitions_led: s.led.len(),
        partitions_without_leader: s.leaderless.len(),
    };
    let code = if s.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /metrics`: OpenMetrics text.
pub async fn metrics(State(grid): State<Arc<Grid>>) -> Response {
    grid.metrics.observe(&grid.stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        grid.metrics.encode(),
    )
        .into_response()
}

/// `GET /v1/partitions`: the partition table: replicas (preferred leader first), version,
/// and the move in progress, if any.
pub async fn partitions(State(grid): State<Arc<Grid>>) -> Response {
    let meta = grid.groups.meta_state();
    let table: Vec<PartitionView> = (0..meta.partition_count)
        .map(|p| PartitionView {
            partition: p,
            replicas: meta.replicas(p).to_vec(),
            version: meta.version(p),
            moving: meta.moves.get(&p).cloned(),
        })
        .collect();
    Json(table).into_response()
}
