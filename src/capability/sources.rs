//! The one definition of the volume sources of each API type: which member of a pod's `Volume`
//! and of a `PersistentVolumeSpec` is a source, what it means for idmap mounts and, for in-tree
//! sources, the pseudo-driver name the driver table matches.
//!
//! The lists below are written once and expanded into every reader: the typed readers of
//! k8s-openapi's structs ([`pod_volume_source`], [`persistent_volume_source`]) and the member
//! lookup of the webhook's fast decoder ([`pod_volume_member`]). A new source is one line here;
//! the completeness tests (below and in `webhook/lean_tests.rs`) fail until it is added.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{PersistentVolumeSpec, Volume};

use super::pod::VolumeSource;
use super::resolve::{DriverSource, SourceInfo};
use super::table::Parameters;

/// Pseudo-driver names for in-tree volume sources, so the driver table can match them.
pub mod pseudo {
    pub const NFS: &str = "kubernetes.io/nfs";
    pub const HOST_PATH: &str = "kubernetes.io/host-path";
    pub const LOCAL: &str = "kubernetes.io/local-volume";
    pub const ISCSI: &str = "kubernetes.io/iscsi";
    pub const RBD: &str = "kubernetes.io/rbd";
    pub const CEPHFS: &str = "kubernetes.io/cephfs";
    pub const GLUSTERFS: &str = "kubernetes.io/glusterfs";
    pub const FC: &str = "kubernetes.io/fc";
    pub const AZURE_FILE: &str = "kubernetes.io/azure-file";
    pub const AZURE_DISK: &str = "kubernetes.io/azure-disk";
    pub const AWS_EBS: &str = "kubernetes.io/aws-ebs";
    pub const GCE_PD: &str = "kubernetes.io/gce-pd";
    pub const CINDER: &str = "kubernetes.io/cinder";
    pub const VSPHERE: &str = "kubernetes.io/vsphere-volume";
    pub const PORTWORX: &str = "kubernetes.io/portworx-volume";
    pub const FLEX: &str = "kubernetes.io/flexvolume";
    pub const FLOCKER: &str = "kubernetes.io/flocker";
    pub const QUOBYTE: &str = "kubernetes.io/quobyte";
    pub const SCALEIO: &str = "kubernetes.io/scaleio";
    pub const STORAGEOS: &str = "kubernetes.io/storageos";
    pub const PHOTON_PD: &str = "kubernetes.io/photon-pd";
    pub const IMAGE: &str = "kubernetes.io/image";
    pub const GIT_REPO: &str = "kubernetes.io/git-repo";
}

/// In-tree sources that both a pod `Volume` and a `PersistentVolumeSpec` have, in the order the
/// typed readers try them: the struct field, the JSON member, the pseudo-driver, and whether the
/// source has an `fsType` (`fs_type`) or not (`-`).
macro_rules! shared_in_tree_sources {
    ($then:ident) => {
        $then! {
            nfs, "nfs", NFS, -;
            cephfs, "cephfs", CEPHFS, -;
            glusterfs, "glusterfs", GLUSTERFS, -;
            iscsi, "iscsi", ISCSI, fs_type;
            fc, "fc", FC, fs_type;
            rbd, "rbd", RBD, fs_type;
            azure_file, "azureFile", AZURE_FILE, -;
            azure_disk, "azureDisk", AZURE_DISK, fs_type;
            aws_elastic_block_store, "awsElasticBlockStore", AWS_EBS, fs_type;
            gce_persistent_disk, "gcePersistentDisk", GCE_PD, fs_type;
            cinder, "cinder", CINDER, fs_type;
            vsphere_volume, "vsphereVolume", VSPHERE, fs_type;
            portworx_volume, "portworxVolume", PORTWORX, fs_type;
            flex_volume, "flexVolume", FLEX, fs_type;
            flocker, "flocker", FLOCKER, -;
            quobyte, "quobyte", QUOBYTE, -;
            scale_io, "scaleIO", SCALEIO, fs_type;
            storageos, "storageos", STORAGEOS, fs_type;
            photon_persistent_disk, "photonPersistentDisk", PHOTON_PD, fs_type;
        }
    };
}

/// In-tree sources only a pod `Volume` has.
macro_rules! pod_only_in_tree_sources {
    ($then:ident) => {
        $then! {
            image, "image", IMAGE, -;
            git_repo, "gitRepo", GIT_REPO, -;
        }
    };
}

/// In-tree sources only a `PersistentVolumeSpec` has (besides `hostPath` and `csi`, read
/// specially by both).
macro_rules! pv_only_in_tree_sources {
    ($then:ident) => {
        $then! {
            local, "local", LOCAL, fs_type;
        }
    };
}

/// Node-local, kubelet-managed pod volumes: the struct field and the JSON member.
macro_rules! node_local_sources {
    ($then:ident) => {
        $then! {
            config_map, "configMap";
            secret, "secret";
            projected, "projected";
            downward_api, "downwardAPI";
            empty_dir, "emptyDir";
        }
    };
}

