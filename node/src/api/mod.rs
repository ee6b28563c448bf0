//! The HTTP endpoint of a member (axum): the public JSON API, health and metrics, and the
//! internal peer endpoint, all on one port.
//!
//! | route | handler |
//! | --- | --- |
//! | `PUT/GET/DELETE /v1/maps/{map}/{key}` | [`maps`] |
//! | `POST /v1/maps/{map}/{key}/process` | [`maps`]: entry processors |
//! | `POST /v1/batch/maps/{map}/put`, `.../get` | [`maps`]: many keys at once |
//! | `GET /v1/members`, `GET /v1/members/{id}`, `POST /v1/members/{id}/drain` | [`members`] |
//! | `GET /v1/cluster`, `/v1/partitions`, `/healthz`, `/readyz`, `/metrics` | [`cluster`] |
//! | `POST /internal/v1/peer` | [`internal`]: Raft and forwarding between members |

pub mod cluster;
pub mod error;
pub mod internal;
pub mod maps;
pub mod members;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::cluster::Grid;
use crate::structures::map::MAX_VALUE_BYTES;
pub use error::ApiError;

/// Largest accepted batch request body, in bytes.
pub const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest peer request body (snapshot chunks are 4 MiB), in bytes.
const MAX_PEER_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The member's router.
pub fn router(grid: Arc<Grid>) -> Router {
    let public = Router::new()
        .route(
            "/v1/maps/{map}/{key}",
            get(maps::get_entry)
                .put(maps::put_entry)
                .delete(maps::delete_entry),
        )
        .route("/v1/maps/{map}/{key}/process", post(maps::process_entry))
        .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES))
        .merge(
            Router::new()
                .route("/v1/batch/maps/{map}/put", post(maps::batch_put))
                .route("/v1/batch/maps/{map}/get", post(maps::batch_get))
                .layer(DefaultBodyLimit::max(MAX_BATCH_BODY_BYTES)),
        )
        .route("/v1/members", get(members::list))
        .route("/v1/members/{id}", get(members::get))
        .route("/v1/members/{id}/drain", post(members::drain))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/partitions", get(cluster::partitions))
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz))
        .route("/metrics", get(cluster::metrics))
        .layer(middleware::from_fn_with_state(grid.clone(), observe));
    Router::new()
        .merge(public)
        .route(
            crate::transport::PEER_PATH,
            post(internal::peer).layer(DefaultBodyLimit::max(MAX_PEER_BODY_BYTES)),
        )
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(grid)
}

/// Counts requests and their latency by route.
async fn observe(State(grid): State<Arc<Grid>>, req: Request, next: Next) -> Response {
    let op = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| format!("{} {}", req.method(), p.as_str()))
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let resp = next.run(req).await;
    grid.metrics
        .observe_request(&op, resp.status().as_u16(), start.elapsed());
    resp
}

/// Serves `grid` on `listener` until the grid stops.
pub async fn serve(grid: Arc<Grid>, listener: TcpListener) -> std::io::Result<()> {
    let token = grid.tasks().token().clone();
    axum::serve(listener, router(grid))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}
