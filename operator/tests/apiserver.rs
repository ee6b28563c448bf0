//! The operator against a real kube-apiserver and etcd (built from their Go modules by
//! `scripts/apiserver.sh`; no controller-manager, no nodes, so no pods run), with a stand-in
//! grid admin API served by the test: the CRD installs and its CEL rules refuse bad grids;
//! a grid gets its children with owner references; status comes from the grid; the scale
//! subresource works; scale-down drains through the grid before the StatefulSet shrinks; a
//! refused drain is reported; deletion.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use devicegrid_operator::crd::DeviceGrid;
use devicegrid_operator::reconciler::{self, ClusterView, Context, GridApi, ViewMember};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// etcd and kube-apiserver in a temporary directory; stopped when dropped.
struct ApiServer {
    dir: tempfile::TempDir,
    port: u16,
}

impl ApiServer {
    fn start() -> ApiServer {
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

    async fn client(&self) -> Client {
        let kc =
            Kubeconfig::read_from(self.dir.path().join("admin.kubeconfig")).expect("kubeconfig");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(config).expect("client")
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

/// A base port with `n` free consecutive ports.
fn free_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if base == 0 || base > 60_000 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .filter_map(|i| TcpListener::bind(("127.0.0.1", base + i)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

/// What the stand-in grid reports and what it was asked.
#[derive(Default)]
struct FakeGrid {
    view: ClusterView,
    drains: Vec<u64>,
    refuse: bool,
}

type Shared = Arc<Mutex<FakeGrid>>;

async fn fake_cluster(State(g): State<Shared>) -> Json<ClusterView> {
    Json(g.lock().expect("fake").view.clone())
}

async fn fake_drain(State(g): State<Shared>, Path(id): Path<u64>) -> impl IntoResponse {
    let mut g = g.lock().expect("fake");
    if g.refuse {
        let body = json!({ "error": { "code": "drain_refused", "message": "too few members would be left" } });
        return (StatusCode::CONFLICT, Json(body));
    }
    g.drains.push(id);
    if let Some(m) = g.view.members.iter_mut().find(|m| m.id == id) {
        m.state = "draining".into();
    }
    (StatusCode::ACCEPTED, Json(json!({ "id": id })))
}

fn members(n: u64) -> Vec<ViewMember> {
    (1..=n)
        .map(|id| ViewMember {
            id,
            state: "active".into(),
            ready: true,
            partitions_held: 271 * 3 / n,
            partitions_led: 271 / n,
        })
        .collect()
}

async fn serve_fake(g: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = Router::new()
        .route("/v1/cluster", get(fake_cluster))
        .route("/v1/members/{id}/drain", post(fake_drain))
        .with_state(g);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Polls `check` every 200 ms until it returns `Some` or `timeout` passes.
async fn wait<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn grid(name: &str, spec: serde_json::Value) -> DeviceGrid {
    let mut dg = DeviceGrid::new(name, serde_json::from_value(spec).expect("spec"));
    dg.metadata.namespace = Some("iot".into());
    dg
}

async fn refused(grids: &Api<DeviceGrid>, dg: &DeviceGrid) -> String {
    match grids.create(&PostParams::default(), dg).await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_api_server() {
    let server = ApiServer::start();
    let client = server.client().await;

    // The generated CRD installs and becomes established.
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("crds/devicegrid.io_devicegrids.yaml"))
            .expect("crd file"),
    )
    .expect("crd yaml");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("install the CRD");
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
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": "iot" } })).expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let grids: Api<DeviceGrid> = Api::namespaced(client.clone(), "iot");

    // Bad grids are refused by the API server with the rule's message.
    for (spec, message) in [
        (
            json!({ "replicas": 0, "image": "dg:1" }),
            "replicas must be at least 1",
        ),
        (
            json!({ "replicas": 3, "backupCount": 3, "image": "dg:1" }),
            "backupCount must be less than replicas",
        ),
        (
            json!({ "replicas": 3, "image": "dg:1", "storage": { "size": "lots" } }),
            "Kubernetes quantity",
        ),
    ] {
        let why = refused(&grids, &grid("bad", spec.clone())).await;
        assert!(why.contains(message), "{spec}: {why}");
    }

    // The stand-in grid and the controller.
    let fake: Shared = Arc::default();
    fake.lock().expect("fake").view.members = members(3);
    fake.lock().expect("fake").view.partitions.count = 271;
    fake.lock().expect("fake").view.balance.balanced = true;
    let url = serve_fake(fake.clone()).await;
    let ctx = Context::new(client.clone(), GridApi::new(url), Duration::from_secs(600));
    let controller = tokio::spawn(reconciler::run(ctx, Some("iot".into())));

    let dg = grid(
        "fleet",
        json!({ "replicas": 3, "image": "devicegrid:test" }),
    );
    let created = grids
        .create(&PostParams::default(), &dg)
        .await
        .expect("create grid");
    let uid = created.uid().expect("uid");
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), "iot");
    let replicas = |n: i32| {
        let sts_api = sts_api.clone();
        move || {
            let sts_api = sts_api.clone();
            async move {
                let s = sts_api.get("fleet").await.ok()?;
                (s.spec?.replicas == Some(n)).then_some(())
            }
        }
    };
    wait(
        Duration::from_secs(30),
        "the StatefulSet with 3 replicas",
        replicas(3),
    )
    .await;

    // Every child is owned by the grid.
    let owned =
        |refs: Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
            refs.unwrap_or_default()
                .iter()
                .any(|o| o.uid == uid && o.controller == Some(true))
        };
    let sts = sts_api.get("fleet").await.expect("sts");
    assert!(owned(sts.metadata.owner_references.clone()));
    let cm: ConfigMap = Api::namespaced(client.clone(), "iot")
        .get("fleet-config")
        .await
        .expect("cm");
    assert!(owned(cm.metadata.owner_references.clone()));
    let config = cm
        .data
        .unwrap_or_default()
        .get("devicegrid.yaml")
        .cloned()
        .unwrap_or_default();
    assert!(config.contains("partitions: 271"), "{config}");
    let services: Api<Service> = Api::namespaced(client.clone(), "iot");
    for name in ["fleet", "fleet-members"] {
        let s = services.get(name).await.expect("service");
        assert!(owned(s.metadata.owner_references.clone()), "{name}");
    }
    let pdb: PodDisruptionBudget = Api::namespaced(client.clone(), "iot")
        .get("fleet")
        .await
        .expect("pdb");
    assert!(owned(pdb.metadata.owner_references.clone()));
    let sa: ServiceAccount = Api::namespaced(client.clone(), "iot")
        .get("fleet")
        .await
        .expect("sa");
    assert!(owned(sa.metadata.owner_references.clone()));

    // Status from the grid's own view.
    wait(
        Duration::from_secs(30),
        "status with the grid's members",
        || {
            let grids = grids.clone();
            async move {
                let s = grids.get_status("fleet").await.ok()?.status?;
                (s.members.len() == 3 && s.selector.is_some() && s.observed_generation == Some(1))
                    .then_some(())
            }
        },
    )
    .await;

    // partitionCount cannot change.
    let resize = json!({ "spec": { "partitionCount": 300 } });
    let err = grids
        .patch("fleet", &PatchParams::default(), &Patch::Merge(&resize))
        .await
        .expect_err("partitionCount is immutable");
    assert!(
        err.to_string().contains("partitionCount is immutable"),
        "{err}"
    );

    // kubectl scale: the scale subresource raises the StatefulSet.
    grids
        .patch_scale(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "spec": { "replicas": 5 } })),
        )
        .await
        .expect("scale");
    wait(
        Duration::from_secs(30),
        "the StatefulSet with 5 replicas",
        replicas(5),
    )
    .await;
    fake.lock().expect("fake").view.members = members(5);

    // Scale-down: member 5 is drained through the grid; the StatefulSet keeps 5 pods
    // until the grid reports it decommissioned.
    let down = json!({ "spec": { "replicas": 4 } });
    grids
        .patch("fleet", &PatchParams::default(), &Patch::Merge(&down))
        .await
        .expect("scale down");
    wait(Duration::from_secs(30), "a drain of member 5", || {
        let fake = fake.clone();
        async move { fake.lock().expect("fake").drains.contains(&5).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await; // a few passes of the controller
    let sts = sts_api.get("fleet").await.expect("sts");
    assert_eq!(
        sts.spec.and_then(|s| s.replicas),
        Some(5),
        "shrunk before the drain finished"
    );
    let status = grids
        .get_status("fleet")
        .await
        .expect("status")
        .status
        .expect("status");
    let progressing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .expect("condition");
    assert_eq!(progressing.reason, "Draining", "{progressing:?}");
    {
        let mut f = fake.lock().expect("fake");
        if let Some(m) = f.view.members.iter_mut().find(|m| m.id == 5) {
            m.state = "decommissioned".into();
            m.partitions_held = 0;
        }
    }
    wait(
        Duration::from_secs(30),
        "the StatefulSet with 4 replicas",
        replicas(4),
    )
    .await;

    // A refused drain is reported, and nothing shrinks.
    {
        let mut f = fake.lock().expect("fake");
        f.view.members.retain(|m| m.id != 5);
        f.refuse = true;
    }
    let down = json!({ "spec": { "replicas": 3 } });
    grids
        .patch("fleet", &PatchParams::default(), &Patch::Merge(&down))
        .await
        .expect("scale down");
    wait(
        Duration::from_secs(30),
        "a Degraded condition for the refused drain",
        || {
            let grids = grids.clone();
            async move {
                let s = grids.get_status("fleet").await.ok()?.status?;
                let degraded = s.conditions.iter().find(|c| c.type_ == "Degraded")?;
                (degraded.reason == "DrainRefused" && s.phase.as_deref() == Some("Degraded"))
                    .then_some(())
            }
        },
    )
    .await;
    let sts = sts_api.get("fleet").await.expect("sts");
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(4));

    // Deletion (no finalizer: children go with their owner through garbage collection).
    grids
        .delete("fleet", &DeleteParams::default())
        .await
        .expect("delete");
    wait(Duration::from_secs(30), "the grid to be gone", || {
        let grids = grids.clone();
        async move { grids.get_opt("fleet").await.ok()?.is_none().then_some(()) }
    })
    .await;
    controller.abort();
}
