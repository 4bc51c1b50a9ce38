//! The mutating admission webhook: sets `spec.hostUsers: false` on new pods when the capability
//! engine allows it, and explains every decision on the pod.
//!
//! - [`admission`]: the pure decision, one [`PodCreate`] (or a full `AdmissionRequest<Pod>`)
//!   and the caches in, one `AdmissionResponse` with its JSON Patch out. No API call is made per
//!   admission: claims, volumes, classes and namespace labels come from the reflector stores in
//!   [`Caches`].
//! - [`lean`]: the fast path of decoding: a pod CREATE review read in one pass straight into the
//!   [`PodCreate`] (only the fields the decision reads, strings borrowed from the body); any
//!   other well-formed review answered from the same pass (allowed, unchanged); what it
//!   declines goes through kube's full typed decoder.
//! - [`review`]: the response AdmissionReview on the wire (patch as base64).
//! - [`server`]: the axum router (`POST /mutate/pods`), the HTTPS server and its shutdown, with
//!   the listener limits of [`crate::limits`] (`--webhook-header-read-timeout-ms`,
//!   `--webhook-request-timeout-ms`, `--webhook-max-connections`, `--webhook-max-requests`).
//! - [`tls`]: the serving certificate, from files (checked against the key) re-read when they
//!   change on disk, or generated at start-up (`--self-signed-tls`) with its CA kept in the
//!   webhook configuration's `caBundle` (watched, and written again whenever it is missing or
//!   another, e.g. after the configuration was re-created).
//! - [`ca`]: the self-signed CA: generated or read back and checked, the serving certificates
//!   it issues, and its sharing between replicas through a Secret (`--self-signed-ca-secret`).
//! - [`metrics`]: admissions by outcome and blocker code, errors by category, latency.
//!
//! What a pod CREATE gets (everything else, e.g. UPDATE or another kind: allowed, no patch):
//! - `enforce` mode, nothing blocks: `spec.hostUsers: false` and the annotations
//!   `<prefix>/decision: enabled` and `<prefix>/decision-reason` (the engine's deterministic
//!   summary); something blocks: only the annotations, `decision: skipped`, the reason listing
//!   every blocker as `Code: sentence`;
//! - `audit` mode: `decision: audit` and what enforce mode would do; `hostUsers` is never touched;
//! - the pod label or its namespace's label `<prefix>/opt-out: "true"`: no patch at all, the
//!   pod stays exactly as written (the webhook configuration's selectors normally keep such
//!   requests from being sent; the handler checks again);
//! - a claim (or its PV, or the namespace) missing from the caches: the handler waits for what
//!   was missing (looking it up every 10 ms) for up to `--webhook-cache-wait-ms` (default
//!   1.5 s) and decides again once it is all there, so a claim created a moment before its pod
//!   (StatefulSets) is seen once the watch delivers it; a claim still missing then is a
//!   `ClaimNotFound` blocker (fail closed), a namespace still missing leaves the pod unchanged;
//! - malformed input: 400 for a body that is not an AdmissionReview, an invalid-request
//!   response for a review without a request (or a pod CREATE without object or namespace),
//!   413 above 4 MiB (a `Content-Length` above it before reading the body); any internal doubt (caches not synced, undecodable pod, a panic): allowed
//!   with no patch. Each is logged and counted by category.
//! - a reinvocation after this webhook enabled the pod: no patch (idempotent).
//!
//! Contract with the runtime (`src/runtime.rs`):
//! - [`WebhookArgs`] is flattened into `userns-labeler run`'s flags;
//! - [`WebhookMetrics::register`] is called once at start-up;
//! - [`WebhookListener::bind`] does the start-up work that can fail (certificate — with
//!   `--self-signed-ca-secret` the shared CA read from or stored into its Secret in the
//!   namespace given —, port), so that the runtime can end the process with the cause before
//!   serving anything;
//! - [`WebhookListener::serve`] (or [`serve`], both steps in one) runs the HTTPS server (mode and
//!   cache wait from the flags, see [`AdmissionSettings`]) on every replica until `shutdown` is
//!   cancelled; it returns early only with an error. Its `client` is only used to keep the
//!   `caBundle` in `--self-signed-tls` mode (and to read the shared CA's Secret before a
//!   write), never per admission.

pub mod admission;
pub mod ca;
pub mod lean;
pub mod metrics;
pub mod review;
pub mod server;
pub mod tls;

#[cfg(test)]
mod lean_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;

use crate::cache::Caches;
use crate::config::TableState;
use crate::keys::Keys;
use crate::limits::Limits;

pub use admission::{Admission, PodCreate, mutate, mutate_pod};
pub use ca::{Ca, CaSecret, InvalidCa};
pub use metrics::{Outcome, WebhookMetrics};
pub use server::{MAX_BODY_BYTES, MUTATE_PODS_PATH, WebhookListener, router, serve, serve_tls};
pub use tls::{FollowSecret, SelfSigned, ServerTls, keep_ca_bundle};

