//! What this member reports of itself ([`MemberReport`]) and the grid views assembled from
//! every member's report (`GET /v1/cluster`, `/v1/members`). The types are the wire
//! contract's; here they are filled in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devicegrid_proto::views::{
    BalanceView, ClusterView, MemberReport, MemberView, MoveProgress, MoveView, PartitionsView,
};

use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::now_ms;
use crate::raft::{GroupId, NodeId};
use crate::structures::meta::MemberState;
use crate::transport::{Lane, PeerRequest, PeerResponse, Transport};

/// Moves and handoffs this member carries out as partition leader, as the mover reports
/// them.
#[derive(Default)]
pub struct MoveBoard(Mutex<BTreeMap<u32, MoveProgress>>);

impl MoveBoard {
    /// Records (or clears) progress on a move of partition `p`.
    pub fn set(&self, p: u32, progress: Option<MoveProgress>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match progress {
            Some(x) => m.insert(p, x),
            None => m.remove(&p),
        };
    }

    fn all(&self) -> Vec<MoveProgress> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Builds reports and views.
pub struct Views {
    /// Grid name.
    pub cluster_name: String,
    /// A move running longer than this is stalled (ms).
    pub move_stalled_after_ms: u64,
    /// Hosted groups and the metadata state.
    pub groups: Arc<Groups>,
    /// Which peers answer.
    pub liveness: Arc<Liveness>,
    /// To ask the others.
    pub transport: Arc<Transport>,
    /// This member's moves.
    pub moves: Arc<MoveBoard>,
}

impl Views {
    /// This member's report of itself.
    pub fn report(&self) -> MemberReport {
        let meta = self.groups.meta_state();
        let mut s = MemberReport {
            id: self.groups.id(),
            ..Default::default()
        };
        s.meta_leader = self.groups.meta_group().is_leader();
        let meta_ok = meta.bootstrapped()
            && self
                .liveness
                .usable_leader(self.groups.id(), self.groups.meta_group());
        for p in 0..meta.partition_count {
            if !meta.replicas(p).contains(&self.groups.id()) {
                continue;
            }
            match self.groups.get(GroupId::Partition(p)) {
                Some(g) => {
                    s.held.push(p);
                    if g.is_leader() {
                        s.led.push(p);
                    }
                    if !self.liveness.usable_leader(self.groups.id(), &g) {
                        s.leaderless.push(p);
                    }
                }
                None => s.leaderless.push(p),
            }
        }
        s.ready = meta_ok && s.leaderless.is_empty();
        s.moves = self.moves.all();
        s
    }

    /// The grid as this member can see it: every member's own report.
    pub async fn cluster_view(&self) -> ClusterView {
        let meta = self.groups.meta_state();
        let calls = meta.members.values().map(|m| async move {
            if m.id == self.groups.id() {
                return (m.id, Some(self.report()));
            }
            match self
                .transport
                .call(
                    &m.addr,
                    Lane::Control,
                    PeerRequest::Status,
                    Duration::from_millis(1500),
                )
                .await
            {
                Ok(PeerResponse::Status(s)) => (m.id, Some(s)),
                _ => (m.id, None),
            }
        });
        let reports: BTreeMap<NodeId, Option<MemberReport>> =
            futures::future::join_all(calls).await.into_iter().collect();
        let mut members = Vec::new();
        for m in meta.members.values() {
            let report = reports.get(&m.id).cloned().flatten();
            members.push(MemberView {
                id: m.id,
                address: m.client_addr.clone().unwrap_or_else(|| m.addr.clone()),
                peer_address: Some(m.addr.clone()),
                zone: m.zone.clone(),
                state: m.state,
                reachable: report.is_some(),
                ready: report.as_ref().is_some_and(|r| r.ready),
                partitions_led: report.as_ref().map_or(0, |r| r.led.len()),
                partitions_held: meta.held_by(m.id).count(),
            });
        }
        let mut led_somewhere = vec![false; meta.partition_count as usize];
        for r in reports.values().flatten() {
            for p in &r.led {
                if let Some(x) = led_somewhere.get_mut(*p as usize) {
                    *x = true;
                }
            }
        }
        let mut under = 0;
        for p in 0..meta.partition_count {
            let replicas = meta.replicas(p);
            let all_up = replicas.iter().all(|id| {
                reports
                    .get(id)
                    .cloned()
                    .flatten()
                    .is_some_and(|r| r.held.contains(&p))
            });
            if !all_up || (replicas.len() as u32) < meta.replication_factor {
                under += 1;
            }
        }
        let progress: BTreeMap<u32, MoveProgress> = reports
            .values()
            .flatten()
            .flat_map(|r| r.moves.iter().cloned())
            .map(|m| (m.partition, m))
            .collect();
        let now = now_ms();
        let moves: Vec<MoveView> = meta
            .moves
            .iter()
            .map(|(p, m)| {
                let age_ms = now.saturating_sub(m.started_ms);
                MoveView {
                    partition: *p,
                    from: m.from,
                    to: m.to,
                    reason: m.reason,
                    age_ms,
                    phase: progress.get(p).map(|x| x.phase),
                    lag: progress.get(p).map(|x| x.lag),
                    stalled: age_ms > self.move_stalled_after_ms,
                }
            })
            .collect();
        let active: Vec<&MemberView> = members
            .iter()
            .filter(|m| m.state == MemberState::Active)
            .collect();
        let spread = |f: &dyn Fn(&MemberView) -> usize| {
            let counts = active.iter().map(|m| f(m));
            counts.clone().max().unwrap_or(0) - counts.min().unwrap_or(0)
        };
        let replicas_spread = spread(&|m| m.partitions_held);
        let leaders_spread = spread(&|m| m.partitions_led);
        let balanced = meta.bootstrapped()
            && moves.is_empty()
            && under == 0
            && replicas_spread <= 1
            && leaders_spread <= 1
            && active.iter().all(|m| m.reachable)
            && meta
                .members
                .values()
                .all(|m| matches!(m.state, MemberState::Active | MemberState::Decommissioned));
        ClusterView {
            cluster_name: self.cluster_name.clone(),
            answered_by: self.groups.id(),
            bootstrapped: meta.bootstrapped(),
            epoch: meta.epoch,
            members,
            partitions: PartitionsView {
                count: meta.partition_count,
                replication_factor: meta.replication_factor,
                under_replicated: under,
                without_leader: led_somewhere.iter().filter(|x| !**x).count(),
            },
            balance: BalanceView {
                balanced,
                moves_in_progress: moves.len(),
                moves_stalled: moves.iter().filter(|m| m.stalled).count(),
                moves_finished: meta.moves_finished,
                replicas_spread,
                leaders_spread,
            },
            moves,
        }
    }

    /// One member as `GET /v1/members/{id}` shows it, or `None` if unknown.
    pub async fn member_view(&self, id: NodeId) -> Option<MemberView> {
        let view = self.cluster_view().await;
        view.members.into_iter().find(|m| m.id == id)
    }
}
