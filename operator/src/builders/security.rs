//! Security of a grid's pods: the Secret with the grid's CA, from which each member issues
//! its own certificate (renewed before it expires); the NetworkPolicy that lets only the
//! grid's own member pods reach the peer port (7101) while the client port (7001) stays open;
//! the client port's TLS and authentication from `spec.tls` and `spec.auth` ([`Security`]:
//! the member settings, the Secrets mounted, the probes' scheme); and the bootstrap admin
//! Secret the operator makes when `spec.auth` names none.
//!
//! The CA and the admin token are made once: the reconciler creates their Secrets when they
//! are missing and never applies them again, since a new CA would split the grid into
//! members that cannot verify each other, and a new token would lock the operator out.
//!
//! The tests here also check the peer port's wiring in the other children: the Services'
//! ports, the StatefulSet's env, ports and CA volume, and the member configuration.

use std::collections::BTreeMap;

use devicegrid_pki::Pem;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::ByteString;
use serde_json::{json, Value};

use super::{meta, object, selector_labels, Names, PEER_PORT, PORT};
use crate::crd::DeviceGrid;
use crate::Result;

/// Key of the CA certificate (PEM) in the peer CA Secret, and its file name in the pod.
pub const PEER_CA_CERT: &str = "ca.crt";
/// Key of the CA private key (PEM) in the peer CA Secret, and its file name in the pod.
pub const PEER_CA_KEY: &str = "ca.key";

/// Key of the admin token in the auth Secret, and its file name in the pod.
pub const ADMIN_TOKEN: &str = "token";
/// Keys of the client port's certificate, key and CA in a `kubernetes.io/tls` Secret.
pub const TLS_CERT: &str = "tls.crt";
/// See [`TLS_CERT`].
pub const TLS_KEY: &str = "tls.key";
/// See [`TLS_CERT`]; also the key of the client CA Secret.
pub const TLS_CA: &str = "ca.crt";

const TLS_DIR: &str = "/etc/devicegrid/tls";
const CLIENT_CA_DIR: &str = "/etc/devicegrid/client-ca";
const AUTH_DIR: &str = "/etc/devicegrid/auth";

/// What `spec.tls` and `spec.auth` ask of the members.
pub struct Security<'a> {
    dg: &'a DeviceGrid,
    names: &'a Names,
}

impl<'a> Security<'a> {
    /// The security settings of `dg`.
    pub fn of(dg: &'a DeviceGrid, names: &'a Names) -> Self {
        Security { dg, names }
    }

    /// Whether the client port speaks TLS.
    pub fn tls(&self) -> bool {
        self.dg.spec.tls.is_some()
    }

    /// The Secret with the admin token, when authentication is on.
    pub fn auth_secret(&self) -> Option<String> {
        let auth = self.dg.spec.auth.as_ref()?;
        Some(
            auth.secret_name
                .clone()
                .unwrap_or_else(|| self.names.admin()),
        )
    }

    /// The Secret with the client port's certificate, when one is given.
    pub fn tls_secret(&self) -> Option<&str> {
        self.dg.spec.tls.as_ref()?.secret_name.as_deref()
    }

