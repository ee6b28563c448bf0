//! Prometheus metrics (prometheus-client, OpenMetrics text at `GET /metrics`).
//!
//! Request counters and latency histograms are updated as requests finish; Raft gauges are
//! read from the groups when scraped.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::cluster::Grid;

/// Labels of request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Operation, e.g. `map_put`.
    pub op: String,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of request latencies.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// Operation, e.g. `map_put`.
    pub op: String,
}

/// Labels of per-group gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// `meta` or `p<N>`.
    pub group: String,
}

type HistogramFamily = Family<OpLabels, Histogram, fn() -> Histogram>;

/// The member's metric families.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    commit_index: Family<GroupLabels, Gauge>,
    applied_index: Family<GroupLabels, Gauge>,
    snapshot_index: Family<GroupLabels, Gauge>,
    purged_index: Family<GroupLabels, Gauge>,
    expired: Counter,
    leaders: Gauge,
    replicas: Gauge,
    leaderless: Gauge,
    peers_up: Gauge,
    moves: Family<MoveLabels, Gauge>,
    moves_finished: Gauge,
    move_steps: Family<MoveLabels, Gauge>,
}

/// Labels of move gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MoveLabels {
    /// `in_progress`/`stalled` (grid-wide), or the phase of a step run here.
    state: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("devicegrid");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let commit_index = Family::<GroupLabels, Gauge>::default();
        let applied_index = Family::<GroupLabels, Gauge>::default();
        let snapshot_index = Family::<GroupLabels, Gauge>::default();
        let purged_index = Family::<GroupLabels, Gauge>::default();
        let (leaders, replicas, leaderless, peers_up) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        registry.register(
            "requests",
            "API requests by operation and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency by operation",
            latency.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Last committed log index by group",
            commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Last applied log index by group",
            applied_index.clone(),
        );
        let expired = Counter::default();
        registry.register(
            "expired_entries",
            "Map entries removed by the TTL sweeper of partitions led here",
            expired.clone(),
        );
        registry.register(
            "raft_snapshot_index",
            "Log index covered by the group's latest snapshot",
            snapshot_index.clone(),
        );
        registry.register(
            "raft_purged_index",
            "Last log index dropped after a snapshot",
            purged_index.clone(),
        );
        registry.register(
            "partition_leaders",
            "Partitions this member leads",
            leaders.clone(),
        );
        registry.register(
            "partition_replicas",
            "Partition replicas this member hosts",
            replicas.clone(),
        );
        registry.register(
            "partitions_leaderless",
            "Hosted partitions without a usable leader",
            leaderless.clone(),
        );
        registry.register(
            "peers_up",
            "Other members answering pings",
            peers_up.clone(),
        );
        let moves = Family::<MoveLabels, Gauge>::default();
        let moves_finished = Gauge::default();
        let move_steps = Family::<MoveLabels, Gauge>::default();
        registry.register(
            "replica_moves",
            "Replica moves recorded in the partition table (state=in_progress), and those \
             running longer than move_stalled_after_ms (state=stalled)",
            moves.clone(),
        );
        registry.register(
            "replica_moves_finished",
            "Replica moves finished since the grid was bootstrapped",
            moves_finished.clone(),
        );
        registry.register(
            "move_steps",
            "Moves and leadership handoffs this member runs as partition leader, by phase",
            move_steps.clone(),
        );
        Metrics {
            moves,
            moves_finished,
            move_steps,
            registry,
            requests,
            latency,
            commit_index,
            applied_index,
            snapshot_index,
            purged_index,
            expired,
            leaders,
            replicas,
            leaderless,
            peers_up,
        }
    }

    /// Records one finished API request.
    pub fn observe_request(&self, op: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                op: op.to_string(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&OpLabels { op: op.to_string() })
            .observe(took.as_secs_f64());
    }

    /// Counts entries removed by the TTL sweeper.
    pub fn observe_expired(&self, n: u64) {
        self.expired.inc_by(n);
    }

    /// Reads the Raft gauges from the grid.
    pub fn observe_groups(&self, grid: &Grid) {
        let (mut led, mut held, mut leaderless) = (0, 0, 0);
        // Families are rebuilt so replicas moved away leave no stale series.
        for family in [
            &self.commit_index,
            &self.applied_index,
            &self.snapshot_index,
            &self.purged_index,
        ] {
            family.clear();
        }
        for g in grid.groups() {
            let m = g.raft.metrics().borrow().clone();
            let labels = GroupLabels {
                group: g.id.to_string(),
            };
            self.commit_index
                .get_or_create(&labels)
                .set(g.committed.load(Ordering::Relaxed) as i64);
            self.applied_index
                .get_or_create(&labels)
                .set(m.last_applied.map_or(0, |l| l.index) as i64);
            self.snapshot_index
                .get_or_create(&labels)
                .set(m.snapshot.map_or(0, |l| l.index) as i64);
            self.purged_index
                .get_or_create(&labels)
                .set(m.purged.map_or(0, |l| l.index) as i64);
            if matches!(g.id, crate::raft::GroupId::Partition(_)) {
                held += 1;
                led += i64::from(m.state == openraft::ServerState::Leader);
                leaderless += i64::from(!grid.has_usable_leader(&g));
            }
        }
        self.leaders.set(led);
        self.replicas.set(held);
        self.leaderless.set(leaderless);
        let meta = grid.meta_state();
        self.peers_up.set(
            meta.members
                .keys()
                .filter(|id| **id != grid.id && grid.liveness.alive(**id))
                .count() as i64,
        );
        let now = crate::cluster::now_ms();
        let stalled_ms = grid.config.move_stalled_after_ms;
        let stalled = meta
            .moves
            .values()
            .filter(|m| now.saturating_sub(m.started_ms) > stalled_ms)
            .count();
        for (state, n) in [("in_progress", meta.moves.len()), ("stalled", stalled)] {
            self.moves
                .get_or_create(&MoveLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.moves_finished.set(meta.moves_finished as i64);
        self.move_steps.clear();
        for m in grid.status().moves {
            self.move_steps
                .get_or_create(&MoveLabels { state: m.phase })
                .inc();
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
