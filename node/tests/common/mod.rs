//! Real `devicegrid serve` processes on loopback for cluster tests.

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod faults;
pub mod history;
pub mod workload;

use std::future::Future;
use std::net::TcpListener;

use devicegrid_proto::views::ClusterView;
use devicegrid_proto::MemberState;
use devicegrid_testkit::free_ports;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// A grid of member processes; every process is killed when it is dropped.
pub struct TestGrid {
    pub dir: tempfile::TempDir,
    /// Client API port of each member.
    pub ports: Vec<u16>,
    /// Peer port of each member.
    pub peer_ports: Vec<u16>,
    pub partitions: u32,
    procs: Vec<Option<Child>>,
    extra_args: Vec<String>,
    /// Per-member extra flags (e.g. `--zone`), by id.
    member_args: std::collections::BTreeMap<u64, Vec<String>>,
    /// Members `1..=initial` are the initial members; later ones join through them.
    initial: usize,
    /// When set, peer traffic goes through these proxies (see [`faults`]).
    pub net: Option<faults::FaultNet>,
    /// Proxy port of each member (when `net` is set).
    proxy_ports: Vec<u16>,
    pub http: reqwest::Client,
}

impl TestGrid {
    /// Starts `n` members with `partitions` partitions; does not wait for readiness.
    pub fn start(n: usize, partitions: u32) -> Self {
        Self::start_with(n, partitions, &[])
    }

    /// Like [`Self::start`], with extra `serve` flags for every member.
    pub fn start_with(n: usize, partitions: u32, extra: &[&str]) -> Self {
        let mut g = Self::new(n, partitions, extra);
        for id in 1..=n as u64 {
            g.spawn(id);
        }
        g
    }

    /// A grid of `n` initial members, none started yet (see [`Self::spawn`]).
    pub fn new(n: usize, partitions: u32, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = devicegrid_pki::new_ca("devicegrid", devicegrid_pki::days(30)).expect("ca");
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(&pki).expect("pki dir");
        std::fs::write(pki.join("ca.crt"), &ca.cert).expect("ca.crt");
        std::fs::write(pki.join("ca.key"), &ca.key).expect("ca.key");
        let mut ports = free_ports(2 * n);
        let peer_ports = ports.split_off(n);
        TestGrid {
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            member_args: Default::default(),
            initial: n,
            net: None,
            proxy_ports: Vec::new(),
            dir,
            ports,
            peer_ports,
            partitions,
            procs: (0..n).map(|_| None).collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client"),
        }
    }

    /// Like [`Self::new`], with every member's peer traffic going through a [`faults::FaultNet`].
    pub fn with_faults(n: usize, partitions: u32, extra: &[&str]) -> Self {
        let mut g = Self::new(n, partitions, extra);
        let net = faults::FaultNet::new();
        g.proxy_ports = (1..=n as u64)
            .map(|id| net.proxy(id, g.peer_ports[id as usize - 1]))
            .collect();
        g.net = Some(net);
        g
    }

    /// The address member `id` advertises to its peers.
    fn peer_addr(&self, id: u64) -> String {
        let port = match &self.net {
            Some(_) => self.proxy_ports[id as usize - 1],
            None => self.peer_ports[id as usize - 1],
        };
        format!("127.0.0.1:{port}")
    }

    /// Sets extra flags for member `id` (used from its next start on).
    pub fn set_member_args(&mut self, id: u64, args: &[&str]) {
        self.member_args
            .insert(id, args.iter().map(|s| s.to_string()).collect());
    }

    /// Starts one more member that joins the grid through the initial members; its id.
    pub fn add_member(&mut self) -> u64 {
        let taken: Vec<TcpListener> = self
            .ports
            .iter()
            .chain(&self.peer_ports)
            .filter_map(|p| TcpListener::bind(("127.0.0.1", *p)).ok())
            .collect();
        let new = free_ports(2);
        drop(taken);
        self.ports.push(new[0]);
        self.peer_ports.push(new[1]);
        self.procs.push(None);
        let id = self.ports.len() as u64;
        if let Some(net) = &self.net {
            self.proxy_ports.push(net.proxy(id, new[1]));
        }
        self.spawn(id);
        id
    }

    /// Process id of member `id` (which must be running).
    pub fn pid(&self, id: u64) -> u32 {
        self.procs[id as usize - 1]
            .as_ref()
            .map(Child::id)
            .expect("member running")
    }

    /// Whether member `id`'s process is running (started and not killed or stopped).
    pub fn running(&self, id: u64) -> bool {
        self.procs[id as usize - 1].is_some()
    }

    /// SIGSTOP or SIGCONT of member `id`'s process.
    pub fn signal(&self, id: u64, sig: Signal) {
        if let Some(c) = &self.procs[id as usize - 1] {
            kill(Pid::from_raw(c.id() as i32), sig).expect("signal");
        }
    }

