//! The labelling controller: keeps `<prefix>/idmap-supported` and its reason/driver annotations
//! correct on every PVC and PV. A thin I/O shell around the capability engine: it reads the shared
//! caches, applies our keys by server-side apply under one field manager ([`reconcile`]), and
//! writes only when the desired values differ from what the object carries.
//!
//! [`run`] builds both controllers from one generic builder: which objects each watches and the
//! mappers from those objects to the ones it labels are all in this file.

pub mod budget;
pub mod events;
pub mod metrics;
pub mod reconcile;

use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt, future};
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cache::{Caches, Subscriptions};
use crate::capability::{PrunedClaim, PrunedClass, PrunedVolume};
use crate::config::TableState;
use crate::keys::Keys;
pub use budget::{Priority, WriteBudget};
pub use events::ChangeEvents;
pub use metrics::ControllerMetrics;
pub use reconcile::{
    Backoff, DesiredKeys, FIELD_MANAGER, Labelled, PendingWrites, error_policy, reconcile,
};

/// Everything a reconciliation needs, shared by both controllers.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub table: watch::Receiver<TableState>,
    pub keys: Keys,
    /// True while this replica may write: it holds the lease, and the caches and a usable table
    /// are loaded. Other replicas keep caches warm and serve the webhook.
    pub writable: watch::Receiver<bool>,
    /// Label writes and their Events in flight at once, claims first.
    pub writes: WriteBudget,
    /// The `IdmapSupportChanged` Events, published after the label writes.
    pub events: ChangeEvents,
    /// Other Events (evidence from the nodes).
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// Label writes the caches have not caught up with yet.
    pub written: PendingWrites,
    /// Failures in a row per object.
    pub backoff: Backoff,
}

impl Context {
    /// The context over the shared caches, table and keys, writing at most `concurrency`
    /// objects or `IdmapSupportChanged` Events at once and publishing them as `reporter` (other
    /// Events go through `recorder`); its metrics registered in
    /// `registry`. Starts the Events' task (it ends with the context).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        caches: Caches,
        table: watch::Receiver<TableState>,
        keys: Keys,
        writable: watch::Receiver<bool>,
        recorder: Recorder,
        reporter: Reporter,
        concurrency: u16,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Context {
        let writes = WriteBudget::new(concurrency.into());
        let metrics = ControllerMetrics::register(registry);
        Context {
            events: ChangeEvents::start(
                client.clone(),
                reporter,
                writes.clone(),
                metrics.events_dropped.clone(),
            ),
            writes,
            recorder,
            client,
            caches,
            table,
            keys,
            writable,
            metrics,
            written: PendingWrites::default(),
            backoff: Backoff::default(),
        }
    }

    pub fn may_write(&self) -> bool {
        *self.writable.borrow()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("applying labels to {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} without a name or namespace")]
    Unnamed { kind: &'static str },
}

impl ControllerError {
    /// A bounded metric label.
    pub fn category(&self) -> &'static str {
        match self {
            ControllerError::Apply {
                source: kube::Error::Api(status),
                ..
            } if status.code == 404 => "not_found",
            ControllerError::Apply {
                source: kube::Error::Api(status),
                ..
            } if status.code == 403 => "forbidden",
            ControllerError::Apply {
                source: kube::Error::Api(status),
                ..
            } if status.code == 409 => "conflict",
            ControllerError::Apply {
                source: kube::Error::Api(_),
                ..
            } => "api_error",
            ControllerError::Apply { .. } => "transport",
            ControllerError::Unnamed { .. } => "invalid_object",
        }
    }
}

/// The write gate: true while `leader` is, once the caches have synced and the table is usable.
/// Runs until `shutdown`.
pub fn write_gate(
    caches: Caches,
    mut table: watch::Receiver<TableState>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = caches.wait_until_ready() => {}
        }
        loop {
            let open = *leader.borrow_and_update() && table.borrow_and_update().table().is_some();
            sender.send_if_modified(|was| {
                let changed = *was != open;
                *was = open;
                changed
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = leader.changed() => if r.is_err() { break },
                r = table.changed() => if r.is_err() { break },
            }
        }
        sender.send_replace(false);
    });
    receiver
}

