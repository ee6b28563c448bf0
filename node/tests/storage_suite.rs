//! openraft's storage conformance suite against the member's log store and the state machine,
//! once for each machine a member runs (a partition's maps and the metadata group).

use devicegrid::raft::{
    GroupId, LogStore, Machine, MetaMachine, PartitionMachine, StateMachineStore, StorageError,
    TypeConfig,
};
use devicegrid::storage::Storage;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;

/// Builds stores for `group`, with the machine `make` returns.
struct SledBuilder<F> {
    group: GroupId,
    make: F,
}

fn io(e: impl ToString) -> StorageError {
    StorageError::from(StorageIOError::write(openraft::AnyError::error(
        e.to_string(),
    )))
}

impl<M, F> StoreBuilder<TypeConfig, LogStore, StateMachineStore<M>, tempfile::TempDir>
    for SledBuilder<F>
where
    M: Machine,
    F: Fn() -> M + Send + Sync,
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore<M>), StorageError> {
        let dir = tempfile::tempdir().map_err(io)?;
        let st = Storage::open(dir.path(), 0).map_err(io)?;
        // Groups share the log in a real member; give neighbours entries and state around
        // this one so reads that leak across groups are caught.
        for neighbour in [2u32, 4, u32::MAX - 1] {
            let junk = vec![b"not an entry".to_vec(); 3];
            st.wal
                .append(neighbour, 1, junk, Box::new(|_| {}))
                .map_err(io)?;
            st.wal
                .set_state(neighbour, 1, b"not a vote".to_vec())
                .map_err(io)?;
        }
        let log = LogStore::new(st.clone(), self.group.to_key());
        let sm = StateMachineStore::open(st, self.group, (self.make)()).map_err(io)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn partition_store_passes_the_openraft_suite() {
    let builder = SledBuilder {
        group: GroupId::Partition(3),
        make: || PartitionMachine,
    };
    if let Err(e) = Suite::test_all(builder) {
        panic!("openraft storage suite (partition): {e}");
    }
}

#[test]
fn metadata_store_passes_the_openraft_suite() {
    let builder = SledBuilder {
        group: GroupId::Meta,
        make: || MetaMachine::new(tokio::sync::watch::channel(Default::default()).0),
    };
    if let Err(e) = Suite::test_all(builder) {
        panic!("openraft storage suite (metadata): {e}");
    }
}

/// A member that did not stop cleanly rebuilds each state machine from its stored snapshot
/// (the log is applied again from there), dropping whatever half an apply left in sled; one
/// that stopped cleanly keeps its state as it is.
#[test]
fn state_machines_are_rebuilt_after_an_unclean_stop() {
    use devicegrid::raft::Request;
    use devicegrid_proto::entries::{MapBatch, MapOp};
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let group = GroupId::Partition(5);
    let put = |index: u64, key: &str| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request::Map(MapBatch {
            now_ms: 1,
            ops: vec![MapOp::Put {
                map: "m".into(),
                key: key.into(),
                value: format!("{index}"),
                if_version: None,
                ttl_ms: None,
            }],
        })),
    };
    let keys = |st: &Storage| -> Vec<Vec<u8>> {
        st.state_machine
            .scan_prefix(group.to_key().to_be_bytes())
            .keys()
            .map(|k| k.expect("key").to_vec())
            .collect()
    };
    let applied = |st: Storage| {
        let mut sm = StateMachineStore::open(st, group, PartitionMachine).expect("open");
        rt.block_on(sm.applied_state())
            .expect("applied")
            .0
            .map(|l| l.index)
    };
    let junk = devicegrid::storage::group_key(group.to_key(), b"\x01half an apply");
    // The flusher thread of a dropped storage lets go of sled's lock shortly after.
    let reopen = || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Storage::open(dir.path(), 0) {
                Ok(st) => return st,
                Err(e)
                    if std::time::Instant::now() < deadline && e.to_string().contains("lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    };
    let (snapshot_keys, all_keys) = {
        let st = Storage::open(dir.path(), 0).expect("open");
        let mut sm = StateMachineStore::open(st.clone(), group, PartitionMachine).expect("sm");
        rt.block_on(async {
            sm.apply(vec![put(1, "a"), put(2, "b")])
                .await
                .expect("apply");
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("snapshot");
        });
        let at_snapshot = keys(&st);
        rt.block_on(sm.apply(vec![put(3, "c")])).expect("apply");
        st.state_machine.insert(&junk, b"x".to_vec()).expect("junk");
        (at_snapshot.len(), keys(&st))
        // Dropped without `close`: an unclean stop.
    };
    {
        let st = reopen();
        assert_eq!(applied(st.clone()), Some(2), "back at the snapshot");
        let now = keys(&st);
        assert!(!now.contains(&junk), "the half-done apply is gone");
        assert_eq!(now.len(), snapshot_keys);
        assert!(all_keys.len() > now.len());
        // Entry 3 is applied again from the log (openraft does it at start), then a clean stop.
        let mut sm = StateMachineStore::open(st.clone(), group, PartitionMachine).expect("sm");
        rt.block_on(sm.apply(vec![put(3, "c")])).expect("apply");
        rt.block_on(st.close()).expect("close");
    }
    let st = reopen();
    assert_eq!(applied(st.clone()), Some(3), "kept after a clean stop");
    assert!(!dir.path().join(devicegrid::storage::CLEAN_STOP).exists());
}
