//! Member liveness and the member-wide Raft timers.
//!
//! Per-group ticks are off (see [`crate::raft::group_config`]). Instead, one task per member:
//!
//! - pings every other member twice a second; a member that has not answered for
//!   `member_down_after_ms` is down;
//! - once a second, makes every group it leads send a heartbeat; the transport coalesces
//!   them into one request per peer;
//! - starts an election in a group only when its leader is unknown, or silent for
//!   [`LEADER_SILENCE`], or silent for 2.5 s and its member misses pings. Replicas wait their turn by rank (the partition's preferred leader
//!   first) plus jitter, so leaders stay spread and candidates rarely collide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use rand::Rng;

use tokio_util::sync::CancellationToken;

use crate::cluster::group::Group;
use crate::cluster::groups::Groups;
use crate::config::Seed;
use crate::raft::{GroupId, NodeId};
use crate::runtime::Every;
use crate::transport::{Lane, PeerRequest, PeerResponse, Transport};

/// A follower that heard nothing from its leader for this long looks for a new one.
pub const LEADER_SILENCE: Duration = Duration::from_secs(4);
/// Appends this recent make a leader usable whatever its pings say (heartbeats come every
/// second).
const LEADER_FRESH: Duration = Duration::from_millis(2500);
/// No elections for silent leaders until the member has been up this long (leaders need a
/// heartbeat sweep to find a restarted member).
const STARTUP_GRACE: Duration = Duration::from_secs(3);
/// After this long, the pinger has pinged every peer, and a member it calls down is skipped.
const PEERS_KNOWN_AFTER: Duration = Duration::from_secs(3);
/// Extra wait per rank in the partition's replica list.
const RANK_DELAY: Duration = Duration::from_millis(1000);

/// When each peer last answered a ping.
pub struct Liveness {
    /// Last answer of each peer, and whether it reported having the partition table.
    last_ok: Mutex<HashMap<NodeId, (Instant, bool)>>,
    down_after: Duration,
    created: Instant,
}

impl Liveness {
    /// Peers are down after `down_after` without an answer.
    pub fn new(down_after: Duration) -> Self {
        Liveness {
            last_ok: Mutex::new(HashMap::new()),
            down_after,
            created: Instant::now(),
        }
    }

    /// Records an answer from `id`.
    pub fn record(&self, id: NodeId, bootstrapped: bool) {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (Instant::now(), bootstrapped));
    }

    /// Whether `id` answers and reported having the partition table.
    pub fn bootstrapped(&self, id: NodeId) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|(t, b)| *b && t.elapsed() < self.down_after)
    }

    /// How long `id` has not answered (since this member started, if it never did);
    /// `None` while it answers.
    pub fn down_for(&self, id: NodeId) -> Option<Duration> {
        let last = self.last_ok.lock().unwrap_or_else(|e| e.into_inner());
        let since = last.get(&id).map_or(self.created, |(t, _)| *t);
        Some(since.elapsed()).filter(|d| *d >= self.down_after)
    }

    /// Time since this member started.
    pub fn uptime(&self) -> Duration {
        self.created.elapsed()
    }

    /// Whether the pinger has had time to hear from every peer, so that a peer it calls
    /// down may be skipped.
    pub fn peers_known(&self) -> bool {
        self.uptime() > PEERS_KNOWN_AFTER
    }

    /// Milliseconds on this member's monotonic clock (for contact times; never 0).
    pub fn clock_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64 + 1
    }

    /// Whether the leader of `g` is known and reachable from member `me`.
    pub fn usable_leader(&self, me: NodeId, g: &Group) -> bool {
        let m = g.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == me => m.state == ServerState::Leader,
            Some(l) => self.alive(l),
            None => false,
        }
    }

    /// Whether `id` answered recently.
    pub fn alive(&self, id: NodeId) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|(t, _)| t.elapsed() < self.down_after)
    }
}

/// What the liveness loops use.
pub struct LivenessLoop {
    /// Initial members (pinged before they register).
    pub seeds: Vec<Seed>,
    /// Hosted groups and the metadata state.
    pub groups: Arc<Groups>,
    /// The record the pinger keeps.
    pub liveness: Arc<Liveness>,
    /// To reach peers.
    pub transport: Arc<Transport>,
}