/// Whether the webhook changes pods or only annotates what it would do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Set `hostUsers: false` where safe, and annotate every decision.
    #[default]
    Enforce,
    /// Never touch `hostUsers`; annotate `decision: audit` and what enforce mode would do.
    Audit,
}

/// Webhook flags of `userns-labeler run`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS webhook server (path /mutate/pods).
    #[arg(long, env = "USERNS_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: std::net::SocketAddr,

    /// enforce: set hostUsers: false where safe; audit: only annotate what enforce would do.
    #[arg(long, env = "USERNS_WEBHOOK_MODE", value_enum, default_value_t = Mode::Enforce)]
    pub webhook_mode: Mode,

    /// PEM serving certificate (chain) of the webhook; re-read when it changes on disk.
    #[arg(
        long,
        env = "USERNS_TLS_CERT_FILE",
        requires = "tls_key_file",
        conflicts_with = "self_signed_tls"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// PEM private key of the serving certificate; re-read when it changes on disk.
    #[arg(
        long,
        env = "USERNS_TLS_KEY_FILE",
        requires = "tls_cert_file",
        conflicts_with = "self_signed_tls"
    )]
    pub tls_key_file: Option<PathBuf>,

    /// How often the certificate files are checked for changes, in seconds.
    #[arg(long, env = "USERNS_TLS_RELOAD_INTERVAL_SECONDS", default_value_t = 5)]
    pub tls_reload_interval_seconds: u64,

    /// Generate a CA and serving certificate at start-up (SANs 127.0.0.1, localhost and
    /// --tls-san) and write the CA into --webhook-config-name's caBundle. Without
    /// --self-signed-ca-secret for one replica only (each would generate its own CA): demos
    /// and clusters without cert-manager.
    #[arg(long, env = "USERNS_SELF_SIGNED_TLS")]
    pub self_signed_tls: bool,

    /// With --self-signed-tls: a Secret in --namespace through which the replicas share one
    /// CA (keys ca.crt and ca.key). Created empty beforehand; the first replica to start
    /// stores a new CA in it, the others use that one. Each replica issues its own serving
    /// certificate from it. A Secret holding anything else than a usable CA is refused (the
    /// process exits), never overwritten.
    #[arg(
        long,
        env = "USERNS_SELF_SIGNED_CA_SECRET",
        requires = "self_signed_tls"
    )]
    pub self_signed_ca_secret: Option<String>,

    /// Extra DNS names or IP addresses for the self-signed certificate, e.g. the Service's
    /// `<svc>.<ns>.svc`. Repeat or separate with commas.
    #[arg(long, env = "USERNS_TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,

    /// MutatingWebhookConfiguration whose webhooks get the self-signed CA as caBundle
    /// (retried until it exists).
    #[arg(long, env = "USERNS_WEBHOOK_CONFIG_NAME")]
    pub webhook_config_name: Option<String>,

    /// How long an admission waits for the caches to catch up with a claim (or namespace) they
    /// do not hold yet, e.g. a StatefulSet claim created just before its pod, in milliseconds.
    /// After that a missing claim blocks (fail closed).
    #[arg(long, env = "USERNS_WEBHOOK_CACHE_WAIT_MS", default_value_t = 1500)]
    pub webhook_cache_wait_ms: u64,

    /// A connection must send a complete request head within this (also after the TLS
    /// handshake, and between keep-alive requests), else it is closed; in milliseconds. The TLS
    /// handshake has the same bound.
    #[arg(
        long,
        env = "USERNS_WEBHOOK_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub webhook_header_read_timeout_ms: u64,

    /// A request, from its head to the response (reading the body included), gets this long,
    /// in milliseconds; then 408. The API server waits at most 30 s (the chart: 5 s).
    #[arg(
        long,
        env = "USERNS_WEBHOOK_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub webhook_request_timeout_ms: u64,

    /// Open connections at most (TLS handshakes included); one over it is closed at once.
    #[arg(long, env = "USERNS_WEBHOOK_MAX_CONNECTIONS", default_value_t = 1024)]
    pub webhook_max_connections: usize,

    /// Requests handled (bodies buffered, up to 4 MiB each) at once; more wait for a slot
    /// within their request timeout.
    #[arg(long, env = "USERNS_WEBHOOK_MAX_REQUESTS", default_value_t = 32)]
    pub webhook_max_requests: usize,
}

