//! The `devicegrid` command line: `dev` resumes its grid, bad flags fail loudly.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use devicegrid_testkit::free_run;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs `devicegrid dev` until it prints `ready`; returns the child and the lines before it.
fn start_dev(dir: &std::path::Path, base: u16) -> (std::process::Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
        .args([
            "dev",
            "--nodes",
            "3",
            "--partitions",
            "8",
            "--base-port",
            &base.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info,openraft=error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line == "ready" => return (child, lines),
            Ok(line) => lines.push(line),
            Err(_) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("dev was not ready within 90 s; printed {lines:?}");
}

fn stop_dev(dir: &std::path::Path, mut child: std::process::Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "dev exited with {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let logs: Vec<String> = (1..=4)
                .map(|id| {
                    let text = std::fs::read_to_string(dir.join(format!("member-{id}/member.log")))
                        .unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    format!(
                        "--- member {id}\n{}",
                        lines[lines.len().saturating_sub(15)..].join("\n")
                    )
                })
                .collect();
            panic!(
                "dev did not stop within 30 s of SIGINT\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dev_runs_members_and_resumes_them_with_their_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_run(3);
    let (child, lines) = start_dev(dir.path(), base);
    for (i, line) in lines.iter().take(3).enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 5, "{line}");
        assert_eq!(
            (f[0], f[1], f[2]),
            ("member", (i + 1).to_string().as_str(), "pid")
        );
        assert_eq!(f[4], format!("http://127.0.0.1:{}", base + i as u16));
        assert!(f[3].parse::<u32>().is_ok(), "{line}");
    }
    let http = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/maps/devices/dev-1", base + 1);
    let r = http.put(&url).body(r#"{"fw":"2.0"}"#).send().expect("put");
    assert_eq!(r.status(), 200);
    stop_dev(dir.path(), child);
    // Every member is gone once dev has exited.
    assert!(
        TcpListener::bind(("127.0.0.1", base)).is_ok(),
        "member 1 still listens"
    );

    let (mut child, _) = start_dev(dir.path(), base);
    let body: serde_json::Value = http.get(&url).send().expect("get").json().expect("json");
    assert_eq!(body["value"]["fw"], "2.0", "{body}");
    // Killing the supervisor outright takes its members down too.
    child.kill().expect("SIGKILL dev");
    child.wait().expect("reap dev");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (0..3).any(|i| TcpListener::bind(("127.0.0.1", base + i)).is_err()) {
        assert!(
            Instant::now() < deadline,
            "members outlived a killed dev supervisor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Another layout on the same directory is refused with a message.
    let out = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
        .args(["dev", "--nodes", "5", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("same flags"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_flags_fail_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let no_id = ["certs", "member", "--id", "0", "--ca-dir", d, "--out", d];
    let no_ca = ["certs", "member", "--id", "1", "--ca-dir", d, "--out", d];
    let cases: Vec<(&[&str], &str)> = vec![
        (
            &["serve", "--partitions", "0"],
            "partitions must be between",
        ),
        (
            &["serve", "--min-members", "0"],
            "min_members must be at least 1",
        ),
        (
            &["serve", "--initial-members", "1=nohost"],
            "is not host:port",
        ),
        (&["serve", "--listen", "not-an-address"], "invalid value"),
        (&["dev", "--nodes", "0"], "--nodes must be between"),
        (&["serve"], "peer traffic is mutual TLS: set peer_ca"),
        (
            &["serve", "--peer-ca", "ca.crt", "--peer-cert", "m.crt"],
            "set either peer_cert and peer_key",
        ),
        (
            &["serve", "--peer-listen", "127.0.0.1:7001"],
            "peer_listen must differ from listen",
        ),
        (&no_id, "--id must be greater than 0"),
        (&no_ca, "ca.crt"),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
            .args(args)
            .env("DEVICEGRID_DATA_DIR", dir.path())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
        .args(["serve", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--node-id",
        "--listen",
        "--advertise",
        "--data-dir",
        "--initial-members",
        "--partitions",
        "--replication-factor",
        "--zone",
        "--min-members",
        "--failure-grace-ms",
        "--config",
        "--peer-listen",
        "--peer-advertise",
        "--peer-ca",
        "--peer-cert",
        "--peer-key",
        "--peer-ca-key",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
}

/// `devicegrid certs` makes a CA and member certificates a member starts with, and a member
/// refuses a certificate that names another member.
#[test]
fn certificates_from_certs_serve_their_member_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_devicegrid"))
            .args(args)
            .output()
            .expect("run")
    };
    let p = pki.to_str().expect("utf-8");
    assert!(run(&["certs", "ca", "--cluster", "g1", "--out", p])
        .status
        .success());
    let again = run(&["certs", "ca", "--cluster", "g1", "--out", p]);
    assert!(!again.status.success(), "a CA is never overwritten");
    let member = run(&[
        "certs",
        "member",
        "--cluster",
        "g1",
        "--ca-dir",
        p,
        "--id",
        "2",
        "--out",
        p,
    ]);
    assert!(member.status.success(), "{member:?}");
    // Member `id` started with member 2's certificate: `Err(stderr)` when it exits,
    // `Ok(())` once it answers /healthz (then it is stopped).
    let serve = |id: &str| -> Result<(), String> {
        let ports = devicegrid_testkit::free_ports(2);
        let mut child = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
            .args(["serve", "--node-id", id, "--cluster-name", "g1"])
            .args(["--listen", &format!("127.0.0.1:{}", ports[0])])
            .args(["--peer-listen", &format!("127.0.0.1:{}", ports[1])])
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{id}")))
            .arg("--peer-ca")
            .arg(pki.join("ca.crt"))
            .arg("--peer-cert")
            .arg(pki.join("member-2.crt"))
            .arg("--peer-key")
            .arg(pki.join("member-2.key"))
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        let healthz = format!("http://127.0.0.1:{}/healthz", ports[0]);
        loop {
            if child.try_wait().expect("wait").is_some() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(
                    &mut child.stderr.take().expect("stderr"),
                    &mut stderr,
                )
                .expect("read");
                return Err(stderr);
            }
            if reqwest::blocking::get(&healthz).is_ok_and(|r| r.status().is_success()) {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "member {id} neither served nor exited"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let stderr = serve("1").expect_err("member 1 refuses member 2's certificate");
    assert!(
        stderr.contains("urn:devicegrid:g1:member:2, this member is urn:devicegrid:g1:member:1"),
        "{stderr}"
    );
    serve("2").expect("member 2 serves with its certificate");
}

/// Runs `devicegrid dev <args>` against the grid in `dir` to completion.
fn dev_change(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
        .arg("dev")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .args(["--timeout", "120"])
        .output()
        .expect("run dev change");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn dev_add_and_drain_change_the_running_grid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_run(4);
    let (child, _) = start_dev(dir.path(), base);
    let http = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{base}/v1/maps/devices/dev-7");
    let r = http.put(&url).body(r#"{"fw":"3.1"}"#).send().expect("put");
    assert_eq!(r.status(), 200);

    let (ok, text) = dev_change(dir.path(), &["add"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("member 4 joined") && text.contains("balanced"),
        "{text}"
    );
    let view: serde_json::Value = http
        .get(format!("http://127.0.0.1:{}/v1/cluster", base + 3))
        .send()
        .expect("cluster")
        .json()
        .expect("json");
    assert_eq!(view["members"].as_array().map(Vec::len), Some(4), "{view}");
    assert_eq!(view["balance"]["balanced"], true, "{view}");

    let (ok, text) = dev_change(dir.path(), &["drain", "4"]);
    assert!(ok, "{text}");
    assert!(text.contains("decommissioned"), "{text}");
    // Too few members would be left: refused with the grid's reason, non-zero exit.
    let (ok, text) = dev_change(dir.path(), &["drain", "2"]);
    assert!(!ok && text.contains("drain refused"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpListener::bind(("127.0.0.1", base + 3)).is_err() {
        assert!(Instant::now() < deadline, "the drained member still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let body: serde_json::Value = http.get(&url).send().expect("get").json().expect("json");
    assert_eq!(body["value"]["fw"], "3.1", "{body}");
    stop_dev(dir.path(), child);

    // Resumes without the drained member.
    let (child, lines) = start_dev(dir.path(), base);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("member ")).count(),
        3,
        "{lines:?}"
    );
    stop_dev(dir.path(), child);
}
