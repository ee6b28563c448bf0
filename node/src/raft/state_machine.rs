//! [`RaftStateMachine`] for one group, generic over the [`Machine`] it applies (maps for
//! partitions, metadata for the metadata group). Each `apply` call writes its keys to sled
//! one by one, the applied log id last; snapshots are the group's whole key range.
//!
//! sled is not synced on each apply, and an apply is not one sled batch, so after a crash a
//! group's range may hold part of an apply. A member that did not stop cleanly
//! ([`Storage::needs_rebuild`]) therefore rebuilds each state machine when it opens it: the
//! range is replaced by the group's latest stored snapshot (synced before the log was purged
//! up to it: every snapshot is synced when it is built or installed, and openraft purges
//! only up to one), and openraft applies the log from there.

use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::machine::Machine;
use super::{any_error, Entry, GroupId, MemberNode, NodeId, Response, StorageError, TypeConfig};
use crate::storage::{decode, encode, group_key, sm_space, Overlay, Storage};

/// What the `APPLIED` key of a group holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MemberNode>,
    /// Partition revision: the version counter of map entries.
    revision: u64,
}

/// A snapshot as stored and sent: the group's whole state-machine range.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    /// `(key suffix, value)` pairs of the group's range.
    entries: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
}

/// A snapshot kept in the `snapshots` tree.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: serde_bytes::ByteBuf,
}

/// One group's state machine.
pub struct StateMachineStore<M> {
    group: GroupId,
    st: Storage,
    applied: AppliedState,
    machine: M,
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(any_error(e)).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_state_machine(any_error(e)).into()
}

impl<M: Machine> StateMachineStore<M> {
    /// Opens the state machine of `group`, applying with `machine`; after a crash, rebuilt
    /// from the group's snapshot.
    pub fn open(st: Storage, group: GroupId, mut machine: M) -> crate::Result<Self> {
        if st.needs_rebuild(group.to_key()) {
            rebuild(&st, group.to_key())?;
        }
        let key = group_key(group.to_key(), &[sm_space::APPLIED]);
        let applied = match st.state_machine.get(key)? {
            Some(b) => decode(&b)?,
            None => AppliedState::default(),
        };
        machine.stored(&st, true)?;
        Ok(StateMachineStore {
            group,
            st,
            applied,
            machine,
        })
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachineStore<M> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>), StorageError> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tree = self.st.state_machine.clone();
        let mut view = Overlay::new(&tree, self.group.to_key());
        let mut out = Vec::new();
        for entry in entries {
            self.applied.last_applied = Some(entry.log_id);
            let resp = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(req) => self
                    .machine
                    .apply(&mut view, &mut self.applied.revision, req)
                    .map_err(write_err)?,
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Response::None
                }
            };
            out.push(resp);
        }
        view.put(
            &[sm_space::APPLIED],
            encode(&self.applied).map_err(write_err)?,
        );
        view.commit(&[sm_space::APPLIED]).map_err(write_err)?;
        self.machine.stored(&self.st, false).map_err(read_err)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Copy the range here, between two applies, so the snapshot is consistent with
        // `last_applied` while building it runs concurrently with later applies.
        let mut entries = Vec::new();
        let mut error = None;
        for item in self
            .st
            .state_machine
            .scan_prefix(self.group.to_key().to_be_bytes())
        {
            match item {
                Ok((k, v)) => entries.push((
                    serde_bytes::ByteBuf::from(k[4..].to_vec()),
                    serde_bytes::ByteBuf::from(v.to_vec()),
                )),
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        SnapshotBuilder {
            group: self.group,
            st: self.st.clone(),
            last_applied: self.applied.last_applied,
            membership: self.applied.membership.clone(),
            data: SnapshotData { entries },
            error,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let g = self.group.to_key();
        let (inserts, applied) = restored(g, meta, &bytes)?;
        let old_keys: Vec<sled::IVec> = self
            .st
            .state_machine
            .scan_prefix(g.to_be_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        let stored = encode(&StoredSnapshot {
            meta: meta.clone(),
            data: serde_bytes::ByteBuf::from(bytes),
        })
        .map_err(write_err)?;
        // One transaction over both trees: a crash leaves either the old state and snapshot
        // or the new ones, never an empty partition.
        (&self.st.state_machine, &self.st.snapshots)
            .transaction(|(sm, snaps)| {
                for k in &old_keys {
                    sm.remove(k)?;
                }
                for (k, v) in &inserts {
                    sm.insert(k.as_slice(), v.as_slice())?;
                }
                snaps.insert(&g.to_be_bytes(), stored.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| write_err(format!("{e:?}")))?;
        // Durable before openraft purges the log up to it.
        self.st.flusher.flush().await.map_err(write_err)?;
        self.applied = applied;
        self.machine.stored(&self.st, true).map_err(read_err)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(bytes) = self
            .st
            .snapshots
            .get(self.group.to_key().to_be_bytes())
            .map_err(read_err)?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode(&bytes).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data.into_vec())),
        }))
    }
}

