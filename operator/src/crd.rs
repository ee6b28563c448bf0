//! The `DeviceGrid` custom resource (`devicegrid.io/v1alpha1`): spec, status and the
//! validation the API server enforces (OpenAPI schema from these types, plus CEL rules).

use std::collections::BTreeMap;

use devicegrid_proto::MemberState;
use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default number of partitions of a new grid.
pub const DEFAULT_PARTITIONS: i32 = 271;
/// Default backups per partition (replication factor 3).
pub const DEFAULT_BACKUPS: i32 = 2;

/// A DeviceGrid: a Raft-replicated, partitioned data grid for IoT device management, run as
/// a StatefulSet of grid members.
// Several printer columns repeat `type_ = "integer"`, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "devicegrid.io",
    version = "v1alpha1",
    kind = "DeviceGrid",
    doc = "A DeviceGrid: grid members run as a StatefulSet, scaled and rolled by the operator",
    plural = "devicegrids",
    shortname = "dg",
    namespaced,
    status = "DeviceGridStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Partitions",
        type_ = "integer",
        json_path = ".spec.partitionCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    cel,
    validation = Rule::new("self.replicas == 1 || self.backupCount < self.replicas")
        .message("backupCount must be less than replicas (each backup needs its own member), unless replicas is 1")
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceGridSpec {
    /// Number of grid members. Scale down drains members before their pods go.
    #[x_kube(validation = Rule::new("self >= 1").message("replicas must be at least 1"))]
    pub replicas: i32,
    /// Container image of the grid members.
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: String,
    /// Image pull policy of the grid members.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Number of partitions, fixed when the grid is created.
    #[serde(default = "default_partitions")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("partitionCount is immutable"))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65536").message("partitionCount must be between 1 and 65536"))]
    pub partition_count: i32,
    /// Backups per partition: the replication factor minus one.
    #[serde(default = "default_backups")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 6").message("backupCount must be between 0 and 6"))]
    pub backup_count: i32,
    /// Persistent storage of each member (size and class are fixed at creation: a
    /// StatefulSet's volume claim templates cannot change).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.size == oldSelf.size && (has(self.storageClassName) ? (has(oldSelf.storageClassName) && self.storageClassName == oldSelf.storageClassName) : !has(oldSelf.storageClassName))").message("storage.size and storage.storageClassName are immutable (StatefulSet volume claim templates cannot change)"))]
    pub storage: StorageSpec,
    /// CPU and memory of each member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Spread of the member pods; by default across zones and nodes (best effort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// TLS on the client port (members always use mutual TLS between themselves, on the
    /// peer port). Set or changed on a running grid, members are rolled one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Authentication and authorization of client requests: bearer tokens of users whose
    /// roles grant what they ask (users and roles through the grid's admin API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Grid settings passed to every member (keys of `devicegrid serve --config`, e.g.
    /// `failure_grace_ms`, `max_moves`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

fn default_partitions() -> i32 {
    DEFAULT_PARTITIONS
}

fn default_backups() -> i32 {
    DEFAULT_BACKUPS
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node lacks the image.
    #[default]
    IfNotPresent,
    /// Never pull (images loaded onto the nodes).
    Never,
}

/// What happens to a member's volume.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum VolumePolicy {
    /// Keep the PersistentVolumeClaim.
    #[default]
    Retain,
    /// Delete the PersistentVolumeClaim.
    Delete,
}

/// Persistent storage of each member.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size, e.g. `10Gi`.
    #[serde(default = "default_size")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(\\\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$')").message("size must be a Kubernetes quantity such as 10Gi"))]
    pub size: String,
    /// Storage class (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Volumes of members removed by a scale-down.
    #[serde(default)]
    pub when_scaled: VolumePolicy,
    /// Volumes of every member when the grid is deleted.
    #[serde(default)]
    pub when_deleted: VolumePolicy,
}

fn default_size() -> String {
    "10Gi".into()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_size(),
            storage_class_name: None,
            when_scaled: VolumePolicy::Retain,
            when_deleted: VolumePolicy::Retain,
        }
    }
}

/// TLS on the client port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret with the client port's certificate (`tls.crt`,
    /// `tls.key`) and the CA that signed it (`ca.crt`, which the operator trusts); it must
    /// name `<grid>.<namespace>.svc`. Members pick up a renewed Secret without a restart.
    /// Without it, each member serves its own certificate from the grid's CA (Secret
    /// `<grid>-peer-ca`, key `ca.crt`: what clients trust), naming the client Service and
    /// the member's own address, renewed before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A Secret with `ca.crt`: clients may present a certificate it signed (verified when
    /// presented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_secret_name: Option<String>,
}

/// Authentication of client requests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// A Secret whose `token` (16 or more characters, no spaces) becomes the token of the
    /// grid's first user, `admin`, while the grid has no user. Without it, the operator
    /// creates `<grid>-admin` with a random token. The operator calls the grid's admin API
    /// with this token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// What the operator observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceGridStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Pending`, `Running`, `Scaling`, `Upgrading`, `Rebalancing` or `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Members the StatefulSet runs (for the scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Ready member pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// `Available`, `Progressing`, `Rebalancing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Members as the grid reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Partition health as the grid reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<PartitionStatus>,
}

