//! [`RaftLogStorage`] for one group over the member's shared sled trees.

// The helpers return openraft's `StorageError`, which is large; its size is openraft's choice.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};

use super::{any_error, Entry, NodeId, StorageError, TypeConfig};
use crate::storage::{decode, encode, group_key, StateKey, Storage};

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

    fn log_key(&self, index: u64) -> Vec<u8> {
        group_key(self.group, &index.to_be_bytes())
    }

    fn state_key(&self, k: StateKey) -> Vec<u8> {
        group_key(self.group, &[k as u8])
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        k: StateKey,
    ) -> Result<Option<T>, StorageError> {
        let bytes = self
            .st
            .raft_state
            .get(self.state_key(k))
            .map_err(|e| StorageIOError::read(any_error(e)))?;
        bytes
            .map(|b| decode(&b))
            .transpose()
            .map_err(|e| StorageIOError::read(any_error(e)).into())
    }

    fn write_state<T: serde::Serialize>(&self, k: StateKey, v: &T) -> Result<(), StorageError> {
        let bytes = encode(v).map_err(|e| StorageIOError::write(any_error(e)))?;
        self.st
            .raft_state
            .insert(self.state_key(k), bytes)
            .map_err(|e| StorageIOError::write(any_error(e)))?;
        Ok(())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StorageError> {
        let last = self
            .st
            .log
            .range(self.log_key(0)..=self.log_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| StorageIOError::read_logs(any_error(e)))?;
        match last {
            Some((_, v)) => {
                let entry: Entry =
                    decode(&v).map_err(|e| StorageIOError::read_logs(any_error(e)))?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    /// Removes every log entry in `[from, to]`.
    fn remove_range(&self, from: u64, to: u64) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.st.log.range(self.log_key(from)..=self.log_key(to)) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(any_error(e)))?;
            batch.remove(k);
        }
        self.st
            .log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
        Ok(())
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
        let mut out = Vec::new();
        for item in self.st.log.range(self.log_key(start)..=self.log_key(end)) {
            let (_, v) = item.map_err(|e| StorageIOError::read_logs(any_error(e)))?;
            out.push(decode(&v).map_err(|e| StorageIOError::read_logs(any_error(e)))?);
        }
        Ok(out)
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
            .flusher
            .flush()
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(|e| StorageIOError::write_logs(any_error(e)))?;
            batch.insert(self.log_key(entry.log_id.index), bytes);
        }
        self.st
            .log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
        // Group commit: the flusher acknowledges once one fsync covers this write.
        self.st.flusher.flush_then(move |r| {
            callback.log_io_completed(r.map_err(std::io::Error::other));
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.remove_range(log_id.index, u64::MAX)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError> {
        self.write_state(StateKey::LastPurged, &log_id)?;
        self.remove_range(0, log_id.index)
    }
}
