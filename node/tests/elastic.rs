//! Elastic membership with real processes: members join and drain, moves survive kill -9
//! and SIGSTOP, failed members are replaced, zones and the bootstrap minimum are honoured.
//! Where clients run during the changes, every operation is recorded and the history is
//! checked for linearizability (porcupine); final reads check that no acknowledged write
//! was lost.

mod common;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::history::{history_path, History, Status};
use common::workload::{Client, Workload, WorkloadConfig};
use common::{wait_for, TestGrid};
use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::Value;

const KEYS: u32 = 40;

fn workload(grid: &TestGrid, members: &[u64]) -> (Arc<RwLock<Vec<String>>>, Workload) {
    let urls = Arc::new(RwLock::new(
        members.iter().map(|id| grid.url(*id)).collect(),
    ));
    let cfg = WorkloadConfig {
        keys: KEYS,
        ..WorkloadConfig::default()
    };
    (urls.clone(), Workload::start(urls, cfg))
}

fn set_members(urls: &RwLock<Vec<String>>, grid: &TestGrid, members: &[u64]) {
    *urls.write().expect("urls") = members.iter().map(|id| grid.url(*id)).collect();
}

/// Starts writers on members 1-3 of a fresh 3-member grid, then adds two members and
/// points the writers at all five once they are ready (as behind a Kubernetes Service).
async fn grow_to_five_under_load(
    grid: &mut TestGrid,
) -> (Arc<RwLock<Vec<String>>>, Workload, u64, u64) {
    grid.wait_ready(Duration::from_secs(60)).await;
    let (urls, w) = workload(grid, &[1, 2, 3]);
    wait_writes(&w, 100, "writes before the join").await;
    let (a, b) = (grid.add_member(), grid.add_member());
    grid.wait_ready(Duration::from_secs(60)).await;
    set_members(&urls, grid, &[1, 2, 3, a, b]);
    (urls, w, a, b)
}

async fn wait_writes(w: &Workload, n: u64, what: &str) {
    let start = w.ok_writes();
    let result = wait_for(Duration::from_secs(60), what, || {
        let done = w.ok_writes() >= start + n;
        async move { done }
    })
    .await;
    if let Err(e) = result {
        panic!("{e}; recent errors: {:#?}", w.recent_errors());
    }
}

