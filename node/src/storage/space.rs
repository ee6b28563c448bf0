//! Free disk space of the data directory. A member that lets its disk fill up turns every
//! write into a storage error half-way (a log append that fails stops the Raft group), so it
//! keeps a reserve instead: once free space drops below `min_free_disk_bytes`, partition
//! leaders refuse new client writes at once (507 `insufficient_storage`, nothing written)
//! while reads, replication of what was already accepted, expiries and deletes go on in the
//! reserve; when space comes back, writes are taken again, with no restart.
//!
//! Free space is measured twice a second; in between, every admitted write is charged
//! against it ([`Space::admit`], at [`WRITE_AMPLIFICATION`] times its size), so a burst of
//! large writes meets the reserve before it meets a full disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::Every;

/// How often free space is measured.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Disk bytes a write is charged per byte between measurements: the Raft log entry and the
/// state machine each hold the value once, and sled's log-structured pages rewrite about as
/// much again.
pub const WRITE_AMPLIFICATION: u64 = 4;

/// The data directory's free space, as last measured.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
    /// Bytes charged to admitted writes since the last measurement.
    charged: AtomicU64,
    low: AtomicBool,
}

impl Space {
    /// Watches `dir`, keeping `reserve` bytes free.
    pub fn new(dir: &Path, reserve: u64) -> Space {
        let s = Space {
            dir: dir.to_path_buf(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            charged: AtomicU64::new(0),
            low: AtomicBool::new(false),
        };
        s.measure();
        s
    }

    /// Whether new writes must be refused.
    pub fn low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Whether a write of about `bytes` may go ahead: not while the disk is low, nor when it
    /// and the writes admitted since the last measurement would eat into the reserve.
    pub fn admit(&self, bytes: u64) -> bool {
        if self.low() {
            return false;
        }
        let cost = bytes.saturating_mul(WRITE_AMPLIFICATION);
        let charged = self.charged.fetch_add(cost, Ordering::Relaxed) + cost;
        if self.free().saturating_sub(charged) >= self.reserve {
            return true;
        }
        self.charged.fetch_sub(cost, Ordering::Relaxed);
        false
    }

    /// Free bytes as last measured.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// The reserve kept free.
    pub fn reserve(&self) -> u64 {
        self.reserve
    }

    /// Measures now; a directory that cannot be measured keeps the last value.
    pub fn measure(&self) {
        let Ok(st) = nix::sys::statvfs::statvfs(&self.dir) else {
            return;
        };
        // Space an unprivileged process may use.
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        self.free.store(free, Ordering::Relaxed);
        self.charged.store(0, Ordering::Relaxed);
        let was = self.low.swap(free < self.reserve, Ordering::Relaxed);
        match (was, free < self.reserve) {
            (false, true) => tracing::warn!(
                free,
                reserve = self.reserve,
                "disk nearly full: refusing writes until space is freed"
            ),
            (true, false) => tracing::info!(free, "disk space back: taking writes again"),
            _ => {}
        }
    }

    /// Measures every half second until `token` is cancelled.
    pub async fn watch(&self, token: CancellationToken) {
        let mut every = Every::new(CHECK_EVERY, token);
        while every.tick().await {
            self.measure();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_between_measurements_are_charged_against_the_reserve() {
        let dir = std::env::temp_dir();
        let free = Space::new(&dir, 0).free();
        const MIB: u64 = 1024 * 1024;
        // 10 MiB above the reserve: two 1 MiB writes (4 MiB each on disk) fit, a third not.
        let space = Space::new(&dir, free.saturating_sub(10 * MIB));
        space.free.store(free, Ordering::Relaxed);
        space.low.store(false, Ordering::Relaxed);
        assert!(space.admit(MIB));
        assert!(space.admit(MIB));
        assert!(!space.admit(MIB), "the reserve is met before the disk is");
        assert!(space.admit(MIB / 4), "a smaller write still fits");
        // A measurement starts the charge over.
        space.charged.store(0, Ordering::Relaxed);
        assert!(space.admit(MIB));
    }
}
