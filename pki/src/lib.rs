//! Certificates of a grid. Member-to-member traffic is mutual TLS with certificates from the
//! grid's CA; a member certificate names its member id in a URI subject alternative name,
//! `urn:devicegrid:<cluster>:member:<id>`, so the peer port knows who is calling and can
//! refuse a message that claims another member's id.
//!
//! | item | job |
//! | --- | --- |
//! | [`new_ca`] | a self-signed CA for one grid (`devicegrid certs ca`, `devicegrid dev`, the operator) |
//! | [`issue_member`] | a member certificate signed by that CA |
//! | [`member_identity`] | the member a certificate names |
//! | [`new_token`] | a random API token (admin API, the operator's bootstrap admin Secret) |
//!
//! Keys are ECDSA P-256; everything is PEM.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// Its private key (PKCS#8).
    pub key: String,
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or the CA.
    #[error("certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Not a DER certificate.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// A cluster name that cannot appear in an identity.
    #[error("cluster name {0:?} must be 1-63 characters of a-z A-Z 0-9 . _ -")]
    ClusterName(String),
}

/// The member a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberIdentity {
    /// The grid's name.
    pub cluster: String,
    /// The member id.
    pub id: u64,
}

const URN_PREFIX: &str = "urn:devicegrid:";

impl MemberIdentity {
    /// The URI subject alternative name of this identity.
    pub fn uri(&self) -> String {
        format!("{URN_PREFIX}{}:member:{}", self.cluster, self.id)
    }

    /// Reads an identity URI; `None` when `uri` is not one.
    pub fn from_uri(uri: &str) -> Option<MemberIdentity> {
        let rest = uri.strip_prefix(URN_PREFIX)?;
        let (cluster, id) = rest.rsplit_once(":member:")?;
        let id: u64 = id.parse().ok()?;
        (valid_cluster(cluster) && id > 0).then(|| MemberIdentity {
            cluster: cluster.to_string(),
            id,
        })
    }
}

/// Whether `name` may name a grid in an identity.
pub fn valid_cluster(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// `n` days, for the lifetimes below.
pub fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 86_400)
}

/// A new self-signed CA for the grid `cluster`, valid for `lifetime`.
pub fn new_ca(cluster: &str, lifetime: Duration) -> Result<Pem, PkiError> {
    if !valid_cluster(cluster) {
        return Err(PkiError::ClusterName(cluster.into()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&format!("DeviceGrid CA {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, lifetime);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for member `id` of `cluster`, signed by `ca`, valid for `lifetime`, usable as
/// both TLS server and client; `hosts` (DNS names or IP addresses) are added as names.
pub fn issue_member(
    ca: &Pem,
    cluster: &str,
    id: u64,
    hosts: &[String],
    lifetime: Duration,
) -> Result<Pem, PkiError> {
    if !valid_cluster(cluster) {
        return Err(PkiError::ClusterName(cluster.into()));
    }
    let identity = MemberIdentity {
        cluster: cluster.into(),
        id,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&format!("member {id} of {cluster}"));
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    for h in hosts {
        params.subject_alt_names.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.clone().try_into()?),
        });
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, lifetime);
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The member a DER certificate names, if any. The chain is not checked here (TLS did that).
pub fn member_identity(der: &[u8]) -> Result<Option<MemberIdentity>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?;
    Ok(san
        .into_iter()
        .flat_map(|s| s.value.general_names.iter())
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => MemberIdentity::from_uri(u),
            _ => None,
        }))
}

/// What a token must be (an admin token given by a user included): [`valid_token`].
pub const TOKEN_RULE: &str = "the token must be 16 or more characters, without spaces";

/// Whether `token` can be a user's token: 16 or more characters, no white space.
pub fn valid_token(token: &str) -> bool {
    token.len() >= 16 && !token.chars().any(char::is_whitespace)
}

/// A new random API token (`dgt_` and 64 hex digits: 256 bits from the system's secure
/// random source); `None` if that source fails.
pub fn new_token() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("dgt_{hex}"))
}

fn name(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn.push(DnType::OrganizationName, "DeviceGrid");
    dn
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    // An hour of slack for clocks a little behind.
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + lifetime;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    #[test]
    fn member_certificate_names_its_member() {
        let ca = new_ca("grid-a", days(30)).expect("ca");
        let m = issue_member(
            &ca,
            "grid-a",
            7,
            &["127.0.0.1".into(), "m7.local".into()],
            days(1),
        )
        .expect("member");
        assert_eq!(
            member_identity(&der(&m.cert)).expect("parse"),
            Some(MemberIdentity {
                cluster: "grid-a".into(),
                id: 7
            })
        );
        assert_eq!(member_identity(&der(&ca.cert)).expect("parse"), None);
        assert!(member_identity(b"not a certificate").is_err());
    }

    #[test]
    fn identity_uris_round_trip_and_refuse_junk() {
        let id = MemberIdentity {
            cluster: "g.1_x-y".into(),
            id: 42,
        };
        assert_eq!(MemberIdentity::from_uri(&id.uri()), Some(id));
        for bad in [
            "urn:devicegrid:g:member:0",
            "urn:devicegrid:g:member:x",
            "urn:devicegrid::member:1",
            "urn:devicegrid:a b:member:1",
            "urn:other:g:member:1",
            "",
        ] {
            assert_eq!(MemberIdentity::from_uri(bad), None, "{bad}");
        }
        assert!(matches!(
            new_ca("bad name", days(1)),
            Err(PkiError::ClusterName(_))
        ));
    }
}
