//! Test builders: Kubernetes objects written as JSON and decoded into the typed API structs, so
//! each test states only what matters to it:
//!
//! ```
//! use userns_labeler_test_support::fixtures::claim;
//!
//! let claim = claim("app", "data").class("fast").modes(&["ReadWriteMany"]).build();
//! assert_eq!(claim.spec.unwrap().storage_class_name.as_deref(), Some("fast"));
//! ```
//!
//! Only k8s-openapi and serde types: the library's own unit tests use these too.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A JSON object under construction, decoded into `T` by [`Fixture::build`].
#[derive(Clone, Debug)]
pub struct Fixture<T> {
    value: Value,
    _kind: std::marker::PhantomData<T>,
}

impl<T: DeserializeOwned> Fixture<T> {
    fn new(value: Value) -> Self {
        Fixture {
            value,
            _kind: std::marker::PhantomData,
        }
    }

    /// Sets the value at a JSON pointer, creating objects on the way.
    pub fn set(mut self, pointer: &str, value: Value) -> Self {
        let mut target = &mut self.value;
        for token in pointer.split('/').skip(1) {
            if target.is_array()
                && let Ok(index) = token.parse::<usize>()
            {
                target = &mut target[index];
                continue;
            }
            if !target.is_object() {
                *target = json!({});
            }
            target = target
                .as_object_mut()
                .expect("object")
                .entry(token.replace("~1", "/").replace("~0", "~"))
                .or_insert(Value::Null);
        }
        *target = value;
        self
    }

    /// Appends to the array at a JSON pointer, creating it when absent.
    pub fn push(mut self, pointer: &str, value: Value) -> Self {
        let current = self.value.pointer(pointer).cloned();
        let mut items = match current {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        items.push(value);
        self = self.set(pointer, Value::Array(items));
        self
    }

    /// Sets the annotation `key` (escaped for the JSON pointer).
    pub fn annotation(self, key: &str, value: &str) -> Self {
        let key = key.replace('~', "~0").replace('/', "~1");
        self.set(&format!("/metadata/annotations/{key}"), json!(value))
    }

    /// Decodes the object; panics when the JSON does not fit `T`.
    pub fn build(self) -> T {
        serde_json::from_value(self.value).expect("fixture decodes")
    }
}

/// A Filesystem claim of 1Gi, `ReadWriteOnce`, no class.
pub fn claim(namespace: &str, name: &str) -> Fixture<PersistentVolumeClaim> {
    Fixture::new(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
}

impl Fixture<PersistentVolumeClaim> {
    /// `spec.storageClassName`.
    pub fn class(self, class: &str) -> Self {
        self.set("/spec/storageClassName", json!(class))
    }
    /// `spec.accessModes`, replacing the default.
    pub fn modes(self, modes: &[&str]) -> Self {
        self.set("/spec/accessModes", json!(modes))
    }
    /// The provisioner annotation `volume.kubernetes.io/storage-provisioner`.
    pub fn provisioner(self, driver: &str) -> Self {
        self.annotation("volume.kubernetes.io/storage-provisioner", driver)
    }
    /// The older annotation `volume.beta.kubernetes.io/storage-provisioner`.
    pub fn beta_provisioner(self, driver: &str) -> Self {
        self.annotation("volume.beta.kubernetes.io/storage-provisioner", driver)
    }
    /// `spec.volumeName`: bound to that volume.
    pub fn bound_to(self, volume: &str) -> Self {
        self.set("/spec/volumeName", json!(volume))
    }
    /// `spec.volumeMode: Block`.
    pub fn block(self) -> Self {
        self.set("/spec/volumeMode", json!("Block"))
    }
}

/// A volume of 1Gi, `ReadWriteOnce`, with no source yet.
pub fn volume(name: &str) -> Fixture<PersistentVolume> {
    Fixture::new(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
    }))
}

impl Fixture<PersistentVolume> {
    /// A CSI source of `driver`.
    pub fn csi(self, driver: &str) -> Self {
        self.set("/spec/csi", json!({"driver": driver, "volumeHandle": "h"}))
    }
    /// A CSI volume attribute (`spec.csi.volumeAttributes`).
    pub fn attribute(self, key: &str, value: &str) -> Self {
        let key = key.replace('~', "~0").replace('/', "~1");
        self.set(&format!("/spec/csi/volumeAttributes/{key}"), json!(value))
    }
    /// An in-tree NFS source.
    pub fn nfs(self) -> Self {
        self.set("/spec/nfs", json!({"server": "nas", "path": "/export"}))
    }
    /// A hostPath source.
    pub fn host_path(self, path: &str) -> Self {
        self.set("/spec/hostPath", json!({"path": path}))
    }
    /// `spec.storageClassName`.
    pub fn class(self, class: &str) -> Self {
        self.set("/spec/storageClassName", json!(class))
    }
    /// `spec.accessModes`, replacing the default.
    pub fn modes(self, modes: &[&str]) -> Self {
        self.set("/spec/accessModes", json!(modes))
    }
    /// `spec.volumeMode: Block`.
    pub fn block(self) -> Self {
        self.set("/spec/volumeMode", json!("Block"))
    }
}

/// A StorageClass of `provisioner`.
pub fn class(name: &str, provisioner: &str) -> Fixture<StorageClass> {
    Fixture::new(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": provisioner
    }))
}

impl Fixture<StorageClass> {
    /// Annotated as the cluster's default class.
    pub fn default_class(self) -> Self {
        self.annotation("storageclass.kubernetes.io/is-default-class", "true")
    }
    /// A provisioner parameter (`parameters`).
    pub fn param(self, key: &str, value: &str) -> Self {
        let key = key.replace('~', "~0").replace('/', "~1");
        self.set(&format!("/parameters/{key}"), json!(value))
    }
    /// `metadata.creationTimestamp` (RFC 3339).
    pub fn created(self, timestamp: &str) -> Self {
        self.set("/metadata/creationTimestamp", json!(timestamp))
    }
}

/// A pod with one container and no volumes.
pub fn pod(namespace: &str, name: &str) -> Fixture<Pod> {
    Fixture::new(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
    }))
}

impl Fixture<Pod> {
    /// Appends a volume (JSON) to `spec.volumes`.
    pub fn volume(self, volume: Value) -> Self {
        self.push("/spec/volumes", volume)
    }
    /// Appends a volume named `volume` that mounts the claim `claim`.
    pub fn claim_volume(self, volume: &str, claim: &str) -> Self {
        self.volume(json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}))
    }
    /// Appends a hostPath volume.
    pub fn host_path_volume(self, volume: &str, path: &str) -> Self {
        self.volume(json!({"name": volume, "hostPath": {"path": path}}))
    }
}
