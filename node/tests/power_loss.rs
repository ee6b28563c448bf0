//! Power loss of every member at once: each member's data directory is a [`LazyFs`] that
//! keeps writes in memory until they are synced, and the test "pulls the power" on all three
//! (kill -9, then drop every unsynced write). After the restart every write that was
//! acknowledged must read back with its value: a write acknowledged before it was synced
//! (sled's `sync_file_range` alone, or a file never synced) is lost here and fails the test.
//! Needs root (FUSE mounts).

mod common;
mod lazyfs;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{within, TestGrid};
use lazyfs::LazyFs;
use serde_json::{json, Value};

const MAP: &str = "devices";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_losing_power_on_every_member() {
    within(300, async {
        let mut grid = TestGrid::new(3, 8, &[]);
        let root = grid.dir.path().to_path_buf();
        let mount = |id: u64| {
            LazyFs::mount(
                &root.join(format!("disk-{id}")),
                &root.join(format!("member-{id}")),
            )
            .expect("a FUSE mount (the test needs root and /dev/fuse)")
        };
        let mut disks: Vec<LazyFs> = grid.ids().into_iter().map(mount).collect();
        for id in grid.ids() {
            grid.spawn(id);
        }
        grid.wait_ready(Duration::from_secs(120)).await;

        // Three writers, each through another member, each key written once.
        let mut writers = Vec::new();
        for w in 1..=3u64 {
            let http = grid.http.clone();
            let url = grid.url(w);
            writers.push(tokio::spawn(async move {
                let mut acked = BTreeMap::new();
                for i in 0..150 {
                    let key = format!("w{w}-{i}");
                    let value = json!({ "writer": w, "seq": i, "pad": "x".repeat(200) });
                    let r = http
                        .put(format!("{url}/v1/maps/{MAP}/{key}"))
                        .json(&value)
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        acked.insert(key, value);
                    }
                }
                acked
            }));
        }
        let mut acked: BTreeMap<String, Value> = BTreeMap::new();
        for w in writers {
            acked.extend(w.await.expect("writer"));
        }
        assert!(
            acked.len() >= 400,
            "only {} writes acknowledged",
            acked.len()
        );

        // The power goes on every member at once.
        for id in grid.ids() {
            grid.kill9(id);
        }
        let unsynced: usize = disks.iter().map(LazyFs::unsynced_bytes).sum();
        for d in disks.drain(..) {
            d.power_cut();
        }
        eprintln!("power cut: {unsynced} unsynced bytes lost");

        disks = grid.ids().into_iter().map(mount).collect();
        for id in grid.ids() {
            grid.spawn(id);
        }
        grid.wait_ready(Duration::from_secs(120)).await;
        let mut lost = Vec::new();
        for (key, value) in &acked {
            let got = grid.get(1, MAP, key, false).await.expect("read");
            if got.as_ref().map(|v| &v["value"]) != Some(value) {
                lost.push(format!("{key}: {got:?}"));
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged writes lost, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        for id in grid.ids() {
            grid.kill9(id);
        }
        drop(disks);
    })
    .await;
}