    /// `GET /metrics` of member `id` (empty when it does not answer).
    pub async fn metrics(&self, id: u64) -> String {
        match self
            .http
            .get(format!("{}/metrics", self.url(id)))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// `GET /v1/cluster` from member `id`.
    pub async fn cluster(&self, id: u64) -> Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}/v1/cluster", self.url(id)))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Waits until member `via` reports the grid balanced with exactly `active` active
    /// members; returns the last view, or the error with the view and logs.
    pub async fn wait_balanced(&self, via: u64, active: &[u64], timeout: Duration) -> Value {
        let every = Duration::from_millis(250);
        let balanced = devicegrid_testkit::until(timeout, every, || async move {
            let v = self.cluster(via).await?;
            let view: ClusterView = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
            let mut ids: Vec<u64> = view
                .members
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .map(|m| m.id)
                .collect();
            ids.sort_unstable();
            if view.balance.balanced && ids == active {
                Ok(v)
            } else {
                Err(serde_json::to_string_pretty(&v).unwrap_or_default())
            }
        })
        .await;
        balanced.unwrap_or_else(|last| {
            let logs: Vec<String> = self
                .ids()
                .iter()
                .filter(|id| self.running(**id))
                .map(|id| format!("--- member {id} ---\n{}", self.log_tail(*id)))
                .collect();
            panic!(
                "grid not balanced over {active:?} within {timeout:?}; last view:\n{last}\n{}",
                logs.join("\n")
            )
        })
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.ports.len() as u64).collect()
    }

    /// Holds the grid's CA (`ca.crt`, `ca.key`).
    pub fn pki(&self) -> std::path::PathBuf {
        self.dir.path().join("pki")
    }

    pub fn url(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.ports[id as usize - 1])
    }

    /// Starts (or restarts) member `id` on its data directory.
    pub fn spawn(&mut self, id: u64) {
        let seeds: Vec<String> = (1..=self.initial as u64)
            .map(|i| format!("{i}={}", self.peer_addr(i)))
            .collect();
        let mut net_args = vec!["--peer-advertise".to_string(), self.peer_addr(id)];
        if let Some(net) = &self.net {
            net_args.extend(["--peer-source-ip".into(), net.source_ip(id).to_string()]);
        }
        let dir = self.dir.path().join(format!("member-{id}"));
        std::fs::create_dir_all(&dir).expect("member dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("member.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_devicegrid"))
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", self.ports[id as usize - 1]),
            ])
            .args([
                "--peer-listen",
                &format!("127.0.0.1:{}", self.peer_ports[id as usize - 1]),
            ])
            .arg("--peer-ca")
            .arg(self.pki().join("ca.crt"))
            .arg("--peer-ca-key")
            .arg(self.pki().join("ca.key"))
            .arg("--data-dir")
            .arg(&dir)
            .args(["--initial-members", &seeds.join(",")])
            .args(["--partitions", &self.partitions.to_string()])
            .args(["--request-timeout-ms", "3000"])
            .args(&self.extra_args)
            .args(self.member_args.get(&id).into_iter().flatten())
            .args(&net_args)
            .env("RUST_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn devicegrid");
        self.procs[id as usize - 1] = Some(child);
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.procs[id as usize - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut c) = self.procs[id as usize - 1].take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        assert!(
                            status.success(),
                            "member {id} exited with {status} on SIGTERM"
                        );
                        return;
                    }
                    _ if Instant::now() > deadline => {
                        let _ = c.kill();
                        panic!("member {id} did not stop within 20 s of SIGTERM");
                    }
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("member-{id}/member.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Waits until every running member answers `/readyz` with 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let running: Vec<u64> = self
            .ids()
            .into_iter()
            .filter(|id| self.procs[*id as usize - 1].is_some())
            .collect();
        for id in running {
            let url = format!("{}/readyz", self.url(id));
            let http = self.http.clone();
            wait_for(timeout, &format!("member {id} ready"), || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    http.get(&url)
                        .send()
                        .await
                        .map(|r| r.status().is_success())
                        .unwrap_or(false)
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- member {id} log ---\n{}", self.log_tail(id)));
        }
    }

    /// `method path` on member `via` (no body): the status and the JSON answer (`null` when
    /// the answer is not JSON).
    pub async fn request(&self, method: reqwest::Method, via: u64, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url(via)))
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, id: u64, map: &str, key: &str, value: &Value) -> Result<u64, String> {
        let resp = self
            .http
            .put(format!("{}/v1/maps/{map}/{key}", self.url(id)))
            .json(value)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            body["version"]
                .as_u64()
                .ok_or_else(|| format!("no version in {body}"))
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    pub async fn get(
        &self,
        id: u64,
        map: &str,
        key: &str,
        stale: bool,
    ) -> Result<Option<Value>, String> {
        let q = if stale { "?consistency=stale" } else { "" };
        let resp = self
            .http
            .get(format!("{}/v1/maps/{map}/{key}{q}", self.url(id)))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp.json().await.map_err(|e| e.to_string())?)),
            404 => Ok(None),
            s => Err(format!("{s}: {}", resp.text().await.unwrap_or_default())),
        }
    }
}

/// Runs a test body, failing the test when it takes longer than `secs`.
pub async fn within<F: Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("test finished within its deadline");
}

/// The value of a gauge in a Prometheus text exposition.
pub fn gauge(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|v| v.trim().parse().ok())
    })
}

impl Drop for TestGrid {
    fn drop(&mut self) {
        for c in self.procs.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let every = Duration::from_millis(100);
    devicegrid_testkit::until(timeout, every, || {
        let done = check();
        async move {
            if done.await {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await
    .map_err(|_| format!("timed out after {timeout:?} waiting for {what}"))
}
