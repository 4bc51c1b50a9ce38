//! The HTTP side: the axum router with `POST /mutate/pods`, a thin handler around
//! [`mutate`], and the HTTPS server with graceful shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::tls_rustls::RustlsAcceptor;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::TypeMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, PodCreate, allowed_response, is_pod_create, mutate, mutate_pod};
use super::ca::{Ca, CaSecret, Origin};
use super::lean::{Review, decode_review};
use super::metrics::Outcome;
use super::review;
use super::tls::{FollowSecret, ServerTls, keep_ca_bundle};
use super::{AdmissionSettings, Mode, WebhookArgs, WebhookError, WebhookState};
use crate::capability::Awaited;
use crate::keys::Keys;

/// The path the API server posts pod AdmissionReviews to.
pub const MUTATE_PODS_PATH: &str = "/mutate/pods";

/// Largest accepted request body. The API server limits a stored object to 1.5 MiB by default
/// (etcd `--max-request-bytes`); a CREATE review carries one object plus request metadata.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How often a request waiting for the caches looks again.
const CACHE_POLL: Duration = Duration::from_millis(10);

/// How long open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The router's own state: the shared state and how to answer.
#[derive(Clone)]
struct Handler {
    state: Arc<WebhookState>,
    settings: AdmissionSettings,
}

/// The webhook's routes, over `state`. Unknown paths get 404, other methods 405.
/// Requests get `settings.limits`: a request timeout, a cap on requests in flight, bodies
/// refused above [`MAX_BODY_BYTES`] (by `Content-Length` before reading, else as they stream).
pub fn router(state: Arc<WebhookState>, settings: AdmissionSettings) -> Router {
    let routes = Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    settings
        .limits
        .layer(routes)
        .with_state(Handler { state, settings })
}

async fn mutate_pods(
    State(Handler { state, settings }): State<Handler>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let record = |outcome: Outcome, blockers: &[_], error: Option<&'static str>| {
        state
            .metrics
            .record(outcome, blockers, error, started.elapsed().as_secs_f64());
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let category = match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                _ => "body_unreadable",
            };
            tracing::warn!(error = %rejection.body_text(), category, "admission request body rejected");
            record(Outcome::Error, &[], Some(category));
            return rejection.into_response();
        }
    };
    let parsed = parse_review(&body, &state.keys);
    let (admission, (namespace, name)) = match &parsed {
        Parsed::NotAReview(message) => {
            tracing::warn!(error = %message, bytes = body.len(), "the request body is not an AdmissionReview");
            record(Outcome::Error, &[], Some("not_admission_review"));
            return (
                StatusCode::BAD_REQUEST,
                format!("the request body is not an AdmissionReview: {message}"),
            )
                .into_response();
        }
        Parsed::Answered(admission) => {
            log_admission(("", ""), admission);
            record(admission.outcome, &[], admission.error);
            return review_response(&admission.response);
        }
        Parsed::Fast(pod) => {
            let decide = |mode| mutate_pod(pod, &state, mode);
            let admission = admit(decide, || pod.allowed(), &pod.uid, &state, settings).await;
            let name = match pod.name.as_ref() {
                "" => pod.meta.generate_name.as_deref().unwrap_or_default(),
                name => name,
            };
            (
                admission,
                (pod.namespace.as_deref().unwrap_or_default(), name),
            )
        }
        Parsed::Full(request) => {
            let decide = |mode| mutate(request, &state, mode);
            let allowed = || AdmissionResponse::from(&**request);
            let admission = admit(decide, allowed, &request.uid, &state, settings).await;
            let name = match request.name.as_str() {
                "" => request
                    .object
                    .as_ref()
                    .and_then(|p| p.metadata.generate_name.as_deref())
                    .unwrap_or_default(),
                name => name,
            };
            (
                admission,
                (request.namespace.as_deref().unwrap_or_default(), name),
            )
        }
    };
    log_admission((namespace, name), &admission);
    record(admission.outcome, &admission.blockers, admission.error);
    review_response(&admission.response)
}

