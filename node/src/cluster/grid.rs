//! The [`Grid`]: one member's lifecycle. Start opens storage and the metadata group, wires
//! the parts below together and spawns the member's loops, each with the narrow handle it
//! needs; stop cancels the member's task tree and waits for it.
//!
//! | part | job |
//! | --- | --- |
//! | [`Groups`] | the hosted Raft groups and the metadata state |
//! | [`MetaClient`] | calls to the metadata leader |
//! | [`Router`] | partition reads and writes, to the leader, with retries |
//! | [`PeerServer`] | answers peers |
//! | [`Views`] | this member's report and the grid views |
//! | loops | [`bootstrap`], [`compactor`], [`driver`], [`expiry`], [`liveness`], [`mover`] |

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta_client::MetaClient;
use crate::cluster::peer_server::PeerServer;
use crate::cluster::router::Router;
use crate::cluster::views::{MoveBoard, Views};
use crate::cluster::{bootstrap, compactor, driver, expiry, liveness, mover, now_ms};
use crate::config::Config;
use crate::metrics::{GridStats, GroupStats, Metrics};
use crate::raft::{GroupId, NodeId};
use crate::runtime::Tasks;
use crate::storage::{wal::WalOptions, Storage};
use crate::transport::{MemberCert, PeerTls, TlsFiles, Transport};
use crate::Result;

/// A member of the grid.
pub struct Grid {
    /// This member's id.
    pub id: NodeId,
    /// Its configuration.
    pub config: Arc<Config>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Hosted groups and the metadata state.
    pub groups: Arc<Groups>,
    /// Calls to the metadata leader.
    pub meta: Arc<MetaClient>,
    /// Partition reads and writes.
    pub router: Arc<Router>,
    /// Reports and views.
    pub views: Arc<Views>,
    /// Answers peers.
    pub peers: Arc<PeerServer>,
    /// Which peers answer.
    pub liveness: Arc<Liveness>,
    /// Certificates of peer traffic (the peer listener serves with them).
    pub peer_tls: PeerTls,
    storage: Storage,
    tasks: Tasks,
    /// The transport outlives the other tasks (groups still talk while they shut down).
    transport_tasks: Tasks,
}

impl Grid {
    /// Opens storage, starts the metadata group and the member's loops under `tasks`. The
    /// HTTP endpoint is served by the caller ([`crate::api::serve`]).
    pub async fn start(config: Config, metrics: Arc<Metrics>, tasks: Tasks) -> Result<Arc<Grid>> {
        config.validate()?;
        bootstrap::check_identity(&config)?;
        let config = Arc::new(config);
        let peer_tls = PeerTls::load(&tls_files(&config)?, &config.cluster_name, config.node_id)?;
        let storage = Storage::open_with(
            &config.data_dir,
            config.min_free_disk_bytes,
            WalOptions {
                segment_bytes: config.log_segment_bytes,
                max_segments: config.log_max_segments,
            },
        )?;
        let transport_tasks = Tasks::new();
        let transport = Transport::new(
            transport_tasks.clone(),
            &peer_tls,
            config.peer_source_ip,
            config.max_queued_peer_requests,
            config.max_queued_peer_bytes,
        )?;
        let groups = Arc::new(
            Groups::open(&config, storage.clone(), transport.clone(), tasks.child()).await?,
        );
        let liveness = Arc::new(Liveness::new(Duration::from_millis(
            config.member_down_after_ms,
        )));
        let meta = Arc::new(MetaClient::new(
            groups.clone(),
            transport.clone(),
            config.seeds(),
        ));
        let router = Arc::new(Router::new(
            groups.clone(),
            liveness.clone(),
            transport.clone(),
            Duration::from_millis(config.request_timeout_ms),
        ));
        let moves = Arc::new(MoveBoard::default());
        let views = Arc::new(Views {
            cluster_name: config.cluster_name.clone(),
            move_stalled_after_ms: config.move_stalled_after_ms,
            groups: groups.clone(),
            liveness: liveness.clone(),
            transport: transport.clone(),
            moves: moves.clone(),
        });
        let peers = Arc::new(PeerServer {
            groups: groups.clone(),
            liveness: liveness.clone(),
            meta: meta.clone(),
            router: router.clone(),
            views: views.clone(),
            tasks: tasks.clone(),
        });
        let token = tasks.token().clone();
        tasks.spawn(bootstrap::run(
            Arc::new(bootstrap::Hosting {
                config: config.clone(),
                groups: groups.clone(),
                meta: meta.clone(),
                liveness: liveness.clone(),
                bootstrap_admin: bootstrap_admin(&config)?,
            }),
            token.clone(),
        ));
        tasks.spawn(liveness::run(
            Arc::new(liveness::LivenessLoop {
                seeds: config.seeds(),
                groups: groups.clone(),
                liveness: liveness.clone(),
                transport: transport.clone(),
            }),
            token.clone(),
        ));
        let space = storage.space.clone();
        let watch_token = token.clone();
        tasks.spawn(async move { space.watch(watch_token).await });
        tasks.spawn(expiry::run(groups.clone(), metrics.clone(), token.clone()));
        tasks.spawn(compactor::run(
            groups.clone(),
            crate::raft::kept_after_snapshot(config.snapshot_after_logs),
            token.clone(),
        ));
        tasks.spawn(driver::run(
            Arc::new(driver::Driver {
                config: config.clone(),
                groups: groups.clone(),
                meta: meta.clone(),
                liveness: liveness.clone(),
            }),
            token.clone(),
        ));
        tasks.spawn(mover::run(
            Arc::new(mover::Mover {
                groups: groups.clone(),
                meta: meta.clone(),
                liveness: liveness.clone(),
                moves,
                tasks: tasks.clone(),
                transport: transport.clone(),
                failure_grace: Duration::from_millis(config.failure_grace_ms),
            }),
            token,
        ));
        Ok(Arc::new(Grid {
            id: config.node_id,
            config,
            metrics,
            groups,
            meta,
            router,
            views,
            peers,
            liveness,
            peer_tls,
            storage,
            tasks,
            transport_tasks,
        }))
    }

