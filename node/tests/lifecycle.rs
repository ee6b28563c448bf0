//! A member's lifecycle under load: it stops promptly with nothing left running, and a flood
//! of writes is answered with 503 `overloaded` (nothing written) instead of growing memory.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_for, TestGrid};
use devicegrid::cluster::Grid;
use devicegrid::config::Config;
use devicegrid::metrics::Metrics;
use devicegrid::runtime::Tasks;
use serde_json::{json, Value};

/// A single in-process member on free loopback ports; its HTTP servers run in its tasks.
async fn start_member(dir: &std::path::Path) -> (Arc<Grid>, String) {
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let (listener, peer_listener) = (bind().await.expect("bind"), bind().await.expect("bind"));
    let addr = listener.local_addr().expect("addr");
    let peer_addr = peer_listener.local_addr().expect("addr");
    let ca = devicegrid_pki::new_ca("devicegrid", devicegrid_pki::days(1)).expect("ca");
    std::fs::write(dir.join("ca.crt"), &ca.cert).expect("ca.crt");
    std::fs::write(dir.join("ca.key"), &ca.key).expect("ca.key");
    let config = Config {
        node_id: 1,
        listen: addr,
        peer_listen: peer_addr,
        peer_ca: Some(dir.join("ca.crt")),
        peer_ca_key: Some(dir.join("ca.key")),
        data_dir: dir.join("data"),
        partitions: 8,
        replication_factor: 1,
        ..Config::default()
    };
    let grid = Grid::start(config, Arc::new(Metrics::new()), Tasks::new())
        .await
        .expect("member starts");
    let server = grid.clone();
    grid.tasks().spawn_to_end(async move {
        let _ = devicegrid::api::serve(server, listener, peer_listener).await;
    });
    (grid, format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_under_write_load_stops_promptly_with_nothing_left_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (grid, url) = start_member(dir.path()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    wait_for(Duration::from_secs(30), "member ready", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(format!("{url}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await
    .expect("ready");

    // Sixteen writers, each with a request always in flight.
    let acked = Arc::new(AtomicUsize::new(0));
    let stop_writers = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (http, url, acked, stop) = (
                http.clone(),
                url.clone(),
                acked.clone(),
                stop_writers.clone(),
            );
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let put = http
                        .put(format!("{url}/v1/maps/load/w{w}-{i}"))
                        .json(&json!({ "i": i }))
                        .send()
                        .await;
                    if put.is_ok_and(|r| r.status().is_success()) {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    wait_for(Duration::from_secs(30), "writes acknowledged", || {
        let acked = acked.clone();
        async move { acked.load(Ordering::Relaxed) >= 200 }
    })
    .await
    .expect("load running");
    assert!(grid.tasks().running() > 0);

    let started = Instant::now();
    let left = grid.stop(Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(left, 0, "tasks still running after stop");
    assert_eq!(grid.tasks().running(), 0);
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    stop_writers.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    // The port is closed: nothing of the member answers any more.
    assert!(http.get(format!("{url}/healthz")).send().await.is_err());
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_writes_is_answered_overloaded_and_memory_stays_flat() {
    // One partition and a short write queue, so a flood fills it.
    let grid = TestGrid::start_with(1, 1, &["--max-queued-writes", "8"]);
    grid.wait_ready(Duration::from_secs(30)).await;
    let url = grid.url(1);
    let pid = grid.pid(1);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let value = json!({ "pad": "x".repeat(16 * 1024) });
    let mut rss = Vec::new();
    let (mut written, mut overloaded) = (Vec::new(), Vec::new());
    for round in 0..6 {
        let puts = (0..600).map(|i| {
            let (http, url, value) = (http.clone(), url.clone(), value.clone());
            async move {
                let key = format!("r{round}-k{i}");
                let resp = http
                    .put(format!("{url}/v1/maps/flood/{key}"))
                    .json(&value)
                    .send()
                    .await
                    .expect("put answered");
                let status = resp.status().as_u16();
                let retry = resp.headers().get("retry-after").is_some();
                let body: Value = resp.json().await.expect("json body");
                (key, status, retry, body)
            }
        });
        for (key, status, retry, body) in futures::future::join_all(puts).await {
            match status {
                200 => written.push(key),
                503 => {
                    assert_eq!(body["error"]["code"], "overloaded", "{body}");
                    assert!(retry, "503 without Retry-After");
                    assert_eq!(body["error"]["partition"], 0, "{body}");
                    overloaded.push(key);
                }
                other => panic!("{key}: {other} {body}"),
            }
        }
        rss.push(rss_kib(pid));
    }
    assert!(!overloaded.is_empty(), "the flood never filled the queue");
    assert!(!written.is_empty(), "nothing was written");
    // Refused means not written; acknowledged means readable.
    for key in overloaded.iter().step_by(7) {
        let got = grid.get(1, "flood", key, false).await.expect("read");
        assert!(got.is_none(), "{key} was refused but written");
    }
    for key in written.iter().step_by(7) {
        let got = grid.get(1, "flood", key, false).await.expect("read");
        assert!(got.is_some(), "{key} was acknowledged but is missing");
    }
    // Memory stays flat across floods: later rounds use no more than the first ones did,
    // with room for allocator noise.
    let early = rss[..2].iter().copied().max().unwrap_or(0);
    let late = rss[rss.len() - 2..].iter().copied().max().unwrap_or(0);
    assert!(
        late <= early + 32 * 1024,
        "member RSS grew across floods: {rss:?} KiB"
    );
    println!(
        "flood: {} written, {} overloaded, RSS per round {rss:?} KiB",
        written.len(),
        overloaded.len()
    );
}
