//! Claim and volume resolution: which storage driver backs a PVC or PV, and what the driver table
//! says about it. Pure functions of the objects and a [`ClusterView`] for lookups.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use super::evidence::{Evidence, apply_evidence};
use super::pruned::{ClaimSpec, Marks, PrunedClaim, PrunedClass, PrunedVolume, ToPruned};
pub use super::sources::pseudo;
use super::table::{AccessMode, DriverTable, Parameters, Verdict, VolumeMode};
use crate::keys::Keys;

/// Claim annotation set by the PV controller on dynamically provisioned claims.
pub const ANN_STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// The older form of [`ANN_STORAGE_PROVISIONER`]; old clusters' claims may carry only this one.
pub const ANN_BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
/// PV annotation naming the provisioner that created it.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// StorageClass annotation marking the cluster default.
pub const ANN_DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
pub const ANN_BETA_DEFAULT_CLASS: &str = "storageclass.beta.kubernetes.io/is-default-class";

/// Host paths a user-namespaced pod can never mount: devtmpfs, procfs and sysfs cannot be
/// idmap-mounted.
pub const FORBIDDEN_HOST_PATHS: [&str; 3] = ["/dev", "/proc", "/sys"];

/// Read access to the objects a decision depends on, pruned to what it reads. Implemented by an
/// in-memory [`Snapshot`] (offline `explain`, tests) and by the controller's reflector stores.
pub trait ClusterView {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PrunedClaim>>;
    fn volume(&self, name: &str) -> Option<Arc<PrunedVolume>>;
    fn storage_class(&self, name: &str) -> Option<Arc<PrunedClass>>;
    /// The class a claim without `storageClassName` gets.
    fn default_storage_class(&self) -> Option<Arc<PrunedClass>>;
    /// What a node reported when it could not idmap-mount this inline hostPath (or a directory
    /// above it): the labeler's evidence ConfigMap. None by default (offline, no evidence).
    fn host_path_evidence(&self, _path: &str) -> Option<Evidence> {
        None
    }
}

/// Where the driver of a volume was read from, in resolution order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverSource {
    /// The bound PV's `spec.csi.driver`.
    VolumeCsi,
    /// The bound PV's in-tree source, named by its pseudo-driver.
    VolumeInTree,
    /// The claim annotation `volume.kubernetes.io/storage-provisioner`.
    ProvisionerAnnotation,
    /// The claim annotation `volume.beta.kubernetes.io/storage-provisioner`.
    BetaProvisionerAnnotation,
    /// The PV annotation `pv.kubernetes.io/provisioned-by`.
    ProvisionedByAnnotation,
    /// The named StorageClass's provisioner.
    StorageClass(String),
    /// The cluster default StorageClass's provisioner.
    DefaultStorageClass(String),
    /// An inline pod volume.
    InlineVolume,
}

impl fmt::Display for DriverSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverSource::VolumeCsi => f.write_str("the bound PV's spec.csi.driver"),
            DriverSource::VolumeInTree => f.write_str("the PV's in-tree volume source"),
            DriverSource::ProvisionerAnnotation => {
                write!(f, "the claim annotation {ANN_STORAGE_PROVISIONER}")
            }
            DriverSource::BetaProvisionerAnnotation => {
                write!(f, "the claim annotation {ANN_BETA_STORAGE_PROVISIONER}")
            }
            DriverSource::ProvisionedByAnnotation => {
                write!(f, "the PV annotation {ANN_PROVISIONED_BY}")
            }
            DriverSource::StorageClass(name) => write!(f, "StorageClass {name}"),
            DriverSource::DefaultStorageClass(name) => {
                write!(f, "the default StorageClass {name}")
            }
            DriverSource::InlineVolume => f.write_str("the pod's inline volume"),
        }
    }
}

/// What the engine concludes about one claim or volume: the label value, the driver it resolved
/// (if any), where that driver came from, and a sentence saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeVerdict {
    pub verdict: Verdict,
    pub driver: Option<String>,
    pub driver_source: Option<DriverSource>,
    pub reason: String,
}

