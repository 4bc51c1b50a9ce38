//! The HTTP side: the axum router with `POST /mutate/pods`, a thin handler around
//! [`mutate`], and the HTTPS server with graceful shutdown.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::TypeMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio_util::sync::CancellationToken;

use super::admission::{Admission, is_pod_create, mutate};
use super::metrics::Outcome;
use super::tls::{SelfSigned, ServerTls, inject_ca_bundle};
use super::{AdmissionSettings, Mode, WebhookArgs, WebhookError, WebhookState};

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
pub fn router(state: Arc<WebhookState>, settings: AdmissionSettings) -> Router {
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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
    let request = match parse_review(&body) {
        Parsed::Pod(request) => request,
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
            log_admission(None, &admission);
            record(admission.outcome, &[], admission.error);
            return review_response(admission.response);
        }
    };
    let admission = admit(&request, &state, settings).await;
    log_admission(Some(&request), &admission);
    record(admission.outcome, &admission.blockers, admission.error);
    review_response(admission.response)
}

/// Decides, waiting up to `settings.cache_wait` for the caches when the answer depends on a claim
/// or namespace they do not hold yet (a claim created just before its pod).
async fn admit(
    request: &AdmissionRequest<Pod>,
    state: &WebhookState,
    settings: AdmissionSettings,
) -> Admission {
    let deadline = Instant::now() + settings.cache_wait;
    let mut waited = false;
    loop {
        let admission = mutate_guarded(request, state, settings.mode);
        if !admission.cache_miss || Instant::now() >= deadline {
            if waited {
                state.metrics.cache_wait(!admission.cache_miss);
            }
            return admission;
        }
        waited = true;
        tokio::time::sleep(CACHE_POLL).await;
    }
}

/// [`mutate`], with a panic turned into "allowed, unchanged" (fail safe) instead of a dropped
/// connection.
fn mutate_guarded(request: &AdmissionRequest<Pod>, state: &WebhookState, mode: Mode) -> Admission {
    std::panic::catch_unwind(AssertUnwindSafe(|| mutate(request, state, mode))).unwrap_or_else(
        |_| {
            tracing::error!(
                uid = %request.uid,
                "deciding the pod panicked; admitting it unchanged"
            );
            Admission::fail_safe(AdmissionResponse::from(request), "panic")
        },
    )
}

enum Parsed {
    Pod(Box<AdmissionRequest<Pod>>),
    /// Answered without a decision: no request, not a pod, or an undecodable pod.
    Answered(Box<Admission>),
    NotAReview(String),
}

fn is_review_type(types: &TypeMeta) -> bool {
    types.kind == "AdmissionReview" && types.api_version.starts_with("admission.k8s.io/")
}

fn parse_review(body: &[u8]) -> Parsed {
    let typed_error = match serde_json::from_slice::<AdmissionReview<Pod>>(body) {
        Ok(review) if !is_review_type(&review.types) => {
            return Parsed::NotAReview(not_review_kind(&review.types));
        }
        Ok(review) => {
            return match review.try_into() {
                Ok(request) => Parsed::Pod(Box::new(request)),
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

fn review_response(response: AdmissionResponse) -> Response {
    axum::Json(response.into_review()).into_response()
}

fn log_admission(request: Option<&AdmissionRequest<Pod>>, admission: &Admission) {
    let uid = admission.response.uid.as_str();
    let (namespace, name) = match request {
        Some(r) => {
            let meta = r.object.as_ref().map(|p| &p.metadata);
            let name = if r.name.is_empty() {
                meta.and_then(|m| m.generate_name.as_deref())
                    .unwrap_or_default()
            } else {
                r.name.as_str()
            };
            (r.namespace.as_deref().unwrap_or_default(), name)
        }
        None => ("", ""),
    };
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

/// Runs the webhook from the flags until `shutdown`: loads (or generates) the certificate,
/// binds `--webhook-addr` and serves [`router`] over HTTPS. With `--self-signed-tls` and
/// `--webhook-config-name` it also writes the generated CA into that configuration, in the
/// background and with retries; `client` is used for nothing else.
pub async fn serve(
    args: &WebhookArgs,
    state: Arc<WebhookState>,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let tls = if args.self_signed_tls {
        let generated = SelfSigned::generate(&args.tls_san)?;
        let tls = ServerTls::from_pem(&generated.cert_pem, &generated.key_pem).await?;
        match args.webhook_config_name.clone() {
            Some(name) => {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(error) =
                        inject_ca_bundle(client, &name, &generated.ca_pem, shutdown).await
                    {
                        tracing::error!(webhook_config = name, %error, "writing the caBundle failed");
                    }
                });
            }
            None => tracing::warn!(
                "--self-signed-tls without --webhook-config-name: nothing will trust the generated CA"
            ),
        }
        tls
    } else if let (Some(cert), Some(key)) = (&args.tls_cert_file, &args.tls_key_file) {
        ServerTls::from_files(
            cert,
            key,
            Duration::from_secs(args.tls_reload_interval_seconds),
        )
        .await?
    } else {
        return Err(WebhookError::NoTlsSource);
    };
    let listener =
        std::net::TcpListener::bind(args.webhook_addr).map_err(|source| WebhookError::Bind {
            addr: args.webhook_addr,
            source,
        })?;
    serve_tls(
        listener,
        tls,
        state,
        AdmissionSettings::from(args),
        shutdown,
    )
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
    let server = axum_server::from_tcp_rustls(listener, tls.rustls_config().clone())
        .map_err(WebhookError::Serve)?
        .handle(handle.clone());
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
