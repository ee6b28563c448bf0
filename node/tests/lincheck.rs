//! The linearizability checker accepts linearizable histories and rejects the others, so a
//! passing cluster check means something. No network: histories are written by hand.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::history::{check_linearizable, Event, History, Op, Status};

fn ev(client: u32, op: Op, key: &str, value: Option<&str>, call: i64, ret: i64) -> Event {
    Event {
        client,
        op,
        key: key.to_string(),
        value: value.map(str::to_string),
        call,
        ret,
        status: Status::Ok,
    }
}

fn unknown(e: Event) -> Event {
    Event {
        status: Status::Unknown,
        ..e
    }
}

fn failed(e: Event) -> Event {
    Event {
        status: Status::Fail,
        ..e
    }
}

fn history(events: Vec<Event>) -> History {
    let h = History::new();
    for e in events {
        h.record(e);
    }
    h
}

fn check(dir: &Path, name: &str, h: &History) -> Result<String, String> {
    let path = dir.join(format!("{name}.jsonl"));
    h.write_jsonl(&path).expect("write history");
    check_linearizable(&path)
}

#[test]
fn accepts_linearizable_and_rejects_violations() {
    let dir = tempfile::tempdir().expect("tempdir");

    let ok = history(vec![
        ev(0, Op::Get, "lin-1", None, 0, 5),
        ev(0, Op::Put, "lin-1", Some("c0-1"), 10, 20),
        // Concurrent with the put: either state may be seen.
        ev(1, Op::Get, "lin-1", None, 12, 18),
        ev(2, Op::Get, "lin-1", Some("c0-1"), 15, 25),
        ev(1, Op::Put, "lin-1", Some("c1-1"), 30, 40),
        ev(2, Op::Get, "lin-1", Some("c1-1"), 41, 50),
        ev(0, Op::Delete, "lin-1", None, 60, 70),
        ev(0, Op::Get, "lin-1", None, 71, 80),
        // A failed put did not happen.
        failed(ev(1, Op::Put, "lin-2", Some("c1-2"), 0, 10)),
        ev(2, Op::Get, "lin-2", None, 20, 30),
    ]);
    let summary = check(dir.path(), "ok", &ok).expect("linearizable history accepted");
    assert!(summary.contains("linearizable"), "{summary}");

    // A stale read: the newer put completed before the read started.
    let stale = history(vec![
        ev(0, Op::Put, "lin-1", Some("c0-1"), 0, 10),
        ev(0, Op::Put, "lin-1", Some("c0-2"), 20, 30),
        ev(1, Op::Get, "lin-1", Some("c0-1"), 40, 50),
        ev(1, Op::Put, "lin-2", Some("c1-1"), 0, 10),
    ]);
    let err = check(dir.path(), "stale", &stale).expect_err("stale read rejected");
    assert!(err.contains("lin-1") && !err.contains("lin-2"), "{err}");
    assert!(err.contains("stale.html"), "{err}");
    assert!(
        dir.path().join("stale.html").exists(),
        "visualization written"
    );

    // A read of a value that no put had written before the read returned.
    let from_future = history(vec![
        ev(0, Op::Get, "lin-1", Some("c1-1"), 0, 10),
        ev(1, Op::Put, "lin-1", Some("c1-1"), 11, 20),
    ]);
    check(dir.path(), "future", &from_future).expect_err("read from the future rejected");

    // A read of a failed write.
    let failed_write = history(vec![
        failed(ev(0, Op::Put, "lin-1", Some("c0-1"), 0, 10)),
        ev(1, Op::Get, "lin-1", Some("c0-1"), 20, 30),
    ]);
    check(dir.path(), "failed", &failed_write).expect_err("read of a failed write rejected");
}

#[test]
fn unknown_write_may_land_late() {
    let dir = tempfile::tempdir().expect("tempdir");
    let late = history(vec![
        unknown(ev(0, Op::Put, "lin-1", Some("c0-1"), 0, 10)),
        ev(0, Op::Put, "lin-1", Some("c0-2"), 20, 30),
        ev(1, Op::Get, "lin-1", Some("c0-2"), 40, 50),
        // The unknown put took effect only now.
        ev(1, Op::Get, "lin-1", Some("c0-1"), 1_000, 1_010),
        // An unknown get says nothing.
        unknown(ev(2, Op::Get, "lin-1", Some("x"), 1_020, 1_030)),
    ]);
    check(dir.path(), "late", &late).expect("a late unknown write is acceptable");

    // But not before it was sent, and not twice.
    let early = history(vec![
        ev(1, Op::Get, "lin-1", Some("c0-1"), 0, 5),
        unknown(ev(0, Op::Put, "lin-1", Some("c0-1"), 10, 20)),
    ]);
    check(dir.path(), "early", &early).expect_err("an unknown write seen before it was sent");
    let twice = history(vec![
        unknown(ev(0, Op::Put, "lin-1", Some("c0-1"), 0, 10)),
        ev(1, Op::Get, "lin-1", Some("c0-1"), 20, 30),
        ev(1, Op::Put, "lin-1", Some("c1-1"), 40, 50),
        ev(1, Op::Get, "lin-1", Some("c0-1"), 60, 70),
        ev(1, Op::Get, "lin-1", Some("c1-1"), 80, 90),
    ]);
    check(dir.path(), "twice", &twice).expect_err("an unknown write applied twice");
}

#[test]
fn records_from_threads_and_summarizes() {
    let h = Arc::new(History::new());
    let threads: Vec<_> = (0..4u32)
        .map(|c| {
            let h = h.clone();
            std::thread::spawn(move || {
                for n in 0..50i64 {
                    let call = h.now_ns();
                    let status = [Status::Ok, Status::Fail, Status::Unknown][n as usize % 3];
                    let value = format!("c{c}-{n}");
                    let e = ev(c, Op::Put, "lin-1", Some(&value), call, h.now_ns());
                    h.record(Event { status, ..e });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("recorder thread");
    }
    let counts = h.counts();
    assert_eq!(
        (counts.put.ok, counts.put.fail, counts.put.unknown),
        (68, 68, 64)
    );
    assert_eq!(h.len(), 200);

    let h = history(vec![
        ev(0, Op::Put, "a", Some("c0-1"), 0, 10),
        ev(0, Op::Put, "a", Some("c0-2"), 20, 30),
        ev(1, Op::Put, "a", Some("c1-1"), 25, 40),
        unknown(ev(2, Op::Put, "a", Some("c2-1"), 1, 2)),
        failed(ev(2, Op::Put, "a", Some("c2-2"), 3, 4)),
        unknown(ev(0, Op::Put, "b", Some("c0-3"), 0, 10)),
    ]);
    assert_eq!(
        h.acknowledged_writes().get("a").map(String::as_str),
        Some("c1-1")
    );
    assert!(!h.acknowledged_writes().contains_key("b"));
    let finals = h.possible_final_values();
    let set = |v: &[Option<&str>]| -> BTreeSet<Option<String>> {
        v.iter().map(|s| s.map(str::to_string)).collect()
    };
    assert_eq!(
        finals["a"],
        set(&[Some("c0-2"), Some("c1-1"), Some("c2-1")])
    );
    assert_eq!(finals["b"], set(&[None, Some("c0-3")]));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("h.jsonl");
    h.write_jsonl(&path).expect("write");
    let text = std::fs::read_to_string(&path).expect("read");
    let first = text.lines().next().expect("a line");
    assert_eq!(
        first,
        r#"{"client":0,"op":"put","key":"a","value":"c0-1","call":0,"ret":10,"status":"ok"}"#
    );
}
