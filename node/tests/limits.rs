//! The client port under hostile clients: a slow request head (slowloris) and an idle
//! connection are cut after the header timeout, connections beyond the cap wait for a free
//! slot, a client over its request rate gets 429 `rate_limited` with `Retry-After`; and TLS
//! on the client port, with optional client certificates, picks up a rotated certificate
//! without a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{within, TestGrid};
use devicegrid_pki::Pem;
use devicegrid_testkit::until;

/// Seconds until the server closes `s` (reads return 0 or fail), sending `trickle` bytes
/// one at a time meanwhile; `None` if still open after `limit`.
fn closed_after(mut s: TcpStream, trickle: &[u8], limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut sent = 0;
    while start.elapsed() < limit {
        if sent < trickle.len() {
            if s.write_all(&trickle[sent..=sent]).is_err() {
                return Some(start.elapsed());
            }
            sent += 1;
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

fn request(port: u16, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_excess_clients_are_cut_capped_and_limited() {
    within(120, async {
        let grid = TestGrid::start_with(
            1,
            4,
            &[
                "--header-timeout-ms",
                "2000",
                "--max-connections",
                "8",
                "--rate-limit-per-second",
                "5",
                "--rate-limit-burst",
                "5",
            ],
        );
        grid.wait_ready(Duration::from_secs(60)).await;
        let port = grid.ports[0];
        let addr = ("127.0.0.1", port);
        let limit = Duration::from_secs(8);

        // A head sent one byte every 200 ms (it would take 10 s) and a silent connection are
        // both closed after the 2 s header timeout, with a margin.
        let slow = tokio::task::spawn_blocking(move || {
            let trickle = b"GET /v1/cluster HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            closed_after(TcpStream::connect(addr).expect("connect"), trickle, limit)
        });
        let idle = tokio::task::spawn_blocking(move || {
            closed_after(TcpStream::connect(addr).expect("connect"), b"", limit)
        });
        for (what, cut) in [("slowloris", slow.await), ("idle", idle.await)] {
            let cut = cut.expect("join").unwrap_or_else(|| panic!("{what} connection held past {limit:?}"));
            assert!(cut >= Duration::from_millis(1500), "{what} cut too early: {cut:?}");
        }

        // Eight connections held open fill the cap: a ninth request waits in the backlog
        // until they close, then it is answered.
        let held: Vec<TcpStream> = (0..8)
            .map(|_| TcpStream::connect(addr).expect("connect"))
            .collect();
        // The backlog is first in, first out: the held eight are accepted before the ninth.
        let mut ninth = TcpStream::connect(addr).expect("connect");
        ninth.write_all(&request(port, "/healthz")).expect("send");
        ninth
            .set_read_timeout(Some(Duration::from_millis(800)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let early = ninth.read(&mut buf);
        assert!(early.is_err(), "answered beyond the connection cap: {early:?}");
        drop(held);
        ninth
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = ninth.read(&mut buf).expect("answered once slots are free");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buf[..n]));

        // Over the rate: 429 with Retry-After; probes are never limited.
        let mut limited = 0;
        let mut served = 0;
        for _ in 0..30 {
            let r = grid
                .http
                .get(format!("{}/v1/maps/devices/nobody", grid.url(1)))
                .send()
                .await
                .expect("answered");
            if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                assert!(r.headers().contains_key("retry-after"));
                let body: serde_json::Value = r.json().await.expect("json");
                assert_eq!(body["error"]["code"], "rate_limited");
                limited += 1;
            } else {
                served += 1;
            }
        }
        assert!(limited > 0 && served >= 5, "limited {limited}, served {served}");
        let probe = grid.http.get(format!("{}/readyz", grid.url(1))).send().await.expect("probe");
        assert!(probe.status().is_success());
        // The rate refills.
        until(Duration::from_secs(10), Duration::from_millis(300), || async {
            let r = grid
                .http
                .get(format!("{}/v1/maps/devices/nobody", grid.url(1)))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                Ok(())
            } else {
                Err(r.status().to_string())
            }
        })
        .await
        .expect("served again after a while");
    })
    .await;
}

fn write_pair(dir: &Path, name: &str, pem: &Pem) {
    // Write beside, then rename: the member never reads a half-written file.
    for (ext, text) in [("crt", &pem.cert), ("key", &pem.key)] {
        let tmp = dir.join(format!("{name}.{ext}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(format!("{name}.{ext}"))).expect("rename");
    }
}

fn https(ca: &str, identity: Option<&Pem>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).expect("ca"))
        .tls_info(true)
        .timeout(Duration::from_secs(5));
    if let Some(p) = identity {
        let both = format!("{}{}", p.cert, p.key);
        b = b.identity(reqwest::Identity::from_pem(both.as_bytes()).expect("identity"));
    }
    b.build().expect("client")
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_serves_rotated_certificates_and_checks_client_certificates() {
    within(120, async {
        let certs = tempfile::tempdir().expect("tempdir");
        let server_ca = devicegrid_pki::new_ca("clients", devicegrid_pki::days(1)).expect("ca");
        let client_ca = devicegrid_pki::new_ca("clients", devicegrid_pki::days(1)).expect("ca");
        let host = ["127.0.0.1".to_string()];
        let first =
            devicegrid_pki::issue_member(&server_ca, "clients", 1, &host, devicegrid_pki::days(1))
                .expect("cert");
        write_pair(certs.path(), "server", &first);
        std::fs::write(certs.path().join("client-ca.crt"), &client_ca.cert).expect("ca");
        let p = |f: &str| certs.path().join(f).to_str().expect("utf-8").to_string();
        let mut grid = TestGrid::new(1, 4, &[]);
        grid.set_member_args(
            1,
            &[
                "--tls-cert",
                &p("server.crt"),
                "--tls-key",
                &p("server.key"),
                "--tls-client-ca",
                &p("client-ca.crt"),
            ],
        );
        grid.spawn(1);
        let url = format!("https://127.0.0.1:{}/readyz", grid.ports[0]);
        let anonymous = https(&server_ca.cert, None);
        let served_cert = |client: reqwest::Client| {
            let url = url.clone();
            async move {
                let r = client
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                if !r.status().is_success() {
                    return Err(r.status().to_string());
                }
                r.extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|t| t.peer_certificate().map(<[u8]>::to_vec))
                    .ok_or_else(|| "no TLS info".to_string())
            }
        };
        let got = until(Duration::from_secs(60), Duration::from_millis(300), || {
            served_cert(anonymous.clone())
        })
        .await
        .expect("served over TLS");
        assert_eq!(got, der(&first.cert));

        // Plain HTTP to the TLS port gets no answer.
        let plain = grid
            .http
            .get(format!("http://127.0.0.1:{}/readyz", grid.ports[0]))
            .send()
            .await;
        assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

        // Client certificates: one from the client CA is accepted, one from another CA is not.
        let good =
            devicegrid_pki::issue_member(&client_ca, "clients", 7, &[], devicegrid_pki::days(1))
                .expect("cert");
        let stranger = devicegrid_pki::new_ca("clients", devicegrid_pki::days(1)).expect("ca");
        let bad =
            devicegrid_pki::issue_member(&stranger, "clients", 7, &[], devicegrid_pki::days(1))
                .expect("cert");
        assert!(served_cert(https(&server_ca.cert, Some(&good)))
            .await
            .is_ok());
        assert!(served_cert(https(&server_ca.cert, Some(&bad)))
            .await
            .is_err());

        // Rotation: new files are served to new connections, without a restart.
        let second =
            devicegrid_pki::issue_member(&server_ca, "clients", 1, &host, devicegrid_pki::days(1))
                .expect("cert");
        write_pair(certs.path(), "server", &second);
        until(
            Duration::from_secs(15),
            Duration::from_millis(300),
            || async {
                // A new client: a new connection, a new handshake.
                let got = served_cert(https(&server_ca.cert, None)).await?;
                if got == der(&second.cert) {
                    Ok(())
                } else {
                    Err("still the old certificate".to_string())
                }
            },
        )
        .await
        .expect("rotated certificate served");
        // A broken file leaves the current certificate in place (and says so in the log).
        std::fs::write(certs.path().join("server.crt"), "not a certificate").expect("write");
        let log = grid.dir.path().join("member-1/member.log");
        until(
            Duration::from_secs(15),
            Duration::from_millis(300),
            || async {
                let got = served_cert(https(&server_ca.cert, None)).await?;
                assert_eq!(got, der(&second.cert), "the broken file is not served");
                let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
                if text.contains("certificate not reloaded") {
                    Ok(())
                } else {
                    Err("the broken file was not looked at yet".to_string())
                }
            },
        )
        .await
        .expect("broken file refused");
    })
    .await;
}

/// `tls_self_issued`: the client port serves the member's own certificate from the grid's CA,
/// naming the client port's hosts, and a new one before the old expires, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_issued_client_certificate_is_renewed_without_restart() {
    within(120, async {
        let mut grid = TestGrid::new(1, 4, &[]);
        grid.set_member_args(
            1,
            &[
                "--tls-self-issued",
                "true",
                "--tls-hosts",
                "fleet.iot.svc",
                "--cert-lifetime-secs",
                "6",
            ],
        );
        grid.spawn(1);
        let ca = std::fs::read(grid.pki().join("ca.crt")).expect("ca");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], grid.ports[0]));
        // A new client each time (a new handshake), checking the host name it dials.
        let served = || async {
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca"))
                .resolve("fleet.iot.svc", addr)
                .tls_info(true)
                .timeout(Duration::from_secs(5))
                .build()
                .expect("client");
            let url = format!("https://fleet.iot.svc:{}/readyz", addr.port());
            let r = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{e:?}"))?;
            r.extensions()
                .get::<reqwest::tls::TlsInfo>()
                .and_then(|t| t.peer_certificate().map(<[u8]>::to_vec))
                .ok_or_else(|| "no TLS info".to_string())
        };
        let first = until(Duration::from_secs(60), Duration::from_millis(300), served)
            .await
            .expect("served over TLS under the client Service's name");
        let named = devicegrid_pki::member_identity(&first).expect("parse");
        assert_eq!(
            named.map(|m| (m.cluster, m.id)),
            Some(("devicegrid".into(), 1))
        );
        let renewed = until(
            Duration::from_secs(20),
            Duration::from_millis(300),
            || async {
                let now = served().await?;
                if now != first {
                    Ok(now)
                } else {
                    Err("still the first certificate".to_string())
                }
            },
        )
        .await
        .expect("a new certificate after two thirds of its lifetime");
        assert!(devicegrid_pki::member_identity(&renewed)
            .expect("parse")
            .is_some());
        assert!(grid.running(1), "no restart: {}", grid.log_tail(1));
        assert!(grid.log_tail(1).contains("member certificate renewed"));
    })
    .await;
}