    /// The member settings for the client port's TLS and for authentication.
    pub fn config_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(tls) = &self.dg.spec.tls {
            match &tls.secret_name {
                Some(_) => {
                    lines.push(format!("tls_cert: {TLS_DIR}/{TLS_CERT}"));
                    lines.push(format!("tls_key: {TLS_DIR}/{TLS_KEY}"));
                }
                None => {
                    let (grid, ns) = (&self.names.grid, &self.names.namespace);
                    lines.push("tls_self_issued: true".into());
                    lines.push(format!(
                        "tls_hosts: [{grid}, {grid}.{ns}, {grid}.{ns}.svc, \
                         {grid}.{ns}.svc.cluster.local]"
                    ));
                }
            }
            if tls.client_ca_secret_name.is_some() {
                lines.push(format!("tls_client_ca: {CLIENT_CA_DIR}/{TLS_CA}"));
            }
        }
        if self.auth_secret().is_some() {
            lines.push("auth_enabled: true".into());
            lines.push(format!(
                "auth_bootstrap_token_file: {AUTH_DIR}/{ADMIN_TOKEN}"
            ));
        }
        lines
    }

    /// The pod's volumes and the member container's mounts for these Secrets.
    pub fn volumes(&self) -> (Vec<Value>, Vec<Value>) {
        let tls = self.dg.spec.tls.as_ref();
        let secrets = [
            ("client-tls", self.tls_secret().map(String::from), TLS_DIR),
            (
                "client-ca",
                tls.and_then(|t| t.client_ca_secret_name.clone()),
                CLIENT_CA_DIR,
            ),
            ("admin-token", self.auth_secret(), AUTH_DIR),
        ];
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        for (name, secret, dir) in secrets {
            let Some(secret) = secret else { continue };
            // 0440: readable by the pod's fsGroup (the member's group), not by others.
            volumes.push(json!({
                "name": name,
                "secret": { "secretName": secret, "defaultMode": 0o440 },
            }));
            mounts.push(json!({ "name": name, "mountPath": dir, "readOnly": true }));
        }
        (volumes, mounts)
    }

    /// The probes' scheme.
    pub fn scheme(&self) -> &'static str {
        if self.tls() {
            "HTTPS"
        } else {
            "HTTP"
        }
    }
}

/// The Secret `<grid>-admin` holding `token`, the bootstrap admin token the operator made.
pub fn admin_secret(dg: &DeviceGrid, names: &Names, token: &str) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(dg, names, names.admin())?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            ADMIN_TOKEN.into(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    })
}

/// The Secret `<grid>-peer-ca` holding `pem`, the grid's CA certificate and key.
pub fn peer_ca_secret(dg: &DeviceGrid, names: &Names, pem: &Pem) -> Result<Secret> {
    Ok(Secret {
        metadata: meta(dg, names, names.peer_ca())?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                PEER_CA_CERT.into(),
                ByteString(pem.cert.clone().into_bytes()),
            ),
            (PEER_CA_KEY.into(), ByteString(pem.key.clone().into_bytes())),
        ])),
        ..Secret::default()
    })
}

