use std::sync::mpsc;

use super::*;

fn noop() -> Done {
    Box::new(|r| assert!(r.is_ok(), "{r:?}"))
}

fn entry(group: u32, index: u64, size: usize) -> Vec<u8> {
    let mut b = format!("g{group}-i{index}-").into_bytes();
    b.resize(size.max(b.len()), b'.');
    b
}

fn read_all(wal: &Wal, group: u32) -> Vec<Vec<u8>> {
    wal.read(group, 0, u64::MAX)
        .expect("read")
        .into_iter()
        .map(|b| b.to_vec())
        .collect()
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        max_segments: 2,
    }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn entries_and_state_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
        for group in 1..=3u32 {
            let batch = (1..=5).map(|i| entry(group, i, 10)).collect();
            wal.append(group, 1, batch, noop()).expect("append");
        }
        // Group 2 replaces its tail; group 3 drops its head.
        wal.append(2, 4, vec![b"new4".to_vec()], noop())
            .expect("append");
        wal.purge(3, 2).expect("purge");
        wal.truncate(1, 5).expect("truncate");
        wal.set_state(1, 1, b"vote".to_vec()).expect("state");
        wal.set_state(9, 2, b"only state".to_vec()).expect("state");
        // Readable before the sync.
        assert_eq!(read_all(&wal, 2)[3], b"new4");
        block_on(wal.sync()).expect("sync");
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(
        read_all(&wal, 1),
        (1..=4).map(|i| entry(1, i, 10)).collect::<Vec<_>>()
    );
    let g2 = read_all(&wal, 2);
    assert_eq!(g2.len(), 4);
    assert_eq!(g2[3], b"new4");
    assert_eq!(
        read_all(&wal, 3),
        (3..=5).map(|i| entry(3, i, 10)).collect::<Vec<_>>()
    );
    assert_eq!(wal.read(3, 4, 4).expect("read").len(), 1);
    assert_eq!(wal.last_index(3), Some(5));
    assert_eq!(wal.state(1, 1).as_deref(), Some(&b"vote"[..]));
    assert_eq!(wal.state(9, 2).as_deref(), Some(&b"only state"[..]));
    assert!(wal.has_group(9));
    wal.drop_group(9).expect("drop");
    assert!(!wal.has_group(9));
}

/// Appends of different groups that wait while a sync runs are written and synced together.
#[test]
fn appends_of_many_groups_share_one_sync() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    // The first answer holds the writer until every other append is queued.
    wal.append(
        1000,
        1,
        vec![entry(1000, 1, 8)],
        Box::new(move |r| {
            assert!(r.is_ok());
            let _ = hold_rx.recv();
        }),
    )
    .expect("append");
    wait_for("the first sync", || wal.counts().syncs == 1);
    let (done_tx, done_rx) = mpsc::channel::<bool>();
    for group in 0..100u32 {
        let done = done_tx.clone();
        let batch = vec![entry(group, 1, 100), entry(group, 2, 100)];
        wal.append(
            group,
            1,
            batch,
            Box::new(move |r| {
                let _ = done.send(r.is_ok());
            }),
        )
        .expect("append");
    }
    hold_tx.send(()).expect("release");
    for _ in 0..100 {
        assert!(done_rx.recv().expect("answered"), "synced");
    }
    let counts = wal.counts();
    assert_eq!(counts.writes, 101);
    assert_eq!(counts.syncs, 2, "{counts:?}");
    assert!(counts.bytes > 100 * 2 * 100, "{counts:?}");
}

#[test]
fn a_write_cut_short_is_dropped_and_the_log_goes_on() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
        wal.append(1, 1, vec![entry(1, 1, 50), entry(1, 2, 50)], noop())
            .expect("append");
        block_on(wal.sync()).expect("sync");
    }
    let seg = seg_path(dir.path(), 1);
    let synced = std::fs::metadata(&seg).expect("meta").len();
    // Half of a record: its frame claims more than is there.
    let mut half = Vec::new();
    record::entries(&mut half, 1, 3, false, [&entry(1, 3, 50)[..]].into_iter());
    half.truncate(half.len() / 2);
    let mut bytes = std::fs::read(&seg).expect("read");
    bytes.extend_from_slice(&half);
    std::fs::write(&seg, bytes).expect("write");
    {
        let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        assert_eq!(std::fs::metadata(&seg).expect("meta").len(), synced);
        assert_eq!(wal.last_index(1), Some(2));
        wal.append(1, 3, vec![b"three".to_vec()], noop())
            .expect("append");
        block_on(wal.sync()).expect("sync");
    }
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(read_all(&wal, 1)[2], b"three");
}