/// The storage facts gathered for one volume, ready to be judged.
#[derive(Debug, Default)]
pub(crate) struct VolumeFacts<'a> {
    pub driver: Option<(Cow<'a, str>, DriverSource)>,
    pub access_modes: Vec<AccessMode>,
    pub volume_mode: VolumeMode,
    /// The fsType the volume source states, if any; else the class's fsType parameter.
    pub fs_type: Option<&'a str>,
    /// The StorageClass, for its parameters.
    pub class: Option<Arc<PrunedClass>>,
    /// CSI `volumeAttributes`; they take precedence over class parameters of the same key.
    pub attributes: Option<&'a dyn Parameters>,
    /// The host path of a hostPath PV.
    pub host_path: Option<&'a str>,
    /// Why no driver could be found, when none was.
    pub no_driver_reason: Option<String>,
}

impl VolumeFacts<'_> {
    pub(crate) fn judge(self, table: &DriverTable) -> VolumeVerdict {
        let driver = self.driver.as_ref().map(|(d, _)| d.to_string());
        let driver_source = self.driver.as_ref().map(|(_, s)| s.clone());
        let with = |verdict, reason: String| VolumeVerdict {
            verdict,
            driver: driver.clone(),
            driver_source: driver_source.clone(),
            reason,
        };
        if self.volume_mode == VolumeMode::Block {
            return with(
                Verdict::False,
                "Raw block volumes (volumeMode: Block) cannot be idmap-mounted.".to_string(),
            );
        }
        if let Some(path) = self.host_path
            && let Some(root) = forbidden_host_path(path)
        {
            return with(
                Verdict::False,
                format!("hostPath {path} is on {root}, which cannot be idmap-mounted."),
            );
        }
        let Some((name, _)) = &self.driver else {
            return with(
                Verdict::Unknown,
                self.no_driver_reason
                    .unwrap_or_else(|| "No storage driver could be determined.".to_string()),
            );
        };
        let class_parameters = self.class.as_ref().and_then(|c| c.parameters.as_ref());
        let parameters = Layered {
            over: self.attributes,
            under: class_parameters,
        };
        let fs_type = self.fs_type.or_else(|| {
            class_parameters.and_then(|p| {
                FS_TYPE_PARAMETERS
                    .iter()
                    .find_map(|k| p.get(*k))
                    .map(String::as_str)
                    .filter(|s| !s.is_empty())
            })
        });
        let evaluation = table.evaluate_at(
            name,
            &self.access_modes,
            self.volume_mode,
            fs_type,
            &parameters,
            self.host_path,
        );
        with(evaluation.verdict, evaluation.reason)
    }
}

/// Resolves a claim: the operator override, then the bound PV, then the claim's annotations,
/// then the StorageClass (or the default class when the claim names none).
pub fn resolve_claim<C, V>(claim: &C, view: &V, table: &DriverTable, keys: &Keys) -> VolumeVerdict
where
    C: ToPruned<PrunedClaim> + ?Sized,
    V: ClusterView + ?Sized,
{
    let claim = claim.to_pruned();
    let claim = claim.as_ref();
    let volume = match bound_volume_name(&claim.spec) {
        None => None,
        Some(name) => match view.volume(name) {
            Some(volume) => Some(volume),
            None => {
                // The PV decides once it exists; until then only a `false` from the claim's
                // own facts stands (a `true` could be wrong: a static NFS PV, say).
                let verdict = claim_facts(claim, None, view).judge(table);
                let verdict = match verdict.verdict {
                    Verdict::False => verdict,
                    _ => VolumeVerdict {
                        verdict: Verdict::Unknown,
                        driver: None,
                        driver_source: None,
                        reason: format!(
                            "The claim is bound to PersistentVolume {name}, which does not exist (yet); its storage is unknown until it does."
                        ),
                    },
                };
                let verdict = apply_evidence(verdict, &claim.marks, keys, "this claim");
                return apply_override(verdict, &claim.marks, keys);
            }
        },
    };
    let verdict = claim_facts(claim, volume.as_deref(), view).judge(table);
    let mut verdict = apply_evidence(verdict, &claim.marks, keys, "this claim");
    if let Some(volume) = volume.as_deref()
        && verdict.verdict != Verdict::False
    {
        let whose = format!(
            "its PersistentVolume {}",
            volume.metadata.name.as_deref().unwrap_or_default()
        );
        verdict = apply_evidence(verdict, &volume.marks, keys, &whose);
    }
    apply_override(verdict, &claim.marks, keys)
}

/// `spec.volumeName`, when set: the PV the claim is (or is to be) bound to.
fn bound_volume_name(spec: &ClaimSpec) -> Option<&str> {
    spec.volume_name.as_deref().filter(|n| !n.is_empty())
}

