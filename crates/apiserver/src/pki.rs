//! The server's certificates: a CA and a serving certificate generated on first start in the
//! data directory and reused afterwards, client certificates issued from the same CA, and the
//! admin kubeconfig.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Certificate and TLS setup errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A PEM file that does not parse.
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    /// Building the TLS configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Building the client certificate verifier.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A PEM certificate and its PEM private key.
#[derive(Clone)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM. Never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey").finish_non_exhaustive()
    }
}

/// The server's CA and serving certificate.
pub struct Pki {
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
    serving: CertKey,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable by its owner only (keys, kubeconfigs with keys).
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn read_opt(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params
}

impl Pki {
    /// Loads the CA and serving certificate from `dir` (`ca.crt`, `ca.key`, `server.crt`,
    /// `server.key`), creating whatever is missing. The serving certificate names
    /// `localhost`, loopback and `extra_sans`.
    pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let ca_crt = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        let (ca, ca_pem) = match (read_opt(&ca_crt)?, read_opt(&ca_key)?) {
            (Some(cert_pem), Some(key_pem)) => {
                let key = KeyPair::from_pem(&key_pem)?;
                (Issuer::from_ca_cert_pem(&cert_pem, key)?, cert_pem)
            }
            _ => {
                let mut params = CertificateParams::default();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "atoll-ca");
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                ];
                let key = KeyPair::generate()?;
                let cert = params.self_signed(&key)?;
                let cert_pem = cert.pem();
                write_private(&ca_key, &key.serialize_pem())?;
                std::fs::write(&ca_crt, &cert_pem).map_err(io_err(&ca_crt))?;
                (Issuer::new(params, key), cert_pem)
            }
        };
        let server_crt = dir.join("server.crt");
        let server_key = dir.join("server.key");
        let serving = match (read_opt(&server_crt)?, read_opt(&server_key)?) {
            (Some(cert_pem), Some(key_pem)) => CertKey { cert_pem, key_pem },
            _ => {
                let mut params = leaf_params();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "atoll-apiserver");
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                let mut names: Vec<String> = vec![
                    "localhost".into(),
                    "kubernetes".into(),
                    "kubernetes.default".into(),
                    "kubernetes.default.svc".into(),
                ];
                names.extend(extra_sans.iter().cloned());
                let mut ips: Vec<IpAddr> = vec![
                    IpAddr::from([127, 0, 0, 1]),
                    IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                ];
                names.retain(|n| match n.parse::<IpAddr>() {
                    Ok(ip) => {
                        if !ip.is_unspecified() && !ips.contains(&ip) {
                            ips.push(ip);
                        }
                        false
                    }
                    Err(_) => true,
                });
                for name in names {
                    params
                        .subject_alt_names
                        .push(SanType::DnsName(name.as_str().try_into()?));
                }
                for ip in ips {
                    params.subject_alt_names.push(SanType::IpAddress(ip));
                }
                let key = KeyPair::generate()?;
                let cert = params.signed_by(&key, &ca)?;
                let pair = CertKey {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                };
                write_private(&server_key, &pair.key_pem)?;
                std::fs::write(&server_crt, &pair.cert_pem).map_err(io_err(&server_crt))?;
                pair
            }
        };
        Ok(Pki {
            ca,
            ca_pem,
            serving,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate the server reads as user `user` (CN) in `groups` (O).
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertKey, PkiError> {
        let mut params = leaf_params();
        params.distinguished_name.push(DnType::CommonName, user);
        // rcgen keeps one value per attribute type; further groups use the same OID
        // (organizationName, 2.5.4.10) spelled as a custom type.
        for (i, group) in groups.iter().enumerate() {
            if i == 0 {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, *group);
            } else {
                params
                    .distinguished_name
                    .push(DnType::CustomDnType(vec![2, 5, 4, 10]), *group);
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The TLS configuration: the serving certificate, HTTP/2 and HTTP/1.1 by ALPN, and client
    /// certificates verified against the CA when presented (optional: bearer tokens and
    /// anonymous requests come without one).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|e| PkiError::Pem {
                path: PathBuf::from("ca.crt"),
                message: e.to_string(),
            })?;
        roots.add(ca_der)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.serving.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| PkiError::Pem {
                    path: PathBuf::from("server.crt"),
                    message: e.to_string(),
                })?;
        let key = PrivateKeyDer::from_pem_slice(self.serving.key_pem.as_bytes()).map_err(|e| {
            PkiError::Pem {
                path: PathBuf::from("server.key"),
                message: e.to_string(),
            }
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Writes a kubeconfig for `user` in `groups` with a fresh client certificate, for the
    /// server at `server_url` (such as `https://127.0.0.1:6443`).
    pub fn write_kubeconfig(
        &self,
        path: &Path,
        server_url: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<(), PkiError> {
        let client = self.issue_client(user, groups)?;
        write_private(
            path,
            &kubeconfig_yaml(self.ca_pem(), server_url, user, &client),
        )
    }
}

/// A kubeconfig with one cluster (`atoll`), one user and one context.
pub fn kubeconfig_yaml(ca_pem: &str, server_url: &str, user: &str, client: &CertKey) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: atoll\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: atoll\n  context:\n    cluster: atoll\n    user: {user}\ncurrent-context: atoll\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_reused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = Pki::load_or_create(dir.path(), &["hub.example".into(), "10.0.0.1".into()])?;
        let second = Pki::load_or_create(dir.path(), &[])?;
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.serving.cert_pem, second.serving.cert_pem);
        second.server_config()?;
        let client = second.issue_client("alice", &["dev", "ops"])?;
        let der = CertificateDer::from_pem_slice(client.cert_pem.as_bytes())?;
        let identity = crate::auth::identity_from_cert(&der)?;
        assert_eq!(
            identity.map(|u| (u.name, u.groups)),
            Some((
                "alice".to_string(),
                vec!["dev".to_string(), "ops".to_string()]
            ))
        );
        Ok(())
    }
}
