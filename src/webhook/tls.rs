//! The webhook's serving certificate: read from PEM files and re-read when they change on disk
//! (cert-manager rotates them through a Secret volume), or generated at start-up with its CA
//! written into the MutatingWebhookConfiguration (`--self-signed-tls`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::PostParams;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_util::sync::CancellationToken;

use super::WebhookError;
use super::metrics::WebhookMetrics;

/// The names every self-signed serving certificate carries.
pub const DEFAULT_SANS: [&str; 2] = ["127.0.0.1", "localhost"];

/// Where the serving certificate comes from.
#[derive(Clone)]
pub struct ServerTls {
    config: RustlsConfig,
    files: Option<CertFiles>,
}

#[derive(Clone, Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
}

impl ServerTls {
    /// Loads a PEM certificate (chain) and key; the server re-reads them when their
    /// modification time, size or inode changes, checking every `reload_interval`.
    pub async fn from_files(
        cert: &Path,
        key: &Path,
        reload_interval: Duration,
    ) -> Result<ServerTls, WebhookError> {
        let config = RustlsConfig::from_pem_file(cert, key)
            .await
            .map_err(|source| WebhookError::LoadCertificate {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                source,
            })?;
        Ok(ServerTls {
            config,
            files: Some(CertFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                interval: reload_interval.max(Duration::from_millis(100)),
            }),
        })
    }

    /// A fixed certificate held in memory (never reloaded).
    pub async fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ServerTls, WebhookError> {
        let config = RustlsConfig::from_pem(cert_pem.into(), key_pem.into())
            .await
            .map_err(|source| WebhookError::LoadCertificate {
                cert: PathBuf::from("<memory>"),
                key: PathBuf::from("<memory>"),
                source,
            })?;
        Ok(ServerTls {
            config,
            files: None,
        })
    }

    pub fn rustls_config(&self) -> &RustlsConfig {
        &self.config
    }

    /// Re-reads the files whenever they change, until `shutdown`. A failed reload (say, the
    /// certificate already replaced but not yet its key) keeps the certificate being served
    /// and is retried at the next check.
    pub(crate) async fn reload_on_change(
        self,
        metrics: WebhookMetrics,
        shutdown: CancellationToken,
    ) {
        let Some(files) = self.files else {
            return;
        };
        let mut served = fingerprint(&files.cert, &files.key).await;
        let mut ticker = tokio::time::interval(files.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let current = fingerprint(&files.cert, &files.key).await;
            if current == served {
                continue;
            }
            match self
                .config
                .reload_from_pem_file(&files.cert, &files.key)
                .await
            {
                Ok(()) => {
                    tracing::info!(cert = %files.cert.display(), "reloaded the webhook serving certificate");
                    metrics.tls_reload(true);
                    served = current;
                }
                Err(error) => {
                    tracing::warn!(cert = %files.cert.display(), key = %files.key.display(), %error,
                        "the webhook certificate files changed but cannot be loaded; still serving the previous certificate");
                    metrics.tls_reload(false);
                }
            }
        }
    }
}

/// Modification time, size and inode of both files (following symlinks, as a Secret volume's
/// `..data` swap changes the target). `None` for a file that cannot be read.
type FileStamp = Option<(SystemTime, u64, u64)>;

async fn fingerprint(cert: &Path, key: &Path) -> (FileStamp, FileStamp) {
    async fn stamp(path: &Path) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let meta = tokio::fs::metadata(path).await.ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    }
    (stamp(cert).await, stamp(key).await)
}

/// A CA and a serving certificate it signed, all PEM.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl SelfSigned {
    /// Generates a CA and a serving certificate for 127.0.0.1, localhost and `extra_sans`
    /// (DNS names or IP addresses).
    pub fn generate(extra_sans: &[String]) -> Result<SelfSigned, WebhookError> {
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "userns-labeler webhook CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

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
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(SelfSigned {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `ca_pem` as the `caBundle` of every webhook in the MutatingWebhookConfiguration
/// `name`. Retries with exponential backoff (up to 10 s apart) while the configuration does
/// not exist yet, on conflicts and on transport errors, until it succeeds or `shutdown`.
/// Start-up work: it is never called per admission.
pub async fn inject_ca_bundle(
    client: kube::Client,
    name: &str,
    ca_pem: &str,
    shutdown: CancellationToken,
) -> Result<(), kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let attempt = || async {
        let mut config = api.get(name).await?;
        let bundle = ByteString(ca_pem.as_bytes().to_vec());
        let mut changed = false;
        for webhook in config.webhooks.iter_mut().flatten() {
            if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
                webhook.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if changed {
            // `replace` carries the resourceVersion just read: a concurrent edit is a 409 and
            // is retried from a fresh read.
            api.replace(name, &PostParams::default(), &config).await?;
        }
        Ok::<usize, kube::Error>(config.webhooks.as_ref().map_or(0, Vec::len))
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let retried = attempt.retry(backoff).sleep(tokio::time::sleep).notify(
        |error: &kube::Error, after: Duration| {
            tracing::warn!(webhook_config = name, %error, retry_in = ?after,
                "cannot write the self-signed CA into the webhook configuration yet");
        },
    );
    tokio::select! {
        result = retried => {
            let webhooks = result?;
            tracing::info!(webhook_config = name, webhooks, "wrote the self-signed CA into the webhook configuration's caBundle");
            Ok(())
        }
        () = shutdown.cancelled() => Ok(()),
    }
}
