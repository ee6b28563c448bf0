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
use crate::structures::meta::{MemberState, MetaCommand, MetaState};
use crate::structures::placement::{self, PlanInput};
use tokio_util::sync::CancellationToken;

use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta_client::MetaClient;
use crate::cluster::now_ms;
use crate::config::Config;
use crate::raft::{MemberNode, NodeId};
use crate::runtime::Every;
use crate::{Error, Result};

/// Preferred-leader changes per round: each costs a leadership handoff.
const LEADER_CHANGES_PER_ROUND: usize = 8;
/// How long one membership change of the metadata group may take.
const META_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the placement driver uses.
pub struct Driver {
    /// Bootstrap settings, grace periods and move limits.
    pub config: Arc<Config>,
    /// The metadata group and state.
    pub groups: Arc<Groups>,
    /// To commit metadata commands.
    pub meta: Arc<MetaClient>,
    /// Which members answer.
    pub liveness: Arc<Liveness>,
}

/// Runs until `token` is cancelled.
pub async fn run(ctx: Arc<Driver>, token: CancellationToken) {
    let mut every = Every::new(Duration::from_secs(1), token);
    while every.tick().await {
        if !ctx.groups.meta_group().is_leader() {
            continue;
        }
        let meta = ctx.groups.meta_state();
        let round = async {
            if meta.bootstrapped() {
                drive(&ctx, &meta).await
            } else {
                bootstrap(&ctx, &meta).await
            }
        };
        let Some(result) = every.round(round).await else {
            return;
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "placement round");
        }
    }
}

/// Whether `id` answers (this member always does).
fn alive(ctx: &Driver, id: NodeId) -> bool {
    id == ctx.groups.id() || ctx.liveness.alive(id)
}

/// Members down for longer than the failure grace period.
fn failed(ctx: &Driver, meta: &MetaState) -> BTreeSet<NodeId> {
    let grace = Duration::from_millis(ctx.config.failure_grace_ms);
    meta.members
        .keys()
        .copied()
        .filter(|id| {
            *id != ctx.groups.id() && ctx.liveness.down_for(*id).is_some_and(|d| d >= grace)
        })
        .collect()
}

async fn bootstrap(ctx: &Driver, meta: &MetaState) -> Result<()> {
    let ready: Vec<NodeId> = meta
        .members
        .keys()
        .copied()
        .filter(|id| alive(ctx, *id))
        .collect();
    if ready.len() < ctx.config.bootstrap_quorum() {
        tracing::debug!(
            registered = ready.len(),
            needed = ctx.config.bootstrap_quorum(),
            "waiting for members before bootstrap"
        );
        return Ok(());
    }
    let cmd = MetaCommand::Bootstrap {
        members: ready,
        partition_count: ctx.config.partitions,
        replication_factor: ctx.config.replication_factor,
    };
    ctx.meta.commit(cmd).await?;
    tracing::info!(partitions = ctx.config.partitions, "grid bootstrapped");
    Ok(())
}

async fn drive(ctx: &Driver, meta: &MetaState) -> Result<()> {
    let failed = failed(ctx, meta);
    meta_membership(ctx, meta, &failed).await?;
    let input = PlanInput {
        alive: meta
            .members
            .keys()
            .copied()
            .filter(|id| alive(ctx, *id))
            .collect(),
        failed,
        max_moves: ctx.config.max_moves as usize,
        max_leader_changes: LEADER_CHANGES_PER_ROUND,
        now_ms: now_ms(),
    };
    for cmd in placement::plan(meta, &input) {
        tracing::info!(?cmd, "placement");
        ctx.meta.commit(cmd).await?;
    }
    Ok(())
}

/// Keeps the metadata group's membership in line with the member list.
async fn meta_membership(ctx: &Driver, meta: &MetaState, failed: &BTreeSet<NodeId>) -> Result<()> {
    let raft = &ctx.groups.meta_group().raft;
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
        meta.state(*id) == Some(MemberState::Active) && !failed.contains(id) && alive(ctx, *id)
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
