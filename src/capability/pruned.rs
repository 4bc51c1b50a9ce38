//! Claims, volumes and classes as the engine reads them: the API objects pruned to the fields a
//! decision, the controller or the webhook reads, and nothing else.
//!
//! The caches hold these instead of the API types: a `PersistentVolume` is 3.4 KB before any of
//! its strings (k8s-openapi keeps every volume source inline), a claim 1 KB, and each non-empty
//! label or annotation map at least one 540-byte B-tree node. A pruned object is its identity
//! (name, namespace, uid, resourceVersion), the labels and annotations the engine reads, and a
//! few spec fields already parsed.
//!
//! They deserialize from the API's JSON directly (what the caches' watches do), skipping every
//! member not read, and convert from the k8s-openapi types (offline `explain`, tests). The engine
//! takes either through [`ToPruned`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::resolve::{
    ANN_BETA_DEFAULT_CLASS, ANN_BETA_STORAGE_PROVISIONER, ANN_DEFAULT_CLASS, ANN_PROVISIONED_BY,
    ANN_STORAGE_PROVISIONER, DriverSource, SourceInfo, is_block, parse_access_modes,
};
use super::sources::persistent_volume_source;
use super::table::{AccessMode, Parameters, VolumeMode};
use crate::keys::names;

/// The labels and annotations of an object that the engine may read, as short lists (objects
/// carry a handful of them; a linear search beats a map's 540-byte node). The keys and values
/// every object repeats (the well-known keys, ours under the default prefix, our label values)
/// are shared static strings, not copies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    labels: Vec<Pair>,
    annotations: Vec<Pair>,
}

type Pair = (Cow<'static, str>, Cow<'static, str>);

/// Strings that recur on every object: held once.
const COMMON: [&str; 14] = [
    ANN_STORAGE_PROVISIONER,
    ANN_BETA_STORAGE_PROVISIONER,
    ANN_PROVISIONED_BY,
    ANN_DEFAULT_CLASS,
    ANN_BETA_DEFAULT_CLASS,
    "userns.io/idmap-supported",
    "userns.io/idmap-reason",
    "userns.io/driver",
    "userns.io/idmap-override",
    "userns.io/idmap-evidence",
    "true",
    "false",
    "unknown",
    // The attribute external-provisioner sets on every PV it creates.
    "storage.kubernetes.io/csiProvisionerIdentity",
];

fn shared(text: String) -> Cow<'static, str> {
    match COMMON.iter().find(|c| **c == text) {
        Some(common) => Cow::Borrowed(common),
        None => Cow::Owned(text),
    }
}

fn pair((key, value): (String, String)) -> Pair {
    (shared(key), shared(value))
}

impl Marks {
    /// Copies the labels and annotations of `meta` (all of them: nothing is known to be unread).
    pub fn of(meta: &ObjectMeta) -> Marks {
        let pairs = |map: &Option<BTreeMap<String, String>>| {
            map.iter()
                .flatten()
                .map(|(k, v)| pair((k.clone(), v.clone())))
                .collect()
        };
        Marks {
            labels: pairs(&meta.labels),
            annotations: pairs(&meta.annotations),
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        find(&self.labels, key)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        find(&self.annotations, key)
    }

    /// Sets (or replaces) one annotation.
    pub fn set_annotation(&mut self, key: String, value: String) {
        let (key, value) = pair((key, value));
        match self.annotations.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.annotations.push((key, value)),
        }
    }

    /// Keeps only the labels and annotations that may be read ([`read_label`],
    /// [`read_annotation`]); the rest is released.
    pub fn retain_read(&mut self) {
        self.labels.retain(|(k, _)| read_label(k));
        self.annotations.retain(|(k, _)| read_annotation(k));
        self.labels.shrink_to_fit();
        self.annotations.shrink_to_fit();
    }
}

fn find<'a>(pairs: &'a [Pair], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_ref())
}

