//! `POST /internal/v1/peer` on the peer port: a MessagePack batch of [`PeerRequest`]s from
//! another member. Requests of one batch are served concurrently and each answer is sent as
//! soon as it is ready ([`crate::transport::frames`]).
//!
//! Bodies are bounded twice: each at [`MAX_PEER_BODY_BYTES`] (a batch is at most 8 MiB plus
//! one larger request, a forwarded client batch of up to 16 MiB), and all bodies being read
//! or served at once at [`PEER_BODIES_IN_FLIGHT`]: a request waits for room before its body
//! is read, so many large batches cannot add up; the room is held until the last answer of
//! the batch is sent.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cluster::Grid;
use crate::storage::{decode, encode};
use crate::transport::frames::frame;
use crate::transport::{Conn, PeerRequest};

/// Largest peer request body, in bytes.
pub const MAX_PEER_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Bytes of peer request bodies being read or served at once.
pub const PEER_BODIES_IN_FLIGHT: usize = 128 * 1024 * 1024;

/// Room for peer request bodies.
#[derive(Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl Default for BodyBudget {
    fn default() -> Self {
        BodyBudget(Arc::new(Semaphore::new(PEER_BODIES_IN_FLIGHT)))
    }
}

/// A request's share of [`BodyBudget`], held until its answers are all sent.
#[derive(Clone)]
pub struct Room(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// Holds a request until its declared body fits the budget; refuses bodies without a
/// length or over the limit before reading them.
pub async fn bounded(State(budget): State<BodyBudget>, mut req: Request, next: Next) -> Response {
    let len = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let len = match len {
        None => {
            return (
                StatusCode::LENGTH_REQUIRED,
                "peer requests declare their length",
            )
                .into_response()
        }
        Some(n) if n > MAX_PEER_BODY_BYTES => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("peer requests are limited to {MAX_PEER_BODY_BYTES} bytes"),
            )
                .into_response()
        }
        Some(n) => n,
    };
    // At least one permit, so empty bodies also take their turn; the limit fits in u32.
    let Ok(room) = budget.0.acquire_many_owned(len.max(1) as u32).await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    req.extensions_mut().insert(Room(Arc::new(room)));
    next.run(req).await
}

/// Serves one batch from the member the connection's certificate names.
pub async fn peer(
    State(grid): State<Arc<Grid>>,
    Extension(conn): Extension<Conn>,
    Extension(room): Extension<Room>,
    body: Bytes,
) -> Response {
    // The peer port admits members only; a connection without one never gets here.
    let Some(member) = conn.member else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let reqs: Vec<PeerRequest> = match decode(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("undecodable peer batch: {e}"),
            )
                .into_response()
        }
    };
    let n = reqs.len().max(1);
    let answers = futures::stream::iter(reqs.into_iter().enumerate())
        .map(move |(i, r)| {
            let grid = grid.clone();
            async move { (i, grid.peers.handle(member, r).await) }
        })
        .buffer_unordered(n)
        .filter_map(move |(i, answer)| {
            // The room goes with the stream: released after the last answer.
            let _room = &room;
            let framed = match encode(&answer) {
                Ok(bytes) => Some(Ok::<_, std::convert::Infallible>(Bytes::from(frame(
                    i as u32, &bytes,
                )))),
                Err(e) => {
                    // The caller sees this request unanswered and fails it.
                    tracing::error!(error = %e, "encoding a peer answer");
                    None
                }
            };
            std::future::ready(framed)
        });
    (
        [(header::CONTENT_TYPE, "application/x-devicegrid-frames")],
        axum::body::Body::from_stream(answers),
    )
        .into_response()
}
