//! What a group's state machine applies: the [`Machine`] trait, and the two machines of a
//! member: [`PartitionMachine`] (maps) and [`MetaMachine`] (members and partition table,
//! published to the member through a watch channel). The logic itself lives in
//! [`crate::structures`]; this file only routes entries to it.

use std::sync::Arc;

use tokio::sync::watch;

use super::{GroupId, Request, Response};
use crate::storage::{decode, encode, group_key, sm_space, Overlay, Storage};
use crate::structures::map;
use crate::structures::meta::{self, MetaOutcome, MetaState};

/// The deterministic logic of one kind of group.
pub trait Machine: Send + Sync + 'static {
    /// Applies `req` through the group's `view`; `revision` is the group's version counter
    /// (stored with the applied log id). A request meant for another kind of group changes
    /// nothing, on every replica.
    fn apply(
        &mut self,
        view: &mut Overlay<'_>,
        revision: &mut u64,
        req: &Request,
    ) -> crate::Result<Response>;

    /// Runs once applied state is stored: after a batch of entries, after a snapshot was
    /// installed and at open (`all`: state may have changed wholesale).
    fn stored(&mut self, _st: &Storage, _all: bool) -> crate::Result<()> {
        Ok(())
    }
}

/// A data partition: map operations.
#[derive(Debug, Default)]
pub struct PartitionMachine;

impl Machine for PartitionMachine {
    fn apply(
        &mut self,
        view: &mut Overlay<'_>,
        revision: &mut u64,
        req: &Request,
    ) -> crate::Result<Response> {
        Ok(match req {
            Request::Map(batch) => Response::Map(map::apply_batch(view, revision, batch)?),
            Request::Meta(_) => Response::None,
        })
    }
}

/// The metadata group: applies metadata commands and publishes the state after each change.
pub struct MetaMachine {
    tx: watch::Sender<Arc<MetaState>>,
    changed: bool,
}

impl MetaMachine {
    /// A machine publishing to `tx`.
    pub fn new(tx: watch::Sender<Arc<MetaState>>) -> Self {
        MetaMachine { tx, changed: false }
    }

    /// Reads the stored metadata state of a member (empty before bootstrap).
    pub fn load(st: &Storage) -> crate::Result<MetaState> {
        let key = group_key(GroupId::Meta.to_key(), &[sm_space::META]);
        Ok(match st.state_machine.get(key)? {
            Some(b) => decode(&b)?,
            None => MetaState::default(),
        })
    }
}

impl Machine for MetaMachine {
    fn apply(
        &mut self,
        view: &mut Overlay<'_>,
        _revision: &mut u64,
        req: &Request,
    ) -> crate::Result<Response> {
        let Request::Meta(cmd) = req else {
            return Ok(Response::None);
        };
        let mut state: MetaState = match view.get(&[sm_space::META])? {
            Some(b) => decode(&b)?,
            None => MetaState::default(),
        };
        let outcome = meta::apply(&mut state, cmd);
        if outcome == MetaOutcome::Applied {
            view.put(&[sm_space::META], encode(&state)?);
            self.changed = true;
        }
        Ok(Response::Meta(outcome))
    }

    fn stored(&mut self, st: &Storage, all: bool) -> crate::Result<()> {
        if all || std::mem::take(&mut self.changed) {
            self.tx.send_replace(Arc::new(Self::load(st)?));
        }
        Ok(())
    }
}
