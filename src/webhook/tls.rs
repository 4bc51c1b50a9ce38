//! The webhook's serving certificate: read from PEM files and re-read when they change on disk
//! (cert-manager rotates them through a Secret volume), or generated at start-up with its CA
//! kept in the MutatingWebhookConfiguration's caBundle (`--self-signed-tls`; the CA itself, and
//! its sharing through a Secret, are in [`super::ca`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::WebhookError;
use super::ca::{Ca, CaSecret, Stored};
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
    /// The files' stamps and content as first loaded.
    loaded: (Stamps, Pem),
}

/// A certificate (chain) and its key, PEM.
type Pem = (Vec<u8>, Vec<u8>);

impl ServerTls {
    /// Loads a PEM certificate (chain) and key, checking that the key is the certificate's
    /// (rustls compares their public keys); the server re-reads them when their modification
    /// time, size or inode changes, checking every `reload_interval`.
    pub async fn from_files(
        cert: &Path,
        key: &Path,
        reload_interval: Duration,
    ) -> Result<ServerTls, WebhookError> {
        let error = |source| WebhookError::LoadCertificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        };
        // Stamp first, then read: see `reload_on_change`.
        let stamps = fingerprint(cert, key).await;
        let pem = read_pair(cert, key).await.map_err(error)?;
        let config = RustlsConfig::from_pem(pem.0.clone(), pem.1.clone())
            .await
            .map_err(|e| error(explain(e)))?;
        Ok(ServerTls {
            config,
            files: Some(CertFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                interval: reload_interval.max(Duration::from_millis(100)),
                loaded: (stamps, pem),
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
                source: explain(source),
            })?;
        Ok(ServerTls {
            config,
            files: None,
        })
    }

    /// Serves `cert_pem` and `key_pem` from now on (new connections), checked like
    /// [`ServerTls::from_pem`]; on error the served certificate stays.
    pub(crate) async fn replace_pem(
        &self,
        cert_pem: String,
        key_pem: String,
    ) -> Result<(), WebhookError> {
        self.config
            .reload_from_pem(cert_pem.into_bytes(), key_pem.into_bytes())
            .await
            .map_err(|source| WebhookError::LoadCertificate {
                cert: PathBuf::from("<memory>"),
                key: PathBuf::from("<memory>"),
                source: explain(source),
            })
    }

    pub fn rustls_config(&self) -> &RustlsConfig {
        &self.config
    }

