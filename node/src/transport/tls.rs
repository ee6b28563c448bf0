//! Mutual TLS for member-to-member traffic. Both ends present a member certificate signed
//! by the grid's CA; the certificate names the member (`devicegrid_pki::MemberIdentity`), so
//! the serving side knows which member is calling and refuses messages that claim another.
//!
//! Clients check the chain and that the server's certificate names a member of this grid;
//! host names are not checked (members are reached by addresses that change with pods), the
//! member identity is what counts.

use std::path::PathBuf;
use std::sync::Arc;

use devicegrid_pki::{member_identity, MemberIdentity, Pem};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

/// Days a certificate the member issues for itself stays valid (it issues a new one at
/// every start).
const SELF_ISSUED_DAYS: u32 = 365;

/// Where this member's peer certificates come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The grid's CA certificate.
    pub ca: PathBuf,
    /// This member's certificate and key, or the CA's key to issue one.
    pub member: MemberCert,
}

/// This member's certificate, from files or issued at start.
#[derive(Clone, Debug)]
pub enum MemberCert {
    /// Certificate and key files.
    Files {
        /// Certificate (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
    /// The CA's private key: the member issues its own certificate.
    IssueWith {
        /// CA key (PEM).
        ca_key: PathBuf,
        /// Names for the certificate besides the identity (the peer host).
        hosts: Vec<String>,
    },
}

/// The TLS settings of both ends of peer traffic.
#[derive(Clone)]
pub struct PeerTls {
    /// For the peer listener (client certificates required).
    pub server: Arc<ServerConfig>,
    /// For connections to other members.
    pub client: Arc<ClientConfig>,
    /// The grid these certificates belong to.
    pub cluster: String,
}

fn tls_err(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

fn read(path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| tls_err(format!("reading {}: {e}", path.display())))
}

impl PeerTls {
    /// Loads (or issues) the certificates of member `id` of `cluster`.
    pub fn load(files: &TlsFiles, cluster: &str, id: u64) -> Result<PeerTls> {
        let ca_pem = read(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&ca_pem) {
            let ca = ca.map_err(|e| tls_err(format!("{}: {e}", files.ca.display())))?;
            roots
                .add(ca)
                .map_err(|e| tls_err(format!("{}: {e}", files.ca.display())))?;
        }
        if roots.is_empty() {
            return Err(tls_err(format!(
                "{} holds no certificate",
                files.ca.display()
            )));
        }
        let (cert_pem, key_pem) = match &files.member {
            MemberCert::Files { cert, key } => (read(cert)?, read(key)?),
            MemberCert::IssueWith { ca_key, hosts } => {
                let ca = Pem {
                    cert: String::from_utf8_lossy(&ca_pem).into_owned(),
                    key: String::from_utf8_lossy(&read(ca_key)?).into_owned(),
                };
                let pem = devicegrid_pki::issue_member(&ca, cluster, id, hosts, SELF_ISSUED_DAYS)
                    .map_err(tls_err)?;
                (pem.cert.into_bytes(), pem.key.into_bytes())
            }
        };
        Self::from_pem(roots, &cert_pem, &key_pem, cluster, id)
    }

    fn from_pem(
        roots: RootCertStore,
        cert_pem: &[u8],
        key_pem: &[u8],
        cluster: &str,
        id: u64,
    ) -> Result<PeerTls> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err(format!("member certificate: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| tls_err("the member certificate file holds no certificate"))?;
        let expected = MemberIdentity {
            cluster: cluster.into(),
            id,
        };
        match member_identity(leaf).map_err(tls_err)? {
            Some(named) if named == expected => {}
            Some(named) => {
                return Err(tls_err(format!(
                    "the member certificate names {}, this member is {}",
                    named.uri(),
                    expected.uri()
                )))
            }
            None => {
                return Err(tls_err(format!(
                    "the member certificate names no member (expected the URI {})",
                    expected.uri()
                )))
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls_err(format!("member key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(tls_err)?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(tls_err)?;
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MemberVerifier {
                roots,
                cluster: cluster.into(),
                provider,
            }))
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
            cluster: cluster.into(),
        })
    }

    /// The member a verified peer certificate names, if it is a member of this grid.
    pub fn member_of(&self, cert: &CertificateDer<'_>) -> Option<u64> {
        match member_identity(cert) {
            Ok(Some(m)) if m.cluster == self.cluster => Some(m.id),
            _ => None,
        }
    }
}

/// Accepts a server whose certificate chains to the grid's CA and names a member of this
/// grid, whatever address it was reached at.
#[derive(Debug)]
struct MemberVerifier {
    roots: Arc<RootCertStore>,
    cluster: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for MemberVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match member_identity(end_entity) {
            Ok(Some(m)) if m.cluster == self.cluster => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(format!(
                "the peer's certificate names no member of grid {}",
                self.cluster
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