/// The `fsType` of an in-tree source, if it has one.
macro_rules! fs_type_of {
    ($source:ident, fs_type) => {
        $source.fs_type.as_deref()
    };
    ($source:ident, -) => {{
        let _ = $source;
        None
    }};
}

macro_rules! has_fs_type {
    (fs_type) => {
        true
    };
    (-) => {
        false
    };
}

/// What a member of a pod `Volume` is, by its JSON name (the fast decoder reads by name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodMember {
    /// configMap, secret, projected, downwardAPI, emptyDir: only their presence matters.
    NodeLocal,
    /// `persistentVolumeClaim`: its `claimName`.
    Claim,
    /// `ephemeral`: its `volumeClaimTemplate`.
    Ephemeral,
    /// `hostPath`: its `path`.
    HostPath,
    /// `csi`: `driver`, `fsType`, `volumeAttributes`.
    Csi,
    /// An in-tree source under its pseudo-driver, with or without an `fsType` to read.
    InTree { driver: &'static str, fs_type: bool },
}

/// The meaning of a pod `Volume` member; `None` for `name` and for members that are no source
/// known to this version.
pub fn pod_volume_member(member: &str) -> Option<PodMember> {
    macro_rules! node_local {
        ($($field:ident, $member:literal;)*) => {
            if matches!(member, $($member)|*) {
                return Some(PodMember::NodeLocal);
            }
        };
    }
    macro_rules! in_tree {
        ($($field:ident, $member:literal, $pseudo:ident, $fs:tt;)*) => {
            match member {
                $($member => return Some(PodMember::InTree {
                    driver: pseudo::$pseudo,
                    fs_type: has_fs_type!($fs),
                }),)*
                _ => {}
            }
        };
    }
    node_local_sources!(node_local);
    shared_in_tree_sources!(in_tree);
    pod_only_in_tree_sources!(in_tree);
    match member {
        "persistentVolumeClaim" => Some(PodMember::Claim),
        "ephemeral" => Some(PodMember::Ephemeral),
        "hostPath" => Some(PodMember::HostPath),
        "csi" => Some(PodMember::Csi),
        _ => None,
    }
}

/// The source of a decoded pod volume. When a volume names several sources (the API server
/// rejects that), the first in this order counts: node-local, claim, ephemeral, hostPath, CSI,
/// then the in-tree sources in the order of the lists above.
pub fn pod_volume_source(v: &Volume) -> VolumeSource<'_> {
    macro_rules! node_local {
        ($($field:ident, $member:literal;)*) => {
            if false $(|| v.$field.is_some())* {
                return VolumeSource::NodeLocal;
            }
        };
    }
    macro_rules! in_tree {
        ($($field:ident, $member:literal, $pseudo:ident, $fs:tt;)*) => {
            $(if let Some(source) = &v.$field {
                return VolumeSource::Driver {
                    driver: Cow::Borrowed(pseudo::$pseudo),
                    fs_type: fs_type_of!(source, $fs).map(Cow::Borrowed),
                    attributes: None,
                };
            })*
        };
    }
    node_local_sources!(node_local);
    if let Some(c) = &v.persistent_volume_claim {
        return VolumeSource::Claim(Cow::Borrowed(&c.claim_name));
    }
    if let Some(e) = &v.ephemeral {
        return VolumeSource::Ephemeral(
            e.volume_claim_template
                .as_ref()
                .map(|t| Box::new(Cow::Borrowed(t))),
        );
    }
    if let Some(h) = &v.host_path {
        return VolumeSource::HostPath(Cow::Borrowed(&h.path));
    }
    if let Some(c) = &v.csi {
        return VolumeSource::Driver {
            driver: Cow::Borrowed(&c.driver),
            fs_type: c.fs_type.as_deref().map(Cow::Borrowed),
            attributes: c.volume_attributes.as_ref().map(Cow::Borrowed),
        };
    }
    shared_in_tree_sources!(in_tree);
    pod_only_in_tree_sources!(in_tree);
    VolumeSource::Unrecognized
}

/// The source of a PV: `spec.csi.driver`, or the pseudo-driver of an in-tree source (`hostPath`
/// with its path). `None` when the spec names no source this version knows.
pub(crate) fn persistent_volume_source(spec: &PersistentVolumeSpec) -> Option<SourceInfo<'_>> {
    fn in_tree<'a>(driver: &'static str, fs_type: Option<&'a str>) -> Option<SourceInfo<'a>> {
        Some(SourceInfo {
            driver: Cow::Borrowed(driver),
            origin: DriverSource::VolumeInTree,
            fs_type,
            attributes: None,
            host_path: None,
        })
    }
    macro_rules! in_tree {
        ($($field:ident, $member:literal, $pseudo:ident, $fs:tt;)*) => {
            $(if let Some(source) = &spec.$field {
                return in_tree(pseudo::$pseudo, fs_type_of!(source, $fs));
            })*
        };
    }
    if let Some(csi) = &spec.csi {
        return Some(SourceInfo {
            driver: Cow::Borrowed(csi.driver.as_str()),
            origin: DriverSource::VolumeCsi,
            fs_type: csi.fs_type.as_deref(),
            attributes: csi.volume_attributes.as_ref().map(|a| a as &dyn Parameters),
            host_path: None,
        });
    }
    if let Some(h) = &spec.host_path {
        return Some(SourceInfo {
            host_path: Some(h.path.as_str()),
            ..in_tree(pseudo::HOST_PATH, None)?
        });
    }
    pv_only_in_tree_sources!(in_tree);
    shared_in_tree_sources!(in_tree);
    None
}