    /// Re-reads the files whenever they change, until `shutdown`. A failed reload (say, the
    /// certificate already replaced but not yet its key) keeps the certificate being served
    /// and is retried at the next check. A change that leaves the content as served (a `touch`,
    /// or a stamp taken while a file was being written) is not a reload.
    pub(crate) async fn reload_on_change(
        self,
        metrics: WebhookMetrics,
        shutdown: CancellationToken,
    ) {
        let Some(files) = self.files else {
            return;
        };
        let (mut seen, mut served) = files.loaded.clone();
        let mut ticker = tokio::time::interval(files.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let current = fingerprint(&files.cert, &files.key).await;
            if current == seen {
                continue;
            }
            // Stamp first, then read: content read after a stamp is at least as new as the
            // stamp, so a write racing the read shows as a changed stamp at the next check.
            let loaded = match read_pair(&files.cert, &files.key).await {
                Ok(pair) if pair == served => {
                    seen = current;
                    continue;
                }
                Ok((cert, key)) => self
                    .config
                    .reload_from_pem(cert.clone(), key.clone())
                    .await
                    .map(|()| (cert, key))
                    .map_err(explain),
                Err(error) => Err(error),
            };
            match loaded {
                Ok(pair) => {
                    tracing::info!(cert = %files.cert.display(), "reloaded the webhook serving certificate");
                    metrics.tls_reload(true);
                    served = pair;
                    seen = current;
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

/// rustls says "keys may not be consistent: KeyMismatch" for a key that is not the
/// certificate's; every other error is kept as it is.
fn explain(error: std::io::Error) -> std::io::Error {
    let mismatch = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| {
            matches!(
                e,
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)
            )
        });
    if mismatch {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the private key does not match the certificate (their public keys differ)",
        )
    } else {
        error
    }
}

/// The certificate and key files' content; an error names the file.
async fn read_pair(cert: &Path, key: &Path) -> std::io::Result<Pem> {
    async fn read(path: &Path) -> std::io::Result<Vec<u8>> {
        tokio::fs::read(path)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
    }
    Ok((read(cert).await?, read(key).await?))
}

/// Modification time, size and inode of both files (following symlinks, as a Secret volume's
/// `..data` swap changes the target). `None` for a file that cannot be read.
type FileStamp = Option<(SystemTime, u64, u64)>;

/// The certificate's and the key's [`FileStamp`].
type Stamps = (FileStamp, FileStamp);

async fn fingerprint(cert: &Path, key: &Path) -> Stamps {
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
        Ca::generate()?.issue(extra_sans)
    }
}

/// Keeps `ca_pem` as the `caBundle` of every webhook in the MutatingWebhookConfiguration
/// `name`, until `shutdown`: the configuration is watched by name, and each version that
/// lacks the bundle or carries another one (created after us, re-created by a GitOps replace
/// or `kubectl replace`, edited) gets it written again within moments. A write is retried with
/// exponential backoff (up to 10 s apart) on conflicts and transport errors. Each write is
/// logged and counted (`ca_bundle_injections`). Never called per admission.
///
/// With `follow` (a CA shared through a Secret), the Secret is read before each write: when it
/// holds another CA than `ca_pem` (rotated), this replica adopts that CA (see
/// [`FollowSecret`]) and keeps its bundle instead, so replicas never write different bundles
/// back and forth.
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: &str,
    ca_pem: &str,
    follow: Option<FollowSecret>,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let mut bundle = ByteString(ca_pem.as_bytes().to_vec());
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let versions = watcher(api.clone(), config).default_backoff();
    futures::pin_mut!(versions);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = versions.next() => event,
        };
        let current = match event {
            Some(Ok(watcher::Event::Apply(current) | watcher::Event::InitApply(current))) => {
                current
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(
                    webhook_config = name,
                    "the webhook configuration was deleted; its caBundle is written again when it is re-created"
                );
                continue;
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
            Some(Err(error)) => {
                tracing::warn!(webhook_config = name, %error, "webhook configuration watch error; retrying with backoff");
                continue;
            }
            None => return,
        };
        if stale_ca_bundle(&current, &bundle).is_none() {
            continue;
        }
        if let Some(follow) = &follow {
            match follow.bundle_to_keep(&bundle, &metrics).await {
                Some(kept) => bundle = kept,
                None => continue,
            }
        }
        let Some(previous) = stale_ca_bundle(&current, &bundle) else {
            continue;
        };
        let written = tokio::select! {
            () = shutdown.cancelled() => return,
            written = write_ca_bundle(&api, name, &bundle, &metrics) => written,
        };
        if let Some(webhooks) = written {
            tracing::info!(
                webhook_config = name,
                webhooks,
                previous,
                "wrote the self-signed CA into the webhook configuration's caBundle"
            );
        }
    }
}

/// A replica whose CA is shared through a Secret (`--self-signed-ca-secret`): what it needs
/// to follow a rotation of that CA without a restart.
pub struct FollowSecret {
    pub secret: CaSecret,
    /// The served certificate, replaced by one issued from an adopted CA.
    pub tls: ServerTls,
    /// The extra names of the serving certificate (`--tls-san`).
    pub sans: Vec<String>,
}

