//! The objects a `DeviceGrid` owns, built from its spec: ServiceAccount, ConfigMap,
//! headless Service (member addresses), client Service, StatefulSet, PodDisruptionBudget,
//! and (in `builders/security.rs`) the peer CA Secret, the admin token Secret, the
//! NetworkPolicy and what `spec.tls` and `spec.auth` add to the pods. Pure functions; the
//! reconciler applies them with server-side apply, except the two Secrets, which it only
//! creates.
//!
//! Members have two ports: the client API on 7001 (client Service, probes, the operator)
//! and the peer port 7101, mutual TLS between members only. Member `i` of a grid is pod
//! `<name>-<i-1>`; it advertises `<name>-<i-1>.<name>-members.<namespace>.svc:7001` to
//! clients and `...svc:7101` to peers (the seeds in `initial_members` are peer addresses).
//! Its id comes from the pod's `apps.kubernetes.io/pod-index` label, its data lives on the
//! pod's PVC, and it issues its own member certificate at start from the grid's CA, mounted
//! from the Secret `<name>-peer-ca` at `/etc/devicegrid/pki`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::crd::{DeviceGrid, PullPolicy, VolumePolicy};
use crate::{Error, Result};

mod security;

pub use security::{
    admin_secret, network_policy, peer_ca_secret, Security, ADMIN_TOKEN, PEER_CA_CERT, PEER_CA_KEY,
    TLS_CA, TLS_CERT, TLS_KEY,
};

/// Port of the member's client API (clients, probes, the operator).
pub const PORT: i32 = 7001;
/// Port of member-to-member traffic (mutual TLS, members only).
pub const PEER_PORT: i32 = 7101;
/// Where the peer CA Secret is mounted in member pods.
pub const PKI_DIR: &str = "/etc/devicegrid/pki";
/// Where the member's volume is mounted.
pub const DATA_DIR: &str = "/var/lib/devicegrid";
/// Label every owned object carries with the grid's name.
pub const GRID_LABEL: &str = "devicegrid.io/grid";
/// Initial members listed in the configuration (the first pods, at most three).
const SEEDS: i32 = 3;

/// Names of a grid's children.
pub struct Names {
    /// Grid name.
    pub grid: String,
    /// Namespace.
    pub namespace: String,
}

impl Names {
    /// Names for `dg`.
    pub fn of(dg: &DeviceGrid) -> Result<Names> {
        Ok(Names {
            grid: dg.name_any(),
            namespace: dg.namespace().ok_or(Error::MissingNamespace)?,
        })
    }

    /// The StatefulSet, ServiceAccount, PDB and client Service.
    pub fn main(&self) -> String {
        self.grid.clone()
    }

    /// The headless Service giving members their DNS names.
    pub fn members(&self) -> String {
        format!("{}-members", self.grid)
    }

    /// The ConfigMap.
    pub fn config(&self) -> String {
        format!("{}-config", self.grid)
    }

    /// The Secret with the grid's peer CA (certificate and key).
    pub fn peer_ca(&self) -> String {
        format!("{}-peer-ca", self.grid)
    }

    /// The Secret with the bootstrap admin token the operator made (`spec.auth` without a
    /// Secret of its own).
    pub fn admin(&self) -> String {
        format!("{}-admin", self.grid)
    }

    /// The NetworkPolicy restricting the peer port to the grid's own members.
    pub fn peers(&self) -> String {
        format!("{}-peers", self.grid)
    }

    /// The grid's cluster name (`cluster_name` of the members, the name in its
    /// certificates): `<namespace>.<grid>`.
    pub fn cluster(&self) -> String {
        format!("{}.{}", self.namespace, self.grid)
    }

    /// Peer address member `id` (pod `id - 1`) advertises to other members.
    pub fn member_addr(&self, id: i32) -> String {
        format!(
            "{}-{}.{}.{}.svc:{PEER_PORT}",
            self.grid,
            id - 1,
            self.members(),
            self.namespace
        )
    }
}

/// Labels selecting a grid's member pods.
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "devicegrid".into()),
        (GRID_LABEL.into(), names.grid.clone()),
    ])
}

/// The label selector string for the scale subresource.
pub fn selector_string(names: &Names) -> String {
    selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut l = selector_labels(names);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "devicegrid-operator".into(),
    );
    l
}

fn owner(dg: &DeviceGrid) -> Result<OwnerReference> {
    dg.controller_owner_ref(&()).ok_or(Error::MissingUid)
}

