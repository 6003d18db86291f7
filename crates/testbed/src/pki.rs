//! One CA per cluster and the certificates issued from it.
//!
//! All keys are ECDSA P-256 in PKCS#8 PEM, which Go (kube-apiserver,
//! kube-controller-manager, kubectl) and rustls (kube-rs) all read.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// A PEM certificate and its PEM private key.
pub(crate) struct CertKey {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// A self-signed certificate authority.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    pub(crate) fn new(common_name: &str) -> Result<Ca, Error> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Ca { issuer })
    }

    pub(crate) fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub(crate) fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A TLS serving certificate for the given DNS names and IPs.
    pub(crate) fn issue_server(
        &self,
        common_name: &str,
        dns_names: &[&str],
        ips: &[IpAddr],
    ) -> Result<CertKey, Error> {
        let mut params = leaf_params();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName((*name).try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        self.sign(params)
    }

    /// A client certificate Kubernetes reads as user `user` (the CN) in
    /// `groups` (the O attributes).
    ///
    /// rcgen keeps one value per attribute type, so at most two groups fit:
    /// the first as `organizationName`, the second as the same OID
    /// (2.5.4.10) spelled as a custom attribute type.
    pub(crate) fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertKey, Error> {
        let mut params = leaf_params();
        params.distinguished_name.push(DnType::CommonName, user);
        match groups {
            [] => {}
            [first] => params
                .distinguished_name
                .push(DnType::OrganizationName, *first),
            [first, second] => {
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, *first);
                params
                    .distinguished_name
                    .push(DnType::CustomDnType(vec![2, 5, 4, 10]), *second);
            }
            _ => {
                return Err(Error::Config(format!(
                    "a test-bed client certificate carries at most two groups, got {groups:?}"
                )));
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertKey, Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn leaf_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params
}

/// A service-account token signing key: (private PEM, public PEM).
pub(crate) fn service_account_key() -> Result<(String, String), Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_carry_up_to_two_groups() -> Result<(), Error> {
        let ca = Ca::new("test-ca")?;
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        ca.issue_client("alice", &[])?;
        ca.issue_client("alice", &["a"])?;
        ca.issue_client("alice", &["a", "b"])?;
        assert!(matches!(
            ca.issue_client("alice", &["a", "b", "c"]),
            Err(Error::Config(_))
        ));
        Ok(())
    }
}
