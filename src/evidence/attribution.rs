//! Which of a pod's volumes a runtime's failing mount path is. Pure: the pod, the path and a
//! lookup of the PersistentVolume each of the pod's claims is bound to.
//!
//! Host-side paths (runc) are the kubelet's: `<kubelet root>/pods/<pod uid>/volumes/<plugin>/<name>`
//! (`<name>` is the PersistentVolume for a claim, the pod volume otherwise; CSI adds `/mount`),
//! `<kubelet root>/pods/<pod uid>/volume-subpaths/<pod volume>/<container>/<index>` for a
//! `subPath`, or an inline hostPath's own path (or a directory below it). Container-side paths
//! (crun) are a container's `volumeMounts[].mountPath`.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};

use super::failure::PathSide;
use crate::capability::evidence::normalize_path;

/// The volume behind a failed idmapped mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Culprit {
    /// A `persistentVolumeClaim` (or generic ephemeral) volume: label its claim and PV.
    Claim { volume: String, claim: String },
    /// An inline hostPath: record the path.
    HostPath { volume: String, path: String },
    /// A kubelet-managed volume (emptyDir, configMap, secret, projected, downwardAPI) on the
    /// node's own filesystems: the node cannot idmap-mount them.
    NodeLocal { volume: String },
    /// Another inline source (inline CSI, NFS, …): nothing to label.
    Inline { volume: String },
}

/// The kubelet's plugin directories of node-local volumes.
const NODE_LOCAL_PLUGINS: [&str; 5] = [
    "kubernetes.io~empty-dir",
    "kubernetes.io~configmap",
    "kubernetes.io~secret",
    "kubernetes.io~projected",
    "kubernetes.io~downward-api",
];

/// Finds the volume of `pod` that `path` (as the runtime named it, on `side`) belongs to.
/// `container` is the container the Event is about (`regarding.fieldPath`), when known;
/// `bound_volume(claim)` the PersistentVolume a claim of the pod's namespace is bound to.
pub fn attribute(
    pod: &Pod,
    path: &str,
    side: PathSide,
    container: Option<&str>,
    bound_volume: impl Fn(&str) -> Option<String>,
) -> Option<Culprit> {
    let spec = pod.spec.as_ref()?;
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let path = normalize_path(path)?;
    if side == PathSide::Destination
        && let Some(volume) = mounted_at(pod, &path, container)
    {
        return volumes
            .iter()
            .find(|v| v.name == volume)
            .map(|v| classify(pod, v));
    }
    if let Some(culprit) = kubelet_path(pod, volumes, &path, &bound_volume) {
        return Some(culprit);
    }
    // An inline hostPath: the runtime mounts the path itself (or a directory below it).
    volumes
        .iter()
        .filter_map(|v| {
            let host = normalize_path(&v.host_path.as_ref()?.path)?;
            let below = path == host || host == "/" || path.starts_with(&format!("{host}/"));
            below.then_some((host.len(), v))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, v)| classify(pod, v))
}

/// The pod volume mounted at `path` inside `container` (any container when unknown): one
/// mount only, else none (ambiguous).
fn mounted_at(pod: &Pod, path: &str, container: Option<&str>) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter(|c: &&Container| container.is_none_or(|name| c.name == name));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter(|c| container.is_none_or(|name| c.name == name))
        .flat_map(|c| c.volume_mounts.iter().flatten());
    let mut found: Vec<&str> = containers
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .chain(ephemeral)
        .filter(|m| {
            normalize_path(&m.mount_path)
                .is_some_and(|mount| path == mount || path.ends_with(&format!("/rootfs{mount}")))
        })
        .map(|m| m.name.as_str())
        .collect();
    found.sort_unstable();
    found.dedup();
    match found.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

/// A path below the kubelet's directory of this pod.
fn kubelet_path(
    pod: &Pod,
    volumes: &[Volume],
    path: &str,
    bound_volume: &impl Fn(&str) -> Option<String>,
) -> Option<Culprit> {
    let uid = pod.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
    let parts: Vec<&str> = path.split('/').collect();
    let at = parts
        .windows(2)
        .position(|w| w[0] == "pods" && w[1] == uid)?;
    let rest = &parts[at + 2..];
    let by_name = |name: &str| volumes.iter().find(|v| v.name == name);
    match rest {
        ["volume-subpaths", volume, ..] => by_name(volume).map(|v| classify(pod, v)),
        ["volumes", plugin, name, ..] => {
            if NODE_LOCAL_PLUGINS.contains(plugin) {
                return by_name(name).map(|v| classify(pod, v));
            }
            // Named after the PersistentVolume of a claim, else after an inline pod volume.
            volumes
                .iter()
                .find(|v| {
                    claim_name(pod, v)
                        .and_then(|claim| bound_volume(&claim))
                        .is_some_and(|pv| pv == *name)
                })
                .or_else(|| by_name(name))
                .map(|v| classify(pod, v))
        }
        _ => None,
    }
}

/// The claim behind a pod volume: a `persistentVolumeClaim`'s, or a generic ephemeral
/// volume's (`<pod>-<volume>`).
fn claim_name(pod: &Pod, volume: &Volume) -> Option<String> {
    if let Some(claim) = &volume.persistent_volume_claim {
        return Some(claim.claim_name.clone());
    }
    volume.ephemeral.as_ref()?;
    Some(format!(
        "{}-{}",
        pod.metadata.name.as_deref().unwrap_or_default(),
        volume.name
    ))
}

