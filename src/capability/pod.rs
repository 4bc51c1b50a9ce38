//! The pod decision: may this pod be given `spec.hostUsers: false`? Every reason against it is
//! collected, each with a stable code and a sentence.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    PersistentVolumeClaimTemplate, Pod, PodSpec, SecurityContext, VolumeDevice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pruned::PrunedClaim;
use super::resolve::{
    ClusterView, DriverSource, VolumeFacts, apply_override, awaited_volume, claim_facts,
    forbidden_host_path, resolve_claim,
};
use super::sources::pod_volume_source;
use super::sources::pseudo;
use super::table::{DriverTable, Parameters, Verdict};
use crate::keys::Keys;

/// The longest decision reason written on a pod (annotations total at most 256 KiB).
pub const MAX_SUMMARY_BYTES: usize = 1024;

/// Room kept for "; … and N more".
const MORE_TAIL_BYTES: usize = 32;

/// A pod's user namespace maps this many IDs (kubelet `userNamespaces.idsPerPod` default);
/// a UID or GID at or above it does not exist inside the pod.
pub const IDS_PER_POD: i64 = 65_536;

/// Why a pod is left as written. The string form is stable: it is used in annotations, metrics
/// and the `explain` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BlockerCode {
    /// `spec.hostUsers` is already set, true or false: the author decided.
    HostUsersSet,
    HostNetwork,
    HostPid,
    HostIpc,
    /// `spec.os.name: windows`: Windows pods may not set `hostUsers`.
    WindowsPod,
    /// A hostPath under /dev, /proc or /sys (or `/` itself).
    HostPathForbidden,
    /// `volumeDevices` in a container: raw block devices.
    VolumeDevices,
    /// A UID/GID outside the pod's 65,536-ID range.
    IdOutOfRange,
    /// DRA `resourceClaims`: device mounts are not idmap-aware.
    ResourceClaims,
    /// A privileged container expects host privileges a user namespace removes.
    PrivilegedContainer,
    /// A `persistentVolumeClaim` volume names a claim that is not known (fail closed).
    ClaimNotFound,
    /// A claim is bound (`spec.volumeName`) to a PersistentVolume that is not known (yet).
    ClaimVolumeNotFound,
    /// A claim's storage cannot be idmap-mounted.
    ClaimNotSupported,
    /// A claim's storage support is not known.
    ClaimSupportUnknown,
    /// An inline or generic ephemeral volume cannot be idmap-mounted.
    VolumeNotSupported,
    /// An inline or generic ephemeral volume's support is not known.
    VolumeSupportUnknown,
    /// A volume with a source this version does not recognise (fail closed).
    UnrecognizedVolume,
    /// No usable driver table (invalid ConfigMap, no last good copy): every pod fails closed.
    DriverTableInvalid,
    /// Node objects exist and none the pod could run on supports user namespaces (the
    /// webhook's node mode `any` or `affinity`).
    NoUserNamespaceNode,
}

impl BlockerCode {
    pub const ALL: [BlockerCode; 19] = [
        BlockerCode::HostUsersSet,
        BlockerCode::HostNetwork,
        BlockerCode::HostPid,
        BlockerCode::HostIpc,
        BlockerCode::WindowsPod,
        BlockerCode::HostPathForbidden,
        BlockerCode::VolumeDevices,
        BlockerCode::IdOutOfRange,
        BlockerCode::ResourceClaims,
        BlockerCode::PrivilegedContainer,
        BlockerCode::ClaimNotFound,
        BlockerCode::ClaimVolumeNotFound,
        BlockerCode::ClaimNotSupported,
        BlockerCode::ClaimSupportUnknown,
        BlockerCode::VolumeNotSupported,
        BlockerCode::VolumeSupportUnknown,
        BlockerCode::UnrecognizedVolume,
        BlockerCode::DriverTableInvalid,
        BlockerCode::NoUserNamespaceNode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BlockerCode::HostUsersSet => "HostUsersSet",
            BlockerCode::HostNetwork => "HostNetwork",
            BlockerCode::HostPid => "HostPID",
            BlockerCode::HostIpc => "HostIPC",
            BlockerCode::WindowsPod => "WindowsPod",
            BlockerCode::HostPathForbidden => "HostPathForbidden",
            BlockerCode::VolumeDevices => "VolumeDevices",
            BlockerCode::IdOutOfRange => "IDOutOfRange",
            BlockerCode::ResourceClaims => "ResourceClaims",
            BlockerCode::PrivilegedContainer => "PrivilegedContainer",
            BlockerCode::ClaimNotFound => "ClaimNotFound",
            BlockerCode::ClaimVolumeNotFound => "ClaimVolumeNotFound",
            BlockerCode::ClaimNotSupported => "ClaimNotSupported",
            BlockerCode::ClaimSupportUnknown => "ClaimSupportUnknown",
            BlockerCode::VolumeNotSupported => "VolumeNotSupported",
            BlockerCode::VolumeSupportUnknown => "VolumeSupportUnknown",
            BlockerCode::UnrecognizedVolume => "UnrecognizedVolume",
            BlockerCode::DriverTableInvalid => "DriverTableInvalid",
            BlockerCode::NoUserNamespaceNode => "NoUserNamespaceNode",
        }
    }
}

