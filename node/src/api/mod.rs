//! The HTTP endpoints of a member (axum): the client port (the public JSON API, health and
//! metrics) and the peer port (mutual TLS, members only: Raft and forwarding).
//!
//! | route | handler |
//! | --- | --- |
//! | `PUT/GET/DELETE /v1/maps/{map}/{key}` | [`maps`] |
//! | `POST /v1/maps/{map}/{key}/process` | [`maps`]: entry processors |
//! | `POST /v1/batch/maps/{map}/put`, `.../get` | [`maps`]: many keys at once |
//! | `GET /v1/members`, `GET /v1/members/{id}`, `POST /v1/members/{id}/drain` | [`members`] |
//! | `GET /v1/cluster`, `/v1/partitions`, `/healthz`, `/readyz`, `/metrics` | [`cluster`] |
//! | `GET /v1/auth/whoami`, `/v1/admin/users[/{name}[/token]]`, `/v1/admin/roles[/{name}]` | [`admin`] |
//!
//! Every client route passes [`auth::authorize`] (bearer token, then the route's permission).
//! | `POST /internal/v1/peer` (peer port) | [`internal`]: Raft and forwarding between members |

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod error;
pub mod internal;
pub mod maps;
pub mod members;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::cluster::Grid;
use crate::structures::map::MAX_VALUE_BYTES;
use crate::transport::server;
use crate::transport::tls::{client_port, ClientPortCert};
use crate::transport::{Admission, Limits};
pub use error::ApiError;

/// Largest accepted batch request body, in bytes.
pub const MAX_BATCH_BODY_BYTES: usize = 16 * 1024 * 1024;

/// The client port's router.
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
        .route("/v1/auth/whoami", get(admin::whoami))
        .route("/v1/admin/users", get(admin::list_users))
        .route(
            "/v1/admin/users/{name}",
            get(admin::get_user)
                .put(admin::put_user)
                .delete(admin::delete_user),
        )
        .route("/v1/admin/users/{name}/token", post(admin::renew_token))
        .route("/v1/admin/roles", get(admin::list_roles))
        .route(
            "/v1/admin/roles/{name}",
            get(admin::get_role)
                .put(admin::put_role)
                .delete(admin::delete_role),
        )
        .route_layer(middleware::from_fn_with_state(
            auth::Gate::new(grid.clone()),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(grid.clone(), observe));
    Router::new()
        .merge(public)
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(grid)
}

/// The peer port's router: one route, bodies bounded one by one and all together.
pub fn peer_router(grid: Arc<Grid>) -> Router {
    Router::new()
        .route(
            crate::transport::PEER_PATH,
            post(internal::peer)
                .layer(DefaultBodyLimit::max(internal::MAX_PEER_BODY_BYTES))
                .layer(middleware::from_fn_with_state(
                    internal::BodyBudget::default(),
                    internal::bounded,
                )),
        )
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

/// Serves `grid`'s client API on `client` and its peer endpoint on `peer` until the grid
/// stops.
pub async fn serve(grid: Arc<Grid>, client: TcpListener, peer: TcpListener) -> crate::Result<()> {
    let c = &grid.config;
    let cert = match (&c.tls_cert, &c.tls_key) {
        (Some(cert), Some(key)) => Some(ClientPortCert::Files { cert, key }),
        _ if c.tls_self_issued => Some(ClientPortCert::Member(grid.peer_tls.member_cert.clone())),
        _ => None,
    };
    let client_tls = match cert {
        Some(cert) => Some(client_port(cert, c.tls_client_ca.as_ref())?),
        None => None,
    };
    let header_timeout = Duration::from_millis(c.header_timeout_ms);
    let client_limits = Limits {
        max_connections: c.max_connections,
        header_timeout,
    };
    let peer_limits = Limits {
        max_connections: c.max_peer_connections,
        header_timeout,
    };
    let tasks = grid.tasks().clone();
    tokio::join!(
        server::serve(
            client,
            router(grid.clone()),
            Admission::Anyone(client_tls),
            client_limits,
            tasks.clone(),
        ),
        server::serve(
            peer,
            peer_router(grid.clone()),
            Admission::Members(grid.peer_tls.clone()),
            peer_limits,
            tasks,
        ),
    );
    Ok(())
}
