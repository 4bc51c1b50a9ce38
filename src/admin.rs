//! The admin server on its own plain-HTTP port: `/livez`, `/readyz`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::Caches;
use crate::config::TableState;
use crate::controller::ControllerMetrics;
use crate::keys::Keys;
use crate::limits::Limits;

/// What `/readyz` reports on. Ready once every cache has synced, a driver table is in force
/// and the webhook is serving; not ready again as soon as shutdown starts or the webhook stops.
pub struct Readiness {
    caches_synced: AtomicBool,
    shutting_down: AtomicBool,
    /// The webhook's port is bound with a certificate that matches its key, and its server runs.
    webhook_serving: AtomicBool,
    table: watch::Receiver<TableState>,
}

impl Readiness {
    /// Follows `caches` until they have synced, and `shutdown`.
    pub fn track(
        caches: Caches,
        table: watch::Receiver<TableState>,
        shutdown: CancellationToken,
    ) -> Arc<Readiness> {
        let readiness = Arc::new(Readiness {
            caches_synced: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            webhook_serving: AtomicBool::new(false),
            table,
        });
        let tracked = readiness.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = caches.wait_until_ready() => {
                    tracked.caches_synced.store(true, Ordering::Release);
                    tracing::info!("caches synced");
                }
                _ = shutdown.cancelled() => {}
            }
            shutdown.cancelled().await;
            tracked.shutting_down.store(true, Ordering::Release);
        });
        readiness
    }

    /// Whether the webhook serves: set once its listener is bound with a validated pair,
    /// cleared when its server stops.
    pub fn set_webhook_serving(&self, serving: bool) {
        self.webhook_serving.store(serving, Ordering::Release);
    }

    /// What keeps this replica from being ready; empty when it is.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.caches_synced.load(Ordering::Acquire) {
            missing.push("caches not synced");
        }
        match &*self.table.borrow() {
            TableState::InForce(_) => {}
            TableState::Loading => missing.push("driver table not loaded"),
            TableState::Unusable(_) => {
                missing.push("no usable driver table (failing closed; see the ConfigMap's events)")
            }
        }
        if !self.webhook_serving.load(Ordering::Acquire) {
            missing.push("webhook not serving");
        }
        if self.shutting_down.load(Ordering::Acquire) {
            missing.push("shutting down");
        }
        missing
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
    let missing = state.readiness.missing();
    if missing.is_empty() {
        return (StatusCode::OK, "ok".to_string());
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

/// Largest request body of the admin server (its routes read none).
pub const ADMIN_MAX_BODY_BYTES: usize = 64 * 1024;

/// How long open admin requests get to finish after shutdown starts.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves on `listener` (bound at start-up, so that a port in use ends the process before
/// anything runs) until `shutdown` is cancelled, with `limits` (see [`crate::limits`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "admin server listening");
    let handle = axum_server::Handle::<std::net::SocketAddr>::new();
    let server = axum_server::Server::from_listener(listener)
        .acceptor(limits.connection_limit())
        .handle(handle.clone());
    let server = limits.configure(server);
    let stop = handle.clone();
    let _stop = tokio::spawn(async move {
        shutdown.cancelled().await;
        stop.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let routes = limits.layer(router(state).layer(DefaultBodyLimit::max(ADMIN_MAX_BODY_BYTES)));
    server.serve(routes.into_make_service()).await
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use kube::runtime::reflector::store::Writer;

    use super::*;
    use crate::capability::DriverTable;

    /// Readiness over synced caches and a table in force; its tracking task has run.
    async fn synced_and_loaded() -> Arc<Readiness> {
        let caches = Caches::from_objects(vec![], vec![], vec![], vec![]);
        let table = TableState::channel(DriverTable::defaults());
        let readiness = Readiness::track(caches, table, CancellationToken::new());
        while readiness.missing().contains(&"caches not synced") {
            tokio::task::yield_now().await;
        }
        readiness
    }

    async fn readyz_with(readiness: Arc<Readiness>) -> (StatusCode, String) {
        let state = Arc::new(AdminState {
            readiness,
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

    #[tokio::test]
    async fn readyz_is_not_ready_while_the_webhook_is_not_serving() {
        let readiness = synced_and_loaded().await;
        assert_eq!(
            readyz_with(readiness.clone()).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook not serving".into()
            )
        );
        readiness.set_webhook_serving(true);
        assert_eq!(
            readyz_with(readiness.clone()).await,
            (StatusCode::OK, "ok".into())
        );
        readiness.set_webhook_serving(false);
        assert_eq!(
            readyz_with(readiness).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "webhook not serving".into()
            )
        );
    }

    #[tokio::test]
    async fn readyz_lists_every_missing_reason() {
        // Stores that never received a list (their writers kept: a dropped one ends the wait).
        let writers = (
            Writer::default(),
            Writer::default(),
            Writer::default(),
            Writer::default(),
        );
        let caches = Caches {
            claims: writers.0.as_reader(),
            volumes: writers.1.as_reader(),
            classes: writers.2.as_reader(),
            namespaces: writers.3.as_reader(),
        };
        let (_tx, table) = watch::channel(TableState::Loading);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let readiness = Readiness::track(caches, table, shutdown);
        while !readiness.missing().contains(&"shutting down") {
            tokio::task::yield_now().await;
        }
        let (status, body) = readyz_with(readiness).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "caches not synced, driver table not loaded, webhook not serving, shutting down"
        );
    }
}
