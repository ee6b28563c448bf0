//! The operator against a real kube-apiserver and etcd (built from their Go modules;
//! `scripts/apiserver.sh`: no controller-manager and no nodes, so the tests play the
//! StatefulSet controller's part where pods matter), installed with the real helm binary
//! from `charts/devicegrid-operator`, and run as the `devicegrid-operator` binary under the
//! chart's ServiceAccount token, so every call it makes is checked against the chart's RBAC.
//! Grids answer through a stand-in admin API served by the test.
//!
//! - lifecycle: CRD from the chart, CEL refusals, examples accepted, children with owner
//!   references, status from the grid, scale up, scale-down gated on drain, a stalled and a
//!   refused drain reported in conditions and Events, `spec.tls` and `spec.auth` (the
//!   admin token Secret, the operator's calls with it, a missing Secret reported), deletion;
//! - two operator replicas: one leads (Lease), an image change rolls one pod at a time and
//!   only while the grid is fully replicated, and the standby finishes the roll after the
//!   leader is killed.

mod security;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use devicegrid_operator::crd::DeviceGrid;
use devicegrid_operator::status::Phase;
use devicegrid_proto::MemberState;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{
    crd_established, members, repo, serve_fake, wait, ApiServer, Operator, OPERATOR_NS, RELEASE,
};

const NS: &str = "iot";
const T: Duration = Duration::from_secs(30);

fn grid(name: &str, spec: serde_json::Value) -> DeviceGrid {
    let mut dg = DeviceGrid::new(name, serde_json::from_value(spec).expect("spec"));
    dg.metadata.namespace = Some(NS.into());
    dg
}

async fn refused(grids: &Api<DeviceGrid>, dg: &DeviceGrid) -> String {
    match grids.create(&PostParams::default(), dg).await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

async fn create_namespace(admin: &Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } })).expect("ns");
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
}