/// Whether a label of a claim, volume or class may be read: our label, under any prefix (the
/// caches do not know the configured one; a key kept needlessly costs only memory).
pub fn read_label(key: &str) -> bool {
    key_name(key) == names::SUPPORTED
}

/// Whether an annotation of a claim, volume or class may be read: the provisioner annotations,
/// the default-class marks, and our reason, driver, override and evidence annotations under any
/// prefix.
pub fn read_annotation(key: &str) -> bool {
    [
        ANN_STORAGE_PROVISIONER,
        ANN_BETA_STORAGE_PROVISIONER,
        ANN_PROVISIONED_BY,
        ANN_DEFAULT_CLASS,
        ANN_BETA_DEFAULT_CLASS,
    ]
    .contains(&key)
        || [
            names::REASON,
            names::DRIVER,
            names::OVERRIDE,
            names::EVIDENCE,
        ]
        .contains(&key_name(key))
}

/// The name part of a prefixed key (`userns.io/driver` → `driver`).
fn key_name(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, name)| name)
}

/// The identity of an object: what Events, the caches' keys and our writes need.
fn identity(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectMeta::default()
    }
}

/// A PersistentVolumeClaim pruned to what is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrunedClaim {
    /// Identity only: name, namespace, uid, resourceVersion (labels and annotations are in
    /// [`PrunedClaim::marks`]).
    pub metadata: ObjectMeta,
    pub marks: Marks,
    pub spec: ClaimSpec,
}

/// The fields of a claim's spec that are read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimSpec {
    /// The access modes this version knows (others cannot narrow a rule and are dropped).
    pub access_modes: Vec<AccessMode>,
    pub volume_mode: VolumeMode,
    /// `None`: the default class; `Some("")`: explicitly none.
    pub storage_class_name: Option<String>,
    /// The PV the claim is (or is to be) bound to.
    pub volume_name: Option<String>,
}

impl ClaimSpec {
    fn of(spec: &PersistentVolumeClaimSpec) -> ClaimSpec {
        ClaimSpec {
            access_modes: parse_access_modes(spec.access_modes.as_deref()),
            volume_mode: volume_mode(spec.volume_mode.as_deref()),
            storage_class_name: spec.storage_class_name.clone(),
            volume_name: spec.volume_name.clone(),
        }
    }
}

impl PrunedClaim {
    /// A claim from its metadata and spec (also a generic ephemeral volume's claim template).
    pub fn new(meta: &ObjectMeta, spec: Option<&PersistentVolumeClaimSpec>) -> PrunedClaim {
        PrunedClaim {
            metadata: identity(meta),
            marks: Marks::of(meta),
            spec: spec.map(ClaimSpec::of).unwrap_or_default(),
        }
    }
}

impl From<&PersistentVolumeClaim> for PrunedClaim {
    fn from(claim: &PersistentVolumeClaim) -> PrunedClaim {
        PrunedClaim::new(&claim.metadata, claim.spec.as_ref())
    }
}

/// A PersistentVolume pruned to what is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrunedVolume {
    /// Identity only, as [`PrunedClaim::metadata`].
    pub metadata: ObjectMeta,
    pub marks: Marks,
    pub spec: VolumeSpec,
}

/// The fields of a PV's spec that are read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeSpec {
    pub access_modes: Vec<AccessMode>,
    pub volume_mode: VolumeMode,
    pub storage_class_name: Option<String>,
    /// `spec.claimRef`, when it names both a namespace and a name.
    pub claim_ref: Option<ClaimRef>,
    /// Where the data lives: a CSI driver or an in-tree source; `None` for a source this
    /// version does not know.
    pub source: Option<VolumeSourceFacts>,
}

/// A PV's `spec.claimRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
}

/// The owned form of a PV's [`SourceInfo`].
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeSourceFacts {
    pub driver: String,
    pub origin: DriverSource,
    pub fs_type: Option<String>,
    pub attributes: Option<Attributes>,
    pub host_path: Option<String>,
}

