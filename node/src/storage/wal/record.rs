//! The log's file format: segments of framed records.
//!
//! A segment file (`<id as 16 hex digits>.wal`) starts with [`MAGIC`], then records, each
//! framed as `len: u32 LE | crc32: u32 LE | body` (the CRC covers the body). The body starts
//! with a tag byte and the group id (u32 LE):
//!
//! | tag | record | rest of the body |
//! | --- | --- | --- |
//! | 1 | entries (replace the log from `first` on) | `first: u64`, `n: u32`, n x (`len: u32`, bytes) |
//! | 2 | entries moved forward from an older segment (replace only these indexes) | as tag 1 |
//! | 3 | truncate from `from` on | `from: u64` |
//! | 4 | purge up to `upto` included | `upto: u64` |
//! | 5 | set a state value (vote, committed id, purged id) | `key: u8`, bytes |
//! | 6 | drop the group | |
//!
//! Integers are little-endian. Every segment starts with every group's state values and
//! purge point again (the checkpoint), so a segment older than every live entry can be
//! deleted whole.

use std::collections::{BTreeMap, HashMap};

/// First bytes of every segment.
pub const MAGIC: &[u8; 8] = b"DGWAL\0\0\x01";
/// Length of [`MAGIC`].
pub const HEADER: u64 = MAGIC.len() as u64;
/// Bytes of a record's frame before its body.
pub const FRAME: usize = 8;
/// No record is larger: a length above it is a torn or foreign write.
const MAX_BODY: u32 = 1 << 30;

const ENTRIES: u8 = 1;
const MOVED: u8 = 2;
const TRUNCATE: u8 = 3;
const PURGE: u8 = 4;
const STATE: u8 = 5;
const DROP: u8 = 6;

/// Appends one framed record to `out`; `body` writes the body. Returns where the body
/// starts in `out`.
fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    body(out);
    let len = u32::try_from(out.len() - start - FRAME).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
    start + FRAME
}

fn head(out: &mut Vec<u8>, tag: u8, group: u32) {
    out.push(tag);
    out.extend_from_slice(&group.to_le_bytes());
}

/// Appends an entries record (`moved`: tag 2). Returns each entry's (offset in `out`,
/// length).
pub fn entries<'a>(
    out: &mut Vec<u8>,
    group: u32,
    first: u64,
    moved: bool,
    items: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Vec<(usize, u32)> {
    let mut at = Vec::with_capacity(items.len());
    frame(out, |b| {
        head(b, if moved { MOVED } else { ENTRIES }, group);
        b.extend_from_slice(&first.to_le_bytes());
        b.extend_from_slice(&u32::try_from(items.len()).unwrap_or(u32::MAX).to_le_bytes());
        for item in items {
            let len = u32::try_from(item.len()).unwrap_or(u32::MAX);
            b.extend_from_slice(&len.to_le_bytes());
            at.push((b.len(), len));
            b.extend_from_slice(item);
        }
    });
    at
}

/// Appends a truncate record.
pub fn truncate(out: &mut Vec<u8>, group: u32, from: u64) {
    frame(out, |b| {
        head(b, TRUNCATE, group);
        b.extend_from_slice(&from.to_le_bytes());
    });
}

/// Appends a purge record.
pub fn purge(out: &mut Vec<u8>, group: u32, upto: u64) {
    frame(out, |b| {
        head(b, PURGE, group);
        b.extend_from_slice(&upto.to_le_bytes());
    });
}

/// Appends a state record.
pub fn state(out: &mut Vec<u8>, group: u32, key: u8, value: &[u8]) {
    frame(out, |b| {
        head(b, STATE, group);
        b.push(key);
        b.extend_from_slice(value);
    });
}

/// Appends a drop record.
pub fn drop_group(out: &mut Vec<u8>, group: u32) {
    frame(out, |b| head(b, DROP, group));
}

/// Where an entry's bytes are: segment, offset in the file, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    /// Segment id.
    pub seg: u32,
    /// Offset of the entry's bytes in the segment file.
    pub off: u64,
    /// Length of the entry's bytes.
    pub len: u32,
}

impl Loc {
    /// The position just after the entry.
    pub fn end(&self) -> (u32, u64) {
        (self.seg, self.off + u64::from(self.len))
    }
}

/// One group as rebuilt from the segments.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Live entries by index.
    pub entries: BTreeMap<u64, Loc>,
    /// State values by key.
    pub state: BTreeMap<u8, Vec<u8>>,
    /// The last purge point.
    pub purged: Option<u64>,
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte was a whole record.
    Clean,
    /// The records end at this offset, followed by bytes that are not a whole record (a
    /// write the crash cut short).
    Torn(u64),
}

/// A record whose frame checked but whose body does not parse: a bug or a foreign file.
#[derive(Debug, thiserror::Error)]
#[error("segment {seg}: bad record at offset {at}: {what}")]
pub struct Corrupt {
    seg: u32,
    at: u64,
    what: &'static str,
}

