//! [`RaftLogStorage`] for one group over the member's shared log ([`crate::storage::wal`]):
//! entries are MessagePack-encoded here and stored as bytes there.

// The helpers return openraft's `StorageError`, which is large; its size is openraft's choice.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::{any_error, Entry, NodeId, StorageError, TypeConfig};
use crate::storage::{decode, encode, StateKey, Storage};

/// One group's Raft log, vote and committed id. Clones share everything.
#[derive(Clone)]
pub struct LogStore {
    group: u32,
    st: Storage,
    /// Last committed index, exported as a metric (0 before the first commit).
    committed: Arc<AtomicU64>,
}

impl LogStore {
    /// The log store of group `group` (see [`crate::raft::GroupId::to_key`]).
    pub fn new(st: Storage, group: u32) -> Self {
        LogStore {
            group,
            st,
            committed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Shared handle to the committed index.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The vote's term found in storage (0: none), read before the group starts.
    pub fn stored_term(&self) -> crate::Result<u64> {
        let vote: Option<Vote<NodeId>> = self
            .read_state(StateKey::Vote)
            .map_err(|e| crate::Error::Storage(e.to_string()))?;
        Ok(vote.map_or(0, |v| v.leader_id().term))
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        k: StateKey,
    ) -> Result<Option<T>, StorageError> {
        self.st
            .wal
            .state(self.group, k as u8)
            .map(|b| decode(&b))
            .transpose()
            .map_err(|e| StorageIOError::read(any_error(e)).into())
    }

    fn write_state<T: serde::Serialize>(&self, k: StateKey, v: &T) -> Result<(), StorageError> {
        let bytes = encode(v).map_err(|e| StorageIOError::write(any_error(e)))?;
        self.st
            .wal
            .set_state(self.group, k as u8, bytes)
            .map_err(|e| StorageIOError::write(any_error(e)))?;
        Ok(())
    }

    fn read(&self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let bytes = self
            .st
            .wal
            .read(self.group, start, end)
            .map_err(|e| StorageIOError::read_logs(any_error(e)))?;
        bytes
            .iter()
            .map(|b| decode(b).map_err(|e| StorageIOError::read_logs(any_error(e)).into()))
            .collect()
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let Some(last) = self.st.wal.last_index(self.group) else {
            return Ok(None);
        };
        Ok(self.read(last, last)?.pop().map(|e| e.log_id))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(x) => x - 1,
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Ok(Vec::new());
        }
        self.read(start, end)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId<NodeId>> = self.read_state(StateKey::LastPurged)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_state(StateKey::Vote, vote)?;
        self.st
            .wal
            .sync()
            .await
            .map_err(|e| StorageIOError::write_vote(any_error(e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_state(StateKey::Vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        // Not flushed: that would put a second fsync on every write's path. A committed id
        // lost in a crash only matters to a leader restored in the same term, and the read
        // barrier covers that case (see `cluster::group`).
        self.write_state(StateKey::Committed, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let c: Option<Option<LogId<NodeId>>> = self.read_state(StateKey::Committed)?;
        let c = c.flatten();
        if let Some(c) = c {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(c)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut first = None;
        let mut encoded = Vec::new();
        for entry in entries {
            first.get_or_insert(entry.log_id.index);
            encoded.push(encode(&entry).map_err(|e| StorageIOError::write_logs(any_error(e)))?);
        }
        let Some(first) = first else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Group commit: the log's writer answers once one sync covers this append.
        self.st
            .wal
            .append(
                self.group,
                first,
                encoded,
                Box::new(move |r| callback.log_io_completed(r.map_err(std::io::Error::other))),
            )
            .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.st
            .wal
            .truncate(self.group, log_id.index)
            .map_err(|e| StorageIOError::write_logs(any_error(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        // openraft purges only up to a snapshot it built or installed, and the state machine
        // stores every snapshot and syncs sled before reporting it: after a crash the state
        // machine is rebuilt from that snapshot, so the log may forget what it covers.
        self.write_state(StateKey::LastPurged, &log_id)?;
        self.st
            .wal
            .purge(self.group, log_id.index)
            .map_err(|e| StorageIOError::write_logs(any_error(e)).into())
    }
}
