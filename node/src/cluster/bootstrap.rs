//! First start, registration and partition hosting.
//!
//! The lowest-numbered initial member initializes the metadata group with the initial
//! members as voters (at most five). Every member registers itself (`Join`) through the
//! metadata leader; once enough have registered, the leader proposes `Bootstrap` (see
//! [`crate::cluster::driver`]), which creates the partition table. Every member watches the
//! applied metadata state and opens the groups of the partitions it holds; at bootstrap, a
//! partition's first replica initializes the group, so leaders start out spread evenly.
//! Later replicas are added by the partition's leader ([`crate::cluster::mover`]), and a
//! replica moved away is deleted here. On restart the stored metadata state is there before
//! any election, so partitions are reopened at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta_client::MetaClient;
use crate::config::{Config, Seed};
use crate::raft::{GroupId, MemberNode, NodeId};
use crate::structures::meta::{MemberState, MetaCommand, MetaState};
use crate::{Error, Result};
use devicegrid_proto::ErrorCode;
use tokio_util::sync::CancellationToken;

/// How long a committed Join may take to show in this member's metadata before it is sent
/// again.
const JOIN_RETRY: Duration = Duration::from_secs(5);

/// Most voters of the metadata group.
pub const META_VOTERS: usize = 5;

/// What a data directory records about its member.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Identity {
    node_id: NodeId,
    cluster_name: String,
}

/// Refuses to start a member on another member's (or grid's) data directory.
pub fn check_identity(config: &Config) -> Result<()> {
    let path = config.data_dir.join("member.json");
    let mine = Identity {
        node_id: config.node_id,
        cluster_name: config.cluster_name.clone(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let stored: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
            if stored != mine {
                return Err(Error::bad_request(
                    ErrorCode::WrongDataDir,
                    format!(
                        "{} belongs to member {} of grid {:?}, not member {} of {:?}",
                        config.data_dir.display(),
                        stored.node_id,
                        stored.cluster_name,
                        mine.node_id,
                        mine.cluster_name
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_identity(&config.data_dir, &path, &mine)
        }
        Err(e) => Err(Error::Storage(format!("{}: {e}", path.display()))),
    }
}

fn write_identity(dir: &Path, path: &Path, id: &Identity) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Storage(format!("{}: {e}", dir.display())))?;
    let bytes = serde_json::to_vec_pretty(id).map_err(|e| Error::Internal(e.to_string()))?;
    crate::storage::write_durably(path, &bytes)
        .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))
}

fn nodes(seeds: &[Seed]) -> BTreeMap<NodeId, MemberNode> {
    seeds
        .iter()
        .map(|s| {
            (
                s.id,
                MemberNode {
                    addr: s.addr.clone(),
                },
            )
        })
        .collect()
}

/// What the hosting loop uses.
pub struct Hosting {
    /// Identity, address, zone and initial members.
    pub config: Arc<Config>,
    /// The groups it opens and removes.
    pub groups: Arc<Groups>,
    /// To register.
    pub meta: Arc<MetaClient>,
    /// Which replicas have the table (for initializing groups).
    pub liveness: Arc<Liveness>,
    /// SHA-256 of the bootstrap admin token: the grid's first user gets it.
    pub bootstrap_admin: Option<String>,
}