/// The PV a claim is bound to when the view does not know it (yet), unless the operator's
/// override annotation decides the claim anyway: what the webhook waits for.
pub(crate) fn awaited_volume<'a, V: ClusterView + ?Sized>(
    claim: &'a PrunedClaim,
    view: &V,
    keys: &Keys,
) -> Option<&'a str> {
    let name = bound_volume_name(&claim.spec)?;
    let overridden = annotation(&claim.marks, &keys.idmap_override).is_some();
    (!overridden && view.volume(name).is_none()).then_some(name)
}

/// Gathers a claim's facts. Also used for generic ephemeral volume templates, which have no
/// bound volume.
pub(crate) fn claim_facts<'a, V: ClusterView + ?Sized>(
    claim: &'a PrunedClaim,
    volume: Option<&'a PrunedVolume>,
    view: &V,
) -> VolumeFacts<'a> {
    let (meta, spec) = (&claim.marks, &claim.spec);
    let volume_spec = volume.map(|v| &v.spec);
    let class = ClassRef::of_claim(spec, view);

    let mut access_modes = spec.access_modes.clone();
    access_modes.extend(volume_spec.iter().flat_map(|s| s.access_modes.iter()));
    access_modes.sort();
    access_modes.dedup();

    let block = spec.volume_mode == VolumeMode::Block
        || volume_spec.is_some_and(|s| s.volume_mode == VolumeMode::Block);
    let source = volume_spec
        .and_then(|s| s.source.as_ref())
        .map(|s| s.info());

    let driver = source
        .as_ref()
        .map(|s| (s.driver.clone(), s.origin.clone()))
        .or_else(|| {
            annotation(meta, ANN_STORAGE_PROVISIONER)
                .map(|d| (Cow::Borrowed(d), DriverSource::ProvisionerAnnotation))
        })
        .or_else(|| {
            annotation(meta, ANN_BETA_STORAGE_PROVISIONER)
                .map(|d| (Cow::Borrowed(d), DriverSource::BetaProvisionerAnnotation))
        })
        .or_else(|| {
            volume
                .and_then(|v| annotation(&v.marks, ANN_PROVISIONED_BY))
                .map(|d| (Cow::Borrowed(d), DriverSource::ProvisionedByAnnotation))
        })
        .or_else(|| class.provisioner());

    VolumeFacts {
        no_driver_reason: driver
            .is_none()
            .then(|| class.missing_driver_reason("claim")),
        driver,
        access_modes,
        volume_mode: if block {
            VolumeMode::Block
        } else {
            VolumeMode::Filesystem
        },
        fs_type: source.as_ref().and_then(|s| s.fs_type),
        class: class.arc(),
        attributes: source.as_ref().and_then(|s| s.attributes),
        host_path: source.and_then(|s| s.host_path),
    }
}

/// Resolves a PersistentVolume from its own spec: override, source, `provisioned-by`, class.
pub fn resolve_volume<P, V>(volume: &P, view: &V, table: &DriverTable, keys: &Keys) -> VolumeVerdict
where
    P: ToPruned<PrunedVolume> + ?Sized,
    V: ClusterView + ?Sized,
{
    let volume = volume.to_pruned();
    let volume = volume.as_ref();
    let spec = &volume.spec;
    let class = match spec.storage_class_name.as_deref() {
        None | Some("") => ClassRef::NoClass,
        Some(name) => ClassRef::Named(name, view.storage_class(name)),
    };
    let source = spec.source.as_ref().map(|s| s.info());
    let driver = source
        .as_ref()
        .map(|s| (s.driver.clone(), s.origin.clone()))
        .or_else(|| {
            annotation(&volume.marks, ANN_PROVISIONED_BY)
                .map(|d| (Cow::Borrowed(d), DriverSource::ProvisionedByAnnotation))
        })
        .or_else(|| class.provisioner());
    let mut access_modes = spec.access_modes.clone();
    access_modes.sort();
    access_modes.dedup();
    let verdict = VolumeFacts {
        no_driver_reason: driver
            .is_none()
            .then(|| class.missing_driver_reason("volume")),
        driver,
        access_modes,
        volume_mode: spec.volume_mode,
        fs_type: source.as_ref().and_then(|s| s.fs_type),
        class: class.arc(),
        attributes: source.as_ref().and_then(|s| s.attributes),
        host_path: source.and_then(|s| s.host_path),
    }
    .judge(table);
    let verdict = apply_evidence(verdict, &volume.marks, keys, "this volume");
    apply_override(verdict, &volume.marks, keys)
}

