//! Mutual TLS for member-to-member traffic. Both ends present a member certificate signed
//! by the grid's CA; the certificate names the member (`devicegrid_pki::MemberIdentity`), so
//! the serving side knows which member is calling and refuses messages that claim another.
//!
//! Clients check the chain and that the server's certificate names a member of this grid;
//! host names are not checked (members are reached by addresses that change with pods), the
//! member identity is what counts.
//!
//! Certificates come from a [`CertSource`]: files, reloaded when they change (checked at
//! most once a second, on handshakes), so a rotated certificate is served without a restart
//! (a file that does not load, half written or naming another member, leaves the old
//! certificate in place and is logged); or issued by the member itself from the grid's CA
//! key, issued again once two thirds of its lifetime have passed. The client port can serve
//! the member's own certificate too ([`ClientPortCert::Member`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devicegrid_pki::{member_identity, MemberIdentity, Pem};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

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
        /// Names for the certificate besides the identity (the peer host, and the client
        /// port's names when it serves this certificate).
        hosts: Vec<String>,
        /// Lifetime of each certificate issued; a new one after two thirds of it.
        lifetime: Duration,
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
    /// This member's certificate (also served on the client port with
    /// [`ClientPortCert::Member`]).
    pub member_cert: Arc<CertSource>,
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_pem = read(&files.ca)?;
        let roots = Arc::new(roots_of(&ca_pem, &files.ca)?);
        let identity = MemberIdentity {
            cluster: cluster.into(),
            id,
        };
        let member_cert = Arc::new(match &files.member {
            MemberCert::Files { cert, key } => CertSource::Files(Reloading::new(
                cert.clone(),
                key.clone(),
                Some(identity),
                provider.clone(),
            )?),
            MemberCert::IssueWith {
                ca_key,
                hosts,
                lifetime,
            } => {
                let ca = Pem {
                    cert: String::from_utf8_lossy(&ca_pem).into_owned(),
                    key: String::from_utf8_lossy(&read(ca_key)?).into_owned(),
                };
                CertSource::Issued(SelfIssued::new(
                    ca,
                    identity,
                    hosts.clone(),
                    *lifetime,
                    provider.clone(),
                )?)
            }
        });
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(tls_err)?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(member_cert.clone());
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MemberVerifier {
                roots,
                cluster: cluster.into(),
                provider,
            }))
            .with_client_cert_resolver(member_cert.clone());
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
            cluster: cluster.into(),
            member_cert,
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

/// Where a served certificate comes from.
#[derive(Debug)]
pub enum CertSource {
    /// Files, reloaded when they change.
    Files(Reloading),
    /// Issued by this member from the grid's CA key, renewed before it expires.
    Issued(SelfIssued),
}

impl CertSource {
    /// The certificate to present now.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        match self {
            CertSource::Files(r) => r.current(),
            CertSource::Issued(s) => s.current(),
        }
    }
}

impl rustls::server::ResolvesServerCert for CertSource {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertSource {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A member certificate this member issues for itself from the grid's CA key, issued again
/// once two thirds of its lifetime have passed (looked at on handshakes, at most once a
/// second), so a member that runs for months never presents an expired certificate.
#[derive(Debug)]
pub struct SelfIssued {
    ca: Pem,
    identity: MemberIdentity,
    hosts: Vec<String>,
    lifetime: Duration,
    provider: Arc<CryptoProvider>,
    state: std::sync::Mutex<Issued>,
}

#[derive(Debug)]
struct Issued {
    key: Arc<rustls::sign::CertifiedKey>,
    renew_at: Instant,
    checked: Instant,
}

impl SelfIssued {
    fn new(
        ca: Pem,
        identity: MemberIdentity,
        hosts: Vec<String>,
        lifetime: Duration,
        provider: Arc<CryptoProvider>,
    ) -> Result<SelfIssued> {
        let first = issue(&ca, &identity, &hosts, lifetime, &provider)?;
        Ok(SelfIssued {
            ca,
            identity,
            hosts,
            lifetime,
            provider,
            state: std::sync::Mutex::new(first),
        })
    }

    /// The current certificate, issued again first if it is due.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now >= state.renew_at && now.duration_since(state.checked) >= RELOAD_CHECK {
            state.checked = now;
            match issue(
                &self.ca,
                &self.identity,
                &self.hosts,
                self.lifetime,
                &self.provider,
            ) {
                Ok(next) => {
                    *state = next;
                    tracing::info!(
                        lifetime_s = self.lifetime.as_secs(),
                        "member certificate renewed"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "member certificate not renewed; serving the old one")
                }
            }
        }
        state.key.clone()
    }
}

