//! Pending writes of one `apply` call, read back before they reach sled.
//!
//! A Raft entry is applied atomically: every write of the entries in one `apply` call,
//! and the new applied log id, go to sled in one batch. Later operations in the same call
//! must see earlier ones, so reads consult the pending writes first.

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

    /// Writes every buffered change to sled in one atomic batch.
    pub fn commit(self) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}