impl Default for WebhookArgs {
    fn default() -> Self {
        WebhookArgs {
            webhook_addr: ([0, 0, 0, 0], 8443).into(),
            webhook_mode: Mode::Enforce,
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_interval_seconds: 5,
            self_signed_tls: false,
            self_signed_ca_secret: None,
            tls_san: Vec::new(),
            webhook_config_name: None,
            webhook_cache_wait_ms: 1500,
            webhook_header_read_timeout_ms: 5000,
            webhook_request_timeout_ms: 10_000,
            webhook_max_connections: 1024,
            webhook_max_requests: 32,
        }
    }
}

/// What a mutation request needs: the shared caches, the current table, keys and metrics.
/// Holds no API client.
pub struct WebhookState {
    pub caches: Caches,
    pub table: watch::Receiver<TableState>,
    pub keys: Keys,
    pub metrics: WebhookMetrics,
    /// What the nodes say: the node mode and the Node store, and the hostPaths a node could
    /// not idmap-mount. The default judges no nodes.
    pub nodes: crate::nodes::NodeSignals,
}

impl WebhookState {
    /// The state over the shared caches and table, its metrics registered in `registry`.
    pub fn new(
        caches: Caches,
        table: watch::Receiver<TableState>,
        keys: Keys,
        registry: &mut prometheus_client::registry::Registry,
    ) -> WebhookState {
        let metrics = WebhookMetrics::register(registry);
        WebhookState {
            caches,
            table,
            keys,
            metrics,
            nodes: crate::nodes::NodeSignals::default(),
        }
    }

    /// The same state, judging nodes by `nodes`.
    pub fn with_nodes(self, nodes: crate::nodes::NodeSignals) -> WebhookState {
        WebhookState { nodes, ..self }
    }

    /// True once every store has received its initial list.
    pub fn caches_synced(&self) -> bool {
        let c = &self.caches;
        let ready = |r: Option<Result<(), _>>| matches!(r, Some(Ok(())));
        ready(c.claims.wait_until_ready().now_or_never())
            && ready(c.volumes.wait_until_ready().now_or_never())
            && ready(c.classes.wait_until_ready().now_or_never())
            && ready(c.namespaces.wait_until_ready().now_or_never())
            && self.nodes.synced()
    }
}

/// How admissions are answered: the mode, the bound of the wait for the caches, and the
/// listener's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionSettings {
    pub mode: Mode,
    /// Upper bound of the wait for the caches on a missing claim or namespace.
    pub cache_wait: Duration,
    pub limits: Limits,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings::from(&WebhookArgs::default())
    }
}

impl From<&WebhookArgs> for AdmissionSettings {
    fn from(args: &WebhookArgs) -> Self {
        AdmissionSettings {
            mode: args.webhook_mode,
            cache_wait: Duration::from_millis(args.webhook_cache_wait_ms),
            limits: Limits {
                header_read_timeout: Duration::from_millis(args.webhook_header_read_timeout_ms),
                request_timeout: Duration::from_millis(args.webhook_request_timeout_ms),
                max_connections: args.webhook_max_connections,
                max_requests: args.webhook_max_requests,
                max_body_bytes: MAX_BODY_BYTES,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook TLS: give --tls-cert-file and --tls-key-file, or --self-signed-tls")]
    NoTlsSource,
    #[error("loading the webhook certificate {cert} / key {key}: {source}")]
    LoadCertificate {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("generating the self-signed webhook certificate: {0}")]
    GenerateCertificate(#[from] rcgen::Error),
    #[error("invalid --tls-san {0:?}: not a DNS name or IP address")]
    InvalidSan(String),
    #[error(
        "the Secret {namespace}/{name} (--self-signed-ca-secret) holds no usable CA: {reason}. \
         It is not overwritten, as other replicas may be serving with its CA. Put a valid CA \
         in it, or remove its data to have a new CA generated (kubectl -n {namespace} patch \
         secret {name} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/data\"}}]') and \
         restart every replica"
    )]
    InvalidCaSecret {
        namespace: String,
        name: String,
        reason: ca::InvalidCa,
    },
    #[error("reading or writing the Secret {namespace}/{name} (--self-signed-ca-secret): {cause}")]
    CaSecret {
        namespace: String,
        name: String,
        /// The API server's message (or the transport error) and what to do.
        cause: String,
    },
    #[error("binding the webhook server to {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("webhook server: {0}")]
    Serve(std::io::Error),
}

impl WebhookError {
    /// A fixed string per variant, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            WebhookError::NoTlsSource => "no_tls_source",
            WebhookError::LoadCertificate { .. } => "load_certificate",
            WebhookError::GenerateCertificate(_) => "generate_certificate",
            WebhookError::InvalidSan(_) => "invalid_san",
            WebhookError::InvalidCaSecret { .. } => "invalid_ca_secret",
            WebhookError::CaSecret { .. } => "ca_secret",
            WebhookError::Bind { .. } => "bind",
            WebhookError::Serve(_) => "serve",
        }
    }
}
