//! The sending side: per peer and lane, a task that coalesces queued requests into batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{PeerRequest, PeerResponse, PEER_PATH};
use crate::storage::{decode, encode};

/// Traffic classes; each has its own queue and connections per peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Small and urgent: pings, status, votes, heartbeats.
    Control,
    /// Appends carrying entries.
    Raft,
    /// Forwarded client reads and writes.
    Client,
    /// Snapshot chunks.
    Bulk,
}

impl Lane {
    fn max_batch(self) -> usize {
        match self {
            Lane::Control | Lane::Raft | Lane::Client => 512,
            Lane::Bulk => 1,
        }
    }
}

/// Why a peer call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The request never reached the peer (connection refused, peer unknown).
    #[error("not sent: {0}")]
    NotSent(String),
    /// The request may or may not have been handled.
    #[error("no answer: {0}")]
    Failed(String),
    /// No answer before the deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

struct Pending {
    /// The request, already encoded (so batches can be capped in bytes).
    req: Vec<u8>,
    /// When the caller stops waiting; an expired request is dropped, never sent.
    deadline: Instant,
    reply: oneshot::Sender<Result<PeerResponse, TransportError>>,
}

/// Bytes per batch, roughly: one larger request still travels, alone.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Batches requests to peers. One per member, shared by every group.
pub struct Transport {
    http: reqwest::Client,
    lanes: Mutex<HashMap<(String, Lane), mpsc::UnboundedSender<Pending>>>,
    shutdown: CancellationToken,
}

/// Concurrent batches in flight per peer and lane.
const IN_FLIGHT: usize = 4;

impl Transport {
    /// A transport whose sender tasks stop with `shutdown`; connections to peers leave from
    /// `source` when given (else the OS chooses).
    pub fn new(shutdown: CancellationToken, source: Option<std::net::IpAddr>) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .local_address(source)
            .build()
            .unwrap_or_default();
        Arc::new(Transport {
            http,
            lanes: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Sends `req` to the member at `addr` and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        addr: &str,
        lane: Lane,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let (tx, rx) = oneshot::channel();
        let req = encode(&req).map_err(|e| TransportError::NotSent(e.to_string()))?;
        let deadline = Instant::now() + timeout;
        self.lane(addr, lane)
            .send(Pending {
                req,
                deadline,
                reply: tx,
            })
            .map_err(|_| TransportError::NotSent("transport stopped".into()))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TransportError::Failed("sender dropped".into())),
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    fn lane(&self, addr: &str, lane: Lane) -> mpsc::UnboundedSender<Pending> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes
            .entry((addr.to_string(), lane))
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let url = format!("http://{addr}{PEER_PATH}");
                tokio::spawn(run_lane(
                    self.http.clone(),
                    url,
                    lane,
                    rx,
                    self.shutdown.clone(),
                ));
                tx
            })
            .clone()
    }
}

async fn run_lane(
    http: reqwest::Client,
    url: String,
    lane: Lane,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            },
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Take whatever queued up while waiting for a slot, dropping what expired.
        let now = Instant::now();
        let mut bytes = first.req.len();
        let mut batch: Vec<Pending> = std::iter::once(first)
            .filter(|p| p.deadline > now)
            .collect();
        while batch.len() < lane.max_batch() && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) if p.deadline <= now => {}
                Ok(p) if bytes + p.req.len() > MAX_BATCH_BYTES && !batch.is_empty() => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += p.req.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            send_batch(&http, &url, batch).await;
            drop(permit);
        });
    }
}

async fn send_batch(http: &reqwest::Client, url: &str, batch: Vec<Pending>) {
    let (reqs, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.req, p.reply)).unzip();
    let result = exchange(http, url, &reqs).await;
    match result {
        Ok(resps) if resps.len() == replies.len() => {
            for (reply, resp) in replies.into_iter().zip(resps) {
                let _ = reply.send(Ok(resp));
            }
        }
        Ok(resps) => {
            let e = TransportError::Failed(format!(
                "{} answers to {} requests",
                resps.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn exchange(
    http: &reqwest::Client,
    url: &str,
    reqs: &[Vec<u8>],
) -> Result<Vec<PeerResponse>, TransportError> {
    // A MessagePack array of the already encoded requests.
    let mut body = Vec::with_capacity(5 + reqs.iter().map(Vec::len).sum::<usize>());
    rmp::encode::write_array_len(&mut body, reqs.len() as u32)
        .map_err(|e| TransportError::NotSent(e.to_string()))?;
    for r in reqs {
        body.extend_from_slice(r);
    }
    let resp = http
        .post(url)
        .header("content-type", "application/msgpack")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                TransportError::NotSent(e.to_string())
            } else {
                TransportError::Failed(e.to_string())
            }
        })?;
    if !resp.status().is_success() {
        return Err(TransportError::Failed(format!(
            "peer answered {}",
            resp.status()
        )));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| TransportError::Failed(e.to_string()))?;
    decode(&bytes).map_err(|e| TransportError::Failed(e.to_string()))
}