impl FollowSecret {
    /// The bundle to write, given the Secret's content: `bundle` while the Secret holds that
    /// CA, or cannot be read, or holds no usable CA (emptied for a rotation: the replica that
    /// starts next generates the new one); the Secret's CA when it holds another one, adopted
    /// first: a serving certificate issued from it replaces the served one (counted as a TLS
    /// reload). `None`: write nothing, as the Secret holds another CA this replica cannot adopt.
    async fn bundle_to_keep(
        &self,
        bundle: &ByteString,
        metrics: &WebhookMetrics,
    ) -> Option<ByteString> {
        let secret = &self.secret;
        let ca = match secret.current().await {
            Ok(Stored::Ca(ca)) if ca.cert_pem().as_bytes() != bundle.0.as_slice() => ca,
            Ok(Stored::Ca(_)) => return Some(bundle.clone()),
            Ok(Stored::Empty) => {
                tracing::warn!(%secret, "the shared CA Secret is empty; keeping this replica's CA until a restarted replica stores a new one");
                return Some(bundle.clone());
            }
            Ok(Stored::Invalid(reason)) => {
                tracing::warn!(%secret, %reason, "the shared CA Secret holds no usable CA; keeping this replica's CA");
                return Some(bundle.clone());
            }
            Err(error) => {
                tracing::warn!(%secret, %error, "cannot read the shared CA Secret; keeping this replica's CA");
                return Some(bundle.clone());
            }
        };
        let adopted = match ca.issue(&self.sans) {
            Ok(serving) => {
                self.tls
                    .replace_pem(serving.cert_pem, serving.key_pem)
                    .await
            }
            Err(error) => Err(error),
        };
        match adopted {
            Ok(()) => {
                metrics.tls_reload(true);
                tracing::info!(%secret, "the shared CA Secret holds a new CA (rotated): now serving a certificate issued from it");
                Some(ByteString(ca.cert_pem().as_bytes().to_vec()))
            }
            Err(error) => {
                metrics.tls_reload(false);
                tracing::error!(%secret, %error, "the shared CA Secret holds a new CA this replica cannot serve with; leaving the caBundle to the other replicas: restart this one");
                None
            }
        }
    }
}

/// Why `config` needs the bundle written: `missing` when a webhook has none, `different` when
/// one carries another; `None` when every webhook carries `bundle`.
fn stale_ca_bundle(
    config: &MutatingWebhookConfiguration,
    bundle: &ByteString,
) -> Option<&'static str> {
    let webhooks = config.webhooks.iter().flatten();
    let bundles: Vec<Option<&ByteString>> = webhooks
        .map(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .filter(|b| !b.0.is_empty())
        })
        .collect();
    if bundles.contains(&None) {
        Some("missing")
    } else if bundles.iter().any(|b| *b != Some(bundle)) {
        Some("different")
    } else {
        None
    }
}

/// Reads the configuration and writes `bundle` into each of its webhooks, retrying with
/// backoff until it succeeds. The number of webhooks written; `None` when a fresh read
/// already carried the bundle everywhere, or found the configuration deleted.
async fn write_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    name: &str,
    bundle: &ByteString,
    metrics: &WebhookMetrics,
) -> Option<usize> {
    let attempt = || async {
        let mut config = api.get(name).await?;
        if stale_ca_bundle(&config, bundle).is_none() {
            return Ok(None);
        }
        for webhook in config.webhooks.iter_mut().flatten() {
            webhook.client_config.ca_bundle = Some(bundle.clone());
        }
        // `replace` carries the resourceVersion just read: a concurrent edit is a 409 and
        // is retried from a fresh read.
        api.replace(name, &PostParams::default(), &config).await?;
        Ok::<_, kube::Error>(Some(config.webhooks.as_ref().map_or(0, Vec::len)))
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    // Gone meanwhile: nothing to write; the watch brings the configuration when it is back.
    let gone =
        |error: &kube::Error| matches!(error, kube::Error::Api(status) if status.is_not_found());
    let written = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|error| !gone(error))
        .notify(|error: &kube::Error, after: Duration| {
            metrics.ca_bundle_injection(false);
            tracing::warn!(webhook_config = name, %error, retry_in = ?after,
                "cannot write the self-signed CA into the webhook configuration yet");
        })
        .await
        // Retried without a limit: the only error that comes back is `gone`.
        .ok()
        .flatten();
    if written.is_some() {
        metrics.ca_bundle_injection(true);
    }
    written
}
