//! Shared scaffolding of the operator's integration tests: a real kube-apiserver and etcd
//! (`scripts/apiserver.sh`), the chart installed with the real helm binary, the operator
//! binary run under the chart's ServiceAccount token, and a stand-in grid admin API whose
//! answers are the wire contract's types, so they cannot drift from what members serve.

use std::io::Read;

use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use devicegrid_proto::views::{ClusterView, MemberView};
use devicegrid_proto::{ErrorBody, ErrorCode, ErrorDetail, MemberState};
pub use devicegrid_testkit::free_run;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

/// Namespace the chart is installed into.
pub const OPERATOR_NS: &str = "devicegrid-system";
/// Helm release name (also the ServiceAccount's and the Lease's name).
pub const RELEASE: &str = "devicegrid-operator";

pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// etcd and kube-apiserver in a temporary directory; stopped when dropped.
pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_run(3);
        let out = Command::new(repo().join("scripts/apiserver.sh"))
            .args(["start"])
            .arg(dir.path())
            .arg(port.to_string())
            .output()
            .expect("run scripts/apiserver.sh");
        assert!(
            out.status.success(),
            "scripts/apiserver.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ApiServer { dir, port }
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A client with the admin certificate (group system:masters).
    pub async fn admin(&self) -> Client {
        client_from(&self.admin_kubeconfig()).await
    }

    /// `helm install` of the operator chart with `--set` flags; panics with helm's output.
    pub fn helm_install(&self, sets: &[&str]) {
        let helm = tool("scripts/helm-bin.sh");
        let mut cmd = Command::new(helm);
        cmd.args(["install", RELEASE])
            .arg(repo().join("charts/devicegrid-operator"))
            .args(["--namespace", OPERATOR_NS, "--create-namespace"])
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig());
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run helm");
        assert!(
            out.status.success(),
            "helm install failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A kubeconfig holding a fresh token of the chart's ServiceAccount, nothing else: what
    /// the operator can do with it is what the chart's RBAC grants.
    pub async fn operator_kubeconfig(&self, admin: &Client) -> PathBuf {
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), OPERATOR_NS);
        let request: TokenRequest = serde_json::from_value(json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": { "expirationSeconds": 3600 }
        }))
        .expect("token request");
        let issued: TokenRequest = sas
            .create_subresource("token", RELEASE, &PostParams::default(), &request)
            .await
            .expect("a token for the chart's ServiceAccount");
        let token = issued.status.expect("token status").token;
        let path = self.dir.path().join("operator.kubeconfig");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: operator\n  context:\n    cluster: test\n    user: operator\ncurrent-context: operator\n",
            self.port,
            self.dir.path().join("pki/ca.crt").display(),
        );
        std::fs::write(&path, kubeconfig).expect("write kubeconfig");
        path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/apiserver.sh"))
            .args(["stop"])
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .status();
    }
}

pub async fn client_from(kubeconfig: &FsPath) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