/// Decides with `decide`, waiting up to `settings.cache_wait` for the caches when the answer
/// depends on a claim, PV or namespace they do not hold yet (a claim created just before its
/// pod). The wait looks only at what the decision found missing ([`Admission::awaited`]), and
/// decides again once all of it is there or the wait ends: a pod with thousands of missing
/// claims is decided a few times, not every poll.
/// A panic in `decide` is turned into `allowed()` (fail safe) instead of a dropped connection.
async fn admit(
    decide: impl Fn(Mode) -> Admission,
    allowed: impl Fn() -> AdmissionResponse,
    uid: &str,
    state: &WebhookState,
    settings: AdmissionSettings,
) -> Admission {
    let deadline = Instant::now() + settings.cache_wait;
    let mut waited = false;
    loop {
        let mut admission = std::panic::catch_unwind(AssertUnwindSafe(|| decide(settings.mode)))
            .unwrap_or_else(|_| {
                tracing::error!(uid, "deciding the pod panicked; admitting it unchanged");
                Admission::fail_safe(allowed(), "panic")
            });
        if !admission.cache_miss || Instant::now() >= deadline {
            if waited {
                state.metrics.cache_wait(!admission.cache_miss);
            }
            return admission;
        }
        waited = true;
        let awaited = std::mem::take(&mut admission.awaited);
        drop(admission);
        wait_for(awaited, state, deadline).await;
    }
}

/// Waits until the caches hold everything in `awaited` (nothing listed: until they have
/// synced), or `deadline`. Each poll looks up only the first object still missing.
async fn wait_for(mut awaited: Vec<Awaited>, state: &WebhookState, deadline: Instant) {
    // Checked from the end; the order does not matter, as all must be there.
    loop {
        tokio::time::sleep(CACHE_POLL).await;
        if awaited.is_empty() {
            if state.caches_synced() {
                return;
            }
        } else {
            while awaited.last().is_some_and(|a| state.caches.holds(a)) {
                awaited.pop();
            }
            if awaited.is_empty() {
                return;
            }
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

enum Parsed<'b> {
    /// A pod CREATE, decoded on the fast path, borrowing from the body.
    Fast(Box<PodCreate<'b>>),
    /// Any other review, fully decoded.
    Full(Box<AdmissionRequest<Pod>>),
    /// Answered without a decision: no request, not a pod, or an undecodable pod.
    Answered(Box<Admission>),
    NotAReview(String),
}

fn is_review_type(types: &TypeMeta) -> bool {
    types.kind == "AdmissionReview" && types.api_version.starts_with("admission.k8s.io/")
}

/// Decodes the body once: a pod CREATE, or any other review (answered allowed, unchanged),
/// through the fast path ([`lean`](super::lean)); anything the fast path declines through
/// kube's full typed decoder, and failing that as a `DynamicObject` review.
fn parse_review<'b>(body: &'b [u8], keys: &Keys) -> Parsed<'b> {
    match decode_review(body, keys) {
        Review::PodCreate(pod) => return Parsed::Fast(pod),
        Review::Other(other) => {
            let response = allowed_response(&other.api_version, &other.kind, &other.uid);
            return Parsed::Answered(Box::new(Admission::ignored(response)));
        }
        Review::Declined => {}
    }
    let typed_error = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(review) if !is_review_type(&review.types) => {
            return Parsed::NotAReview(not_review_kind(&review.types));
        }
        Ok(review) => {
            return match review.try_into() {
                Ok(request) => Parsed::Full(Box::new(request)),
                Err(_) => Parsed::Answered(Box::new(Admission::invalid(
                    None,
                    "no_request",
                    "the AdmissionReview carries no request",
                ))),
            };
        }
        Err(error) => error,
    };
    // Not decodable with a Pod object: another kind sent here by a misconfigured webhook, a
    // pod this version's types cannot read, or no AdmissionReview at all.
    let review = match serde_json::from_slice::<AdmissionReview<DynamicObject>>(body) {
        Ok(review) if !is_review_type(&review.types) => {
            return Parsed::NotAReview(not_review_kind(&review.types));
        }
        Ok(review) => review,
        Err(_) => return Parsed::NotAReview(typed_error.to_string()),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(_) => {
            return Parsed::Answered(Box::new(Admission::invalid(
                None,
                "no_request",
                "the AdmissionReview carries no request",
            )));
        }
    };
    let response = AdmissionResponse::from(&request);
    if is_pod_create(&request) {
        tracing::warn!(uid = %request.uid, error = %typed_error,
            "the pod in the AdmissionReview cannot be decoded; admitting it unchanged");
        Parsed::Answered(Box::new(Admission::fail_safe(response, "pod_undecodable")))
    } else {
        Parsed::Answered(Box::new(Admission::ignored(response)))
    }
}

