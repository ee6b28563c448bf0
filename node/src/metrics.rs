//! Prometheus metrics (prometheus-client, OpenMetrics text at `GET /metrics`).
//!
//! Request counters and latency histograms are updated as requests finish; Raft gauges are
//! read from the groups when scraped.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

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
    log_syncs: Counter,
    log_synced_writes: Counter,
    log_sync_seconds: Counter<f64, AtomicU64>,
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
        let (log_syncs, log_synced_writes) = (Counter::default(), Counter::default());
        let log_sync_seconds = Counter::<f64, AtomicU64>::default();
        registry.register(
            "log_syncs",
            "Group-commit syncs of the Raft logs of every group (sled's flush, then fdatasync)",
            log_syncs.clone(),
        );
        registry.register(
            "log_synced_writes",
            "Log appends and votes made durable by those syncs (per sync: this / log_syncs)",
            log_synced_writes.clone(),
        );
        registry.register(
            "log_sync_seconds",
            "Time spent in those syncs",
            log_sync_seconds.clone(),
        );
        Metrics {
            log_syncs,
            log_synced_writes,
            log_sync_seconds,
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

    /// Sets the gauges from a snapshot of the member's state.
    pub fn observe(&self, stats: &GridStats) {
        // Families are rebuilt so replicas moved away leave no stale series.
        for family in [
            &self.commit_index,
            &self.applied_index,
            &self.snapshot_index,
            &self.purged_index,
        ] {
            family.clear();
        }
        for g in &stats.groups {
            let labels = GroupLabels {
                group: g.group.clone(),
            };
            for (family, value) in [
                (&self.commit_index, g.committed),
                (&self.applied_index, g.applied),
                (&self.snapshot_index, g.snapshot),
                (&self.purged_index, g.purged),
            ] {
                family.get_or_create(&labels).set(value as i64);
            }
        }
        self.leaders.set(stats.partitions_led as i64);
        self.replicas.set(stats.partitions_held as i64);
        self.leaderless.set(stats.partitions_leaderless as i64);
        self.peers_up.set(stats.peers_up as i64);
        for (state, n) in [
            ("in_progress", stats.moves_in_progress),
            ("stalled", stats.moves_stalled),
        ] {
            self.moves
                .get_or_create(&MoveLabels {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.moves_finished.set(stats.moves_finished as i64);
        // Counters follow the flusher's own totals.
        self.log_syncs
            .inc_by(stats.log_syncs.saturating_sub(self.log_syncs.get()));
        self.log_synced_writes.inc_by(
            stats
                .log_synced_writes
                .saturating_sub(self.log_synced_writes.get()),
        );
        let seconds = stats.log_sync_seconds - self.log_sync_seconds.get();
        if seconds > 0.0 {
            self.log_sync_seconds.inc_by(seconds);
        }
        self.move_steps.clear();
        for phase in &stats.move_phases {
            self.move_steps
                .get_or_create(&MoveLabels {
                    state: phase.clone(),
                })
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

/// Log positions of one hosted group.
#[derive(Clone, Debug, Default)]
pub struct GroupStats {
    /// `meta` or `p<N>`.
    pub group: String,
    /// Last committed index.
    pub committed: u64,
    /// Last applied index.
    pub applied: u64,
    /// Index of the last snapshot.
    pub snapshot: u64,
    /// Last purged index.
    pub purged: u64,
}

/// What the member's gauges show, read from the member by its owner
/// (`cluster::Grid::stats`), so this module needs nothing above it.
#[derive(Clone, Debug, Default)]
pub struct GridStats {
    /// Every hosted group.
    pub groups: Vec<GroupStats>,
    /// Partitions led here.
    pub partitions_led: usize,
    /// Partition replicas hosted here.
    pub partitions_held: usize,
    /// Hosted partitions without a usable leader.
    pub partitions_leaderless: usize,
    /// Other members answering pings.
    pub peers_up: usize,
    /// Moves in progress grid-wide.
    pub moves_in_progress: usize,
    /// Moves running longer than the stall threshold.
    pub moves_stalled: usize,
    /// Moves finished since bootstrap.
    pub moves_finished: u64,
    /// Phases of the moves this member carries out.
    pub move_phases: Vec<String>,
    /// Group-commit syncs of the Raft logs since the member started.
    pub log_syncs: u64,
    /// Log appends and votes those syncs made durable.
    pub log_synced_writes: u64,
    /// Time spent in those syncs, seconds.
    pub log_sync_seconds: f64,
}