struct Body<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// Replays the records of segment `seg` (its whole file in `bytes`, header included) into
/// `groups`, in order. Returns how the records ended.
pub fn replay(seg: u32, bytes: &[u8], groups: &mut HashMap<u32, Replayed>) -> Result<End, Corrupt> {
    let mut at = HEADER as usize;
    while at < bytes.len() {
        let frame = bytes.get(at..at + FRAME);
        let Some(frame) = frame else {
            return Ok(End::Torn(at as u64));
        };
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let body_at = at + FRAME;
        let body = match bytes.get(body_at..body_at + len as usize) {
            Some(b) if len > 0 && len <= MAX_BODY && crc32fast::hash(b) == crc => b,
            _ => return Ok(End::Torn(at as u64)),
        };
        let corrupt = |what| Corrupt {
            seg,
            at: at as u64,
            what,
        };
        apply(seg, body_at as u64, body, groups).ok_or_else(|| corrupt("short body"))??;
        at = body_at + len as usize;
    }
    Ok(End::Clean)
}

/// Applies one record's body (at file offset `base`). `None`: the body ended early.
fn apply(
    seg: u32,
    base: u64,
    body: &[u8],
    groups: &mut HashMap<u32, Replayed>,
) -> Option<Result<(), Corrupt>> {
    let mut b = Body { b: body, at: 0 };
    let tag = b.u8()?;
    let group = b.u32()?;
    match tag {
        ENTRIES | MOVED => {
            let first = b.u64()?;
            let n = b.u32()?;
            let g = groups.entry(group).or_default();
            if tag == ENTRIES {
                g.entries.split_off(&first);
            }
            for i in 0..u64::from(n) {
                let len = b.u32()?;
                let off = base + b.at as u64;
                b.take(len as usize)?;
                g.entries.insert(first + i, Loc { seg, off, len });
            }
        }
        TRUNCATE => {
            let from = b.u64()?;
            groups.entry(group).or_default().entries.split_off(&from);
        }
        PURGE => {
            let upto = b.u64()?;
            let g = groups.entry(group).or_default();
            g.entries = g.entries.split_off(&upto.saturating_add(1));
            g.purged = g.purged.max(Some(upto));
        }
        STATE => {
            let key = b.u8()?;
            let value = body[b.at..].to_vec();
            groups.entry(group).or_default().state.insert(key, value);
        }
        DROP => {
            groups.remove(&group);
        }
        _ => {
            return Some(Err(Corrupt {
                seg,
                at: base,
                what: "unknown tag",
            }))
        }
    }
    Some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(records: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        records(&mut out);
        out
    }

    #[test]
    fn records_replay_in_order() {
        let mut at = Vec::new();
        let bytes = segment(|out| {
            at = entries(out, 7, 1, false, [&b"a"[..], b"bb", b"ccc"].into_iter());
            state(out, 7, 1, b"vote");
            truncate(out, 7, 3);
            entries(out, 7, 3, false, [&b"C"[..], b"D"].into_iter());
            purge(out, 7, 1);
            entries(out, 9, 5, false, [&b"x"[..]].into_iter());
            drop_group(out, 9);
        });
        let mut groups = HashMap::new();
        assert_eq!(replay(1, &bytes, &mut groups).expect("replay"), End::Clean);
        assert_eq!(groups.len(), 1);
        let g = &groups[&7];
        assert_eq!(g.entries.keys().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        let loc = g.entries[&2];
        assert_eq!((loc.off, loc.len), (at[1].0 as u64, 2));
        assert_eq!(&bytes[loc.off as usize..][..2], b"bb");
        let d = g.entries[&4];
        assert_eq!(&bytes[d.off as usize..][..d.len as usize], b"D");
        assert_eq!(g.state[&1], b"vote");
    }

    #[test]
    fn moved_entries_keep_the_suffix() {
        let bytes = segment(|out| {
            entries(out, 1, 5, false, [&b"e5"[..], b"e6"].into_iter());
            entries(out, 1, 3, true, [&b"e3"[..], b"e4"].into_iter());
        });
        let mut groups = HashMap::new();
        replay(1, &bytes, &mut groups).expect("replay");
        assert_eq!(
            groups[&1].entries.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5, 6]
        );
    }

    #[test]
    fn a_cut_record_ends_the_segment() {
        let full = segment(|out| {
            entries(out, 1, 1, false, [&b"one"[..]].into_iter());
            entries(out, 1, 2, false, [&b"two"[..]].into_iter());
        });
        let first_end = HEADER as usize + FRAME + 1 + 4 + 8 + 4 + 4 + 3;
        for cut in first_end + 1..full.len() {
            let mut groups = HashMap::new();
            let end = replay(1, &full[..cut], &mut groups).expect("replay");
            assert_eq!(end, End::Torn(first_end as u64), "cut at {cut}");
            assert_eq!(groups[&1].entries.len(), 1);
        }
        // A flipped byte in the last record is a torn write too.
        let mut flipped = full.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let mut groups = HashMap::new();
        assert_eq!(
            replay(1, &flipped, &mut groups).expect("replay"),
            End::Torn(first_end as u64)
        );
        // Zeros after the records (a file extended but not written) end it as well.
        let mut zeros = full.clone();
        zeros.extend_from_slice(&[0; 64]);
        let mut groups = HashMap::new();
        assert_eq!(
            replay(1, &zeros, &mut groups).expect("replay"),
            End::Torn(full.len() as u64)
        );
    }

    #[test]
    fn a_checked_record_that_does_not_parse_is_corruption() {
        let bytes = segment(|out| {
            frame(out, |b| {
                b.push(ENTRIES);
                b.extend_from_slice(&1u32.to_le_bytes());
                b.extend_from_slice(&1u64.to_le_bytes());
                b.extend_from_slice(&5u32.to_le_bytes());
            });
        });
        let mut groups = HashMap::new();
        assert!(replay(3, &bytes, &mut groups).is_err());
    }
}
