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

use crate::cluster::group::Group;
use crate::cluster::Grid;
use crate::raft::{GroupId, NodeId};
use crate::transport::{Lane, PeerRequest, PeerResponse};

/// A follower that heard nothing from its leader for this long looks for a new one.
pub const LEADER_SILENCE: Duration = Duration::from_secs(4);
/// Appends this recent make a leader usable whatever its pings say (heartbeats come every
/// second).
const LEADER_FRESH: Duration = Duration::from_millis(2500);
/// No elections for silent leaders until the member has been up this long (leaders need a
/// heartbeat sweep to find a restarted member).
const STARTUP_GRACE: Duration = Duration::from_secs(3);
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

    /// Whether `id` answered recently.
    pub fn alive(&self, id: NodeId) -> bool {
        self.last_ok
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|(t, _)| t.elapsed() < self.down_after)
    }
}

/// Runs the pinger and the timer loop until shutdown.
pub async fn run(grid: Arc<Grid>) {
    tokio::join!(pinger(grid.clone()), timers(grid));
}

async fn pinger(grid: Arc<Grid>) {
    let shutdown = grid.shutdown_token().clone();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let meta = grid.meta_state();
        // Registered members, and initial members not registered yet.
        let mut peers: HashMap<NodeId, String> = grid
            .config
            .seeds()
            .into_iter()
            .map(|s| (s.id, s.addr))
            .collect();
        peers.extend(meta.members.values().map(|m| (m.id, m.addr.clone())));
        let pings = peers
            .into_iter()
            .filter(|(id, _)| *id != grid.id)
            .map(|(id, addr)| {
                let grid = grid.clone();
                async move {
                    let req = PeerRequest::Ping { from: grid.id };
                    if let Ok(PeerResponse::Pong {
                        id: answered,
                        bootstrapped,
                    }) = grid
                        .transport
                        .call(&addr, Lane::Control, req, Duration::from_secs(1))
                        .await
                    {
                        if answered == id {
                            grid.liveness.record(id, bootstrapped);
                        }
                    }
                }
            });
        futures::future::join_all(pings).await;
    }
}

async fn timers(grid: Arc<Grid>) {
    let shutdown = grid.shutdown_token().clone();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let groups = grid.groups();
        if n % 4 == 0 {
            for g in groups
                .iter()
                .filter(|g| g.is_leader() && g.handoff().is_none())
            {
                let _ = g.raft.trigger().heartbeat().await;
            }
        }
        for g in &groups {
            maybe_elect(&grid, g).await;
        }
    }
}

/// This member's position in the order in which replicas of `g` try to become leader.
fn rank(grid: &Grid, g: &Group, voters: &[NodeId]) -> usize {
    let preferred: Vec<NodeId> = match g.id {
        GroupId::Partition(p) => grid.meta_state().replicas(p).to_vec(),
        GroupId::Meta => voters.to_vec(),
    };
    preferred
        .iter()
        .position(|id| *id == grid.id)
        .unwrap_or(preferred.len())
}

async fn maybe_elect(grid: &Grid, g: &Group) {
    let m = g.raft.metrics().borrow().clone();
    let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
    let now = Instant::now();
    let usable = match m.current_leader {
        _ if m.state == ServerState::Leader => true,
        Some(l) if l != grid.id => {
            let contact = g
                .last_leader_contact
                .load(std::sync::atomic::Ordering::Relaxed);
            let silence = Duration::from_millis(grid.clock_ms().saturating_sub(contact));
            // Recent appends prove the leader works even if a ping was slow; a leader whose
            // member stopped answering pings is given up sooner than a silent one.
            silence < LEADER_FRESH || (grid.liveness.alive(l) && silence < LEADER_SILENCE)
        }
        _ => false,
    };
    {
        let mut e = g.election.lock().unwrap_or_else(|e| e.into_inner());
        if usable || !voters.contains(&grid.id) || grid.uptime() < STARTUP_GRACE {
            e.leaderless_since = None;
            return;
        }
        let since = *e.leaderless_since.get_or_insert(now);
        let due = since + RANK_DELAY * rank(grid, g, &voters) as u32;
        if now < due || e.next_attempt.is_some_and(|t| now < t) {
            return;
        }
        let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..1000));
        e.next_attempt = Some(now + Duration::from_millis(1500) + jitter);
    }
    tracing::debug!(group = %g.id, leader = ?m.current_leader, "starting an election");
    let _ = g.raft.trigger().elect().await;
}
