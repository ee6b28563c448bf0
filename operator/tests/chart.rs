//! The operator's Helm chart with the real helm binary: it lints, its rendered output under
//! `charts/rendered` is current, and values its schema or templates refuse are refused with
//! a message naming them.

// Shared with the API-server tests; this one uses only the repository paths and helm.
#[allow(dead_code)]
mod support;

use support::{repo, tool, RELEASE};

#[test]
fn chart_lints_its_rendered_output_is_current_and_bad_values_are_refused() {
    let out = tempfile::tempdir().expect("tempdir");
    let render = std::process::Command::new(repo().join("scripts/render-charts.sh"))
        .arg(out.path())
        .output()
        .expect("run scripts/render-charts.sh");
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    for entry in std::fs::read_dir(out.path()).expect("rendered") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_owned();
        let fresh = std::fs::read_to_string(&path).expect("fresh");
        let kept =
            std::fs::read_to_string(repo().join("charts/rendered").join(&name)).unwrap_or_default();
        assert!(
            fresh == kept,
            "charts/rendered/{} is stale: run `make charts`",
            name.to_string_lossy()
        );
    }
    let helm = tool("scripts/helm-bin.sh");
    for (set, message) in [
        ("replicaCount=-1", "replicaCount"),
        ("logFormat=xml", "logFormat"),
        ("watchNamespaces={Not_A_Name}", "watchNamespaces"),
        (
            "leaderElection.enabled=false,replicaCount=2",
            "needs leaderElection.enabled",
        ),
        (
            "leaderElection.leaseDurationSeconds=3,leaderElection.renewGraceSeconds=5",
            "must exceed",
        ),
    ] {
        let out = std::process::Command::new(&helm)
            .args(["template", RELEASE])
            .arg(repo().join("charts/devicegrid-operator"))
            .args(["--set", set])
            .output()
            .expect("helm template");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(stderr.contains(message), "{set}: {stderr}");
    }
}
