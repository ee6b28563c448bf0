//! Data directories written before the log had its own files kept the Raft log in sled
//! (`raft_log`: group + index -> entry, `raft_state`: group + key -> state value, the same
//! encodings the log stores). Opening one moves both into the log, syncs it, and only then
//! drops the trees; a crash half-way repeats the move, which writes the same records again.

use super::Storage;
use crate::{Error, Result};

const TREES: [&str; 2] = ["raft_state", "raft_log"];

/// Moves the Raft log of an older data directory out of sled.
pub fn log_out_of_sled(st: &Storage) -> Result<()> {
    let names = st.db.tree_names();
    if !TREES
        .iter()
        .any(|t| names.iter().any(|n| n == t.as_bytes()))
    {
        return Ok(());
    }
    let storage = |e: super::wal::WalError| Error::Storage(e.to_string());
    let split = |k: &[u8]| -> Option<(u32, Vec<u8>)> {
        let group = u32::from_be_bytes(k.get(..4)?.try_into().ok()?);
        Some((group, k[4..].to_vec()))
    };
    let mut moved = 0usize;
    for item in st.db.open_tree("raft_state")?.iter() {
        let (k, v) = item?;
        if let Some((group, key)) = split(&k) {
            if let [key] = key[..] {
                st.wal.set_state(group, key, v.to_vec()).map_err(storage)?;
            }
        }
    }
    // Entries are in key order: group, then index. One append per run.
    let mut run: Option<(u32, u64, Vec<Vec<u8>>)> = None;
    let flush = |run: Option<(u32, u64, Vec<Vec<u8>>)>| -> Result<()> {
        if let Some((group, first, entries)) = run {
            st.wal
                .append(group, first, entries, Box::new(|_| {}))
                .map_err(storage)?;
        }
        Ok(())
    };
    for item in st.db.open_tree("raft_log")?.iter() {
        let (k, v) = item?;
        let Some((group, index)) = split(&k) else {
            continue;
        };
        let Ok(index) = <[u8; 8]>::try_from(index.as_slice()).map(u64::from_be_bytes) else {
            continue;
        };
        moved += 1;
        match &mut run {
            Some((g, first, entries)) if *g == group && *first + entries.len() as u64 == index => {
                entries.push(v.to_vec())
            }
            _ => {
                flush(run.take())?;
                run = Some((group, index, vec![v.to_vec()]));
            }
        }
    }
    flush(run)?;
    let (tx, rx) = std::sync::mpsc::channel();
    st.wal.sync_then(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv()
        .map_err(|_| Error::Storage("the log's writer stopped".into()))?
        .map_err(storage)?;
    for tree in TREES {
        st.db.drop_tree(tree)?;
    }
    st.db.flush()?;
    tracing::info!(
        entries = moved,
        "moved the Raft log out of sled into its own files"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{group_key, Storage};

    /// A data directory whose Raft log lives in sled opens with that log in the new one,
    /// and the sled trees gone.
    #[test]
    fn a_log_kept_in_sled_moves_into_the_log() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let db = sled::open(dir.path().join("sled")).expect("sled");
            let log = db.open_tree("raft_log").expect("tree");
            let state = db.open_tree("raft_state").expect("tree");
            for (group, first, n) in [(3u32, 1u64, 4u64), (9, 20, 2)] {
                for i in first..first + n {
                    let key = group_key(group, &i.to_be_bytes());
                    log.insert(key, format!("g{group}e{i}").into_bytes())
                        .expect("insert");
                }
                state
                    .insert(group_key(group, &[1]), format!("vote{group}").into_bytes())
                    .expect("insert");
            }
            db.flush().expect("flush");
        }
        let st = Storage::open(dir.path(), 0).expect("open");
        let read = |group, from, to| -> Vec<Vec<u8>> {
            st.wal
                .read(group, from, to)
                .expect("read")
                .iter()
                .map(|b| b.to_vec())
                .collect()
        };
        assert_eq!(
            read(3, 0, u64::MAX),
            (1..=4)
                .map(|i| format!("g3e{i}").into_bytes())
                .collect::<Vec<_>>()
        );
        assert_eq!(read(9, 20, 21), vec![b"g9e20".to_vec(), b"g9e21".to_vec()]);
        assert_eq!(st.wal.last_index(9), Some(21));
        assert_eq!(st.wal.state(3, 1).as_deref(), Some(&b"vote3"[..]));
        assert_eq!(st.wal.state(9, 1).as_deref(), Some(&b"vote9"[..]));
        let names = st.db.tree_names();
        assert!(!names.iter().any(|n| n == b"raft_log" || n == b"raft_state"));
    }
}
