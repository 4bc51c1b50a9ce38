//! The pod decision: may this pod be given `spec.hostUsers: false`? Every reason against it is
//! collected, each with a stable code and a sentence.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, PodSpec, SecurityContext, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::resolve::{
    ClusterView, DriverSource, VolumeFacts, claim_facts, forbidden_host_path, pseudo, resolve_claim,
};
use super::table::{DriverTable, Verdict};
use crate::keys::Keys;

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
}

impl BlockerCode {
    pub const ALL: [BlockerCode; 16] = [
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
        BlockerCode::ClaimNotSupported,
        BlockerCode::ClaimSupportUnknown,
        BlockerCode::VolumeNotSupported,
        BlockerCode::VolumeSupportUnknown,
        BlockerCode::UnrecognizedVolume,
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
            BlockerCode::ClaimNotSupported => "ClaimNotSupported",
            BlockerCode::ClaimSupportUnknown => "ClaimSupportUnknown",
            BlockerCode::VolumeNotSupported => "VolumeNotSupported",
            BlockerCode::VolumeSupportUnknown => "VolumeSupportUnknown",
            BlockerCode::UnrecognizedVolume => "UnrecognizedVolume",
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
    pub message: String,
}

/// The decision for one pod. It mutates only when nothing blocks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodDecision {
    pub blockers: Vec<Blocker>,
    /// How many volumes were checked (for the reason text of an enabled pod).
    pub volumes_checked: usize,
}

impl PodDecision {
    pub fn mutate(&self) -> bool {
        self.blockers.is_empty()
    }