impl fmt::Display for BlockerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a pod is left as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    pub code: BlockerCode,
    /// A sentence naming the field, container or volume, ending with a full stop when it quotes
    /// the driver table's reason.
    pub message: String,
    /// The storage driver behind a claim or volume blocker, when one is known (what `report`
    /// ranks blockers by: `ClaimNotSupported` of NFS is another fix than of CephFS-FUSE).
    pub driver: Option<String>,
}

/// The decision for one pod. It mutates only when nothing blocks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodDecision {
    pub blockers: Vec<Blocker>,
    /// How many volumes were checked (for the reason text of an enabled pod).
    pub volumes_checked: usize,
    /// The objects missing from the view behind `ClaimNotFound` and `ClaimVolumeNotFound`
    /// blockers, in the order met: what a wait for the caches waits on.
    pub awaited: Vec<Awaited>,
}

/// An object a decision found missing, which may still show up (a claim created a moment
/// before its pod, its PV, the pod's namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Awaited {
    Claim { namespace: String, name: String },
    Volume(String),
    Namespace(String),
}

impl PodDecision {
    /// A decision with this one blocker.
    pub fn blocked(code: BlockerCode, message: impl Into<String>) -> PodDecision {
        let mut decision = PodDecision::default();
        decision.block(code, message);
        decision
    }

    pub fn mutate(&self) -> bool {
        self.blockers.is_empty()
    }

    /// One deterministic sentence for the pod's decision-reason annotation, at most
    /// [`MAX_SUMMARY_BYTES`] long: blockers past the bound are counted, not listed.
    pub fn summary(&self) -> String {
        if self.blockers.is_empty() {
            return match self.volumes_checked {
                0 => "no host namespaces, devices or volumes that prevent a user namespace"
                    .to_string(),
                1 => "no host namespaces or devices, and its one volume supports idmap mounts"
                    .to_string(),
                n => format!(
                    "no host namespaces or devices, and all {n} volumes support idmap mounts"
                ),
            };
        }
        let mut summary = String::new();
        for (listed, blocker) in self.blockers.iter().enumerate() {
            // Items are joined with "; ": a message's own full stop would read ".;".
            let message = blocker.message.trim_end_matches('.');
            let item = format!("{}: {message}", blocker.code);
            let rest = self.blockers.len() - listed;
            // Room for this item, and for the tail naming what follows it.
            let tail = if rest > 1 { MORE_TAIL_BYTES } else { 0 };
            if listed > 0 && summary.len() + 2 + item.len() + tail > MAX_SUMMARY_BYTES {
                summary.push_str(&format!("; … and {rest} more"));
                return summary;
            }
            if listed > 0 {
                summary.push_str("; ");
            }
            summary.push_str(&item);
            if summary.len() > MAX_SUMMARY_BYTES - MORE_TAIL_BYTES {
                // One very long message: cut it on a character boundary.
                let mut end = MAX_SUMMARY_BYTES - MORE_TAIL_BYTES;
                while !summary.is_char_boundary(end) {
                    end -= 1;
                }
                summary.truncate(end);
                summary.push('…');
                if rest > 1 {
                    summary.push_str(&format!("; … and {} more", rest - 1));
                }
                return summary;
            }
        }
        summary
    }

