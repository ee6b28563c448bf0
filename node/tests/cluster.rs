//! Cluster tests with real `devicegrid serve` processes on loopback.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_for, within, TestGrid};
use rand::Rng;
use serde_json::{json, Value};

const DEVICES: usize = 10_000;
const WRITERS: usize = 32;

/// Writes `keys` with `round` through random members, retrying each key (with the same
/// value, so retries are idempotent) until it is acknowledged. Returns the acknowledged round
/// of every key.
async fn write_round(
    urls: Arc<Vec<String>>,
    http: reqwest::Client,
    keys: Vec<usize>,
    round: u64,
    progress: Arc<AtomicUsize>,
) -> HashMap<usize, u64> {
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let keys = Arc::new(keys);
    let tasks = (0..WRITERS).map(|w| {
        let (urls, http, keys, acked, progress) = (
            urls.clone(),
            http.clone(),
            keys.clone(),
            acked.clone(),
            progress.clone(),
        );
        tokio::spawn(async move {
            for k in keys.iter().skip(w).step_by(WRITERS) {
                let body = json!({ "device": k, "round": round, "fw": format!("1.{round}") });
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let url = &urls[rand::thread_rng().gen_range(0..urls.len())];
                    let ok = http
                        .put(format!("{url}/v1/maps/devices/device-{k}"))
                        .json(&body)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false);
                    if ok {
                        acked.lock().expect("acked").insert(*k, round);
                        progress.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "device-{k} round {round} not acknowledged within 60 s"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("writer task");
    }
    let acked = acked.lock().expect("acked").clone();
    acked
}

/// Waits until `n` writes are acknowledged.
async fn wait_progress(progress: &Arc<AtomicUsize>, n: usize, timeout: Duration) {
    wait_for(timeout, &format!("{n} acknowledged writes"), || {
        let p = progress.clone();
        async move { p.load(Ordering::Relaxed) >= n }
    })
    .await
    .expect("write progress");
}

/// Reads every device through random members and compares with what was acknowledged.
async fn verify(grid: &TestGrid, expected: &HashMap<usize, u64>, stale_from: Option<u64>) {
    let mismatches = Arc::new(Mutex::new(Vec::new()));
    let keys: Arc<Vec<(usize, u64)>> = Arc::new(expected.iter().map(|(k, r)| (*k, *r)).collect());
    let ids = grid.ids();
    let tasks = (0..WRITERS).map(|w| {
        let (keys, mismatches, ids) = (keys.clone(), mismatches.clone(), ids.clone());
        let grid_urls: Vec<String> = ids.iter().map(|i| grid.url(*i)).collect();
        let http = grid.http.clone();
        tokio::spawn(async move {
            for (k, round) in keys.iter().skip(w).step_by(WRITERS) {
                let (url, q) = match stale_from {
                    Some(id) => (grid_urls[id as usize - 1].clone(), "?consistency=stale"),
                    None => (
                        grid_urls[rand::thread_rng().gen_range(0..grid_urls.len())].clone(),
                        "",
                    ),
                };
                let got: Option<Value> = async {
                    let r = http
                        .get(format!("{url}/v1/maps/devices/device-{k}{q}"))
                        .send()
                        .await
                        .ok()?;
                    r.json::<Value>().await.ok()
                }
                .await;
                let got_round = got.as_ref().and_then(|v| v["value"]["round"].as_u64());
                if got_round != Some(*round) {
                    mismatches
                        .lock()
                        .expect("m")
                        .push(format!("device-{k}: expected round {round}, read {got:?}"));
                }
            }
        })
    });
    for t in futures::future::join_all(tasks).await {
        t.expect("reader task");
    }
    let m = mismatches.lock().expect("m");
    assert!(
        m.is_empty(),
        "{} of {} devices wrong, first: {:?}",
        m.len(),
        expected.len(),
        &m[..m.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill9_restart_and_full_restart() {
    within(900, async {
        let mut grid = TestGrid::start(3, 271);
        grid.wait_ready(Duration::from_secs(90)).await;
        let urls = Arc::new(grid.ids().iter().map(|i| grid.url(*i)).collect::<Vec<_>>());

        // Round 1: 10,000 devices through random members; member 2 is killed with SIGKILL
        // part way and restarted later, while the writes go on.
        let progress = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_round(
            urls.clone(),
            grid.http.clone(),
            (0..DEVICES).collect(),
            1,
            progress.clone(),
        ));
        wait_progress(&progress, 2_500, Duration::from_secs(120)).await;
        grid.kill9(2);
        wait_progress(&progress, 6_000, Duration::from_secs(180)).await;
        grid.spawn(2);
        let mut expected = writer.await.expect("round 1");
        assert_eq!(expected.len(), DEVICES);
        grid.wait_ready(Duration::from_secs(60)).await;

        // Round 2: overwrite a third of them, so "last value" differs from "first value".
        let round2: Vec<usize> = (0..DEVICES).filter(|k| k % 3 == 0).collect();
        expected.extend(
            write_round(
                urls.clone(),
                grid.http.clone(),
                round2,
                2,
                Arc::new(AtomicUsize::new(0)),
            )
            .await,
        );
        verify(&grid, &expected, None).await;

        // The restarted member caught up: its own replica serves the last values.
        wait_caught_up(&grid, 2).await;
        verify(&grid, &expected, Some(2)).await;

        // Full-cluster restart with SIGKILL: acknowledged writes were fsynced before the ack.
        for id in grid.ids() {
            grid.kill9(id);
        }
        for id in grid.ids() {
            grid.spawn(id);
        }
        grid.wait_ready(Duration::from_secs(90)).await;
        verify(&grid, &expected, None).await;

        // A clean stop and start of everything, too.
        for id in grid.ids() {
            grid.stop(id);
        }
        for id in grid.ids() {
            grid.spawn(id);
        }
        grid.wait_ready(Duration::from_secs(90)).await;
        verify(&grid, &expected, None).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_operations_across_members() {
    within(180, async {
        let grid = TestGrid::start(3, 16);
        grid.wait_ready(Duration::from_secs(60)).await;
        let (a, b, c) = (grid.url(1), grid.url(2), grid.url(3));
        let http = &grid.http;

        // put through one member, read through another, CAS through a third
        let v1 = grid.put(1, "devices", "d1", &json!({"fw": "1.0"})).await.expect("put");
        assert_eq!(grid.get(2, "devices", "d1", false).await.expect("get").expect("found")["value"], json!({"fw": "1.0"}));
        let r = http.put(format!("{c}/v1/maps/devices/d1")).header("If-Match", v1.to_string()).json(&json!({"fw": "1.1"})).send().await.expect("cas");
        assert_eq!(r.status(), 200);
        let r = http.put(format!("{c}/v1/maps/devices/d1")).header("If-Match", v1.to_string()).json(&json!({"fw": "x"})).send().await.expect("cas");
        assert_eq!(r.status(), 412);
        let r = http.put(format!("{a}/v1/maps/devices/d1")).header("If-None-Match", "*").json(&json!({})).send().await.expect("create-only");
        assert_eq!(r.status(), 412);

        // processors
        let inc = json!({"processor": "increment", "args": {"field": "/stats/boots", "by": 1}});
        let mut handles = Vec::new();
        for i in 0..20 {
            let url = [&a, &b, &c][i % 3].clone();
            let (http, inc) = (http.clone(), inc.clone());
            handles.push(tokio::spawn(async move {
                http.post(format!("{url}/v1/maps/devices/d1/process")).json(&inc).send().await.map(|r| r.status().as_u16())
            }));
        }
        for h in handles {
            assert_eq!(h.await.expect("task").expect("increment"), 200);
        }
        let d1 = grid.get(3, "devices", "d1", false).await.expect("get").expect("found");
        assert_eq!(d1["value"]["stats"]["boots"], json!(20), "concurrent increments are atomic: {d1}");
        let shadow = json!({"processor": "shadow", "args": {"state": {"desired": {"led": "on"}, "reported": {"led": "off"}}}});
        let r: Value = http.post(format!("{b}/v1/maps/shadows/d1/process")).json(&shadow).send().await.expect("shadow").json().await.expect("json");
        assert_eq!(r["value"]["state"]["delta"], json!({"led": "on"}));
        let merge = json!({"processor": "merge_patch", "args": {"patch": {"fw": null, "owner": "ops"}}});
        let r: Value = http.post(format!("{a}/v1/maps/devices/d1/process")).json(&merge).send().await.expect("merge").json().await.expect("json");
        assert_eq!(r["value"], json!({"owner": "ops", "stats": {"boots": 20}}));

        // batch put and get
        let entries: Vec<Value> = (0..200).map(|i| json!({"key": format!("b{i}"), "value": {"n": i}})).collect();
        let r: Value = http.post(format!("{b}/v1/batch/maps/devices/put")).json(&json!({"entries": entries})).send().await.expect("batch put").json().await.expect("json");
        assert!(r["results"].as_array().expect("results").iter().all(|x| x["version"].is_u64()), "{r}");
        let keys: Vec<String> = (0..200).map(|i| format!("b{i}")).chain(["missing".to_string()]).collect();
        let r: Value = http.post(format!("{c}/v1/batch/maps/devices/get")).json(&json!({"keys": keys})).send().await.expect("batch get").json().await.expect("json");
        let got = r["entries"].as_array().expect("entries");
        assert_eq!(got.len(), 201);
        assert!(got[..200].iter().enumerate().all(|(i, e)| e["value"]["n"] == json!(i)), "{r}");
        assert_eq!(got[200]["found"], json!(false));

        // delete, and TTL expiry
        let r = http.delete(format!("{a}/v1/maps/devices/b7")).send().await.expect("delete");
        assert_eq!(r.status(), 200);
        assert!(grid.get(2, "devices", "b7", false).await.expect("get").is_none());
        let r = http.put(format!("{a}/v1/maps/devices/temp?ttl=1")).json(&json!(1)).send().await.expect("ttl put");
        assert_eq!(r.status(), 200);
        wait_for(Duration::from_secs(10), "the TTL entry to expire", || async {
            matches!(grid.get(3, "devices", "temp", false).await, Ok(None))
        })
        .await
        .expect("expiry");
        // ... and the partition leader's sweeper removes it from storage.
        wait_for(Duration::from_secs(10), "the sweeper to remove the entry", || async {
            let mut removed = 0.0;
            for id in grid.ids() {
                let text = grid.metrics(id).await;
                removed += common::gauge(&text, "devicegrid_expired_entries_total").unwrap_or(0.0);
            }
            removed >= 1.0
        })
        .await
        .expect("sweeper");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_quorum_answers_503_with_a_retry_hint() {
    within(120, async {
        let mut grid = TestGrid::start(3, 8);
        grid.wait_ready(Duration::from_secs(60)).await;
        grid.kill9(2);
        grid.kill9(3);
        // Every partition refuses writes with 503 and a retry hint once member 1 sees no
        // quorum; until then a write may be accepted and time out (504). Never a hang, a 200
        // or a 500.
        let http = grid.http.clone();
        let url = grid.url(1);
        wait_for(
            Duration::from_secs(20),
            "every partition to answer 503",
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let mut all_503 = true;
                    for k in 0..16 {
                        let resp = http
                            .put(format!("{url}/v1/maps/devices/k{k}"))
                            .json(&json!(1))
                            .send()
                            .await
                            .expect("put");
                        let status = resp.status().as_u16();
                        assert!(status == 503 || status == 504, "k{k}: {status}");
                        let retry = resp
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from);
                        let body: Value = resp.json().await.expect("json");
                        if status == 503 {
                            assert_eq!(retry.as_deref(), Some("1"));
                            assert_eq!(body["error"]["code"], json!("unavailable"), "{body}");
                            // Routing facts for smart clients: where the key went.
                            assert!(body["error"]["partition"].is_u64(), "{body}");
                            assert!(body["error"]["table_version"].is_u64(), "{body}");
                        } else {
                            assert_eq!(body["error"]["code"], json!("outcome_unknown"), "{body}");
                            all_503 = false;
                        }
                    }
                    all_503
                }
            },
        )
        .await
        .expect("503 for no quorum");
        let resp = grid
            .http
            .get(format!("{}/readyz", grid.url(1)))
            .send()
            .await
            .expect("readyz");
        assert_eq!(resp.status(), 503);
    })
    .await;
}

/// Per-group values of a gauge family, e.g. `devicegrid_raft_commit_index`.
fn per_group(text: &str, family: &str) -> HashMap<String, f64> {
    let prefix = format!("{family}{{group=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (group, value) = rest.split_once("\"} ")?;
            Some((group.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until `member` has applied, in every partition, what the other members committed.
async fn wait_caught_up(grid: &TestGrid, member: u64) {
    let mut committed: HashMap<String, f64> = HashMap::new();
    for id in grid.ids().into_iter().filter(|id| *id != member) {
        for (g, c) in per_group(&grid.metrics(id).await, "devicegrid_raft_commit_index") {
            let e = committed.entry(g).or_insert(0.0);
            *e = e.max(c);
        }
    }
    committed.retain(|g, _| g.starts_with('p'));
    assert!(!committed.is_empty(), "no commit indexes in the metrics");
    wait_for(
        Duration::from_secs(60),
        &format!("member {member} to apply what the others committed"),
        || {
            let committed = committed.clone();
            async move {
                let applied =
                    per_group(&grid.metrics(member).await, "devicegrid_raft_applied_index");
                committed
                    .iter()
                    .all(|(g, c)| applied.get(g).is_some_and(|a| a >= c))
            }
        },
    )
    .await
    .expect("catch up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_from_a_snapshot() {
    within(240, async {
        let mut grid = TestGrid::start_with(3, 2, &["--snapshot-after-logs", "50"]);
        grid.wait_ready(Duration::from_secs(60)).await;
        grid.kill9(3);
        // Enough single-key writes that both partitions snapshot and drop their logs.
        let urls = Arc::new(vec![grid.url(1), grid.url(2)]);
        let acked = write_round(
            urls,
            grid.http.clone(),
            (0..1_000).collect(),
            7,
            Arc::new(AtomicUsize::new(0)),
        )
        .await;
        let metrics = grid.metrics(1).await;
        for p in ["p0", "p1"] {
            let purged = common::gauge(
                &metrics,
                &format!("devicegrid_raft_purged_index{{group=\"{p}\"}}"),
            );
            assert!(
                purged.is_some_and(|v| v > 10.0),
                "{p} purged its log: {purged:?}"
            );
        }
        grid.spawn(3);
        grid.wait_ready(Duration::from_secs(60)).await;
        wait_caught_up(&grid, 3).await;
        let expected: HashMap<usize, u64> = acked;
        verify(&grid, &expected, Some(3)).await;
    })
    .await;
}

/// With small log segments, the log of a busy member stays a few segments long: groups that
/// keep the oldest segment are snapshotted and purged, a few live entries are moved forward,
/// freed segments are deleted; every write reads back after a kill -9 and a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_log_is_compacted_by_size() {
    within(240, async {
        let args = [
            "--log-segment-bytes",
            "65536",
            "--log-max-segments",
            "2",
            // Above the writes below: only the log's size asks for snapshots.
            "--snapshot-after-logs",
            "2000",
        ];
        let mut grid = TestGrid::start_with(1, 2, &args);
        grid.wait_ready(Duration::from_secs(60)).await;
        let pad = "x".repeat(1000);
        for i in 0..1500 {
            let value = json!({ "i": i, "pad": pad });
            grid.put(1, "log", &format!("k{i}"), &value)
                .await
                .expect("put");
        }
        let count = |m: &str, name: &str| common::gauge(m, name).unwrap_or(0.0);
        // 1.5 MB went through the log; two groups keep at most 100 entries each after a
        // snapshot (`raft::kept_after_snapshot`), about 4 segments.
        let compacted = wait_for(Duration::from_secs(60), "the log to shrink", || async {
            let m = grid.metrics(1).await;
            count(&m, "devicegrid_log_segments") <= 12.0
                && count(&m, "devicegrid_log_deleted_segments_total") >= 10.0
        })
        .await;
        let m = grid.metrics(1).await;
        assert!(
            compacted.is_ok(),
            "log compacted: {} segments, {} deleted",
            count(&m, "devicegrid_log_segments"),
            count(&m, "devicegrid_log_deleted_segments_total")
        );
        grid.kill9(1);
        grid.spawn(1);
        grid.wait_ready(Duration::from_secs(60)).await;
        for i in (0..1500).step_by(7) {
            let got = grid
                .get(1, "log", &format!("k{i}"), false)
                .await
                .expect("get");
            assert_eq!(got.expect("found")["value"]["i"], json!(i));
        }
    })
    .await;
}