    /// One deterministic sentence for the pod's decision-reason annotation.
    pub fn summary(&self) -> String {
        if self.blockers.is_empty() {
            return match self.volumes_checked {
                0 => "no host namespaces, devices or volumes that prevent a user namespace"
                    .to_string(),
                n => format!(
                    "no host namespaces or devices, and all {n} volume(s) support idmap mounts"
                ),
            };
        }
        self.blockers
            .iter()
            .map(|b| format!("{}: {}", b.code, b.message))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn block(&mut self, code: BlockerCode, message: impl Into<String>) {
        self.blockers.push(Blocker {
            code,
            message: message.into(),
        });
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
    let mut decision = PodDecision::default();
    let Some(spec) = &pod.spec else {
        decision.block(BlockerCode::UnrecognizedVolume, "the pod has no spec");
        return decision;
    };
    check_pod_fields(spec, &mut decision);
    check_containers(spec, &mut decision);
    for volume in spec.volumes.iter().flatten() {
        decision.volumes_checked += 1;
        check_volume(volume, pod, namespace, view, table, keys, &mut decision);
    }
    decision
}

fn check_pod_fields(spec: &PodSpec, decision: &mut PodDecision) {
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
        .os
        .as_ref()
        .is_some_and(|os| os.name.eq_ignore_ascii_case("windows"))
    {
        decision.block(
            BlockerCode::WindowsPod,
            "Windows pods (spec.os.name: windows) cannot set hostUsers",
        );
    }
    if spec.resource_claims.as_ref().is_some_and(|c| !c.is_empty()) {
        decision.block(
            BlockerCode::ResourceClaims,
            "devices handed to the pod through DRA resourceClaims are not idmap-aware",
        );
    }
    if let Some(sc) = &spec.security_context {
        let ids = [
            ("runAsUser", sc.run_as_user),
            ("runAsGroup", sc.run_as_group),
            ("fsGroup", sc.fs_group),
        ];
        for (field, id) in ids {
            check_id(&format!("spec.securityContext.{field}"), id, decision);
        }
        for id in sc.supplemental_groups.iter().flatten() {
            check_id(
                "spec.securityContext.supplementalGroups",
                Some(*id),
                decision,
            );
        }
    }
}

fn check_id(field: &str, id: Option<i64>, decision: &mut PodDecision) {
    if let Some(id) = id
        && id >= IDS_PER_POD
    {
        decision.block(
            BlockerCode::IdOutOfRange,
            format!(
                "{field} {id} is outside the {IDS_PER_POD} IDs mapped into a pod's user namespace"
            ),
        );
    }
}

fn check_containers(spec: &PodSpec, decision: &mut PodDecision) {
    let containers = spec
        .containers
        .iter()
        .map(|c| {
            (
                "containers",
                &c.name,
                &c.volume_devices,
                &c.security_context,
            )
        })
        .chain(spec.init_containers.iter().flatten().map(|c| {
            (
                "initContainers",
                &c.name,
                &c.volume_devices,
                &c.security_context,
            )
        }))
        .chain(spec.ephemeral_containers.iter().flatten().map(|c| {
            (
                "ephemeralContainers",
                &c.name,
                &c.volume_devices,
                &c.security_context,
            )
        }));
    for (kind, name, devices, security) in containers {
        if devices.as_ref().is_some_and(|d| !d.is_empty()) {
            decision.block(
                BlockerCode::VolumeDevices,
                format!("{kind} {name} uses volumeDevices, and raw block devices cannot be used in a user namespace"),
            );
        }
        if let Some(sc) = security {
            check_container_security(kind, name, sc, decision);
        }
    }
}

fn check_container_security(
    kind: &str,
    name: &str,
    sc: &SecurityContext,
    decision: &mut PodDecision,
) {
    if sc.privileged == Some(true) {
        decision.block(
            BlockerCode::PrivilegedContainer,
            format!("{kind} {name} is privileged and expects host-level privileges that a user namespace removes"),
        );
    }
    check_id(
        &format!("{kind} {name} runAsUser"),
        sc.run_as_user,
        decision,
    );
    check_id(
        &format!("{kind} {name} runAsGroup"),
        sc.run_as_group,
        decision,
    );
}

/// The kind of a pod volume, as far as idmap mounts are concerned.
enum VolumeKind<'a> {
    /// Node-local, kubelet-managed volumes (configMap, secret, projected, downwardAPI, emptyDir).
    NodeLocal,
    Claim(&'a str),
    Ephemeral,
    HostPath(&'a str),
    Driver {
        driver: Cow<'a, str>,
        fs_type: Option<&'a str>,
        attributes: Option<&'a BTreeMap<String, String>>,
    },
    Unrecognized,
}

fn volume_kind<'a>(v: &'a Volume) -> VolumeKind<'a> {
    let driver = |name: &'static str, fs_type: Option<&'a str>| VolumeKind::Driver {
        driver: Cow::Borrowed(name),
        fs_type,
        attributes: None,
    };
    if v.config_map.is_some()
        || v.secret.is_some()
        || v.projected.is_some()
        || v.downward_api.is_some()
        || v.empty_dir.is_some()
    {
        VolumeKind::NodeLocal
    } else if let Some(c) = &v.persistent_volume_claim {
        VolumeKind::Claim(&c.claim_name)
    } else if v.ephemeral.is_some() {
        VolumeKind::Ephemeral
    } else if let Some(h) = &v.host_path {
        VolumeKind::HostPath(&h.path)
    } else if let Some(c) = &v.csi {
        VolumeKind::Driver {
            driver: Cow::Borrowed(&c.driver),
            fs_type: c.fs_type.as_deref(),
            attributes: c.volume_attributes.as_ref(),
        }
    } else if v.nfs.is_some() {
        driver(pseudo::NFS, None)
    } else if v.cephfs.is_some() {
        driver(pseudo::CEPHFS, None)
    } else if v.glusterfs.is_some() {
        driver(pseudo::GLUSTERFS, None)
    } else if let Some(s) = &v.iscsi {
        driver(pseudo::ISCSI, s.fs_type.as_deref())
    } else if let Some(s) = &v.fc {
        driver(pseudo::FC, s.fs_type.as_deref())
    } else if let Some(s) = &v.rbd {
        driver(pseudo::RBD, s.fs_type.as_deref())
    } else if v.azure_file.is_some() {
        driver(pseudo::AZURE_FILE, None)
    } else if let Some(s) = &v.azure_disk {
        driver(pseudo::AZURE_DISK, s.fs_type.as_deref())
    } else if let Some(s) = &v.aws_elastic_block_store {
        driver(pseudo::AWS_EBS, s.fs_type.as_deref())
    } else if let Some(s) = &v.gce_persistent_disk {
        driver(pseudo::GCE_PD, s.fs_type.as_deref())
    } else if let Some(s) = &v.cinder {
        driver(pseudo::CINDER, s.fs_type.as_deref())
    } else if let Some(s) = &v.vsphere_volume {
        driver(pseudo::VSPHERE, s.fs_type.as_deref())
    } else if let Some(s) = &v.portworx_volume {
        driver(pseudo::PORTWORX, s.fs_type.as_deref())
    } else if let Some(s) = &v.flex_volume {
        driver(pseudo::FLEX, s.fs_type.as_deref())
    } else if v.flocker.is_some() {
        driver(pseudo::FLOCKER, None)
    } else if v.quobyte.is_some() {
        driver(pseudo::QUOBYTE, None)
    } else if let Some(s) = &v.scale_io {
        driver(pseudo::SCALEIO, s.fs_type.as_deref())
    } else if let Some(s) = &v.storageos {
        driver(pseudo::STORAGEOS, s.fs_type.as_deref())
    } else if let Some(s) = &v.photon_persistent_disk {
        driver(pseudo::PHOTON_PD, s.fs_type.as_deref())
    } else if v.image.is_some() {
        driver(pseudo::IMAGE, None)
    } else if v.git_repo.is_some() {
        driver(pseudo::GIT_REPO, None)
    } else {
        VolumeKind::Unrecognized
    }
}

fn check_volume<V: ClusterView + ?Sized>(
    volume: &Volume,
    pod: &Pod,
    namespace: &str,
    view: &V,
    table: &DriverTable,
    keys: &Keys,
    decision: &mut PodDecision,
) {
    let name = &volume.name;
    match volume_kind(volume) {
        VolumeKind::NodeLocal => {}
        VolumeKind::Claim(claim_name) => match view.claim(namespace, claim_name) {
            None => decision.block(
                BlockerCode::ClaimNotFound,
                format!("volume {name}: PersistentVolumeClaim {namespace}/{claim_name} is not known, so its storage cannot be checked"),
            ),
            Some(claim) => {
                let verdict = resolve_claim(&claim, view, table, keys);
                let what = format!("volume {name}: claim {claim_name}");
                record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, true);
            }
        },
        VolumeKind::Ephemeral => {
            let template = volume.ephemeral.as_ref().and_then(|e| e.volume_claim_template.as_ref());
            let Some(template) = template else {
                decision.block(
                    BlockerCode::VolumeSupportUnknown,
                    format!("volume {name}: generic ephemeral volume without a volumeClaimTemplate"),
                );
                return;
            };
            let meta = template.metadata.clone().unwrap_or_default();
            let verdict = claim_facts(&meta, &template.spec, None, view).judge(table);
            let pod_name = pod.metadata.name.as_deref().unwrap_or("<generated>");
            let what = format!("volume {name}: ephemeral claim {pod_name}-{name}");
            record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, false);
        }
        VolumeKind::HostPath(path) => {
            if let Some(root) = forbidden_host_path(path) {
                decision.block(
                    BlockerCode::HostPathForbidden,
                    format!("volume {name}: hostPath {path} is on {root}, which cannot be idmap-mounted"),
                );
            }
        }
        VolumeKind::Driver { driver, fs_type, attributes } => {
            let facts = VolumeFacts {
                driver: Some((driver, DriverSource::InlineVolume)),
                fs_type,
                attributes,
                ..VolumeFacts::default()
            };
            let verdict = facts.judge(table);
            let what = format!("volume {name}");
            record_verdict(decision, &what, &verdict.verdict, verdict.driver.as_deref(), &verdict.reason, false);
        }
        VolumeKind::Unrecognized => decision.block(
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
    decision.block(code, message);
}

/// The namespace a pod is in: its own, else `default`.
pub fn pod_namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}