fn classify(pod: &Pod, volume: &Volume) -> Culprit {
    let name = volume.name.clone();
    if let Some(claim) = claim_name(pod, volume) {
        return Culprit::Claim {
            volume: name,
            claim,
        };
    }
    if let Some(host) = &volume.host_path {
        return Culprit::HostPath {
            volume: name,
            path: normalize_path(&host.path).unwrap_or_else(|| host.path.clone()),
        };
    }
    let node_local = volume.empty_dir.is_some()
        || volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.projected.is_some()
        || volume.downward_api.is_some();
    if node_local {
        Culprit::NodeLocal { volume: name }
    } else {
        Culprit::Inline { volume: name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const UID: &str = "0b5c6a8e-2f1d-4a57-9b53-4f4c0c6a1d2e";
    const ROOT: &str = "/var/lib/userns-labeler-node/kubelet";

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "app", "uid": UID},
            "spec": {
                "containers": [
                    {"name": "main", "image": "x", "volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "fuse", "mountPath": "/fuse"},
                        {"name": "cache", "mountPath": "/cache"},
                        {"name": "scratch", "mountPath": "/scratch/"},
                    ]},
                    {"name": "side", "image": "x", "volumeMounts": [
                        {"name": "logs", "mountPath": "/data"},
                    ]},
                ],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data-claim"}},
                    {"name": "fuse", "hostPath": {"path": "/mnt/fuse/"}},
                    {"name": "cache", "emptyDir": {}},
                    {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                    {"name": "logs", "nfs": {"server": "nfs.example.com", "path": "/logs"}},
                    {"name": "inline-csi", "csi": {"driver": "x.example.com"}},
                ],
            }
        }))
        .unwrap()
    }

    fn bound(claim: &str) -> Option<String> {
        match claim {
            "data-claim" => Some("pv-data".into()),
            "web-1-scratch" => Some("pvc-1234".into()),
            _ => None,
        }
    }

    fn source(path: &str) -> Option<Culprit> {
        attribute(&pod(), path, PathSide::Source, None, bound)
    }

    fn claim(volume: &str, claim: &str) -> Option<Culprit> {
        Some(Culprit::Claim {
            volume: volume.into(),
            claim: claim.into(),
        })
    }

    #[test]
    fn a_kubelet_volume_directory_named_after_a_pv_is_its_claim() {
        assert_eq!(
            source(&format!(
                "{ROOT}/pods/{UID}/volumes/kubernetes.io~local-volume/pv-data"
            )),
            claim("data", "data-claim")
        );
        assert_eq!(
            source(&format!(
                "{ROOT}/pods/{UID}/volumes/kubernetes.io~csi/pvc-1234/mount"
            )),
            claim("scratch", "web-1-scratch"),
            "a generic ephemeral volume's claim is <pod>-<volume>"
        );
    }

    #[test]
    fn a_subpath_directory_names_the_pod_volume() {
        assert_eq!(
            source(&format!(
                "/var/lib/kubelet/pods/{UID}/volume-subpaths/data/main/0"
            )),
            claim("data", "data-claim")
        );
    }

    #[test]
    fn node_local_and_inline_volumes_have_no_claim() {
        assert_eq!(
            source(&format!(
                "{ROOT}/pods/{UID}/volumes/kubernetes.io~empty-dir/cache"
            )),
            Some(Culprit::NodeLocal {
                volume: "cache".into()
            })
        );
        assert_eq!(
            source(&format!(
                "{ROOT}/pods/{UID}/volumes/kubernetes.io~csi/inline-csi/mount"
            )),
            Some(Culprit::Inline {
                volume: "inline-csi".into()
            })
        );
    }

    #[test]
    fn a_host_path_or_a_directory_below_it_is_the_inline_host_path() {
        let expected = Some(Culprit::HostPath {
            volume: "fuse".into(),
            path: "/mnt/fuse".into(),
        });
        assert_eq!(source("/mnt/fuse"), expected);
        assert_eq!(source("/mnt/fuse/deeper"), expected);
        assert_eq!(source("/mnt/fuse2"), None);
    }

    #[test]
    fn another_pods_directory_is_not_this_pods_volume() {
        assert_eq!(
            source("/var/lib/kubelet/pods/another-uid/volumes/kubernetes.io~local-volume/pv-data"),
            None
        );
        assert_eq!(source("/somewhere/else"), None);
    }

    #[test]
    fn crun_names_the_mount_inside_the_container_it_failed_in() {
        let dest = |path: &str, container| {
            attribute(&pod(), path, PathSide::Destination, container, bound)
        };
        assert_eq!(dest("/data", Some("main")), claim("data", "data-claim"));
        assert_eq!(
            dest("/data", Some("side")),
            Some(Culprit::Inline {
                volume: "logs".into()
            })
        );
        assert_eq!(dest("/data", None), None, "two containers mount /data");
        assert_eq!(
            dest(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs/scratch",
                None
            ),
            claim("scratch", "web-1-scratch")
        );
        assert_eq!(dest("/nowhere", Some("main")), None);
    }

    #[test]
    fn a_pod_without_spec_or_uid_is_no_match_and_no_panic() {
        let bare: Pod = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
        assert_eq!(
            attribute(&bare, "/mnt/fuse", PathSide::Source, None, bound),
            None
        );
        let mut no_uid = pod();
        no_uid.metadata.uid = None;
        assert_eq!(
            attribute(
                &no_uid,
                &format!("{ROOT}/pods/{UID}/volumes/kubernetes.io~local-volume/pv-data"),
                PathSide::Source,
                None,
                bound
            ),
            None
        );
    }
}
