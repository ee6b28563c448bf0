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