fn meta(dg: &DeviceGrid, names: &Names, name: String) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: Some(vec![owner(dg)?]),
        ..ObjectMeta::default()
    })
}

/// Builds a typed object from its JSON form with `meta` as metadata.
fn object<T: DeserializeOwned>(kind: &str, meta: ObjectMeta, mut body: Value) -> Result<T> {
    body["metadata"] = serde_json::to_value(meta).map_err(|e| Error::Build(kind.into(), e))?;
    serde_json::from_value(body).map_err(|e| Error::Build(kind.into(), e))
}

/// The member configuration file (`devicegrid serve --config`).
pub fn config_yaml(dg: &DeviceGrid, names: &Names) -> String {
    let spec = &dg.spec;
    let seeds: Vec<String> = (1..=spec.replicas.clamp(1, SEEDS))
        .map(|id| format!("  - id: {id}\n    addr: {}", names.member_addr(id)))
        .collect();
    let mut lines = vec![
        format!("cluster_name: {}", names.cluster()),
        format!("partitions: {}", spec.partition_count),
        format!("replication_factor: {}", spec.backup_count + 1),
        format!("min_members: {}", spec.replicas.clamp(1, SEEDS)),
        format!("listen: 0.0.0.0:{PORT}"),
        format!("peer_listen: 0.0.0.0:{PEER_PORT}"),
        format!("peer_ca: {PKI_DIR}/{PEER_CA_CERT}"),
        format!("peer_ca_key: {PKI_DIR}/{PEER_CA_KEY}"),
        format!("data_dir: {DATA_DIR}"),
        "initial_members:".to_string(),
    ];
    lines.extend(seeds);
    lines.extend(Security::of(dg, names).config_lines());
    // Passthrough settings: numbers and booleans as they are, anything else quoted. The
    // member refuses unknown keys and wrong types at start, with a message.
    for (k, v) in &spec.config {
        let plain = v.parse::<f64>().is_ok() || v == "true" || v == "false";
        let value = if plain {
            v.clone()
        } else {
            serde_json::Value::String(v.clone()).to_string()
        };
        lines.push(format!("{k}: {value}"));
    }
    lines.join("\n") + "\n"
}

/// The ConfigMap with the member configuration.
pub fn config_map(dg: &DeviceGrid, names: &Names) -> Result<ConfigMap> {
    object(
        "ConfigMap",
        meta(dg, names, names.config())?,
        json!({ "data": { "devicegrid.yaml": config_yaml(dg, names) } }),
    )
}

/// The ServiceAccount the member pods run as (no API access needed).
pub fn service_account(dg: &DeviceGrid, names: &Names) -> Result<ServiceAccount> {
    object(
        "ServiceAccount",
        meta(dg, names, names.main())?,
        json!({ "automountServiceAccountToken": false }),
    )
}

/// The headless Service: stable DNS names for members, ready or not (members must find
/// each other before they are ready), with the client and the peer port.
pub fn members_service(dg: &DeviceGrid, names: &Names) -> Result<Service> {
    object(
        "Service",
        meta(dg, names, names.members())?,
        json!({ "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector_labels(names),
            "ports": [
                { "name": "api", "port": PORT, "targetPort": PORT },
                { "name": "peer", "port": PEER_PORT, "targetPort": PEER_PORT },
            ],
        }}),
    )
}

/// The client Service: ready members only, client API port only.
pub fn client_service(dg: &DeviceGrid, names: &Names) -> Result<Service> {
    object(
        "Service",
        meta(dg, names, names.main())?,
        json!({ "spec": {
            "selector": selector_labels(names),
            "ports": [{ "name": "api", "port": PORT, "targetPort": PORT }],
        }}),
    )
}

/// At most one member down at a time by voluntary disruption.
pub fn pod_disruption_budget(dg: &DeviceGrid, names: &Names) -> Result<PodDisruptionBudget> {
    object(
        "PodDisruptionBudget",
        meta(dg, names, names.main())?,
        json!({ "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": selector_labels(names) },
        }}),
    )
}

fn volume_policy(p: VolumePolicy) -> &'static str {
    match p {
        VolumePolicy::Retain => "Retain",
        VolumePolicy::Delete => "Delete",
    }
}

