//! Log compaction by size. Snapshots are taken every `snapshot_after_logs` entries
//! (openraft's policy); besides that, when the member's Raft log keeps more live segments
//! than `log_max_segments` because some groups hold many live entries in the oldest one
//! (`storage::wal` moves a few forward on its own), those groups snapshot now, so openraft
//! purges their logs and the segment is freed. The oldest segment is also the oldest data,
//! so this bounds the log by size and by age alike. A group is not asked while what it
//! keeps in that segment lies within the entries openraft keeps after a snapshot (a
//! snapshot would not free it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::cluster::groups::Groups;
use crate::runtime::Every;

/// How often the log is asked which groups pin it.
const EVERY: Duration = Duration::from_secs(2);
/// A group is asked for a snapshot at most this often.
const AGAIN_AFTER: Duration = Duration::from_secs(5);
/// Snapshots asked for per round, at most: each copies its whole partition.
const PER_ROUND: usize = 8;

/// Runs until `token` is cancelled. `keep` is how many entries openraft keeps in the log
/// after a snapshot (`max_in_snapshot_log_to_keep`).
pub async fn run(groups: Arc<Groups>, keep: u64, token: CancellationToken) {
    let mut every = Every::new(EVERY, token);
    let mut asked: HashMap<u32, Instant> = HashMap::new();
    while every.tick().await {
        let pinning = groups.storage().wal.pinning_groups();
        asked.retain(|_, at| at.elapsed() < AGAIN_AFTER);
        let wanted: Vec<_> = groups
            .all()
            .into_iter()
            .filter(|g| {
                let key = g.id.to_key();
                // A snapshot now purges up to `last - keep`: only worth it when that passes
                // what the group keeps in the oldest segment.
                let last = g.raft.metrics().borrow().last_log_index.unwrap_or(0);
                pinning
                    .iter()
                    .any(|(k, kept)| *k == key && *kept + keep <= last)
                    && !asked.contains_key(&key)
            })
            .take(PER_ROUND)
            .collect();
        for g in wanted {
            let key = g.id.to_key();
            asked.insert(key, Instant::now());
            tracing::debug!(group = %g.id, "snapshot: the group's entries keep the oldest log segment");
            if let Err(e) = g.raft.trigger().snapshot().await {
                tracing::debug!(group = %g.id, error = %e, "snapshot request");
            }
        }
    }
}