/// The NetworkPolicy `<grid>-peers` over the member pods: the peer port only from the
/// grid's own member pods (same namespace), the client port from anywhere. Enforced where
/// the cluster's network plugin enforces NetworkPolicies; the peer port's mutual TLS holds
/// either way.
pub fn network_policy(dg: &DeviceGrid, names: &Names) -> Result<NetworkPolicy> {
    let members = selector_labels(names);
    object(
        "NetworkPolicy",
        meta(dg, names, names.peers())?,
        json!({ "spec": {
            "podSelector": { "matchLabels": members },
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{ "podSelector": { "matchLabels": members } }],
                    "ports": [{ "protocol": "TCP", "port": PEER_PORT }],
                },
                { "ports": [{ "protocol": "TCP", "port": PORT }] },
            ],
        }}),
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::grid;
    use super::super::{client_service, config_yaml, members_service, stateful_set};
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn peer_ca_secret_holds_the_ca_and_is_owned() {
        let dg = grid(3);
        let names = Names::of(&dg).expect("names");
        let pem = Pem {
            cert: "CERT".into(),
            key: "KEY".into(),
        };
        let secret = peer_ca_secret(&dg, &names, &pem).expect("secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("fleet-peer-ca"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.expect("data");
        assert_eq!(data["ca.crt"].0, b"CERT");
        assert_eq!(data["ca.key"].0, b"KEY");
        let owner = &secret.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("DeviceGrid", "fleet")
        );
    }

    #[test]
    fn network_policy_keeps_the_peer_port_to_members() {
        let dg = grid(3);
        let names = Names::of(&dg).expect("names");
        let np = network_policy(&dg, &names).expect("networkpolicy");
        assert_eq!(np.metadata.name.as_deref(), Some("fleet-peers"));
        assert!(np.metadata.owner_references.is_some());
        let spec = np.spec.expect("spec");
        let members = Some(selector_labels(&names));
        assert_eq!(
            spec.pod_selector.as_ref().expect("pods").match_labels,
            members
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = spec.ingress.expect("ingress");
        assert_eq!(rules.len(), 2);
        let port = |i: usize| {
            let ports = rules[i].ports.as_ref().expect("ports");
            assert_eq!(ports.len(), 1);
            assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
            ports[0].port.clone()
        };
        assert_eq!(port(0), Some(IntOrString::Int(PEER_PORT)));
        let from = rules[0].from.as_ref().expect("peer rule has sources");
        assert_eq!(from.len(), 1);
        assert!(from[0].namespace_selector.is_none() && from[0].ip_block.is_none());
        assert_eq!(
            from[0].pod_selector.as_ref().expect("pods").match_labels,
            members
        );
        assert_eq!(port(1), Some(IntOrString::Int(PORT)));
        assert!(rules[1].from.is_none(), "the client port is open to all");
    }

    fn secured(tls: serde_json::Value, auth: serde_json::Value) -> DeviceGrid {
        let mut dg = grid(3);
        dg.spec.tls = serde_json::from_value(tls).expect("tls");
        dg.spec.auth = serde_json::from_value(auth).expect("auth");
        dg
    }

    fn config_has(dg: &DeviceGrid, lines: &[&str]) -> String {
        let yaml = config_yaml(dg, &Names::of(dg).expect("names"));
        for line in lines {
            assert!(yaml.lines().any(|l| l == *line), "{line}: {yaml}");
        }
        yaml
    }

    /// The secret volumes of the pod (name -> Secret) and where the member mounts them.
    fn secret_mounts(dg: &DeviceGrid) -> (Vec<(String, String)>, Vec<String>, String) {
        let names = Names::of(dg).expect("names");
        let sts = stateful_set(dg, &names, 3).expect("sts");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let volumes = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| Some((v.name, v.secret?.secret_name?)))
            .collect();
        let c = &pod.containers[0];
        let mounts = c
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_path)
            .collect();
        let scheme = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.scheme.clone())
            .unwrap_or_default();
        (volumes, mounts, scheme)
    }

    #[test]
    fn plain_grid_has_no_client_tls_or_auth() {
        let dg = grid(3);
        let yaml = config_has(&dg, &[]);
        assert!(!yaml.contains("tls_") && !yaml.contains("auth_"), "{yaml}");
        let (volumes, _, scheme) = secret_mounts(&dg);
        assert_eq!(
            volumes,
            [("peer-ca".to_string(), "fleet-peer-ca".to_string())]
        );
        assert_eq!(scheme, "HTTP");
    }

    #[test]
    fn tls_without_a_secret_serves_the_members_own_certificates() {
        let dg = secured(json!({}), json!(null));
        config_has(
            &dg,
            &[
                "tls_self_issued: true",
                "tls_hosts: [fleet, fleet.iot, fleet.iot.svc, fleet.iot.svc.cluster.local]",
            ],
        );
        let (volumes, _, scheme) = secret_mounts(&dg);
        assert_eq!(volumes.len(), 1, "only the peer CA: {volumes:?}");
        assert_eq!(scheme, "HTTPS");
    }

    #[test]
    fn tls_and_auth_secrets_are_mounted_and_configured() {
        let dg = secured(
            json!({ "secretName": "fleet-tls", "clientCaSecretName": "clients" }),
            json!({ "secretName": "boot" }),
        );
        let yaml = config_has(
            &dg,
            &[
                "tls_cert: /etc/devicegrid/tls/tls.crt",
                "tls_key: /etc/devicegrid/tls/tls.key",
                "tls_client_ca: /etc/devicegrid/client-ca/ca.crt",
                "auth_enabled: true",
                "auth_bootstrap_token_file: /etc/devicegrid/auth/token",
            ],
        );
        assert!(!yaml.contains("tls_self_issued"), "{yaml}");
        let (volumes, mounts, scheme) = secret_mounts(&dg);
        let secrets: Vec<&str> = volumes.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(secrets, ["fleet-peer-ca", "fleet-tls", "clients", "boot"]);
        for dir in [
            "/etc/devicegrid/tls",
            "/etc/devicegrid/client-ca",
            "/etc/devicegrid/auth",
        ] {
            assert!(mounts.iter().any(|m| m == dir), "{dir}: {mounts:?}");
        }
        assert_eq!(scheme, "HTTPS");
        // Without a Secret of its own, auth uses the one the operator makes.
        let dg = secured(json!(null), json!({}));
        let names = Names::of(&dg).expect("names");
        assert_eq!(
            Security::of(&dg, &names).auth_secret().as_deref(),
            Some("fleet-admin")
        );
        let secret = admin_secret(&dg, &names, "dgt_0123456789abcdef").expect("secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("fleet-admin"));
        assert!(secret.metadata.owner_references.is_some());
        let data = secret.data.expect("data");
        assert_eq!(data["token"].0, b"dgt_0123456789abcdef");
    }

    /// The member accepts the configuration the operator writes for each combination.
    #[test]
    fn members_accept_the_security_settings() {
        for (tls, auth) in [
            (json!({}), json!({})),
            (
                json!({ "secretName": "t", "clientCaSecretName": "c" }),
                json!(null),
            ),
            (
                json!({ "clientCaSecretName": "c" }),
                json!({ "secretName": "a" }),
            ),
        ] {
            let dg = secured(tls, auth);
            let yaml = config_yaml(&dg, &Names::of(&dg).expect("names"));
            let mut config: devicegrid::config::Config =
                serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            config.node_id = 1;
            config.validate().unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        }
    }

    fn port_names(ports: &[(Option<String>, i32)]) -> Vec<(&str, i32)> {
        ports
            .iter()
            .map(|(n, p)| (n.as_deref().unwrap_or(""), *p))
            .collect()
    }

    #[test]
    fn members_reach_each_other_on_the_peer_port_with_the_grid_ca() {
        let dg = grid(3);
        let names = Names::of(&dg).expect("names");
        let service_ports = |svc: Service| -> Vec<(Option<String>, i32)> {
            let ports = svc.spec.and_then(|s| s.ports).expect("ports");
            ports.into_iter().map(|p| (p.name, p.port)).collect()
        };
        let headless = service_ports(members_service(&dg, &names).expect("members"));
        assert_eq!(port_names(&headless), [("api", 7001), ("peer", 7101)]);
        let client = service_ports(client_service(&dg, &names).expect("client"));
        assert_eq!(port_names(&client), [("api", 7001)]);

        let sts = stateful_set(&dg, &names, 3).expect("sts");
        let pod = sts.spec.expect("spec").template.spec.expect("pod");
        let c = &pod.containers[0];
        let ports: Vec<_> = c
            .ports
            .clone()
            .expect("ports")
            .into_iter()
            .map(|p| (p.name, p.container_port))
            .collect();
        assert_eq!(port_names(&ports), [("api", 7001), ("peer", 7101)]);
        let env = |name: &str| {
            c.env
                .as_ref()
                .and_then(|e| e.iter().find(|v| v.name == name))
                .and_then(|v| v.value.clone())
        };
        assert_eq!(
            env("DEVICEGRID_ADVERTISE").as_deref(),
            Some("$(POD_NAME).fleet-members.iot.svc:7001")
        );
        assert_eq!(
            env("DEVICEGRID_PEER_ADVERTISE").as_deref(),
            Some("$(POD_NAME).fleet-members.iot.svc:7101")
        );
        let mount = c
            .volume_mounts
            .as_ref()
            .and_then(|m| m.iter().find(|m| m.mount_path == "/etc/devicegrid/pki"))
            .expect("pki mount");
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == mount.name))
            .and_then(|v| v.secret.clone())
            .expect("secret volume");
        assert_eq!(volume.secret_name.as_deref(), Some("fleet-peer-ca"));
        assert_eq!(volume.default_mode, Some(0o440));

        let yaml = config_yaml(&dg, &names);
        for line in [
            "cluster_name: iot.fleet",
            "listen: 0.0.0.0:7001",
            "peer_listen: 0.0.0.0:7101",
            "peer_ca: /etc/devicegrid/pki/ca.crt",
            "peer_ca_key: /etc/devicegrid/pki/ca.key",
        ] {
            assert!(yaml.lines().any(|l| l == line), "{line}: {yaml}");
        }
        let seeds: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("addr: "))
            .collect();
        assert_eq!(
            seeds,
            [
                "fleet-0.fleet-members.iot.svc:7101",
                "fleet-1.fleet-members.iot.svc:7101",
                "fleet-2.fleet-members.iot.svc:7101",
            ],
            "seeds are peer addresses"
        );
    }
}