/// A certificate for `identity` signed by `ca`, due for renewal after two thirds of
/// `lifetime`.
fn issue(
    ca: &Pem,
    identity: &MemberIdentity,
    hosts: &[String],
    lifetime: Duration,
    provider: &CryptoProvider,
) -> Result<Issued> {
    let pem = devicegrid_pki::issue_member(ca, &identity.cluster, identity.id, hosts, lifetime)
        .map_err(tls_err)?;
    let key = certified_key(
        pem.cert.as_bytes(),
        pem.key.as_bytes(),
        Some(identity),
        provider,
    )?;
    let now = Instant::now();
    Ok(Issued {
        key: Arc::new(key),
        renew_at: now + lifetime * 2 / 3,
        checked: now,
    })
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

/// A certificate and key read from files, read again when either file changes.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    /// The identity the certificate must name (member certificates).
    identity: Option<MemberIdentity>,
    provider: Arc<CryptoProvider>,
    state: std::sync::Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<rustls::sign::CertifiedKey>,
    stamp: Option<std::time::SystemTime>,
    checked: std::time::Instant,
}

/// How often the files are looked at, at most.
const RELOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

fn stamp(paths: [&PathBuf; 2]) -> Option<std::time::SystemTime> {
    paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
}

impl Reloading {
    /// Loads `cert` and `key`; with `identity`, the certificate must name that member.
    pub fn new(
        cert: PathBuf,
        key: PathBuf,
        identity: Option<MemberIdentity>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Reloading> {
        let stamp = stamp([&cert, &key]);
        let r = Reloading {
            state: std::sync::Mutex::new(Loaded {
                key: Arc::new(load_key(&cert, &key, identity.as_ref(), &provider)?),
                stamp,
                checked: std::time::Instant::now(),
            }),
            cert,
            key,
            identity,
            provider,
        };
        Ok(r)
    }

    /// The current certificate, reloaded first if its files changed.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = std::time::Instant::now();
            let now = stamp([&self.cert, &self.key]);
            if now != state.stamp {
                match load_key(
                    &self.cert,
                    &self.key,
                    self.identity.as_ref(),
                    &self.provider,
                ) {
                    Ok(k) => {
                        state.key = Arc::new(k);
                        state.stamp = now;
                        tracing::info!(cert = %self.cert.display(), "certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate not reloaded; serving the old one")
                    }
                }
            }
        }
        state.key.clone()
    }
}

fn load_key(
    cert: &PathBuf,
    key: &PathBuf,
    identity: Option<&MemberIdentity>,
    provider: &CryptoProvider,
) -> Result<rustls::sign::CertifiedKey> {
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    certified_key(&cert_pem, &key_pem, identity, provider)
}

fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    identity: Option<&MemberIdentity>,
    provider: &CryptoProvider,
) -> Result<rustls::sign::CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tls_err(format!("certificate: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| tls_err("the certificate file holds no certificate"))?;
    if let Some(expected) = identity {
        match member_identity(leaf).map_err(tls_err)? {
            Some(named) if named == *expected => {}
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
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls_err(format!("private key: {e}")))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(tls_err)?;
    Ok(rustls::sign::CertifiedKey::new(chain, signer))
}

/// The certificate the client port serves.
pub enum ClientPortCert<'a> {
    /// From files (reloaded when they change).
    Files {
        /// Certificate (PEM).
        cert: &'a Path,
        /// Private key (PEM).
        key: &'a Path,
    },
    /// This member's own certificate (issued from the grid's CA: clients trust that CA).
    Member(Arc<CertSource>),
}

/// The client port's TLS; with `client_ca`, clients may present a certificate it signed
/// (verified when presented).
pub fn client_port(
    cert: ClientPortCert<'_>,
    client_ca: Option<&PathBuf>,
) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = match cert {
        ClientPortCert::Files { cert, key } => Arc::new(CertSource::Files(Reloading::new(
            cert.to_path_buf(),
            key.to_path_buf(),
            None,
            provider.clone(),
        )?)),
        ClientPortCert::Member(source) => source,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .allow_unauthenticated()
                .build()
                .map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(Arc::new(builder.with_cert_resolver(resolver)))
}

/// The CA certificates in a PEM file.
fn roots(path: &PathBuf) -> Result<RootCertStore> {
    roots_of(&read(path)?, path)
}

/// The CA certificates in `pem`, read from `path`.
fn roots_of(pem: &[u8], path: &std::path::Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(pem) {
        let ca = ca.map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
        roots
            .add(ca)
            .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(tls_err(format!("{} holds no certificate", path.display())));
    }
    Ok(roots)
}