    /// The member's task tree (the HTTP server runs in it too).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// The member's storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Stops the member within about `grace`: the loops, the HTTP listener and the group
    /// queues stop at once; entries already proposed and requests being served get half the
    /// grace to finish (so their callers get their answer); then the Raft groups shut down
    /// (what is still in flight ends as `outcome_unknown`), the transport stops last, and
    /// storage is flushed. Returns how many tasks were still running (0: a clean stop).
    pub async fn stop(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let remaining = || deadline.saturating_duration_since(Instant::now());
        self.tasks.stop(grace / 2).await;
        self.groups.shutdown(remaining()).await;
        let left = self.tasks.stop(remaining()).await;
        let transport_left = self
            .transport_tasks
            .stop(remaining().max(Duration::from_secs(1)))
            .await;
        if let Err(e) = self.storage.close().await {
            tracing::error!(error = %e, "final sync");
        }
        left + transport_left
    }

    /// A snapshot of the member for its gauges.
    pub fn stats(&self) -> GridStats {
        let mut stats = GridStats::default();
        for g in self.groups.all() {
            let m = g.raft.metrics().borrow().clone();
            stats.groups.push(GroupStats {
                group: g.id.to_string(),
                committed: g.committed.load(Ordering::Relaxed),
                applied: m.last_applied.map_or(0, |l| l.index),
                snapshot: m.snapshot.map_or(0, |l| l.index),
                purged: m.purged.map_or(0, |l| l.index),
            });
            if matches!(g.id, GroupId::Partition(_)) {
                stats.partitions_held += 1;
                stats.partitions_led += usize::from(m.state == ServerState::Leader);
                stats.partitions_leaderless +=
                    usize::from(!self.liveness.usable_leader(self.id, &g));
            }
        }
        let meta = self.groups.meta_state();
        stats.peers_up = meta
            .members
            .keys()
            .filter(|id| **id != self.id && self.liveness.alive(**id))
            .count();
        let now = now_ms();
        stats.moves_in_progress = meta.moves.len();
        stats.moves_stalled = meta
            .moves
            .values()
            .filter(|m| now.saturating_sub(m.started_ms) > self.config.move_stalled_after_ms)
            .count();
        stats.moves_finished = meta.moves_finished;
        stats.log = self.storage.wal.counts();
        stats.move_phases = self
            .views
            .report()
            .moves
            .iter()
            .map(|m| m.phase.to_string())
            .collect();
        stats
    }
}

/// Where the peer certificates come from (`Config::validate` checked the combination).
fn tls_files(config: &Config) -> Result<TlsFiles> {
    let missing = |what: &str| crate::Error::Tls(format!("{what} is not set"));
    let ca = config.peer_ca.clone().ok_or_else(|| missing("peer_ca"))?;
    let member = match (&config.peer_cert, &config.peer_key, &config.peer_ca_key) {
        (Some(cert), Some(key), _) => MemberCert::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (_, _, Some(ca_key)) => {
            let host = |addr: &str| {
                addr.rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_matches(|c| c == '[' || c == ']')
                    .to_string()
            };
            let mut hosts = vec![host(&config.peer_advertised())];
            if config.tls_self_issued {
                // The client port serves this certificate too.
                hosts.push(host(&config.advertised()));
                hosts.extend(config.tls_hosts.iter().cloned());
            }
            hosts.sort();
            hosts.dedup();
            MemberCert::IssueWith {
                ca_key: ca_key.clone(),
                hosts,
                lifetime: Duration::from_secs(config.cert_lifetime_secs),
            }
        }
        _ => return Err(missing("peer_cert and peer_key, or peer_ca_key,")),
    };
    Ok(TlsFiles { ca, member })
}

/// SHA-256 of the bootstrap admin token in `auth_bootstrap_token_file`, if set.
fn bootstrap_admin(config: &Config) -> Result<Option<String>> {
    let Some(path) = &config.auth_bootstrap_token_file else {
        return Ok(None);
    };
    let invalid = |message: String| {
        crate::Error::Config(crate::config::ConfigError {
            setting: "auth_bootstrap_token_file",
            message,
        })
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
    let token = text.trim();
    if !devicegrid_pki::valid_token(token) {
        return Err(invalid(format!(
            "{}: {}",
            path.display(),
            devicegrid_pki::TOKEN_RULE
        )));
    }
    Ok(Some(crate::structures::auth::token_sha256(token)))
}
