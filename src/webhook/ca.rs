//! The self-signed CA (`--self-signed-tls`): generated, or read back from PEM and checked (a CA
//! certificate, within its validity, the key its own), the serving certificates it issues, and
//! its sharing between replicas through a Secret (`--self-signed-ca-secret`).
//!
//! The Secret (type Opaque, keys [`CERT_KEY`] and [`KEY_KEY`]) is created empty by the Helm
//! chart. Each replica reads it at start-up: a usable CA is used as it is; an empty Secret gets
//! a CA generated and written with an update carrying the resourceVersion read, so that of
//! replicas racing on the empty Secret exactly one write succeeds and the others (409 Conflict)
//! read the winner's CA; anything else is refused with an error naming the Secret — replacing
//! it would cut off the replicas serving with it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::WebhookError;
use super::tls::{DEFAULT_SANS, SelfSigned};

/// The Secret key of the CA certificate (PEM).
pub const CERT_KEY: &str = "ca.crt";
/// The Secret key of the CA's private key (PEM, PKCS#8).
pub const KEY_KEY: &str = "ca.key";

/// How long a replica retries reading or writing the Secret through transport errors, 429 and
/// 5xx before it gives up and exits (and is restarted).
const SECRET_DEADLINE: Duration = Duration::from_secs(30);

/// A CA certificate and its private key, PEM, as generated or as stored: the certificate text
/// is kept byte for byte, so that every replica writes the same `caBundle`.
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Ca {
    /// The certificate only: the key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Why stored PEM is not a usable CA. Each message names the Secret key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCa {
    #[error("it holds {present} but no {missing}")]
    Incomplete {
        present: &'static str,
        missing: &'static str,
    },
    #[error("{0} is not UTF-8 text")]
    NotText(&'static str),
    #[error("{CERT_KEY} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    #[error("{CERT_KEY} holds {0} certificates; it must hold the one CA certificate")]
    SeveralCertificates(usize),
    #[error("{CERT_KEY} is not a readable X.509 certificate: {0}")]
    Unreadable(String),
    #[error("{CERT_KEY} is not a CA certificate (its basicConstraints do not say CA:TRUE)")]
    NotACa,
    #[error("{CERT_KEY} may not sign certificates (its keyUsage lacks keyCertSign)")]
    CannotSign,
    #[error("{CERT_KEY} expired on {0}")]
    Expired(String),
    #[error("{CERT_KEY} is not valid before {0}")]
    NotYetValid(String),
    #[error(
        "{KEY_KEY} is not a usable PEM private key (PKCS#8: ECDSA P-256 or P-384, Ed25519, RSA): {0}"
    )]
    Key(String),
    #[error("{KEY_KEY} is not the private key of {CERT_KEY} (their public keys differ)")]
    KeyMismatch,
}

