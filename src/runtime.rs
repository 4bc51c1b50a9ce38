//! `userns-labeler run`: wires the caches, the driver-table watch, the controllers, leader
//! election, the webhook and the admin server together. No decisions are made here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Recorder, Reporter};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin::{self, AdminState, Readiness};
use crate::controller::{self, Context};
use crate::keys::{InvalidPrefix, Keys};
use crate::leader::{self, LeaderError, LeaseSettings};
use crate::limits::Limits;
use crate::nodes::{self, NodeSignals, labeller::NodeLabeller};
use crate::policy_maps::{self, PolicyMapSettings, PolicyMaps};
use crate::webhook::{self, WebhookArgs, WebhookState};
use crate::{cache, config, evidence, metrics};

/// The controller's name in Events and leases.
pub const COMPONENT: &str = "userns-labeler";

/// Flags of `userns-labeler run`; each has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Path to a kubeconfig; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "USERNS_KUBE_CONTEXT")]
    pub context: Option<String>,
    /// The namespace of the driver ConfigMap, the leader-election Lease and the shared
    /// self-signed CA's Secret (--self-signed-ca-secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "userns-labeler")]
    pub namespace: String,
    /// Name of the driver ConfigMap (key `drivers.yaml`).
    #[arg(
        long,
        env = "USERNS_CONFIG_MAP",
        default_value = "userns-labeler-drivers"
    )]
    pub config_map: String,
    /// Domain prefix of all labels and annotations.
    #[arg(long, env = "USERNS_LABEL_PREFIX", default_value = crate::keys::DEFAULT_PREFIX)]
    pub label_prefix: String,
    /// Address of the plain-HTTP admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "USERNS_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(long, env = "USERNS_LEASE_NAME", default_value = "userns-labeler")]
    pub lease_name: String,
    /// This replica's identity in the Lease (defaults to the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Label writes (and label-change Events) in flight at once, claims and volumes together;
    /// waiting claims go first.
    #[arg(long, env = "USERNS_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Publish the claim maps policy engines read (ConfigMaps `userns-claims.<namespace>.<i>`
    /// in `--namespace`: claim name → label value), for the Kyverno policies in
    /// `deploy/kyverno/`. Written by the leader only, when they change.
    #[arg(long, env = "USERNS_CLAIM_MAPS")]
    pub claim_maps: bool,
    /// An admin connection must send a complete request head within this (and between
    /// keep-alive requests), else it is closed; in milliseconds.
    #[arg(
        long,
        env = "USERNS_ADMIN_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub admin_header_read_timeout_ms: u64,
    /// An admin request, from its head to the response, gets this long, in milliseconds.
    #[arg(
        long,
        env = "USERNS_ADMIN_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub admin_request_timeout_ms: u64,
    /// Open admin connections at most; one over it is closed at once.
    #[arg(long, env = "USERNS_ADMIN_MAX_CONNECTIONS", default_value_t = 64)]
    pub admin_max_connections: usize,
    /// Admin requests handled at once; more wait within their request timeout.
    #[arg(long, env = "USERNS_ADMIN_MAX_REQUESTS", default_value_t = 16)]
    pub admin_max_requests: usize,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub nodes: crate::nodes::NodeArgs,
    #[command(flatten)]
    pub evidence: crate::evidence::EvidenceArgs,
}

impl RunArgs {
    /// The admin server's limits from the flags.
    pub fn admin_limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(self.admin_header_read_timeout_ms),
            request_timeout: Duration::from_millis(self.admin_request_timeout_ms),
            max_connections: self.admin_max_connections,
            max_requests: self.admin_max_requests,
            max_body_bytes: admin::ADMIN_MAX_BODY_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Prefix(#[from] InvalidPrefix),
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("loading the Kubernetes client configuration: {0}")]
    ClientConfig(String),
    #[error("creating the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("leader election: {0}")]
    Lease(String),
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error("admin server on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    #[error("the {0} server stopped before shutdown")]
    ServerStopped(&'static str),
}

/// Builds the client from `--kubeconfig`/`--context`, else in-cluster or the default kubeconfig.
pub async fn client(
    kubeconfig: Option<&PathBuf>,
    context: Option<&str>,
) -> Result<Client, RunError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| RunError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| RunError::ClientConfig(e.to_string()))?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| RunError::ClientConfig(e.to_string()))?,
        None => kube::Config::infer()
            .await
            .map_err(|e| RunError::ClientConfig(e.to_string()))?,
    };
    Ok(Client::try_from(config)?)
}

