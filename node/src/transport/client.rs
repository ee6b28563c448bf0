//! The sending side: per peer and lane, a task that coalesces queued requests into batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::frames::Frames;
use super::{PeerRequest, PeerResponse, PeerTls, PEER_PATH};
use crate::runtime::{Budget, Coalescer, Limits, QueueFull, QueueSender, Tasks, Weight};
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
    /// The queue to the peer is full; the request was not sent.
    #[error("overloaded: {0}")]
    Overloaded(String),
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

fn pending_weight(p: &Pending) -> Weight {
    Weight {
        units: 1,
        bytes: p.req.len(),
    }
}

/// A request whose caller stopped waiting is dropped, never sent.
fn still_awaited(p: &Pending) -> bool {
    p.deadline > Instant::now()
}

/// Batches requests to peers. One per member, shared by every group.
pub struct Transport {
    http: reqwest::Client,
    lanes: Mutex<HashMap<(String, Lane), QueueSender<Pending>>>,
    tasks: Tasks,
    max_queued: usize,
    budget: Budget,
}

/// Concurrent batches in flight per peer and lane.
const IN_FLIGHT: usize = 4;

impl Transport {
    /// A transport whose sender tasks belong to `tasks`, speaking TLS with `tls`;
    /// connections to peers leave from `source` when given (else the OS chooses); at most
    /// `max_queued` requests wait per peer and lane, and at most `max_bytes` bytes of them
    /// in all.
    pub fn new(
        tasks: Tasks,
        tls: &PeerTls,
        source: Option<std::net::IpAddr>,
        max_queued: usize,
        max_bytes: usize,
    ) -> crate::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .local_address(source)
            .use_preconfigured_tls((*tls.client).clone())
            .build()
            .map_err(|e| crate::Error::Tls(format!("peer client: {e}")))?;
        Ok(Arc::new(Transport {
            http,
            lanes: Mutex::new(HashMap::new()),
            tasks,
            max_queued,
            budget: Budget::new(max_bytes),
        }))
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
            .try_send(Pending {
                req,
                deadline,
                reply: tx,
            })
            .map_err(|(e, _)| match e {
                QueueFull::Full => {
                    TransportError::Overloaded(format!("{lane:?} queue to {addr} is full"))
                }
                QueueFull::Closed => TransportError::NotSent("transport stopped".into()),
            })?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(TransportError::Failed("sender dropped".into())),
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    fn lane(&self, addr: &str, lane: Lane) -> QueueSender<Pending> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes
            .entry((addr.to_string(), lane))
            .or_insert_with(|| {
                let limits = Limits {
                    units: lane.max_batch(),
                    bytes: MAX_BATCH_BYTES,
                };
                let (tx, queue) = Coalescer::new(
                    self.max_queued,
                    self.budget.clone(),
                    limits,
                    pending_weight,
                    still_awaited,
                );
                let url = format!("https://{addr}{PEER_PATH}");
                self.tasks
                    .spawn(run_lane(self.http.clone(), url, queue, self.tasks.clone()));
                tx
            })
            .clone()
    }
}

/// Sends the lane's batches, at most [`IN_FLIGHT`] at once; whatever queued while all were
/// busy travels in the next batch.
async fn run_lane(http: reqwest::Client, url: String, queue: Coalescer<Pending>, tasks: Tasks) {
    queue
        .run(IN_FLIGHT, tasks, |batch| {
            let (http, url) = (http.clone(), url.clone());
            async move { send_batch(&http, &url, batch).await }
        })
        .await;
}

async fn send_batch(http: &reqwest::Client, url: &str, batch: Vec<Pending>) {
    let (reqs, mut replies): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.req, Some(p.reply))).unzip();
    // Each caller is answered as soon as its frame arrives.
    let result = exchange(http, url, &reqs, |index, answer| {
        if let Some(reply) = replies.get_mut(index as usize).and_then(Option::take) {
            let _ = reply.send(answer);
        }
    })
    .await;
    let e = match result {
        Ok(()) => TransportError::Failed("the peer's answers ended early".into()),
        Err(e) => e,
    };
    for reply in replies.into_iter().flatten() {
        let _ = reply.send(Err(e.clone()));
    }
}

/// Sends the batch and hands each answer to `answer` as it arrives.
async fn exchange(
    http: &reqwest::Client,
    url: &str,
    reqs: &[Vec<u8>],
    mut answer: impl FnMut(u32, Result<PeerResponse, TransportError>),
) -> Result<(), TransportError> {
    // A MessagePack array of the already encoded requests.
    let mut body = Vec::with_capacity(5 + reqs.iter().map(Vec::len).sum::<usize>());
    rmp::encode::write_array_len(&mut body, reqs.len() as u32)
        .map_err(|e| TransportError::NotSent(e.to_string()))?;
    for r in reqs {
        body.extend_from_slice(r);
    }
    let mut resp = http
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
    let mut frames = Frames::default();
    let failed = |e: &dyn std::fmt::Display| TransportError::Failed(e.to_string());
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(&e))? {
        frames.push(&chunk);
        while let Some((index, bytes)) = frames.next_frame().map_err(|e| failed(&e))? {
            answer(index, decode(bytes).map_err(|e| failed(&e)));
        }
    }
    if frames.has_partial() {
        return Err(TransportError::Failed(
            "the peer's answers were cut short".into(),
        ));
    }
    Ok(())
}
