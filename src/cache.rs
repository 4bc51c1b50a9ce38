//! The in-memory caches shared by the controller and the webhook: reflector stores of claims,
//! volumes, classes and namespace metadata. Every replica keeps them warm ([`start`]); no API
//! call is made to read them.
//!
//! Claims, volumes and classes are held pruned ([`crate::capability::pruned`]): decoded from the
//! watch straight into the fields that are read, with only the labels and annotations that are
//! read; namespaces as metadata without annotations or managedFields.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Client, Resource};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::capability::resolve::pick_default_class;
use crate::capability::{Awaited, ClusterView, PrunedClaim, PrunedClass, PrunedVolume};

/// How many events a shared cache may buffer for a slow subscriber before it waits.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Subscriptions to the shared caches, one per consumer (the controllers' watches).
pub struct Subscriptions {
    pub claims: ReflectHandle<PrunedClaim>,
    pub volumes_for_claims: ReflectHandle<PrunedVolume>,
    pub volumes: ReflectHandle<PrunedVolume>,
    pub classes_for_claims: ReflectHandle<PrunedClass>,
    pub classes_for_volumes: ReflectHandle<PrunedClass>,
}

/// Starts one watch per resource, each feeding a store of pruned objects and the controllers'
/// subscriptions. The watches run as tasks
/// until `shutdown`.
pub fn start(client: &Client, shutdown: &CancellationToken) -> (Caches, Subscriptions) {
    start_with(client, shutdown, |_| {})
}

/// [`start`], with every event of the claim watch (after the store has it) also passed to
/// `claims_seen`: the claim maps for policy engines follow the labels this way, without a cache
/// of their own.
pub fn start_with(
    client: &Client,
    shutdown: &CancellationToken,
    claims_seen: impl FnMut(&watcher::Event<PrunedClaim>) + Send + 'static,
) -> (Caches, Subscriptions) {
    let (claims, claims_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let (volumes, volumes_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let (classes, classes_writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let (namespaces, namespaces_writer) = reflector::store();
    let subscriptions = Subscriptions {
        claims: claims_writer.subscribe().expect("shared store"),
        volumes_for_claims: volumes_writer.subscribe().expect("shared store"),
        volumes: volumes_writer.subscribe().expect("shared store"),
        classes_for_claims: classes_writer.subscribe().expect("shared store"),
        classes_for_volumes: classes_writer.subscribe().expect("shared store"),
    };
    drive(
        claims_writer,
        client,
        shutdown,
        |c: &mut PrunedClaim| c.marks.retain_read(),
        claims_seen,
    );
    drive(
        volumes_writer,
        client,
        shutdown,
        |v: &mut PrunedVolume| v.marks.retain_read(),
        |_| {},
    );
    drive(
        classes_writer,
        client,
        shutdown,
        |c: &mut PrunedClass| c.marks.retain_read(),
        |_| {},
    );
    drive(
        namespaces_writer,
        client,
        shutdown,
        |ns: &mut PartialObjectMeta<Namespace>| {
            ns.metadata = ObjectMeta {
                annotations: None,
                managed_fields: None,
                ..std::mem::take(&mut ns.metadata)
            }
        },
        |_| {},
    );
    let caches = Caches {
        claims,
        volumes,
        classes,
        namespaces,
    };
    (caches, subscriptions)
}

/// Runs one watch of every `K` into `writer` until `shutdown`, each object passed through
/// `prune` first and each event, once stored, shown to `seen`; watch errors are logged and
/// retried with backoff.
fn drive<K>(
    writer: Writer<K>,
    client: &Client,
    shutdown: &CancellationToken,
    prune: impl FnMut(&mut K) + Send + 'static,
    mut seen: impl FnMut(&watcher::Event<K>) + Send + 'static,
) where
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
        watch_objects(Api::<K>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(prune),
    );
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = stream.next() => event,
            };
            match event {
                Some(Err(e)) => warn!(%kind, error = %e, "watch error; retrying with backoff"),
                Some(Ok(event)) => seen(&event),
                None => break,
            }
        }
    });
}

/// How often a pending readiness wait is polled again.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reader handles of the stores.
#[derive(Clone)]
pub struct Caches {
    pub claims: Store<PrunedClaim>,
    pub volumes: Store<PrunedVolume>,
    pub classes: Store<PrunedClass>,
    /// Namespace metadata only (labels), for the webhook's namespace opt-out.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Caches {
    /// Resolves once every store has received its initial list.
    ///
    /// A store's readiness signal wakes only the task that polled it last (kube-runtime 5 keeps
    /// one waker), and the controllers wait on the same stores; so each wait is re-polled on a
    /// short timer rather than trusted to wake us.
    pub async fn wait_until_ready(&self) {
        async fn ready<K>(store: &Store<K>)
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            while tokio::time::timeout(READY_POLL, store.wait_until_ready())
                .await
                .is_err()
            {}
        }
        ready(&self.claims).await;
        ready(&self.volumes).await;
        ready(&self.classes).await;
        ready(&self.namespaces).await;
    }

    /// Whether the stores hold `awaited` now.
    pub fn holds(&self, awaited: &Awaited) -> bool {
        match awaited {
            Awaited::Claim { namespace, name } => self
                .claims
                .get(&ObjectRef::new(name).within(namespace))
                .is_some(),
            Awaited::Volume(name) => self.volumes.get(&ObjectRef::new(name)).is_some(),
            Awaited::Namespace(name) => self.namespaces.get(&ObjectRef::new(name)).is_some(),
        }
    }

    /// A namespace's labels, if the namespace is known.
    pub fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Option<std::collections::BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }
}

impl Caches {
    /// Caches holding fixed objects (pruned, every label and annotation kept), already marked
    /// synced: for handler tests and offline use, without an API server.
    pub fn from_objects(
        claims: Vec<PersistentVolumeClaim>,
        volumes: Vec<PersistentVolume>,
        classes: Vec<StorageClass>,
        namespaces: Vec<PartialObjectMeta<Namespace>>,
    ) -> Caches {
        fn store<K>(objects: Vec<K>) -> Store<K>
        where
            K: kube::Resource + Clone + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let mut writer = Writer::default();
            writer.apply_watcher_event(&Event::Init);
            for object in objects {
                writer.apply_watcher_event(&Event::InitApply(object));
            }
            writer.apply_watcher_event(&Event::InitDone);
            writer.as_reader()
        }
        fn pruned<K, P: for<'a> From<&'a K>>(objects: Vec<K>) -> Vec<P> {
            objects.iter().map(P::from).collect()
        }
        Caches {
            claims: store(pruned::<_, PrunedClaim>(claims)),
            volumes: store(pruned::<_, PrunedVolume>(volumes)),
            classes: store(pruned::<_, PrunedClass>(classes)),
            namespaces: store(namespaces),
        }
    }
}

impl ClusterView for Caches {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PrunedClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }

    fn volume(&self, name: &str) -> Option<Arc<PrunedVolume>> {
        self.volumes.get(&ObjectRef::new(name))
    }

    fn storage_class(&self, name: &str) -> Option<Arc<PrunedClass>> {
        self.classes.get(&ObjectRef::new(name))
    }

    fn default_storage_class(&self) -> Option<Arc<PrunedClass>> {
        pick_default_class(self.classes.state().iter())
    }
}