/// Stops the clients, reads every key once more through `via`, and checks the whole
/// history: every final read returns a value some acknowledged or possible write left, and
/// the history is linearizable.
async fn stop_and_check(name: &str, w: Workload, via: String) {
    eprintln!("{name}: last client errors: {:#?}", w.recent_errors());
    let history: History = tokio::task::spawn_blocking(move || {
        let h = w.stop();
        let client = Client::new(999, "lin", Duration::from_secs(12));
        for k in 0..KEYS {
            let key = format!("lin-{k}");
            for _ in 0..20 {
                let (event, _) = client.get(&h, &via, &key);
                if event.status == Status::Ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        h
    })
    .await
    .expect("final reads");
    let counts = history.counts();
    assert!(
        counts.put.ok > 100 && counts.get.ok > 100,
        "too little load to judge: {counts}"
    );
    let possible = history.possible_final_values();
    let finals: Vec<_> = history
        .events()
        .into_iter()
        .filter(|e| e.client == 999 && e.status == Status::Ok)
        .collect();
    assert_eq!(finals.len() as u32, KEYS, "every key read at the end");
    for e in &finals {
        let allowed = possible.get(&e.key).cloned().unwrap_or_default();
        assert!(
            allowed.is_empty() || allowed.contains(&e.value),
            "{}: final read {:?} is none of {:?}: an acknowledged write was lost",
            e.key,
            e.value,
            allowed
        );
    }
    let path = history_path(name);
    match history.check(&path) {
        Ok(summary) => eprintln!("{name}: {counts}; {summary}"),
        Err(e) => panic!("{name}: history is not linearizable: {e}"),
    }
}

/// Waits until member 2 reports replica moves in progress.
async fn wait_moves_in_progress(grid: &TestGrid) {
    wait_for(Duration::from_secs(60), "moves in progress", || async {
        grid.cluster(2)
            .await
            .is_ok_and(|v| v["balance"]["moves_in_progress"].as_u64() > Some(0))
    })
    .await
    .expect("moves in progress");
}

fn member(view: &Value, id: u64) -> &Value {
    view["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id))
        .unwrap_or(&Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_join_and_drain_under_load() {
    let mut grid = TestGrid::start(3, 32);
    // 3 -> 5: the new members receive replicas and leaderships.
    let (urls, w, a, b) = grow_to_five_under_load(&mut grid).await;
    let view = grid
        .wait_balanced(1, &[1, 2, 3, 4, 5], Duration::from_secs(150))
        .await;
    for id in [a, b] {
        let m = member(&view, id);
        assert!(m["partitions_held"].as_u64() >= Some(18), "{m}");
        assert!(m["partitions_led"].as_u64() >= Some(5), "{m}");
    }
    assert!(view["balance"]["moves_finished"].as_u64() > Some(0));
    wait_writes(&w, 100, "writes after the join").await;

    // 5 -> 3: drained members give everything away, then stop.
    for id in [a, b] {
        let (status, body) = grid
            .request(Method::POST, 1, &format!("/v1/members/{id}/drain"))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    set_members(&urls, &grid, &[1, 2, 3]);
    grid.wait_balanced(2, &[1, 2, 3], Duration::from_secs(150))
        .await;
    for id in [a, b] {
        let (status, m) = grid
            .request(Method::GET, 3, &format!("/v1/members/{id}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(m["state"], "decommissioned", "{m}");
        assert_eq!(m["partitions_held"], 0, "{m}");
        grid.stop(id);
    }
    let (status, body) = grid.request(Method::POST, 1, "/v1/members/3/drain").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "drain_refused", "{body}");
    let (status, body) = grid.request(Method::GET, 1, "/v1/members/77").await;
    assert_eq!(status, 404, "{body}");
    let view = grid.cluster(1).await.expect("view");
    assert_eq!(view["partitions"]["under_replicated"], 0, "{view}");
    wait_writes(&w, 100, "writes after the drain").await;
    stop_and_check("join_and_drain", w, grid.url(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moves_survive_kill9_and_a_paused_leader() {
    let mut grid = TestGrid::start_with(3, 32, &["--max-moves", "2"]);
    let (urls, w, a, _) = grow_to_five_under_load(&mut grid).await;

    // kill -9 of an initial member (source of moves, maybe the metadata leader) mid-move.
    wait_moves_in_progress(&grid).await;
    grid.kill9(1);
    wait_writes(&w, 50, "writes while member 1 is down").await;
    grid.spawn(1);
    // And kill -9 of a move target.
    wait_moves_in_progress(&grid).await;
    grid.kill9(a);
    wait_writes(&w, 50, "writes while a new member is down").await;
    grid.spawn(a);
    let view = grid
        .wait_balanced(2, &[1, 2, 3, 4, 5], Duration::from_secs(180))
        .await;

    // SIGSTOP of the member leading the most partitions, long enough to lose them.
    let busiest = view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .max_by_key(|m| m["partitions_led"].as_u64())
        .and_then(|m| m["id"].as_u64())
        .expect("a leader");
    grid.signal(busiest, Signal::SIGSTOP);
    // Clients move away from it, as behind a load balancer with health checks.
    let others: Vec<u64> = (1..=5).filter(|id| *id != busiest).collect();
    set_members(&urls, &grid, &others);
    let other = if busiest == 1 { 2 } else { 1 };
    wait_for(
        Duration::from_secs(30),
        "the paused member's partitions led elsewhere",
        || {
            let grid = &grid;
            async move {
                grid.cluster(other).await.is_ok_and(|v| {
                    member(&v, busiest)["reachable"] == false
                        && v["partitions"]["without_leader"] == 0
                })
            }
        },
    )
    .await
    .expect("failover");
    wait_writes(&w, 50, "writes while a member is paused").await;
    grid.signal(busiest, Signal::SIGCONT);
    set_members(&urls, &grid, &[1, 2, 3, 4, 5]);
    grid.wait_balanced(other, &[1, 2, 3, 4, 5], Duration::from_secs(120))
        .await;
    wait_writes(&w, 50, "writes after the pause").await;
    stop_and_check("kill9_and_pause", w, grid.url(other)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_members_are_replaced_and_catch_up_when_back() {
    let mut grid = TestGrid::start_with(4, 16, &["--failure-grace-ms", "6000"]);
    grid.wait_ready(Duration::from_secs(60)).await;
    for i in 0..200 {
        let v = serde_json::json!({ "n": i });
        grid.put(1 + i % 4, "devices", &format!("dev-{i}"), &v)
            .await
            .expect("put");
    }
    let held = |v: &Value, id: u64| member(v, id)["partitions_held"].as_u64();
    let before = grid.cluster(1).await.expect("view");

    // A quick restart is not a failure: nothing moves.
    grid.kill9(4);
    grid.spawn(4);
    grid.wait_ready(Duration::from_secs(60)).await;
    let after = grid.cluster(1).await.expect("view");
    assert_eq!(
        after["balance"]["moves_finished"],
        before["balance"]["moves_finished"]
    );
    assert_eq!(held(&after, 4), held(&before, 4));

    // Down past the grace period: its replicas are re-created on the others.
    grid.kill9(4);
    wait_for(
        Duration::from_secs(90),
        "member 4's replicas replaced",
        || {
            let grid = &grid;
            async move {
                grid.cluster(1).await.is_ok_and(|v| {
                    held(&v, 4) == Some(0)
                        && v["balance"]["moves_in_progress"] == 0
                        && v["partitions"]["under_replicated"] == 0
                })
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", grid.log_tail(1)));
    for i in 0..200 {
        let got = grid
            .get(1 + i % 3, "devices", &format!("dev-{i}"), false)
            .await
            .expect("get");
        assert_eq!(got.map(|v| v["value"]["n"].clone()), Some(i.into()));
    }

    // Back: its stale replicas are deleted and it receives its share again.
    grid.spawn(4);
    grid.wait_balanced(1, &[1, 2, 3, 4], Duration::from_secs(120))
        .await;
    for i in 0..200 {
        let got = grid
            .get(4, "devices", &format!("dev-{i}"), false)
            .await
            .expect("get");
        assert_eq!(got.map(|v| v["value"]["n"].clone()), Some(i.into()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_waits_for_min_members_and_spreads_zones() {
    let mut grid = TestGrid::new(6, 24, &["--min-members", "6"]);
    for id in 1..=6u64 {
        let zone = format!("zone-{}", id % 3);
        grid.set_member_args(id, &["--zone", &zone]);
    }
    for id in 1..=5 {
        grid.spawn(id);
    }
    // Five registered members are not enough.
    wait_for(Duration::from_secs(30), "members registered", || {
        let grid = &grid;
        async move {
            grid.cluster(1)
                .await
                .is_ok_and(|v| v["members"].as_array().map(Vec::len) == Some(5))
        }
    })
    .await
    .expect("registration");
    let view = grid.cluster(2).await.expect("view");
    assert_eq!(view["bootstrapped"], false, "{view}");
    grid.spawn(6);
    grid.wait_balanced(1, &[1, 2, 3, 4, 5, 6], Duration::from_secs(60))
        .await;
    let (_, table) = grid.request(Method::GET, 3, "/v1/partitions").await;
    let table = table.as_array().expect("table");
    assert_eq!(table.len(), 24);
    for p in table {
        let zones: std::collections::BTreeSet<u64> = p["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_u64().map(|id| id % 3))
            .collect();
        assert_eq!(zones.len(), 3, "replicas in distinct zones: {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_member_serves_nothing_stale_and_rejoins() {
    let mut grid = TestGrid::with_faults(3, 32, &["--max-moves", "2"]);
    for id in 1..=3 {
        grid.spawn(id);
    }
    grid.wait_ready(Duration::from_secs(60)).await;
    // Clients keep talking to every member, the isolated one included.
    let (urls, w) = workload(&grid, &[1, 2, 3]);
    wait_writes(&w, 100, "writes before the partition").await;
    let a = grid.add_member();
    grid.wait_ready(Duration::from_secs(60)).await;
    set_members(&urls, &grid, &[1, 2, 3, a]);
    wait_moves_in_progress(&grid).await;

    grid.net.as_ref().expect("faults").isolate(1);
    wait_for(
        Duration::from_secs(30),
        "the majority side leads everything",
        || {
            let grid = &grid;
            async move {
                grid.cluster(2).await.is_ok_and(|v| {
                    member(&v, 1)["reachable"] == false && v["partitions"]["without_leader"] == 0
                })
            }
        },
    )
    .await
    .expect("failover");
    wait_writes(&w, 100, "writes during the partition").await;
    // The isolated member answers, but serves no read it cannot prove current.
    for k in 0..5 {
        let got = grid.get(1, "lin", &format!("lin-{k}"), false).await;
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with("503")),
            "read through the isolated member: {got:?}"
        );
    }

    grid.net.as_ref().expect("faults").heal();
    grid.wait_balanced(1, &[1, 2, 3, 4], Duration::from_secs(120))
        .await;
    wait_writes(&w, 100, "writes after the partition").await;
    stop_and_check("partition", w, grid.url(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_move_is_reported_and_then_finishes() {
    let mut grid = TestGrid::start_with(
        3,
        16,
        &["--max-moves", "1", "--move-stalled-after-ms", "1500"],
    );
    grid.wait_ready(Duration::from_secs(60)).await;
    let new = grid.add_member();
    grid.wait_ready(Duration::from_secs(60)).await;
    wait_for(Duration::from_secs(60), "a move to the new member", || {
        let grid = &grid;
        async move {
            grid.cluster(1).await.is_ok_and(|v| {
                v["moves"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["to"] == new))
            })
        }
    })
    .await
    .expect("moves start");
    // The target stops answering (within the failure grace period): a move to it cannot
    // finish, and says so in the view and the metrics. (A move whose target had already
    // caught up may still finish without it; the next one to it stalls.)
    grid.signal(new, Signal::SIGSTOP);
    wait_for(
        Duration::from_secs(60),
        "a move to the paused member reported stalled",
        || {
            let grid = &grid;
            async move {
                let stalled_to_new = grid.cluster(1).await.is_ok_and(|v| {
                    v["balance"]["moves_stalled"] == 1
                        && v["moves"].as_array().is_some_and(|ms| {
                            ms.iter().any(|m| m["stalled"] == true && m["to"] == new)
                        })
                });
                let metrics = grid.metrics(2).await;
                stalled_to_new
                    && common::gauge(&metrics, r#"devicegrid_replica_moves{state="stalled"}"#)
                        == Some(1.0)
            }
        },
    )
    .await
    .expect("stall reported");
    grid.signal(new, Signal::SIGCONT);
    grid.wait_balanced(1, &[1, 2, 3, 4], Duration::from_secs(120))
        .await;
}
