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
use crate::cluster::meta::{MetaCommand, MetaState};
use crate::cluster::Grid;
use crate::raft::{GroupId, MemberNode, NodeId};

type RaftMetrics = openraft::RaftMetrics<NodeId, MemberNode>;
use crate::transport::{Lane, MoveProgress, PeerRequest, PeerResponse};

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

/// Runs until shutdown.
pub async fn run(grid: Arc<Grid>) {
    let shutdown = grid.shutdown_token().clone();
    let busy: Arc<Mutex<HashSet<u32>>> = Arc::default();
    // Partitions whose last handoff failed, and when they may try again.
    let backoff: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let handoffs = Arc::new(tokio::sync::Semaphore::new(MAX_HANDOFFS));
    // When this member was first seen leading each partition, and in which term.
    let mut leading: HashMap<u32, (u64, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let meta = grid.meta_state();
        if !meta.bootstrapped() {
            continue;
        }
        for g in grid.groups() {
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
            let Some(action) = decide(&grid, &meta, &g, p) else {
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
            let (task_grid, busy, backoff) = (grid.clone(), busy.clone(), backoff.clone());
            grid.spawn(async move {
                let grid = task_grid;
                let is_handoff = matches!(action, Action::Handoff(_));
                let result = match action {
                    Action::Created => {
                        report(&grid, MetaCommand::PartitionCreated { partition: p }).await
                    }
                    Action::Cancel(version) => {
                        report(
                            &grid,
                            MetaCommand::CancelMove {
                                partition: p,
                                version,
                            },
                        )
                        .await
                    }
                    Action::Reconfigure => reconfigure(&grid, &g, p).await,
                    Action::Finish => finish(&grid, &g, p).await,
                    Action::Handoff(to) => handoff(&grid, &g, p, to).await,
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
                grid.set_progress(p, None);
                drop(permit);
                busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&p);
            });
        }
    }
}

fn decide(grid: &Grid, meta: &MetaState, g: &Group, p: u32) -> Option<Action> {
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
    let alive = |id: &NodeId| grid.liveness.alive(*id);
    let grace = Duration::from_millis(grid.config.failure_grace_ms);
    if let Some(mv) = meta.moves.get(&p) {
        let failed = grid.liveness.down_for(mv.to).is_some_and(|d| d >= grace);
        if failed && !voters.contains(&mv.to) {
            return Some(Action::Cancel(mv.version));
        }
    }
    if !want.contains(&grid.id) {
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
    if preferred != grid.id && ready && g.handoff().is_none() {
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

async fn report(grid: &Grid, cmd: MetaCommand) -> Result<(), String> {
    grid.propose_meta(cmd).await.map_err(|e| e.to_string())?;
    Ok(())
}

fn progress(grid: &Grid, p: u32, phase: &str, lag: u64) {
    grid.set_progress(
        p,
        Some(MoveProgress {
            partition: p,
            phase: phase.into(),
            lag,
        }),
    );
}

async fn reconfigure(grid: &Grid, g: &Group, p: u32) -> Result<(), String> {
    let meta = grid.meta_state();
    // A leader with an older table than the one the group's voters came from would move
    // the voters backwards: act only on the table the metadata leader confirms.
    let confirmed = grid.confirmed_version(p).await.map_err(|e| e.to_string())?;
    if confirmed != meta.version(p) {
        return Err(format!(
            "this member's table is at version {} of partition {p}, the grid's at {confirmed}",
            meta.version(p)
        ));
    }
    let want: BTreeSet<NodeId> = meta.replicas(p).iter().copied().collect();
    let m = g.raft.metrics().borrow().clone();
    let nodes: BTreeSet<NodeId> = m.membership_config.nodes().map(|(id, _)| *id).collect();
    let voters: BTreeSet<NodeId> = m.membership_config.voter_ids().collect();

    progress(grid, p, "adding_learner", 0);
    for id in want.difference(&nodes) {
        let addr = meta
            .addr(*id)
            .ok_or_else(|| format!("member {id} has no address"))?;
        let node = MemberNode {
            addr: addr.to_string(),
        };
        tokio::time::timeout(CHANGE_TIMEOUT, g.raft.add_learner(*id, node, false))
            .await
            .map_err(|_| format!("adding learner {id} timed out"))?
            .map_err(|e| format!("adding learner {id}: {e}"))?;
        tracing::info!(partition = p, learner = id, "replica added as learner");
    }

    let new: Vec<NodeId> = want.difference(&voters).copied().collect();
    let target = g.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let deadline = Instant::now() + CATCH_UP_WAIT;
    loop {
        let m = g.raft.metrics().borrow().clone();
        if m.state != openraft::ServerState::Leader {
            return Err("lost leadership".into());
        }
        let lag = new
            .iter()
            .map(|id| target.saturating_sub(matched(&m, *id).unwrap_or(0)))
            .max()
            .unwrap_or(0);
        progress(grid, p, "catching_up", lag);
        if lag == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("new replicas {new:?} still {lag} entries behind"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    if voters != want {
        progress(grid, p, "joint_consensus", 0);
        tokio::time::timeout(
            CHANGE_TIMEOUT,
            g.raft.change_membership(want.clone(), false),
        )
        .await
        .map_err(|_| "voter change timed out".to_string())?
        .map_err(|e| format!("voter change: {e}"))?;
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
        progress(grid, p, "removing_learners", 0);
        let change = g
            .raft
            .change_membership(ChangeMembers::RemoveNodes(extra), false);
        tokio::time::timeout(CHANGE_TIMEOUT, change)
            .await
            .map_err(|_| "learner removal timed out".to_string())?
            .map_err(|e| format!("learner removal: {e}"))?;
    }
    finish(grid, g, p).await
}

/// Reports a finished move (if one is recorded) with the group's committed voters.
async fn finish(grid: &Grid, g: &Group, p: u32) -> Result<(), String> {
    let meta = grid.meta_state();
    let Some(mv) = meta.moves.get(&p) else {
        return Ok(());
    };
    let m = g.raft.metrics().borrow().clone();
    if !committed_membership(&m) {
        return Err("the group's membership is not committed yet".into());
    }
    progress(grid, p, "finishing", 0);
    let cmd = MetaCommand::FinishMove {
        partition: p,
        version: mv.version,
        voters: m.membership_config.voter_ids().collect(),
    };
    report(grid, cmd).await
}

async fn handoff(grid: &Grid, g: &Group, p: u32, to: NodeId) -> Result<(), String> {
    let addr = grid
        .meta_state()
        .addr(to)
        .map(str::to_string)
        .ok_or_else(|| format!("member {to} has no address"))?;
    progress(grid, p, "handing_off", 0);
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
                return Err(format!("member {to} did not catch up"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let req = PeerRequest::Elect { group: g.id };
        match grid
            .transport
            .call(&addr, Lane::Control, req, Duration::from_secs(2))
            .await
        {
            Ok(PeerResponse::Accepted) => {}
            other => return Err(format!("member {to} did not accept: {other:?}")),
        }
        let deadline = Instant::now() + HANDOFF_WAIT;
        while g.is_leader() {
            if Instant::now() > deadline {
                return Err(format!("member {to} did not take over"));
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
