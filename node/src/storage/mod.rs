//! A member's storage: one Raft log for every group ([`wal`]) and one sled database for
//! the groups' state machines and snapshots.
//!
//! The log (`<data>/raft-log/`) holds every group's entries, vote, committed id and purge
//! point; one writer thread packs the appends and votes of all groups into one write and
//! one `fdatasync` (group commit). sled (`<data>/sled/`) has two trees; every key starts
//! with the 4-byte big-endian group id (see [`crate::raft::GroupId::to_key`]), so one
//! group's data is a contiguous range that can be scanned, snapshotted or dropped on its own.
//!
//! | tree | key after the group id | value |
//! | --- | --- | --- |
//! | `state_machine` | `0x00` applied state, `0x01 map 0x00 key` map entries, `0x02` metadata state, `0x03 expiry key` TTL index | msgpack |
//! | `snapshots` | (none) | the group's latest snapshot: metadata and data |
//!
//! Durability: an append or a vote is acknowledged once the log's writer synced it. The
//! state machines are neither synced on each apply nor written as one sled batch per apply;
//! a member that stopped cleanly leaves a marker ([`CLEAN_STOP`]) after syncing everything,
//! and one that did not rebuilds each state machine from its latest snapshot plus the log.
//! So sled is synced ([`Flusher`]: sled's flush, then `fdatasync` of its files,
//! [`SyncFiles`]) when a snapshot is stored (the log is purged only up to one), when a
//! group is dropped and when the member stops.

mod flush;
mod migrate;
mod overlay;
pub mod space;
pub mod wal;

pub use flush::{FlushError, Flusher, SyncFiles};
pub use overlay::Overlay;

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};

use crate::{Error, Result};

/// How often sled writes out what it buffered (without syncing it).
const SLED_FLUSH_EVERY_MS: u64 = 1000;

/// The file a member leaves in its data directory when it stopped after syncing everything.
pub const CLEAN_STOP: &str = "stopped-cleanly";

/// Keys of a group's state values in the log.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub enum StateKey {
    /// The persisted vote.
    Vote = 1,
    /// The last committed log id.
    Committed = 2,
    /// The last purged log id.
    LastPurged = 3,
}

/// Sub-spaces of a group's range in the `state_machine` tree.
pub mod sm_space {
    /// Last applied log id, membership and per-partition revision.
    pub const APPLIED: u8 = 0x00;
    /// Map entries: `map 0x00 key`.
    pub const MAP: u8 = 0x01;
    /// The metadata group's state (members, partition table).
    pub const META: u8 = 0x02;
    /// Expiry index of map entries: `expires_at_ms (u64 BE) entry key`, empty values.
    pub const EXPIRY: u8 = 0x03;
}

/// A member's Raft log, its sled database and the trees every group shares.
#[derive(Clone)]
pub struct Storage {
    /// The database.
    pub db: sled::Db,
    /// Every group's Raft log, vote, committed and purged ids.
    pub wal: wal::Wal,
    /// State machine data of every group.
    pub state_machine: sled::Tree,
    /// Latest snapshot of every group.
    pub snapshots: sled::Tree,
    /// Syncs sled.
    pub flusher: Flusher,
    /// Free space of the data directory.
    pub space: std::sync::Arc<space::Space>,
    /// After an unclean stop: groups whose state machines were not rebuilt yet.
    rebuild: std::sync::Arc<std::sync::Mutex<Option<std::collections::HashSet<u32>>>>,
    dir: std::path::PathBuf,
}

impl Storage {
    /// Opens (or creates) the log and the database under `dir`, keeping `reserve` bytes
    /// free.
    pub fn open(dir: &Path, reserve: u64) -> Result<Self> {
        Self::open_with(dir, reserve, wal::WalOptions::default())
    }

