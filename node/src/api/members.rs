//! Members: list, one member's state and replicas left, and drain.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use devicegrid_proto::ErrorCode;

use super::ApiError;
use crate::cluster::Grid;
use crate::raft::NodeId;
use crate::structures::meta::MetaCommand;
use crate::{Error, Result};

fn member_id(path: Result<Path<String>, PathRejection>) -> Result<NodeId> {
    let Path(id) = path.map_err(|e| Error::bad_request(ErrorCode::InvalidPath, e.body_text()))?;
    id.parse::<NodeId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Error::bad_request(
                ErrorCode::InvalidMemberId,
                format!("member id {id:?} is not a positive number"),
            )
        })
}

/// `GET /v1/members`: every registered member with its state and replicas.
pub async fn list(State(grid): State<Arc<Grid>>) -> Response {
    Json(grid.views.cluster_view().await.members).into_response()
}

/// `GET /v1/members/{id}`: state (`joining`, `active`, `draining`, `decommissioned`),
/// replicas left (`partitions_held`) and leaderships.
pub async fn get(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = member_id(path)?;
    match grid.views.member_view(id).await {
        Some(m) => Ok(Json(m).into_response()),
        None => Err(Error::NotFound(format!("member {id} is not a member")).into()),
    }
}

/// `POST /v1/members/{id}/drain`: moves every replica off the member; it is then
/// decommissioned and can be stopped. 202 with the member's view; 409 `drain_refused` when
/// too few active members would be left for the replication factor.
pub async fn drain(
    State(grid): State<Arc<Grid>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = member_id(path)?;
    // Decided by the metadata group in log order, not from this member's possibly stale
    // view: "not a member" (404 `member_not_found`) is an answer the operator shrinks on.
    grid.meta.commit(MetaCommand::Drain { id }).await?;
    let view = grid.views.member_view(id).await;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
