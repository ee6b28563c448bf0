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
    log: LogMetrics,
}

/// The Raft log's writer (`storage::wal`), mirrored from its own totals on each scrape.
#[derive(Default)]
struct LogMetrics {
    syncs: Counter,
    writes: Counter,
    bytes: Counter,
    sync_seconds: Counter<f64, AtomicU64>,
    wait_seconds: Counter<f64, AtomicU64>,
    moved: Counter,
    deleted: Counter,
    segments: Gauge,
    disk_bytes: Gauge,
}

impl LogMetrics {
    fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "log_syncs",
                "Group-commit syncs of the Raft log of every group (one write and one fdatasync)",
                &self.syncs,
            ),
            (
                "log_synced_writes",
                "Log appends and votes made durable by those syncs (per sync: this / log_syncs)",
                &self.writes,
            ),
            (
                "log_written_bytes",
                "Bytes the log's writer wrote (per sync: this / log_syncs)",
                &self.bytes,
            ),
            (
                "log_moved_entries",
                "Log entries moved out of an old segment so that it could be deleted",
                &self.moved,
            ),
            (
                "log_deleted_segments",
                "Log segment files deleted",
                &self.deleted,
            ),
        ];
        for (name, help, c) in counters {
            registry.register(name, help, c.clone());
        }
        let seconds = [
            ("log_sync_seconds", "Time spent writing and syncing the log", &self.sync_seconds),
            (
                "log_wait_seconds",
                "Time log writes waited from submission to their answer, summed (per write: this / log_synced_writes)",
                &self.wait_seconds,
            ),
        ];
        for (name, help, c) in seconds {
            registry.register(name, help, c.clone());
        }
        let gauges = [
            ("log_segments", "Log segment files on disk", &self.segments),
            (
                "log_disk_bytes",
                "Bytes of the log's segment files",
                &self.disk_bytes,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register(name, help, g.clone());
        }
    }

    fn set(&self, stats: &LogStats) {
        let follow = |c: &Counter, total: u64| c.inc_by(total.saturating_sub(c.get()));
        let follow_f = |c: &Counter<f64, AtomicU64>, total: f64| {
            let d = total - c.get();
            if d > 0.0 {
                c.inc_by(d);
            }
        };
        follow(&self.syncs, stats.syncs);
        follow(&self.writes, stats.writes);
        follow(&self.bytes, stats.bytes);
        follow(&self.moved, stats.moved);
        follow(&self.deleted, stats.deleted_segments);
        follow_f(&self.sync_seconds, stats.sync_seconds);
        follow_f(&self.wait_seconds, stats.wait_seconds);
        self.segments.set(stats.segments as i64);
        self.disk_bytes.set(stats.disk_bytes as i64);
    }
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
        let log = LogMetrics::default();
        log.register(&mut registry);
        Metrics {
            log,
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
        self.log.set(&stats.log);
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
    /// The Raft log's writer.
    pub log: LogStats,
}

/// What the Raft log's writer did since the member started, and its files.
#[derive(Clone, Debug, Default)]
pub struct LogStats {
    /// Group-commit syncs.
    pub syncs: u64,
    /// Appends, votes and other waits those syncs made durable.
    pub writes: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Time spent writing and syncing, seconds.
    pub sync_seconds: f64,
    /// Time writes waited for their answer, summed, seconds.
    pub wait_seconds: f64,
    /// Entries moved out of old segments.
    pub moved: u64,
    /// Segment files deleted.
    pub deleted_segments: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Their bytes.
    pub disk_bytes: u64,
}
