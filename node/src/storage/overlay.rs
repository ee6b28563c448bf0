//! Pending writes of one `apply` call, read back before they reach sled.
//!
//! Later operations in one `apply` call must see earlier ones, so reads consult the pending
//! writes first. The writes then go to sled key by key (each key atomic on its own), the
//! applied log id last. Not as one sled batch: sled seals and writes its I/O buffer for every
//! batch, which cost more than half of a member's write throughput. A crash can therefore
//! leave an apply half done in sled; a member that did not stop cleanly rebuilds each
//! state machine from its snapshot and the log (see `raft::state_machine`).

use std::collections::BTreeMap;

use crate::storage::group_key;
use crate::Result;

/// Reads through to one group's range of a tree, buffering writes.
pub struct Overlay<'a> {
    tree: &'a sled::Tree,
    group: u32,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    /// An overlay over `group`'s range of `tree`.
    pub fn new(tree: &'a sled::Tree, group: u32) -> Self {
        Overlay {
            tree,
            group,
            pending: BTreeMap::new(),
        }
    }

    /// The current value of `suffix`, pending writes included.
    pub fn get(&self, suffix: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = group_key(self.group, suffix);
        if let Some(v) = self.pending.get(&key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(&key)?.map(|v| v.to_vec()))
    }

    /// Buffers a write of `suffix`.
    pub fn put(&mut self, suffix: &[u8], value: Vec<u8>) {
        self.pending
            .insert(group_key(self.group, suffix), Some(value));
    }

    /// Buffers a removal of `suffix`.
    pub fn remove(&mut self, suffix: &[u8]) {
        self.pending.insert(group_key(self.group, suffix), None);
    }

    /// Writes every buffered change to sled, `last` (the applied log id) after the others.
    pub fn commit(mut self, last: &[u8]) -> Result<()> {
        let last = self.pending.remove_entry(&group_key(self.group, last));
        for (k, v) in self.pending.into_iter().chain(last) {
            match v {
                Some(v) => self.tree.insert(k, v)?,
                None => self.tree.remove(k)?,
            };
        }
        Ok(())
    }
}
