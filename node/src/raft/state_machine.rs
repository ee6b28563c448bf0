//! [`RaftStateMachine`] for one group, generic over the [`Machine`] it applies (maps for
//! partitions, metadata for the metadata group). Each `apply` call is one atomic sled batch,
//! applied log id included; snapshots are the group's whole key range.

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
    /// Opens the state machine of `group`, applying with `machine`.
    pub fn open(st: Storage, group: GroupId, mut machine: M) -> crate::Result<Self> {
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
        view.commit().map_err(write_err)?;
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
        let data: SnapshotData = decode(&bytes).map_err(write_err)?;
        let g = self.group.to_key();
        let mut revision = 0;
        let mut inserts = Vec::with_capacity(data.entries.len() + 1);
        for (k, v) in &data.entries {
            if k.as_slice() == [sm_space::APPLIED] {
                revision = decode::<AppliedState>(v).map_err(write_err)?.revision;
                continue;
            }
            inserts.push((group_key(g, k), v.to_vec()));
        }
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision,
        };
        inserts.push((
            group_key(g, &[sm_space::APPLIED]),
            encode(&applied).map_err(write_err)?,
        ));
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
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}
