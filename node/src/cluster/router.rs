//! The partition router: sends a request for a partition to its leader (this member, or
//! another through the transport), follows redirects, retries other replicas while nothing
//! was applied, and remembers leaders. Peers' forwarded requests end in [`Router::local`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devicegrid_proto::{ErrorCode, LeaderHint, Routing};

use crate::cluster::group::{Chunks, Group};
use crate::cluster::groups::Groups;
use crate::cluster::liveness::Liveness;
use crate::cluster::{now_ms, partition_of};
use crate::raft::{GroupId, NodeId};
use crate::storage::Overlay;
use crate::structures::map::{self, MapOp, OpOutcome, Record};
use crate::structures::meta::MetaState;
use crate::transport::{Lane, PeerRequest, PeerResponse, Transport, TransportError};
use crate::{Error, Result};

/// What to do on a partition.
#[derive(Clone)]
pub enum Call {
    /// Map operations, applied in order in one entry.
    Write(Vec<MapOp>),
    /// Reads.
    Read {
        /// `(map, key)` pairs.
        keys: Vec<(String, String)>,
        /// From this replica, without a leadership check.
        stale: bool,
    },
}

impl Call {
    /// The error for a call that got no answer: a write may have been applied, a read
    /// changed nothing.
    fn no_answer(&self, group: GroupId, message: String) -> Error {
        match self {
            Call::Write(_) => Error::OutcomeUnknown { group, message },
            Call::Read { .. } => Error::Unavailable { group, message },
        }
    }
}

/// What a [`Call`] returned.
pub enum Answer {
    /// Outcomes of a write, one per operation.
    Written(Vec<OpOutcome>),
    /// Records of a read, in key order.
    Read(Vec<Option<Record>>),
}

impl Answer {
    /// The outcomes of a write.
    pub fn written(self) -> Result<Vec<OpOutcome>> {
        match self {
            Answer::Written(o) => Ok(o),
            Answer::Read(_) => Err(Error::Internal("read answer to a write".into())),
        }
    }

    /// The records of a read.
    pub fn records(self) -> Result<Vec<Option<Record>>> {
        match self {
            Answer::Read(r) => Ok(r),
            Answer::Written(_) => Err(Error::Internal("write answer to a read".into())),
        }
    }
}

/// Routes partition calls. One per member.
pub struct Router {
    id: NodeId,
    request_timeout: Duration,
    groups: Arc<Groups>,
    liveness: Arc<Liveness>,
    transport: Arc<Transport>,
    leader_hints: Mutex<HashMap<u32, NodeId>>,
}

impl Router {
    /// A router for member `groups.id()`; a request may take `request_timeout`.
    pub fn new(
        groups: Arc<Groups>,
        liveness: Arc<Liveness>,
        transport: Arc<Transport>,
        request_timeout: Duration,
    ) -> Self {
        Router {
            id: groups.id(),
            request_timeout,
            groups,
            liveness,
            transport,
            leader_hints: Mutex::new(HashMap::new()),
        }
    }

    /// The partition of `key` in this grid, or `Unavailable` before bootstrap.
    pub fn partition_for(&self, key: &str) -> Result<u32> {
        let meta = self.groups.meta_state();
        if !meta.bootstrapped() {
            return Err(Error::Unavailable {
                group: GroupId::Meta,
                message: "the grid is not bootstrapped yet".into(),
            });
        }
        Ok(partition_of(key, meta.partition_count))
    }

    /// Applies `ops` (all on partition `p`) through the partition leader.
    pub async fn write(&self, p: u32, ops: Vec<MapOp>) -> Result<Vec<OpOutcome>> {
        self.call_partition(p, Call::Write(ops)).await?.written()
    }

    /// Reads `keys` (all on partition `p`); linearizable unless `stale`.
    pub async fn read(
        &self,
        p: u32,
        keys: Vec<(String, String)>,
        stale: bool,
    ) -> Result<Vec<Option<Record>>> {
        self.call_partition(p, Call::Read { keys, stale })
            .await?
            .records()
    }

    /// Where partition `p` stands as this member knows it, for error bodies.
    fn routing(&self, meta: &MetaState, p: u32) -> Routing {
        let leader = self
            .groups
            .get(GroupId::Partition(p))
            .and_then(|g| g.current_leader())
            .or_else(|| self.hint(p));
        Routing {
            partition: Some(p),
            leader: leader.map(|id| LeaderHint {
                id,
                address: meta.client_addr(id).map(str::to_string),
            }),
            partition_version: Some(meta.version(p)),
            table_version: Some(meta.epoch),
        }
    }