    /// Adds a blocker (the engine's checks, and the webhook's node gate).
    pub fn block(&mut self, code: BlockerCode, message: impl Into<String>) {
        self.blockers.push(Blocker {
            code,
            message: message.into(),
            driver: None,
        });
    }

    /// [`block`](Self::block) on an object missing from the view, noting it as awaited.
    fn block_awaiting(&mut self, code: BlockerCode, message: String, awaited: Awaited) {
        self.block(code, message);
        self.awaited.push(awaited);
    }
}

/// What the decision reads of a pod. [`PodFacts::of`] takes it from a k8s-openapi `Pod`; the
/// webhook's fast decoder (`crate::webhook::lean`) builds it straight from the JSON, borrowing
/// strings from it. Both must agree: the webhook's tests compare them on every pod they decode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodFacts<'a> {
    /// `metadata.name`: a generic ephemeral volume's claim is named after it.
    pub name: Option<Cow<'a, str>>,
    /// `None` for a pod without a spec, which is blocked (fail closed).
    pub spec: Option<SpecFacts<'a>>,
}

/// The parts of a pod's spec the decision reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpecFacts<'a> {
    pub host_users: Option<bool>,
    pub host_network: Option<bool>,
    pub host_pid: Option<bool>,
    pub host_ipc: Option<bool>,
    /// `os.name`.
    pub os_name: Option<Cow<'a, str>>,
    /// `resourceClaims` is present and not empty.
    pub resource_claims: bool,
    /// `securityContext.runAsUser`.
    pub run_as_user: Option<i64>,
    /// `securityContext.runAsGroup`.
    pub run_as_group: Option<i64>,
    /// `securityContext.fsGroup`.
    pub fs_group: Option<i64>,
    /// `securityContext.supplementalGroups`.
    pub supplemental_groups: Cow<'a, [i64]>,
    /// The containers, then the init containers, then the ephemeral containers.
    pub containers: Vec<ContainerFacts<'a>>,
    /// `volumes`, in order.
    pub volumes: Vec<PodVolume<'a>>,
    /// `nodeName`: a pod bound to a node at creation (no scheduler).
    pub node_name: Option<Cow<'a, str>>,
    /// The shape of `affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution`: where
    /// the webhook's node mode `affinity` adds its requirement.
    pub node_affinity: RequiredNodeAffinity,
}

/// What a pod already requires of its node, as far as adding a requirement by JSON Patch
/// needs to know: which objects exist, and for each node selector term whether it has
/// `matchExpressions` (terms are ORed, so a requirement is added to every one of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RequiredNodeAffinity {
    /// No `affinity`.
    #[default]
    NoAffinity,
    /// `affinity` without `nodeAffinity`.
    NoNodeAffinity,
    /// `nodeAffinity` without `requiredDuringSchedulingIgnoredDuringExecution`.
    NoRequired,
    /// The required node selector's terms: `true` where the term has `matchExpressions`.
    Terms(Vec<bool>),
}

impl RequiredNodeAffinity {
    /// The shape of a decoded `affinity`.
    pub fn of(affinity: Option<&k8s_openapi::api::core::v1::Affinity>) -> RequiredNodeAffinity {
        let Some(affinity) = affinity else {
            return RequiredNodeAffinity::NoAffinity;
        };
        let Some(node) = affinity.node_affinity.as_ref() else {
            return RequiredNodeAffinity::NoNodeAffinity;
        };
        let Some(required) = node
            .required_during_scheduling_ignored_during_execution
            .as_ref()
        else {
            return RequiredNodeAffinity::NoRequired;
        };
        RequiredNodeAffinity::Terms(
            required
                .node_selector_terms
                .iter()
                .map(|t| t.match_expressions.is_some())
                .collect(),
        )
    }
}

/// Which list of the spec a container is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Container,
    Init,
    Ephemeral,
}

impl ContainerKind {
    /// What the reasons call a container of this list.
    pub fn noun(self) -> &'static str {
        match self {
            ContainerKind::Container => "container",
            ContainerKind::Init => "init container",
            ContainerKind::Ephemeral => "ephemeral container",
        }
    }
}

