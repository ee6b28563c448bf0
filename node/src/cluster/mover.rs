//! Replica moves and leadership handoffs, carried out by partition leaders.
//!
//! Level-triggered: twice a second, for every partition this member leads, the group's Raft
//! membership is compared with the partition's table entry ([`MetaState`]):
//!
//! - the group is not recorded as created: report `PartitionCreated` (moves wait for it);
//! - a move's target has been down past the failure grace period and is not a voter yet:
//!   cancel the move (only the leader knows whether the target became a voter);
//! - the leader is not in the table (it is a move's source): it hands leadership to a
//!   caught-up replica that stays, which then carries out the move (with none, it carries
//!   out the move itself and steps down at the end);
//! - the membership differs: confirm with the metadata leader that this member's table is
//!   current, add the new replicas as learners, wait until they caught up (openraft streams
//!   a snapshot where the log no longer reaches), change the voters through joint
//!   consensus, drop leftover learners, then report `FinishMove` with the committed voters.
//!   The source member deletes its replica once the move is finished;
//! - the committed membership matches but the move is still recorded: report `FinishMove`;
//! - otherwise, if the table prefers another, caught-up replica as leader: hand over.
//!
//! Because each step starts from what the group and the table say now, a move interrupted
//! by a crash (of the leader, the source, the target or the metadata leader) resumes from
//! wherever it stopped; a cancelled move is rolled back the same way.
//!
//! openraft 0.9 has no leadership transfer. A handoff stops the leader's writes, reads and
//! heartbeats for the group, waits until the new leader has the whole log, and asks it to
//! campaign; the old leader grants the vote (its lease on itself has expired once it has led
//! for the lease time), which makes a majority with three replicas.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ChangeMembers;

use crate::cluster::group::Group;
use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta_client::MetaClient;
use crate::cluster::views::MoveBoard;
use crate::raft::{GroupId, MemberNode, NodeId};
use crate::runtime::{Every, Tasks};
use crate::structures::meta::{MetaCommand, MetaState};
use tokio_util::sync::CancellationToken;

type RaftMetrics = openraft::RaftMetrics<NodeId, MemberNode>;
use crate::transport::{Lane, PeerRequest, PeerResponse, Transport};
use devicegrid_proto::views::{MovePhase, MoveProgress};

/// How long a new replica may take to catch up before the step is retried.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// How long one membership change may take.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Handoffs one member runs at once.
const MAX_HANDOFFS: usize = 4;
/// How long each step of a handoff may take.
const HANDOFF_WAIT: Duration = Duration::from_secs(3);
/// A leader hands over only after leading this long: before, it refuses to vote for the new
/// leader (openraft's leader lease, `election_timeout_max`).
const LEAD_BEFORE_HANDOFF: Duration = Duration::from_millis(3500);

/// A handoff target may be this many entries behind the leader.
const HANDOFF_MAX_LAG: u64 = 64;
/// After a failed handoff, the partition waits this long before the next one.
const HANDOFF_BACKOFF: Duration = Duration::from_secs(15);

enum Action {
    Created,
    Cancel(u64),
    Reconfigure,
    Finish,
    Handoff(NodeId),
}

/// What the mover uses.
pub struct Mover {
    /// Hosted groups and the metadata state.
    pub groups: Arc<Groups>,
    /// To report finished moves and confirm table versions.
    pub meta: Arc<MetaClient>,
    /// Which members answer.
    pub liveness: Arc<Liveness>,
    /// Where progress is reported.
    pub moves: Arc<MoveBoard>,
    /// Move steps run as tasks of the member.
    pub tasks: Tasks,
    /// To ask a handoff's target to campaign.
    pub transport: Arc<Transport>,
    /// A member down this long is not handed leadership.
    pub failure_grace: Duration,
}

