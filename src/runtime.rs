//! `userns-labeler run`: wires the caches, the driver-table watch, the controllers, leader
//! election, the webhook and the admin server together. No decisions are made here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ReflectHandle};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Client, Resource};
use kube_lease_manager::LeaseManagerBuilder;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState, Readiness};
use crate::cache::Caches;
use crate::config::{ReloadOutcome, TableTracker};
use crate::controller::{self, Context};
use crate::keys::{InvalidPrefix, Keys};
use crate::metrics::{ControllerMetrics, OutcomeLabels};
use crate::webhook::{self, WebhookArgs, WebhookMetrics, WebhookState};

/// The controller's name in Events and leases.
pub const COMPONENT: &str = "userns-labeler";

/// How many events a shared cache may buffer for a slow subscriber before it waits.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Flags of `userns-labeler run`; each has an environment fallback.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Path to a kubeconfig; in-cluster configuration when absent.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, env = "USERNS_KUBE_CONTEXT")]
    pub context: Option<String>,
    /// The namespace of the driver ConfigMap and the leader-election Lease.
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
    /// Concurrent reconciliations per controller.
    #[arg(long, env = "USERNS_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    #[command(flatten)]
    pub webhook: WebhookArgs,
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

/// Subscriptions to the shared caches, one per consumer.
pub struct CacheSubscriptions {
    pub claims: ReflectHandle<PersistentVolumeClaim>,
    pub volumes_for_claims: ReflectHandle<PersistentVolume>,
    pub volumes: ReflectHandle<PersistentVolume>,
    pub classes_for_claims: ReflectHandle<StorageClass>,
    pub classes_for_volumes: ReflectHandle<StorageClass>,
}

/// Starts one watch per resource, each feeding a store (managedFields stripped) and the
/// controllers' subscriptions. The watches run as tasks until `shutdown`.
pub fn start_caches(client: &Client, shutdown: &CancellationToken) -> (Caches, CacheSubscriptions) {
    fn drive<K>(api: Api<K>, writer: Writer<K>, shutdown: &CancellationToken)
    where
        K: Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let kind = K::kind(&()).to_string();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(|o| o.meta_mut().managed_fields = None),
        );
        spawn_until(shutdown, async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    warn!(%kind, error = %e, "watch error; retrying with backoff");
                }
            }
        });
    }

    let (claims, claims_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let (volumes, volumes_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let (classes, classes_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let subscriptions = CacheSubscriptions {
        claims: claims_writer.subscribe().expect("shared store"),
        volumes_for_claims: volumes_writer.subscribe().expect("shared store"),
        volumes: volumes_writer.subscribe().expect("shared store"),
        classes_for_claims: classes_writer.subscribe().expect("shared store"),
        classes_for_volumes: classes_writer.subscribe().expect("shared store"),
    };
    drive(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        claims_writer,
        shutdown,
    );
    drive(
        Api::<PersistentVolume>::all(client.clone()),
        volumes_writer,
        shutdown,
    );
    drive(
        Api::<StorageClass>::all(client.clone()),
        classes_writer,
        shutdown,
    );

    let (namespaces, namespaces_writer) = reflector::store();
    drive(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        namespaces_writer,
        shutdown,
    );

    (
        Caches {
            claims,
            volumes,
            classes,
            namespaces,
        },
        subscriptions,
    )
}

fn spawn_until(shutdown: &CancellationToken, task: impl Future<Output = ()> + Send + 'static) {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = task => {}
        }
    });
}

/// A stream that yields once per change of a watch channel.
fn changes<T: Send + Sync + 'static>(rx: watch::Receiver<T>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// A stream that yields each time this replica becomes the leader.
fn leadership_gained(rx: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}

