//! Shared by the fuzz targets: a small fixed cluster (the objects of `examples/` plus the
//! claims, classes and namespaces of the decoder-equivalence proptests in
//! `src/webhook/lean_tests.rs`) and the webhook state over it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::PartialObjectMeta;
use serde_json::{Value, json};
use userns_labeler::cache::Caches;
use userns_labeler::capability::DriverTable;
use userns_labeler::config::TableState;
use userns_labeler::keys::Keys;
use userns_labeler::webhook::{WebhookMetrics, WebhookState};

/// The manifests of `examples/`, compiled in.
pub const EXAMPLES: &[(&str, &str)] = &[
    (
        "00-namespaces.yaml",
        include_str!("../../examples/00-namespaces.yaml"),
    ),
    (
        "01-storageclasses.yaml",
        include_str!("../../examples/01-storageclasses.yaml"),
    ),
    (
        "02-persistentvolumes.yaml",
        include_str!("../../examples/02-persistentvolumes.yaml"),
    ),
    (
        "03-claims.yaml",
        include_str!("../../examples/03-claims.yaml"),
    ),
    ("04-list.yaml", include_str!("../../examples/04-list.yaml")),
];

/// The pods (and pod templates) of `examples/`, compiled in.
pub const EXAMPLE_PODS: &[(&str, &str)] = &[
    (
        "10-pods-home.yaml",
        include_str!("../../examples/10-pods-home.yaml"),
    ),
    (
        "11-pods-media.yaml",
        include_str!("../../examples/11-pods-media.yaml"),
    ),
    (
        "12-pods-paperless.yaml",
        include_str!("../../examples/12-pods-paperless.yaml"),
    ),
    (
        "13-pods-db.yaml",
        include_str!("../../examples/13-pods-db.yaml"),
    ),
    (
        "14-postgres-statefulset.yaml",
        include_str!("../../examples/14-postgres-statefulset.yaml"),
    ),
    (
        "15-pod-generatename.yaml",
        include_str!("../../examples/15-pod-generatename.yaml"),
    ),
];

/// Every object of [`EXAMPLES`], `kind: List` expanded.
fn example_objects() -> Vec<Value> {
    let mut objects = Vec::new();
    for (name, text) in EXAMPLES {
        let documents = serde_saphyr::from_multiple::<Value>(text)
            .unwrap_or_else(|e| panic!("examples/{name}: {e}"));
        for document in documents {
            match document["items"].as_array() {
                Some(items) => objects.extend(items.iter().cloned()),
                None if !document.is_null() => objects.push(document),
                None => {}
            }
        }
    }
    objects
}

fn of_kind<T: serde::de::DeserializeOwned>(objects: &[Value], kind: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| serde_json::from_value(o.clone()).expect("a fixture decodes"))
        .collect()
}

/// The fixed cluster: `examples/` plus, as in `generated_state` of the proptests, namespace
/// `app` with claims `rwo`, `rwx`, `raw` (block) and `odd` (unknown driver), classes
/// `longhorn` (default), `ebs` and `mystery`, and namespace `quiet` carrying the opt-out
/// label of `keys`. Namespace `elsewhere` is unknown (a cache miss).
pub fn caches(keys: &Keys) -> Caches {
    let claim = |name: &str, class: &str, spec: Value| {
        let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}}}});
        for (k, v) in spec.as_object().expect("an object") {
            c["spec"][k] = v.clone();
        }
        c
    };
    let class = |name: &str, provisioner: &str| {
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": provisioner})
    };
    let mut longhorn = class("longhorn", "driver.longhorn.io");
    longhorn["metadata"]["annotations"] =
        json!({"storageclass.kubernetes.io/is-default-class": "true"});
    let namespace = |name: &str, labels: Value| {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}})
    };
    let mut objects = example_objects();
    objects.extend([
        claim("rwo", "longhorn", json!({})),
        claim("rwx", "longhorn", json!({"accessModes": ["ReadWriteMany"]})),
        claim("raw", "longhorn", json!({"volumeMode": "Block"})),
        claim("odd", "mystery", json!({})),
        longhorn,
        class("ebs", "ebs.csi.aws.com"),
        class("mystery", "storage.example.com"),
        namespace("app", json!({})),
        namespace("default", json!({})),
        namespace("quiet", json!({keys.opt_out.clone(): "true"})),
    ]);
    let claims: Vec<PersistentVolumeClaim> = of_kind(&objects, "PersistentVolumeClaim");
    let volumes: Vec<PersistentVolume> = of_kind(&objects, "PersistentVolume");
    let classes: Vec<StorageClass> = of_kind(&objects, "StorageClass");
    let namespaces: Vec<PartialObjectMeta<Namespace>> = of_kind(&objects, "Namespace");
    assert!(!claims.is_empty() && !volumes.is_empty() && namespaces.len() > 3);
    Caches::from_objects(claims, volumes, classes, namespaces)
}

/// The webhook state over [`caches`] with the built-in driver table.
pub fn state(keys: Keys) -> WebhookState {
    WebhookState {
        caches: caches(&keys),
        table: TableState::channel(DriverTable::defaults()),
        keys,
        metrics: WebhookMetrics::default(),
        nodes: Default::default(),
    }
}

/// The key prefixes the targets decide with: the default, and a custom one (only that
/// prefix's opt-out label and decision annotation count).
pub fn all_keys() -> [Keys; 2] {
    [
        Keys::default(),
        Keys::new("security.example.com").expect("a valid prefix"),
    ]
}

/// The built-in table, for targets that only need a table.
pub fn defaults() -> Arc<DriverTable> {
    DriverTable::defaults()
}