fn owned_by(refs: Option<Vec<OwnerReference>>, uid: &str) -> bool {
    refs.unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

/// Waits until the StatefulSet `name` asks for `n` replicas.
async fn sts_replicas(sts: &Api<StatefulSet>, name: &str, n: i32) {
    wait(
        T,
        &format!("StatefulSet {name} with {n} replicas"),
        || async move {
            let s = sts.get(name).await.ok()?;
            (s.spec?.replicas == Some(n)).then_some(())
        },
    )
    .await;
}

/// Waits until the grid's condition `type_` has `reason` (and the phase is `phase`, if given).
async fn condition(grids: &Api<DeviceGrid>, type_: &str, reason: &str, phase: Option<Phase>) {
    wait(
        T,
        &format!("condition {type_}={reason} with phase {phase:?}"),
        || async move {
            let s = grids.get_status("fleet").await.ok()?.status?;
            let c = s.conditions.iter().find(|c| c.type_ == type_)?;
            (c.reason == reason && phase.is_none_or(|p| s.phase.as_deref() == Some(p.as_str())))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_under_the_charts_service_account() {
    let server = ApiServer::start();
    let admin = server.admin().await;
    server.helm_install(&[]);
    crd_established(&admin).await;
    create_namespace(&admin, NS).await;
    let grids: Api<DeviceGrid> = Api::namespaced(admin.clone(), NS);

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
    // The examples are accepted as they are (server-side dry run).
    for example in ["devicegrid-minimal.yaml", "devicegrid-production.yaml"] {
        let text = std::fs::read_to_string(repo().join("examples").join(example)).expect("example");
        let dg: DeviceGrid = serde_yaml::from_str(&text).expect("example yaml");
        grids
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &dg,
            )
            .await
            .unwrap_or_else(|e| panic!("examples/{example} refused: {e}"));
    }

    // The operator, as the chart's ServiceAccount, against a stand-in grid.
    let (fake, url) = serve_fake(3).await;
    let kubeconfig = server.operator_kubeconfig(&admin).await;
    let operator = Operator::start(
        &kubeconfig,
        "op-a",
        NS,
        &url,
        &[
            "--drain-stall-secs=3",
            "--lease-duration-secs=6",
            "--lease-renew-grace-secs=2",
        ],
    );

    let dg = grid(
        "fleet",
        json!({ "replicas": 3, "image": "devicegrid:test", "storage": { "whenDeleted": "Delete" } }),
    );
    let created = grids
        .create(&PostParams::default(), &dg)
        .await
        .expect("create grid");
    let uid = created.uid().expect("uid");
    let sts_api: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    sts_replicas(&sts_api, "fleet", 3).await;

    // Every child is owned by the grid; the PVC policy comes from the spec.
    let sts = sts_api.get("fleet").await.expect("sts");
    assert!(owned_by(sts.metadata.owner_references.clone(), &uid));
    let policy = sts
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_claim_retention_policy.clone())
        .expect("PVC retention policy");
    assert_eq!(policy.when_deleted.as_deref(), Some("Delete"));
    assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
    let cm: ConfigMap = Api::namespaced(admin.clone(), NS)
        .get("fleet-config")
        .await
        .expect("cm");
    assert!(owned_by(cm.metadata.owner_references.clone(), &uid));
    let config = cm
        .data
        .unwrap_or_default()
        .get("devicegrid.yaml")
        .cloned()
        .unwrap_or_default();
    assert!(config.contains("partitions: 271"), "{config}");
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    for name in ["fleet", "fleet-members"] {
        let s = services.get(name).await.expect("service");
        assert!(
            owned_by(s.metadata.owner_references.clone(), &uid),
            "{name}"
        );
    }
    let pdb: PodDisruptionBudget = Api::namespaced(admin.clone(), NS)
        .get("fleet")
        .await
        .expect("pdb");
    assert!(owned_by(pdb.metadata.owner_references.clone(), &uid));
    let sa: ServiceAccount = Api::namespaced(admin.clone(), NS)
        .get("fleet")
        .await
        .expect("sa");
    assert!(owned_by(sa.metadata.owner_references.clone(), &uid));
    let nps: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NS);
    let np = nps.get("fleet-peers").await.expect("networkpolicy");
    assert!(owned_by(np.metadata.owner_references.clone(), &uid));
    // The peer CA is made once and kept: later passes do not replace it.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let ca = secrets.get("fleet-peer-ca").await.expect("peer CA secret");
    assert!(owned_by(ca.metadata.owner_references.clone(), &uid));
    let pem = |k: &str| ca.data.as_ref().and_then(|d| d.get(k)).map(|v| v.0.clone());
    assert!(pem("ca.crt").is_some_and(|c| c.starts_with(b"-----BEGIN CERTIFICATE")));
    assert!(pem("ca.key").is_some_and(|k| !k.is_empty()));

    security::guarded_grid(&admin, &grids, &fake).await;

    // Status from the grid's own view.
    wait(T, "status with the grid's members", || async {
        let s = grids.get_status("fleet").await.ok()?.status?;
        (s.members.len() == 3 && s.selector.is_some() && s.observed_generation == Some(1))
            .then_some(())
    })
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
    let five = json!({ "spec": { "replicas": 5 } });
    grids
        .patch_scale("fleet", &PatchParams::default(), &Patch::Merge(&five))
        .await
        .expect("scale");
    sts_replicas(&sts_api, "fleet", 5).await;
    fake.lock().expect("fake").view.members = members(5);

    // Scale-down: member 5 is drained through the grid; the StatefulSet keeps 5 pods while
    // the drain makes no progress, which is reported as stalled after 3 s.
    let down = json!({ "spec": { "replicas": 4 } });
    grids
        .patch("fleet", &PatchParams::default(), &Patch::Merge(&down))
        .await
        .expect("scale down");
    wait(T, "a drain of member 5", || async {
        fake.lock().expect("fake").drains.contains(&5).then_some(())
    })
    .await;
    condition(&grids, "Progressing", "Draining", None).await;
    condition(&grids, "Degraded", "DrainStalled", Some(Phase::Degraded)).await;
    // Scaling back up mid-drain cannot bring member 5 back (members only move forward): it is
    // reported, not hidden. Then down again.
    grids
        .patch_scale("fleet", &PatchParams::default(), &Patch::Merge(&five))
        .await
        .expect("scale");
    condition(&grids, "Degraded", "MemberRetired", Some(Phase::Degraded)).await;
    grids
        .patch("fleet", &PatchParams::default(), &Patch::Merge(&down))
        .await
        .expect("scale down");
    condition(&grids, "Progressing", "Draining", None).await;
    let sts = sts_api.get("fleet").await.expect("sts");
    assert_eq!(
        sts.spec.and_then(|s| s.replicas),
        Some(5),
        "shrunk before the drain finished"
    );
    {
        let mut f = fake.lock().expect("fake");
        if let Some(m) = f.view.members.iter_mut().find(|m| m.id == 5) {
            m.state = MemberState::Decommissioned;
            m.partitions_held = 0;
        }
    }
    sts_replicas(&sts_api, "fleet", 4).await;
    condition(&grids, "Degraded", "Healthy", None).await;

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
    condition(&grids, "Degraded", "DrainRefused", Some(Phase::Degraded)).await;
    let sts = sts_api.get("fleet").await.expect("sts");
    assert_eq!(sts.spec.and_then(|s| s.replicas), Some(4));

    // Each new cause was published as an Event on the grid, warnings for Degraded ones.
    let events: Api<Event> = Api::namespaced(admin.clone(), NS);
    let reasons = wait(
        T,
        "Events for the stalled and the refused drain",
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let reasons: Vec<(String, String)> = list
                .items
                .iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("fleet"))
                .map(|e| {
                    let r = e.reason.clone().unwrap_or_default();
                    (r, e.type_.clone().unwrap_or_default())
                })
                .collect();
            let warned = |r: &str| reasons.iter().any(|e| e.0 == r && e.1 == "Warning");
            (warned("DrainStalled") && warned("DrainRefused")).then_some(reasons)
        },
    )
    .await;
    for reason in ["ScalingUp", "Draining", "ScalingDown"] {
        assert!(
            reasons.iter().any(|e| e.0 == reason && e.1 == "Normal"),
            "no {reason} event: {reasons:?}"
        );
    }

    // Many passes later, the peer CA is the one made at first.
    let later = secrets.get("fleet-peer-ca").await.expect("peer CA secret");
    assert_eq!(later.data, ca.data, "the peer CA was replaced");

    // Reconcile metrics.
    let passes = operator
        .metric("devicegrid_operator_reconciles_total")
        .await
        .expect("metrics");
    assert!(passes >= 5.0, "{passes} passes");
    assert_eq!(
        operator.metric("devicegrid_operator_leader").await,
        Some(1.0)
    );

    // Deletion (no finalizer: children go with their owner through garbage collection).
    grids
        .delete("fleet", &DeleteParams::default())
        .await
        .expect("delete");
    wait(T, "the grid to be gone", || async {
        grids.get_opt("fleet").await.ok()?.is_none().then_some(())
    })
    .await;
    drop(operator);
}