impl VolumeSourceFacts {
    pub(crate) fn info(&self) -> SourceInfo<'_> {
        SourceInfo {
            driver: Cow::Borrowed(self.driver.as_ref()),
            origin: self.origin.clone(),
            fs_type: self.fs_type.as_deref(),
            attributes: self.attributes.as_ref().map(|a| a as &dyn Parameters),
            host_path: self.host_path.as_deref(),
        }
    }
}

/// A CSI PV's `volumeAttributes` as one short list in key order, the well-known keys shared:
/// a provisioned PV carries one or two, where a map's first node alone is ~540 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attributes(Box<[Pair]>);

impl Attributes {
    fn of(map: &BTreeMap<String, String>) -> Attributes {
        Attributes(
            map.iter()
                .map(|(k, v)| pair((k.clone(), v.clone())))
                .collect(),
        )
    }
}

impl Parameters for Attributes {
    fn parameter(&self, key: &str) -> Option<&str> {
        find(&self.0, key)
    }
}

impl VolumeSpec {
    fn of(spec: &PersistentVolumeSpec) -> VolumeSpec {
        let source = persistent_volume_source(spec).map(|s| VolumeSourceFacts {
            driver: s.driver.into_owned(),
            origin: s.origin,
            fs_type: s.fs_type.map(str::to_string),
            // Only a CSI source has attributes (the API type's map, iterated here).
            attributes: spec
                .csi
                .as_ref()
                .and_then(|csi| csi.volume_attributes.as_ref())
                .map(Attributes::of),
            host_path: s.host_path.map(str::to_string),
        });
        let claim_ref = spec.claim_ref.as_ref().and_then(|r| {
            Some(ClaimRef {
                namespace: r.namespace.clone()?,
                name: r.name.clone()?,
            })
        });
        VolumeSpec {
            access_modes: parse_access_modes(spec.access_modes.as_deref()),
            volume_mode: volume_mode(spec.volume_mode.as_deref()),
            storage_class_name: spec.storage_class_name.clone(),
            claim_ref,
            source,
        }
    }
}

impl From<&PersistentVolume> for PrunedVolume {
    fn from(volume: &PersistentVolume) -> PrunedVolume {
        PrunedVolume {
            metadata: identity(&volume.metadata),
            marks: Marks::of(&volume.metadata),
            spec: volume.spec.as_ref().map(VolumeSpec::of).unwrap_or_default(),
        }
    }
}

/// A StorageClass pruned to what is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrunedClass {
    /// Identity and `creationTimestamp` (which default class wins).
    pub metadata: ObjectMeta,
    pub marks: Marks,
    pub provisioner: String,
    pub parameters: Option<BTreeMap<String, String>>,
}

impl From<&StorageClass> for PrunedClass {
    fn from(class: &StorageClass) -> PrunedClass {
        PrunedClass {
            metadata: ObjectMeta {
                creation_timestamp: class.metadata.creation_timestamp.clone(),
                ..identity(&class.metadata)
            },
            marks: Marks::of(&class.metadata),
            provisioner: class.provisioner.clone(),
            parameters: class.parameters.clone(),
        }
    }
}

fn volume_mode(mode: Option<&str>) -> VolumeMode {
    if is_block(mode) {
        VolumeMode::Block
    } else {
        VolumeMode::Filesystem
    }
}

/// An object the engine reads, given as the API type (pruned on the way in) or already pruned.
pub trait ToPruned<P: Clone> {
    fn to_pruned(&self) -> Cow<'_, P>;
}

macro_rules! to_pruned {
    ($($full:ty => $pruned:ty),*) => {$(
        impl ToPruned<$pruned> for $full {
            fn to_pruned(&self) -> Cow<'_, $pruned> {
                Cow::Owned(<$pruned>::from(self))
            }
        }
        impl ToPruned<$pruned> for $pruned {
            fn to_pruned(&self) -> Cow<'_, $pruned> {
                Cow::Borrowed(self)
            }
        }
    )*};
}
to_pruned!(
    PersistentVolumeClaim => PrunedClaim,
    PersistentVolume => PrunedVolume,
    StorageClass => PrunedClass
);

