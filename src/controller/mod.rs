//! The labelling controller: keeps `<prefix>/idmap-supported` and its reason/driver annotations
//! correct on every PVC and PV. A thin I/O shell around the capability engine: it reads the shared
//! caches, applies our keys by server-side apply under one field manager ([`reconcile`]), and
//! writes only when the desired values differ from what the object carries.
//!
//! [`run`] builds both controllers from one generic builder: which objects each watches and the
//! mappers from those objects to the ones it labels are all in this file.

pub mod metrics;
pub mod reconcile;

use std::sync::Arc;

use futures::{Stream, StreamExt, future};
use kube::Client;
use kube::runtime::Controller;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cache::{Caches, Subscriptions};
use crate::capability::{PrunedClaim, PrunedClass, PrunedVolume};
use crate::config::TableState;
use crate::keys::Keys;
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
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    /// Label writes the caches have not caught up with yet.
    pub written: PendingWrites,
    /// Failures in a row per object.
    pub backoff: Backoff,
}

impl Context {
    /// The context over the shared caches, table and keys; its metrics registered in `registry`.
    pub fn new(
        client: Client,
        caches: Caches,
        table: watch::Receiver<TableState>,
        keys: Keys,
        writable: watch::Receiver<bool>,
        recorder: Recorder,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Context {
        Context {
            client,
            caches,
            table,
            keys,
            writable,
            recorder,
            metrics: ControllerMetrics::register(registry),
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

/// Runs both controllers until `shutdown`. Every object is reconciled again when the table
/// changes and when the write gate opens (leadership gained, or the caches and table loaded).
pub async fn run(
    ctx: Arc<Context>,
    subscriptions: Subscriptions,
    concurrency: u16,
    shutdown: CancellationToken,
) {
    let (for_volumes, for_classes) = (ctx.caches.claims.clone(), ctx.caches.claims.clone());
    let claims = Controller::for_shared_stream(subscriptions.claims, ctx.caches.claims.clone())
        .watches_shared_stream(subscriptions.volumes_for_claims, move |pv| {
            volume_to_claims(&pv, &for_volumes)
        })
        .watches_shared_stream(subscriptions.classes_for_claims, move |class| {
            class_to_claims(&class, &for_classes)
        });
    let volumes_store = ctx.caches.volumes.clone();
    let volumes = Controller::for_shared_stream(subscriptions.volumes, ctx.caches.volumes.clone())
        .watches_shared_stream(subscriptions.classes_for_volumes, move |class| {
            class_to_volumes(&class, &volumes_store)
        });
    let config = ControllerConfig::default().concurrency(concurrency);
    tokio::join!(
        drive(claims, &ctx, config.clone(), &shutdown),
        drive(volumes, &ctx, config, &shutdown),
    );
}

/// One controller: reconcile-all triggers, graceful shutdown, the generic reconcile.
fn drive<K: Labelled>(
    controller: Controller<K>,
    ctx: &Arc<Context>,
    config: ControllerConfig,
    shutdown: &CancellationToken,
) -> impl Future<Output = ()> + use<K> {
    controller
        .with_config(config)
        .reconcile_all_on(futures::stream::select(
            changes(ctx.table.clone()),
            opened(ctx.writable.clone()),
        ))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, ctx.clone())
        .for_each(|_| future::ready(()))
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