    /// [`Storage::open`] with the log's file sizes.
    pub fn open_with(dir: &Path, reserve: u64, log: wal::WalOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("create {}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(256 * 1024 * 1024)
            // Durability comes from explicit syncs (before a purge, at a stop); the timer only
            // keeps what waits for one small, so a purge does not wait for a whole bulk load.
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .open()?;
        let files = SyncFiles::open(&dir.join("sled"))
            .map_err(|e| Error::Storage(format!("open {}: {e}", dir.display())))?;
        let wal = wal::Wal::open(&dir.join("raft-log"), log)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let io = |e: std::io::Error| Error::Storage(format!("{}: {e}", dir.display()));
        let marker = dir.join(CLEAN_STOP);
        let clean = marker.exists();
        if clean {
            // From here on, a crash must be seen as one.
            std::fs::remove_file(&marker).map_err(io)?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        let state_machine = db.open_tree("state_machine")?;
        let rebuild = (!clean && !state_machine.is_empty()).then(Default::default);
        if rebuild.is_some() {
            tracing::warn!(
                dir = %dir.display(),
                "the member did not stop cleanly: state machines are rebuilt from their snapshots and the log"
            );
        }
        let st = Storage {
            rebuild: std::sync::Arc::new(std::sync::Mutex::new(rebuild)),
            dir: dir.to_path_buf(),
            wal,
            state_machine,
            snapshots: db.open_tree("snapshots")?,
            flusher: Flusher::spawn(db.clone(), Some(files)),
            space: std::sync::Arc::new(space::Space::new(dir, reserve)),
            db,
        };
        migrate::log_out_of_sled(&st)?;
        Ok(st)
    }

    /// Makes everything written so far durable: the log, then sled.
    pub async fn sync(&self) -> Result<()> {
        let log = self.wal.sync().await;
        let db = self.flusher.flush().await;
        log.map_err(|e| Error::Storage(e.to_string()))?;
        db.map_err(|e| Error::Storage(e.to_string()))
    }

    /// Syncs everything and leaves the clean-stop marker: nothing may be written after it.
    pub async fn close(&self) -> Result<()> {
        self.sync().await?;
        write_durably(&self.dir.join(CLEAN_STOP), b"")
            .map_err(|e| Error::Storage(format!("{}: {e}", self.dir.display())))
    }

    /// Whether `group`'s state machine is to be rebuilt (the member did not stop cleanly and
    /// it was not rebuilt yet); true once per group.
    pub fn needs_rebuild(&self, group: u32) -> bool {
        let mut rebuild = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        rebuild.as_mut().is_some_and(|done| done.insert(group))
    }
}

impl Storage {
    /// Whether anything of `group` is stored.
    pub fn has_group(&self, group: u32) -> bool {
        let prefix = group.to_be_bytes();
        self.wal.has_group(group)
            || [&self.state_machine, &self.snapshots]
                .iter()
                .any(|t| t.scan_prefix(prefix).next().is_some())
    }

    /// Deletes everything of `group` (log, vote, state machine, snapshot) and syncs: the
    /// member gave its replica away. The group must not be running. The log goes first, so
    /// a crash half-way leaves state that `has_group` still sees, never a log without it.
    pub async fn drop_group(&self, group: u32) -> Result<()> {
        let prefix = group.to_be_bytes();
        self.wal
            .drop_group(group)
            .map_err(|e| Error::Storage(e.to_string()))?;
        self.wal
            .sync()
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        for tree in [&self.state_machine, &self.snapshots] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(prefix).keys() {
                batch.remove(key?);
            }
            tree.apply_batch(batch)?;
        }
        self.flusher
            .flush()
            .await
            .map_err(|e| Error::Storage(e.to_string()))
    }
}

/// Writes `bytes` to `path` so that after a crash or power loss the file holds either its
/// old content or all of `bytes`: a file beside it, synced, renamed over `path`, and the
/// directory synced.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Key of `suffix` in `group`'s range.
pub fn group_key(group: u32, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + suffix.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Serializes with MessagePack (struct fields by name, so stored data survives field reordering).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(value).map_err(|e| Error::Storage(format!("encode: {e}")))
}

/// Deserializes MessagePack written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Storage(format!("decode: {e}")))
}