/// The path a `scripts/*-bin.sh` prints (the tool is built by `make k8s-tools` first).
pub fn tool(script: &str) -> PathBuf {
    let out = Command::new(repo().join(script))
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes.
pub async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let every = Duration::from_millis(200);
    devicegrid_testkit::until(timeout, every, || {
        let seen = check();
        async move { seen.await.ok_or_else(String::new) }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Waits until the CRD the chart installed is established.
pub async fn crd_established(admin: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    wait(Duration::from_secs(30), "the CRD to be established", || {
        let crds = crds.clone();
        async move {
            let c = crds.get("devicegrids.devicegrid.io").await.ok()?;
            let established = c
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
}

/// The `devicegrid-operator` binary running as one replica; killed when dropped.
pub struct Operator {
    pub child: Child,
    pub identity: String,
    pub metrics: String,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `devicegrid-operator run` with `kubeconfig`, watching `namespaces`, reaching
    /// grids at `grid_url`; `extra` flags are appended.
    pub fn start(
        kubeconfig: &FsPath,
        identity: &str,
        namespaces: &str,
        grid_url: &str,
        extra: &[&str],
    ) -> Operator {
        let port = free_run(1);
        let log = kubeconfig.with_file_name(format!("{identity}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_devicegrid-operator"))
            .arg("run")
            .args(["--namespace", namespaces, "--grid-url", grid_url])
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .args(["--lease-namespace", OPERATOR_NS, "--lease-name", RELEASE])
            .args(["--lease-identity", identity])
            .args(["--log-format", "text", "--log-level", "info,kube=warn"])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start devicegrid-operator");
        Operator {
            child,
            identity: identity.into(),
            metrics: format!("http://127.0.0.1:{port}/metrics"),
            log,
        }
    }

    /// The value of an unlabelled metric, once the endpoint answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(&self.metrics).await.ok()?.text().await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits for `n` more reconcile passes than now: the controller has looked again.
    pub async fn passes(&self, n: f64) {
        let total = "devicegrid_operator_reconciles_total";
        let start = wait(Duration::from_secs(20), "the operator's metrics", || {
            self.metric(total)
        })
        .await;
        wait(
            Duration::from_secs(30),
            &format!("{n} more reconcile passes of {}", self.identity),
            || async move { self.metric(total).await.filter(|v| *v >= start + n) },
        )
        .await;
    }

    /// The operator's whole log.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The tail of the operator's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- log of operator {} ---\n{}",
                self.identity,
                self.log_tail()
            );
        }
    }
}

/// What the stand-in grid reports and what it was asked.
#[derive(Default)]
pub struct FakeGrid {
    pub view: ClusterView,
    pub drains: Vec<u64>,
    pub refuse: bool,
    /// `Authorization` headers the cluster view was asked with.
    pub authorizations: std::collections::BTreeSet<String>,
}

pub type Shared = Arc<Mutex<FakeGrid>>;

async fn fake_cluster(
    State(g): State<Shared>,
    headers: axum::http::HeaderMap,
) -> Json<ClusterView> {
    let mut g = g.lock().expect("fake");
    if let Some(a) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        g.authorizations.insert(a.to_string());
    }
    Json(g.view.clone())
}

/// An error answer as members send it: the status decided by the code.
fn refusal(code: ErrorCode, message: String) -> Response {
    let status = StatusCode::from_u16(code.status()).expect("an HTTP status");
    let body = ErrorBody {
        error: ErrorDetail::new(code, message),
    };
    (status, Json(body)).into_response()
}

async fn fake_drain(State(g): State<Shared>, Path(id): Path<u64>) -> Response {
    let mut g = g.lock().expect("fake");
    if g.refuse {
        let message = "too few members would be left".to_string();
        return refusal(ErrorCode::DrainRefused, message);
    }
    let Some(m) = g.view.members.iter_mut().find(|m| m.id == id) else {
        let message = format!("member {id} is not a member");
        return refusal(ErrorCode::MemberNotFound, message);
    };
    m.state = MemberState::Draining;
    let accepted = m.clone();
    g.drains.push(id);
    (StatusCode::ACCEPTED, Json(Some(accepted))).into_response()
}

/// `n` active members, ready, the replicas of 271 partitions spread evenly.
pub fn members(n: u64) -> Vec<MemberView> {
    let share = |total: u64| usize::try_from(total / n).expect("a count");
    (1..=n)
        .map(|id| MemberView {
            id,
            address: format!("fleet-{}.fleet-members.iot.svc:7001", id - 1),
            peer_address: None,
            zone: None,
            state: MemberState::Active,
            reachable: true,
            ready: true,
            partitions_held: share(271 * 3),
            partitions_led: share(271),
        })
        .collect()
}

/// Serves a stand-in grid with `n` active members; returns it and its URL.
pub async fn serve_fake(n: u64) -> (Shared, String) {
    let fake: Shared = Arc::default();
    {
        let mut f = fake.lock().expect("fake");
        f.view.cluster_name = "fleet".into();
        f.view.answered_by = 1;
        f.view.bootstrapped = true;
        f.view.members = members(n);
        f.view.partitions.count = 271;
        f.view.partitions.replication_factor = 3;
        f.view.balance.balanced = true;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = Router::new()
        .route("/v1/cluster", get(fake_cluster))
        .route("/v1/members/{id}/drain", post(fake_drain))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, url)
}
