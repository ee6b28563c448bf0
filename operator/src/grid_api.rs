//! The client of a grid's admin API: the grid's own view (`GET /v1/cluster`) and drain
//! requests (`POST /v1/members/{id}/drain`).
//!
//! A grid with `spec.tls` is asked over HTTPS, trusting only the grid's CA ([`Access::ca`]);
//! one with `spec.auth` with the bootstrap admin token as bearer token ([`Access::token`]).
//! HTTP clients are kept per CA, so connections are reused across passes.
//!
//! Answers are the wire contract's types ([`devicegrid_proto`]), so the operator reads exactly
//! what members serve; what a drain answer means is decided from its [`ErrorCode`], never from
//! its message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devicegrid_proto::views::ClusterView;
use devicegrid_proto::{ErrorBody, ErrorCode};
use reqwest::StatusCode;

use crate::builders::Names;
use crate::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(5);

/// How the operator reaches a grid's admin API.
#[derive(Clone)]
pub struct GridApi {
    http: reqwest::Client,
    /// Clients for grids with TLS, by the CA they trust (PEM).
    tls: Arc<Mutex<HashMap<Vec<u8>, reqwest::Client>>>,
    /// URL with `{name}` and `{namespace}`, e.g. `http://{name}.{namespace}.svc:7001`
    /// (`https` for grids with TLS).
    pub url_template: String,
}

/// What a call to one grid needs besides its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The CA (PEM) the client port's certificate chains to, when the grid has TLS.
    pub ca: Option<Vec<u8>>,
    /// The bearer token, when the grid authenticates requests.
    pub token: Option<String>,
}

/// The answer to a drain request.
#[derive(Debug, PartialEq, Eq)]
pub enum DrainAnswer {
    /// Accepted (or already draining).
    Accepted,
    /// Refused by the grid (`drain_refused`), with its message.
    Refused(String),
    /// The metadata group has no such member (`member_not_found`): it never joined, so it
    /// holds nothing.
    NotAMember,
}

impl GridApi {
    /// A client for grids at `url_template`.
    pub fn new(url_template: impl Into<String>) -> Self {
        GridApi {
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .build()
                .unwrap_or_default(),
            tls: Arc::default(),
            url_template: url_template.into(),
        }
    }

    fn base(&self, names: &Names, access: &Access) -> String {
        let url = self
            .url_template
            .replace("{name}", &names.grid)
            .replace("{namespace}", &names.namespace);
        match (&access.ca, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url,
        }
    }

    /// The HTTP client for `access`; `url` names the grid in errors.
    fn client(&self, access: &Access, url: &str) -> Result<reqwest::Client> {
        let Some(ca) = &access.ca else {
            return Ok(self.http.clone());
        };
        let mut clients = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(ca) {
            return Ok(c.clone());
        }
        let built = reqwest::Certificate::from_pem_bundle(ca).and_then(|roots| {
            roots
                .into_iter()
                .fold(reqwest::Client::builder(), |b, c| b.add_root_certificate(c))
                .tls_built_in_root_certs(false)
                .timeout(TIMEOUT)
                .build()
        });
        let client = built.map_err(|source| Error::GridRequest {
            url: url.to_string(),
            source,
        })?;
        // Grids are few; a CA replaced by hand leaves one stale client behind at most.
        clients.insert(ca.clone(), client.clone());
        Ok(client)
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        access: &Access,
    ) -> Result<reqwest::RequestBuilder> {
        let r = self.client(access, url)?.request(method, url);
        Ok(match &access.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        })
    }

    /// The grid's cluster view.
    pub async fn cluster(&self, names: &Names, access: &Access) -> Result<ClusterView> {
        let url = format!("{}/v1/cluster", self.base(names, access));
        let r = match self
            .request(reqwest::Method::GET, &url, access)?
            .send()
            .await
        {
            Ok(r) => r,
            Err(source) => return Err(Error::GridRequest { url, source }),
        };
        let status = r.status();
        if !status.is_success() {
            let detail = r.json::<ErrorBody>().await.ok().map(|b| Box::new(b.error));
            return Err(Error::GridAnswer {
                url,
                status,
                detail,
            });
        }
        r.json()
            .await
            .map_err(|source| Error::GridRequest { url, source })
    }

    /// Asks the grid to drain member `id`.
    pub async fn drain(&self, names: &Names, access: &Access, id: u64) -> Result<DrainAnswer> {
        let url = format!("{}/v1/members/{id}/drain", self.base(names, access));
        let r = match self
            .request(reqwest::Method::POST, &url, access)?
            .send()
            .await
        {
            Ok(r) => r,
            Err(source) => return Err(Error::GridRequest { url, source }),
        };
        let status = r.status();
        // An unreadable body is judged by the status alone.
        let body = r.bytes().await.unwrap_or_default();
        drain_answer(url, status, &body)
    }
}

