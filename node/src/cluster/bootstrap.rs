//! First start and partition hosting.
//!
//! The lowest-numbered initial member initializes the metadata group with the initial
//! members as voters (at most five; the rest join as learners). Its leader then proposes
//! `Bootstrap`, which records the members and creates the partition table. Every member
//! watches the applied metadata state and opens the groups of the partitions it holds; a
//! partition's first replica initializes the group, so leaders start out spread evenly.
//! On restart the stored metadata state is there before any election, so partitions are
//! reopened at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::meta::{MemberInfo, MemberState, MetaCommand, MetaState};
use crate::cluster::Grid;
use crate::config::{Config, Seed};
use crate::raft::{GroupId, MemberNode, NodeId, Request};
use crate::{Error, Result};

/// Most voters of the metadata group.
const META_VOTERS: usize = 5;

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
                    "wrong_data_dir",
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
    std::fs::write(path, bytes).map_err(|e| Error::Storage(format!("{}: {e}", path.display())))
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

/// Runs until shutdown: bootstraps the grid if needed and keeps hosted partitions open.
pub async fn run(grid: Arc<Grid>) {
    let shutdown = grid.shutdown_token().clone();
    let mut meta_rx = grid.meta_watch();
    let mut seeds = grid.config.seeds();
    seeds.sort_by_key(|s| s.id);
    let mut waiting = false;
    loop {
        let meta = grid.meta_state();
        if !meta.bootstrapped() {
            if let Err(e) = try_bootstrap(&grid, &seeds).await {
                tracing::debug!(error = %e, "bootstrap not done yet");
            }
        } else {
            match host_partitions(&grid, &meta).await {
                Ok(w) => waiting = w,
                Err(e) => {
                    waiting = true;
                    tracing::warn!(error = %e, "opening partitions failed");
                }
            }
            if let Err(e) = add_meta_learners(&grid, &meta).await {
                tracing::debug!(error = %e, "metadata learners not added yet");
            }
        }
        let wait = if meta.bootstrapped() && !waiting {
            Duration::from_secs(5)
        } else {
            Duration::from_millis(300)
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = meta_rx.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn try_bootstrap(grid: &Grid, seeds: &[Seed]) -> Result<()> {
    let raft = &grid.meta_group().raft;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    if !initialized && seeds.first().map(|s| s.id) == Some(grid.id) {
        let voters = nodes(&seeds[..seeds.len().min(META_VOTERS)]);
        tracing::info!(voters = ?voters.keys().collect::<Vec<_>>(), "initializing the metadata group");
        if let Err(e) = raft.initialize(voters).await {
            tracing::debug!(error = %e, "metadata group initialize");
        }
    }
    if grid.meta_group().is_leader() {
        let members = seeds
            .iter()
            .map(|s| MemberInfo {
                id: s.id,
                addr: s.addr.clone(),
                state: MemberState::Active,
            })
            .collect();
        let cmd = MetaCommand::Bootstrap {
            members,
            partition_count: grid.config.partitions,
            replication_factor: grid.config.replication_factor,
        };
        raft.client_write(Request::Meta(cmd))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tracing::info!(partitions = grid.config.partitions, "grid bootstrapped");
    }
    Ok(())
}

/// Opens the groups of the partitions this member holds and initializes those it is the
/// first replica of. Returns whether some group still waits to be initialized.
async fn host_partitions(grid: &Grid, meta: &MetaState) -> Result<bool> {
    let mut waiting = false;
    for p in 0..meta.partition_count {
        let replicas = meta.replicas(p);
        if !replicas.contains(&grid.id) {
            continue;
        }
        let (group, _) = grid.host_partition(p).await?;
        // Initialized once a majority of the replicas host the group (they reported having
        // the partition table); an election before that only collects refusals. Retried on
        // every pass until it succeeds.
        if replicas.first() == Some(&grid.id) {
            let initialized = group
                .raft
                .is_initialized()
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            let hosting = replicas
                .iter()
                .filter(|id| **id == grid.id || grid.liveness.bootstrapped(**id))
                .count();
            let others_ready = hosting * 2 > replicas.len();
            if !initialized && !others_ready {
                waiting = true;
            } else if !initialized {
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
                    waiting = true;
                }
            }
        }
    }
    Ok(waiting)
}

async fn add_meta_learners(grid: &Grid, meta: &MetaState) -> Result<()> {
    let g = grid.meta_group();
    if !g.is_leader() {
        return Ok(());
    }
    let current = g.raft.metrics().borrow().membership_config.clone();
    for m in meta.members.values() {
        if current.nodes().any(|(id, _)| *id == m.id) {
            continue;
        }
        g.raft
            .add_learner(
                m.id,
                MemberNode {
                    addr: m.addr.clone(),
                },
                false,
            )
            .await
            .map_err(|e| Error::Unavailable {
                group: GroupId::Meta,
                message: e.to_string(),
            })?;
    }
    Ok(())
}
