//! A disk that fills up and frees again, on a tmpfs the test mounts over a member's data
//! directory (its log file included): the member's own large writes are refused with 507
//! `insufficient_storage` before they reach the reserve (charged between measurements) and
//! nothing of them is stored; reads are still served; once free space falls below the
//! reserve, `/healthz` reports the low disk with every Raft group running; when space comes
//! back the member takes writes again without a restart. Needs root (mount).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{within, TestGrid};
use devicegrid_testkit::until;
use serde_json::{json, Value};

const RESERVE: u64 = 16 * 1024 * 1024;

/// A tmpfs mounted at `at`; unmounted (and the grid's directory removed) when dropped.
struct Tmpfs {
    at: PathBuf,
    root: PathBuf,
}

impl Tmpfs {
    fn mount(at: &Path, root: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            at: at.to_path_buf(),
            root: root.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    st.blocks_available() * st.fragment_size()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers_by_itself() {
    within(180, async {
        let mut grid = TestGrid::new(1, 2, &["--min-free-disk-bytes", &RESERVE.to_string()]);
        let data = grid.dir.path().join("member-1");
        let _disk = Tmpfs::mount(&data, grid.dir.path(), "96m");
        grid.spawn(1);
        grid.wait_ready(Duration::from_secs(60)).await;
        grid.put(1, "devices", "kept", &json!({"fw": "1.0"}))
            .await
            .expect("first write");

        // Fill the disk to 4 MiB above the reserve, then write until the reserve is hit.
        let filler = data.join("filler");
        let fill = free_bytes(&data).saturating_sub(RESERVE + 4 * 1024 * 1024);
        std::fs::write(&filler, vec![7u8; fill as usize]).expect("filler");
        // The member measures its disk twice a second: wait until it has seen the filler
        // (its own writes it charges at once, someone else's only when it measures).
        let health_url = format!("{}/healthz", grid.url(1));
        until(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let h: Value = grid
                    .http
                    .get(&health_url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                match h["disk_free_bytes"].as_u64() {
                    Some(free) if free < RESERVE + 5 * 1024 * 1024 => Ok(()),
                    other => Err(format!("disk_free_bytes {other:?}")),
                }
            },
        )
        .await
        .expect("the member sees the filled disk");
        let big = json!({ "blob": "x".repeat(256 * 1024) });
        let url = |k: &str| format!("{}/v1/maps/devices/{k}", grid.url(1));
        let mut refused = None;
        for i in 0..200 {
            let key = format!("big-{i}");
            let r = grid
                .http
                .put(url(&key))
                .json(&big)
                .send()
                .await
                .expect("answered");
            match r.status().as_u16() {
                200 => {}
                507 => {
                    let body: Value = r.json().await.expect("json");
                    assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
                    refused = Some(key);
                    break;
                }
                other => panic!("{key}: {other} {}", r.text().await.unwrap_or_default()),
            }
        }
        let refused = refused.expect("writes refused before the disk is full");
        // Nothing of the refused write is stored; reads go on.
        let gone = grid.http.get(url(&refused)).send().await.expect("get");
        assert_eq!(gone.status(), 404);
        let kept = grid.http.get(url("kept")).send().await.expect("get");
        assert_eq!(kept.status(), 200);

        // The disk goes below the reserve (someone else's file grows): /healthz says so, with
        // every Raft group running, and writes are refused.
        let more = free_bytes(&data).saturating_sub(RESERVE / 2);
        std::fs::write(data.join("filler-2"), vec![7u8; more as usize]).expect("filler");
        let health = until(
            Duration::from_secs(10),
            Duration::from_millis(100),
            || async {
                let r = grid
                    .http
                    .get(&health_url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status();
                let h: Value = r.json().await.map_err(|e| e.to_string())?;
                if h["storage"] == "low" {
                    Ok((status, h))
                } else {
                    Err(h.to_string())
                }
            },
        )
        .await
        .expect("storage reported low");
        assert_eq!(health.0, 200, "every group still runs: {}", health.1);
        assert_eq!(health.1["groups_stopped"], json!([]));
        let small = grid
            .http
            .put(url("small"))
            .json(&json!({"fw": "1.1"}))
            .send()
            .await
            .expect("answered");
        assert_eq!(small.status(), 507);

        // Space comes back: writes are taken again, no restart.
        std::fs::remove_file(&filler).expect("free space");
        std::fs::remove_file(data.join("filler-2")).expect("free space");
        until(
            Duration::from_secs(30),
            Duration::from_millis(300),
            || async {
                let r = grid
                    .http
                    .put(url("after"))
                    .json(&json!({"fw": "2.0"}))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() == 200 {
                    Ok(())
                } else {
                    Err(r.status().to_string())
                }
            },
        )
        .await
        .expect("writes taken again");
        let health: Value = grid
            .http
            .get(format!("{}/healthz", grid.url(1)))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("json");
        assert_eq!(health["storage"], "ok", "{health}");
        grid.kill9(1);
    })
    .await;
}
