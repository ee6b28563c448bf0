//! `POST /internal/v1/peer`: a MessagePack batch of [`PeerRequest`]s from another member,
//! answered in order. Requests of one batch are served concurrently.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::cluster::Grid;
use crate::storage::{decode, encode};
use crate::transport::PeerRequest;

/// Serves one batch.
pub async fn peer(State(grid): State<Arc<Grid>>, body: Bytes) -> Response {
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
    let answers = futures::future::join_all(reqs.into_iter().map(|r| grid.peers.handle(r))).await;
    match encode(&answers) {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/msgpack")],
            bytes,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