/// A key of the `state_machine` tree and its value.
type KeyValue = (Vec<u8>, Vec<u8>);

/// The keys and applied state of `group`'s range restored from snapshot `bytes`.
#[allow(clippy::result_large_err)] // openraft's StorageError
fn restored(
    group: u32,
    meta: &SnapshotMeta<NodeId, MemberNode>,
    bytes: &[u8],
) -> Result<(Vec<KeyValue>, AppliedState), StorageError> {
    let data: SnapshotData = decode(bytes).map_err(write_err)?;
    let mut revision = 0;
    let mut inserts = Vec::with_capacity(data.entries.len() + 1);
    for (k, v) in &data.entries {
        if k.as_slice() == [sm_space::APPLIED] {
            revision = decode::<AppliedState>(v).map_err(write_err)?.revision;
            continue;
        }
        inserts.push((group_key(group, k), v.to_vec()));
    }
    let applied = AppliedState {
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        revision,
    };
    inserts.push((
        group_key(group, &[sm_space::APPLIED]),
        encode(&applied).map_err(write_err)?,
    ));
    Ok((inserts, applied))
}

/// Replaces `group`'s state-machine range by its latest stored snapshot (empty without one).
fn rebuild(st: &Storage, group: u32) -> crate::Result<()> {
    let mut batch = sled::Batch::default();
    let mut old = 0;
    for key in st.state_machine.scan_prefix(group.to_be_bytes()).keys() {
        batch.remove(key?);
        old += 1;
    }
    let mut restored_keys = 0;
    if let Some(bytes) = st.snapshots.get(group.to_be_bytes())? {
        let stored: StoredSnapshot = decode(&bytes)?;
        let (inserts, _) = restored(group, &stored.meta, &stored.data)
            .map_err(|e| crate::Error::Storage(e.to_string()))?;
        restored_keys = inserts.len();
        for (k, v) in inserts {
            batch.insert(k, v);
        }
    }
    if old > 0 || restored_keys > 0 {
        st.state_machine.apply_batch(batch)?;
        tracing::info!(
            group,
            dropped = old,
            restored = restored_keys,
            "state machine rebuilt from its snapshot after an unclean stop"
        );
    }
    Ok(())
}

/// Stores `snap` as the group's snapshot unless a newer one (installed meanwhile) is there.
#[allow(clippy::result_large_err)] // openraft's StorageError
fn store_if_newer(
    tree: &sled::Tree,
    group: u32,
    snap: &StoredSnapshot,
) -> Result<(), StorageError> {
    let key = group.to_be_bytes();
    let new = encode(snap).map_err(write_err)?;
    loop {
        let current = tree.get(key).map_err(read_err)?;
        if let Some(c) = &current {
            let c: StoredSnapshot = decode(c).map_err(read_err)?;
            if c.meta.last_log_id >= snap.meta.last_log_id {
                return Ok(());
            }
        }
        match tree
            .compare_and_swap(key, current, Some(new.as_slice()))
            .map_err(write_err)?
        {
            Ok(()) => return Ok(()),
            Err(_) => continue, // replaced meanwhile: compare again
        }
    }
}

/// Builds a snapshot from the range copied by `get_snapshot_builder`.
pub struct SnapshotBuilder {
    group: GroupId,
    st: Storage,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MemberNode>,
    data: SnapshotData,
    error: Option<String>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        if let Some(e) = &self.error {
            return Err(read_err(e));
        }
        let bytes = encode(&self.data).map_err(read_err)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}-{nanos}", self.group, l.leader_id.term, l.index),
            None => format!("{}-none-{nanos}", self.group),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: serde_bytes::ByteBuf::from(bytes.clone()),
        };
        store_if_newer(&self.st.snapshots, self.group.to_key(), &stored)?;
        // Durable before openraft purges the log up to it (built off the group's core).
        self.st.flusher.flush().await.map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
