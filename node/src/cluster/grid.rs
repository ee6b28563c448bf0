//! The [`Grid`]: this member's groups, the routing of requests to partition leaders, and the
//! handling of peer requests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::group::Group;
use crate::cluster::liveness::Liveness;
use crate::cluster::meta::{
    MemberState, MetaCall, MetaCommand, MetaOutcome, MetaReply, MetaState, MoveReason,
};
use crate::cluster::{bootstrap, driver, expiry, liveness, mover, now_ms, partition_of};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::raft::{
    group_config, GroupId, LogStore, NetworkFactory, NodeId, Raft, Request, Response,
    StateMachineStore,
};
use crate::storage::{Overlay, Storage};
use crate::structures::map::{self, MapOp, OpOutcome, Record};
use crate::transport::{
    Lane, MemberStatus, MoveProgress, PeerRequest, PeerResponse, RaftRpc, Transport,
    TransportError, WireError,
};
use crate::{Error, Result};

/// A member of the grid.
pub struct Grid {
    /// This member's id.
    pub id: NodeId,
    /// Its configuration.
    pub config: Config,
    /// Its sled database.
    pub storage: Storage,
    /// The shared peer transport.
    pub transport: Arc<Transport>,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Which peers answer pings.
    pub liveness: Liveness,
    raft_config: Arc<openraft::Config>,
    meta: Arc<Group>,
    meta_rx: watch::Receiver<Arc<MetaState>>,
    partitions: RwLock<HashMap<u32, Arc<Group>>>,
    leader_hints: Mutex<HashMap<u32, NodeId>>,
    progress: Mutex<BTreeMap<u32, MoveProgress>>,
    started: Instant,
    shutdown: CancellationToken,
    transport_stop: CancellationToken,
    tasks: TaskTracker,
}

