//! The HTTP/1.1 server of both ports: caps connections (the rest wait in the kernel's
//! backlog), completes each TLS handshake within [`HANDSHAKE_TIMEOUT`] in its own task (a
//! slow or silent caller holds no one else up), cuts a connection that does not send a
//! complete request head within the header timeout (slowloris, and idle keep-alive
//! connections), and tells the handler who is calling ([`Conn`], a request extension).
//!
//! On the peer port [`Admission::Members`] admits only callers whose certificate names a
//! member of this grid; on the client port TLS is optional ([`Admission::Anyone`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::tls::PeerTls;
use crate::runtime::{Tasks, Throttle};

/// A caller must finish its TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is calling, as a request extension.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The caller's address.
    pub remote: SocketAddr,
    /// The member its certificate names (peer port only).
    pub member: Option<u64>,
}

/// Who may connect.
#[derive(Clone)]
pub enum Admission {
    /// Anyone; TLS when a server config is given.
    Anyone(Option<Arc<rustls::ServerConfig>>),
    /// Members of the grid only, over mutual TLS.
    Members(PeerTls),
}

/// Bounds of one port.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to send a complete request head, also the longest a connection may sit idle.
    pub header_timeout: Duration,
}

/// Serves `router` on `tcp` until `tasks` is cancelled; each connection is a task of `tasks`.
pub async fn serve(
    tcp: TcpListener,
    router: axum::Router,
    admission: Admission,
    limits: Limits,
    tasks: Tasks,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refused = Arc::new(Throttle::new(Duration::from_secs(10)));
    let token = tasks.token().clone();
    loop {
        // A connection is accepted only when a slot is free; the rest wait in the backlog.
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
            _ = token.cancelled() => return,
        };
        let (stream, remote) = tokio::select! {
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    if let Some(more) = refused.allow() {
                        tracing::warn!(error = %e, suppressed = more, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = token.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let (router, admission, refused, token) = (
            router.clone(),
            admission.clone(),
            refused.clone(),
            token.clone(),
        );
        tasks.spawn(async move {
            let _slot = slot;
            let (tls, members) = match admission {
                Admission::Anyone(None) => {
                    let conn = Conn {
                        remote,
                        member: None,
                    };
                    return http(stream, conn, router, limits, token).await;
                }
                Admission::Anyone(Some(tls)) => (tls, None),
                Admission::Members(peer) => (peer.server.clone(), Some(peer)),
            };
            match admit(stream, tls, members.as_ref()).await {
                Ok((s, member)) => http(s, Conn { remote, member }, router, limits, token).await,
                Err(why) => {
                    if let Some(more) = refused.allow() {
                        tracing::warn!(%remote, suppressed = more, "connection refused: {why}");
                    }
                }
            }
        });
    }
}

/// The TLS handshake, and with `members` the member the caller's certificate names (a
/// caller naming none is refused).
async fn admit(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    members: Option<&PeerTls>,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<u64>), String> {
    let s = handshake(stream, tls).await?;
    let Some(peers) = members else {
        return Ok((s, None));
    };
    let member = s
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| peers.member_of(c));
    match member {
        Some(m) => Ok((s, Some(m))),
        None => Err("the certificate names no member of this grid".into()),
    }
}

async fn handshake(
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(tls).accept(stream)).await {
        Err(_) => Err("no TLS handshake within the timeout".into()),
        Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
        Ok(Ok(s)) => Ok(s),
    }
}

/// Serves HTTP/1.1 on one connection until it closes, is cut, or the member stops (then
/// the request in progress is finished first).
async fn http<I>(io: I, conn: Conn, router: axum::Router, limits: Limits, token: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(conn.clone());
        router.clone().oneshot(req.map(Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = token.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}