// The API identity of each pruned type: its watches, writes and Events address the real kind.
macro_rules! api_resource {
    ($pruned:ty, $full:ty, $scope:ty) => {
        impl k8s_openapi::Resource for $pruned {
            const API_VERSION: &'static str = <$full as k8s_openapi::Resource>::API_VERSION;
            const GROUP: &'static str = <$full as k8s_openapi::Resource>::GROUP;
            const KIND: &'static str = <$full as k8s_openapi::Resource>::KIND;
            const VERSION: &'static str = <$full as k8s_openapi::Resource>::VERSION;
            const URL_PATH_SEGMENT: &'static str =
                <$full as k8s_openapi::Resource>::URL_PATH_SEGMENT;
            type Scope = $scope;
        }
        impl k8s_openapi::Metadata for $pruned {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}
api_resource!(PrunedClaim, PersistentVolumeClaim, NamespaceResourceScope);
api_resource!(PrunedVolume, PersistentVolume, ClusterResourceScope);
api_resource!(PrunedClass, StorageClass, ClusterResourceScope);

/// The metadata members that are read; every other member (managedFields above all) is
/// skipped without being built.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    #[serde(deserialize_with = "pairs")]
    labels: Vec<Pair>,
    #[serde(deserialize_with = "pairs")]
    annotations: Vec<Pair>,
}

impl WireMeta {
    fn split(self) -> (ObjectMeta, Marks) {
        let meta = ObjectMeta {
            name: self.name,
            namespace: self.namespace,
            uid: self.uid,
            resource_version: self.resource_version,
            ..ObjectMeta::default()
        };
        let marks = Marks {
            labels: self.labels,
            annotations: self.annotations,
        };
        (meta, marks)
    }
}

/// A JSON object of strings (or `null`) as a list of pairs.
fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pair>, D::Error> {
    struct Pairs;
    impl<'de> Visitor<'de> for Pairs {
        type Value = Vec<Pair>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Pairs)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(entry) = map.next_entry::<String, String>()? {
                pairs.push(pair(entry));
            }
            Ok(pairs)
        }
    }
    d.deserialize_option(Pairs)
}

impl<'de> Deserialize<'de> for PrunedClaim {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct WireSpec {
            access_modes: Option<Vec<String>>,
            volume_mode: Option<String>,
            storage_class_name: Option<String>,
            volume_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: WireMeta,
            #[serde(default)]
            spec: Option<WireSpec>,
        }
        let wire = Wire::deserialize(d)?;
        let (metadata, marks) = wire.metadata.split();
        let spec = wire.spec.unwrap_or_default();
        Ok(PrunedClaim {
            metadata,
            marks,
            spec: ClaimSpec {
                access_modes: parse_access_modes(spec.access_modes.as_deref()),
                volume_mode: volume_mode(spec.volume_mode.as_deref()),
                storage_class_name: spec.storage_class_name,
                volume_name: spec.volume_name,
            },
        })
    }
}

impl<'de> Deserialize<'de> for PrunedVolume {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The spec is read as the API type, for the one definition of its sources
        // (`sources.rs`), and dropped once its facts are taken.
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: WireMeta,
            #[serde(default)]
            spec: Option<PersistentVolumeSpec>,
        }
        let wire = Wire::deserialize(d)?;
        let (metadata, marks) = wire.metadata.split();
        Ok(PrunedVolume {
            metadata,
            marks,
            spec: wire.spec.as_ref().map(VolumeSpec::of).unwrap_or_default(),
        })
    }
}

