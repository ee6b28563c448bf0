//! The placement driver: runs on every member, acts only on the metadata leader.
//!
//! Once a second it
//! - bootstraps the grid when enough members have registered,
//! - keeps the metadata group's voters on active, reachable members (three or five) and
//!   every other registered member a learner, and drops decommissioned ones,
//! - runs one round of [`placement::plan`] and commits its commands (member states, moves,
//!   preferred leaders). Moves themselves are carried out by partition leaders
//!   ([`crate::cluster::mover`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;

use crate::cluster::bootstrap::META_VOTERS;
use crate::cluster::meta::{MemberState, MetaCommand, MetaOutcome, MetaState};
use crate::cluster::placement::{self, PlanInput};
use crate::cluster::{now_ms, Grid};
use crate::raft::{MemberNode, NodeId};
use crate::{Error, Result};

/// Preferred-leader changes per round: each costs a leadership handoff.
const LEADER_CHANGES_PER_ROUND: usize = 8;
/// How long one membership change of the metadata group may take.
const META_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until shutdown.
pub async fn run(grid: Arc<Grid>) {
    let shutdown = grid.shutdown_token().clone();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !grid.meta_group().is_leader() {
            continue;
        }
        let meta = grid.meta_state();
        let round = async {
            if meta.bootstrapped() {
                drive(&grid, &meta).await
            } else {
                bootstrap(&grid, &meta).await
            }
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = round => r,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "placement round");
        }
    }
}

/// Whether `id` answers (this member always does).
fn alive(grid: &Grid, id: NodeId) -> bool {
    id == grid.id || grid.liveness.alive(id)
}

/// Members down for longer than the failure grace period.
fn failed(grid: &Grid, meta: &MetaState) -> BTreeSet<NodeId> {
    let grace = Duration::from_millis(grid.config.failure_grace_ms);
    meta.members
        .keys()
        .copied()
        .filter(|id| *id != grid.id && grid.liveness.down_for(*id).is_some_and(|d| d >= grace))
        .collect()
}

async fn bootstrap(grid: &Grid, meta: &MetaState) -> Result<()> {
    let ready: Vec<NodeId> = meta
        .members
        .keys()
        .copied()
        .filter(|id| alive(grid, *id))
        .collect();
    if ready.len() < grid.config.bootstrap_quorum() {
        tracing::debug!(
            registered = ready.len(),
            needed = grid.config.bootstrap_quorum(),
            "waiting for members before bootstrap"
        );
        return Ok(());
    }
    let cmd = MetaCommand::Bootstrap {
        members: ready,
        partition_count: grid.config.partitions,
        replication_factor: grid.config.replication_factor,
    };
    commit(grid, cmd).await?;
    tracing::info!(partitions = grid.config.partitions, "grid bootstrapped");
    Ok(())
}

async fn drive(grid: &Grid, meta: &MetaState) -> Result<()> {
    let failed = failed(grid, meta);
    meta_membership(grid, meta, &failed).await?;
    let input = PlanInput {
        alive: meta
            .members
            .keys()
            .copied()
            .filter(|id| alive(grid, *id))
            .collect(),
        failed,
        max_moves: grid.config.max_moves as usize,
        max_leader_changes: LEADER_CHANGES_PER_ROUND,
        now_ms: now_ms(),
    };
    for cmd in placement::plan(meta, &input) {
        tracing::info!(?cmd, "placement");
        commit(grid, cmd).await?;
    }
    Ok(())
}

async fn commit(grid: &Grid, cmd: MetaCommand) -> Result<()> {
    match grid.propose_meta(cmd).await? {
        MetaOutcome::Refused { code, message } => Err(Error::Refused { code, message }),
        _ => Ok(()),
    }
}

/// Keeps the metadata group's membership in line with the member list.
async fn meta_membership(grid: &Grid, meta: &MetaState, failed: &BTreeSet<NodeId>) -> Result<()> {
    let raft = &grid.meta_group().raft;
    let unavailable = |e: String| Error::Unavailable {
        group: crate::raft::GroupId::Meta,
        message: e,
    };
    let current = raft.metrics().borrow().membership_config.clone();
    let nodes: BTreeSet<NodeId> = current.nodes().map(|(id, _)| *id).collect();
    let voters: BTreeSet<NodeId> = current.voter_ids().collect();
    // Every registered member follows the metadata group, to learn the partition table.
    for m in meta.members.values() {
        if m.state != MemberState::Decommissioned && !nodes.contains(&m.id) {
            let node = MemberNode {
                addr: m.addr.clone(),
            };
            tokio::time::timeout(META_CHANGE_TIMEOUT, raft.add_learner(m.id, node, false))
                .await
                .map_err(|_| unavailable("adding a metadata learner timed out".into()))?
                .map_err(|e| unavailable(e.to_string()))?;
        }
    }
    if current.membership().get_joint_config().len() > 1 {
        return Ok(()); // a change is under way
    }
    // Voters: the current ones that stay active and reachable, topped up to three or five.
    let usable = |id: &NodeId| {
        meta.state(*id) == Some(MemberState::Active) && !failed.contains(id) && alive(grid, *id)
    };
    let active = meta.active().count();
    let target = match active {
        n if n >= META_VOTERS => META_VOTERS,
        n if n >= 3 => 3,
        n => n.max(1),
    };
    let mut want: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| meta.state(*id) == Some(MemberState::Active) && !failed.contains(id))
        .collect();
    for m in meta.active() {
        if want.len() >= target {
            break;
        }
        if usable(&m.id) {
            want.insert(m.id);
        }
    }
    if !want.is_empty() && want != voters && want.iter().all(|id| nodes.contains(id)) {
        tracing::info!(from = ?voters, to = ?want, "changing the metadata group's voters");
        tokio::time::timeout(META_CHANGE_TIMEOUT, raft.change_membership(want, true))
            .await
            .map_err(|_| unavailable("metadata voter change timed out".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        return Ok(());
    }
    let gone: BTreeSet<NodeId> = nodes
        .iter()
        .copied()
        .filter(|id| !voters.contains(id) && meta.state(*id) == Some(MemberState::Decommissioned))
        .collect();
    if !gone.is_empty() {
        tokio::time::timeout(
            META_CHANGE_TIMEOUT,
            raft.change_membership(ChangeMembers::RemoveNodes(gone), false),
        )
        .await
        .map_err(|_| unavailable("metadata learner removal timed out".into()))?
        .map_err(|e| unavailable(e.to_string()))?;
    }
    Ok(())
}
