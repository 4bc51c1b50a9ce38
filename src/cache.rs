//! The in-memory caches shared by the controller and the webhook: reflector stores of claims,
//! volumes and classes. Every replica keeps them warm; no API call is made to read them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

use crate::capability::ClusterView;
use crate::capability::resolve::pick_default_class;

/// How often a pending readiness wait is polled again.
const READY_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reader handles of the stores.
#[derive(Clone)]
pub struct Caches {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
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
    /// Caches holding fixed objects, already marked synced: for handler tests and offline use,
    /// without an API server.
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
        Caches {
            claims: store(claims),
            volumes: store(volumes),
            classes: store(classes),
            namespaces: store(namespaces),
        }
    }
}

impl ClusterView for Caches {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(namespace))
    }

    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.get(&ObjectRef::new(name))
    }

    fn storage_class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name))
    }

    fn default_storage_class(&self) -> Option<Arc<StorageClass>> {
        pick_default_class(self.classes.state().iter())
    }
}
