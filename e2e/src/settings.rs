//! Settings from the environment (the Makefile sets them for the local cluster and for kind).

use std::path::PathBuf;

use anyhow::{bail, Result};

/// What the suite needs to know about the cluster it runs against.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The repository (for the chart).
    pub repo: PathBuf,
    /// kubectl binary (`E2E_KUBECTL`, default `kubectl`).
    pub kubectl: String,
    /// helm binary (`E2E_HELM`, default `helm`).
    pub helm: String,
    /// Grid member image (`E2E_NODE_IMAGE`, default `devicegrid/node:<version>`).
    pub node_image: String,
    /// The image a rolling update moves the grid to (`E2E_NODE_IMAGE_NEXT`, default the node
    /// image's tag with `-next`; the same content under another tag will do).
    pub node_image_next: String,
    /// Operator image repository and tag (`E2E_OPERATOR_IMAGE`).
    pub operator_image: (String, String),
    /// Command prefix that runs a command on a node; `{node}` is replaced by the node name
    /// (`E2E_NODE_EXEC`; empty: the node is this machine; kind: `docker exec {node}`).
    pub node_exec: Vec<String>,
    /// crictl as run on a node, with its runtime endpoint (`E2E_CRICTL`, default `crictl`).
    pub crictl: String,
}

impl Settings {
    /// Reads the environment; fails when no cluster is named.
    pub fn from_env() -> Result<Settings> {
        if std::env::var_os("KUBECONFIG").is_none() {
            bail!(
                "KUBECONFIG is not set: the e2e suite runs against the cluster it names \
                 (`make e2e` starts a local one, `make e2e-kind` a kind cluster)"
            );
        }
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_string())
        };
        let version = env!("CARGO_PKG_VERSION");
        let operator = var(
            "E2E_OPERATOR_IMAGE",
            &format!("devicegrid/operator:{version}"),
        );
        let Some((repo, tag)) = operator.rsplit_once(':').filter(|(_, t)| !t.contains('/')) else {
            bail!("E2E_OPERATOR_IMAGE must be REPOSITORY:TAG, not {operator:?}");
        };
        let node_image = var("E2E_NODE_IMAGE", &format!("devicegrid/node:{version}"));
        Ok(Settings {
            repo: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
            kubectl: var("E2E_KUBECTL", "kubectl"),
            helm: var("E2E_HELM", "helm"),
            node_image_next: var("E2E_NODE_IMAGE_NEXT", &format!("{node_image}-next")),
            node_image,
            operator_image: (repo.to_string(), tag.to_string()),
            node_exec: var("E2E_NODE_EXEC", "")
                .split_whitespace()
                .map(String::from)
                .collect(),
            crictl: var("E2E_CRICTL", "crictl"),
        })
    }
}
