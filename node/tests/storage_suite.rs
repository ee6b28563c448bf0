//! openraft's storage conformance suite against the sled log store and state machine.

use devicegrid::raft::{GroupId, LogStore, StateMachineStore, StorageError, TypeConfig};
use devicegrid::storage::Storage;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let io =
            |e: String| StorageError::from(StorageIOError::write(openraft::AnyError::error(e)));
        let dir = tempfile::tempdir().map_err(|e| io(e.to_string()))?;
        let st = Storage::open(dir.path()).map_err(|e| io(e.to_string()))?;
        // A partition group shares the trees with other groups in a real member; put a
        // neighbour's data around it so range scans that leak across groups are caught.
        for neighbour in [2u32, 4] {
            let k = devicegrid::storage::group_key(neighbour, &7u64.to_be_bytes());
            st.log
                .insert(k, b"not an entry".to_vec())
                .map_err(|e| io(e.to_string()))?;
        }
        let log = LogStore::new(st.clone(), 3);
        let sm = StateMachineStore::open(st, GroupId::Partition(3), None)
            .map_err(|e| io(e.to_string()))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite: {e}");
    }
}
