//! A grid's whole life on a real Kubernetes cluster, driven as a user would: `helm install`
//! of the operator chart, `kubectl apply` of a DeviceGrid, `kubectl scale`, pod deletion and
//! a kill -9 of a member process, scale-down, deletion. Every step has a deadline; a failure
//! names the step and prints the grid, pods, volumes, events and log excerpts.
//!
//! Needs a cluster (KUBECONFIG) with a default StorageClass and the DeviceGrid images on its
//! nodes: `make e2e` (local cluster) or `make e2e-kind`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use devicegrid_e2e::checks::{back, holds, settled, summary, Intact};
use devicegrid_e2e::diag::Diag;
use devicegrid_e2e::grid::{secret_key, Grid, Writer};
use devicegrid_e2e::settings::Settings;
use devicegrid_e2e::tools::{helm, kubectl, kubectl_apply, on_node};
use devicegrid_e2e::wait::{in_order, step, until};
use devicegrid_operator::crd::DeviceGrid;
use devicegrid_operator::status::Phase;
use devicegrid_proto::MemberState;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

const NS: &str = "devicegrid-e2e";
const OPERATOR_NS: &str = "devicegrid-system";
const RELEASE: &str = "devicegrid-operator";
const GRID: &str = "fleet";
const DEVICES: usize = 10_000;

fn minutes(n: u64) -> Duration {
    Duration::from_secs(60 * n)
}