fn pull_policy(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

/// The StatefulSet of members with `replicas` pods (the reconciler decides the count: it
/// shrinks only after draining). Updates are `OnDelete`: the operator replaces pods one at
/// a time, waiting for full replication in between.
pub fn stateful_set(dg: &DeviceGrid, names: &Names, replicas: i32) -> Result<StatefulSet> {
    let spec = &dg.spec;
    let selector = selector_labels(names);
    let spread = match &spec.topology_spread_constraints {
        Some(c) => serde_json::to_value(c).map_err(|e| Error::Build("StatefulSet".into(), e))?,
        None => json!([
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": { "matchLabels": selector },
            },
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": { "matchLabels": selector },
            },
        ]),
    };
    let host = format!("$(POD_NAME).{}.{}.svc", names.members(), names.namespace);
    let security = Security::of(dg, names);
    let scheme = security.scheme();
    let (secret_volumes, secret_mounts) = security.volumes();
    let mut container = json!({
        "name": "member",
        "image": spec.image,
        "imagePullPolicy": pull_policy(spec.image_pull_policy),
        "args": ["serve", "--config", "/etc/devicegrid/devicegrid.yaml"],
        "env": [
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
            { "name": "DEVICEGRID_POD_INDEX", "valueFrom": { "fieldRef": {
                "fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']" } } },
            { "name": "DEVICEGRID_ADVERTISE", "value": format!("{host}:{PORT}") },
            { "name": "DEVICEGRID_PEER_ADVERTISE", "value": format!("{host}:{PEER_PORT}") },
            { "name": "DEVICEGRID_LOG_FORMAT", "value": "json" },
        ],
        "ports": [
            { "name": "api", "containerPort": PORT },
            { "name": "peer", "containerPort": PEER_PORT },
        ],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "readinessProbe": {
            "httpGet": { "path": "/readyz", "port": PORT, "scheme": scheme },
            "periodSeconds": 5, "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": PORT, "scheme": scheme },
            "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6,
        },
        "volumeMounts": [
            { "name": "data", "mountPath": DATA_DIR },
            { "name": "config", "mountPath": "/etc/devicegrid", "readOnly": true },
            { "name": "peer-ca", "mountPath": PKI_DIR, "readOnly": true },
        ],
    });
    if let Some(m) = container["volumeMounts"].as_array_mut() {
        m.extend(secret_mounts);
    }
    if let Some(r) = &spec.resources {
        container["resources"] =
            serde_json::to_value(r).map_err(|e| Error::Build("StatefulSet".into(), e))?;
    }
    let mut pod_spec = json!({
        "serviceAccountName": names.main(),
        "terminationGracePeriodSeconds": 60,
        // The image's unprivileged user; fsGroup makes the data volume writable for it.
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "topologySpreadConstraints": spread,
        "containers": [container],
        "volumes": [
            { "name": "config", "configMap": { "name": names.config() } },
            // 0440: readable by the pod's fsGroup (the member's group), not by others.
            { "name": "peer-ca", "secret": { "secretName": names.peer_ca(), "defaultMode": 0o440 } },
        ],
    });
    if let Some(v) = pod_spec["volumes"].as_array_mut() {
        v.extend(secret_volumes);
    }
    let extra = [
        ("nodeSelector", serde_json::to_value(&spec.node_selector)),
        ("tolerations", serde_json::to_value(&spec.tolerations)),
        ("affinity", serde_json::to_value(&spec.affinity)),
    ];
    for (key, value) in extra {
        let value = value.map_err(|e| Error::Build("StatefulSet".into(), e))?;
        if !value.is_null() {
            pod_spec[key] = value;
        }
    }
    let mut claim = json!({
        "metadata": { "name": "data", "labels": selector },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": spec.storage.size } },
        },
    });
    if let Some(class) = &spec.storage.storage_class_name {
        claim["spec"]["storageClassName"] = json!(class);
    }
    object(
        "StatefulSet",
        meta(dg, names, names.main())?,
        json!({ "spec": {
            "replicas": replicas,
            "serviceName": names.members(),
            "podManagementPolicy": "Parallel",
            "updateStrategy": { "type": "OnDelete" },
            "persistentVolumeClaimRetentionPolicy": {
                "whenScaled": volume_policy(spec.storage.when_scaled),
                "whenDeleted": volume_policy(spec.storage.when_deleted),
            },
            "selector": { "matchLabels": selector },
            "template": {
                "metadata": { "labels": labels(names) },
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [claim],
        }}),
    )
}

