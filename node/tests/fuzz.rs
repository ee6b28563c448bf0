//! Property-based fuzzing, bounded in cases: every decoder of member-to-member messages
//! (peer batches and answers, metadata commands, map batches) takes arbitrary and mutated
//! bytes without panicking, and a live member answers arbitrary HTTP requests without a
//! 5xx and stays up.

mod common;

use std::time::Duration;

use common::TestGrid;
use devicegrid::storage::{decode, encode};
use devicegrid_proto::entries::{GroupId, MapBatch, MapOp, MetaCall, MetaCommand};
use devicegrid_proto::peer::{PeerRequest, PeerResponse, WireError};
use proptest::prelude::*;

/// A valid batch with one request of most kinds, to mutate.
fn sample_batch() -> Vec<u8> {
    let reqs = vec![
        PeerRequest::Ping { from: 3 },
        PeerRequest::Status,
        PeerRequest::Elect {
            group: GroupId::Partition(7),
        },
        PeerRequest::Write {
            group: GroupId::Partition(1),
            ops: vec![MapOp::Put {
                map: "devices".into(),
                key: "d-1".into(),
                value: "{\"a\":[1,2,{\"b\":null}]}".into(),
                if_version: Some(3),
                ttl_ms: Some(1000),
            }],
        },
        PeerRequest::Read {
            group: GroupId::Partition(2),
            keys: vec![("devices".into(), "d-2".into())],
            stale: true,
        },
        PeerRequest::Meta {
            call: MetaCall::Propose(MetaCommand::Drain { id: 2 }),
            forwarded: false,
        },
    ];
    encode(&reqs).expect("encode")
}

fn sample_answers() -> Vec<u8> {
    let answers = vec![
        PeerResponse::Pong {
            id: 1,
            bootstrapped: true,
        },
        PeerResponse::Write(Err(WireError::NotLeader { leader: Some(2) })),
        PeerResponse::Invalid("x".into()),
        PeerResponse::Accepted,
    ];
    encode(&answers).expect("encode")
}

/// Decodes `bytes` as every peer and log type; only the absence of a panic matters.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<Vec<PeerRequest>>(bytes);
    let _ = decode::<Vec<PeerResponse>>(bytes);
    let _ = decode::<MetaCommand>(bytes);
    let _ = decode::<MapBatch>(bytes);
    if let Ok(reqs) = decode::<Vec<PeerRequest>>(bytes) {
        // Whatever decodes also survives the input rules.
        for r in reqs {
            if let PeerRequest::Write { ops, .. } = r {
                for op in ops {
                    let _ = devicegrid::structures::check::check_op(&op);
                }
            }
        }
    }
}

/// Applies byte edits (position, new byte; or truncation) to `base`.
fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut b = base.to_vec();
    for (at, byte) in edits {
        if !b.is_empty() {
            let i = at % b.len();
            b[i] = *byte;
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn decoders_take_mutated_messages(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<usize>()),
        answers in any::<bool>(),
    ) {
        let base = if answers { sample_answers() } else { sample_batch() };
        decode_all(&mutate(&base, &edits, cut));
    }
}

/// One arbitrary client request.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("devices".to_string()),
        Just("d-1".to_string()),
        Just("%00".to_string()),
        Just("%ff%fe".to_string()),
        Just("..".to_string()),
        Just("a%2Fb".to_string()),
        "[a-zA-Z0-9_.~-]{0,40}",
        "[0-9]{1,25}",
        "[a-z]{600,700}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let known = prop_oneof![
        Just("/v1/maps/{}/{}".to_string()),
        Just("/v1/maps/{}/{}/process".to_string()),
        Just("/v1/batch/maps/{}/put".to_string()),
        Just("/v1/batch/maps/{}/get".to_string()),
        Just("/v1/members/{}".to_string()),
        Just("/v1/members/{}/drain".to_string()),
        Just("/v1/admin/users/{}".to_string()),
        Just("/v1/admin/roles/{}".to_string()),
        Just("/v1/{}/{}".to_string()),
        Just("/internal/v1/peer".to_string()),
    ];
    let query = prop_oneof![
        Just(String::new()),
        Just("?consistency=stale".to_string()),
        Just("?consistency=maybe".to_string()),
        Just("?ttl=-1".to_string()),
        Just("?ttl=99999999999999999999".to_string()),
        Just("?ttl=5&x=1".to_string()),
        "\\?[a-z=&%0-9]{0,30}",
    ];
    (known, segment(), segment(), query).prop_map(|(t, a, b, q)| {
        let mut p = t.replacen("{}", &a, 1).replacen("{}", &b, 1);
        if p.contains("//") {
            p = p.replace("//", "/x/");
        }
        p + &q
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"{\"processor\":\"increment\",\"args\":{\"field\":\"/n\",\"by\":1e308}}".to_vec()),
        Just(b"{\"processor\":\"shadow\",\"args\":{\"state\":{\"desired\":[]}}}".to_vec()),
        Just(b"{\"processor\":\"merge_patch\",\"args\":{\"patch\":{\"a\":{\"b\":null}}}}".to_vec()),
        Just(
            b"{\"processor\":\"update_if\",\"args\":{\"field\":\"~1\",\"equals\":1,\"patch\":1}}"
                .to_vec()
        ),
        Just(b"{\"entries\":[{\"key\":\"\",\"value\":1}]}".to_vec()),
        Just(b"{\"keys\":[\"a\",\"a\"],\"consistency\":\"x\"}".to_vec()),
        Just(b"{\"roles\":[\"admin\",\"x\"]}".to_vec()),
        Just(b"{\"grants\":[]}".to_vec()),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

fn request() -> impl Strategy<Value = Req> {
    let method = prop_oneof![
        Just("GET"),
        Just("PUT"),
        Just("POST"),
        Just("DELETE"),
        Just("PATCH"),
        Just("OPTIONS")
    ];
    let header = prop_oneof![
        "[ -~]{0,30}".prop_map(|v| ("if-match", v)),
        Just(("if-none-match", "*".to_string())),
        Just(("if-match", "\"18446744073709551616\"".to_string())),
        Just(("content-type", "application/json".to_string())),
        "[ -~]{0,30}".prop_map(|v| ("authorization", v)),
    ];
    (
        method,
        path(),
        proptest::collection::vec(header, 0..3),
        body(),
    )
        .prop_map(|(method, path, headers, body)| Req {
            method,
            path,
            headers,
            body,
        })
}

#[test]
fn the_api_answers_arbitrary_requests_without_a_server_error() {
    let grid = TestGrid::start(1, 4);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(grid.wait_ready(Duration::from_secs(60)));
    let base = grid.url(1);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    runner
        .run(&request(), |r| {
            let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
            let mut req = http
                .request(method, format!("{base}{}", r.path))
                .body(r.body.clone());
            for (k, v) in &r.headers {
                req = req.header(*k, v.as_str());
            }
            let Ok(req) = req.build() else {
                // reqwest refused to build it (e.g. a header value it cannot send).
                return Ok(());
            };
            let resp = http.execute(req).map_err(|e| {
                TestCaseError::fail(format!("{} {}: no answer: {e}", r.method, r.path))
            })?;
            let status = resp.status();
            prop_assert!(
                !status.is_server_error(),
                "{} {} -> {status}: {}",
                r.method,
                r.path,
                resp.text().unwrap_or_default()
            );
            Ok(())
        })
        .expect("no server errors");
    let alive = http.get(format!("{base}/healthz")).send().expect("alive");
    assert!(alive.status().is_success());
}
