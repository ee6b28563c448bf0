//! The peer port's front door: accepts at most `max_connections` connections, completes each
//! TLS handshake within [`HANDSHAKE_TIMEOUT`] in its own task (a slow or silent caller holds
//! no one else up), and admits only callers whose certificate names a member of this grid.
//! The member id travels with the connection ([`PeerConn`]) to the handler.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::tls::PeerTls;
use crate::runtime::{Tasks, Throttle};

/// A caller must finish its TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is calling on a peer connection.
#[derive(Clone, Copy, Debug)]
pub struct PeerConn {
    /// The caller's address.
    pub remote: SocketAddr,
    /// The member its certificate names.
    pub member: u64,
}

/// An admitted peer connection; holds its slot until it closes.
pub struct PeerStream {
    inner: TlsStream<TcpStream>,
    member: u64,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Admitted connections, for `axum::serve`.
pub struct PeerListener {
    admitted: mpsc::Receiver<(PeerStream, SocketAddr)>,
    local: SocketAddr,
}

impl PeerListener {
    /// Starts accepting on `tcp` (the loop belongs to `tasks`).
    pub fn start(
        tcp: TcpListener,
        tls: PeerTls,
        max_connections: usize,
        tasks: &Tasks,
    ) -> io::Result<PeerListener> {
        let local = tcp.local_addr()?;
        let (tx, admitted) = mpsc::channel(max_connections.max(1));
        let slots = Arc::new(Semaphore::new(max_connections));
        tasks.spawn(accept(tcp, tls, slots, tx, tasks.clone()));
        Ok(PeerListener { admitted, local })
    }
}

impl axum::serve::Listener for PeerListener {
    type Io = PeerStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (PeerStream, SocketAddr) {
        match self.admitted.recv().await {
            Some(c) => c,
            // The accept loop stopped with the member; the server is being shut down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

impl Connected<IncomingStream<'_, PeerListener>> for PeerConn {
    fn connect_info(stream: IncomingStream<'_, PeerListener>) -> Self {
        PeerConn {
            remote: *stream.remote_addr(),
            member: stream.io().member,
        }
    }
}

async fn accept(
    tcp: TcpListener,
    tls: PeerTls,
    slots: Arc<Semaphore>,
    admitted: mpsc::Sender<(PeerStream, SocketAddr)>,
    tasks: Tasks,
) {
    let acceptor = TlsAcceptor::from(tls.server.clone());
    let tls = Arc::new(tls);
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
                        tracing::warn!(error = %e, suppressed = more, "peer accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = token.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, tls, admitted, refused) = (
            acceptor.clone(),
            tls.clone(),
            admitted.clone(),
            refused.clone(),
        );
        tasks.spawn(async move {
            let outcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Err(_) => Err("no TLS handshake within the timeout".to_string()),
                Ok(Err(e)) => Err(format!("TLS handshake: {e}")),
                Ok(Ok(s)) => {
                    let member = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| tls.member_of(c));
                    member.map(|m| (s, m)).ok_or_else(|| {
                        "the certificate names no member of this grid".to_string()
                    })
                }
            };
            match outcome {
                Ok((inner, member)) => {
                    let stream = PeerStream {
                        inner,
                        member,
                        _slot: slot,
                    };
                    let _ = admitted.send((stream, remote)).await;
                }
                Err(why) => {
                    if let Some(more) = refused.allow() {
                        tracing::warn!(%remote, suppressed = more, "peer connection refused: {why}");
                    }
                }
            }
        });
    }
}