/// Creates member pod `ordinal` on `revision`, ready, as the StatefulSet controller and the
/// kubelet would.
async fn ready_pod(
    pods: &Api<Pod>,
    labels: &BTreeMap<String, String>,
    ordinal: i32,
    revision: &str,
) {
    let mut labels = labels.clone();
    labels.insert("controller-revision-hash".into(), revision.into());
    let name = format!("fleet-{ordinal}");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "serviceAccountName": "fleet",
            "automountServiceAccountToken": false,
            "containers": [{ "name": "member", "image": "devicegrid:test" }]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let ready = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .expect("pod status");
}

async fn pod_gone(pods: &Api<Pod>, ordinal: i32) {
    let name = format!("fleet-{ordinal}");
    wait(T, &format!("pod {name} to be replaced"), || async {
        pods.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
}

async fn pods_present(pods: &Api<Pod>) -> Vec<String> {
    let list = pods.list(&ListParams::default()).await.expect("pods");
    let mut names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
    names.sort();
    names
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases.get(RELEASE).await.ok()?.spec?.holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_a_roll_one_pod_at_a_time() {
    let server = ApiServer::start();
    let admin = server.admin().await;
    create_namespace(&admin, NS).await;
    // Watched namespaces: RoleBindings in `iot` only.
    server.helm_install(&["watchNamespaces={iot}", "replicaCount=2"]);
    crd_established(&admin).await;
    let grids: Api<DeviceGrid> = Api::namespaced(admin.clone(), NS);
    let (fake, url) = serve_fake(3).await;
    let kubeconfig = server.operator_kubeconfig(&admin).await;
    let lease = ["--lease-duration-secs=6", "--lease-renew-grace-secs=2"];
    let mut operators = vec![
        Operator::start(&kubeconfig, "op-a", NS, &url, &lease),
        Operator::start(&kubeconfig, "op-b", NS, &url, &lease),
    ];

    // Exactly one leads.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), OPERATOR_NS);
    let holder = wait(T, "a holder of the leader Lease", || lease_holder(&leases)).await;
    let leader = operators
        .iter()
        .position(|o| o.identity == holder)
        .expect("the holder is one of ours");
    let standby = 1 - leader;
    wait(T, "the leader gauges", || async {
        let l = operators[leader]
            .metric("devicegrid_operator_leader")
            .await?;
        let s = operators[standby]
            .metric("devicegrid_operator_leader")
            .await?;
        (l == 1.0 && s == 0.0).then_some(())
    })
    .await;

    // A running grid of three pods on revision r1.
    grids
        .create(
            &PostParams::default(),
            &grid("fleet", json!({ "replicas": 3, "image": "devicegrid:1" })),
        )
        .await
        .expect("create grid");
    let sts_api: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    sts_replicas(&sts_api, "fleet", 3).await;
    let sts = sts_api.get("fleet").await.expect("sts");
    let labels = sts
        .spec
        .and_then(|s| s.selector.match_labels)
        .expect("selector labels");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NS);
    for ordinal in 0..3 {
        ready_pod(&pods, &labels, ordinal, "r1").await;
    }
    // The StatefulSet controller's part: it observes the latest generation and names the
    // update revision.
    let revision = |update: &'static str| {
        let sts_api = sts_api.clone();
        async move {
            let generation = sts_api.get("fleet").await.expect("sts").metadata.generation;
            let status = json!({ "status": {
                "observedGeneration": generation, "replicas": 3, "readyReplicas": 3,
                "currentRevision": "r1", "updateRevision": update,
            } });
            sts_api
                .patch_status("fleet", &PatchParams::default(), &Patch::Merge(&status))
                .await
                .expect("sts status");
        }
    };
    revision("r1").await;
    condition(&grids, "Available", "PartitionsLed", Some(Phase::Running)).await;
    assert!(operators[standby]
        .metric("devicegrid_operator_reconciles_total")
        .await
        .is_none_or(|n| n == 0.0));

    // A new image: the operator updates the template; the StatefulSet controller (played
    // here) moves the update revision to r2; the highest ordinal goes first.
    let image = json!({ "spec": { "image": "devicegrid:2" } });
    grids
        .patch("fleet", &PatchParams::default(), &Patch::Merge(&image))
        .await
        .expect("new image");
    wait(T, "the new image in the StatefulSet", || async {
        let s = sts_api.get("fleet").await.ok()?;
        let image = s.spec?.template.spec?.containers.first()?.image.clone()?;
        (image == "devicegrid:2").then_some(())
    })
    .await;
    revision("r2").await;
    pod_gone(&pods, 2).await;
    condition(&grids, "Progressing", "Rolling", Some(Phase::Upgrading)).await;
    // While fleet-2 is away, nobody else goes.
    operators[leader].passes(2.0).await;
    assert_eq!(pods_present(&pods).await, ["fleet-0", "fleet-1"]);

    // fleet-2 is back on r2, but the grid is still re-replicating: wait.
    fake.lock().expect("fake").view.partitions.under_replicated = 5;
    ready_pod(&pods, &labels, 2, "r2").await;
    operators[leader].passes(2.0).await;
    assert_eq!(pods_present(&pods).await, ["fleet-0", "fleet-1", "fleet-2"]);
    fake.lock().expect("fake").view.partitions.under_replicated = 0;
    pod_gone(&pods, 1).await;

    // The leader dies mid-roll; the standby takes the Lease and finishes the roll.
    let dead = operators.remove(leader);
    drop(dead);
    let next = &operators[0];
    wait(
        Duration::from_secs(30),
        "the standby to take the Lease",
        || async { (lease_holder(&leases).await? == next.identity).then_some(()) },
    )
    .await;
    ready_pod(&pods, &labels, 1, "r2").await;
    pod_gone(&pods, 0).await;
    ready_pod(&pods, &labels, 0, "r2").await;
    condition(&grids, "Progressing", "Steady", Some(Phase::Running)).await;
    assert_eq!(next.metric("devicegrid_operator_leader").await, Some(1.0));

    // Another holder in the Lease: the leader steps down (the process exits, to restart as a
    // candidate) rather than lead alongside it.
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    );
    let intruder = json!({ "spec": { "holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 60 } });
    leases
        .patch(RELEASE, &PatchParams::default(), &Patch::Merge(&intruder))
        .await
        .expect("take the Lease");
    let next = &mut operators[0];
    let exit = wait(T, "the leader to step down", || {
        let status = next.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert!(!exit.success(), "{exit:?}");
    assert!(
        next.log_text().contains("lost the leader Lease"),
        "{}",
        next.log_tail()
    );
}
