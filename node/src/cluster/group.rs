//! One Raft group hosted by this member, with the batching that makes it cheap:
//!
//! - writes queue in a proposer that packs whatever is waiting into one Raft entry
//!   (group commit; a few entries may be in flight at once);
//! - linearizable reads queue at a read barrier: one leadership check (read index) serves
//!   every read that arrived before it started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::oneshot;

use crate::cluster::now_ms;
use crate::raft::{GroupId, NodeId, Raft, Request, Response};
use crate::runtime::{Budget, Coalescer, Limits, QueueFull, QueueSender, Tasks, Weight};
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
    /// Approximate size of `ops`, measured once when split.
    bytes: usize,
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
    /// While leadership is handed to this member (0: none), writes and reads are refused
    /// with `NotLeader` pointing at it, and no heartbeats are sent.
    handoff: Arc<AtomicU64>,
    proposals: QueueSender<Proposal>,
    reads: QueueSender<ReadWaiter>,
    /// The group's own tasks (proposer, read barrier, entries in flight).
    tasks: Tasks,
}

type ReadWaiter = oneshot::Sender<Result<()>>;

/// How much may wait in a group's queues.
#[derive(Clone, Debug)]
pub struct QueueBounds {
    /// Writes (and reads) per group.
    pub items: usize,
    /// Bytes of writes, shared by every group of the member.
    pub bytes: Budget,
}

/// Entry caps of the proposer.
const ENTRY_LIMITS: Limits = Limits {
    units: MAX_OPS_PER_ENTRY,
    bytes: MAX_ENTRY_BYTES,
};

fn proposal_weight(p: &Proposal) -> Weight {
    Weight {
        units: p.ops.len(),
        bytes: p.bytes,
    }
}

fn one(_: &ReadWaiter) -> Weight {
    Weight { units: 1, bytes: 0 }
}

fn always<T>(_: &T) -> bool {
    true
}

impl Group {
    /// Wraps `raft` and starts its proposer and read barrier as tasks of `tasks` (a branch
    /// of the member's tree that [`Group::stop_tasks`] cancels). At most `queue.items`
    /// writes (and as many reads) wait, and no more bytes than the member's shared
    /// `queue.bytes` allows; more are refused with `Overloaded`.
    pub fn new(
        id: GroupId,
        raft: Raft,
        committed: Arc<AtomicU64>,
        restored_term: u64,
        tasks: Tasks,
        queue: &QueueBounds,
    ) -> Arc<Self> {
        let budget = queue.bytes.clone();
        let (ptx, prx) = Coalescer::new(queue.items, budget, ENTRY_LIMITS, proposal_weight, always);
        let reads = Budget::new(usize::MAX);
        let (rtx, rrx) = Coalescer::new(queue.items, reads, Limits::UNBOUNDED, one, always);
        let handoff = Arc::new(AtomicU64::new(0));
        tasks.spawn(run_proposer(
            id,
            raft.clone(),
            handoff.clone(),
            prx,
            tasks.clone(),
        ));
        tasks.spawn(run_read_barrier(
            id,
            raft.clone(),
            restored_term,
            handoff.clone(),
            rrx,
        ));
        Arc::new(Group {
            id,
            raft,
            committed,
            last_leader_contact: AtomicU64::new(0),
            election: Mutex::new(ElectionState::default()),
            handoff,
            proposals: ptx,
            reads: rtx,
            tasks,
        })
    }

    /// Stops the group's proposer, read barrier and entries in flight.
    pub fn stop_tasks(&self) {
        self.tasks.cancel();
    }

    fn refused(&self, e: QueueFull, what: &str) -> Error {
        match e {
            QueueFull::Full => Error::Overloaded {
                group: self.id,
                message: format!("too many {what} waiting"),
            },
            QueueFull::Closed => Error::Unavailable {
                group: self.id,
                message: "member is stopping".into(),
            },
        }
    }

    /// Replicates `ops` in one entry (possibly with other callers' ops) and returns their
    /// outcomes. `NotLeader` means the ops were not committed and may be sent elsewhere.
    ///
    /// Ops beyond `MAX_ENTRY_BYTES` go in several entries, one after the other; if a later
    /// one fails, earlier ones are applied, so the failure is reported as `OutcomeUnknown`.
    pub async fn propose(&self, ops: Vec<MapOp>) -> Result<Vec<OpOutcome>> {
        self.propose_chunks(Chunks::of(ops)).await
    }

