//! The member's Raft log: one write-ahead log for every group it hosts.
//!
//! Appends, truncations, purges and state values (vote, committed id, purge point) of all
//! groups are records in one sequence of segment files ([`record`] has the format). A
//! caller's record is placed (segment and offset) and indexed at once, under one lock, so
//! it can be read back right away; one writer thread ([`writer`]) then writes whatever is
//! waiting with one positioned write per segment, syncs once with `fdatasync`, and only then
//! answers every waiter, in order (group commit across groups). The linger is adaptive: what
//! arrives while a sync runs goes into the next one, so syncs carry more as load grows.
//! Records nobody waits for (a committed id, a purge) do not start a sync of their own:
//! they ride with the next one, or are written after [`LAZY`].
//!
//! Each group's live entries are indexed in memory (segment, offset, length); the newest
//! [`TAIL`] entries of a group, and every entry not yet written, also keep their bytes, so
//! replication and apply read recent entries without touching the file.
//!
//! Space: a segment holds [`WalOptions::segment_bytes`]; each new segment starts with every
//! group's state values (a checkpoint), so a segment older than every live entry is deleted
//! whole once the records that freed it are synced. When more than
//! [`WalOptions::max_segments`] segments are live, the entries pinning the oldest one are
//! moved forward if they are at most half of it; otherwise their groups are reported by
//! [`Wal::pinning_groups`] so the Raft layer snapshots and purges them.
//!
//! Recovery replays every segment in order; a record cut short by a crash ends the newest
//! segment (the file is truncated there); anything else that does not check is an error.

pub mod record;
mod recover;
mod writer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use record::{Loc, HEADER, MAGIC};

use crate::metrics::LogStats;

/// Entries per group that keep their bytes in memory once written.
pub const TAIL: usize = 64;
/// Records nobody waits for (committed ids, truncations, purges, moves) are written with
/// the next sync someone waits for, or after this long, or once this many bytes wait.
const LAZY: std::time::Duration = std::time::Duration::from_millis(50);
const LAZY_BYTES: u64 = 1 << 20;

/// A failed log operation. After a failed write or sync nothing unsynced is known to be on
/// disk, so the log refuses every later write.
#[derive(Clone, Debug, thiserror::Error)]
#[error("raft log: {0}")]
pub struct WalError(String);

impl WalError {
    fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        WalError(format!("{what}: {e}"))
    }
}

/// Called once the records submitted before it are durable (or the write failed).
pub type Done = Box<dyn FnOnce(Result<(), WalError>) + Send>;

/// Sizes of the log's files.
#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// A new segment is started when the current one would grow past this.
    pub segment_bytes: u64,
    /// Live segments (the current one excluded) before the oldest is compacted.
    pub max_segments: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            max_segments: 4,
        }
    }
}

#[derive(Default)]
struct Stats {
    syncs: AtomicU64,
    writes: AtomicU64,
    bytes: AtomicU64,
    sync_nanos: AtomicU64,
    wait_nanos: AtomicU64,
    moved: AtomicU64,
    deleted: AtomicU64,
}

/// Bytes of one entry as read.
#[derive(Clone, Debug)]
pub enum Bytes {
    /// Kept in memory.
    Mem(Arc<[u8]>),
    /// Read from its segment.
    Read(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mem(b) => b,
            Bytes::Read(b) => b,
        }
    }
}

struct Slot {
    loc: Loc,
    mem: Option<Arc<[u8]>>,
}

/// One group's live entries (indexes `first..first + slots.len()`) and state values.
#[derive(Default)]
struct GroupLog {
    first: u64,
    slots: VecDeque<Slot>,
    state: BTreeMap<u8, Vec<u8>>,
    purged: Option<u64>,
}

impl GroupLog {
    fn next(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    fn truncate(&mut self, from: u64) {
        if from <= self.first {
            self.slots.clear();
        } else {
            self.slots
                .truncate(usize::try_from(from - self.first).unwrap_or(usize::MAX));
        }
    }

    fn purge(&mut self, upto: u64) {
        let n = upto.saturating_add(1).saturating_sub(self.first);
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(self.slots.len());
        self.slots.drain(..n);
        self.first += n as u64;
        self.purged = self.purged.max(Some(upto));
    }

    fn slot(&self, index: u64) -> Option<&Slot> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.slots.get(i)
    }