impl Ca {
    /// A new CA: ECDSA P-256, valid from 1975 to 4096 (rcgen's defaults), allowed to sign
    /// end-entity certificates only.
    pub fn generate() -> Result<Ca, rcgen::Error> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "userns-labeler webhook CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads a stored CA, checking it now: see [`Ca::check_at`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, InvalidCa> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Ca::check_at(cert_pem, key_pem, now)
    }

    /// Reads a stored CA and checks that it can issue serving certificates at `now` (seconds
    /// since the epoch): one PEM certificate, a CA (basicConstraints CA:TRUE; keyCertSign if
    /// it has a keyUsage), valid at `now`, and `key_pem` its private key.
    pub fn check_at(cert_pem: &str, key_pem: &str, now: i64) -> Result<Ca, InvalidCa> {
        let blocks: Vec<_> = x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| match e {
                x509_parser::error::PEMError::MissingHeader => InvalidCa::NoCertificate,
                other => InvalidCa::Unreadable(other.to_string()),
            })?;
        let certificates: Vec<_> = blocks.iter().filter(|b| b.label == "CERTIFICATE").collect();
        let pem = match certificates.as_slice() {
            [] => return Err(InvalidCa::NoCertificate),
            [one] => one,
            several => return Err(InvalidCa::SeveralCertificates(several.len())),
        };
        let (_, cert) = X509Certificate::from_der(&pem.contents)
            .map_err(|e| InvalidCa::Unreadable(e.to_string()))?;
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| InvalidCa::Unreadable(e.to_string()))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(InvalidCa::NotACa);
        }
        let usage = cert
            .key_usage()
            .map_err(|e| InvalidCa::Unreadable(e.to_string()))?;
        if usage.is_some_and(|u| !u.value.key_cert_sign()) {
            return Err(InvalidCa::CannotSign);
        }
        let validity = cert.validity();
        if now > validity.not_after.timestamp() {
            return Err(InvalidCa::Expired(validity.not_after.to_string()));
        }
        if now < validity.not_before.timestamp() {
            return Err(InvalidCa::NotYetValid(validity.not_before.to_string()));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| InvalidCa::Key(e.to_string()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(InvalidCa::KeyMismatch);
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA certificate, PEM: what goes into the `caBundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A serving certificate signed by this CA for 127.0.0.1, localhost and `extra_sans` (DNS
    /// names or IP addresses), with a fresh key.
    pub fn issue(&self, extra_sans: &[String]) -> Result<SelfSigned, WebhookError> {
        let mut names: Vec<&str> = DEFAULT_SANS.to_vec();
        for san in extra_sans
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            if !names.contains(&san) {
                names.push(san);
            }
        }
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "userns-labeler webhook");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => rustls_pki_types::DnsName::try_from(*name)
                    .ok()
                    .and_then(|_| (*name).try_into().ok())
                    .map(SanType::DnsName)
                    .ok_or_else(|| WebhookError::InvalidSan(name.to_string())),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, KeyPair::from_pem(&self.key_pem)?)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(SelfSigned {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What a CA Secret's data holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Neither [`CERT_KEY`] nor [`KEY_KEY`] (or both empty): a CA is to be generated.
    Empty,
    Ca(Ca),
    Invalid(InvalidCa),
}

/// Reads a CA Secret's `data`, checked at `now` (seconds since the epoch). Other keys are
/// ignored (and kept when the CA is written).
pub fn stored_ca(data: Option<&BTreeMap<String, ByteString>>, now: i64) -> Stored {
    let value = |key| {
        data.and_then(|d| d.get(key))
            .map(|v| v.0.as_slice())
            .filter(|v| !v.is_empty())
    };
    let text = |key, bytes| std::str::from_utf8(bytes).map_err(|_| InvalidCa::NotText(key));
    let (cert, key) = match (value(CERT_KEY), value(KEY_KEY)) {
        (None, None) => return Stored::Empty,
        (Some(_), None) => {
            return Stored::Invalid(InvalidCa::Incomplete {
                present: CERT_KEY,
                missing: KEY_KEY,
            });
        }
        (None, Some(_)) => {
            return Stored::Invalid(InvalidCa::Incomplete {
                present: KEY_KEY,
                missing: CERT_KEY,
            });
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    match text(CERT_KEY, cert)
        .and_then(|cert| Ok((cert, text(KEY_KEY, key)?)))
        .and_then(|(cert, key)| Ca::check_at(cert, key, now))
    {
        Ok(ca) => Stored::Ca(ca),
        Err(invalid) => Stored::Invalid(invalid),
    }
}

/// How a replica came by the shared CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The Secret already held it.
    Stored,
    /// This replica generated it and stored it in the empty Secret.
    Generated,
    /// This replica's write lost against another replica's (409 Conflict): the winner's CA.
    Conflict,
}

/// The Secret through which the replicas share their CA (`--self-signed-ca-secret`), read
/// and updated by name only (RBAC: get and update with `resourceNames`).
#[derive(Clone)]
pub struct CaSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

impl fmt::Display for CaSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl CaSecret {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> CaSecret {
        CaSecret {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CA all replicas use. The Secret holds one: it, as stored. The Secret is empty: a
    /// new CA, written with an update carrying the resourceVersion just read; on 409 Conflict
    /// (another replica wrote first, or the Secret changed) the Secret is read again, so the
    /// CA returned is always the one stored. Anything else in it is an
    /// [`WebhookError::InvalidCaSecret`]: it is never overwritten. Transport errors, 429 and
    /// 5xx are retried for up to 30 s; a missing Secret or a refusal is an error at once.
    pub async fn load_or_create(&self) -> Result<(Ca, Origin), WebhookError> {
        let deadline = Instant::now() + SECRET_DEADLINE;
        let mut delay = Duration::from_millis(250);
        let mut lost_race = false;
        loop {
            let error = match self.api.get(&self.name).await {
                Ok(secret) => match stored_ca(secret.data.as_ref(), now()) {
                    Stored::Ca(ca) => {
                        let origin = if lost_race {
                            Origin::Conflict
                        } else {
                            Origin::Stored
                        };
                        return Ok((ca, origin));
                    }
                    Stored::Invalid(reason) => return Err(self.invalid(reason)),
                    Stored::Empty => match self.store(secret).await {
                        Ok(ca) => return Ok((ca, Origin::Generated)),
                        Err(StoreError::Generate(e)) => return Err(e.into()),
                        Err(StoreError::Api(kube::Error::Api(status))) if status.is_conflict() => {
                            tracing::info!(secret = %self,
                                "another replica stored its CA first (409 Conflict); reading it");
                            lost_race = true;
                            continue;
                        }
                        // The write may have landed: the next read tells.
                        Err(StoreError::Api(error)) => error,
                    },
                },
                Err(error) => error,
            };
            if !transient(&error) || Instant::now() + delay > deadline {
                return Err(self.unavailable(error));
            }
            tracing::warn!(secret = %self, %error, retry_in = ?delay,
                "cannot read or write the shared CA Secret yet");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(4));
        }
    }

    /// The Secret's content now (one read, no retry).
    pub async fn current(&self) -> Result<Stored, kube::Error> {
        let secret = self.api.get(&self.name).await?;
        Ok(stored_ca(secret.data.as_ref(), now()))
    }

    /// Generates a CA and writes it into `secret` (as read: its resourceVersion makes a
    /// concurrent write a 409).
    async fn store(&self, mut secret: Secret) -> Result<Ca, StoreError> {
        let ca = Ca::generate().map_err(StoreError::Generate)?;
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        data.insert(
            CERT_KEY.to_string(),
            ByteString(ca.cert_pem.clone().into_bytes()),
        );
        data.insert(
            KEY_KEY.to_string(),
            ByteString(ca.key_pem.clone().into_bytes()),
        );
        self.api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
            .map_err(StoreError::Api)?;
        Ok(ca)
    }

    fn invalid(&self, reason: InvalidCa) -> WebhookError {
        WebhookError::InvalidCaSecret {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        }
    }

    fn unavailable(&self, source: kube::Error) -> WebhookError {
        let cause = match &source {
            kube::Error::Api(status) if status.is_not_found() => format!(
                "{}; create it empty (kubectl -n {} create secret generic {}; the Helm chart \
                 does) or run without --self-signed-ca-secret",
                status.message, self.namespace, self.name
            ),
            kube::Error::Api(status) if status.is_forbidden() => {
                format!("{}; the labeler needs get and update on it", status.message)
            }
            kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
            other => other.to_string(),
        };
        WebhookError::CaSecret {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            cause,
        }
    }
}

enum StoreError {
    Generate(rcgen::Error),
    Api(kube::Error),
}

/// Errors worth retrying: the API server unreachable, overloaded (429) or failing (5xx).
fn transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        _ => true,
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::date_time_ymd;
    use x509_parser::prelude::parse_x509_certificate;

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    /// A CA made with `edit` applied to the parameters [`Ca::generate`] uses.
    fn ca_with(edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    const NOW_2026: i64 = 1_780_000_000;

    #[test]
    fn a_generated_ca_reads_back_as_itself_byte_for_byte() {
        let ca = Ca::generate().unwrap();
        let read = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(read, ca);
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"), "{ca:?}");
    }

    #[test]
    fn a_serving_certificate_is_signed_by_the_ca_for_every_name() {
        let ca = Ca::generate().unwrap();
        let serving = ca
            .issue(&["svc.ns.svc".to_string(), "10.0.0.1".to_string()])
            .unwrap();
        assert_eq!(serving.ca_pem, ca.cert_pem());
        let ca_der = der(ca.cert_pem());
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        let leaf_der = der(&serving.cert_pem);
        let (_, leaf) = parse_x509_certificate(&leaf_der).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA's key");
        assert_eq!(leaf.issuer(), ca_cert.subject());
        assert!(!leaf.is_ca());
        let names = leaf.subject_alternative_name().unwrap().unwrap().value;
        let names = format!("{:?}", names.general_names);
        for name in ["localhost", "127.0.0.1", "svc.ns.svc", "10.0.0.1"] {
            let shown = match name.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => format!("{:?}", ip.octets()),
                _ => name.to_string(),
            };
            assert!(names.contains(&shown), "{name} missing from {names}");
        }
        // Two certificates from the same CA: different keys, the same issuer.
        let other = ca.issue(&[]).unwrap();
        assert_ne!(other.key_pem, serving.key_pem);
        assert!(matches!(
            ca.issue(&["not a name!".to_string()]),
            Err(WebhookError::InvalidSan(_))
        ));
    }

    #[test]
    fn a_ca_made_elsewhere_is_accepted_and_issues() {
        let (cert, key) = ca_with(|_| {});
        let ca = Ca::check_at(&cert, &key, NOW_2026).unwrap();
        ca.issue(&[]).unwrap();
    }

    #[test]
    fn a_certificate_that_is_not_a_ca_is_refused() {
        let (cert, key) = ca_with(|p| p.is_ca = IsCa::NoCa);
        assert_eq!(Ca::check_at(&cert, &key, NOW_2026), Err(InvalidCa::NotACa));
        let (cert, key) = ca_with(|p| p.is_ca = IsCa::ExplicitNoCa);
        assert_eq!(Ca::check_at(&cert, &key, NOW_2026), Err(InvalidCa::NotACa));
    }

    #[test]
    fn a_ca_whose_key_usage_forbids_signing_certificates_is_refused() {
        let (cert, key) = ca_with(|p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature]);
        assert_eq!(
            Ca::check_at(&cert, &key, NOW_2026),
            Err(InvalidCa::CannotSign)
        );
    }

    #[test]
    fn an_expired_or_not_yet_valid_ca_is_refused_with_its_date() {
        let (cert, key) = ca_with(|p| {
            p.not_before = date_time_ymd(2020, 1, 1);
            p.not_after = date_time_ymd(2025, 1, 1);
        });
        let error = Ca::check_at(&cert, &key, NOW_2026).unwrap_err();
        assert!(matches!(error, InvalidCa::Expired(_)), "{error}");
        assert!(error.to_string().contains("2025"), "{error}");
        let (cert, key) = ca_with(|p| p.not_before = date_time_ymd(2030, 1, 1));
        let error = Ca::check_at(&cert, &key, NOW_2026).unwrap_err();
        assert!(matches!(error, InvalidCa::NotYetValid(_)), "{error}");
        assert!(error.to_string().contains("2030"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_the_cas_is_refused() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        assert_eq!(
            Ca::check_at(ca.cert_pem(), other.key_pem(), NOW_2026),
            Err(InvalidCa::KeyMismatch)
        );
        let error = Ca::check_at(ca.cert_pem(), "not a key", NOW_2026).unwrap_err();
        assert!(matches!(error, InvalidCa::Key(_)), "{error}");
        assert!(error.to_string().starts_with(KEY_KEY), "{error}");
    }

    #[test]
    fn a_certificate_that_is_not_pem_or_not_one_certificate_is_refused() {
        let ca = Ca::generate().unwrap();
        let key = ca.key_pem();
        assert_eq!(
            Ca::check_at("garbage", key, NOW_2026),
            Err(InvalidCa::NoCertificate)
        );
        assert_eq!(
            Ca::check_at(key, key, NOW_2026),
            Err(InvalidCa::NoCertificate),
            "a key where the certificate belongs"
        );
        let two = format!("{}{}", ca.cert_pem(), Ca::generate().unwrap().cert_pem());
        assert_eq!(
            Ca::check_at(&two, key, NOW_2026),
            Err(InvalidCa::SeveralCertificates(2))
        );
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = Ca::check_at(broken, key, NOW_2026).unwrap_err();
        assert!(matches!(error, InvalidCa::Unreadable(_)), "{error}");
    }

    #[test]
    fn a_secret_without_either_key_is_empty_and_one_with_both_holds_the_ca() {
        assert_eq!(stored_ca(None, NOW_2026), Stored::Empty);
        assert_eq!(stored_ca(Some(&data(&[])), NOW_2026), Stored::Empty);
        assert_eq!(
            stored_ca(
                Some(&data(&[(CERT_KEY, ""), (KEY_KEY, ""), ("other", "x")])),
                NOW_2026
            ),
            Stored::Empty
        );
        let ca = Ca::generate().unwrap();
        assert_eq!(
            stored_ca(
                Some(&data(&[(CERT_KEY, ca.cert_pem()), (KEY_KEY, ca.key_pem())])),
                NOW_2026
            ),
            Stored::Ca(ca)
        );
    }

    #[test]
    fn a_secret_with_half_a_ca_or_garbage_is_invalid_naming_the_key() {
        let ca = Ca::generate().unwrap();
        let cases = [
            (data(&[(CERT_KEY, ca.cert_pem())]), "ca.crt but no ca.key"),
            (data(&[(KEY_KEY, ca.key_pem())]), "ca.key but no ca.crt"),
            (
                data(&[(CERT_KEY, "garbage"), (KEY_KEY, "garbage")]),
                "ca.crt holds no PEM certificate",
            ),
            (
                data(&[(CERT_KEY, ca.cert_pem()), (KEY_KEY, "garbage")]),
                "ca.key is not a usable PEM private key",
            ),
        ];
        for (data, message) in cases {
            match stored_ca(Some(&data), NOW_2026) {
                Stored::Invalid(invalid) => {
                    assert!(invalid.to_string().contains(message), "{invalid}")
                }
                other => panic!("{message}: {other:?}"),
            }
        }
        let mut binary = data(&[(KEY_KEY, ca.key_pem())]);
        binary.insert(CERT_KEY.to_string(), ByteString(vec![0xff, 0xfe]));
        assert_eq!(
            stored_ca(Some(&binary), NOW_2026),
            Stored::Invalid(InvalidCa::NotText(CERT_KEY))
        );
    }
}
