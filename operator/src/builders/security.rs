//! The children that guard the peer port: the Secret with the grid's CA, from which each
//! member issues its own certificate at start, and the NetworkPolicy that lets only the
//! grid's own member pods reach the peer port (7101) while the client port (7001) stays open.
//!
//! The CA is made once: the reconciler creates the Secret when it is missing and never
//! applies it again, since a new CA would split the grid into members that cannot verify
//! each other.
//!
//! The tests here also check the peer port's wiring in the other children: the Services'
//! ports, the StatefulSet's env, ports and CA volume, and the member configuration.

use std::collections::BTreeMap;

use devicegrid_pki::Pem;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::ByteString;
use serde_json::json;

use super::{meta, object, selector_labels, Names, PEER_PORT, PORT};
use crate::crd::DeviceGrid;
use crate::Result;

/// Key of the CA certificate (PEM) in the peer CA Secret, and its file name in the pod.
pub const PEER_CA_CERT: &str = "ca.crt";
/// Key of the CA private key (PEM) in the peer CA Secret, and its file name in the pod.
pub const PEER_CA_KEY: &str = "ca.key";

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
