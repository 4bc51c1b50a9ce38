//! The admin server on its own plain-HTTP port: `/livez`, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
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

/// What `/readyz` reports on. Ready once every cache has synced and a driver table is in
/// force; not ready again as soon as shutdown starts.
pub struct Readiness {
    caches_synced: AtomicBool,
    shutting_down: AtomicBool,
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

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin server listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
