//! One Raft group hosted by this member, with the batching that makes it cheap:
//!
//! - writes queue in a proposer that packs whatever is waiting into one Raft entry
//!   (group commit; a few entries may be in flight at once);
//! - linearizable reads queue at a read barrier: one leadership check (read index) serves
//!   every read that arrived before it started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::ServerState;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cluster::now_ms;
use crate::raft::{GroupId, NodeId, Raft, Request, Response};
use crate::structures::map::{MapBatch, MapOp, OpOutcome};
use crate::{Error, Result};

/// Operations per Raft entry, at most.
const MAX_OPS_PER_ENTRY: usize = 1024;
/// Bytes per Raft entry, roughly (a single larger operation still gets an entry of its own).
const MAX_ENTRY_BYTES: usize = 1024 * 1024;
/// Entries of one group being replicated at once, at most.
const ENTRIES_IN_FLIGHT: usize = 8;

struct Proposal {
    ops: Vec<MapOp>,
    reply: oneshot::Sender<Result<Vec<OpOutcome>>>,
}

/// Election bookkeeping of the liveness driver.
#[derive(Default)]
pub struct ElectionState {
    /// When this member first saw the group without a usable leader.
    pub leaderless_since: Option<Instant>,
    /// Earliest time of the next election attempt.
    pub next_attempt: Option<Instant>,
}

/// A hosted Raft group.
pub struct Group {
    /// Which group.
    pub id: GroupId,
    /// The openraft handle.
    pub raft: Raft,
    /// Last committed log index, from the log store.
    pub committed: Arc<AtomicU64>,
    /// When an AppendEntries last arrived from a leader (ms on the member's clock, 0: never).
    pub last_leader_contact: AtomicU64,
    /// Election bookkeeping.
    pub election: Mutex<ElectionState>,
    proposals: mpsc::UnboundedSender<Proposal>,
    reads: mpsc::UnboundedSender<oneshot::Sender<Result<()>>>,
}

impl Group {
    /// Wraps `raft` and starts its proposer and read barrier (stopped by `shutdown`).
    pub fn new(
        id: GroupId,
        raft: Raft,
        committed: Arc<AtomicU64>,
        restored: (u64, Option<u64>),
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (ptx, prx) = mpsc::unbounded_channel();
        let (rtx, rrx) = mpsc::unbounded_channel();
        tokio::spawn(run_proposer(id, raft.clone(), prx, shutdown.clone()));
        tokio::spawn(run_read_barrier(id, raft.clone(), restored, rrx, shutdown));
        Arc::new(Group {
            id,
            raft,
            committed,
            last_leader_contact: AtomicU64::new(0),
            election: Mutex::new(ElectionState::default()),
            proposals: ptx,
            reads: rtx,
        })
    }

    /// Replicates `ops` in one entry (possibly with other callers' ops) and returns their
    /// outcomes. `NotLeader` means the ops were not committed and may be sent elsewhere.
    pub async fn propose(&self, ops: Vec<MapOp>) -> Result<Vec<OpOutcome>> {
        let (tx, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { ops, reply: tx })
            .map_err(|_| Error::Unavailable {
                group: self.id,
                message: "member is stopping".into(),
            })?;
        rx.await.map_err(|_| Error::Unavailable {
            group: self.id,
            message: "member is stopping".into(),
        })?
    }

    /// Returns once this member is confirmed leader and has applied everything committed
    /// before the call: local reads after it are linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.reads.send(tx).map_err(|_| Error::Unavailable {
            group: self.id,
            message: "member is stopping".into(),
        })?;
        rx.await.map_err(|_| Error::Unavailable {
            group: self.id,
            message: "member is stopping".into(),
        })?
    }

    /// Whether this member currently leads the group.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// The leader this member knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Records an AppendEntries from a leader.
    pub fn touch_leader_contact(&self, now_ms: u64) {
        self.last_leader_contact.store(now_ms, Ordering::Relaxed);
    }
}