impl<'de> Deserialize<'de> for PrunedClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            metadata: WireMeta,
            #[serde(default)]
            provisioner: String,
            #[serde(default)]
            parameters: Option<BTreeMap<String, String>>,
        }
        let wire = Wire::deserialize(d)?;
        let creation_timestamp = wire.metadata.creation_timestamp.clone();
        let (metadata, marks) = wire.metadata.split();
        Ok(PrunedClass {
            metadata: ObjectMeta {
                creation_timestamp,
                ..metadata
            },
            marks,
            provisioner: wire.provisioner,
            parameters: wire.parameters,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::Arc;

    use serde_json::{Value, json};
    use userns_labeler_test_support::fixtures::{claim, class, volume};

    use super::*;
    use crate::capability::resolve::pick_default_class;
    use crate::capability::{ClusterView, DriverTable, Snapshot, resolve_claim, resolve_volume};
    use crate::keys::Keys;

    fn value(object: impl serde::Serialize) -> Value {
        serde_json::to_value(object).unwrap()
    }

    fn decode<T: serde::de::DeserializeOwned>(value: &Value) -> T {
        serde_json::from_value(value.clone()).unwrap()
    }

    /// A view over objects as the caches keep them.
    #[derive(Default)]
    struct Cached {
        claims: HashMap<(String, String), Arc<PrunedClaim>>,
        volumes: HashMap<String, Arc<PrunedVolume>>,
        classes: HashMap<String, Arc<PrunedClass>>,
    }

    impl ClusterView for Cached {
        fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PrunedClaim>> {
            self.claims
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
        }
        fn volume(&self, name: &str) -> Option<Arc<PrunedVolume>> {
            self.volumes.get(name).cloned()
        }
        fn storage_class(&self, name: &str) -> Option<Arc<PrunedClass>> {
            self.classes.get(name).cloned()
        }
        fn default_storage_class(&self) -> Option<Arc<PrunedClass>> {
            pick_default_class(self.classes.values())
        }
    }

    /// The claims, volumes and classes of `examples/`, plus objects that exercise every
    /// annotation the engine reads, under the default and a custom prefix.
    fn objects() -> Vec<Value> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        let mut objects = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for doc in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
                match doc["items"].as_array() {
                    Some(items) if doc["kind"] == "List" => objects.extend(items.iter().cloned()),
                    _ => objects.push(doc),
                }
            }
        }
        objects.extend([
            value(
                claim("x", "beta")
                    .beta_provisioner("nfs.csi.k8s.io")
                    .build(),
            ),
            value(
                claim("x", "forced")
                    .provisioner("nfs.csi.k8s.io")
                    .annotation("userns.io/idmap-override", "true")
                    .annotation("example.com/idmap-override", "false")
                    .build(),
            ),
            value(
                claim("x", "typo")
                    .annotation("userns.io/idmap-override", "yes")
                    .build(),
            ),
            value(claim("x", "defaulted").build()),
            value(claim("x", "static").bound_to("pv-static").build()),
            value(claim("x", "missing-pv").bound_to("nowhere").block().build()),
            value(
                volume("pv-static")
                    .annotation("pv.kubernetes.io/provisioned-by", "nfs.csi.k8s.io")
                    .modes(&["ReadWriteMany"])
                    .build(),
            ),
            value(
                volume("pv-host")
                    .host_path("/dev/../srv")
                    .class("local")
                    .build(),
            ),
            value(
                volume("pv-ceph")
                    .csi("rbd.csi.ceph.com")
                    .attribute("pool", "fast")
                    .class("ceph")
                    .build(),
            ),
            value(
                class("ceph", "rbd.csi.ceph.com")
                    .param("csi.storage.k8s.io/fstype", "xfs")
                    .build(),
            ),
            value(
                class("old-default", "ebs.csi.aws.com")
                    .annotation("storageclass.beta.kubernetes.io/is-default-class", "true")
                    .created("2020-01-01T00:00:00Z")
                    .build(),
            ),
        ]);
        objects
    }

    #[test]
    fn the_engine_judges_cached_objects_as_it_judges_whole_ones() {
        // Whole objects in a Snapshot; the same JSON decoded as the watches do, unread
        // labels and annotations dropped as the caches do.
        let mut whole = Snapshot::default();
        let mut cached = Cached::default();
        let (mut claims, mut volumes) = (Vec::new(), Vec::new());
        for object in objects() {
            match object["kind"].as_str() {
                Some("PersistentVolumeClaim") => {
                    let c: PersistentVolumeClaim = decode(&object);
                    let mut p: PrunedClaim = decode(&object);
                    p.marks.retain_read();
                    let ns = c
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into());
                    cached
                        .claims
                        .insert((ns, c.metadata.name.clone().unwrap()), Arc::new(p.clone()));
                    whole.add_claim(c.clone());
                    claims.push((c, p));
                }
                Some("PersistentVolume") => {
                    let v: PersistentVolume = decode(&object);
                    let mut p: PrunedVolume = decode(&object);
                    p.marks.retain_read();
                    cached
                        .volumes
                        .insert(v.metadata.name.clone().unwrap(), Arc::new(p.clone()));
                    whole.add_volume(v.clone());
                    volumes.push((v, p));
                }
                Some("StorageClass") => {
                    let c: StorageClass = decode(&object);
                    let mut p: PrunedClass = decode(&object);
                    p.marks.retain_read();
                    cached
                        .classes
                        .insert(c.metadata.name.clone().unwrap(), Arc::new(p));
                    whole.add_class(c);
                }
                _ => {}
            }
        }
        assert!(claims.len() > 15 && volumes.len() > 5 && cached.classes.len() > 7);
        let table = DriverTable::defaults();
        for keys in [Keys::default(), Keys::new("example.com").unwrap()] {
            for (c, p) in &claims {
                assert_eq!(
                    resolve_claim(p, &cached, &table, &keys),
                    resolve_claim(c, &whole, &table, &keys),
                    "claim {:?} under {}",
                    c.metadata.name,
                    keys.prefix()
                );
            }
            for (v, p) in &volumes {
                assert_eq!(
                    resolve_volume(p, &cached, &table, &keys),
                    resolve_volume(v, &whole, &table, &keys),
                    "volume {:?} under {}",
                    v.metadata.name,
                    keys.prefix()
                );
            }
        }
    }

    #[test]
    fn decoding_keeps_identity_and_read_fields_only() {
        let json: Value = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "data", "namespace": "app", "uid": "u-1", "resourceVersion": "42",
                "generation": 3, "finalizers": ["kubernetes.io/pvc-protection"],
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"app": "web", "userns.io/idmap-supported": "true"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}",
                    "volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com",
                    "pv.kubernetes.io/bind-completed": "yes",
                    "userns.io/idmap-reason": "EBS", "userns.io/driver": "ebs.csi.aws.com"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]
            },
            "spec": {"accessModes": ["ReadWriteOnce", "Sideways"], "volumeMode": "Filesystem",
                     "storageClassName": "gp3", "volumeName": "pv-1",
                     "resources": {"requests": {"storage": "1Gi"}},
                     "selector": {"matchLabels": {"a": "b"}}},
            "status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}
        });
        let mut pruned: PrunedClaim = serde_json::from_value(json.clone()).unwrap();
        let whole: PersistentVolumeClaim = serde_json::from_value(json).unwrap();
        assert_eq!(
            pruned,
            PrunedClaim::from(&whole),
            "decoded and converted agree"
        );
        pruned.marks.retain_read();
        assert_eq!(
            pruned.metadata,
            ObjectMeta {
                name: Some("data".into()),
                namespace: Some("app".into()),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            }
        );
        assert_eq!(
            pruned.marks.labels,
            vec![("userns.io/idmap-supported".into(), "true".into())]
        );
        let mut kept: Vec<&str> = pruned
            .marks
            .annotations
            .iter()
            .map(|(k, _)| k.as_ref())
            .collect();
        kept.sort();
        assert!(
            pruned
                .marks
                .annotations
                .iter()
                .all(|(k, _)| matches!(k, Cow::Borrowed(_))),
            "well-known keys are shared, not copied"
        );
        assert_eq!(
            kept,
            [
                "userns.io/driver",
                "userns.io/idmap-reason",
                "volume.kubernetes.io/storage-provisioner"
            ]
        );
        assert_eq!(
            pruned.spec,
            ClaimSpec {
                access_modes: vec![AccessMode::ReadWriteOnce],
                volume_mode: VolumeMode::Filesystem,
                storage_class_name: Some("gp3".into()),
                volume_name: Some("pv-1".into()),
            }
        );
    }

    #[test]
    fn a_volume_keeps_its_source_facts_and_claim_ref() {
        let whole = volume("pv")
            .csi("rbd.csi.ceph.com")
            .attribute("pool", "fast")
            .set("/spec/csi/fsType", json!("xfs"))
            .set(
                "/spec/claimRef",
                json!({"namespace": "app", "name": "data", "uid": "u"}),
            )
            .set("/status", json!({"phase": "Bound"}))
            .build();
        let pruned: PrunedVolume =
            serde_json::from_value(serde_json::to_value(&whole).unwrap()).unwrap();
        assert_eq!(pruned, PrunedVolume::from(&whole));
        assert_eq!(
            pruned.spec.claim_ref,
            Some(ClaimRef {
                namespace: "app".into(),
                name: "data".into()
            })
        );
        let source = pruned.spec.source.expect("a source");
        assert_eq!(
            (
                source.driver.as_str(),
                &source.origin,
                source.fs_type.as_deref()
            ),
            ("rbd.csi.ceph.com", &DriverSource::VolumeCsi, Some("xfs"))
        );
        assert_eq!(source.attributes.unwrap().parameter("pool"), Some("fast"));
        let half_ref = volume("pv")
            .set("/spec/claimRef", json!({"name": "data"}))
            .build();
        assert_eq!(PrunedVolume::from(&half_ref).spec.claim_ref, None);
    }

    #[test]
    fn a_class_keeps_its_creation_time_parameters_and_default_marks() {
        let whole = class("fast", "ebs.csi.aws.com")
            .default_class()
            .param("type", "gp3")
            .created("2024-05-01T00:00:00Z")
            .build();
        let mut pruned: PrunedClass =
            serde_json::from_value(serde_json::to_value(&whole).unwrap()).unwrap();
        assert_eq!(pruned, PrunedClass::from(&whole));
        pruned.marks.retain_read();
        assert!(pruned.metadata.creation_timestamp.is_some());
        assert_eq!(
            pruned
                .marks
                .annotation("storageclass.kubernetes.io/is-default-class"),
            Some("true")
        );
        assert_eq!(pruned.parameters.unwrap()["type"], "gp3");
    }

    #[test]
    fn null_and_absent_members_decode_as_empty() {
        let pruned: PrunedClaim = serde_json::from_value(json!({
            "metadata": {"name": "c", "labels": null, "annotations": null}, "spec": null
        }))
        .unwrap();
        assert_eq!(pruned.marks, Marks::default());
        assert_eq!(pruned.spec, ClaimSpec::default());
        let bare: PrunedVolume =
            serde_json::from_value(json!({"metadata": {"name": "v"}})).unwrap();
        assert_eq!(bare.spec, VolumeSpec::default());
    }

    #[test]
    fn our_keys_are_kept_under_any_prefix_and_nothing_else_of_ours() {
        assert!(read_label("userns.io/idmap-supported"));
        assert!(read_label("example.com/idmap-supported"));
        assert!(!read_label("app"));
        assert!(read_annotation("example.com/idmap-override"));
        assert!(read_annotation(
            "storageclass.beta.kubernetes.io/is-default-class"
        ));
        assert!(!read_annotation("userns.io/decision"));
        assert!(!read_annotation(
            "kubectl.kubernetes.io/last-applied-configuration"
        ));
    }
}
