//! The mutating admission webhook (interface stub; the full implementation replaces this file).
//!
//! Contract with the runtime (`src/runtime.rs`):
//! - `WebhookArgs` is flattened into `userns-labeler run`'s flags;
//! - `WebhookMetrics::register(&mut Registry)` is called once at start-up;
//! - `serve(args, state, client, shutdown)` runs the HTTPS server on every replica until
//!   `shutdown` is cancelled. `client` is only for start-up work (writing the caBundle in
//!   `--self-signed-tls` mode), never per admission.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cache::Caches;
use crate::capability::DriverTable;
use crate::keys::Keys;

/// Webhook flags of `userns-labeler run`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS webhook server.
    #[arg(long, env = "USERNS_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: std::net::SocketAddr,
}

/// What a mutation request needs: the shared caches, the current table, keys and metrics.
pub struct WebhookState {
    pub caches: Caches,
    pub table: watch::Receiver<Arc<DriverTable>>,
    pub keys: Keys,
    pub metrics: WebhookMetrics,
}

#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {}

impl WebhookMetrics {
    pub fn register(_registry: &mut Registry) -> WebhookMetrics {
        WebhookMetrics {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook server: {0}")]
    Serve(String),
}

pub async fn serve(
    _args: &WebhookArgs,
    _state: Arc<WebhookState>,
    _client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    shutdown.cancelled().await;
    Ok(())
}
