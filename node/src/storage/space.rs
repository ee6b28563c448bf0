//! Free disk space of the data directory. A member that lets its disk fill up turns every
//! write into a storage error half-way (a log append that fails stops the Raft group), so it
//! keeps a reserve instead: once free space drops below `min_free_disk_bytes`, partition
//! leaders refuse new client writes at once (507 `insufficient_storage`, nothing written)
//! while reads, replication of what was already accepted, expiries and deletes go on in the
//! reserve; when space comes back, writes are taken again, with no restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::runtime::Every;

/// How often free space is measured.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The data directory's free space, as last measured.
#[derive(Debug)]
pub struct Space {
    dir: PathBuf,
    reserve: u64,
    free: AtomicU64,
    low: AtomicBool,
}

impl Space {
    /// Watches `dir`, keeping `reserve` bytes free.
    pub fn new(dir: &Path, reserve: u64) -> Space {
        let s = Space {
            dir: dir.to_path_buf(),
            reserve,
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        };
        s.measure();
        s
    }

    /// Whether new writes must be refused.
    pub fn low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
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