/// Runs until shutdown: initializes the metadata group if this is the first initial member,
/// registers this member, and keeps the hosted partitions in line with the table: opens
/// the groups of partitions it holds, initializes the ones it is first replica of at
/// bootstrap, and deletes replicas that were moved away.
pub async fn run(ctx: Arc<Hosting>, token: CancellationToken) {
    let mut meta_rx = ctx.groups.meta_watch();
    let mut seeds = ctx.config.seeds();
    seeds.sort_by_key(|s| s.id);
    let mut registered = false;
    let mut last_join = None;
    loop {
        let meta = ctx.groups.meta_state();
        let mut waiting = !registered;
        if !meta.bootstrapped() {
            waiting = true;
            if let Err(e) = init_meta_group(&ctx, &seeds).await {
                tracing::debug!(error = %e, "metadata group not initialized yet");
            }
        }
        // A committed Join reaches this member's copy of the metadata a moment later; it is
        // proposed again only if it has not arrived after a while.
        let join_due = last_join.is_none_or(|t: Instant| t.elapsed() > JOIN_RETRY);
        if needs_join(&ctx, &meta, registered) && join_due {
            match register(&ctx).await {
                Ok(()) => {
                    registered = true;
                    last_join = Some(Instant::now());
                }
                Err(e) => tracing::debug!(error = %e, "registration not done yet"),
            }
        } else if !needs_join(&ctx, &meta, registered) {
            registered = true;
        }
        if let Some(hash) = ctx
            .bootstrap_admin
            .as_ref()
            .filter(|_| meta.users.is_empty())
        {
            // Every member given the secret proposes it; the first commit wins and the
            // others change nothing.
            let cmd = MetaCommand::BootstrapAdmin {
                token_sha256: hash.clone(),
            };
            match ctx.meta.commit(cmd).await {
                Ok(_) => tracing::info!("bootstrap admin user registered"),
                Err(e) => {
                    waiting = true;
                    tracing::debug!(error = %e, "bootstrap admin not registered yet");
                }
            }
        }
        if meta.bootstrapped() {
            match host_partitions(&ctx, &meta).await {
                Ok(w) => waiting |= w,
                Err(e) => {
                    waiting = true;
                    tracing::warn!(error = %e, "hosting partitions failed");
                }
            }
        }
        let wait = if waiting {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(5)
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = meta_rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The lowest initial member initializes the metadata group (at most five voters).
async fn init_meta_group(ctx: &Hosting, seeds: &[Seed]) -> Result<()> {
    let raft = &ctx.groups.meta_group().raft;
    if seeds.first().map(|s| s.id) != Some(ctx.groups.id()) {
        return Ok(());
    }
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    if !initialized {
        let voters = nodes(&seeds[..seeds.len().min(META_VOTERS)]);
        tracing::info!(voters = ?voters.keys().collect::<Vec<_>>(), "initializing the metadata group");
        if let Err(e) = raft.initialize(voters).await {
            tracing::debug!(error = %e, "metadata group initialize");
        }
    }
    Ok(())
}

/// Whether this member must (re-)register: it is unknown, its address or zone changed, or
/// it was decommissioned before this process started (a restarted member joins again; a
/// member decommissioned while running stays so until it restarts).
fn needs_join(ctx: &Hosting, meta: &MetaState, registered: bool) -> bool {
    match meta.members.get(&ctx.groups.id()) {
        None => true,
        Some(m) => {
            m.addr != ctx.config.peer_advertised()
                || m.client_addr.as_deref() != Some(&ctx.config.advertised())
                || m.zone != ctx.config.zone
                || (!registered && m.state == MemberState::Decommissioned)
        }
    }
}

async fn register(ctx: &Hosting) -> Result<()> {
    let cmd = MetaCommand::Join {
        id: ctx.groups.id(),
        addr: ctx.config.peer_advertised(),
        zone: ctx.config.zone.clone(),
        client_addr: Some(ctx.config.advertised()),
    };
    ctx.meta.commit(cmd).await?;
    tracing::info!(member = ctx.groups.id(), "registered with the grid");
    Ok(())
}

/// Opens the groups of the partitions this member holds, initializes those it is the
/// first replica of at bootstrap, and removes those moved away (also data left behind by an
/// earlier removal that was cut short). Returns whether some group still waits to be
/// initialized. A failure on one partition does not hold up the others.
async fn host_partitions(ctx: &Hosting, meta: &MetaState) -> Result<bool> {
    let mut waiting = false;
    let mut failed = None;
    for p in 0..meta.partition_count {
        match host_partition(ctx, meta, p).await {
            Ok(w) => waiting |= w,
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(waiting),
    }
}

async fn host_partition(ctx: &Hosting, meta: &MetaState, p: u32) -> Result<bool> {
    if !meta.hosts(ctx.groups.id(), p) {
        if ctx.groups.get(GroupId::Partition(p)).is_some() || ctx.groups.storage().has_group(p) {
            ctx.groups.unhost_partition(p).await?;
        }
        return Ok(false);
    }
    let (group, _) = ctx.groups.host_partition(p).await?;
    let replicas = meta.replicas(p);
    // Only the table as bootstrapped creates groups; later replicas are added by the
    // group's leader and start empty.
    let created = meta.partitions.get(p as usize).is_some_and(|i| i.created);
    if created || replicas.first() != Some(&ctx.groups.id()) {
        return Ok(false);
    }
    // Initialized once a majority of the replicas host the group (they reported having the
    // partition table); an election before that only collects refusals. Retried on every
    // pass until it succeeds.
    let initialized = group
        .raft
        .is_initialized()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    if initialized {
        return Ok(false);
    }
    let hosting = replicas
        .iter()
        .filter(|id| **id == ctx.groups.id() || ctx.liveness.bootstrapped(**id))
        .count();
    if hosting * 2 <= replicas.len() {
        return Ok(true);
    }
    let members: BTreeMap<NodeId, MemberNode> = replicas
        .iter()
        .filter_map(|id| {
            meta.addr(*id).map(|a| {
                (
                    *id,
                    MemberNode {
                        addr: a.to_string(),
                    },
                )
            })
        })
        .collect();
    if let Err(e) = group.raft.initialize(members).await {
        tracing::debug!(partition = p, error = %e, "partition initialize");
        return Ok(true);
    }
    Ok(false)
}
