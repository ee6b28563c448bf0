//! The peer port as an attacker finds it: only members of the grid, proven by a certificate
//! from its CA, get an answer; a member's messages may only speak for that member; forwarded
//! operations meet the API's rules; bodies are bounded before they are read. The client port
//! no longer serves peer traffic. Every refusal has a positive control that passes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{within, TestGrid};
use devicegrid::storage::{decode, encode};
use devicegrid_pki::Pem;
use devicegrid_proto::entries::{GroupId, MapOp, MetaCall, MetaCommand};
use devicegrid_proto::partition_of;
use devicegrid_proto::peer::{PeerRequest, PeerResponse, RaftRpc, PEER_PATH};
use openraft::raft::AppendEntriesRequest;
use openraft::Vote;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// A TLS client that trusts the grid's CA and presents `identity` (or no certificate).
fn client(grid_ca: &str, identity: Option<&Pem>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(grid_ca.as_bytes()).expect("ca"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some(p) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(p.cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(p.key.as_bytes()).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Sends one peer batch; the answers, or why there were none.
async fn send(
    http: &reqwest::Client,
    url: &str,
    reqs: &[PeerRequest],
) -> Result<Vec<PeerResponse>, String> {
    let resp = http
        .post(url)
        .body(encode(reqs).expect("encode"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    // One frame per answer, in the order they were ready.
    let mut frames = devicegrid::transport::frames::Frames::default();
    frames.push(&body);
    let mut answers: Vec<Option<PeerResponse>> = (0..reqs.len()).map(|_| None).collect();
    while let Some((index, bytes)) = frames.next_frame().map_err(|e| e.to_string())? {
        let slot = answers
            .get_mut(index as usize)
            .ok_or_else(|| format!("answer to request {index} of {}", reqs.len()))?;
        *slot = Some(decode(bytes).map_err(|e| e.to_string())?);
    }
    answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.ok_or_else(|| format!("request {i} was not answered")))
        .collect()
}

/// A join of member 99, which no certificate here names.
fn join_99() -> PeerRequest {
    PeerRequest::Meta {
        call: MetaCall::Propose(MetaCommand::Join {
            id: 99,
            addr: "127.0.0.1:1".into(),
            zone: None,
            client_addr: None,
        }),
        forwarded: false,
    }
}

fn invalid(r: &PeerResponse) -> bool {
    matches!(r, PeerResponse::Invalid(_))
}

fn put(map: &str, key: &str, value: String) -> MapOp {
    MapOp::Put {
        map: map.into(),
        key: key.into(),
        value,
        if_version: None,
        ttl_ms: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_speak_on_the_peer_port_and_only_for_themselves() {
    within(180, async {
        let partitions = 8;
        let grid = TestGrid::start(3, partitions);
        grid.wait_ready(Duration::from_secs(90)).await;
        let read = |f: &str| std::fs::read_to_string(grid.pki().join(f)).expect("pki file");
        let ca = Pem {
            cert: read("ca.crt"),
            key: read("ca.key"),
        };
        let url = format!("https://127.0.0.1:{}{PEER_PATH}", grid.peer_ports[0]);
        let ping = |from| PeerRequest::Ping { from };

        // Control: a certificate of member 3 from the grid's CA is answered.
        let member3 =
            devicegrid_pki::issue_member(&ca, "devicegrid", 3, &[], devicegrid_pki::days(1))
                .expect("cert");
        let as3 = client(&ca.cert, Some(&member3));
        let pong = send(&as3, &url, &[ping(3)])
            .await
            .expect("member 3 is answered");
        assert!(
            matches!(pong[0], PeerResponse::Pong { id: 1, .. }),
            "{pong:?}"
        );

        // No certificate, a certificate of another CA, plain HTTP: no answer at all.
        let stranger_ca =
            devicegrid_pki::new_ca("devicegrid", devicegrid_pki::days(1)).expect("ca");
        let forged = devicegrid_pki::issue_member(
            &stranger_ca,
            "devicegrid",
            99,
            &[],
            devicegrid_pki::days(1),
        )
        .expect("forged");
        for (who, http) in [
            ("no certificate", client(&ca.cert, None)),
            ("another CA's certificate", client(&ca.cert, Some(&forged))),
        ] {
            let r = send(
                &http,
                &url,
                &[
                    join_99(),
                    PeerRequest::Elect {
                        group: GroupId::Partition(0),
                    },
                ],
            )
            .await;
            assert!(r.is_err(), "{who}: {r:?}");
        }
        let plain = reqwest::Client::new()
            .post(format!(
                "http://127.0.0.1:{}{PEER_PATH}",
                grid.peer_ports[0]
            ))
            .body(encode(&[ping(99)]).expect("encode"))
            .send()
            .await;
        assert!(
            plain.is_err() || !plain.as_ref().is_ok_and(|r| r.status().is_success()),
            "plain HTTP: {plain:?}"
        );
        // A certificate of another grid (same CA, other name) is refused too.
        let other_grid =
            devicegrid_pki::issue_member(&ca, "other", 3, &[], devicegrid_pki::days(1))
                .expect("cert");
        assert!(send(&client(&ca.cert, Some(&other_grid)), &url, &[ping(3)])
            .await
            .is_err());

        // Member 3 may not speak for others.
        let append_as_1 = PeerRequest::Raft {
            group: GroupId::Meta,
            rpc: RaftRpc::Append(AppendEntriesRequest {
                vote: Vote::new_committed(1_000, 1),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            }),
        };
        let answers = send(&as3, &url, &[ping(1), append_as_1, join_99()])
            .await
            .expect("answered");
        assert!(answers.iter().all(invalid), "{answers:?}");

        // Forwarded writes meet the API's rules and their partition.
        let key_in = |p: u32| {
            (0..)
                .map(|i| format!("k{i}"))
                .find(|k| partition_of(k, partitions) == p)
                .expect("a key")
        };
        let (k0, k1) = (key_in(0), key_in(1));
        let write = |ops| PeerRequest::Write {
            group: GroupId::Partition(0),
            ops,
        };
        let bad = [
            write(vec![put("", &k0, "1".into())]),
            write(vec![put("devices", &k0, "{".into())]),
            write(vec![put(
                "devices",
                &k0,
                format!("\"{}\"", "x".repeat(5 << 20)),
            )]),
            write(vec![put("devices", &k1, "1".into())]),
            write(vec![]),
            PeerRequest::Read {
                group: GroupId::Partition(0),
                keys: vec![("devices".into(), k1.clone())],
                stale: true,
            },
        ];
        let answers = send(&as3, &url, &bad).await.expect("answered");
        assert!(answers.iter().all(invalid), "{answers:?}");
        // Control: a well-formed forwarded read of partition 0 is served.
        let ok = send(
            &as3,
            &url,
            &[PeerRequest::Read {
                group: GroupId::Partition(0),
                keys: vec![("devices".into(), k0.clone())],
                stale: true,
            }],
        )
        .await
        .expect("answered");
        assert!(!invalid(&ok[0]), "{ok:?}");

        // A body over the limit is refused before it is read: 413, or the connection is
        // closed while the client is still sending (a decoded body would answer 400).
        match as3.post(&url).body(vec![0u8; 40 << 20]).send().await {
            Ok(r) => assert_eq!(r.status(), reqwest::StatusCode::PAYLOAD_TOO_LARGE),
            Err(e) => assert!(e.is_request(), "{e:?}"),
        }

        // The client port serves no peer traffic.
        let on_client_port = grid
            .http
            .post(format!("{}{PEER_PATH}", grid.url(1)))
            .body(encode(&[ping(1)]).expect("encode"))
            .send()
            .await
            .expect("answered");
        assert_eq!(on_client_port.status(), reqwest::StatusCode::NOT_FOUND);

        // Nothing of the above reached the grid: member 99 is unknown, writes still work.
        let members: serde_json::Value = grid
            .http
            .get(format!("{}/v1/members", grid.url(2)))
            .send()
            .await
            .expect("members")
            .json()
            .await
            .expect("json");
        let ids: Vec<u64> = members
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["id"].as_u64()).collect())
            .unwrap_or_default();
        assert_eq!(ids, vec![1, 2, 3], "{members}");
        grid.put(2, "devices", &k0, &json!({"ok": true}))
            .await
            .expect("write after the attack");
    })
    .await;
}
