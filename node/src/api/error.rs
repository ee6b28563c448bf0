//! The one place where errors become HTTP answers: the status is the code's
//! ([`ErrorCode::status`]), the body `{"error": {"code", "message", ...}}` with the routing
//! facts a smart client needs, and 503s carry `Retry-After`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use devicegrid_proto::{ErrorBody, ErrorCode, ErrorDetail};

use crate::Error;

/// How long a client should wait before retrying a 503.
const RETRY_AFTER_MS: u64 = 1000;

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
    StatusCode::from_u16(e.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The inside of an error's body.
pub fn detail_of(e: &Error) -> ErrorDetail {
    let mut d = ErrorDetail::new(e.code(), e.to_string());
    if let Error::VersionMismatch { current, .. } = e.inner() {
        d.current_version = Some(*current);
    }
    if e.code().retryable() {
        d.retry_after_ms = Some(RETRY_AFTER_MS);
    }
    if let Error::Routed { routing, .. } = e {
        d.routing = routing.clone();
    }
    d
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() && !self.0.code().retryable() {
            tracing::error!(error = %self.0, "request failed");
        }
        let retry = self.0.code().retryable();
        let mut resp = (
            status,
            Json(ErrorBody {
                error: detail_of(&self.0),
            }),
        )
            .into_response();
        if retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if self.0.code() == ErrorCode::Unauthenticated {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"devicegrid\""),
            );
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
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    ))
}

#[cfg(test)]
mod tests {
    use devicegrid_proto::{LeaderHint, Routing};

    use super::*;
    use crate::raft::GroupId;

    async fn answer(e: Error) -> (StatusCode, Option<String>, ErrorBody) {
        let resp = ApiError(e).into_response();
        let status = resp.status();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            retry,
            serde_json::from_slice(&bytes).expect("error body"),
        )
    }

    #[tokio::test]
    async fn partition_errors_carry_routing_facts() {
        let routing = Routing {
            partition: Some(12),
            leader: Some(LeaderHint {
                id: 3,
                address: Some("10.0.0.3:7001".into()),
            }),
            partition_version: Some(4),
            table_version: Some(57),
        };
        let e = Error::Unavailable {
            group: GroupId::Partition(12),
            message: "no leader answered".into(),
        }
        .routed(routing.clone());
        let (status, retry, body) = answer(e).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body.error.code, ErrorCode::Unavailable);
        assert_eq!(body.error.routing, routing);
        assert_eq!(body.error.retry_after_ms, Some(RETRY_AFTER_MS));

        let e = Error::OutcomeUnknown {
            group: GroupId::Partition(12),
            message: "no commit".into(),
        }
        .routed(routing.clone());
        let (status, retry, body) = answer(e).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!((retry, body.error.retry_after_ms), (None, None));
        assert_eq!(body.error.routing.leader, routing.leader);
    }

    #[tokio::test]
    async fn statuses_follow_the_codes() {
        let cases = [
            (
                Error::bad_request(ErrorCode::BodyTooLarge, "big"),
                413,
                ErrorCode::BodyTooLarge,
            ),
            (
                Error::VersionMismatch {
                    expected: 2,
                    current: None,
                },
                412,
                ErrorCode::VersionMismatch,
            ),
            (
                Error::Refused {
                    code: ErrorCode::MemberNotFound,
                    message: "no".into(),
                },
                404,
                ErrorCode::MemberNotFound,
            ),
            (
                Error::Overloaded {
                    group: GroupId::Partition(1),
                    message: "full".into(),
                },
                503,
                ErrorCode::Overloaded,
            ),
            (Error::Internal("x".into()), 500, ErrorCode::Internal),
        ];
        for (e, status, code) in cases {
            let (s, _, body) = answer(e).await;
            assert_eq!((s.as_u16(), body.error.code), (status, code));
        }
        let (_, _, body) = answer(Error::VersionMismatch {
            expected: 2,
            current: Some(5),
        })
        .await;
        assert_eq!(body.error.current_version, Some(Some(5)));
    }
}
