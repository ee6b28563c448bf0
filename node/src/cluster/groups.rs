//! The registry of the Raft groups this member hosts: the metadata group (with the
//! metadata state it publishes) and the partitions' groups, opened and removed as the
//! partition table says.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::cluster::group::{Group, QueueBounds};
use crate::config::Config;
use crate::raft::{
    GroupId, LogStore, MetaMachine, NetworkFactory, NodeId, PartitionMachine, Raft,
    StateMachineStore,
};
use crate::runtime::{Budget, Tasks};
use crate::storage::Storage;
use crate::structures::meta::MetaState;
use crate::transport::Transport;
use crate::{Error, Result};

/// What opening a group needs, shared by every group of the member.
struct Opener {
    node_id: NodeId,
    queue: QueueBounds,
    storage: Storage,
    raft_config: Arc<openraft::Config>,
    transport: Arc<Transport>,
    tasks: Tasks,
}

impl Opener {
    async fn open(
        &self,
        id: GroupId,
        meta_tx: Option<watch::Sender<Arc<MetaState>>>,
    ) -> Result<Arc<Group>> {
        let log = LogStore::new(self.storage.clone(), id.to_key());
        let committed = log.committed_index();
        let restored_term = log.stored_term()?;
        let network = NetworkFactory::new(id, self.transport.clone());
        let (config, id_) = (self.raft_config.clone(), self.node_id);
        let started = match meta_tx {
            Some(tx) => {
                let sm = StateMachineStore::open(self.storage.clone(), id, MetaMachine::new(tx))?;
                Raft::new(id_, config, network, log, sm).await
            }
            None => {
                let sm = StateMachineStore::open(self.storage.clone(), id, PartitionMachine)?;
                Raft::new(id_, config, network, log, sm).await
            }
        };
        let raft = started.map_err(|e| Error::Internal(format!("start {id}: {e}")))?;
        Ok(Group::new(
            id,
            raft,
            committed,
            restored_term,
            self.tasks.child(),
            &self.queue,
        ))
    }
}

/// The groups hosted here.
pub struct Groups {
    opener: Opener,
    meta: Arc<Group>,
    meta_rx: watch::Receiver<Arc<MetaState>>,
    partitions: RwLock<HashMap<u32, Arc<Group>>>,
}

impl Groups {
    /// Opens the metadata group; partitions are opened later, by the hosting loop. Group
    /// tasks run under `tasks`.
    pub async fn open(
        config: &Config,
        storage: Storage,
        transport: Arc<Transport>,
        tasks: Tasks,
    ) -> Result<Groups> {
        let raft_config =
            crate::raft::group_config(&config.cluster_name, config.snapshot_after_logs)
                .map_err(|e| Error::Internal(e.to_string()))?;
        let opener = Opener {
            node_id: config.node_id,
            queue: QueueBounds {
                items: config.max_queued_writes,
                bytes: Budget::new(config.max_queued_write_bytes),
            },
            storage,
            raft_config,
            transport,
            tasks,
        };
        let (meta_tx, meta_rx) = watch::channel(Arc::new(MetaState::default()));
        let meta = opener.open(GroupId::Meta, Some(meta_tx)).await?;
        Ok(Groups {
            opener,
            meta,
            meta_rx,
            partitions: RwLock::new(HashMap::new()),
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.opener.node_id
    }

    /// The member's storage.
    pub fn storage(&self) -> &Storage {
        &self.opener.storage
    }

    /// The latest applied metadata state.
    pub fn meta_state(&self) -> Arc<MetaState> {
        self.meta_rx.borrow().clone()
    }

    /// A watch of the metadata state.
    pub fn meta_watch(&self) -> watch::Receiver<Arc<MetaState>> {
        self.meta_rx.clone()
    }

    /// The metadata group.
    pub fn meta_group(&self) -> &Arc<Group> {
        &self.meta
    }

    /// A hosted group.
    pub fn get(&self, id: GroupId) -> Option<Arc<Group>> {
        match id {
            GroupId::Meta => Some(self.meta.clone()),
            GroupId::Partition(p) => self
                .partitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&p)
                .cloned(),
        }
    }

    /// Every hosted group, the metadata group first.
    pub fn all(&self) -> Vec<Arc<Group>> {
        let parts = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<Group>> = parts.values().cloned().collect();
        v.sort_by_key(|g| g.id);
        v.insert(0, self.meta.clone());
        v
    }

    /// Opens (or returns) the group of partition `p`; `true` when newly opened.
    pub async fn host_partition(&self, p: u32) -> Result<(Arc<Group>, bool)> {
        if let Some(g) = self.get(GroupId::Partition(p)) {
            return Ok((g, false));
        }
        let g = self.opener.open(GroupId::Partition(p), None).await?;
        let mut parts = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        Ok((parts.entry(p).or_insert(g).clone(), true))
    }

    /// Stops this member's replica of partition `p` and deletes its data (the replica was
    /// moved away). Only the hosting loop calls it, so it never races an open of `p`.
    pub async fn unhost_partition(&self, p: u32) -> Result<()> {
        let removed = self
            .partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        if let Some(g) = removed {
            let stopped = tokio::time::timeout(Duration::from_secs(10), g.raft.shutdown()).await;
            if stopped.is_err() {
                tracing::warn!(partition = p, "replica did not stop within 10 s");
            }
            g.stop_tasks();
        }
        self.opener
            .storage
            .drop_group(GroupId::Partition(p).to_key())
            .await?;
        tracing::info!(partition = p, "replica moved away; its data is deleted");
        Ok(())
    }

    /// Shuts every Raft group down, all at once, waiting at most `timeout`, and stops their
    /// tasks. Entries still being replicated end with an error (their outcome is unknown).
    pub async fn shutdown(&self, timeout: Duration) {
        let groups = self.all();
        let stops = groups.iter().map(|g| g.raft.shutdown());
        if tokio::time::timeout(timeout, futures::future::join_all(stops))
            .await
            .is_err()
        {
            tracing::warn!(?timeout, "some Raft groups did not shut down in time");
        }
        for g in groups {
            g.stop_tasks();
        }
    }
}