    /// [`Self::propose`] for operations already split (and measured) by [`Chunks::of`].
    pub async fn propose_chunks(&self, chunks: Chunks) -> Result<Vec<OpOutcome>> {
        let mut outcomes = Vec::new();
        for (i, (chunk, bytes)) in chunks.0.into_iter().enumerate() {
            match self.propose_entry(chunk, bytes).await {
                Ok(o) => outcomes.extend(o),
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    return Err(Error::OutcomeUnknown {
                        group: self.id,
                        message: format!("part of the operations were applied, then: {e}"),
                    })
                }
            }
        }
        Ok(outcomes)
    }

    async fn propose_entry(&self, ops: Vec<MapOp>, bytes: usize) -> Result<Vec<OpOutcome>> {
        let (tx, rx) = oneshot::channel();
        self.proposals
            .try_send(Proposal {
                ops,
                bytes,
                reply: tx,
            })
            .map_err(|(e, _)| self.refused(e, "writes"))?;
        // Queued: from here on the entry may be proposed, so losing the answer is ambiguous.
        rx.await.map_err(|_| Error::OutcomeUnknown {
            group: self.id,
            message: "member stopped while replicating".into(),
        })?
    }

    /// Returns once this member is confirmed leader and has applied everything committed
    /// before the call: local reads after it are linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.reads
            .try_send(tx)
            .map_err(|(e, _)| self.refused(e, "reads"))?;
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

    /// Starts (`Some`) or ends (`None`) handing leadership to a member.
    pub fn set_handoff(&self, to: Option<NodeId>) {
        self.handoff.store(to.unwrap_or(0), Ordering::SeqCst);
    }

    /// The member leadership is being handed to.
    pub fn handoff(&self) -> Option<NodeId> {
        handoff_target(&self.handoff)
    }

    /// Records an AppendEntries from a leader.
    pub fn touch_leader_contact(&self, now_ms: u64) {
        self.last_leader_contact.store(now_ms, Ordering::Relaxed);
    }
}

fn handoff_target(h: &AtomicU64) -> Option<NodeId> {
    Some(h.load(Ordering::SeqCst)).filter(|t| *t != 0)
}

/// Operations split into runs of at most `MAX_ENTRY_BYTES`, each with its approximate size,
/// measured once: for the entry size cap and for the disk reserve (`storage::space`).
pub struct Chunks(Vec<(Vec<MapOp>, usize)>);

impl Chunks {
    /// Splits and measures `ops`.
    pub fn of(ops: Vec<MapOp>) -> Chunks {
        Chunks(chunk_by_bytes(ops))
    }

    /// Approximate encoded size of all the operations.
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|(_, b)| b).sum()
    }
}

/// Approximate encoded size of an operation.
fn op_bytes(op: &MapOp) -> usize {
    let (map, key) = op.target();
    let body = match op {
        MapOp::Put { value, .. } => value.len(),
        MapOp::Process { processor, .. } => {
            rmp_serde::to_vec(processor).map_or(MAX_ENTRY_BYTES, |b| b.len())
        }
        MapOp::Delete { .. } | MapOp::Expire { .. } => 0,
    };
    64 + map.len() + key.len() + body
}

/// Splits `ops` into runs of at most `MAX_ENTRY_BYTES` (a larger single op runs alone),
/// each with its size.
fn chunk_by_bytes(ops: Vec<MapOp>) -> Vec<(Vec<MapOp>, usize)> {
    let mut chunks: Vec<(Vec<MapOp>, usize)> = vec![(Vec::new(), 0)];
    for op in ops {
        let b = op_bytes(&op);
        if chunks
            .last()
            .is_some_and(|(c, bytes)| !c.is_empty() && bytes + b > MAX_ENTRY_BYTES)
        {
            chunks.push((Vec::new(), 0));
        }
        if let Some((c, bytes)) = chunks.last_mut() {
            c.push(op);
            *bytes += b;
        }
    }
    chunks
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
    handoff: Arc<AtomicU64>,
    queue: Coalescer<Proposal>,
    tasks: Tasks,
) {
    // Each batch of waiting proposals is one entry; a few entries replicate at once.
    queue
        .run(ENTRIES_IN_FLIGHT, tasks, |batch| {
            let raft = raft.clone();
            let handing_to = handoff_target(&handoff);
            async move {
                let sizes: Vec<usize> = batch.iter().map(|p| p.ops.len()).collect();
                let (ops, replies): (Vec<Vec<MapOp>>, Vec<_>) =
                    batch.into_iter().map(|p| (p.ops, p.reply)).unzip();
                // Only a refusal before proposing is safe to retry elsewhere. Once proposed, an
                // entry that loses its leader may still be committed by the next one.
                let (state, leader, voters, joint) = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    (
                        m.state,
                        m.current_leader,
                        m.membership_config.voter_ids().count(),
                        m.membership_config.membership().get_joint_config().len() > 1,
                    )
                };
                if state != ServerState::Leader {
                    fail_all(replies, || Error::NotLeader { group, leader });
                    return;
                }
                if let Some(to) = handing_to {
                    fail_all(replies, || Error::NotLeader {
                        group,
                        leader: Some(to),
                    });
                    return;
                }
                let entry = MapBatch {
                    now_ms: now_ms(),
                    ops: ops.into_iter().flatten().collect(),
                };
                let result = raft.client_write(Request::Map(entry)).await;
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
                    // openraft answers ForwardToLeader before appending, or when the entry was
                    // truncated. A truncated entry cannot be committed later when a group has at
                    // most 4 voters in one configuration (the new leader's log has replaced it on
                    // a majority); with 5 or more, or during joint consensus, it is ambiguous.
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))
                        if voters <= 4 && !joint =>
                    {
                        fail_all(replies, || Error::NotLeader {
                            group,
                            leader: f.leader_id,
                        });
                    }
                    Err(e) => {
                        let message = e.to_string();
                        fail_all(replies, || Error::OutcomeUnknown {
                            group,
                            message: format!("leadership changed while replicating: {message}"),
                        });
                    }
                }
            }
        })
        .await;
}