fn grid_yaml(s: &Settings, replicas: i32, backup_count: i32) -> String {
    format!(
        r#"apiVersion: devicegrid.io/v1alpha1
kind: DeviceGrid
metadata:
  name: {GRID}
  namespace: {NS}
spec:
  replicas: {replicas}
  backupCount: {backup_count}
  image: {image}
  imagePullPolicy: IfNotPresent
  storage:
    size: 256Mi
    whenScaled: Delete
    whenDeleted: Retain
  resources:
    requests:
      cpu: 100m
      memory: 128Mi
  tls: {{}}
  auth: {{}}
"#,
        image = s.node_image
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_lifecycle_on_kubernetes() -> Result<()> {
    let s = Settings::from_env()?;
    let client = Client::try_default()
        .await
        .context("a Kubernetes client from KUBECONFIG")?;
    let diag = Diag {
        settings: s.clone(),
        namespace: NS.into(),
        operator_namespace: OPERATOR_NS.into(),
        grid: GRID.into(),
    };
    let started = Instant::now();

    // A clean slate: what a previous, interrupted run left behind goes first.
    let _ = kubectl(
        &s,
        &[
            "delete",
            "namespace",
            NS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=3m",
        ],
    )
    .await;
    let _ = helm(
        &s,
        &[
            "uninstall",
            RELEASE,
            "-n",
            OPERATOR_NS,
            "--ignore-not-found",
            "--wait",
        ],
    )
    .await;

    // The operator, from the chart.
    let chart = s.repo.join("charts/devicegrid-operator");
    let install = helm(
        &s,
        &[
            "install",
            RELEASE,
            &chart.to_string_lossy(),
            "-n",
            OPERATOR_NS,
            "--create-namespace",
            "--set",
            &format!("image.repository={}", s.operator_image.0),
            "--set",
            &format!("image.tag={}", s.operator_image.1),
            "--set",
            "image.pullPolicy=IfNotPresent",
            "--set",
            "logLevel=info,devicegrid_operator=debug,kube=warn",
            "--wait",
            "--timeout=3m",
        ],
    )
    .await;
    step(&diag, "helm install of the operator", install).await?;
    kubectl(&s, &["create", "namespace", NS]).await?;

    // An invalid grid is refused by the API server with the rule's message.
    let refused = kubectl_apply(&s, &grid_yaml(&s, 3, 3)).await;
    match refused {
        Ok(out) => bail!("a grid with backupCount 3 on 3 replicas was accepted: {out}"),
        Err(e) => ensure!(
            e.to_string()
                .contains("backupCount must be less than replicas"),
            "unexpected refusal: {e}"
        ),
    }

    // A 3-member grid comes up.
    kubectl_apply(&s, &grid_yaml(&s, 3, 2)).await?;
    let grids: Api<DeviceGrid> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let grid = until(
        &diag,
        minutes(2),
        "the grid's Service, CA and admin token",
        || async {
            Grid::connect(&client, NS, GRID)
                .await
                .map_err(|e| format!("{e:#}"))
        },
    )
    .await?;
    settled(&diag, &grids, GRID, &grid, 3, minutes(6)).await?;
    let refused = strangers_are_refused(&grid, &pods, &client).await;
    step(
        &diag,
        "requests without a token and peers without a member certificate",
        refused,
    )
    .await?;

    // 10,000 devices through the client Service.
    let keys: Vec<String> = (0..DEVICES).map(|i| format!("device-{i:05}")).collect();
    let value_of = |k: &str| json!({ "id": k, "model": "t1000", "fw": "1.0" });
    let loaded = grid.load(&keys, value_of).await;
    step(&diag, "writing 10,000 devices", loaded).await?;
    let devices: BTreeMap<String, Value> = keys.iter().map(|k| (k.clone(), value_of(k))).collect();
    step(
        &diag,
        "reading the devices back",
        grid.verify(&devices).await,
    )
    .await?;
    let intact = Intact {
        diag: &diag,
        grids: &grids,
        name: GRID,
        grid: &grid,
        devices: &devices,
    };

    // kubectl scale to 5: the new members receive replicas; data intact.
    let writer = Writer::start(grid.clone(), "up");
    scale(&s, 5).await?;
    let phases = Mutex::new(Vec::new());
    until(&diag, minutes(2), "the grid to report the scale-up", || {
        let (grids, phases) = (grids.clone(), &phases);
        async move {
            let dg = grids.get(GRID).await.map_err(|e| e.to_string())?;
            let phase = dg
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            phases
                .lock()
                .map_err(|e| e.to_string())?
                .push(phase.clone());
            let moving = matches!(
                Phase::parse(&phase),
                Some(Phase::Scaling | Phase::Rebalancing)
            );
            if moving || holds(&dg, "Rebalancing") {
                Ok(())
            } else {
                Err(summary(&dg))
            }
        }
    })
    .await?;
    intact.after(writer, 5, minutes(10), "the scale-up").await?;

    // A deleted pod comes back on its volume; no acknowledged write is lost.
    let victim = format!("{GRID}-1");
    let old = pods.get(&victim).await?;
    let writer = Writer::start(grid.clone(), "delete");
    kubectl(&s, &["delete", "pod", "-n", NS, &victim, "--wait=true"]).await?;
    back(
        &diag,
        &pods,
        &victim,
        &old.uid().unwrap_or_default(),
        i32::MAX,
    )
    .await?;
    intact
        .after(writer, 5, minutes(5), "the pod deletion")
        .await?;

    // kill -9 of the member process inside a pod: the kubelet restarts the container.
    let victim = format!("{GRID}-2");
    let pod = pods.get(&victim).await?;
    let status = pod.status.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .context("the pod's node")?;
    let container = status
        .container_statuses
        .clone()
        .unwrap_or_default()
        .first()
        .and_then(|c| c.container_id.clone())
        .context("the member container's id")?;
    let id = container
        .rsplit("://")
        .next()
        .unwrap_or_default()
        .to_string();
    let restarts: i32 = status
        .container_statuses
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .sum();
    let writer = Writer::start(grid.clone(), "kill");
    let script = format!(
        "pid=$({} inspect --output go-template --template '{{{{.info.pid}}}}' {id}) && kill -9 \"$pid\" && echo killed $pid",
        s.crictl
    );
    let killed = on_node(&s, &node, &script).await;
    eprintln!(
        "e2e: {}",
        step(&diag, "kill -9 of a member process", killed)
            .await?
            .trim()
    );
    back(
        &diag,
        &pods,
        &victim,
        &pod.uid().unwrap_or_default(),
        restarts,
    )
    .await?;
    intact.after(writer, 5, minutes(5), "the kill -9").await?;

    // A new image: pods are replaced one at a time, highest ordinal first, while writes go on.
    let writer = Writer::start(grid.clone(), "roll");
    let image = json!({ "spec": { "image": s.node_image_next } }).to_string();
    let grid_ref = format!("devicegrid/{GRID}");
    kubectl(
        &s,
        &["patch", "-n", NS, &grid_ref, "--type=merge", "-p", &image],
    )
    .await?;
    let renewed = Mutex::new(Vec::<i32>::new());
    let verdict = until(&diag, minutes(10), "every pod on the new image", || {
        let (pods, renewed_all, next) = (pods.clone(), &renewed, s.node_image_next.clone());
        async move {
            let list = pods
                .list(&ListParams::default().labels(&format!("devicegrid.io/grid={GRID}")))
                .await
                .map_err(|e| e.to_string())?;
            let mut renewed = renewed_all.lock().map_err(|e| e.to_string())?.clone();
            let mut away = Vec::new();
            for ordinal in 0..5 {
                let name = format!("{GRID}-{ordinal}");
                let Some(pod) = list.items.iter().find(|p| p.name_any() == name) else {
                    away.push(name);
                    continue;
                };
                let ready = pod.metadata.deletion_timestamp.is_none()
                    && pod
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                let image = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone());
                // Away: being deleted, or replaced and not yet ready for the first time. (A
                // member may be unready for a moment while partitions elect new leaders after
                // another member restarted; that is not a roll step.)
                let on_next = image.as_deref() == Some(next.as_str());
                let replacing = on_next && !ready && !renewed.contains(&ordinal);
                if pod.metadata.deletion_timestamp.is_some() || replacing {
                    away.push(name);
                } else if on_next && !renewed.contains(&ordinal) {
                    renewed.push(ordinal);
                }
            }
            if away.len() > 1 {
                return Ok(Err(format!("{} pods away at once: {away:?}", away.len())));
            }
            *renewed_all.lock().map_err(|e| e.to_string())? = renewed.clone();
            if renewed.len() == 5 {
                Ok(Ok(renewed))
            } else {
                Err(format!(
                    "on the new image and ready: {renewed:?}; away: {away:?}"
                ))
            }
        }
    })
    .await?;
    // One pod at a time, highest ordinal first.
    in_order(&diag, "one pod at a time", verdict, &[4, 3, 2, 1, 0]).await?;
    intact
        .after(writer, 5, minutes(5), "the rolling update")
        .await?;

    // kubectl scale to 3: members 5 and 4 are drained before their pods go, 5 first.
    let writer = Writer::start(grid.clone(), "down");
    scale(&s, 3).await?;
    // Each pass reads the grid first, then the pods: a pod seen leaving must belong to a
    // member the grid had already decommissioned, holding nothing, at that earlier read.
    let gone = Mutex::new(Vec::<u64>::new());
    let verdict = until(
        &diag,
        minutes(15),
        "pods fleet-4 and fleet-3 removed after their drains",
        || {
            let (pods, grid, gone_all) = (pods.clone(), grid.clone(), &gone);
            async move {
                let view = grid.cluster().await.map_err(|e| format!("grid: {e:#}"))?;
                let mut gone = gone_all.lock().map_err(|e| e.to_string())?.clone();
                for ordinal in [4u64, 3] {
                    if gone.contains(&ordinal) {
                        continue;
                    }
                    let name = format!("{GRID}-{ordinal}");
                    let pod = pods.get_opt(&name).await.map_err(|e| e.to_string())?;
                    if pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
                        continue;
                    }
                    let id = ordinal + 1;
                    let member = view.members.iter().find(|m| m.id == id);
                    let drained = member
                        .is_none_or(|m| m.state == MemberState::Decommissioned && m.partitions_held == 0);
                    if !drained {
                        return Ok(Err(format!(
                            "pod {name} began to go while the grid reported member {id} as {member:?}"
                        )));
                    }
                    gone.push(ordinal);
                }
                *gone_all.lock().map_err(|e| e.to_string())? = gone.clone();
                if gone.len() == 2 {
                    Ok(Ok(gone))
                } else {
                    Err(format!("pods gone so far (ordinals): {gone:?}"))
                }
            }
        },
    )
    .await?;
    // Drained before removal, highest ordinal first.
    in_order(&diag, "drain before removal", verdict, &[4, 3]).await?;
    intact
        .after(writer, 3, minutes(5), "the scale-down")
        .await?;
    // whenScaled: Delete removes the volumes of the removed members.
    until(
        &diag,
        minutes(2),
        "the volumes of members 4 and 5 deleted",
        || async {
            let names: Vec<String> = pvcs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .iter()
                .map(|p| p.name_any())
                .collect();
            let expected = ["data-fleet-0", "data-fleet-1", "data-fleet-2"];
            if names == expected {
                Ok(())
            } else {
                Err(format!("claims {names:?}"))
            }
        },
    )
    .await?;

    // Deleting the grid removes its children; whenDeleted: Retain keeps the volumes.
    kubectl(
        &s,
        &[
            "delete",
            "-n",
            NS,
            &format!("devicegrid/{GRID}"),
            "--wait=true",
        ],
    )
    .await?;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    until(
        &diag,
        minutes(3),
        "the grid's children to be gone",
        || async {
            let left = [
                sts.get_opt(GRID)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                services
                    .get_opt(GRID)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                configs
                    .get_opt("fleet-config")
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some(),
                !pods
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .is_empty(),
            ];
            if left.iter().any(|l| *l) {
                Err(format!(
                    "still there (sts, service, configmap, pods): {left:?}"
                ))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    let kept = pvcs.list(&ListParams::default()).await?.items.len();
    ensure!(kept == 3, "whenDeleted: Retain kept {kept} volumes, not 3");

    let _ = kubectl(&s, &["delete", "namespace", NS, "--wait=false"]).await;
    let _ = helm(&s, &["uninstall", RELEASE, "-n", OPERATOR_NS]).await;
    eprintln!(
        "e2e: done in {:.0} s; phases seen during the scale-up: {:?}",
        started.elapsed().as_secs_f64(),
        phases.lock().map(|p| p.clone()).unwrap_or_default()
    );
    Ok(())
}

/// `kubectl scale devicegrid/<grid> --replicas=<n>`.
async fn scale(s: &Settings, n: u32) -> Result<()> {
    let to = format!("--replicas={n}");
    kubectl(s, &["scale", "-n", NS, &format!("devicegrid/{GRID}"), &to]).await?;
    Ok(())
}

/// The grid runs with TLS and authentication: a request without a token is refused with 401
/// `unauthenticated`, and the peer port refuses a TLS client without a member certificate
/// of this grid (none, or one from another CA naming a made-up member), while a certificate
/// from the grid's own CA gets through the handshake (so the refusals are not the network's).
async fn strangers_are_refused(grid: &Grid, pods: &Api<Pod>, client: &Client) -> Result<()> {
    let (status, body) = grid
        .anonymous()
        .send(
            reqwest::Method::GET,
            "/v1/maps/devices/device-00001",
            Vec::new(),
        )
        .await?;
    ensure!(
        status == reqwest::StatusCode::UNAUTHORIZED && body.contains("unauthenticated"),
        "a request without a token got {status}: {body}"
    );
    let (status, body) = grid
        .send(reqwest::Method::GET, "/v1/auth/whoami", Vec::new())
        .await?;
    ensure!(
        status.is_success() && body.contains("admin"),
        "the admin token: {status}: {body}"
    );

    let pod = pods.get(&format!("{GRID}-0")).await?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("member pod without an IP")?;
    let url = format!("https://{ip}:7101/internal/v1/peer");
    let cluster = format!("{NS}.{GRID}");
    let peer_call = |identity: Option<devicegrid_pki::Pem>| {
        let url = url.clone();
        async move {
            let mut b = reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .timeout(Duration::from_secs(10));
            if let Some(p) = identity {
                b = b.identity(reqwest::Identity::from_pem(
                    format!("{}{}", p.cert, p.key).as_bytes(),
                )?);
            }
            let answer = b.build()?.post(&url).body(Vec::new()).send().await;
            anyhow::Ok(answer.map(|r| r.status()))
        }
    };
    let lifetime = devicegrid_pki::days(1);
    let stranger_ca = devicegrid_pki::new_ca(&cluster, lifetime)?;
    let stranger = devicegrid_pki::issue_member(&stranger_ca, &cluster, 99, &[], lifetime)?;
    for (who, identity) in [
        ("no certificate", None),
        ("another CA's member 99", Some(stranger)),
    ] {
        if let Ok(status) = peer_call(identity).await? {
            bail!("the peer port answered {status} to a client with {who}");
        }
    }
    let secrets = Api::namespaced(client.clone(), NS);
    let ca_name = format!("{GRID}-peer-ca");
    let key = |k: &'static str| {
        let (secrets, ca_name) = (&secrets, &ca_name);
        async move {
            let pem = secret_key(secrets, ca_name, k).await?;
            anyhow::Ok(String::from_utf8_lossy(&pem).into_owned())
        }
    };
    let ca = devicegrid_pki::Pem {
        cert: key("ca.crt").await?,
        key: key("ca.key").await?,
    };
    let member = devicegrid_pki::issue_member(&ca, &cluster, 2, &[], lifetime)?;
    match peer_call(Some(member)).await? {
        Ok(status) => eprintln!("e2e: the peer port answered {status} to a grid certificate"),
        Err(e) => bail!("the peer port refused a certificate from the grid's CA: {e:#}"),
    }
    Ok(())
}