/// What to do on a partition.
#[derive(Clone)]
enum Call {
    Write(Vec<MapOp>),
    Read {
        keys: Vec<(String, String)>,
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

enum Answer {
    Written(Vec<OpOutcome>),
    Read(Vec<Option<Record>>),
}

impl Answer {
    fn written(self) -> Result<Vec<OpOutcome>> {
        match self {
            Answer::Written(o) => Ok(o),
            Answer::Read(_) => Err(Error::Internal("read answer to a write".into())),
        }
    }

    fn records(self) -> Result<Vec<Option<Record>>> {
        match self {
            Answer::Read(r) => Ok(r),
            Answer::Written(_) => Err(Error::Internal("write answer to a read".into())),
        }
    }
}

impl Grid {
    /// Opens storage, starts the metadata group and the background tasks. The HTTP endpoint
    /// is served by the caller ([`crate::api::serve`]).
    pub async fn start(
        config: Config,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Grid>> {
        config
            .validate()
            .map_err(|e| Error::bad_request("invalid_config", e))?;
        bootstrap::check_identity(&config)?;
        let storage = Storage::open(&config.data_dir)?;
        let raft_config = group_config(&config.cluster_name, config.snapshot_after_logs)
            .map_err(|e| Error::Internal(e.to_string()))?;
        // The transport outlives the background tasks: Raft groups still talk while they
        // shut down, and it stops last.
        let transport_stop = CancellationToken::new();
        let transport = Transport::new(transport_stop.clone(), config.peer_source_ip);
        let (meta_tx, meta_rx) = watch::channel(Arc::new(MetaState::default()));
        let meta = open_group(
            &config,
            &storage,
            &raft_config,
            &transport,
            GroupId::Meta,
            Some(meta_tx),
            &shutdown,
        )
        .await?;
        let grid = Arc::new(Grid {
            id: config.node_id,
            liveness: Liveness::new(Duration::from_millis(config.member_down_after_ms)),
            config,
            storage,
            transport,
            metrics,
            raft_config,
            meta,
            meta_rx,
            partitions: RwLock::new(HashMap::new()),
            leader_hints: Mutex::new(HashMap::new()),
            progress: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            shutdown,
            transport_stop,
            tasks: TaskTracker::new(),
        });
        grid.tasks.spawn(bootstrap::run(grid.clone()));
        grid.tasks.spawn(liveness::run(grid.clone()));
        grid.tasks.spawn(expiry::run(grid.clone()));
        grid.tasks.spawn(driver::run(grid.clone()));
        grid.tasks.spawn(mover::run(grid.clone()));
        Ok(grid)
    }

    /// Stops background tasks and every Raft group, then flushes storage.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        for g in self.groups() {
            let _ = g.raft.shutdown().await;
        }
        self.transport_stop.cancel();
        let _ = self.storage.flusher.flush().await;
    }

    /// Cancelled when the member stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Time since this member started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The latest applied metadata state.
    pub fn meta_state(&self) -> Arc<MetaState> {
        self.meta_rx.borrow().clone()
    }

    /// A watch of the metadata state.
    pub fn meta_watch(&self) -> watch::Receiver<Arc<MetaState>> {
        self.meta_rx.clone()
    }

    /// The metadata group.
    pub fn meta_group(&self) -> &Arc<Group> {
        &self.meta
    }

    /// A hosted group.
    pub fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        match id {
            GroupId::Meta => Some(self.meta.clone()),
            GroupId::Partition(p) => self
                .partitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&p)
                .cloned(),
        }
    }

    /// Every hosted group, the metadata group first.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        let parts = self.partitions.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Arc<Group>> = parts.values().cloned().collect();
        v.sort_by_key(|g| g.id);
        v.insert(0, self.meta.clone());
        v
    }

    /// Opens (or returns) the group of partition `p` on this member.
    pub(crate) async fn host_partition(&self, p: u32) -> Result<(Arc<Group>, bool)> {
        if let Some(g) = self.group(GroupId::Partition(p)) {
            return Ok((g, false));
        }
        let g = open_group(
            &self.config,
            &self.storage,
            &self.raft_config,
            &self.transport,
            GroupId::Partition(p),
            None,
            &self.shutdown,
        )
        .await?;
        let mut parts = self.partitions.write().unwrap_or_else(|e| e.into_inner());
        Ok((parts.entry(p).or_insert(g).clone(), true))
    }

    /// Stops this member's replica of partition `p` and deletes its data (the replica was
    /// moved away). Only the hosting loop calls it, so it never races an open of `p`.
    pub(crate) async fn unhost_partition(&self, p: u32) -> Result<()> {
        let removed = self
            .partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p);
        if let Some(g) = removed {
            let stopped = tokio::time::timeout(Duration::from_secs(10), g.raft.shutdown()).await;
            if stopped.is_err() {
                tracing::warn!(partition = p, "replica did not stop within 10 s");
            }
        }
        self.storage
            .drop_group(GroupId::Partition(p).to_key())
            .await?;
        tracing::info!(partition = p, "replica moved away; its data is deleted");
        Ok(())
    }

    /// Runs `task` in this member's shutdown tree: it is dropped when the member stops.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Records (or clears) this member's progress on a move of partition `p`.
    pub(crate) fn set_progress(&self, p: u32, progress: Option<MoveProgress>) {
        let mut m = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match progress {
            Some(x) => m.insert(p, x),
            None => m.remove(&p),
        };
    }

    /// Proposes a metadata command through the metadata leader.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> Result<MetaOutcome> {
        match self.call_meta(MetaCall::Propose(cmd)).await? {
            MetaReply::Outcome(o) => Ok(o),
            other => Err(Error::Internal(format!(
                "metadata leader answered {other:?}"
            ))),
        }
    }

    /// Partition `p`'s version in the metadata group's latest committed state: a
    /// linearizable read through the metadata leader.
    pub async fn confirmed_version(&self, p: u32) -> Result<u64> {
        match self.call_meta(MetaCall::Version(p)).await? {
            MetaReply::Version(v) => Ok(v),
            other => Err(Error::Internal(format!(
                "metadata leader answered {other:?}"
            ))),
        }
    }

    /// Sends `call` to the metadata leader: this member, the leader it knows of, or else
    /// any initial member (which passes it on).
    async fn call_meta(&self, call: MetaCall) -> Result<MetaReply> {
        if self.meta.is_leader() {
            return self.serve_meta(call).await;
        }
        let mut addrs: Vec<String> = self.meta_leader_addr().into_iter().collect();
        for seed in self.config.seeds() {
            if seed.id != self.id && !addrs.contains(&seed.addr) {
                addrs.push(seed.addr);
            }
        }
        let mut last = String::from("no member to ask");
        for addr in addrs {
            match self.send_meta(&addr, call.clone(), false).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e @ (WireError::Other(_) | WireError::Refused { .. }))) => {
                    return Err(e.into_error(GroupId::Meta))
                }
                Ok(Err(e)) => last = format!("{addr}: {e:?}"),
                Err(message) => last = message,
            }
        }
        Err(Error::Unavailable {
            group: GroupId::Meta,
            message: last,
        })
    }

    /// Address of the metadata leader this member knows of (not itself).
    fn meta_leader_addr(&self) -> Option<String> {
        let m = self.meta.raft.metrics().borrow().clone();
        let leader = m.current_leader.filter(|l| *l != self.id)?;
        let from_state = self.meta_state().addr(leader).map(str::to_string);
        from_state.or_else(|| {
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        })
    }

    /// Serves `call` on this member, the metadata leader.
    async fn serve_meta(&self, call: MetaCall) -> Result<MetaReply> {
        let cmd = match call {
            MetaCall::Version(p) => {
                self.meta.read_barrier().await?;
                return Ok(MetaReply::Version(self.meta_state().version(p)));
            }
            MetaCall::Propose(cmd) => cmd,
        };
        let write = self.meta.raft.client_write(Request::Meta(cmd));
        match tokio::time::timeout(META_CALL_TIMEOUT, write).await {
            Ok(Ok(resp)) => match resp.data {
                Response::Meta(outcome) => Ok(MetaReply::Outcome(outcome)),
                other => Err(Error::Internal(format!(
                    "metadata group answered {other:?}"
                ))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Error::NotLeader {
                    group: GroupId::Meta,
                    leader: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(Error::Unavailable {
                group: GroupId::Meta,
                message: e.to_string(),
            }),
            Err(_) => Err(Error::Unavailable {
                group: GroupId::Meta,
                message: format!("not committed within {META_CALL_TIMEOUT:?}"),
            }),
        }
    }

    async fn handle_meta(&self, call: MetaCall, forwarded: bool) -> Result<MetaReply> {
        if self.meta.is_leader() {
            return self.serve_meta(call).await;
        }
        let leader = self.meta.current_leader();
        let Some(addr) = self.meta_leader_addr().filter(|_| !forwarded) else {
            return Err(Error::NotLeader {
                group: GroupId::Meta,
                leader,
            });
        };
        match self.send_meta(&addr, call, true).await {
            Ok(reply) => reply.map_err(|e| e.into_error(GroupId::Meta)),
            Err(message) => Err(Error::Unavailable {
                group: GroupId::Meta,
                message,
            }),
        }
    }

    /// Sends `call` to the member at `addr`: its answer, or why there was none.
    async fn send_meta(
        &self,
        addr: &str,
        call: MetaCall,
        forwarded: bool,
    ) -> std::result::Result<std::result::Result<MetaReply, WireError>, String> {
        let req = PeerRequest::Meta { call, forwarded };
        match self
            .transport
            .call(addr, Lane::Control, req, META_CALL_TIMEOUT)
            .await
        {
            Ok(PeerResponse::Meta(reply)) => Ok(reply),
            Ok(other) => Err(format!("{addr} answered {other:?}")),
            Err(e) => Err(format!("{addr}: {e}")),
        }
    }

    /// Milliseconds on this member's monotonic clock (for contact times).
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// The partition of `key` in this grid, or `Unavailable` before bootstrap.
    pub fn partition_for(&self, key: &str) -> Result<u32> {
        let meta = self.meta_state();
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

    fn first_target(&self, p: u32, call: &Call, replicas: &[NodeId]) -> NodeId {
        if let Some(g) = self.group(GroupId::Partition(p)) {
            if matches!(call, Call::Read { stale: true, .. }) {
                return self.id;
            }
            if let Some(l) = g.current_leader() {
                return l;
            }
        }
        if let Some(l) = self
            .leader_hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&p)
        {
            return *l;
        }
        replicas.first().copied().unwrap_or(self.id)
    }

    async fn call_partition(&self, p: u32, call: Call) -> Result<Answer> {
        let group = GroupId::Partition(p);
        let meta = self.meta_state();
        let replicas = meta.replicas(p).to_vec();
        if replicas.is_empty() {
            return Err(Error::Unavailable {
                group,
                message: "the grid is not bootstrapped yet".into(),
            });
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.request_timeout_ms);
        let mut target = self.first_target(p, &call, &replicas);
        let mut backoff = Duration::from_millis(20);
        let mut last_error = String::from("no attempt");
        let mut redirects = 0;
        while Instant::now() < deadline {
            let reachable = |id: &NodeId| *id == self.id || self.liveness.alive(*id);
            if self.uptime() > PEERS_KNOWN_AFTER && !replicas.iter().any(reachable) {
                last_error = format!("no replica answers pings (replicas {replicas:?})");
                break;
            }
            let result = if target == self.id {
                self.bounded_local_call(p, &call, deadline).await
            } else {
                self.remote_call(&meta, target, p, &call, deadline).await
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
                self.config.request_timeout_ms
            ),
        })
    }

    async fn local_call(&self, p: u32, call: &Call) -> Result<Answer> {
        let group_id = GroupId::Partition(p);
        let Some(group) = self.group(group_id) else {
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
            Call::Write(ops) => Ok(Answer::Written(group.propose(ops.clone()).await?)),
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
        let view = Overlay::new(&self.storage.state_machine, GroupId::Partition(p).to_key());
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
        if self.uptime() > PEERS_KNOWN_AFTER && !self.liveness.alive(target) {
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
            Ok(PeerResponse::Write(r)) => r.map(Answer::Written).map_err(|e| e.into_error(group)),
            Ok(PeerResponse::Read(r)) => r.map(Answer::Read).map_err(|e| e.into_error(group)),
            Ok(other) => Err(Error::Internal(format!(
                "member {target} answered {other:?}"
            ))),
            Err(TransportError::NotSent(message)) => Err(Error::NotDelivered {
                group,
                member: target,
                message,
            }),
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
        Instant::now() + Duration::from_millis(self.config.request_timeout_ms)
    }

    /// Serves one request from a peer.
    pub async fn handle_peer(&self, req: PeerRequest) -> PeerResponse {
        match req {
            PeerRequest::Ping { .. } => PeerResponse::Pong {
                id: self.id,
                bootstrapped: self.meta_state().bootstrapped(),
            },
            PeerRequest::Status => PeerResponse::Status(self.status()),
            PeerRequest::Meta { call, forwarded } => PeerResponse::Meta(
                self.handle_meta(call, forwarded)
                    .await
                    .map_err(WireError::from_error),
            ),
            PeerRequest::Elect { group } => match self.group(group) {
                Some(g) => {
                    self.spawn(mover::campaign(g));
                    PeerResponse::Accepted
                }
                None => PeerResponse::NoGroup,
            },
            PeerRequest::Raft { group, rpc } => {
                let Some(g) = self.group(group) else {
                    return PeerResponse::NoGroup;
                };
                match rpc {
                    RaftRpc::Append(r) => {
                        if r.vote.is_committed() {
                            g.touch_leader_contact(self.clock_ms());
                        }
                        PeerResponse::Append(g.raft.append_entries(r).await)
                    }
                    RaftRpc::Vote(r) => PeerResponse::Vote(g.raft.vote(r).await),
                    RaftRpc::Snapshot(r) => {
                        PeerResponse::Snapshot(g.raft.install_snapshot(r).await)
                    }
                }
            }
            PeerRequest::Write {
                group: GroupId::Partition(p),
                ops,
            } => PeerResponse::Write(
                self.bounded_local_call(p, &Call::Write(ops), self.peer_deadline())
                    .await
                    .and_then(Answer::written)
                    .map_err(WireError::from_error),
            ),
            PeerRequest::Read {
                group: GroupId::Partition(p),
                keys,
                stale,
            } => PeerResponse::Read(
                self.bounded_local_call(p, &Call::Read { keys, stale }, self.peer_deadline())
                    .await
                    .and_then(Answer::records)
                    .map_err(WireError::from_error),
            ),
            PeerRequest::Write { .. } | PeerRequest::Read { .. } => {
                PeerResponse::Invalid("map operations go to partitions".into())
            }
        }
    }

    /// When a majority of `g`'s voters does not answer pings: the voters that are down.
    fn quorum_down(&self, g: &Group) -> Option<Vec<NodeId>> {
        if self.uptime() < PEERS_KNOWN_AFTER {
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

    /// Whether the leader of `g` is known and reachable from here.
    pub fn has_usable_leader(&self, g: &Group) -> bool {
        let m = g.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == self.id => m.state == ServerState::Leader,
            Some(l) => self.liveness.alive(l),
            None => false,
        }
    }

    /// This member's report of itself.
    pub fn status(&self) -> MemberStatus {
        let meta = self.meta_state();
        let mut s = MemberStatus {
            id: self.id,
            ..Default::default()
        };
        s.meta_leader = self.meta.is_leader();
        let meta_ok = meta.bootstrapped() && self.has_usable_leader(&self.meta);
        for p in 0..meta.partition_count {
            if !meta.replicas(p).contains(&self.id) {
                continue;
            }
            match self.group(GroupId::Partition(p)) {
                Some(g) => {
                    s.held.push(p);
                    if g.is_leader() {
                        s.led.push(p);
                    }
                    if !self.has_usable_leader(&g) {
                        s.leaderless.push(p);
                    }
                }
                None => s.leaderless.push(p),
            }
        }
        s.ready = meta_ok && s.leaderless.is_empty();
        s.moves = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        s
    }

    /// The grid as this member can see it: every member's own report.
    pub async fn cluster_view(&self) -> ClusterView {
        let meta = self.meta_state();
        let calls = meta.members.values().map(|m| async move {
            if m.id == self.id {
                return (m.id, Some(self.status()));
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
        let reports: BTreeMap<NodeId, Option<MemberStatus>> =
            futures::future::join_all(calls).await.into_iter().collect();
        let mut members = Vec::new();
        for m in meta.members.values() {
            let report = reports.get(&m.id).cloned().flatten();
            members.push(MemberView {
                id: m.id,
                address: m.addr.clone(),
                zone: m.zone.clone(),
                state: m.state.as_str().into(),
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
                    phase: progress.get(p).map(|x| x.phase.clone()),
                    lag: progress.get(p).map(|x| x.lag),
                    stalled: age_ms > self.config.move_stalled_after_ms,
                }
            })
            .collect();
        let active: Vec<&MemberView> = members.iter().filter(|m| m.state == "active").collect();
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
            cluster_name: self.config.cluster_name.clone(),
            answered_by: self.id,
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

/// How long a metadata command may take to commit.
const META_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// After this long, liveness has pinged every peer, and a member it calls down is skipped.
const PEERS_KNOWN_AFTER: Duration = Duration::from_secs(3);

async fn open_group(
    config: &Config,
    storage: &Storage,
    raft_config: &Arc<openraft::Config>,
    transport: &Arc<Transport>,
    id: GroupId,
    meta_tx: Option<watch::Sender<Arc<MetaState>>>,
    shutdown: &CancellationToken,
) -> Result<Arc<Group>> {
    let log = LogStore::new(storage.clone(), id.to_key());
    let committed = log.committed_index();
    let restored_term = log.stored_term()?;
    let sm = StateMachineStore::open(storage.clone(), id, meta_tx)?;
    let network = NetworkFactory::new(id, transport.clone());
    let raft = Raft::new(config.node_id, raft_config.clone(), network, log, sm)
        .await
        .map_err(|e| Error::Internal(format!("start {id}: {e}")))?;
    Ok(Group::new(
        id,
        raft,
        committed,
        restored_term,
        shutdown.clone(),
    ))
}

/// `GET /v1/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    /// Grid name.
    pub cluster_name: String,
    /// The member that assembled this view.
    pub answered_by: NodeId,
    /// Whether the partition table exists.
    pub bootstrapped: bool,
    /// Metadata epoch (increments with every change of members or table).
    pub epoch: u64,
    /// Members in id order.
    pub members: Vec<MemberView>,
    /// Partition health.
    pub partitions: PartitionsView,
    /// Whether replicas and leaders are spread evenly.
    pub balance: BalanceView,
    /// Replica moves in progress.
    pub moves: Vec<MoveView>,
}

/// Balance in [`ClusterView`].
#[derive(Debug, Serialize)]
pub struct BalanceView {
    /// No move in progress, nothing under-replicated, every member active (or
    /// decommissioned) and reachable, replica and leader counts of active members within one.
    pub balanced: bool,
    /// Moves in progress.
    pub moves_in_progress: usize,
    /// Moves running longer than `move_stalled_after_ms`.
    pub moves_stalled: usize,
    /// Moves finished since bootstrap.
    pub moves_finished: u64,
    /// Largest minus smallest replica count among active members.
    pub replicas_spread: usize,
    /// Largest minus smallest leader count among active members.
    pub leaders_spread: usize,
}

/// A move in [`ClusterView`].
#[derive(Debug, Serialize)]
pub struct MoveView {
    /// Partition.
    pub partition: u32,
    /// Replica being replaced, if any.
    pub from: Option<NodeId>,
    /// Member receiving the replica.
    pub to: NodeId,
    /// Why.
    pub reason: MoveReason,
    /// Time since it started.
    pub age_ms: u64,
    /// The partition leader's phase, when it reported one.
    pub phase: Option<String>,
    /// Entries the new replica is behind, when reported.
    pub lag: Option<u64>,
    /// Running longer than `move_stalled_after_ms`.
    pub stalled: bool,
}

/// One member in [`ClusterView`].
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// Member id.
    pub id: NodeId,
    /// Advertised address.
    pub address: String,
    /// Failure zone.
    pub zone: Option<String>,
    /// `joining`, `active`, `draining` or `decommissioned`.
    pub state: String,
    /// Whether it answered for this view.
    pub reachable: bool,
    /// Whether its `/readyz` is green.
    pub ready: bool,
    /// Partitions it leads.
    pub partitions_led: usize,
    /// Partitions it holds a replica of (or is giving one away from): 0 once drained.
    pub partitions_held: usize,
}

/// Partition health in [`ClusterView`].
#[derive(Debug, Serialize)]
pub struct PartitionsView {
    /// Number of partitions.
    pub count: u32,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Partitions with a replica missing or on a member that does not answer.
    pub under_replicated: usize,
    /// Partitions no answering member leads.
    pub without_leader: usize,
}