/// Runs the pinger and the timer loop until `token` is cancelled.
pub async fn run(ctx: Arc<LivenessLoop>, token: CancellationToken) {
    tokio::join!(pinger(&ctx, token.clone()), timers(&ctx, token));
}

async fn pinger(ctx: &LivenessLoop, token: CancellationToken) {
    let me = ctx.groups.id();
    let mut every = Every::new(Duration::from_millis(500), token);
    // One log line per change of a peer's state, however long it stays down (openraft's
    // own per-RPC replication errors are off in the default log filter).
    let mut answering: HashMap<NodeId, bool> = HashMap::new();
    while every.tick().await {
        let meta = ctx.groups.meta_state();
        // Registered members, and initial members not registered yet.
        let mut peers: HashMap<NodeId, String> =
            ctx.seeds.iter().map(|s| (s.id, s.addr.clone())).collect();
        peers.extend(meta.members.values().map(|m| (m.id, m.addr.clone())));
        let pings = peers
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, addr)| async move {
                let req = PeerRequest::Ping { from: me };
                if let Ok(PeerResponse::Pong {
                    id: answered,
                    bootstrapped,
                }) = ctx
                    .transport
                    .call(&addr, Lane::Control, req, Duration::from_secs(1))
                    .await
                {
                    if answered == id {
                        ctx.liveness.record(id, bootstrapped);
                    }
                }
            });
        every.round(futures::future::join_all(pings)).await;
        for id in meta.members.keys().filter(|id| **id != me) {
            let now = ctx.liveness.alive(*id);
            match answering.insert(*id, now) {
                Some(true) if !now => tracing::warn!(member = id, "member stopped answering"),
                Some(false) if now => tracing::info!(member = id, "member answers again"),
                _ => {}
            }
        }
    }
}

async fn timers(ctx: &LivenessLoop, token: CancellationToken) {
    let mut every = Every::new(Duration::from_millis(250), token);
    let mut n: u64 = 0;
    while every.tick().await {
        n += 1;
        let groups = ctx.groups.all();
        if n % 4 == 0 {
            for g in groups
                .iter()
                .filter(|g| g.is_leader() && g.handoff().is_none())
            {
                let _ = g.raft.trigger().heartbeat().await;
            }
        }
        for g in &groups {
            maybe_elect(ctx, g).await;
        }
    }
}

/// This member's position in the order in which replicas of `g` try to become leader.
fn rank(ctx: &LivenessLoop, g: &Group, voters: &[NodeId]) -> usize {
    let preferred: Vec<NodeId> = match g.id {
        GroupId::Partition(p) => ctx.groups.meta_state().replicas(p).to_vec(),
        GroupId::Meta => voters.to_vec(),
    };
    preferred
        .iter()
        .position(|id| *id == ctx.groups.id())
        .unwrap_or(preferred.len())
}

async fn maybe_elect(ctx: &LivenessLoop, g: &Group) {
    let me = ctx.groups.id();
    let m = g.raft.metrics().borrow().clone();
    let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
    let now = Instant::now();
    let usable = match m.current_leader {
        _ if m.state == ServerState::Leader => true,
        Some(l) if l != me => {
            let contact = g
                .last_leader_contact
                .load(std::sync::atomic::Ordering::Relaxed);
            let silence = Duration::from_millis(ctx.liveness.clock_ms().saturating_sub(contact));
            // Recent appends prove the leader works even if a ping was slow; a leader whose
            // member stopped answering pings is given up sooner than a silent one.
            silence < LEADER_FRESH || (ctx.liveness.alive(l) && silence < LEADER_SILENCE)
        }
        _ => false,
    };
    {
        let mut e = g.election.lock().unwrap_or_else(|e| e.into_inner());
        if usable || !voters.contains(&me) || ctx.liveness.uptime() < STARTUP_GRACE {
            e.leaderless_since = None;
            return;
        }
        let since = *e.leaderless_since.get_or_insert(now);
        let due = since + RANK_DELAY * rank(ctx, g, &voters) as u32;
        if now < due || e.next_attempt.is_some_and(|t| now < t) {
            return;
        }
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..1000));
        e.next_attempt = Some(now + Duration::from_millis(1500) + jitter);
    }
    tracing::debug!(group = %g.id, leader = ?m.current_leader, "starting an election");
    let _ = g.raft.trigger().elect().await;
}