/// The parts of a container the decision reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerFacts<'a> {
    pub kind: ContainerKind,
    pub name: Cow<'a, str>,
    /// `volumeDevices` is present and not empty.
    pub volume_devices: bool,
    /// `securityContext.privileged`.
    pub privileged: Option<bool>,
    /// `securityContext.runAsUser`.
    pub run_as_user: Option<i64>,
    /// `securityContext.runAsGroup`.
    pub run_as_group: Option<i64>,
}

/// A pod volume: its name and what its source means for idmap mounts.
#[derive(Clone, Debug, PartialEq)]
pub struct PodVolume<'a> {
    pub name: Cow<'a, str>,
    pub source: VolumeSource<'a>,
}

/// The kind of a pod volume's source, as far as idmap mounts are concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumeSource<'a> {
    /// Node-local, kubelet-managed volumes (configMap, secret, projected, downwardAPI, emptyDir).
    NodeLocal,
    /// A `persistentVolumeClaim`, by claim name.
    Claim(Cow<'a, str>),
    /// A generic `ephemeral` volume and its claim template, if it has one (boxed: it is large
    /// and rare).
    Ephemeral(Option<Box<Cow<'a, PersistentVolumeClaimTemplate>>>),
    HostPath(Cow<'a, str>),
    /// A CSI volume, or an in-tree source named by its pseudo-driver.
    Driver {
        driver: Cow<'a, str>,
        fs_type: Option<Cow<'a, str>>,
        attributes: Option<Cow<'a, BTreeMap<String, String>>>,
    },
    /// No source this version recognises.
    Unrecognized,
}

impl<'a> PodFacts<'a> {
    /// The facts of a decoded pod, borrowing its strings.
    pub fn of(pod: &'a Pod) -> PodFacts<'a> {
        PodFacts {
            name: pod.metadata.name.as_deref().map(Cow::Borrowed),
            spec: pod.spec.as_ref().map(SpecFacts::of),
        }
    }

    /// The same facts owning their strings: what `explain` and `report` keep of each pod and
    /// template (a few hundred bytes, where a typed `Pod` takes about ten kilobytes).
    pub fn into_owned(self) -> PodFacts<'static> {
        PodFacts {
            name: self.name.map(owned),
            spec: self.spec.map(SpecFacts::into_owned),
        }
    }
}

fn owned(text: Cow<'_, str>) -> Cow<'static, str> {
    Cow::Owned(text.into_owned())
}

impl SpecFacts<'_> {
    /// See [`PodFacts::into_owned`].
    pub fn into_owned(self) -> SpecFacts<'static> {
        SpecFacts {
            host_users: self.host_users,
            host_network: self.host_network,
            host_pid: self.host_pid,
            host_ipc: self.host_ipc,
            os_name: self.os_name.map(owned),
            resource_claims: self.resource_claims,
            run_as_user: self.run_as_user,
            run_as_group: self.run_as_group,
            fs_group: self.fs_group,
            supplemental_groups: Cow::Owned(self.supplemental_groups.into_owned()),
            containers: self
                .containers
                .into_iter()
                .map(|c| ContainerFacts {
                    kind: c.kind,
                    name: owned(c.name),
                    volume_devices: c.volume_devices,
                    privileged: c.privileged,
                    run_as_user: c.run_as_user,
                    run_as_group: c.run_as_group,
                })
                .collect(),
            volumes: self
                .volumes
                .into_iter()
                .map(|v| PodVolume {
                    name: owned(v.name),
                    source: v.source.into_owned(),
                })
                .collect(),
            node_name: self.node_name.map(owned),
            node_affinity: self.node_affinity,
        }
    }
}

impl VolumeSource<'_> {
    /// See [`PodFacts::into_owned`].
    pub fn into_owned(self) -> VolumeSource<'static> {
        match self {
            VolumeSource::NodeLocal => VolumeSource::NodeLocal,
            VolumeSource::Claim(name) => VolumeSource::Claim(owned(name)),
            VolumeSource::Ephemeral(template) => {
                VolumeSource::Ephemeral(template.map(|t| Box::new(Cow::Owned((*t).into_owned()))))
            }
            VolumeSource::HostPath(path) => VolumeSource::HostPath(owned(path)),
            VolumeSource::Driver {
                driver,
                fs_type,
                attributes,
            } => VolumeSource::Driver {
                driver: owned(driver),
                fs_type: fs_type.map(owned),
                attributes: attributes.map(|a| Cow::Owned(a.into_owned())),
            },
            VolumeSource::Unrecognized => VolumeSource::Unrecognized,
        }
    }
}