/// Runs until SIGTERM/SIGINT (or `shutdown` is cancelled), or until a component fails.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let keys = Keys::new(&args.label_prefix)?;
    // The client only reads its configuration here; the listeners may need it for the shared
    // self-signed CA.
    let client = client(args.kubeconfig.as_ref(), args.context.as_deref()).await?;
    let listeners = Listeners::bind(&args, &client).await?;
    let identity = holder_identity(&args.identity.clone().unwrap_or_else(default_identity));
    info!(%identity, namespace = %args.namespace, config_map = %args.config_map, "starting");
    let mut registry = metrics::registry();
    let recorder = Recorder::new(client.clone(), reporter(&identity));

    let claim_maps = args
        .claim_maps
        .then(|| PolicyMaps::new(PolicyMapSettings::new(&args.namespace, &keys)));
    if let Some(maps) = &claim_maps {
        maps.register_metrics(&mut registry);
    }
    let (caches, subscriptions) = match &claim_maps {
        Some(maps) => {
            let (maps, keys) = (maps.clone(), keys.clone());
            cache::start_with(&client, &shutdown, move |event| {
                maps.observe(&policy_maps::claim_event(event, &keys))
            })
        }
        None => cache::start(&client, &shutdown),
    };
    let (node_store, node_subscription) = nodes::start(&client, &keys, &shutdown);
    let records = evidence::host_paths::RecordsConfigMap {
        namespace: args.namespace.clone(),
        name: args.evidence.evidence_config_map.clone(),
    };
    let (host_paths, host_paths_watch) =
        evidence::host_paths::watch(client.clone(), records.clone());
    tokio::spawn(until(shutdown.clone(), host_paths_watch));
    let lease = LeaseSettings::new(&args.namespace, &args.lease_name, &identity);
    let leadership = leader::start(client.clone(), lease, shutdown.clone());
    let leader = leadership.is_leader.clone();
    if let Some(maps) = claim_maps {
        let run = maps.run(client.clone(), leader.clone(), shutdown.clone());
        tokio::spawn(until(shutdown.clone(), run));
    }
    let source = config::Source {
        client: client.clone(),
        namespace: args.namespace.clone(),
        name: args.config_map.clone(),
        prefix: args.label_prefix.clone(),
    };
    let (table, config_watch) =
        config::watch(source, recorder.clone(), leader.clone(), &mut registry);
    tokio::spawn(until(shutdown.clone(), config_watch));
    let readiness = Readiness::track(caches.clone(), table.clone(), shutdown.clone());

    let writable = controller::write_gate(caches.clone(), table.clone(), leader, shutdown.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        caches.clone(),
        table.clone(),
        keys.clone(),
        writable,
        recorder.clone(),
        reporter(&identity),
        args.concurrency,
        &mut registry,
    ));
    let controllers = controller::run(
        ctx.clone(),
        subscriptions,
        args.concurrency,
        shutdown.clone(),
    );
    // What the nodes say: node labels, and evidence of idmap-mount failures.
    let labeller = Arc::new(NodeLabeller::new(
        client.clone(),
        keys.clone(),
        recorder,
        ctx.writable.clone(),
        node_store.clone(),
    ));
    let learner = Arc::new(evidence::Learner::new(
        ctx.clone(),
        labeller.clone(),
        host_paths.clone(),
        records,
        args.evidence.delete_failed_pods,
        evidence::EvidenceMetrics::register(&mut registry),
    ));
    registry.register_collector(Box::new(nodes::NodeCount::new(
        node_store.clone(),
        keys.clone(),
    )));
    let controllers = async {
        tokio::join!(
            controllers,
            nodes::labeller::run(labeller, node_subscription, shutdown.clone()),
            evidence::run(learner, shutdown.clone()),
        );
    };

    let signals = NodeSignals::new(args.nodes.webhook_node_mode, node_store, host_paths);
    let webhook =
        WebhookState::new(caches.clone(), table, keys.clone(), &mut registry).with_nodes(signals);
    let admin = AdminState {
        readiness,
        registry,
        metrics: ctx.metrics.clone(),
        caches,
        keys,
    };
    let servers = listeners.serve(&args, webhook, admin, client, &shutdown);
    // Everything ends after shutdown, drained; the first error ends the process at once.
    let serving = async { tokio::join!(servers, controllers).0 };
    let lease = async { lease_ended(leadership.task.await, &shutdown) };
    let result = tokio::try_join!(serving, lease).map(|_| ());
    shutdown.cancel();
    info!("stopped");
    result
}

