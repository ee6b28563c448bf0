//! The writer thread: writes what waits, syncs once, answers the waiters; between rounds it
//! frees segments that no live entry needs.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::record::{self, Loc};
use super::{seg_path, Chunk, Pending, Shared, WalError, LAZY, LAZY_BYTES};

/// Creates segment `seg`'s file and makes its directory entry durable.
pub(super) fn create_segment(dir: &Path, seg: u32) -> Result<File, WalError> {
    let path = seg_path(dir, seg);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| WalError::io(path.display(), e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir.display(), e))?;
    Ok(file)
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Waits for the next batch: as soon as someone waits for a sync, or records nobody waits
/// for are old or large enough. `None`: the log is stopping and nothing is left.
fn next_batch(shared: &Shared) -> Option<Pending> {
    let mut inner = shared.lock();
    loop {
        let pending = &inner.pending;
        if !pending.waiters.is_empty() || (inner.stopping && !pending.chunks.is_empty()) {
            break;
        }
        if inner.stopping {
            return None;
        }
        let age = pending.since.map(|t| t.elapsed());
        match age {
            Some(age) if age >= LAZY || pending.bytes >= LAZY_BYTES => break,
            Some(age) => {
                inner = shared
                    .wake
                    .wait_timeout(inner, LAZY - age)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => inner = shared.wake.wait(inner).unwrap_or_else(|p| p.into_inner()),
        }
    }
    Some(std::mem::take(&mut inner.pending))
}

/// The writer's loop; returns once the log is stopping and nothing waits.
pub(super) fn run(shared: Arc<Shared>) {
    while let Some(batch) = next_batch(&shared) {
        let started = Instant::now();
        let result = write(&shared, &batch.chunks);
        let took = nanos(started);
        let stats = &shared.stats;
        if !batch.chunks.is_empty() {
            stats.syncs.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(batch.bytes, Ordering::Relaxed);
            stats.sync_nanos.fetch_add(took, Ordering::Relaxed);
        }
        let maintenance = {
            let mut inner = shared.lock();
            if let (Some(last), Ok(())) = (batch.chunks.last(), &result) {
                inner.written = (last.seg, last.off + last.bytes.len() as u64);
                inner.release_moved();
            }
            if let Err(e) = &result {
                tracing::error!(error = %e, "raft log: write failed; refusing every later write");
                inner.failed = Some(e.clone());
            }
            std::mem::take(&mut inner.maintenance) && result.is_ok()
        };
        answer(&shared, batch, &result);
        if maintenance {
            if let Err(e) = free_segments(&shared) {
                tracing::warn!(error = %e, "raft log: compaction");
            }
        }
        reap(&shared);
    }
}

/// Deletes the doomed segments whose freeing records are synced.
fn reap(shared: &Shared) {
    let ready: Vec<u32> = {
        let mut inner = shared.lock();
        if inner.doomed.is_empty() || inner.failed.is_some() {
            return;
        }
        let written = inner.written;
        let (ready, later) = std::mem::take(&mut inner.doomed)
            .into_iter()
            .partition::<Vec<_>, _>(|(_, after)| *after <= written);
        inner.doomed = later;
        let ready: Vec<u32> = ready.into_iter().map(|(seg, _)| seg).collect();
        for seg in &ready {
            inner.files.remove(seg);
        }
        ready
    };
    delete(shared, &ready);
}

/// Writes the chunks in order, syncing a segment before moving to the next, and the last.
fn write(shared: &Shared, chunks: &[Chunk]) -> Result<(), WalError> {
    let mut current: Option<(u32, Arc<File>)> = None;
    for chunk in chunks {
        if current.as_ref().map(|(seg, _)| *seg) != Some(chunk.seg) {
            if let Some((seg, file)) = current.take() {
                file.sync_data()
                    .map_err(|e| WalError::io(format!("sync segment {seg}"), e))?;
            }
            let known = shared.lock().files.get(&chunk.seg).cloned();
            let file = match known {
                Some(f) => f,
                None => {
                    let f = Arc::new(create_segment(&shared.dir, chunk.seg)?);
                    shared.lock().files.insert(chunk.seg, f.clone());
                    f
                }
            };
            current = Some((chunk.seg, file));
        }
        if let Some((seg, file)) = &current {
            file.write_all_at(&chunk.bytes, chunk.off)
                .map_err(|e| WalError::io(format!("write segment {seg}"), e))?;
        }
    }
    if let Some((seg, file)) = current {
        file.sync_data()
            .map_err(|e| WalError::io(format!("sync segment {seg}"), e))?;
    }
    Ok(())
}

fn answer(shared: &Shared, batch: Pending, result: &Result<(), WalError>) {
    let stats = &shared.stats;
    stats
        .writes
        .fetch_add(batch.waiters.len() as u64, Ordering::Relaxed);
    for w in batch.waiters {
        stats
            .wait_nanos
            .fetch_add(nanos(w.since), Ordering::Relaxed);
        (w.done)(result.clone());
    }
}

fn delete(shared: &Shared, segs: &[u32]) {
    if segs.is_empty() {
        return;
    }
    for seg in segs {
        let path = seg_path(&shared.dir, *seg);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                shared.stats.deleted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(segment = %path.display(), error = %e, "raft log: delete"),
        }
    }
    if let Err(e) = File::open(&shared.dir).and_then(|d| d.sync_all()) {
        tracing::warn!(error = %e, "raft log: sync the directory after deletes");
    }
}

