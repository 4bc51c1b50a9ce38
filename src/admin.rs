//! The admin server on its own plain-HTTP port: `/livez`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::cache::Caches;
use crate::keys::Keys;
use crate::metrics::ControllerMetrics;

/// What `/readyz` reports on. Ready once every cache has synced, a driver table is loaded and
/// the webhook is serving; not ready again as soon as shutdown starts or the webhook stops.
#[derive(Default)]
pub struct Readiness {
    pub caches_synced: AtomicBool,
    pub table_loaded: AtomicBool,
    pub shutting_down: AtomicBool,
    /// The webhook's port is bound with a certificate that matches its key, and its server runs.
    pub webhook_serving: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.caches_synced.load(Ordering::Acquire)
            && self.table_loaded.load(Ordering::Acquire)
            && self.webhook_serving.load(Ordering::Acquire)
            && !self.shutting_down.load(Ordering::Acquire)
    }
}

pub struct AdminState {
    pub readiness: Arc<Readiness>,
    pub registry: Registry,
    pub metrics: ControllerMetrics,
    pub caches: Caches,
    pub keys: Keys,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let r = &state.readiness;
    if r.is_ready() {
        return (StatusCode::OK, "ok".to_string());
    }
    let mut missing = Vec::new();
    if !r.caches_synced.load(Ordering::Acquire) {
        missing.push("caches not synced");
    }
    if !r.table_loaded.load(Ordering::Acquire) {
        missing.push("driver table not loaded");
    }
    if !r.webhook_serving.load(Ordering::Acquire) {
        missing.push("webhook not serving");
    }
    if r.shutting_down.load(Ordering::Acquire) {
        missing.push("shutting down");
    }
    (StatusCode::SERVICE_UNAVAILABLE, missing.join(", "))
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    state
        .metrics
        .refresh_label_counts(&state.caches, &state.keys);
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics: {e}"),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Serves on `listener` (bound at start-up, so that a port in use ends the process before
/// anything runs) until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn readyz_with(readiness: Readiness) -> (StatusCode, String) {
        let state = Arc::new(AdminState {
            readiness: Arc::new(readiness),
            registry: Registry::default(),
            metrics: ControllerMetrics::default(),
            caches: Caches::from_objects(vec![], vec![], vec![], vec![]),
            keys: Keys::default(),
        });
        let request = axum::http::Request::get("/readyz")
            .body(Body::empty())
            .unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    fn synced_and_loaded() -> Readiness {
        let readiness = Readiness::default();
        readiness.caches_synced.store(true, Ordering::Release);
        readiness.table_loaded.store(true, Ordering::Release);
        readiness
    }

    #[tokio::test]
    async fn readyz_is_not_ready_while_the_webhook_is_not_serving() {
        assert_eq!(
            readyz_with(synced_and_loaded()).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook not serving".into()
            )
        );
        let serving = synced_and_loaded();
        serving.webhook_serving.store(true, Ordering::Release);
        assert_eq!(readyz_with(serving).await, (StatusCode::OK, "ok".into()));
    }

    #[tokio::test]
    async fn readyz_lists_every_missing_reason() {
        let (status, body) = readyz_with(Readiness::default()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "caches not synced, driver table not loaded, webhook not serving"
        );
    }
}