/// Approximate encoded size of an operation, for the entry size cap.
fn op_bytes(op: &MapOp) -> usize {
    let (map, key) = op.target();
    let body = match op {
        MapOp::Put { value, .. } => value.len(),
        MapOp::Process { .. } => 512,
        MapOp::Delete { .. } | MapOp::Expire { .. } => 0,
    };
    64 + map.len() + key.len() + body
}

/// Answers every proposal of a batch with the same error.
fn fail_all(replies: Vec<oneshot::Sender<Result<Vec<OpOutcome>>>>, e: impl Fn() -> Error) {
    for r in replies {
        let _ = r.send(Err(e()));
    }
}

async fn run_proposer(
    group: GroupId,
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(ENTRIES_IN_FLIGHT));
    let mut carried: Option<Proposal> = None;
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
        // Pack whatever is waiting into one entry, up to the op and byte caps.
        let mut n = first.ops.len();
        let mut bytes: usize = first.ops.iter().map(op_bytes).sum();
        let mut batch = vec![first];
        while n < MAX_OPS_PER_ENTRY && bytes < MAX_ENTRY_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    let b: usize = p.ops.iter().map(op_bytes).sum();
                    if bytes + b > MAX_ENTRY_BYTES {
                        carried = Some(p);
                        break;
                    }
                    n += p.ops.len();
                    bytes += b;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let sizes: Vec<usize> = batch.iter().map(|p| p.ops.len()).collect();
            let (ops, replies): (Vec<Vec<MapOp>>, Vec<_>) =
                batch.into_iter().map(|p| (p.ops, p.reply)).unzip();
            // Only a refusal before proposing is safe to retry elsewhere. Once proposed, an
            // entry that loses its leader may still be committed by the next one.
            let (state, leader) = {
                let m = raft.metrics();
                let m = m.borrow();
                (m.state, m.current_leader)
            };
            if state != ServerState::Leader {
                fail_all(replies, || Error::NotLeader { group, leader });
                return;
            }
            let entry = MapBatch {
                now_ms: now_ms(),
                ops: ops.into_iter().flatten().collect(),
            };
            let result = raft.client_write(Request::Map(entry)).await;
            drop(permit);
            match result {
                Ok(resp) => {
                    let Response::Map(outcomes) = resp.data else {
                        fail_all(replies, || {
                            Error::Internal(
                                "partition answered a map batch with something else".into(),
                            )
                        });
                        return;
                    };
                    let mut it = outcomes.into_iter();
                    for (reply, n) in replies.into_iter().zip(sizes) {
                        let _ = reply.send(Ok(it.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    fail_all(replies, || Error::OutcomeUnknown {
                        group,
                        message: format!("leadership changed while replicating: {message}"),
                    });
                }
            }
        });
    }
}

/// See [`run_read_barrier`]: waits, in the restored term only, until the log found at start
/// is applied.
async fn restored_applied(raft: &Raft, (term, last): (u64, Option<u64>)) -> Result<(), String> {
    let Some(last) = last else { return Ok(()) };
    if raft.metrics().borrow().current_term != term {
        return Ok(());
    }
    raft.wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(last), "restored leader")
        .await
        .map(|_| ())
        .map_err(|e| format!("the log found at restart is not applied yet: {e}"))
}

/// Serves read barriers. `restored` is the vote term and last log index found at start.
///
/// The committed log id is stored without an fsync of its own, so after a crash it may be
/// older than what was acknowledged. openraft restores a member that was leader as leader of
/// the same term, and its read index could then stop short of an acknowledged write. While
/// the term is still the restored one, a barrier therefore also waits until everything that
/// was in the log at start is applied (a leader never truncates its own log, so that happens
/// as soon as the entries commit). A new term starts with a new entry after the whole log,
/// which covers it.
async fn run_read_barrier(
    group: GroupId,
    raft: Raft,
    restored: (u64, Option<u64>),
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<()>>>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p { Some(p) => p, None => return },
        };
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let outcome: Result<()> = match raft.ensure_linearizable().await {
            Ok(_) => restored_applied(&raft, restored)
                .await
                .map_err(|message| Error::Unavailable { group, message }),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    group,
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(Error::Unavailable {
                group,
                message: e.to_string(),
            }),
        };
        for w in waiting {
            let _ = w.send(outcome.clone());
        }
    }
}