impl<'a> SpecFacts<'a> {
    pub fn of(spec: &'a PodSpec) -> SpecFacts<'a> {
        let sc = spec.security_context.as_ref();
        let containers = spec
            .containers
            .iter()
            .map(|c| {
                ContainerFacts::of(
                    ContainerKind::Container,
                    &c.name,
                    &c.volume_devices,
                    &c.security_context,
                )
            })
            .chain(spec.init_containers.iter().flatten().map(|c| {
                ContainerFacts::of(
                    ContainerKind::Init,
                    &c.name,
                    &c.volume_devices,
                    &c.security_context,
                )
            }))
            .chain(spec.ephemeral_containers.iter().flatten().map(|c| {
                ContainerFacts::of(
                    ContainerKind::Ephemeral,
                    &c.name,
                    &c.volume_devices,
                    &c.security_context,
                )
            }))
            .collect();
        SpecFacts {
            host_users: spec.host_users,
            host_network: spec.host_network,
            host_pid: spec.host_pid,
            host_ipc: spec.host_ipc,
            os_name: spec.os.as_ref().map(|os| Cow::Borrowed(os.name.as_str())),
            resource_claims: spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()),
            run_as_user: sc.and_then(|sc| sc.run_as_user),
            run_as_group: sc.and_then(|sc| sc.run_as_group),
            fs_group: sc.and_then(|sc| sc.fs_group),
            supplemental_groups: Cow::Borrowed(
                sc.and_then(|sc| sc.supplemental_groups.as_deref())
                    .unwrap_or_default(),
            ),
            containers,
            volumes: spec
                .volumes
                .iter()
                .flatten()
                .map(|v| PodVolume {
                    name: Cow::Borrowed(&v.name),
                    source: pod_volume_source(v),
                })
                .collect(),
            node_name: spec.node_name.as_deref().map(Cow::Borrowed),
            node_affinity: RequiredNodeAffinity::of(spec.affinity.as_ref()),
        }
    }
}

impl<'a> ContainerFacts<'a> {
    pub fn of(
        kind: ContainerKind,
        name: &'a str,
        devices: &'a Option<Vec<VolumeDevice>>,
        security: &'a Option<SecurityContext>,
    ) -> ContainerFacts<'a> {
        let sc = security.as_ref();
        ContainerFacts {
            kind,
            name: Cow::Borrowed(name),
            volume_devices: devices.as_ref().is_some_and(|d| !d.is_empty()),
            privileged: sc.and_then(|sc| sc.privileged),
            run_as_user: sc.and_then(|sc| sc.run_as_user),
            run_as_group: sc.and_then(|sc| sc.run_as_group),
        }
    }
}

/// Decides whether `pod`, created in `namespace`, may get `spec.hostUsers: false`.
pub fn decide_pod<V: ClusterView + ?Sized>(
    pod: &Pod,
    namespace: &str,
    view: &V,
    table: &DriverTable,
    keys: &Keys,
) -> PodDecision {
    decide(&PodFacts::of(pod), namespace, view, table, keys)
}

/// [`decide_pod`] on the facts of a pod.
pub fn decide<V: ClusterView + ?Sized>(
    pod: &PodFacts<'_>,
    namespace: &str,
    view: &V,
    table: &DriverTable,
    keys: &Keys,
) -> PodDecision {
    let mut decision = PodDecision::default();
    let Some(spec) = &pod.spec else {
        decision.block(BlockerCode::UnrecognizedVolume, "the pod has no spec");
        return decision;
    };
    check_pod_fields(spec, &mut decision);
    check_containers(spec, &mut decision);
    for volume in &spec.volumes {
        decision.volumes_checked += 1;
        check_volume(volume, pod, namespace, view, table, keys, &mut decision);
    }
    decision
}