/// How long one leadership check may take before the waiting reads fail.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// See [`run_read_barrier`]: while the term is still the one restored at start, commits an
/// empty entry of that term, which commits (and applies) the whole log found at start. Done
/// once; `term_before` is read before the leadership check so a term change in between
/// cannot skip it.
async fn settle_restored_term(
    group: GroupId,
    raft: &Raft,
    restored_term: u64,
    term_before: u64,
    settled: &mut bool,
) -> Result<()> {
    if *settled || restored_term == 0 || term_before != restored_term {
        *settled = *settled || term_before > restored_term;
        return Ok(());
    }
    let empty = Request::Map(MapBatch {
        now_ms: now_ms(),
        ops: Vec::new(),
    });
    match tokio::time::timeout(READ_BARRIER_TIMEOUT, raft.client_write(empty)).await {
        Ok(Ok(_)) => {
            *settled = true;
            Ok(())
        }
        Ok(Err(e)) => Err(Error::Unavailable {
            group,
            message: format!("committing the restored log: {e}"),
        }),
        Err(_) => Err(Error::Unavailable {
            group,
            message: "committing the restored log timed out".into(),
        }),
    }
}

/// Serves read barriers. `restored_term` is the vote's term found in storage at start.
///
/// The committed log id is stored without an fsync of its own, so after a crash it may be
/// older than what was acknowledged. openraft restores a member that was leader as leader of
/// the same term, without a new entry, and its read index could then stop short of an
/// acknowledged write. While the term is still the restored one, the first barrier therefore
/// commits an empty entry of that term, which commits the whole log (a leader never
/// truncates its own). A new term starts with a new entry after the whole log, which covers
/// it the same way.
async fn run_read_barrier(
    group: GroupId,
    raft: Raft,
    restored_term: u64,
    handoff: Arc<AtomicU64>,
    mut queue: Coalescer<ReadWaiter>,
) {
    let mut settled = false;
    while let Some(waiting) = queue.next_batch().await {
        if let Some(to) = handoff_target(&handoff) {
            for w in waiting {
                let _ = w.send(Err(Error::NotLeader {
                    group,
                    leader: Some(to),
                }));
            }
            continue;
        }
        let term_before = raft.metrics().borrow().current_term;
        let check = tokio::time::timeout(READ_BARRIER_TIMEOUT, raft.ensure_linearizable()).await;
        let outcome: Result<()> = match check {
            Err(_) => Err(Error::Unavailable {
                group,
                message: format!("leadership not confirmed within {READ_BARRIER_TIMEOUT:?}"),
            }),
            Ok(Ok(_)) => {
                settle_restored_term(group, &raft, restored_term, term_before, &mut settled).await
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(Error::NotLeader {
                    group,
                    leader: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(Error::Unavailable {
                group,
                message: e.to_string(),
            }),
        };
        for w in waiting {
            let _ = w.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(i: usize, size: usize) -> MapOp {
        MapOp::Put {
            map: "m".into(),
            key: format!("k{i}"),
            value: "x".repeat(size),
            if_version: None,
            ttl_ms: None,
        }
    }

    #[test]
    fn large_proposals_split_into_bounded_entries_in_order() {
        let ops: Vec<MapOp> = (0..10).map(|i| put(i, 300 * 1024)).collect();
        let chunks = chunk_by_bytes(ops.clone());
        assert_eq!(
            chunks.iter().map(|(c, _)| c.len()).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        assert!(chunks
            .iter()
            .all(|(c, _)| c.iter().map(op_bytes).sum::<usize>() <= MAX_ENTRY_BYTES));
        assert_eq!(
            chunks.into_iter().flat_map(|(c, _)| c).collect::<Vec<_>>(),
            ops
        );
        // An operation over the cap travels alone; small ones stay together.
        let chunks = chunk_by_bytes(vec![put(0, 10), put(1, 2 * MAX_ENTRY_BYTES), put(2, 10)]);
        assert_eq!(
            chunks.iter().map(|(c, _)| c.len()).collect::<Vec<_>>(),
            vec![1, 1, 1]
        );
        assert_eq!(chunk_by_bytes(vec![put(0, 10), put(1, 10)]).len(), 1);
    }
}
