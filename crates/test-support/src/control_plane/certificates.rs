//! The harness' certificate authority, the certificates it signs, and the
//! kubeconfigs that carry them.

use std::path::Path;

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Installs rustls' ring provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a `kube::Client` from a kubeconfig file (current context).
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading kubeconfig {}: {e}", path.display()));
    Client::try_from(config).unwrap_or_else(|e| panic!("client for {}: {e}", path.display()))
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// The harness' own certificate authority: signs the API server's serving
/// certificate, client certificates, and webhook serving certificates.
pub(super) struct Ca {
    pub(super) cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub(super) fn new() -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "userns-labeler test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, mut params: CertificateParams) -> CertPair {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("signing a certificate");
        CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A serving certificate for DNS names and/or IP addresses.
    pub(super) fn server_cert(&self, sans: &[&str]) -> CertPair {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("server"),
        );
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().expect("valid DNS name")),
            })
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads the user from CN and groups from
    /// the O attributes. rcgen keeps one value per attribute type, so a second
    /// group goes under O's raw OID (2.5.4.10), which Go reads as O as well;
    /// more than two groups cannot be expressed.
    pub(super) fn client_cert(&self, user: &str, groups: &[&str]) -> CertPair {
        assert!(
            groups.len() <= 2,
            "client certificates here carry at most two groups (O attributes), got {groups:?}"
        );
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, user);
        let organization = [
            DnType::OrganizationName,
            DnType::CustomDnType(vec![2, 5, 4, 10]),
        ];
        for (group, ty) in groups.iter().zip(organization) {
            params.distinguished_name.push(ty, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }
}

/// A kubeconfig for `server` with one user authenticated by a client certificate.
pub(super) fn kubeconfig_yaml(
    server: &str,
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
    user: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: userns-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: userns-test
  context:
    cluster: userns-test
    user: {user}
current-context: userns-test
",
        ca = ca_file.display(),
        cert = cert_file.display(),
        key = key_file.display(),
    )
}