    fn hint(&self, p: u32) -> Option<NodeId> {
        self.leader_hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
            .copied()
    }

    async fn call_partition(&self, p: u32, call: Call) -> Result<Answer> {
        let meta = self.groups.meta_state();
        self.route(&meta, p, call)
            .await
            .map_err(|e| e.routed(self.routing(&meta, p)))
    }

    fn first_target(&self, p: u32, call: &Call, replicas: &[NodeId]) -> NodeId {
        if let Some(g) = self.groups.get(GroupId::Partition(p)) {
            if matches!(call, Call::Read { stale: true, .. }) {
                return self.id;
            }
            if let Some(l) = g.current_leader() {
                return l;
            }
        }
        if let Some(l) = self.hint(p) {
            return l;
        }
        replicas.first().copied().unwrap_or(self.id)
    }

    async fn route(&self, meta: &MetaState, p: u32, call: Call) -> Result<Answer> {
        let group = GroupId::Partition(p);
        let replicas = meta.replicas(p).to_vec();
        if replicas.is_empty() {
            return Err(Error::Unavailable {
                group,
                message: "the grid is not bootstrapped yet".into(),
            });
        }
        let deadline = Instant::now() + self.request_timeout;
        let mut target = self.first_target(p, &call, &replicas);
        let mut backoff = Duration::from_millis(20);
        let mut last_error = String::from("no attempt");
        let mut redirects = 0;
        while Instant::now() < deadline {
            let reachable = |id: &NodeId| *id == self.id || self.liveness.alive(*id);
            if self.liveness.peers_known() && !replicas.iter().any(reachable) {
                last_error = format!("no replica answers pings (replicas {replicas:?})");
                break;
            }
            let result = if target == self.id {
                self.bounded_local_call(p, &call, deadline).await
            } else {
                self.remote_call(meta, target, p, &call, deadline).await
            };
            let next = match result {
                Ok(answer) => {
                    if !matches!(call, Call::Read { stale: true, .. }) {
                        self.leader_hints
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(p, target);
                    }
                    return Ok(answer);
                }
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) if l != target && redirects < 3 => {
                    redirects += 1;
                    target = l;
                    continue;
                }
                Err(Error::NotLeader { leader, .. }) => {
                    last_error = format!("member {target} is not the leader (leader: {leader:?})");
                    leader.filter(|l| *l != target)
                }
                Err(e @ Error::NotDelivered { .. }) => {
                    last_error = e.to_string();
                    None
                }
                Err(e) => return Err(e),
            };
            redirects = 0;
            target = next.unwrap_or_else(|| {
                let i = replicas
                    .iter()
                    .position(|r| *r == target)
                    .map_or(0, |i| i + 1);
                replicas[i % replicas.len()]
            });
            tokio::time::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())))
                .await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
        Err(Error::Unavailable {
            group,
            message: format!(
                "no leader answered within {} ms; last: {last_error}",
                self.request_timeout.as_millis()
            ),
        })
    }

    async fn local_call(&self, p: u32, call: &Call) -> Result<Answer> {
        let group_id = GroupId::Partition(p);
        let Some(group) = self.groups.get(group_id) else {
            return Err(Error::NotDelivered {
                group: group_id,
                member: self.id,
                message: "it does not host the group".into(),
            });
        };
        // A stale read comes from a voter: a replica still catching up as a learner (or about
        // to be deleted) might not have data that has long existed.
        if matches!(call, Call::Read { stale: true, .. })
            && !group
                .raft
                .metrics()
                .borrow()
                .membership_config
                .voter_ids()
                .any(|v| v == self.id)
        {
            return Err(Error::NotDelivered {
                group: group_id,
                member: self.id,
                message: "its replica is not a voter".into(),
            });
        }
        // A replica being added knows no voters yet: another replica answers.
        if group
            .raft
            .metrics()
            .borrow()
            .membership_config
            .voter_ids()
            .next()
            .is_none()
        {
            return Err(Error::NotDelivered {
                group: group_id,
                member: self.id,
                message: "its replica has not received the group's membership yet".into(),
            });
        }
        // Without a majority of its voters no replica can commit or confirm leadership;
        // refusing now tells the client, for certain, that nothing was written.
        if !matches!(call, Call::Read { stale: true, .. }) {
            if let Some(down) = self.quorum_down(&group) {
                return Err(Error::Unavailable {
                    group: group_id,
                    message: format!("no quorum: members {down:?} do not answer"),
                });
            }
        }
        match call {
            Call::Write(ops) => {
                let chunks = Chunks::of(ops.clone());
                let space = &self.groups.storage().space;
                if !space.admit(chunks.bytes() as u64) {
                    return Err(Error::Refused {
                        code: ErrorCode::InsufficientStorage,
                        message: format!(
                            "member {} has {} bytes of disk left (keeps {} free): nothing \
                             written",
                            self.id,
                            space.free(),
                            space.reserve()
                        ),
                    });
                }
                Ok(Answer::Written(group.propose_chunks(chunks).await?))
            }
            Call::Read { keys, stale } => {
                if !stale {
                    group.read_barrier().await?;
                }
                Ok(Answer::Read(self.read_local(p, keys)?))
            }
        }
    }

    /// Reads from this member's replica of `p`, without any leadership check.
    fn read_local(&self, p: u32, keys: &[(String, String)]) -> Result<Vec<Option<Record>>> {
        let view = Overlay::new(
            &self.groups.storage().state_machine,
            GroupId::Partition(p).to_key(),
        );
        let now = now_ms();
        keys.iter()
            .map(|(m, k)| map::read(&view, m, k, now))
            .collect()
    }

    async fn remote_call(
        &self,
        meta: &MetaState,
        target: NodeId,
        p: u32,
        call: &Call,
        deadline: Instant,
    ) -> Result<Answer> {
        let group = GroupId::Partition(p);
        if self.liveness.peers_known() && !self.liveness.alive(target) {
            return Err(Error::NotDelivered {
                group,
                member: target,
                message: "it does not answer pings".into(),
            });
        }
        let Some(addr) = meta.addr(target) else {
            return Err(Error::NotDelivered {
                group,
                member: target,
                message: "it is not a member".into(),
            });
        };
        let req = match call {
            Call::Write(ops) => PeerRequest::Write {
                group,
                ops: ops.clone(),
            },
            Call::Read { keys, stale } => PeerRequest::Read {
                group,
                keys: keys.clone(),
                stale: *stale,
            },
        };
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.transport.call(addr, Lane::Client, req, timeout).await {
            Ok(PeerResponse::Write(r)) => r
                .map(Answer::Written)
                .map_err(|e| Error::from_wire(e, group)),
            Ok(PeerResponse::Read(r)) => {
                r.map(Answer::Read).map_err(|e| Error::from_wire(e, group))
            }
            Ok(other) => Err(Error::Internal(format!(
                "member {target} answered {other:?}"
            ))),
            Err(TransportError::NotSent(message)) => Err(Error::NotDelivered {
                group,
                member: target,
                message,
            }),
            Err(TransportError::Overloaded(message)) => Err(Error::Overloaded { group, message }),
            Err(e) => Err(call.no_answer(group, format!("member {target}: {e}"))),
        }
    }

    /// [`Self::local_call`] that gives up at `deadline`.
    async fn bounded_local_call(&self, p: u32, call: &Call, deadline: Instant) -> Result<Answer> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.local_call(p, call)).await {
            Ok(r) => r,
            Err(_) => {
                Err(call.no_answer(GroupId::Partition(p), format!("no commit within {left:?}")))
            }
        }
    }

    /// How long a forwarded operation may take here.
    fn peer_deadline(&self) -> Instant {
        Instant::now() + self.request_timeout
    }

    /// Serves a request a peer forwarded to this member as the partition's leader.
    pub async fn local(&self, p: u32, call: Call) -> Result<Answer> {
        self.bounded_local_call(p, &call, self.peer_deadline())
            .await
    }

    /// When a majority of `g`'s voters does not answer pings: the voters that are down.
    fn quorum_down(&self, g: &Group) -> Option<Vec<NodeId>> {
        if !self.liveness.peers_known() {
            return None;
        }
        let m = g.raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.voter_ids().collect();
        let down: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| *v != self.id && !self.liveness.alive(*v))
            .collect();
        ((voters.len() - down.len()) * 2 <= voters.len()).then_some(down)
    }
}