fn not_review_kind(types: &TypeMeta) -> String {
    format!(
        "expected kind AdmissionReview of admission.k8s.io/v1, got kind {:?} of {:?}",
        types.kind, types.api_version
    )
}

/// The AdmissionReview carrying `response` (see [`review::encode`]); 500 if it cannot be
/// serialised, as with `axum::Json`.
fn review_response(response: &AdmissionResponse) -> Response {
    match review::encode(response) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// Logs an answer: errors at warn, decisions at debug; `(namespace, name)` of the pod, if any.
fn log_admission((namespace, name): (&str, &str), admission: &Admission) {
    let uid = admission.response.uid.as_str();
    match admission.error {
        Some(category) => tracing::warn!(
            uid,
            namespace,
            name,
            category,
            allowed = admission.response.allowed,
            "admission answered without a decision"
        ),
        None => tracing::debug!(
            uid,
            namespace,
            name,
            outcome = admission.outcome.as_str(),
            blockers = ?admission.blockers,
            "admission decided"
        ),
    }
}

/// The webhook's start-up work, done before anything is served so that each failure is an
/// error with its cause: the certificate loaded from the files (and checked against its key) or
/// generated (from the CA shared through `--self-signed-ca-secret`, if given), and
/// `--webhook-addr` bound.
pub struct WebhookListener {
    listener: std::net::TcpListener,
    tls: ServerTls,
    /// `--self-signed-tls`: the CA, for the webhook configuration's caBundle.
    self_signed: Option<SelfSignedCa>,
}

/// The CA of `--self-signed-tls` and, when shared, its Secret.
struct SelfSignedCa {
    ca_pem: String,
    secret: Option<CaSecret>,
}

impl WebhookListener {
    /// Loads (or generates) the serving certificate and binds `--webhook-addr`. With
    /// `--self-signed-ca-secret` the CA comes from that Secret in `namespace` (stored there
    /// first if it is empty; see [`CaSecret::load_or_create`]), read with `client`; `client`
    /// is used for nothing else here.
    pub async fn bind(
        args: &WebhookArgs,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<WebhookListener, WebhookError> {
        let (tls, self_signed) = if args.self_signed_tls {
            let (ca, secret) = match &args.self_signed_ca_secret {
                Some(name) => {
                    let secret = CaSecret::new(client.clone(), namespace, name);
                    let (ca, origin) = secret.load_or_create().await?;
                    let how = match origin {
                        Origin::Stored => "read the shared CA from its Secret",
                        Origin::Generated => "generated a CA and stored it in the shared CA Secret",
                        Origin::Conflict => {
                            "read the shared CA another replica stored first in its Secret"
                        }
                    };
                    tracing::info!(secret = %secret, "{how}");
                    (ca, Some(secret))
                }
                None => (Ca::generate()?, None),
            };
            let serving = ca.issue(&args.tls_san)?;
            let tls = ServerTls::from_pem(&serving.cert_pem, &serving.key_pem).await?;
            let self_signed = SelfSignedCa {
                ca_pem: serving.ca_pem,
                secret,
            };
            (tls, Some(self_signed))
        } else if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
            let interval = Duration::from_secs(args.tls_reload_interval_seconds);
            (ServerTls::from_files(cert, key, interval).await?, None)
        } else {
            return Err(WebhookError::NoTlsSource);
        };
        let listener = std::net::TcpListener::bind(args.webhook_addr).map_err(|source| {
            WebhookError::Bind {
                addr: args.webhook_addr,
                source,
            }
        })?;
        Ok(WebhookListener {
            listener,
            tls,
            self_signed,
        })
    }

    /// Serves [`router`] over HTTPS until `shutdown` (see [`serve_tls`]). With
    /// `--self-signed-tls` and `--webhook-config-name` it also keeps the CA in that
    /// configuration's caBundle, in the background (following the shared CA's Secret, if any:
    /// [`FollowSecret`]); `client` is used for nothing else.
    pub async fn serve(
        self,
        args: &WebhookArgs,
        state: Arc<WebhookState>,
        client: kube::Client,
        shutdown: CancellationToken,
    ) -> Result<(), WebhookError> {
        match (self.self_signed, args.webhook_config_name.clone()) {
            (Some(SelfSignedCa { ca_pem, secret }), Some(name)) => {
                let follow = secret.map(|secret| FollowSecret {
                    secret,
                    tls: self.tls.clone(),
                    sans: args.tls_san.clone(),
                });
                let (metrics, shutdown) = (state.metrics.clone(), shutdown.clone());
                tokio::spawn(async move {
                    keep_ca_bundle(client, &name, &ca_pem, follow, metrics, shutdown).await;
                });
            }
            (Some(_), None) => tracing::warn!(
                "--self-signed-tls without --webhook-config-name: nothing will trust the generated CA"
            ),
            (None, _) => {}
        }
        serve_tls(
            self.listener,
            self.tls,
            state,
            AdmissionSettings::from(args),
            shutdown,
        )
        .await
    }
}

/// Runs the webhook from the flags until `shutdown`: [`WebhookListener::bind`], then
/// [`WebhookListener::serve`]. `namespace` is where `--self-signed-ca-secret` is.
pub async fn serve(
    args: &WebhookArgs,
    state: Arc<WebhookState>,
    client: kube::Client,
    namespace: &str,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    WebhookListener::bind(args, &client, namespace)
        .await?
        .serve(args, state, client, shutdown)
        .await
}

/// Serves [`router`] over HTTPS on an already bound listener until `shutdown`, then lets open
/// requests finish (up to 5 s). Certificate files are re-read when they change.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    tls: ServerTls,
    state: Arc<WebhookState>,
    settings: AdmissionSettings,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let addr = listener.local_addr().ok();
    let handle = axum_server::Handle::new();
    // Cancelled with `shutdown`, or when the server ends on its own (an I/O error).
    let local = shutdown.child_token();
    let _stop_helpers = local.clone().drop_guard();
    tokio::spawn(
        tls.clone()
            .reload_on_change(state.metrics.clone(), local.clone()),
    );
    let limits = settings.limits;
    // The connection cap counts from TCP accept, so the TLS handshake is inside it; the
    // handshake has the header-read timeout too.
    let acceptor = RustlsAcceptor::new(tls.rustls_config().clone())
        .handshake_timeout(limits.header_read_timeout)
        .acceptor(limits.connection_limit());
    let server = axum_server::from_tcp(listener)
        .map_err(WebhookError::Serve)?
        .acceptor(acceptor)
        .handle(handle.clone());
    let server = limits.configure(server);
    tokio::spawn(async move {
        local.cancelled().await;
        handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    tracing::info!(addr = ?addr, path = MUTATE_PODS_PATH, mode = ?settings.mode, "webhook server listening");
    server
        .serve(router(state, settings).into_make_service())
        .await
        .map_err(WebhookError::Serve)
}