/// The grid's kind, for events and errors.
pub fn kind() -> String {
    DeviceGrid::kind(&()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DeviceGridSpec;

    pub(crate) fn grid(replicas: i32) -> DeviceGrid {
        let spec: DeviceGridSpec = serde_json::from_value(json!({
            "replicas": replicas,
            "image": "devicegrid:dev",
            "config": { "failure_grace_ms": "30000" },
        }))
        .expect("spec");
        let mut dg = DeviceGrid::new("fleet", spec);
        dg.metadata.namespace = Some("iot".into());
        dg.metadata.uid = Some("0b6f2c1e-1111-2222-3333-444455556666".into());
        dg
    }

    #[test]
    fn children_are_owned_and_labelled() {
        let dg = grid(3);
        let names = Names::of(&dg).expect("names");
        let sts = stateful_set(&dg, &names, 3).expect("sts");
        let cm = config_map(&dg, &names).expect("cm");
        let svc = members_service(&dg, &names).expect("svc");
        let pdb = pod_disruption_budget(&dg, &names).expect("pdb");
        let np = network_policy(&dg, &names).expect("networkpolicy");
        for m in [
            &sts.metadata,
            &cm.metadata,
            &svc.metadata,
            &pdb.metadata,
            &np.metadata,
        ] {
            let o = &m.owner_references.as_ref().expect("owner")[0];
            assert_eq!((o.kind.as_str(), o.name.as_str()), ("DeviceGrid", "fleet"));
            assert_eq!(o.controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("iot"));
            assert_eq!(
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(GRID_LABEL))
                    .map(String::as_str),
                Some("fleet")
            );
        }
        let s = sts.spec.expect("spec");
        assert_eq!(s.replicas, Some(3));
        assert_eq!(s.service_name.as_deref(), Some("fleet-members"));
        assert_eq!(
            s.update_strategy.and_then(|u| u.type_).as_deref(),
            Some("OnDelete")
        );
        let pod = s.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("devicegrid:dev"));
        assert!(c.readiness_probe.is_some() && c.liveness_probe.is_some());
        assert_eq!(pod.topology_spread_constraints.map(|t| t.len()), Some(2));
        let headless = svc.spec.expect("svc spec");
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
        assert!(missing_uid_is_an_error());
    }

    fn missing_uid_is_an_error() -> bool {
        let mut dg = grid(3);
        dg.metadata.uid = None;
        let names = Names::of(&dg).expect("names");
        matches!(config_map(&dg, &names), Err(Error::MissingUid))
    }

    #[test]
    fn config_lists_existing_seeds_and_passes_settings_through() {
        let one = grid(1);
        let yaml = config_yaml(&one, &Names::of(&one).expect("names"));
        assert!(
            yaml.contains("  - id: 1\n    addr: fleet-0.fleet-members.iot.svc:7101"),
            "{yaml}"
        );
        assert!(
            !yaml.contains("fleet-1"),
            "seeds only name pods that exist: {yaml}"
        );
        assert!(yaml.contains("min_members: 1"), "{yaml}");
        let five = grid(5);
        let yaml = config_yaml(&five, &Names::of(&five).expect("names"));
        assert!(
            yaml.contains("fleet-2.") && !yaml.contains("fleet-3."),
            "{yaml}"
        );
        assert!(yaml.contains("replication_factor: 3"), "{yaml}");
        assert!(yaml.contains("failure_grace_ms: 30000"), "{yaml}");
        assert_eq!(
            selector_string(&Names::of(&five).expect("names")),
            "app.kubernetes.io/name=devicegrid,devicegrid.io/grid=fleet"
        );
    }

    /// The member configuration the operator writes is read and accepted by the member's own
    /// `Config` (as `devicegrid serve --config` does), for the sample grids under examples/.
    #[test]
    fn examples_give_member_configs_the_member_accepts() {
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(examples).expect("examples/") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("example");
            let mut dg: DeviceGrid = serde_yaml::from_str(&text).expect("a DeviceGrid");
            dg.metadata.namespace = Some("iot".into());
            dg.metadata.uid = Some("0b6f2c1e-1111-2222-3333-444455556666".into());
            let names = Names::of(&dg).expect("names");
            let yaml = config_yaml(&dg, &names);
            let mut config: devicegrid::config::Config =
                serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{path:?}: {e}\n{yaml}"));
            config.node_id = 1; // from --pod-index at start
            config
                .validate()
                .unwrap_or_else(|e| panic!("{path:?}: {e}\n{yaml}"));
            assert_eq!(
                config.replication_factor,
                u32::try_from(dg.spec.backup_count + 1).expect("rf")
            );
            stateful_set(&dg, &names, dg.spec.replicas).expect("sts");
            seen += 1;
        }
        assert!(seen >= 2, "examples/ has {seen} grids");
    }
}
