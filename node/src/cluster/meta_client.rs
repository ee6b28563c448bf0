//! Calls to the metadata leader: proposing metadata commands and confirming a partition's
//! version, from any member. The member that leads the metadata group serves them; another
//! passes a peer's call on to the leader it knows, once.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};

use crate::cluster::groups::Groups;
use crate::config::Seed;
use crate::raft::{GroupId, Request, Response};
use crate::structures::meta::{MetaCall, MetaCommand, MetaOutcome, MetaReply};
use crate::transport::{Lane, PeerRequest, PeerResponse, Transport};
use crate::{Error, Result};

/// How long a metadata command may take to commit.
const META_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client (and, on the leader, the server) of the metadata group.
pub struct MetaClient {
    groups: Arc<Groups>,
    transport: Arc<Transport>,
    seeds: Vec<Seed>,
}

impl MetaClient {
    /// A client that finds the leader through `groups`' metadata group, else `seeds`.
    pub fn new(groups: Arc<Groups>, transport: Arc<Transport>, seeds: Vec<Seed>) -> Self {
        MetaClient {
            groups,
            transport,
            seeds,
        }
    }

    /// Proposes a metadata command through the metadata leader.
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaOutcome> {
        match self.call(MetaCall::Propose(cmd)).await? {
            MetaReply::Outcome(o) => Ok(o),
            other => Err(Error::Internal(format!(
                "metadata leader answered {other:?}"
            ))),
        }
    }

    /// Proposes `cmd`; a refusal becomes [`Error::Refused`].
    pub async fn commit(&self, cmd: MetaCommand) -> Result<MetaOutcome> {
        match self.propose(cmd).await? {
            MetaOutcome::Refused { code, message } => Err(Error::Refused { code, message }),
            other => Ok(other),
        }
    }

    /// Partition `p`'s version in the metadata group's latest committed state: a
    /// linearizable read through the metadata leader.
    pub async fn confirmed_version(&self, p: u32) -> Result<u64> {
        match self.call(MetaCall::Version(p)).await? {
            MetaReply::Version(v) => Ok(v),
            other => Err(Error::Internal(format!(
                "metadata leader answered {other:?}"
            ))),
        }
    }

    /// Sends `call` to the metadata leader: this member, the leader it knows of, or else
    /// any initial member (which passes it on).
    async fn call(&self, call: MetaCall) -> Result<MetaReply> {
        if self.groups.meta_group().is_leader() {
            return self.serve(call).await;
        }
        let me = self.groups.id();
        let mut addrs: Vec<String> = self.leader_addr().into_iter().collect();
        for seed in &self.seeds {
            if seed.id != me && !addrs.contains(&seed.addr) {
                addrs.push(seed.addr.clone());
            }
        }
        let mut last = Error::Unavailable {
            group: GroupId::Meta,
            message: "no member to ask".into(),
        };
        for addr in addrs {
            match self.send(&addr, call.clone(), false).await {
                Ok(reply) => return Ok(reply),
                Err(e @ (Error::Refused { .. } | Error::Internal(_))) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(match last {
            e @ Error::Unavailable { .. } => e,
            other => Error::Unavailable {
                group: GroupId::Meta,
                message: other.to_string(),
            },
        })
    }

    /// Address of the metadata leader this member knows of (not itself).
    fn leader_addr(&self) -> Option<String> {
        let m = self.groups.meta_group().raft.metrics().borrow().clone();
        let leader = m.current_leader.filter(|l| *l != self.groups.id())?;
        let from_state = self.groups.meta_state().addr(leader).map(str::to_string);
        from_state.or_else(|| {
            m.membership_config
                .membership()
                .get_node(&leader)
                .map(|n| n.addr.clone())
        })
    }

    /// Serves `call` on this member, the metadata leader.
    async fn serve(&self, call: MetaCall) -> Result<MetaReply> {
        let meta = self.groups.meta_group();
        let cmd = match call {
            MetaCall::Version(p) => {
                meta.read_barrier().await?;
                return Ok(MetaReply::Version(self.groups.meta_state().version(p)));
            }
            MetaCall::Propose(cmd) => cmd,
        };
        let write = meta.raft.client_write(Request::Meta(cmd));
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

    /// Serves a peer's call: here if this member leads, else passed on once.
    pub async fn handle(&self, call: MetaCall, forwarded: bool) -> Result<MetaReply> {
        let meta = self.groups.meta_group();
        if meta.is_leader() {
            return self.serve(call).await;
        }
        let leader = meta.current_leader();
        let Some(addr) = self.leader_addr().filter(|_| !forwarded) else {
            return Err(Error::NotLeader {
                group: GroupId::Meta,
                leader,
            });
        };
        self.send(&addr, call, true).await
    }

    /// Sends `call` to the member at `addr`.
    async fn send(&self, addr: &str, call: MetaCall, forwarded: bool) -> Result<MetaReply> {
        let req = PeerRequest::Meta { call, forwarded };
        let unavailable = |message: String| Error::Unavailable {
            group: GroupId::Meta,
            message,
        };
        match self
            .transport
            .call(addr, Lane::Control, req, META_CALL_TIMEOUT)
            .await
        {
            Ok(PeerResponse::Meta(reply)) => reply.map_err(|e| Error::from_wire(e, GroupId::Meta)),
            Ok(other) => Err(unavailable(format!("{addr} answered {other:?}"))),
            Err(e) => Err(unavailable(format!("{addr}: {e}"))),
        }
    }
}