/// The admin and webhook ports, bound, with the webhook's certificate checked against its key
/// (or issued from the self-signed CA, shared through its Secret): before anything else
/// starts, so that each failure ends the process with its cause.
struct Listeners {
    admin: tokio::net::TcpListener,
    webhook: webhook::WebhookListener,
}

impl Listeners {
    async fn bind(args: &RunArgs, client: &Client) -> Result<Listeners, RunError> {
        let admin = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .map_err(|source| RunError::Admin {
                addr: args.admin_addr,
                source,
            })?;
        let webhook =
            webhook::WebhookListener::bind(&args.webhook, client, &args.namespace).await?;
        Ok(Listeners { admin, webhook })
    }

    /// Serves both until shutdown. A server that fails or stops on its own cancels `shutdown`
    /// and ends with the error: a replica that cannot serve must not keep running and look
    /// alive. Readiness follows the webhook: serving from here (the port is bound and the
    /// certificate valid; one reloaded from disk replaces it only when valid too) until it stops.
    async fn serve(
        self,
        args: &RunArgs,
        webhook_state: WebhookState,
        admin_state: AdminState,
        client: Client,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        let readiness = admin_state.readiness.clone();
        readiness.set_webhook_serving(true);
        let webhook = async {
            let served = (self.webhook)
                .serve(
                    &args.webhook,
                    Arc::new(webhook_state),
                    client,
                    shutdown.clone(),
                )
                .await;
            readiness.set_webhook_serving(false);
            served?;
            stopped_early("webhook", shutdown)
        };
        let admin = async {
            admin::serve(
                self.admin,
                Arc::new(admin_state),
                args.admin_limits(),
                shutdown.clone(),
            )
            .await
            .map_err(|source| RunError::Admin {
                addr: args.admin_addr,
                source,
            })?;
            stopped_early("admin", shutdown)
        };
        let result = tokio::try_join!(admin, webhook);
        if let Err(error) = &result {
            error!(%error, "a server failed; shutting down");
        }
        shutdown.cancel();
        result.map(|_| ())
    }
}

/// A server that returns `Ok` has stopped: fine once shutdown started, a failure before.
fn stopped_early(server: &'static str, shutdown: &CancellationToken) -> Result<(), RunError> {
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        Err(RunError::ServerStopped(server))
    }
}

/// Events are published as this replica of [`COMPONENT`].
fn reporter(identity: &str) -> Reporter {
    Reporter {
        controller: COMPONENT.to_string(),
        instance: Some(identity.to_string()),
    }
}

/// The leader-election task only ends after shutdown, or with an error: then the process exits
/// so that a restart re-elects.
fn lease_ended(
    result: Result<Result<(), LeaderError>, tokio::task::JoinError>,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    match result {
        Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
        Ok(Ok(())) => Err(RunError::Lease("the lease task ended".to_string())),
        Ok(Err(e)) => Err(RunError::Leader(e)),
        Err(e) => Err(RunError::Lease(e.to_string())),
    }
}

/// Runs `task` until it ends or `shutdown` is cancelled.
async fn until(shutdown: CancellationToken, task: impl Future<Output = ()>) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = task => {}
    }
}

/// This process's name in the Lease: the replica's identity (the pod name) and a suffix new on
/// every start (`<identity>_<8 hex digits>`), as client-go's controllers do. A container
/// restarted after a crash is then a new candidate: it does not resume a lease its previous
/// process held, and the standby replica, whose expiry clock started earlier, takes over.
fn holder_identity(replica: &str) -> String {
    use std::hash::BuildHasher as _;
    let nonce = std::hash::RandomState::new().hash_one((std::process::id(), Instant::now()));
    format!("{replica}_{:08x}", nonce as u32)
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| COMPONENT.to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::holder_identity;

    #[test]
    fn each_start_holds_the_lease_under_the_replica_name_and_a_new_suffix() {
        let first = holder_identity("userns-labeler-7f7d978c5d-p8f7k");
        let second = holder_identity("userns-labeler-7f7d978c5d-p8f7k");
        for id in [&first, &second] {
            let (replica, suffix) = id.rsplit_once('_').expect("a suffix");
            assert_eq!(replica, "userns-labeler-7f7d978c5d-p8f7k");
            assert_eq!(suffix.len(), 8);
            assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
        assert_ne!(first, second, "a restarted process is a new candidate");
    }
}