/// Runs both controllers until `shutdown`.
///
/// Each controller is triggered only by objects that need a write (their own changes, and
/// those of the PVs and classes they depend on, judged from the caches; an object already
/// labelled, our own writes coming back among them, costs no reconciliation). When the table
/// changes and when the write gate opens (leadership gained, or the caches and table loaded),
/// a sweep per kind relabels every object that needs it, straight from the cache and without
/// queueing every object first; a write that fails there is handed to its controller, which
/// retries it with backoff.
///
/// All writes share the budget of `concurrency` permits, claims first. Each controller and
/// each sweep runs up to twice `concurrency` reconciliations, so that when a permit comes back
/// the next claim already waits for it and goes before any volume.
pub async fn run(
    ctx: Arc<Context>,
    subscriptions: Subscriptions,
    concurrency: u16,
    shutdown: CancellationToken,
) {
    let width = concurrency.saturating_mul(2).max(1);
    let (claim_retries, retry_claims) = mpsc::channel(usize::from(width));
    let (volume_retries, retry_volumes) = mpsc::channel(usize::from(width));
    let claims_store = ctx.caches.claims.clone();
    let volumes_store = ctx.caches.volumes.clone();

    let (c, store) = (ctx.clone(), claims_store.clone());
    let (c2, store2) = (ctx.clone(), claims_store.clone());
    let claims = Controller::for_shared_stream(
        needing_writes(subscriptions.claims, &ctx),
        claims_store.clone(),
    )
    .watches_shared_stream(subscriptions.volumes_for_claims, move |pv| {
        c.needing_writes(volume_to_claims(&pv, &store), &store)
    })
    .watches_shared_stream(subscriptions.classes_for_claims, move |class| {
        c2.needing_writes(class_to_claims(&class, &store2), &store2)
    })
    .reconcile_on(receiver_stream(retry_claims));
    let (c, store) = (ctx.clone(), volumes_store.clone());
    let volumes = Controller::for_shared_stream(
        needing_writes(subscriptions.volumes, &ctx),
        volumes_store.clone(),
    )
    .watches_shared_stream(subscriptions.classes_for_volumes, move |class| {
        c.needing_writes(class_to_volumes(&class, &store), &store)
    })
    .reconcile_on(receiver_stream(retry_volumes));
    let config = ControllerConfig::default().concurrency(width);
    tokio::join!(
        drive(claims, &ctx, config.clone(), &shutdown),
        drive(volumes, &ctx, config, &shutdown),
        sweeps(&ctx, claims_store, claim_retries, width, &shutdown),
        sweeps(&ctx, volumes_store, volume_retries, width, &shutdown),
    );
}

/// The objects of `stream` that need a write now.
fn needing_writes<K: Labelled>(
    stream: impl Stream<Item = Arc<K>> + Send + 'static,
    ctx: &Arc<Context>,
) -> impl Stream<Item = Arc<K>> + Send + 'static {
    let ctx = ctx.clone();
    stream.filter(move |object| future::ready(ctx.needed_write(object.as_ref()).is_some()))
}

impl Context {
    /// The references among `refs` whose objects need a write now.
    fn needing_writes<K: Labelled>(
        &self,
        refs: Vec<ObjectRef<K>>,
        store: &Store<K>,
    ) -> Vec<ObjectRef<K>> {
        refs.into_iter()
            .filter(|r| {
                store
                    .get(r)
                    .is_some_and(|object| self.needed_write(object.as_ref()).is_some())
            })
            .collect()
    }
}

/// One controller: graceful shutdown, the generic reconcile.
fn drive<K: Labelled>(
    controller: Controller<K>,
    ctx: &Arc<Context>,
    config: ControllerConfig,
    shutdown: &CancellationToken,
) -> impl Future<Output = ()> + use<K> {
    controller
        .with_config(config)
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, ctx.clone())
        .for_each(|_| future::ready(()))
}

/// Sweeps every object of `store` each time the table changes or the write gate opens, until
/// `shutdown`. Triggers that arrive during a sweep are merged into one more sweep after it.
async fn sweeps<K: Labelled>(
    ctx: &Arc<Context>,
    store: Store<K>,
    retries: mpsc::Sender<ObjectRef<K>>,
    width: u16,
    shutdown: &CancellationToken,
) {
    let triggers =
        futures::stream::select(changes(ctx.table.clone()), opened(ctx.writable.clone()));
    futures::pin_mut!(triggers);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            trigger = triggers.next() => if trigger.is_none() { return },
        }
        // Merge the triggers already waiting.
        while let Some(Some(())) = triggers.next().now_or_never() {}
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = sweep(ctx, &store, &retries, width) => {}
        }
    }
}

/// One pass over the store: every object is reconciled, each that needs a write gets it,
/// `width` at a time.
async fn sweep<K: Labelled>(
    ctx: &Arc<Context>,
    store: &Store<K>,
    retries: &mpsc::Sender<ObjectRef<K>>,
    width: u16,
) {
    let (started, objects, written) = (
        std::time::Instant::now(),
        store.state(),
        ctx.metrics.writes(K::KIND),
    );
    info!(
        kind = K::KIND,
        objects = objects.len(),
        "relabelling every object that needs it"
    );
    futures::stream::iter(objects)
        .for_each_concurrent(usize::from(width), |listed| async move {
            // The latest version: the list was taken when the pass began.
            let Some(object) = store.get(&ObjectRef::from_obj(listed.as_ref())) else {
                return;
            };
            // Every object counts as a reconciliation; only those that need a write wait.
            if let Err(error) = reconcile::relabel(object.as_ref(), ctx).await {
                warn!(%error, category = error.category(), "sweep: relabelling failed; retrying with backoff");
                let _ = retries.send(ObjectRef::from_obj(object.as_ref())).await;
            }
        })
        .await;
    info!(
        kind = K::KIND,
        written = ctx.metrics.writes(K::KIND) - written,
        seconds = started.elapsed().as_secs_f64(),
        "relabelled"
    );
}