fn check_pod_fields(spec: &SpecFacts<'_>, decision: &mut PodDecision) {
    if let Some(host_users) = spec.host_users {
        decision.block(
            BlockerCode::HostUsersSet,
            format!("spec.hostUsers is already set to {host_users} by the pod's author"),
        );
    }
    let host_namespaces = [
        (spec.host_network, BlockerCode::HostNetwork, "hostNetwork"),
        (spec.host_pid, BlockerCode::HostPid, "hostPID"),
        (spec.host_ipc, BlockerCode::HostIpc, "hostIPC"),
    ];
    for (set, code, field) in host_namespaces {
        if set == Some(true) {
            decision.block(
                code,
                format!(
                    "host namespaces (spec.{field}: true) cannot be combined with a user namespace"
                ),
            );
        }
    }
    if spec
        .os_name
        .as_deref()
        .is_some_and(|os| os.eq_ignore_ascii_case("windows"))
    {
        decision.block(
            BlockerCode::WindowsPod,
            "Windows pods (spec.os.name: windows) cannot set hostUsers",
        );
    }
    if spec.resource_claims {
        decision.block(
            BlockerCode::ResourceClaims,
            "devices handed to the pod through DRA resourceClaims are not idmap-aware",
        );
    }
    let ids = [
        ("runAsUser", spec.run_as_user),
        ("runAsGroup", spec.run_as_group),
        ("fsGroup", spec.fs_group),
    ];
    for (field, id) in ids {
        check_id(|| format!("spec.securityContext.{field}"), id, decision);
    }
    for id in spec.supplemental_groups.iter() {
        check_id(
            || "spec.securityContext.supplementalGroups".to_string(),
            Some(*id),
            decision,
        );
    }
}

/// Blocks an ID outside the pod's range; `field` names it (only formatted when it blocks).
fn check_id(field: impl FnOnce() -> String, id: Option<i64>, decision: &mut PodDecision) {
    if let Some(id) = id
        && id >= IDS_PER_POD
    {
        let field = field();
        decision.block(
            BlockerCode::IdOutOfRange,
            format!(
                "{field} {id} is outside the {IDS_PER_POD} IDs mapped into a pod's user namespace"
            ),
        );
    }
}

fn check_containers(spec: &SpecFacts<'_>, decision: &mut PodDecision) {
    for c in &spec.containers {
        let (kind, name) = (c.kind.noun(), &c.name);
        if c.volume_devices {
            decision.block(
                BlockerCode::VolumeDevices,
                format!("{kind} {name} uses volumeDevices, and raw block devices cannot be used in a user namespace"),
            );
        }
        if c.privileged == Some(true) {
            decision.block(
                BlockerCode::PrivilegedContainer,
                format!("{kind} {name} is privileged and expects host-level privileges that a user namespace removes"),
            );
        }
        check_id(
            || format!("{kind} {name} runAsUser"),
            c.run_as_user,
            decision,
        );
        check_id(
            || format!("{kind} {name} runAsGroup"),
            c.run_as_group,
            decision,
        );
    }
}