/// Runs until SIGTERM/SIGINT (or `shutdown` is cancelled), or until a component fails.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> Result<(), RunError> {
    let keys = Keys::new(&args.label_prefix)?;
    // Both ports bound and the webhook's certificate checked against its key before anything
    // else: each failure ends the process with its cause.
    let admin_addr = args.admin_addr;
    let admin_listener = tokio::net::TcpListener::bind(admin_addr)
        .await
        .map_err(|source| RunError::Admin {
            addr: admin_addr,
            source,
        })?;
    let webhook_listener = webhook::WebhookListener::bind(&args.webhook).await?;
    let client = client(args.kubeconfig.as_ref(), args.context.as_deref()).await?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    info!(%identity, namespace = %args.namespace, config_map = %args.config_map, "starting");

    let readiness = Arc::new(Readiness::default());
    let mut registry = Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    let webhook_metrics = WebhookMetrics::register(&mut registry);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: COMPONENT.to_string(),
            instance: Some(identity.clone()),
        },
    );

    let (caches, subscriptions) = start_caches(&client, &shutdown);
    {
        let caches = caches.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            caches.wait_until_ready().await;
            readiness.caches_synced.store(true, Ordering::Release);
            info!("caches synced");
        });
    }

    let (tracker, table) = TableTracker::new();
    spawn_until(
        &shutdown,
        watch_config_map(
            Api::namespaced(client.clone(), &args.namespace),
            args.config_map.clone(),
            tracker,
            recorder.clone(),
            metrics.clone(),
            readiness.clone(),
        ),
    );

    // Leader election: every replica runs the controllers (keeping caches warm) but only the
    // lease holder writes; gaining the lease reconciles everything.
    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| RunError::Lease(e.to_string()))?;
    let (leader_rx, lease_task) = lease.watch().await;
    let leader = Arc::new(AtomicBool::new(*leader_rx.borrow()));
    {
        let leader = leader.clone();
        let mut rx = leader_rx.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let is_leader = *rx.borrow_and_update();
                leader.store(is_leader, Ordering::Release);
                info!(is_leader, "leadership changed");
            }
        });
    }

    let ctx = Arc::new(Context {
        client: client.clone(),
        caches: caches.clone(),
        table: table.clone(),
        keys: keys.clone(),
        leader,
        recorder,
        metrics: metrics.clone(),
    });
    let controller_config = ControllerConfig::default().concurrency(args.concurrency);
    let claims_store = caches.claims.clone();
    let claim_controller =
        Controller::for_shared_stream(subscriptions.claims, caches.claims.clone())
            .with_config(controller_config.clone())
            .watches_shared_stream(subscriptions.volumes_for_claims, |pv| {
                controller::volume_to_claim(&pv)
            })
            .watches_shared_stream(subscriptions.classes_for_claims, move |class| {
                controller::class_to_claims(&class, &claims_store)
            })
            .reconcile_all_on(futures::stream::select(
                changes(table.clone()),
                leadership_gained(leader_rx.clone()),
            ))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                controller::reconcile_claim,
                controller::error_policy,
                ctx.clone(),
            )
            .for_each(|_| future::ready(()));
    let volumes_store = caches.volumes.clone();
    let volume_controller =
        Controller::for_shared_stream(subscriptions.volumes, caches.volumes.clone())
            .with_config(controller_config)
            .watches_shared_stream(subscriptions.classes_for_volumes, move |class| {
                controller::class_to_volumes(&class, &volumes_store)
            })
            .reconcile_all_on(futures::stream::select(
                changes(table.clone()),
                leadership_gained(leader_rx.clone()),
            ))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                controller::reconcile_volume,
                controller::error_policy,
                ctx.clone(),
            )
            .for_each(|_| future::ready(()));

    let admin_state = Arc::new(AdminState {
        readiness: readiness.clone(),
        registry,
        metrics,
        caches: caches.clone(),
        keys: keys.clone(),
    });
    let admin_server = async {
        admin::serve(admin_listener, admin_state, shutdown.clone())
            .await
            .map_err(|source| RunError::Admin {
                addr: admin_addr,
                source,
            })?;
        stopped_early("admin", &shutdown)
    };

    let webhook_state = Arc::new(WebhookState {
        caches,
        table,
        keys,
        metrics: webhook_metrics,
    });
    // Serving from here: the port is bound and the certificate valid (a certificate reloaded
    // from disk replaces it only when it is valid too) until the server stops.
    readiness.webhook_serving.store(true, Ordering::Release);
    let webhook_server = async {
        let served = webhook_listener
            .serve(&args.webhook, webhook_state, client, shutdown.clone())
            .await;
        readiness.webhook_serving.store(false, Ordering::Release);
        served?;
        stopped_early("webhook", &shutdown)
    };
    // A server that fails or stops on its own ends the process: a replica that cannot serve
    // must not keep running and look alive.
    let servers = async {
        let result = tokio::try_join!(admin_server, webhook_server);
        if let Err(error) = &result {
            error!(%error, "a server failed; shutting down");
        }
        shutdown.cancel();
        result.map(|_| ())
    };

    // Readiness flips first on shutdown, then everything drains.
    {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            readiness.shutting_down.store(true, Ordering::Release);
        });
    }

    let result = tokio::select! {
        result = lease_task => {
            // The lease task only ends on error or when we release on shutdown.
            if shutdown.is_cancelled() {
                Ok(())
            } else {
                error!("the leader-election task ended; exiting so that a restart re-elects");
                Err(RunError::Lease(match result {
                    Ok(Ok(_)) => "the lease task ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                }))
            }
        }
        (servers, _, _) = async {
            tokio::join!(servers, claim_controller, volume_controller)
        } => servers,
    };
    shutdown.cancel();
    drop(leader_rx);
    info!("stopped");
    result
}

/// Watches the driver ConfigMap; every version is validated. An invalid one keeps the last good
/// table, is logged, counted, and reported by a Warning Event on the ConfigMap.
async fn watch_config_map(
    api: Api<ConfigMap>,
    name: String,
    mut tracker: TableTracker,
    recorder: Recorder,
    metrics: ControllerMetrics,
    readiness: Arc<Readiness>,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen_in_initial_list = false;
    while let Some(event) = stream.next().await {
        let outcome = match event {
            Ok(watcher::Event::Init) => {
                seen_in_initial_list = false;
                continue;
            }
            Ok(watcher::Event::InitApply(cm)) => {
                seen_in_initial_list = true;
                apply_config_map(&mut tracker, Some(&cm), &recorder).await
            }
            Ok(watcher::Event::InitDone) => {
                let outcome = if seen_in_initial_list {
                    None
                } else {
                    Some(tracker.apply(None))
                };
                readiness.table_loaded.store(true, Ordering::Release);
                match outcome {
                    Some(o) => o,
                    None => continue,
                }
            }
            Ok(watcher::Event::Apply(cm)) => {
                apply_config_map(&mut tracker, Some(&cm), &recorder).await
            }
            Ok(watcher::Event::Delete(_)) => tracker.apply(None),
            Err(e) => {
                warn!(error = %e, "ConfigMap watch error; retrying with backoff");
                continue;
            }
        };
        match &outcome {
            ReloadOutcome::Applied => info!(config_map = %name, "driver table applied"),
            ReloadOutcome::Defaults => {
                info!(config_map = %name, "no driver ConfigMap: built-in defaults in force")
            }
            ReloadOutcome::Unchanged => {}
            ReloadOutcome::Invalid(_) => {}
        }
        metrics
            .config_reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }
}

async fn apply_config_map(
    tracker: &mut TableTracker,
    cm: Option<&ConfigMap>,
    recorder: &Recorder,
) -> ReloadOutcome {
    let outcome = tracker.apply(cm);
    if let (ReloadOutcome::Invalid(error), Some(cm)) = (&outcome, cm) {
        error!(%error, "invalid driver ConfigMap; the last good table stays in force");
        let mut note = format!("Invalid driver table, the last good one stays in force: {error}");
        controller::truncate(&mut note, 1000);
        let event = Event {
            type_: EventType::Warning,
            reason: "InvalidDriverTable".to_string(),
            note: Some(note),
            action: "Validate".to_string(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &cm.object_ref(&())).await {
            warn!(error = %e, "could not publish the invalid-table event");
        }
    }
    outcome
}

/// A server that returns `Ok` has stopped: fine once shutdown started, a failure before.
fn stopped_early(server: &'static str, shutdown: &CancellationToken) -> Result<(), RunError> {
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        Err(RunError::ServerStopped(server))
    }
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