    fn slot_mut(&mut self, index: u64) -> Option<&mut Slot> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(i)
    }
}

/// Bytes waiting to be written at a place in a segment.
struct Chunk {
    seg: u32,
    off: u64,
    bytes: Vec<u8>,
}

struct Waiter {
    done: Done,
    since: Instant,
}

#[derive(Default)]
struct Pending {
    chunks: Vec<Chunk>,
    waiters: Vec<Waiter>,
    /// When the first chunk was placed.
    since: Option<Instant>,
    bytes: u64,
}

struct Inner {
    groups: HashMap<u32, GroupLog>,
    /// Segment being filled and the bytes placed in it.
    head: (u32, u64),
    pending: Pending,
    /// Everything before this position is written (not necessarily synced).
    written: (u32, u64),
    files: BTreeMap<u32, Arc<File>>,
    /// Segments to delete once everything before the position is synced.
    doomed: Vec<(u32, (u32, u64))>,
    failed: Option<WalError>,
    stopping: bool,
    /// A segment was started: the writer looks for segments to free.
    maintenance: bool,
    /// Groups whose live entries pin the oldest segment and are too many to move.
    pinning: Vec<(u32, u64)>,
    /// Entries moved forward whose bytes stay in memory until their new place is written.
    moved: Vec<(u32, u64, Loc)>,
}

struct Shared {
    dir: PathBuf,
    opts: WalOptions,
    inner: Mutex<Inner>,
    wake: Condvar,
    stats: Stats,
}

/// Handle to the member's log. Cloning is cheap; the writer stops (after writing what
/// waits) when the last handle is dropped.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    _alive: Arc<Alive>,
}

struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.lock().stopping = true;
        self.0.wake.notify_all();
    }
}

