//! The one place where errors become HTTP statuses:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::Error;

/// An [`Error`] on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// Status code of an error.
pub fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::BadRequest {
            code: "body_too_large",
            ..
        } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::BadRequest {
            code: "method_not_allowed",
            ..
        } => StatusCode::METHOD_NOT_ALLOWED,
        Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::Refused { code, .. } if code == "member_not_found" => StatusCode::NOT_FOUND,
        Error::VersionMismatch { .. } => StatusCode::PRECONDITION_FAILED,
        Error::ProcessorFailed { .. } | Error::Refused { .. } => StatusCode::CONFLICT,
        Error::NotLeader { .. } | Error::NotDelivered { .. } | Error::Unavailable { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
        Error::Storage(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error.
pub fn body_of(e: &Error) -> serde_json::Value {
    let mut inner = json!({ "code": e.code(), "message": e.to_string() });
    if let Error::VersionMismatch { current, .. } = e {
        inner["current_version"] = json!(current);
    }
    if status_of(e) == StatusCode::SERVICE_UNAVAILABLE {
        inner["retry_after_ms"] = json!(1000);
    }
    json!({ "error": inner })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %self.0, "request failed");
        }
        let mut resp = (status, Json(body_of(&self.0))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// JSON 404 for unknown routes.
pub async fn no_route() -> ApiError {
    ApiError(Error::NotFound("no such route".into()))
}

/// JSON 405 for known routes with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError(Error::bad_request(
        "method_not_allowed",
        "method not allowed on this route",
    ))
}