/// Dooms segments older than every live entry; when too many segments stay live, moves the
/// oldest one's entries forward (when they are few) or reports their groups.
fn free_segments(shared: &Shared) -> Result<(), WalError> {
    let opts = shared.opts;
    let (oldest, live_segments) = {
        let mut inner = shared.lock();
        let head = inner.head;
        let oldest = inner
            .groups
            .values()
            .flat_map(|g| g.slots.iter().map(|s| s.loc.seg))
            .min()
            .unwrap_or(head.0)
            .min(head.0);
        let already: Vec<u32> = inner.doomed.iter().map(|(s, _)| *s).collect();
        let free: Vec<u32> = inner
            .files
            .keys()
            .copied()
            .filter(|s| *s < oldest && !already.contains(s))
            .collect();
        // Deleted once every record written so far (the purges and moves that freed them,
        // the checkpoint of the current segment) is synced.
        inner.doomed.extend(free.into_iter().map(|s| (s, head)));
        let live = inner
            .files
            .keys()
            .filter(|s| **s >= oldest && **s != head.0);
        (oldest, live.count())
    };
    if live_segments <= opts.max_segments {
        shared.lock().pinning.clear();
        return Ok(());
    }
    // The entries in the oldest live segment, group by group.
    let (pinned, file) = {
        let inner = shared.lock();
        let mut pinned: Vec<(u32, u64, Loc)> = Vec::new();
        for (group, log) in &inner.groups {
            for (i, slot) in log.slots.iter().enumerate() {
                if slot.loc.seg == oldest {
                    pinned.push((*group, log.first + i as u64, slot.loc));
                }
            }
        }
        (pinned, inner.files.get(&oldest).cloned())
    };
    let live_bytes: u64 = pinned.iter().map(|(_, _, l)| u64::from(l.len)).sum();
    if live_bytes > opts.segment_bytes / 2 {
        // Each group with the highest index it keeps there (entries come group by group).
        let mut groups: Vec<(u32, u64)> = Vec::new();
        for (g, index, _) in &pinned {
            match groups.last_mut() {
                Some((last, max)) if last == g => *max = (*max).max(*index),
                _ => groups.push((*g, *index)),
            }
        }
        shared.lock().pinning = groups;
        return Ok(());
    }
    let Some(file) = file else { return Ok(()) };
    let mut read = Vec::with_capacity(pinned.len());
    for (group, index, loc) in pinned {
        let mut buf = vec![0; loc.len as usize];
        file.read_exact_at(&mut buf, loc.off)
            .map_err(|e| WalError::io(format!("read segment {oldest}"), e))?;
        read.push((group, index, loc, buf));
    }
    move_forward(shared, read);
    Ok(())
}

/// Writes entries again at the head (moved records) and points their slots there; an entry
/// replaced or removed since it was read stays as it is.
fn move_forward(shared: &Shared, read: Vec<(u32, u64, Loc, Vec<u8>)>) {
    let mut inner = shared.lock();
    let mut moved = 0;
    let mut i = 0;
    while i < read.len() {
        // One record per run of consecutive, unchanged entries of one group.
        let group = read[i].0;
        let still = |(g, index, loc, _): &(u32, u64, Loc, Vec<u8>)| {
            *g == group
                && inner
                    .groups
                    .get(g)
                    .and_then(|log| log.slot(*index))
                    .is_some_and(|s| s.loc == *loc)
        };
        if !still(&read[i]) {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < read.len() && read[j].1 == read[j - 1].1 + 1 && still(&read[j]) {
            j += 1;
        }
        let run = &read[i..j];
        let mut bytes = Vec::new();
        let at = record::entries(
            &mut bytes,
            group,
            run[0].1,
            true,
            run.iter().map(|(_, _, _, b)| b.as_slice()),
        );
        let (seg, off) = inner.place(bytes, &shared.opts);
        for ((_, index, _, b), (rel, len)) in run.iter().zip(at) {
            let loc = Loc {
                seg,
                off: off + rel as u64,
                len,
            };
            let Some(slot) = inner
                .groups
                .get_mut(&group)
                .and_then(|g| g.slot_mut(*index))
            else {
                continue;
            };
            slot.loc = loc;
            // Read from memory until the new place is written.
            slot.mem.get_or_insert_with(|| b.as_slice().into());
            inner.moved.push((group, *index, loc));
        }
        moved += run.len() as u64;
        i = j;
    }
    // The next round frees the segment once these records are synced.
    inner.maintenance = true;
    drop(inner);
    shared.stats.moved.fetch_add(moved, Ordering::Relaxed);
    shared.wake.notify_one();
}