fn seg_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:016x}.wal"))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (no partial updates are
        // observable outside it), so a poisoned lock is still used.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Places `record` at the head, starting a segment when it would not fit; returns
    /// where it starts.
    fn place(&mut self, record: Vec<u8>, opts: &WalOptions) -> (u32, u64) {
        let len = record.len() as u64;
        if self.head.1 > HEADER && self.head.1 + len > opts.segment_bytes {
            self.start_segment();
        }
        let at = self.head;
        self.head.1 += len;
        self.pending.since.get_or_insert_with(Instant::now);
        self.pending.bytes += len;
        match self.pending.chunks.last_mut() {
            Some(c) if c.seg == at.0 && c.off + c.bytes.len() as u64 == at.1 => {
                c.bytes.extend_from_slice(&record)
            }
            _ => self.pending.chunks.push(Chunk {
                seg: at.0,
                off: at.1,
                bytes: record,
            }),
        }
        at
    }

    /// Starts the next segment with the checkpoint of every group's state.
    fn start_segment(&mut self) {
        let seg = self.head.0 + 1;
        let mut bytes = MAGIC.to_vec();
        for (group, log) in &self.groups {
            for (key, value) in &log.state {
                record::state(&mut bytes, *group, *key, value);
            }
            if let Some(upto) = log.purged {
                record::purge(&mut bytes, *group, upto);
            }
        }
        self.head = (seg, bytes.len() as u64);
        self.pending.since.get_or_insert_with(Instant::now);
        self.pending.bytes += bytes.len() as u64;
        self.pending.chunks.push(Chunk { seg, off: 0, bytes });
        self.maintenance = true;
    }

    fn check(&self) -> Result<(), WalError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.stopping => Err(WalError("stopped".into())),
            None => Ok(()),
        }
    }

    /// Frees the bytes of moved entries whose new place is written.
    fn release_moved(&mut self) {
        let written = self.written;
        let (done, waiting) = std::mem::take(&mut self.moved)
            .into_iter()
            .partition::<Vec<_>, _>(|(_, _, loc)| loc.end() <= written);
        self.moved = waiting;
        for (group, index, loc) in done {
            if let Some(slot) = self.groups.get_mut(&group).and_then(|g| g.slot_mut(index)) {
                if slot.loc == loc {
                    slot.mem = None;
                }
            }
        }
    }

    /// Frees the bytes of written entries older than the group's tail.
    fn trim_tail(&mut self, group: u32) {
        let written = self.written;
        if let Some(log) = self.groups.get_mut(&group) {
            let keep_from = log.slots.len().saturating_sub(TAIL);
            for slot in log.slots.iter_mut().take(keep_from).rev() {
                if slot.mem.is_none() {
                    break;
                }
                if slot.loc.end() <= written {
                    slot.mem = None;
                }
            }
        }
    }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, replaying what is there.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal, WalError> {
        let (groups, files, head) = recover::recover(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(Inner {
                groups,
                head,
                pending: Pending::default(),
                written: head,
                files,
                doomed: Vec::new(),
                failed: None,
                stopping: false,
                // Segments freed before the last stop are deleted at once.
                maintenance: true,
                pinning: Vec::new(),
                moved: Vec::new(),
            }),
            wake: Condvar::new(),
            stats: Stats::default(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer::run(worker))
            .map_err(|e| WalError::io("start the writer thread", e))?;
        Ok(Wal {
            _alive: Arc::new(Alive(shared.clone())),
            shared,
        })
    }

    fn submit(&self, inner: &mut Inner, record: Vec<u8>) -> (u32, u64) {
        let at = inner.place(record, &self.shared.opts);
        self.shared.wake.notify_one();
        at
    }

    /// Appends `entries` to `group` from index `first` on (replacing any entries from
    /// `first` on); `done` is called once they are durable. They can be read at once.
    pub fn append(
        &self,
        group: u32,
        first: u64,
        entries: Vec<Vec<u8>>,
        done: Done,
    ) -> Result<(), WalError> {
        if entries.is_empty() {
            self.sync_then(done);
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(entries.iter().map(|e| e.len() + 4).sum::<usize>() + 32);
        let at = record::entries(
            &mut bytes,
            group,
            first,
            false,
            entries.iter().map(|e| e.as_slice()),
        );
        let mut inner = self.shared.lock();
        inner.check()?;
        let log = inner.groups.entry(group).or_default();
        if !log.slots.is_empty() && (first < log.first || first > log.next()) {
            return Err(WalError(format!(
                "group {group}: append at {first} leaves a hole (log holds {}..{})",
                log.first,
                log.next()
            )));
        }
        let (seg, off) = self.submit(&mut inner, bytes);
        let log = inner.groups.entry(group).or_default();
        log.truncate(first);
        if log.slots.is_empty() {
            log.first = first;
        }
        for ((rel, len), entry) in at.into_iter().zip(entries) {
            log.slots.push_back(Slot {
                loc: Loc {
                    seg,
                    off: off + rel as u64,
                    len,
                },
                mem: Some(entry.into()),
            });
        }
        inner.pending.waiters.push(Waiter {
            done,
            since: Instant::now(),
        });
        inner.trim_tail(group);
        Ok(())
    }

    /// Removes `group`'s entries from index `from` on. Durable with the next sync.
    pub fn truncate(&self, group: u32, from: u64) -> Result<(), WalError> {
        let mut bytes = Vec::new();
        record::truncate(&mut bytes, group, from);
        let mut inner = self.shared.lock();
        inner.check()?;
        self.submit(&mut inner, bytes);
        if let Some(log) = inner.groups.get_mut(&group) {
            log.truncate(from);
        }
        Ok(())
    }

    /// Removes `group`'s entries up to `upto` included. Durable with the next sync.
    pub fn purge(&self, group: u32, upto: u64) -> Result<(), WalError> {
        let mut bytes = Vec::new();
        record::purge(&mut bytes, group, upto);
        let mut inner = self.shared.lock();
        inner.check()?;
        self.submit(&mut inner, bytes);
        inner.groups.entry(group).or_default().purge(upto);
        inner.maintenance = true;
        Ok(())
    }

    /// Sets one of `group`'s state values. Durable with the next sync.
    pub fn set_state(&self, group: u32, key: u8, value: Vec<u8>) -> Result<(), WalError> {
        let mut bytes = Vec::with_capacity(value.len() + 16);
        record::state(&mut bytes, group, key, &value);
        let mut inner = self.shared.lock();
        inner.check()?;
        self.submit(&mut inner, bytes);
        inner
            .groups
            .entry(group)
            .or_default()
            .state
            .insert(key, value);
        Ok(())
    }

    /// Forgets everything of `group`. Durable with the next sync.
    pub fn drop_group(&self, group: u32) -> Result<(), WalError> {
        let mut bytes = Vec::new();
        record::drop_group(&mut bytes, group);
        let mut inner = self.shared.lock();
        inner.check()?;
        self.submit(&mut inner, bytes);
        inner.groups.remove(&group);
        inner.maintenance = true;
        Ok(())
    }

    /// One of `group`'s state values.
    pub fn state(&self, group: u32, key: u8) -> Option<Vec<u8>> {
        let inner = self.shared.lock();
        inner.groups.get(&group)?.state.get(&key).cloned()
    }

    /// Whether the log holds anything of `group`.
    pub fn has_group(&self, group: u32) -> bool {
        self.shared.lock().groups.contains_key(&group)
    }

    /// The index of `group`'s last entry.
    pub fn last_index(&self, group: u32) -> Option<u64> {
        let inner = self.shared.lock();
        let log = inner.groups.get(&group)?;
        (!log.slots.is_empty()).then(|| log.next() - 1)
    }

    /// `group`'s entries with indexes in `start..=end` that the log holds, in order.
    pub fn read(&self, group: u32, start: u64, end: u64) -> Result<Vec<Bytes>, WalError> {
        enum Got {
            Mem(Arc<[u8]>),
            Disk(Arc<File>, Loc),
        }
        let got: Vec<Got> = {
            let inner = self.shared.lock();
            let Some(log) = inner.groups.get(&group) else {
                return Ok(Vec::new());
            };
            let (from, to) = (start.max(log.first), end.min(log.next().saturating_sub(1)));
            let mut got = Vec::new();
            for index in from..=to {
                let Some(slot) = log.slot(index) else { break };
                got.push(match (&slot.mem, inner.files.get(&slot.loc.seg)) {
                    (Some(b), _) => Got::Mem(b.clone()),
                    (None, Some(f)) => Got::Disk(f.clone(), slot.loc),
                    (None, None) => {
                        return Err(WalError(format!(
                            "group {group}: entry {index} is in segment {} which is gone",
                            slot.loc.seg
                        )))
                    }
                });
            }
            got
        };
        got.into_iter()
            .map(|g| match g {
                Got::Mem(b) => Ok(Bytes::Mem(b)),
                Got::Disk(f, loc) => {
                    let mut buf = vec![0; loc.len as usize];
                    f.read_exact_at(&mut buf, loc.off)
                        .map_err(|e| WalError::io(format!("read segment {}", loc.seg), e))?;
                    Ok(Bytes::Read(buf))
                }
            })
            .collect()
    }

    /// Calls `done` once everything submitted so far is durable.
    pub fn sync_then(&self, done: Done) {
        let mut inner = self.shared.lock();
        if let Err(e) = inner.check() {
            drop(inner);
            done(Err(e));
            return;
        }
        inner.pending.waiters.push(Waiter {
            done,
            since: Instant::now(),
        });
        self.shared.wake.notify_one();
    }

    /// Waits until everything submitted so far is durable.
    pub async fn sync(&self) -> Result<(), WalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.sync_then(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await
            .map_err(|_| WalError("the writer stopped".into()))?
    }

    /// Groups whose live entries keep the oldest segment and are too many to move, each with
    /// the highest index it keeps there: a snapshot and a purge past it frees the segment.
    pub fn pinning_groups(&self) -> Vec<(u32, u64)> {
        self.shared.lock().pinning.clone()
    }

    /// What the writer did so far, and the log's files.
    pub fn counts(&self) -> LogStats {
        let files: Vec<Arc<File>> = self.shared.lock().files.values().cloned().collect();
        let s = &self.shared.stats;
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
        LogStats {
            syncs: s.syncs.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            sync_seconds: secs(&s.sync_nanos),
            wait_seconds: secs(&s.wait_nanos),
            moved: s.moved.load(Ordering::Relaxed),
            deleted_segments: s.deleted.load(Ordering::Relaxed),
            segments: files.len(),
            disk_bytes: files
                .iter()
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests;