/// Why a move step did not finish (it is retried on a later round).
#[derive(Debug, thiserror::Error)]
enum MoveError {
    /// A metadata call failed.
    #[error(transparent)]
    Meta(#[from] crate::Error),
    /// This member's partition table is older than the grid's.
    #[error("this member's table is at version {local}, the grid's at {confirmed}")]
    StaleTable { local: u64, confirmed: u64 },
    /// A replica's member is not in the table.
    #[error("member {0} has no address")]
    NoAddress(NodeId),
    /// Leadership moved during the step.
    #[error("lost leadership")]
    LostLeadership,
    /// New replicas did not catch up in time.
    #[error("new replicas {replicas:?} still {lag} entries behind")]
    Behind { replicas: Vec<NodeId>, lag: u64 },
    /// The group's membership change is not committed yet.
    #[error("the group's membership is not committed yet")]
    Uncommitted,
    /// A Raft change or the handoff failed.
    #[error("{step}: {message}")]
    Step { step: &'static str, message: String },
}

impl MoveError {
    fn step(step: &'static str, message: impl std::fmt::Display) -> Self {
        MoveError::Step {
            step,
            message: message.to_string(),
        }
    }
}

/// Runs until `token` is cancelled.
pub async fn run(ctx: Arc<Mover>, token: CancellationToken) {
    let busy: Arc<Mutex<HashSet<u32>>> = Arc::default();
    // Partitions whose last handoff failed, and when they may try again.
    let backoff: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let handoffs = Arc::new(tokio::sync::Semaphore::new(MAX_HANDOFFS));
    // When this member was first seen leading each partition, and in which term.
    let mut leading: HashMap<u32, (u64, Instant)> = HashMap::new();
    let mut every = Every::new(Duration::from_millis(500), token);
    while every.tick().await {
        let meta = ctx.groups.meta_state();
        if !meta.bootstrapped() {
            continue;
        }
        for g in ctx.groups.all() {
            let GroupId::Partition(p) = g.id else {
                continue;
            };
            if !g.is_leader() {
                leading.remove(&p);
                continue;
            }
            let term = g.raft.metrics().borrow().current_term;
            let since = leading.entry(p).or_insert((term, Instant::now()));
            if since.0 != term {
                *since = (term, Instant::now());
            }
            let settled = since.1.elapsed() >= LEAD_BEFORE_HANDOFF
                && backoff
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&p)
                    .is_none_or(|t| Instant::now() >= *t);
            if busy.lock().unwrap_or_else(|e| e.into_inner()).contains(&p) {
                continue;
            }
            let Some(action) = decide(&ctx, &meta, &g, p) else {
                continue;
            };
            let permit = match action {
                Action::Handoff(_) if !settled => continue,
                Action::Handoff(_) => match handoffs.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => continue,
                },
                _ => None,
            };
            busy.lock().unwrap_or_else(|e| e.into_inner()).insert(p);
            let (ctx, busy, backoff) = (ctx.clone(), busy.clone(), backoff.clone());
            ctx.tasks.clone().spawn(async move {
                let is_handoff = matches!(action, Action::Handoff(_));
                let result = match action {
                    Action::Created => {
                        report(&ctx, MetaCommand::PartitionCreated { partition: p }).await
                    }
                    Action::Cancel(version) => {
                        report(
                            &ctx,
                            MetaCommand::CancelMove {
                                partition: p,
                                version,
                            },
                        )
                        .await
                    }
                    Action::Reconfigure => reconfigure(&ctx, &g, p).await,
                    Action::Finish => finish(&ctx, &g, p).await,
                    Action::Handoff(to) => handoff(&ctx, &g, p, to).await,
                };
                if let Err(e) = result {
                    tracing::info!(partition = p, error = %e, "move step not done; retrying");
                    if is_handoff {
                        backoff
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(p, Instant::now() + HANDOFF_BACKOFF);
                    }
                }
                ctx.moves.set(p, None);
                drop(permit);
                busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
            });
        }
    }
}

