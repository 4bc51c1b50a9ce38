//! Which Event messages are idmap-mount failures, and what they name. Pure string work on the
//! runtimes' stable error texts (wrapped by containerd and the kubelet, e.g. `Error: failed to
//! create containerd task: failed to create shim task: OCI runtime create failed: …`):
//!
//! - runc (libcontainer `mount_linux.go`, EINVAL only):
//!   `failed to set MOUNT_ATTR_IDMAP on <source>: invalid argument (maybe the filesystem used
//!   doesn't support idmap mounts on this kernel?)` — `<source>` is the host side of the mount.
//! - crun: ``mount_setattr `<dest>` (maybe the file system used doesn't support idmap mounts on
//!   this kernel?): Invalid argument`` — `<dest>` is where the container sees it.
//! - containerd, the container's root filesystem (the node, not a volume):
//!   ``snapshotter "overlayfs" doesn't support idmap mounts on this host, configure `slow_chown`
//!   to allow a slower and expensive fallback``.
//!
//! Anything else — an image pull, an OOM, another mount error, a runc error without the
//! "maybe" hint (not EINVAL) — is not one.

/// The runtime whose error it is; the string is a metric label and goes into evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Runc,
    Crun,
    Containerd,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
            Runtime::Containerd => "containerd",
        }
    }
}

/// Which side of a mount a runtime names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathSide {
    /// The host path the runtime mounts from (runc).
    Source,
    /// The path inside the container (crun).
    Destination,
}

/// An idmap-mount failure, as read from an Event message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdmapFailure {
    /// A volume could not be idmap-mounted.
    Volume {
        runtime: Runtime,
        path: String,
        side: PathSide,
    },
    /// The container's root filesystem could not be: a fact about the node.
    Image { snapshotter: String },
}

impl IdmapFailure {
    pub fn runtime(&self) -> Runtime {
        match self {
            IdmapFailure::Volume { runtime, .. } => *runtime,
            IdmapFailure::Image { .. } => Runtime::Containerd,
        }
    }
}

const RUNC_PREFIX: &str = "failed to set MOUNT_ATTR_IDMAP on ";
const RUNC_HINT: &str = " (maybe the filesystem used doesn't support idmap mounts";
const CRUN_PREFIX: &str = "mount_setattr `";
const CRUN_HINT: &str = "(maybe the file system used doesn't support idmap mounts";
const SNAPSHOTTER_TEXT: &str = "doesn't support idmap mounts on this host";
const SNAPSHOTTER_PREFIX: &str = "snapshotter \"";

/// Reads an Event message; `None` when it is not an idmap-mount failure of a supported runtime.
pub fn classify(message: &str) -> Option<IdmapFailure> {
    runc(message)
        .or_else(|| crun(message))
        .or_else(|| snapshotter(message))
}

fn runc(message: &str) -> Option<IdmapFailure> {
    let rest = &message[message.find(RUNC_PREFIX)? + RUNC_PREFIX.len()..];
    let before_hint = &rest[..rest.find(RUNC_HINT)?];
    // `<source>: <errno text>`; the hint is only added for EINVAL.
    let path = &before_hint[..before_hint.rfind(": ")?];
    non_empty_path(path).map(|path| IdmapFailure::Volume {
        runtime: Runtime::Runc,
        path,
        side: PathSide::Source,
    })
}

fn crun(message: &str) -> Option<IdmapFailure> {
    let rest = &message[message.find(CRUN_PREFIX)? + CRUN_PREFIX.len()..];
    let end = rest.find('`')?;
    let after = rest[end + 1..].trim_start();
    if !after.starts_with(CRUN_HINT) {
        return None;
    }
    non_empty_path(&rest[..end]).map(|path| IdmapFailure::Volume {
        runtime: Runtime::Crun,
        path,
        side: PathSide::Destination,
    })
}