/// The items of a channel, as a stream.
fn receiver_stream<T: Send + 'static>(receiver: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(
        receiver,
        |mut r| async move { r.recv().await.map(|t| (t, r)) },
    )
}

/// A stream that yields once per change of a watch channel.
fn changes<T: Send + Sync + 'static>(rx: watch::Receiver<T>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// A stream that yields each time the gate opens.
fn opened(rx: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                info!("writing labels: this replica leads and its caches and table are loaded");
                return Some(((), rx));
            }
        }
    })
}

/// A PV's claim, through `spec.claimRef`.
pub fn volume_to_claim(volume: &PrunedVolume) -> Option<ObjectRef<PrunedClaim>> {
    let claim_ref = volume.spec.claim_ref.as_ref()?;
    Some(ObjectRef::new(&claim_ref.name).within(&claim_ref.namespace))
}

/// The claims a PV change can affect: its `claimRef`'s claim or, for a PV not bound yet, the
/// claims pre-bound to it by `spec.volumeName` (static provisioning).
pub fn volume_to_claims(
    volume: &PrunedVolume,
    claims: &Store<PrunedClaim>,
) -> Vec<ObjectRef<PrunedClaim>> {
    if let Some(claim) = volume_to_claim(volume) {
        return vec![claim];
    }
    let name = volume.metadata.name.as_deref().unwrap_or_default();
    claims
        .state()
        .iter()
        .filter(|c| c.spec.volume_name.as_deref() == Some(name))
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The claims a StorageClass change can affect: those naming it, and those naming no class
/// (the default class may have moved).
pub fn class_to_claims(
    class: &PrunedClass,
    claims: &Store<PrunedClaim>,
) -> Vec<ObjectRef<PrunedClaim>> {
    let name = class.metadata.name.as_deref().unwrap_or_default();
    claims
        .state()
        .iter()
        .filter(|c| {
            let class_name = c.spec.storage_class_name.as_deref();
            class_name.is_none() || class_name == Some(name)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The volumes of a StorageClass.
pub fn class_to_volumes(
    class: &PrunedClass,
    volumes: &Store<PrunedVolume>,
) -> Vec<ObjectRef<PrunedVolume>> {
    let name = class.metadata.name.as_deref().unwrap_or_default();
    volumes
        .state()
        .iter()
        .filter(|v| v.spec.storage_class_name.as_deref() == Some(name))
        .map(|v| ObjectRef::from_obj(v.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Caches;
    use serde_json::json;
    use userns_labeler_test_support::fixtures::{claim, class, volume};

    #[test]
    fn a_volume_maps_to_its_claim_ref() {
        let v = volume("pv")
            .set("/spec/claimRef", json!({"namespace": "ns", "name": "data"}))
            .build();
        assert_eq!(
            volume_to_claim(&(&v).into()),
            Some(ObjectRef::new("data").within("ns"))
        );
        assert_eq!(volume_to_claim(&(&volume("free").build()).into()), None);
    }

    #[test]
    fn an_unbound_volume_maps_to_the_claims_pre_bound_to_it() {
        let store = Caches::from_objects(
            vec![
                claim("a", "static")
                    .set("/spec/volumeName", json!("pv"))
                    .build(),
                claim("a", "other")
                    .set("/spec/volumeName", json!("pv2"))
                    .build(),
                claim("b", "dynamic").build(),
            ],
            vec![],
            vec![],
            vec![],
        );
        assert_eq!(
            volume_to_claims(&(&volume("pv").build()).into(), &store.claims),
            vec![ObjectRef::new("static").within("a")]
        );
        let bound = volume("pv")
            .set(
                "/spec/claimRef",
                json!({"namespace": "b", "name": "dynamic"}),
            )
            .build();
        assert_eq!(
            volume_to_claims(&(&bound).into(), &store.claims),
            vec![ObjectRef::new("dynamic").within("b")],
            "a claimRef decides"
        );
    }

    #[test]
    fn a_class_maps_to_its_claims_and_to_claims_without_a_class() {
        let store = Caches::from_objects(
            vec![
                claim("a", "mine").class("fast").build(),
                claim("a", "other").class("slow").build(),
                claim("b", "defaulted").build(),
                claim("b", "none").class("").build(),
            ],
            vec![],
            vec![],
            vec![],
        );
        let mut refs: Vec<String> =
            class_to_claims(&(&class("fast", "x").build()).into(), &store.claims)
                .into_iter()
                .map(|r| r.to_string())
                .collect();
        refs.sort();
        assert_eq!(refs.len(), 2, "{refs:?}");
        assert!(
            refs[0].contains("defaulted") && refs[1].contains("mine"),
            "{refs:?}"
        );
    }

    #[test]
    fn a_class_maps_to_its_volumes() {
        let store = Caches::from_objects(
            vec![],
            vec![
                volume("a").class("fast").build(),
                volume("b").class("slow").build(),
            ],
            vec![],
            vec![],
        );
        let refs = class_to_volumes(&(&class("fast", "x").build()).into(), &store.volumes);
        assert_eq!(refs, vec![ObjectRef::new("a")]);
    }
}