/// What the answer to a drain request at `url` means.
fn drain_answer(url: String, status: StatusCode, body: &[u8]) -> Result<DrainAnswer> {
    if status.is_success() {
        return Ok(DrainAnswer::Accepted);
    }
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.error);
    match detail {
        Some(d) if d.code == ErrorCode::MemberNotFound => Ok(DrainAnswer::NotAMember),
        Some(d) if d.code == ErrorCode::DrainRefused => Ok(DrainAnswer::Refused(d.message)),
        detail => Err(Error::GridAnswer {
            url,
            status,
            detail: detail.map(Box::new),
        }),
    }
}

#[cfg(test)]
mod tests {
    use devicegrid_proto::views::MemberView;
    use devicegrid_proto::{ErrorDetail, MemberState};

    use super::*;

    fn body(code: ErrorCode, message: &str) -> Vec<u8> {
        let body = ErrorBody {
            error: ErrorDetail::new(code, message),
        };
        serde_json::to_vec(&body).expect("encode")
    }

    fn answer(code: ErrorCode, message: &str) -> Result<DrainAnswer> {
        let status = StatusCode::from_u16(code.status()).expect("status");
        drain_answer("http://grid/drain".into(), status, &body(code, message))
    }

    #[test]
    fn drain_answers_are_decided_by_the_error_code() {
        let view = MemberView {
            id: 4,
            address: "fleet-3.fleet-members.iot.svc:7001".into(),
            peer_address: None,
            zone: None,
            state: MemberState::Draining,
            reachable: true,
            ready: true,
            partitions_led: 0,
            partitions_held: 160,
        };
        let accepted = serde_json::to_vec(&view).expect("encode");
        assert_eq!(
            drain_answer("u".into(), StatusCode::ACCEPTED, &accepted).ok(),
            Some(DrainAnswer::Accepted)
        );
        assert_eq!(
            answer(ErrorCode::MemberNotFound, "member 4 is not a member").ok(),
            Some(DrainAnswer::NotAMember)
        );
        assert_eq!(
            answer(ErrorCode::DrainRefused, "too few members would be left").ok(),
            Some(DrainAnswer::Refused("too few members would be left".into()))
        );
    }

    #[test]
    fn other_drain_answers_are_errors_with_the_grids_detail() {
        match answer(ErrorCode::Unavailable, "no metadata leader") {
            Err(Error::GridAnswer {
                status,
                detail: Some(d),
                ..
            }) => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(d.code, ErrorCode::Unavailable);
            }
            other => panic!("{other:?}"),
        }
        // A plain 404 (a proxy, an older member without the route) is not "not a member":
        // only the metadata group's answer lets the operator shrink.
        let e =
            drain_answer("u".into(), StatusCode::NOT_FOUND, b"no route").map_err(|e| e.to_string());
        assert_eq!(e, Err("grid: u: 404 Not Found".to_string()));
        let refused = drain_answer(
            "u".into(),
            StatusCode::CONFLICT,
            &body(ErrorCode::InvalidMove, "m"),
        );
        assert!(refused.is_err(), "{refused:?}");
    }
}