#[test]
fn damage_in_an_older_segment_is_an_error() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let wal = Wal::open(dir.path(), small()).expect("open");
        for i in 1..=40 {
            wal.append(1, i, vec![entry(1, i, 300)], noop())
                .expect("append");
        }
        block_on(wal.sync()).expect("sync");
    }
    let first = seg_path(dir.path(), 1);
    let mut bytes = std::fs::read(&first).expect("read");
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(&first, bytes).expect("write");
    let err = Wal::open(dir.path(), small()).err().expect("refused");
    assert!(err.to_string().contains("not the newest"), "{err}");
}

/// Segments no live entry needs are deleted; an idle group's few entries are moved forward
/// instead of keeping an old segment; everything still reads back after a reopen.
#[test]
fn old_segments_are_freed_and_pinned_entries_moved() {
    let dir = tempfile::tempdir().expect("dir");
    let segments = |d: &Path| {
        std::fs::read_dir(d)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            })
            .count()
    };
    {
        let wal = Wal::open(dir.path(), small()).expect("open");
        // Group 1 writes twice and goes idle: it pins the first segment.
        wal.append(1, 1, vec![entry(1, 1, 100), entry(1, 2, 100)], noop())
            .expect("append");
        // Group 2 keeps writing and purging.
        for i in 1..=400u64 {
            wal.append(2, i, vec![entry(2, i, 200)], noop())
                .expect("append");
            if i % 10 == 0 {
                wal.purge(2, i - 5).expect("purge");
            }
            if i % 50 == 0 {
                block_on(wal.sync()).expect("sync");
            }
        }
        block_on(wal.sync()).expect("sync");
        wait_for("segments freed", || {
            block_on(wal.sync()).expect("sync");
            segments(dir.path()) <= small().max_segments + 2
        });
        let counts = wal.counts();
        assert!(counts.moved >= 2, "{counts:?}");
        assert!(counts.deleted_segments > 10, "{counts:?}");
        assert_eq!(read_all(&wal, 1), vec![entry(1, 1, 100), entry(1, 2, 100)]);
    }
    let wal = Wal::open(dir.path(), small()).expect("reopen");
    assert_eq!(read_all(&wal, 1), vec![entry(1, 1, 100), entry(1, 2, 100)]);
    assert_eq!(
        read_all(&wal, 2),
        (396..=400).map(|i| entry(2, i, 200)).collect::<Vec<_>>()
    );
}

/// A group with too many live entries to move is reported, so it can be snapshotted.
#[test]
fn a_group_with_many_live_entries_is_reported() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = Wal::open(dir.path(), small()).expect("open");
    for i in 1..=100u64 {
        wal.append(7, i, vec![entry(7, i, 400)], noop())
            .expect("append");
    }
    wait_for("group 7 reported", || {
        block_on(wal.sync()).expect("sync");
        wal.pinning_groups().first().map(|(g, _)| *g) == Some(7)
    });
    wal.purge(7, 99).expect("purge");
    for i in 1..=40u64 {
        wal.append(8, i, vec![entry(8, i, 400)], noop())
            .expect("append");
        wal.purge(8, i).expect("purge");
    }
    wait_for("nothing reported", || {
        block_on(wal.sync()).expect("sync");
        wal.pinning_groups().is_empty()
    });
}

#[test]
fn an_append_that_leaves_a_hole_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let wal = Wal::open(dir.path(), WalOptions::default()).expect("open");
    wal.append(1, 1, vec![entry(1, 1, 8)], noop())
        .expect("append");
    let err = wal
        .append(1, 3, vec![entry(1, 3, 8)], noop())
        .expect_err("refused");
    assert!(err.to_string().contains("hole"), "{err}");
    // After a purge of everything, the log may start anywhere (a snapshot was installed).
    wal.purge(1, 1).expect("purge");
    wal.append(1, 50, vec![entry(1, 50, 8)], noop())
        .expect("append");
    assert_eq!(wal.last_index(1), Some(50));
}
