//! `spec.tls` and `spec.auth` against the real API server, inside the lifecycle test (which
//! owns the API server, the operator and the stand-in grid).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{grid, owned_by, support, wait, DeviceGrid, NS, T};

/// `spec.auth` without a Secret: the operator makes `<grid>-admin` once and calls the grid
/// with its token; `spec.tls`: members serve TLS (probes over HTTPS); a Secret the spec names
/// that does not exist is reported in the status.
pub async fn guarded_grid(admin: &Client, grids: &Api<DeviceGrid>, fake: &support::Shared) {
    let dg = grid(
        "guarded",
        json!({ "replicas": 1, "image": "devicegrid:test", "auth": {} }),
    );
    let uid = grids
        .create(&PostParams::default(), &dg)
        .await
        .expect("create guarded grid")
        .uid()
        .expect("uid");
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    let secret = wait(T, "the admin token Secret", || async {
        secrets.get_opt("guarded-admin").await.ok().flatten()
    })
    .await;
    assert!(owned_by(secret.metadata.owner_references.clone(), &uid));
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        .expect("token");
    assert!(token.starts_with("dgt_") && token.len() == 68, "{token}");
    let bearer = format!("Bearer {token}");
    wait(T, "a grid call with the admin token", || async {
        fake.lock()
            .expect("fake")
            .authorizations
            .contains(&bearer)
            .then_some(())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let config = |text: &'static [&'static str]| {
        let cms = cms.clone();
        async move {
            let cm = cms.get("guarded-config").await.ok()?;
            let yaml = cm.data?.get("devicegrid.yaml")?.clone();
            text.iter()
                .all(|l| yaml.lines().any(|y| y == *l))
                .then_some(())
        }
    };
    wait(T, "auth settings in the member config", || {
        config(&[
            "auth_enabled: true",
            "auth_bootstrap_token_file: /etc/devicegrid/auth/token",
        ])
    })
    .await;
    let sts_api: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    let mounted = |sts: &StatefulSet, secret: &str| {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.volumes.as_ref())
            .is_some_and(|v| {
                v.iter().any(|v| {
                    v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret)
                })
            })
    };
    let sts = sts_api.get("guarded").await.expect("sts");
    assert!(mounted(&sts, "guarded-admin"));

    // TLS with the members' own certificates.
    let tls = json!({ "spec": { "tls": {} } });
    grids
        .patch("guarded", &PatchParams::default(), &Patch::Merge(&tls))
        .await
        .expect("tls on");
    wait(T, "TLS settings in the member config", || {
        config(&["tls_self_issued: true"])
    })
    .await;
    let https = wait(T, "probes over HTTPS", || async {
        let sts = sts_api.get("guarded").await.ok()?;
        let c = sts.spec?.template.spec?.containers.into_iter().next()?;
        let probe = c.readiness_probe?.http_get?;
        (probe.scheme.as_deref() == Some("HTTPS")).then_some(())
    });
    https.await;
    // The old token is kept across passes.
    let again = secrets.get("guarded-admin").await.expect("secret");
    assert_eq!(again.data, secret.data);

    // A Secret that is not there is named in the status.
    let missing = json!({ "spec": { "tls": { "secretName": "nope" } } });
    grids
        .patch("guarded", &PatchParams::default(), &Patch::Merge(&missing))
        .await
        .expect("tls secret");
    wait(T, "the missing Secret reported", || async {
        let s = grids.get_status("guarded").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| {
                c.reason == "ReconcileFailed"
                    && c.message
                        .contains("Secret nope (spec.tls.secretName): not found")
            })
            .then_some(())
    })
    .await;
    grids
        .delete("guarded", &DeleteParams::default())
        .await
        .expect("delete guarded");
}