/// One grid member in the status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member id (pod ordinal + 1).
    pub id: u64,
    /// `joining`, `active`, `draining` or `decommissioned`.
    // The wire contract has no schema; the CRD declares the state a string, as it always has.
    #[schemars(with = "String")]
    pub state: MemberState,
    /// Whether the member answers and is ready.
    pub ready: bool,
    /// Partition replicas it holds.
    pub partitions_held: u64,
    /// Partitions it leads.
    pub partitions_led: u64,
}

/// Partition health in the status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionStatus {
    /// Number of partitions.
    pub count: u64,
    /// Partitions with a replica missing or unreachable.
    pub under_replicated: u64,
    /// Partitions without a leader.
    pub without_leader: u64,
    /// Replica moves in progress.
    pub moves_in_progress: u64,
}

/// The CRD as YAML, as `make crds` writes it to `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let header = "# Generated by `devicegrid-operator crd` (make crds) from operator/src/crd.rs.\n\
                  # Do not edit; make test fails when this file is stale.\n";
    Ok(format!(
        "{header}{}",
        serde_yaml::to_string(&DeviceGrid::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> serde_json::Value {
        let mut s = json!({ "replicas": 3, "image": "devicegrid:dev" });
        if let (Some(base), Some(more)) = (s.as_object_mut(), extra.as_object()) {
            base.extend(more.clone());
        }
        s
    }

    fn refused(value: &serde_json::Value, old: Option<&serde_json::Value>) -> String {
        match DeviceGridSpec::validate_cel(value, old) {
            Ok(()) => String::new(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn cel_rules_accept_good_grids_and_refuse_bad_ones() {
        // Defaults filled in as the API server would.
        let good = spec(json!({ "partitionCount": 271, "backupCount": 2 }));
        assert_eq!(refused(&good, None), "");
        let single = spec(json!({ "replicas": 1, "partitionCount": 271, "backupCount": 2 }));
        assert_eq!(
            refused(&single, None),
            "",
            "one member needs no distinct backups"
        );
        for (bad, message) in [
            (json!({ "replicas": 0 }), "replicas must be at least 1"),
            (
                json!({ "backupCount": 3 }),
                "backupCount must be less than replicas",
            ),
            (json!({ "image": "" }), "image must not be empty"),
            (
                json!({ "partitionCount": 0 }),
                "partitionCount must be between",
            ),
            (
                json!({ "backupCount": 7, "replicas": 9 }),
                "backupCount must be between",
            ),
        ] {
            let mut v = spec(json!({ "partitionCount": 271, "backupCount": 2 }));
            if let (Some(base), Some(more)) = (v.as_object_mut(), bad.as_object()) {
                base.extend(more.clone());
            }
            let why = refused(&v, None);
            assert!(why.contains(message), "{bad}: {why:?}");
        }
        let resized = spec(json!({ "partitionCount": 300, "backupCount": 2 }));
        assert!(refused(&resized, Some(&good)).contains("partitionCount is immutable"));
        let scaled = spec(json!({ "replicas": 5, "partitionCount": 271, "backupCount": 2 }));
        assert_eq!(refused(&scaled, Some(&good)), "", "replicas may change");
        let storage = |s: serde_json::Value| {
            spec(json!({ "partitionCount": 271, "backupCount": 2, "storage": s }))
        };
        let base = storage(json!({ "size": "1Gi", "whenScaled": "Retain" }));
        let bigger = storage(json!({ "size": "2Gi", "whenScaled": "Retain" }));
        let classed = storage(json!({ "size": "1Gi", "storageClassName": "fast" }));
        let policy = storage(json!({ "size": "1Gi", "whenScaled": "Delete" }));
        for changed in [&bigger, &classed] {
            let why = refused(changed, Some(&base));
            assert!(
                why.contains("storage.size and storage.storageClassName are immutable"),
                "{why}"
            );
        }
        assert_eq!(
            refused(&policy, Some(&base)),
            "",
            "volume policies may change"
        );
        let size = |s: &str| StorageSpec::validate_cel(&json!({ "size": s }), None).is_ok();
        assert!(size("10Gi") && size("1.5Ti") && size("500M"));
        assert!(!size("ten gigs") && !size("10 Gi"));
    }

    #[test]
    fn crds_dir_and_the_charts_copy_are_current() {
        let generated = crd_yaml().expect("crd yaml");
        for file in [
            "crds/devicegrid.io_devicegrids.yaml",
            "charts/devicegrid-operator/crds/devicegrid.io_devicegrids.yaml",
        ] {
            let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
            let committed = std::fs::read_to_string(path).unwrap_or_default();
            assert!(
                committed == generated,
                "{file} is stale: run `make crds` and commit it"
            );
        }
    }

    #[test]
    fn crd_has_the_subresources_and_names_kubectl_needs() {
        let crd = serde_json::to_value(DeviceGrid::crd()).expect("json");
        let v = &crd["spec"]["versions"][0];
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["dg"]));
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        assert!(v["subresources"]["status"].is_object());
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["partitionCount"]["default"], 271);
        assert_eq!(spec["backupCount"]["default"], 2);
    }
}