/// The operator's per-object override, `<prefix>/idmap-override: "true" | "false"`, replaces the
/// verdict and reason (the resolved driver stays for information). Any other value yields
/// `unknown` with a reason naming the bad value, so a typo fails closed and shows.
pub(crate) fn apply_override(
    mut verdict: VolumeVerdict,
    marks: &Marks,
    keys: &Keys,
) -> VolumeVerdict {
    let Some(value) = annotation(marks, &keys.idmap_override) else {
        return verdict;
    };
    (verdict.verdict, verdict.reason) = match value {
        "true" | "false" => (
            if value == "true" {
                Verdict::True
            } else {
                Verdict::False
            },
            format!(
                "Set to {value} by the operator's annotation {}.",
                keys.idmap_override
            ),
        ),
        other => (
            Verdict::Unknown,
            format!(
                "The annotation {} has the invalid value {other:?} (expected \"true\" or \"false\").",
                keys.idmap_override
            ),
        ),
    };
    verdict
}

/// How a claim refers to its StorageClass.
enum ClassRef<'a> {
    /// `storageClassName: ""`: explicitly no class.
    NoClass,
    /// A named class, and whether it exists.
    Named(&'a str, Option<Arc<PrunedClass>>),
    /// No `storageClassName`: the cluster default, if there is one.
    Default(Option<Arc<PrunedClass>>),
}

impl<'a> ClassRef<'a> {
    fn of_claim<V: ClusterView + ?Sized>(spec: &'a ClaimSpec, view: &V) -> Self {
        match spec.storage_class_name.as_deref() {
            Some("") => ClassRef::NoClass,
            Some(name) => ClassRef::Named(name, view.storage_class(name)),
            None => ClassRef::Default(view.default_storage_class()),
        }
    }

    fn class(&self) -> Option<&PrunedClass> {
        match self {
            ClassRef::Named(_, class) | ClassRef::Default(class) => class.as_deref(),
            ClassRef::NoClass => None,
        }
    }

    fn provisioner(&self) -> Option<(Cow<'a, str>, DriverSource)> {
        let class = self.class()?;
        if class.provisioner.is_empty() {
            return None;
        }
        let name = class.metadata.name.clone().unwrap_or_default();
        let source = match self {
            ClassRef::Default(_) => DriverSource::DefaultStorageClass(name),
            _ => DriverSource::StorageClass(name),
        };
        Some((Cow::Owned(class.provisioner.clone()), source))
    }

    fn arc(&self) -> Option<Arc<PrunedClass>> {
        match self {
            ClassRef::Named(_, class) | ClassRef::Default(class) => class.clone(),
            ClassRef::NoClass => None,
        }
    }

    fn missing_driver_reason(&self, what: &str) -> String {
        match self {
            ClassRef::Named(name, None) => format!(
                "StorageClass {name} does not exist and the {what} names no driver of its own."
            ),
            ClassRef::Named(name, Some(_)) => {
                format!("StorageClass {name} has no provisioner and the {what} names no driver.")
            }
            ClassRef::Default(None) => format!(
                "The {what} names no StorageClass, the cluster has no default class, and no driver is recorded on it."
            ),
            ClassRef::Default(Some(_)) => {
                format!(
                    "The default StorageClass has no provisioner and the {what} names no driver."
                )
            }
            ClassRef::NoClass => format!(
                "The {what} has storageClassName \"\" (no class), is not bound to a volume and names no driver."
            ),
        }
    }
}

/// StorageClass parameters that name the filesystem, in the order they are consulted.
const FS_TYPE_PARAMETERS: [&str; 3] = ["csi.storage.k8s.io/fstype", "fsType", "fstype"];

/// A PV's CSI attributes over its class's parameters: what a rule's `parameters` match.
#[derive(Debug)]
struct Layered<'a> {
    over: Option<&'a dyn Parameters>,
    under: Option<&'a BTreeMap<String, String>>,
}

impl Parameters for Layered<'_> {
    fn parameter(&self, key: &str) -> Option<&str> {
        self.over
            .and_then(|over| over.parameter(key))
            .or_else(|| self.under.and_then(|under| under.parameter(key)))
    }
}

/// A volume's source: its driver (CSI or in-tree pseudo-driver) and what the table may narrow on.
pub(crate) struct SourceInfo<'a> {
    pub driver: Cow<'a, str>,
    pub origin: DriverSource,
    pub fs_type: Option<&'a str>,
    pub attributes: Option<&'a dyn Parameters>,
    pub host_path: Option<&'a str>,
}