fn decide(ctx: &Mover, meta: &MetaState, g: &Group, p: u32) -> Option<Action> {
    let desired = meta.replicas(p);
    if desired.is_empty() {
        return None;
    }
    if !meta.partitions.get(p as usize)?.created {
        return Some(Action::Created);
    }
    let want: BTreeSet<NodeId> = desired.iter().copied().collect();
    let m = g.raft.metrics().borrow().clone();
    let voters: BTreeSet<NodeId> = m.membership_config.voter_ids().collect();
    let nodes: BTreeSet<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
    let alive = |id: &NodeId| ctx.liveness.alive(*id);
    let grace = ctx.failure_grace;
    if let Some(mv) = meta.moves.get(&p) {
        let failed = ctx.liveness.down_for(mv.to).is_some_and(|d| d >= grace);
        if failed && !voters.contains(&mv.to) {
            return Some(Action::Cancel(mv.version));
        }
    }
    if !want.contains(&ctx.groups.id()) {
        // Hand over to a replica that stays, in the table's order of preference; with none
        // able to take over, carry the move out here.
        return Some(
            desired
                .iter()
                .find(|id| voters.contains(id) && alive(id) && lag(&m, **id) <= HANDOFF_MAX_LAG)
                .map_or(Action::Reconfigure, |to| Action::Handoff(*to)),
        );
    }
    if voters != want || nodes != want {
        return Some(Action::Reconfigure);
    }
    if meta.moves.contains_key(&p) {
        return committed_membership(&m).then_some(Action::Finish);
    }
    let preferred = desired[0];
    let ready = alive(&preferred) && lag(&m, preferred) <= HANDOFF_MAX_LAG;
    if preferred != ctx.groups.id() && ready && g.handoff().is_none() {
        return Some(Action::Handoff(preferred));
    }
    None
}

/// The last log index this leader knows `id` holds.
fn matched(m: &RaftMetrics, id: NodeId) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|l| l.index)
}

/// Entries `id` is behind this leader (everything, when unknown).
fn lag(m: &RaftMetrics, id: NodeId) -> u64 {
    let last = m.last_log_index.unwrap_or(0);
    matched(m, id).map_or(u64::MAX, |i| last.saturating_sub(i))
}

/// Whether the group's effective membership is committed (applied here).
fn committed_membership(m: &RaftMetrics) -> bool {
    let config = m.membership_config.log_id().as_ref().map(|l| l.index);
    config <= m.last_applied.as_ref().map(|l| l.index)
}

async fn report(ctx: &Mover, cmd: MetaCommand) -> Result<(), MoveError> {
    ctx.meta.propose(cmd).await?;
    Ok(())
}

fn progress(ctx: &Mover, p: u32, phase: MovePhase, lag: u64) {
    ctx.moves.set(
        p,
        Some(MoveProgress {
            partition: p,
            phase,
            lag,
        }),
    );
}