fn check_volume<V: ClusterView + ?Sized>(
    volume: &PodVolume<'_>,
    pod: &PodFacts<'_>,
    namespace: &str,
    view: &V,
    table: &DriverTable,
    keys: &Keys,
    decision: &mut PodDecision,
) {
    let name = &volume.name;
    match &volume.source {
        VolumeSource::NodeLocal => {}
        VolumeSource::Claim(claim_name) => match view.claim(namespace, claim_name) {
            None => decision.block_awaiting(
                BlockerCode::ClaimNotFound,
                format!("volume {name}: PersistentVolumeClaim {namespace}/{claim_name} is not known, so its storage cannot be checked"),
                Awaited::Claim { namespace: namespace.to_string(), name: claim_name.to_string() },
            ),
            Some(claim) => {
                let verdict = resolve_claim(claim.as_ref(), view, table, keys);
                if verdict.verdict == Verdict::Unknown
                    && let Some(volume) = awaited_volume(&claim, view, keys)
                {
                    decision.block_awaiting(
                        BlockerCode::ClaimVolumeNotFound,
                        format!("volume {name}: claim {claim_name} is bound to PersistentVolume {volume}, which is not known, so its storage cannot be checked"),
                        Awaited::Volume(volume.to_string()),
                    );
                    return;
                }
                if verdict.verdict != Verdict::True {
                    let what = format!("volume {name}: claim {claim_name}");
                    record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, true);
                }
            }
        },
        VolumeSource::Ephemeral(template) => {
            let Some(template) = template else {
                decision.block(
                    BlockerCode::VolumeSupportUnknown,
                    format!("volume {name}: generic ephemeral volume without a volumeClaimTemplate"),
                );
                return;
            };
            let no_meta = ObjectMeta::default();
            let meta = template.metadata.as_ref().unwrap_or(&no_meta);
            let claim = PrunedClaim::new(meta, Some(&template.spec));
            let verdict = claim_facts(&claim, None, view).judge(table);
            let verdict = apply_override(verdict, &claim.marks, keys);
            if verdict.verdict != Verdict::True {
                let pod_name = pod.name.as_deref().unwrap_or("<generated>");
                let what = format!("volume {name}: ephemeral claim {pod_name}-{name}");
                record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, false);
            }
        }
        VolumeSource::HostPath(path) => {
            if let Some(root) = forbidden_host_path(path) {
                decision.block(
                    BlockerCode::HostPathForbidden,
                    format!("volume {name}: hostPath {path} is on {root}, which cannot be idmap-mounted"),
                );
                return;
            }
            // A node's refusal of this path (or a directory above it) wins over the table.
            if let Some(evidence) = view.host_path_evidence(path) {
                decision.block(
                    BlockerCode::VolumeNotSupported,
                    format!(
                        "volume {name}: hostPath {path} could not be idmap-mounted: {} (evidence recorded by userns-labeler)",
                        evidence.describe()
                    ),
                );
                return;
            }
            // After the hard rule and the evidence, the table decides, as for any in-tree source.
            let facts = VolumeFacts {
                driver: Some((Cow::Borrowed(pseudo::HOST_PATH), DriverSource::InlineVolume)),
                host_path: Some(path),
                ..VolumeFacts::default()
            };
            let verdict = facts.judge(table);
            if verdict.verdict != Verdict::True {
                let what = format!("volume {name}: hostPath {path}");
                record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, false);
            }
        }
        VolumeSource::Driver { driver, fs_type, attributes } => {
            let facts = VolumeFacts {
                driver: Some((Cow::Borrowed(driver.as_ref()), DriverSource::InlineVolume)),
                fs_type: fs_type.as_deref(),
                attributes: attributes.as_deref().map(|a| a as &dyn Parameters),
                ..VolumeFacts::default()
            };
            let verdict = facts.judge(table);
            if verdict.verdict != Verdict::True {
                let what = format!("volume {name}");
                record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, false);
            }
        }
        VolumeSource::Unrecognized => decision.block(
            BlockerCode::UnrecognizedVolume,
            format!("volume {name}: its source is not one this version of userns-labeler recognises"),
        ),
    }
}

fn record_verdict(
    decision: &mut PodDecision,
    what: &str,
    verdict: &Verdict,
    driver: Option<&str>,
    reason: &str,
    is_claim: bool,
) {
    let code = match (verdict, is_claim) {
        (Verdict::True, _) => return,
        (Verdict::False, true) => BlockerCode::ClaimNotSupported,
        (Verdict::Unknown, true) => BlockerCode::ClaimSupportUnknown,
        (Verdict::False, false) => BlockerCode::VolumeNotSupported,
        (Verdict::Unknown, false) => BlockerCode::VolumeSupportUnknown,
    };
    let state = match verdict {
        Verdict::False => "cannot be idmap-mounted",
        _ => "has unknown idmap support",
    };
    let message = match driver {
        Some(driver) => format!("{what} (driver {driver}) {state}: {reason}"),
        None => format!("{what} {state}: {reason}"),
    };
    decision.blockers.push(Blocker {
        code,
        message,
        driver: driver.map(str::to_string),
    });
}

/// The namespace a pod is in: its own, else `default`.
pub fn pod_namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}
