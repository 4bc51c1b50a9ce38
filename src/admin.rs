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
use tokio_util::sync::CancellationToken;

use crate::cache::Caches;
use crate::keys::Keys;
use crate::metrics::ControllerMetrics;

/// What `/readyz` reports on. Ready once every cache has synced and a driver table is loaded;
/// not ready again as soon as shutdown starts.
#[derive(Default)]
pub struct Readiness {
    pub caches_synced: AtomicBool,
    pub table_loaded: AtomicBool,
    pub shutting_down: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.caches_synced.load(Ordering::Acquire)
            && self.table_loaded.load(Ordering::Acquire)
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
