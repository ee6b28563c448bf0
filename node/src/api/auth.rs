//! Authentication and authorization of the client port. Every routed request passes
//! [`authorize`]: it finds the [`Permission`] the route needs ([`permission`], one table for
//! every route; a route missing from it is refused, never let through), the user behind the
//! bearer token (users live in the metadata group), and whether the user's roles allow it.
//! `/healthz` and `/readyz` need nothing (probes). With `auth_enabled` off every request
//! runs as `anonymous`, who may do everything.
//!
//! The same gate applies the request-rate limit per client identity ([`Gate`]): the user,
//! or the caller's address when authentication is off; over the rate, 429 `rate_limited`.

use std::num::NonZeroU32;
use std::sync::Arc;

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use devicegrid_proto::auth::{Action, Kind, Permission};
use devicegrid_proto::ErrorCode;

use super::ApiError;
use crate::cluster::Grid;
use crate::structures::auth::{token_sha256, Principal};
use crate::transport::Conn;
use crate::Error;

/// What a route needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    /// Nothing: anyone (health probes).
    Public,
    /// Any user (who am I).
    AnyUser,
    /// A user allowed this.
    Needs(Permission),
}

/// What the route `method route` needs (`param` reads its path parameters); `Err` for a
/// route the table lacks.
pub fn access(
    method: &Method,
    route: &str,
    param: impl Fn(&str) -> Option<String>,
) -> Result<Access, String> {
    let need = |action, kind, name: Option<String>| {
        Ok(Access::Needs(Permission {
            action,
            kind,
            name: name.unwrap_or_else(|| "*".into()),
        }))
    };
    match (method.clone(), route) {
        (Method::GET, "/healthz" | "/readyz") => Ok(Access::Public),
        (Method::GET, "/v1/auth/whoami") => Ok(Access::AnyUser),
        (Method::GET, "/v1/maps/{map}/{key}") | (Method::POST, "/v1/batch/maps/{map}/get") => {
            need(Action::Read, Kind::Maps, param("map"))
        }
        (Method::PUT | Method::DELETE, "/v1/maps/{map}/{key}")
        | (Method::POST, "/v1/maps/{map}/{key}/process" | "/v1/batch/maps/{map}/put") => {
            need(Action::Write, Kind::Maps, param("map"))
        }
        (Method::GET, "/v1/members" | "/v1/members/{id}") => {
            need(Action::Read, Kind::Members, param("id"))
        }
        (Method::POST, "/v1/members/{id}/drain") => need(Action::Admin, Kind::Members, param("id")),
        (Method::GET, "/v1/cluster" | "/v1/partitions" | "/metrics") => {
            need(Action::Read, Kind::Cluster, None)
        }
        (Method::GET, "/v1/admin/users" | "/v1/admin/roles") => {
            need(Action::Admin, Kind::Users, None)
        }
        (
            Method::GET | Method::PUT | Method::DELETE,
            "/v1/admin/users/{name}" | "/v1/admin/roles/{name}",
        )
        | (Method::POST, "/v1/admin/users/{name}/token") => {
            need(Action::Admin, Kind::Users, param("name"))
        }
        (m, r) => Err(format!("{m} {r} has no entry in the access table")),
    }
}

/// The bearer token of a request.
fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthenticated(message: &str) -> Response {
    ApiError(Error::Refused {
        code: ErrorCode::Unauthenticated,
        message: message.into(),
    })
    .into_response()
}

/// Requests per identity.
type Limiter = governor::DefaultKeyedRateLimiter<String>;

/// What [`authorize`] needs: the grid (users, roles, settings) and the rate limiter.
#[derive(Clone)]
pub struct Gate {
    grid: Arc<Grid>,
    limiter: Option<Arc<Limiter>>,
}

impl Gate {
    /// The gate of `grid`'s client port.
    pub fn new(grid: Arc<Grid>) -> Gate {
        let c = &grid.config;
        let limiter = NonZeroU32::new(c.rate_limit_per_second).map(|rate| {
            let burst = c.rate_limit_burst.and_then(NonZeroU32::new).unwrap_or(rate);
            Arc::new(Limiter::keyed(
                governor::Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Gate { grid, limiter }
    }

    /// Whether `identity` may make one more request now.
    fn admit(&self, identity: &str) -> bool {
        let Some(l) = &self.limiter else {
            return true;
        };
        // Identities idle long enough to be full again are forgotten now and then.
        if l.len() > 10_000 {
            l.retain_recent();
        }
        l.check_key(&identity.to_string()).is_ok()
    }
}

/// The middleware (a route layer: the route is matched before it runs).
pub async fn authorize(
    State(gate): State<Gate>,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Response {
    let grid = &gate.grid;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let needed = match access(req.method(), &route, param) {
        Ok(n) => n,
        Err(why) => {
            tracing::error!("{why}");
            return ApiError(Error::Refused {
                code: ErrorCode::Forbidden,
                message: "this route is not open to anyone".into(),
            })
            .into_response();
        }
    };
    // Probes are neither authenticated nor rate limited.
    if needed == Access::Public {
        return next.run(req).await;
    }
    let principal = if !grid.config.auth_enabled {
        Principal::anonymous()
    } else {
        let Some(token) = bearer(&req) else {
            return unauthenticated("send Authorization: Bearer <token>");
        };
        match Principal::by_token(&grid.groups.meta_state(), &token_sha256(token)) {
            Some(p) => p,
            None => return unauthenticated("the token belongs to no user"),
        }
    };
    if let Access::Needs(p) = &needed {
        if !principal.allows(p) {
            return ApiError(Error::Refused {
                code: ErrorCode::Forbidden,
                message: format!(
                    "{} may not {} {} {}",
                    principal.user, p.action, p.kind, p.name
                ),
            })
            .into_response();
        }
    }
    let identity = match (grid.config.auth_enabled, req.extensions().get::<Conn>()) {
        (false, Some(conn)) => conn.remote.ip().to_string(),
        _ => principal.user.clone(),
    };
    if !gate.admit(&identity) {
        return ApiError(Error::Refused {
            code: ErrorCode::RateLimited,
            message: format!("{identity} is over its request rate"),
        })
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_outside_the_table_are_refused_not_opened() {
        let none = |_: &str| None;
        assert!(access(&Method::GET, "/v1/secret", none).is_err());
        assert!(access(&Method::PATCH, "/v1/maps/{map}/{key}", none).is_err());
        assert_eq!(access(&Method::GET, "/healthz", none), Ok(Access::Public));
        let map = |n: &str| (n == "map").then(|| "devices".to_string());
        assert_eq!(
            access(&Method::DELETE, "/v1/maps/{map}/{key}", map),
            Ok(Access::Needs(Permission {
                action: Action::Write,
                kind: Kind::Maps,
                name: "devices".into()
            }))
        );
    }
}