async fn reconfigure(ctx: &Mover, g: &Group, p: u32) -> Result<(), MoveError> {
    let meta = ctx.groups.meta_state();
    // A leader with an older table than the one the group's voters came from would move
    // the voters backwards: act only on the table the metadata leader confirms.
    let confirmed = ctx.meta.confirmed_version(p).await?;
    if confirmed != meta.version(p) {
        return Err(MoveError::StaleTable {
            local: meta.version(p),
            confirmed,
        });
    }
    let want: BTreeSet<NodeId> = meta.replicas(p).iter().copied().collect();
    let m = g.raft.metrics().borrow().clone();
    let nodes: BTreeSet<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
    let voters: BTreeSet<NodeId> = m.membership_config.voter_ids().collect();

    progress(ctx, p, MovePhase::AddingLearner, 0);
    for id in want.difference(&nodes) {
        let addr = meta.addr(*id).ok_or(MoveError::NoAddress(*id))?;
        let node = MemberNode {
            addr: addr.to_string(),
        };
        tokio::time::timeout(CHANGE_TIMEOUT, g.raft.add_learner(*id, node, false))
            .await
            .map_err(|_| MoveError::step("adding a learner", "timed out"))?
            .map_err(|e| MoveError::step("adding a learner", e))?;
        tracing::info!(partition = p, learner = id, "replica added as learner");
    }

    let new: Vec<NodeId> = want.difference(&voters).copied().collect();
    let target = g.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let deadline = Instant::now() + CATCH_UP_WAIT;
    loop {
        let m = g.raft.metrics().borrow().clone();
        if m.state != openraft::ServerState::Leader {
            return Err(MoveError::LostLeadership);
        }
        let lag = new
            .iter()
            .map(|id| target.saturating_sub(matched(&m, *id).unwrap_or(0)))
            .max()
            .unwrap_or(0);
        progress(ctx, p, MovePhase::CatchingUp, lag);
        if lag == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(MoveError::Behind { replicas: new, lag });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    if voters != want {
        progress(ctx, p, MovePhase::JointConsensus, 0);
        tokio::time::timeout(
            CHANGE_TIMEOUT,
            g.raft.change_membership(want.clone(), false),
        )
        .await
        .map_err(|_| MoveError::step("the voter change", "timed out"))?
        .map_err(|e| MoveError::step("the voter change", e))?;
        tracing::info!(partition = p, voters = ?want, "partition voters changed");
    }
    let m = g.raft.metrics().borrow().clone();
    let extra: BTreeSet<NodeId> = m
        .membership_config
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| !want.contains(id))
        .collect();
    if !extra.is_empty() {
        progress(ctx, p, MovePhase::RemovingLearners, 0);
        let change = g
            .raft
            .change_membership(ChangeMembers::RemoveNodes(extra), false);
        tokio::time::timeout(CHANGE_TIMEOUT, change)
            .await
            .map_err(|_| MoveError::step("removing learners", "timed out"))?
            .map_err(|e| MoveError::step("removing learners", e))?;
    }
    finish(ctx, g, p).await
}

/// Reports a finished move (if one is recorded) with the group's committed voters.
async fn finish(ctx: &Mover, g: &Group, p: u32) -> Result<(), MoveError> {
    let meta = ctx.groups.meta_state();
    let Some(mv) = meta.moves.get(&p) else {
        return Ok(());
    };
    let m = g.raft.metrics().borrow().clone();
    if !committed_membership(&m) {
        return Err(MoveError::Uncommitted);
    }
    progress(ctx, p, MovePhase::Finishing, 0);
    let cmd = MetaCommand::FinishMove {
        partition: p,
        version: mv.version,
        voters: m.membership_config.voter_ids().collect(),
    };
    report(ctx, cmd).await
}

async fn handoff(ctx: &Mover, g: &Group, p: u32, to: NodeId) -> Result<(), MoveError> {
    let addr = ctx
        .groups
        .meta_state()
        .addr(to)
        .map(str::to_string)
        .ok_or(MoveError::NoAddress(to))?;
    progress(ctx, p, MovePhase::HandingOff, 0);
    g.set_handoff(Some(to));
    let result = async {
        // Wait until the new leader has every entry (writes have stopped).
        let deadline = Instant::now() + HANDOFF_WAIT;
        loop {
            let m = g.raft.metrics().borrow().clone();
            if m.state != openraft::ServerState::Leader {
                return Ok(());
            }
            if lag(&m, to) == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(MoveError::step(
                    "the handoff",
                    format!("member {to} did not catch up"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let req = PeerRequest::Elect { group: g.id };
        match ctx
            .transport
            .call(&addr, Lane::Control, req, Duration::from_secs(2))
            .await
        {
            Ok(PeerResponse::Accepted) => {}
            other => {
                return Err(MoveError::step(
                    "the handoff",
                    format!("member {to} did not accept: {other:?}"),
                ))
            }
        }
        let deadline = Instant::now() + HANDOFF_WAIT;
        while g.is_leader() {
            if Instant::now() > deadline {
                return Err(MoveError::step(
                    "the handoff",
                    format!("member {to} did not take over"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::debug!(partition = p, to, "leadership handed over");
        Ok(())
    }
    .await;
    g.set_handoff(None);
    result
}

/// Campaigns for `g` a few times, until this member leads it (a handoff asked for it).
pub async fn campaign(g: Arc<Group>) {
    for _ in 0..8 {
        if g.is_leader() {
            return;
        }
        let _ = g.raft.trigger().elect().await;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if g.is_leader() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
