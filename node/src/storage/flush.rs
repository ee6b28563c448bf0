//! Syncing sled: one sync serves every caller waiting for one (state machines and
//! snapshots before the log forgets entries, dropped groups, a stopping member).
//!
//! The flusher is a dedicated OS thread calling sled's blocking `flush`: `flush_async`
//! hands each flush to sled's thread pool, which under load costs more in thread wake-ups
//! than the flush itself. On Linux sled's flush ends in `sync_file_range`, which neither
//! flushes the drive's write cache nor records the file's new size, and it never syncs the
//! separate files it keeps large values in (`blobs/`); so after it the flusher calls
//! `fdatasync` on sled's log file and on blob files written since its last sync, and syncs
//! the blob directory ([`SyncFiles`]). Only then are the waiters told their writes are
//! durable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::runtime::{gather, Limits, Weight};

type Done = Box<dyn FnOnce(Result<(), FlushError>) + Send>;

/// A flush that failed: nothing written since the last good flush is known to be durable.
#[derive(Clone, Debug, thiserror::Error)]
#[error("flush: {0}")]
pub struct FlushError(String);

/// Handle to the member's flusher thread. Cloning is cheap.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Done>,
}

/// The files of a sled database that its own flush leaves unsynced.
pub struct SyncFiles {
    /// sled's log (`<dir>/db`).
    log: File,
    /// Where sled keeps values too large for its log (`<dir>/blobs`).
    blobs: PathBuf,
    /// The highest blob (they are named by log sequence number) synced so far.
    synced_blob: u64,
}

impl SyncFiles {
    /// The files of the sled database in `dir`. sled writes its `conf` file once, at
    /// creation, and never syncs it; it is synced here, with the directories.
    pub fn open(dir: &Path) -> std::io::Result<SyncFiles> {
        File::open(dir.join("conf"))?.sync_all()?;
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(SyncFiles {
            log: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blob: 0,
        })
    }

    /// Makes what sled wrote so far durable.
    fn sync(&mut self) -> std::io::Result<()> {
        self.log.sync_data()?;
        let mut newest = self.synced_blob;
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn <= self.synced_blob {
                continue;
            }
            match File::open(entry.path()).and_then(|f| f.sync_data()) {
                Ok(()) => newest = newest.max(lsn),
                // Collected by sled in the meantime: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if newest > self.synced_blob {
            // The new files' directory entries.
            File::open(&self.blobs)?.sync_all()?;
            self.synced_blob = newest;
        }
        Ok(())
    }
}

impl Flusher {
    /// Starts the flusher thread for `db`; after each flush it syncs `files` (none for a
    /// temporary database). It ends when every handle is dropped.
    pub fn spawn(db: sled::Db, mut files: Option<SyncFiles>) -> Self {
        let (tx, rx) = mpsc::channel::<Done>();
        let spawned = std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (waiting, _) = gather(
                        first,
                        || rx.try_recv().ok(),
                        |_| Weight::default(),
                        Limits::UNBOUNDED,
                    );
                    // Everything written before the requests above is covered by this flush.
                    let result = db
                        .flush()
                        .map(|_| ())
                        .map_err(|e| FlushError(e.to_string()))
                        .and_then(|()| match files.as_mut() {
                            Some(f) => f.sync().map_err(|e| FlushError(format!("sync: {e}"))),
                            None => Ok(()),
                        });
                    // In request order.
                    for done in waiting {
                        done(result.clone());
                    }
                }
            });
        if let Err(e) = spawned {
            // Without a flusher nothing can be made durable; every request fails loudly.
            tracing::error!(error = %e, "cannot start the flusher thread");
        }
        Flusher { tx }
    }

    /// Calls `done` once everything written so far is durable. Requests are queued in call
    /// order and completed in that order.
    pub fn flush_then(&self, done: impl FnOnce(Result<(), FlushError>) + Send + 'static) {
        if let Err(e) = self.tx.send(Box::new(done)) {
            (e.0)(Err(FlushError("flusher stopped".into())));
        }
    }

    /// Waits until everything written so far is durable.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (tx, rx) = oneshot::channel();
        self.flush_then(move |r| {
            let _ = tx.send(r);
        });
        rx.await.map_err(|_| FlushError("flusher stopped".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers that arrive while a sync runs are all answered.
    #[test]
    fn waiting_callers_are_answered() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let flusher = Flusher::spawn(db, None);
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<bool>();
        // The first write's answer holds the flusher until 50 more are queued.
        flusher.flush_then(move |r| {
            let _ = hold_rx.recv();
            assert!(r.is_ok());
        });
        for _ in 0..50 {
            let done = done_tx.clone();
            flusher.flush_then(move |r| {
                let _ = done.send(r.is_ok());
            });
        }
        hold_tx.send(()).expect("release");
        for _ in 0..50 {
            assert!(done_rx.recv().expect("answered"), "synced");
        }
    }
}