/// Whether `path`, once `.` and `..` are resolved lexically, is one of [`FORBIDDEN_HOST_PATHS`],
/// lies below one, or is `/` (which contains them all). Returns the forbidden root.
pub fn forbidden_host_path(path: &str) -> Option<&'static str> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    match parts.first() {
        None => Some("/"),
        Some(first) => FORBIDDEN_HOST_PATHS
            .iter()
            .copied()
            .find(|root| &root[1..] == *first),
    }
}

/// A non-empty annotation.
fn annotation<'a>(marks: &'a Marks, key: &str) -> Option<&'a str> {
    marks.annotation(key).filter(|v| !v.is_empty())
}

pub(crate) fn parse_access_modes(modes: Option<&[String]>) -> Vec<AccessMode> {
    modes
        .unwrap_or_default()
        .iter()
        .filter_map(|m| AccessMode::parse(m))
        .collect()
}

pub(crate) fn is_block(mode: Option<&str>) -> bool {
    mode == Some("Block")
}

/// Whether a StorageClass is marked as the cluster default.
pub fn is_default_class(class: &PrunedClass) -> bool {
    class.marks.annotation(ANN_DEFAULT_CLASS) == Some("true")
        || class.marks.annotation(ANN_BETA_DEFAULT_CLASS) == Some("true")
}

/// Picks the default class the way the API server does when several are marked: the newest,
/// ties broken by name.
pub fn pick_default_class<'a>(
    classes: impl IntoIterator<Item = &'a Arc<PrunedClass>>,
) -> Option<Arc<PrunedClass>> {
    classes
        .into_iter()
        .filter(|c| is_default_class(c))
        .max_by(|a, b| {
            let ts = |c: &PrunedClass| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
            ts(a)
                .cmp(&ts(b))
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        })
        .cloned()
}

/// An in-memory [`ClusterView`]: the objects of a set of manifests, or a test's fixtures. It
/// keeps each object whole (for listing) and pruned (for lookups).
#[derive(Default, Debug, Clone)]
pub struct Snapshot {
    /// namespace → name → claim
    claims: HashMap<String, HashMap<String, Whole<PersistentVolumeClaim, PrunedClaim>>>,
    volumes: HashMap<String, Whole<PersistentVolume, PrunedVolume>>,
    classes: HashMap<String, Arc<PrunedClass>>,
}

/// An object as given, and pruned.
#[derive(Debug, Clone)]
struct Whole<K, P> {
    object: Arc<K>,
    pruned: Arc<P>,
}

impl<K, P> Whole<K, P>
where
    for<'a> P: From<&'a K>,
{
    fn new(object: K) -> Self {
        Whole {
            pruned: Arc::new(P::from(&object)),
            object: Arc::new(object),
        }
    }
}

impl Snapshot {
    /// Adds a claim; a claim without a namespace is in `default`.
    pub fn add_claim(&mut self, claim: PersistentVolumeClaim) {
        let namespace = claim
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = claim.metadata.name.clone().unwrap_or_default();
        self.claims
            .entry(namespace)
            .or_default()
            .insert(name, Whole::new(claim));
    }

    pub fn add_volume(&mut self, volume: PersistentVolume) {
        let name = volume.metadata.name.clone().unwrap_or_default();
        self.volumes.insert(name, Whole::new(volume));
    }

    pub fn add_class(&mut self, class: StorageClass) {
        let name = class.metadata.name.clone().unwrap_or_default();
        self.classes
            .insert(name, Arc::new(PrunedClass::from(&class)));
    }

    pub fn claims(&self) -> impl Iterator<Item = &Arc<PersistentVolumeClaim>> {
        self.claims
            .values()
            .flat_map(HashMap::values)
            .map(|c| &c.object)
    }

    pub fn volumes(&self) -> impl Iterator<Item = &Arc<PersistentVolume>> {
        self.volumes.values().map(|v| &v.object)
    }
}

impl ClusterView for Snapshot {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PrunedClaim>> {
        Some(self.claims.get(namespace)?.get(name)?.pruned.clone())
    }

    fn volume(&self, name: &str) -> Option<Arc<PrunedVolume>> {
        Some(self.volumes.get(name)?.pruned.clone())
    }

    fn storage_class(&self, name: &str) -> Option<Arc<PrunedClass>> {
        self.classes.get(name).cloned()
    }

    fn default_storage_class(&self) -> Option<Arc<PrunedClass>> {
        pick_default_class(self.classes.values())
    }
}