fn snapshotter(message: &str) -> Option<IdmapFailure> {
    let at = message.find(SNAPSHOTTER_TEXT)?;
    let before = &message[..at];
    let start = before.rfind(SNAPSHOTTER_PREFIX)? + SNAPSHOTTER_PREFIX.len();
    let name = before[start..].trim_end().strip_suffix('"')?;
    (!name.is_empty() && !name.contains('"')).then(|| IdmapFailure::Image {
        snapshotter: name.to_string(),
    })
}

fn non_empty_path(path: &str) -> Option<String> {
    let path = path.trim();
    path.starts_with('/').then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubelet's Failed Event seen on the real node (bindfs over libfuse 2, runc 1.5.3,
    /// containerd 2.4.2), from tests/real_node.rs.
    const RUNC_REAL: &str = "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: failed to fulfil mount request: failed to set MOUNT_ATTR_IDMAP on /var/lib/userns-labeler-node/kubelet/pods/0b5c6a8e-2f1d-4a57-9b53-4f4c0c6a1d2e/volumes/kubernetes.io~local-volume/rn-fuse-on-fuse: invalid argument (maybe the filesystem used doesn't support idmap mounts on this kernel?)";

    #[test]
    fn runcs_error_names_the_host_side_of_the_mount() {
        assert_eq!(
            classify(RUNC_REAL),
            Some(IdmapFailure::Volume {
                runtime: Runtime::Runc,
                path: "/var/lib/userns-labeler-node/kubelet/pods/0b5c6a8e-2f1d-4a57-9b53-4f4c0c6a1d2e/volumes/kubernetes.io~local-volume/rn-fuse-on-fuse".into(),
                side: PathSide::Source,
            })
        );
    }

    #[test]
    fn cruns_error_names_the_container_side_of_the_mount() {
        let message = "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: crun: mount_setattr `/data` (maybe the file system used doesn't support idmap mounts on this kernel?): Invalid argument: unknown";
        assert_eq!(
            classify(message),
            Some(IdmapFailure::Volume {
                runtime: Runtime::Crun,
                path: "/data".into(),
                side: PathSide::Destination,
            })
        );
    }

    #[test]
    fn containerds_snapshotter_error_is_about_the_node() {
        let message = "Error: failed to create containerd container: snapshotter \"overlayfs\" doesn't support idmap mounts on this host, configure `slow_chown` to allow a slower and expensive fallback";
        let failure = classify(message).unwrap();
        assert_eq!(
            failure,
            IdmapFailure::Image {
                snapshotter: "overlayfs".into()
            }
        );
        assert_eq!(failure.runtime(), Runtime::Containerd);
    }

    #[rstest::rstest]
    #[case::image_pull(
        "Failed to pull image \"localhost/nope:1\": rpc error: code = NotFound desc = failed to pull and unpack image"
    )]
    #[case::image_pull_error("Error: ErrImagePull")]
    #[case::oom(
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: container init was OOM-killed (memory limit too low?)"
    )]
    #[case::other_mount(
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/var/lib/kubelet/pods/x/volumes/kubernetes.io~configmap/cfg\" to rootfs at \"/etc/cfg\": mount src=/x, dst=/etc/cfg: no such file or directory"
    )]
    #[case::runc_not_einval(
        "Error: failed to set MOUNT_ATTR_IDMAP on /mnt/x: operation not permitted"
    )]
    #[case::crun_other("crun: mount_setattr `/data`: Operation not permitted")]
    #[case::truncated_runc("failed to set MOUNT_ATTR_IDMAP on ")]
    #[case::relative_path(
        "failed to set MOUNT_ATTR_IDMAP on data: invalid argument (maybe the filesystem used doesn't support idmap mounts on this kernel?)"
    )]
    #[case::empty("")]
    #[case::snapshotter_without_name("doesn't support idmap mounts on this host")]
    fn other_failures_are_not_idmap_failures(#[case] message: &str) {
        assert_eq!(classify(message), None);
    }
}
