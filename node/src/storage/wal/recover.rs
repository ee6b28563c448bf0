//! Opening the log: every segment replayed in order into each group's index.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::record::{self, HEADER, MAGIC};
use super::{seg_path, writer, GroupLog, Slot, WalError};

pub(super) type Recovered = (HashMap<u32, GroupLog>, BTreeMap<u32, Arc<File>>, (u32, u64));

/// Replays the segments in `dir` (creating the first one if there is none).
pub(super) fn recover(dir: &Path) -> Result<Recovered, WalError> {
    std::fs::create_dir_all(dir).map_err(|e| WalError::io(dir.display(), e))?;
    let mut ids: Vec<u32> = std::fs::read_dir(dir)
        .map_err(|e| WalError::io(dir.display(), e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            u32::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
        })
        .collect();
    ids.sort_unstable();
    let mut replayed = HashMap::new();
    let mut files = BTreeMap::new();
    let mut head = None;
    for (i, &seg) in ids.iter().enumerate() {
        let path = seg_path(dir, seg);
        let io = |e| WalError::io(path.display(), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        let bytes = std::fs::read(&path).map_err(io)?;
        let newest = i + 1 == ids.len();
        let mut len = bytes.len() as u64;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if !(newest && MAGIC.starts_with(&bytes)) {
                return Err(WalError(format!(
                    "{}: not a DeviceGrid log segment",
                    path.display()
                )));
            }
            // Created, but its header was cut short by a crash.
            file.set_len(0).map_err(io)?;
            file.write_all_at(MAGIC, 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            len = HEADER;
        } else {
            match record::replay(seg, &bytes, &mut replayed).map_err(|e| WalError(e.to_string()))? {
                record::End::Clean => {}
                record::End::Torn(at) if newest => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        dropped = len - at,
                        "raft log: dropping the end of a write cut short"
                    );
                    file.set_len(at).map_err(io)?;
                    file.sync_all().map_err(io)?;
                    len = at;
                }
                record::End::Torn(at) => {
                    return Err(WalError(format!(
                        "{}: damaged record at offset {at} in a segment that is not the newest",
                        path.display()
                    )))
                }
            }
        }
        files.insert(seg, Arc::new(file));
        if newest {
            head = Some((seg, len));
        }
    }
    let head = match head {
        Some(h) => h,
        None => {
            let file = writer::create_segment(dir, 1)?;
            file.write_all_at(MAGIC, 0)
                .and_then(|()| file.sync_all())
                .map_err(|e| WalError::io("first segment", e))?;
            files.insert(1, Arc::new(file));
            (1, HEADER)
        }
    };
    let mut groups = HashMap::new();
    for (group, r) in replayed {
        let mut log = GroupLog {
            first: r.entries.keys().next().copied().unwrap_or(0),
            slots: VecDeque::with_capacity(r.entries.len()),
            state: r.state,
            purged: r.purged,
        };
        for (index, loc) in r.entries {
            if index != log.next() {
                return Err(WalError(format!(
                    "group {group}: the log has a hole before index {index}"
                )));
            }
            log.slots.push_back(Slot { loc, mem: None });
        }
        groups.insert(group, log);
    }
    Ok((groups, files, head))
}