/// The JSON members of `PersistentVolumeSpec` that are a volume source.
#[cfg(test)]
pub(crate) fn persistent_volume_source_members() -> Vec<&'static str> {
    macro_rules! members {
        ($($field:ident, $member:literal, $pseudo:ident, $fs:tt;)*) => {
            [$($member),*]
        };
    }
    let mut all = vec!["csi", "hostPath"];
    all.extend(pv_only_in_tree_sources!(members));
    all.extend(shared_in_tree_sources!(members));
    all
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The member names serde knows for a k8s-openapi struct (its `deserialize_struct` fields).
    pub(crate) fn decoded_members<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
        use serde::de::value::Error;
        use serde::de::{Error as _, Visitor};
        struct Capture(std::cell::Cell<&'static [&'static str]>);
        impl<'de> serde::Deserializer<'de> for &Capture {
            type Error = Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
                Err(Error::custom("only structs"))
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                _: V,
            ) -> Result<V::Value, Error> {
                self.0.set(fields);
                Err(Error::custom("captured"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
                identifier ignored_any
            }
        }
        let capture = Capture(std::cell::Cell::new(&[]));
        assert!(T::deserialize(&capture).is_err());
        capture.0.get()
    }

    /// Members of `PersistentVolumeSpec` that describe the volume, not where its data lives.
    const PV_SPEC_NON_SOURCE: [&str; 9] = [
        "accessModes",
        "capacity",
        "claimRef",
        "mountOptions",
        "nodeAffinity",
        "persistentVolumeReclaimPolicy",
        "storageClassName",
        "volumeAttributesClassName",
        "volumeMode",
    ];

    #[test]
    fn every_member_of_a_pod_volume_but_its_name_is_a_known_source() {
        let members = decoded_members::<Volume>();
        assert!(members.len() > 25, "{members:?}");
        let unknown: Vec<_> = members
            .iter()
            .filter(|m| **m != "name" && pod_volume_member(m).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "pod volume sources not listed: {unknown:?}"
        );
    }

    #[test]
    fn every_source_member_of_a_persistent_volume_spec_is_known() {
        let members = decoded_members::<PersistentVolumeSpec>();
        let known = persistent_volume_source_members();
        let unknown: Vec<_> = members
            .iter()
            .filter(|m| !PV_SPEC_NON_SOURCE.contains(m) && !known.contains(m))
            .collect();
        assert!(unknown.is_empty(), "PV sources not listed: {unknown:?}");
        let stale: Vec<_> = known.iter().filter(|m| !members.contains(m)).collect();
        assert!(stale.is_empty(), "listed but not in the API: {stale:?}");
    }

    /// Each listed in-tree source is read under its pseudo-driver by the typed readers of both
    /// API types and by the member table of the fast decoder.
    #[test]
    fn typed_readers_and_the_member_table_agree_on_every_in_tree_source() {
        macro_rules! check_pod {
            ($($field:ident, $member:literal, $pseudo:ident, $fs:tt;)*) => {$({
                let volume = Volume { $field: Some(Default::default()), ..Default::default() };
                let VolumeSource::Driver { driver, .. } = pod_volume_source(&volume) else {
                    panic!("{}: not read as a driver", $member);
                };
                assert_eq!(driver, pseudo::$pseudo, "{}", $member);
                assert_eq!(
                    pod_volume_member($member),
                    Some(PodMember::InTree { driver: pseudo::$pseudo, fs_type: has_fs_type!($fs) }),
                    "{}", $member
                );
            })*};
        }
        macro_rules! check_pv {
            ($($field:ident, $member:literal, $pseudo:ident, $fs:tt;)*) => {$({
                let spec = PersistentVolumeSpec { $field: Some(Default::default()), ..Default::default() };
                let info = persistent_volume_source(&spec).expect($member);
                assert_eq!(info.driver, pseudo::$pseudo, "{}", $member);
                assert_eq!(info.origin, DriverSource::VolumeInTree, "{}", $member);
            })*};
        }
        shared_in_tree_sources!(check_pod);
        pod_only_in_tree_sources!(check_pod);
        shared_in_tree_sources!(check_pv);
        pv_only_in_tree_sources!(check_pv);
    }
}
