//! TTL sweeper. Reads treat expired entries as absent at once; this task makes the
//! partition leader remove them for good, through Raft, using the expiry index (so it never
//! scans the data).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::cluster::groups::Groups;
use crate::cluster::now_ms;
use crate::metrics::Metrics;
use crate::raft::GroupId;
use crate::runtime::Every;
use crate::structures::map::{due_expiries, OpOutcome};

/// Removals proposed per partition and round, at most.
const PER_ROUND: usize = 256;

/// Runs until `token` is cancelled.
pub async fn run(groups: Arc<Groups>, metrics: Arc<Metrics>, token: CancellationToken) {
    let mut every = Every::new(Duration::from_secs(1), token);
    while every.tick().await {
        for g in groups.all().into_iter().filter(|g| g.is_leader()) {
            let GroupId::Partition(p) = g.id else {
                continue;
            };
            match due_expiries(&groups.storage().state_machine, p, now_ms(), PER_ROUND) {
                Ok(ops) if !ops.is_empty() => {
                    // Outcomes do not matter: an entry rewritten meanwhile is left alone, and
                    // a failed round is retried on the next tick.
                    // Bounded: a leader cut off from its majority must not stall the others.
                    match tokio::time::timeout(Duration::from_secs(5), g.propose(ops)).await {
                        Err(_) => tracing::debug!(partition = p, "expiry round timed out"),
                        Ok(Err(e)) => {
                            tracing::debug!(partition = p, error = %e, "expiry round failed")
                        }
                        Ok(Ok(outcomes)) => {
                            let n = outcomes
                                .iter()
                                .filter(|o| matches!(o, OpOutcome::Deleted { .. }))
                                .count();
                            metrics.observe_expired(n as u64);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(partition = p, error = %e, "reading the expiry index"),
            }
        }
    }
}
