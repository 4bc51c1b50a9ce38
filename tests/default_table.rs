//! The built-in driver table (`config/drivers.yaml`) checked against the project's storage facts.
//!
//! Every expectation below is written from the facts (shared/reference/userns-facts.md: "By driver"
//! and "idmap support by filesystem"), not from the table, so a wrong row in the table shows up as
//! a failing case here. `every_built_in_rule_is_exercised` makes sure no row goes untested and no
//! row is shadowed by one above it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rstest::rstest;
use userns_labeler::capability::table::{AccessMode, RuleOrigin};
use userns_labeler::capability::{
    DriverTable, Snapshot, StorageQuery, Verdict, VolumeMode, resolve_claim,
};
use userns_labeler::keys::Keys;

use AccessMode::ReadWriteOncePod as RWOP;
use AccessMode::{ReadOnlyMany as ROX, ReadWriteMany as RWX, ReadWriteOnce as RWO};
use Verdict::{False as NO, True as YES, Unknown as UNKNOWN};

/// One volume as the table sees it, and what the facts say about it.
#[derive(Clone, Debug)]
struct Case {
    driver: &'static str,
    modes: Vec<AccessMode>,
    fs_type: Option<&'static str>,
    parameters: BTreeMap<String, String>,
    expected: Verdict,
    /// The minimum kernel the facts give, checked against the deciding rule when set.
    min_kernel: Option<&'static str>,
}

/// A Filesystem volume of `driver` claimed with `modes`.
fn volume(driver: &'static str, modes: &[AccessMode]) -> Case {
    Case {
        driver,
        modes: modes.to_vec(),
        fs_type: None,
        parameters: BTreeMap::new(),
        expected: UNKNOWN,
        min_kernel: None,
    }
}

impl Case {
    fn fs(mut self, fs_type: &'static str) -> Self {
        self.fs_type = Some(fs_type);
        self
    }

    fn param(mut self, key: &str, value: &str) -> Self {
        self.parameters.insert(key.to_string(), value.to_string());
        self
    }

    fn is(mut self, expected: Verdict) -> Self {
        self.expected = expected;
        self
    }

    fn since(mut self, kernel: &'static str) -> Self {
        self.min_kernel = Some(kernel);
        self
    }

    fn queries(&self) -> Vec<StorageQuery<'_>> {
        let modes: Vec<Option<AccessMode>> = if self.modes.is_empty() {
            vec![None]
        } else {
            self.modes.iter().copied().map(Some).collect()
        };
        modes
            .into_iter()
            .map(|access_mode| StorageQuery {
                driver: self.driver,
                access_mode,
                volume_mode: VolumeMode::Filesystem,
                fs_type: self.fs_type,
                parameters: &self.parameters,
                host_path: None,
            })
            .collect()
    }
}

/// Declares the cases once, as rstest cases (one named test each) and as a list for the
/// coverage check.
macro_rules! facts {
    ($($name:ident => $case:expr;)+) => {
        #[rstest]
        $(#[case::$name($case)])+
        fn default_table_agrees_with_the_facts(#[case] case: Case) {
            check(&case);
        }

        fn all_cases() -> Vec<(&'static str, Case)> {
            vec![$((stringify!($name), $case)),+]
        }
    };
}

facts! {
    // --- Longhorn: RWX and nfsOptions classes are NFS (share-manager), migratable is block,
    //     single-node volumes are ext4/xfs (medium confidence).
    longhorn_rwx_is_nfs_backed_false => volume("driver.longhorn.io", &[RWX]).is(NO);
    longhorn_rwo_plus_rwx_claim_is_false => volume("driver.longhorn.io", &[RWO, RWX]).is(NO);
    longhorn_nfs_options_class_is_false =>
        volume("driver.longhorn.io", &[RWO]).param("nfsOptions", "vers=4.1,soft").is(NO);
    longhorn_empty_nfs_options_is_still_false =>
        volume("driver.longhorn.io", &[RWO]).param("nfsOptions", "").is(NO);
    longhorn_migratable_is_block_false =>
        volume("driver.longhorn.io", &[RWO]).param("migratable", "true").is(NO);
    longhorn_migratable_off_rwo_is_true =>
        volume("driver.longhorn.io", &[RWO]).param("migratable", "false").is(YES);
    longhorn_rwo_ext4_is_true =>
        volume("driver.longhorn.io", &[RWO]).fs("ext4").is(YES).since("5.12");
    longhorn_rwop_xfs_is_true => volume("driver.longhorn.io", &[RWOP]).fs("xfs").is(YES);
    longhorn_rox_is_true => volume("driver.longhorn.io", &[ROX]).is(YES);

    // --- NFS in every form is never idmappable.
    nfs_csi_rwx_is_false => volume("nfs.csi.k8s.io", &[RWX]).is(NO);
    nfs_csi_rwo_is_still_false => volume("nfs.csi.k8s.io", &[RWO]).is(NO);
    nfs_subdir_provisioner_is_false =>
        volume("k8s-sigs.io/nfs-subdir-external-provisioner", &[RWX]).is(NO);
    nfs_subdir_helm_named_provisioner_is_false =>
        volume("cluster.local/nfs-subdir-external-provisioner", &[RWX]).is(NO);
    in_tree_nfs_is_false => volume("kubernetes.io/nfs", &[RWX]).is(NO);

    // --- Ceph: CephFS through ceph-fuse no; kernel client from 6.7 (with a Reef MDS);
    //     RBD is ext4/xfs on a block device; Ceph NFS is NFS. Rook/ODF prefix a namespace.
    cephfs_fuse_mounter_is_false =>
        volume("cephfs.csi.ceph.com", &[RWX]).param("mounter", "fuse").is(NO);
    rook_cephfs_fuse_mounter_is_false =>
        volume("rook-ceph.cephfs.csi.ceph.com", &[RWX]).param("mounter", "fuse").is(NO);
    cephfs_kernel_mounter_is_true_from_6_7 =>
        volume("cephfs.csi.ceph.com", &[RWX]).is(YES).since("6.7");
    cephfs_explicit_kernel_mounter_is_true =>
        volume("cephfs.csi.ceph.com", &[RWO]).param("mounter", "kernel").is(YES);
    odf_cephfs_kernel_mounter_is_true =>
        volume("openshift-storage.cephfs.csi.ceph.com", &[RWX]).is(YES).since("6.7");
    rbd_filesystem_is_true =>
        volume("rbd.csi.ceph.com", &[RWO]).fs("ext4").is(YES).since("5.12");
    rook_rbd_filesystem_is_true => volume("rook-ceph.rbd.csi.ceph.com", &[RWO]).fs("xfs").is(YES);
    ceph_nfs_is_false => volume("nfs.csi.ceph.com", &[RWX]).is(NO);
    rook_ceph_nfs_is_false => volume("rook-ceph.nfs.csi.ceph.com", &[RWX]).is(NO);
    in_tree_rbd_is_true => volume("kubernetes.io/rbd", &[RWO]).is(YES).since("5.12");
    in_tree_cephfs_kernel_client_is_true =>
        volume("kubernetes.io/cephfs", &[RWX]).is(YES).since("6.7");
    cephfs_lookalike_driver_is_not_matched =>
        volume("cephfs.csi.ceph.com.example.net", &[RWO]).is(UNKNOWN);

    // --- AWS: EBS is a block disk; EFS and FSx for OpenZFS are NFS, FSx for Lustre is Lustre;
    //     Mountpoint for S3 is FUSE (unknown, treated as no).
    ebs_is_true => volume("ebs.csi.aws.com", &[RWO]).fs("ext4").is(YES).since("5.12");
    in_tree_aws_ebs_is_true => volume("kubernetes.io/aws-ebs", &[RWO]).is(YES).since("5.12");
    efs_is_nfs_false => volume("efs.csi.aws.com", &[RWX]).is(NO);
    fsx_lustre_is_false => volume("fsx.csi.aws.com", &[RWX]).is(NO);
    fsx_openzfs_is_nfs_false => volume("fsx.openzfs.csi.aws.com", &[RWX]).is(NO);
    s3_mountpoint_fuse_is_unknown => volume("s3.csi.aws.com", &[RWX]).is(UNKNOWN);

    // --- Azure: Disk is a block disk; Files is SMB or NFS; Blob is blobfuse (unknown) or
    //     NFSv3 (NFS never works).
    azure_disk_is_true => volume("disk.csi.azure.com", &[RWO]).is(YES).since("5.12");
    in_tree_azure_disk_is_true => volume("kubernetes.io/azure-disk", &[RWO]).is(YES).since("5.12");
    azure_file_smb_is_false => volume("file.csi.azure.com", &[RWX]).is(NO);
    azure_file_nfs_protocol_is_false =>
        volume("file.csi.azure.com", &[RWX]).param("protocol", "nfs").is(NO);
    in_tree_azure_file_is_false => volume("kubernetes.io/azure-file", &[RWX]).is(NO);
    azure_blob_fuse_is_unknown => volume("blob.csi.azure.com", &[RWX]).is(UNKNOWN);
    azure_blob_nfs_v3_is_false =>
        volume("blob.csi.azure.com", &[RWX]).param("protocol", "nfs").is(NO);

    // --- Google Cloud: PD is a block disk; Filestore is NFS; Cloud Storage FUSE is unknown.
    gce_pd_is_true => volume("pd.csi.storage.gke.io", &[RWO]).is(YES).since("5.12");
    in_tree_gce_pd_is_true => volume("kubernetes.io/gce-pd", &[RWO]).is(YES).since("5.12");
    filestore_is_nfs_false => volume("filestore.csi.storage.gke.io", &[RWX]).is(NO);
    gcs_fuse_is_unknown => volume("gcsfuse.csi.storage.gke.io", &[RWX]).is(UNKNOWN);

    // --- Node-local storage: yes, depending on the node's filesystem (operators override).
    local_path_is_true_on_a_normal_node => volume("rancher.io/local-path", &[RWO]).is(YES);
    openebs_hostpath_is_true => volume("openebs.io/local", &[RWO]).is(YES);
    no_provisioner_local_pv_is_true => volume("kubernetes.io/no-provisioner", &[RWO]).is(YES);
    hostpath_csi_is_true => volume("hostpath.csi.k8s.io", &[RWO]).is(YES);
    in_tree_host_path_is_true => volume("kubernetes.io/host-path", &[RWO]).is(YES);
    in_tree_local_volume_is_true => volume("kubernetes.io/local-volume", &[RWO]).is(YES);

    // --- LVM: ext4/xfs on a logical volume.
    openebs_lvm_is_true => volume("local.csi.openebs.io", &[RWO]).is(YES).since("5.12");
    topolvm_is_true => volume("topolvm.io", &[RWO]).fs("xfs").is(YES).since("5.12");
    topolvm_legacy_name_is_true => volume("topolvm.cybozu.com", &[RWO]).is(YES).since("5.12");

    // --- OpenEBS ZFS: datasets need OpenZFS >= 2.2 (no kernel version); zvols carry
    //     ext4/xfs (5.12) or btrfs (5.15).
    zfs_dataset_is_true => volume("zfs.csi.openebs.io", &[RWO]).fs("zfs").is(YES);
    zfs_zvol_ext4_is_true => volume("zfs.csi.openebs.io", &[RWO]).fs("ext4").is(YES).since("5.12");
    zfs_zvol_xfs_is_true => volume("zfs.csi.openebs.io", &[RWO]).fs("xfs").is(YES).since("5.12");
    zfs_zvol_btrfs_is_true_from_5_15 =>
        volume("zfs.csi.openebs.io", &[RWO]).fs("btrfs").is(YES).since("5.15");
    zfs_without_fstype_is_true => volume("zfs.csi.openebs.io", &[RWO]).is(YES);

    // --- OpenEBS replicated engines are block devices; OpenEBS NFS is NFS.
    mayastor_is_true => volume("io.openebs.csi-mayastor", &[RWO]).is(YES).since("5.12");
    cstor_is_true => volume("cstor.csi.openebs.io", &[RWO]).is(YES).since("5.12");
    jiva_is_true => volume("jiva.csi.openebs.io", &[RWO]).is(YES).since("5.12");
    openebs_nfs_rwx_is_false => volume("openebs.io/nfsrwx", &[RWX]).is(NO);

    // --- SMB / CIFS never works.
    smb_csi_is_false => volume("smb.csi.k8s.io", &[RWX]).is(NO);

    // --- Portworx: sharedv4 or RWX is NFS; otherwise yes (unverified).
    portworx_sharedv4_is_nfs_false =>
        volume("pxd.portworx.com", &[RWO]).param("sharedv4", "true").is(NO);
    portworx_rwx_is_nfs_false => volume("pxd.portworx.com", &[RWX]).is(NO);
    portworx_rwo_is_true_unverified => volume("pxd.portworx.com", &[RWO]).is(YES).since("5.12");
    portworx_sharedv4_off_is_true =>
        volume("pxd.portworx.com", &[RWO]).param("sharedv4", "false").is(YES);
    in_tree_portworx_sharedv4_is_false =>
        volume("kubernetes.io/portworx-volume", &[RWO]).param("sharedv4", "true").is(NO);
    in_tree_portworx_rwx_is_false => volume("kubernetes.io/portworx-volume", &[RWX]).is(NO);
    in_tree_portworx_rwo_is_true => volume("kubernetes.io/portworx-volume", &[RWO]).is(YES);

    // --- NetApp Trident: ontap-nas* is NFS, ontap-san* is block, anything else is unknown.
    trident_ontap_nas_is_false =>
        volume("csi.trident.netapp.io", &[RWX]).param("backendType", "ontap-nas").is(NO);
    trident_ontap_nas_economy_is_false => volume("csi.trident.netapp.io", &[RWO])
        .param("backendType", "ontap-nas-economy")
        .is(NO);
    trident_ontap_nas_flexgroup_is_false => volume("csi.trident.netapp.io", &[RWX])
        .param("backendType", "ontap-nas-flexgroup")
        .is(NO);
    trident_ontap_san_is_true => volume("csi.trident.netapp.io", &[RWO])
        .param("backendType", "ontap-san")
        .is(YES)
        .since("5.12");
    trident_ontap_san_economy_is_true => volume("csi.trident.netapp.io", &[RWO])
        .param("backendType", "ontap-san-economy")
        .is(YES);
    trident_other_backend_is_unknown => volume("csi.trident.netapp.io", &[RWO])
        .param("backendType", "azure-netapp-files")
        .is(UNKNOWN);
    trident_without_backend_type_is_unknown =>
        volume("csi.trident.netapp.io", &[RWO]).is(UNKNOWN);
    trident_backend_type_is_matched_whole =>
        volume("csi.trident.netapp.io", &[RWO]).param("backendType", "not-ontap-san").is(UNKNOWN);

    // --- vSphere: RWX file shares and nfs fstypes are NFS; block disks with ext4/xfs are fine.
    vsphere_rwx_file_share_is_false => volume("csi.vsphere.vmware.com", &[RWX]).is(NO);
    vsphere_nfs4_fstype_is_false => volume("csi.vsphere.vmware.com", &[RWO]).fs("nfs4").is(NO);
    vsphere_nfs_fstype_is_false => volume("csi.vsphere.vmware.com", &[RWO]).fs("NFS").is(NO);
    vsphere_block_ext4_is_true =>
        volume("csi.vsphere.vmware.com", &[RWO]).fs("ext4").is(YES).since("5.12");
    vsphere_block_xfs_is_true => volume("csi.vsphere.vmware.com", &[RWO]).fs("xfs").is(YES);
    in_tree_vsphere_rwx_is_false => volume("kubernetes.io/vsphere-volume", &[RWX]).is(NO);
    in_tree_vsphere_block_is_true =>
        volume("kubernetes.io/vsphere-volume", &[RWO]).fs("ext4").is(YES);

    // --- Other block storage: ext4/xfs on a disk.
    cinder_is_true => volume("cinder.csi.openstack.org", &[RWO]).is(YES).since("5.12");
    in_tree_cinder_is_true => volume("kubernetes.io/cinder", &[RWO]).is(YES).since("5.12");
    linstor_is_true => volume("linstor.csi.linbit.com", &[RWO]).is(YES).since("5.12");
    digitalocean_is_true => volume("dobs.csi.digitalocean.com", &[RWO]).is(YES).since("5.12");
    hetzner_is_true => volume("csi.hetzner.cloud", &[RWO]).is(YES).since("5.12");
    linode_is_true => volume("linodebs.csi.linode.com", &[RWO]).is(YES).since("5.12");

    // --- Manila shares are NFS.
    manila_nfs_share_is_false => volume("nfs.manila.csi.openstack.org", &[RWX]).is(NO);
    manila_unprefixed_is_false => volume("manila.csi.openstack.org", &[RWX]).is(NO);

    // --- democratic-csi: judged by the user-chosen name.
    democratic_nfs_is_false => volume("org.democratic-csi.nfs", &[RWX]).is(NO);
    democratic_freenas_nfs_is_false => volume("org.democratic-csi.freenas-api-nfs", &[RWX]).is(NO);
    democratic_smb_is_false => volume("org.democratic-csi.smb", &[RWX]).is(NO);
    democratic_iscsi_is_true => volume("org.democratic-csi.iscsi", &[RWO]).is(YES);
    democratic_nvmeof_is_true => volume("org.democratic-csi.zfs-generic-nvmeof", &[RWO]).is(YES);
    democratic_other_name_is_unknown =>
        volume("org.democratic-csi.local-hostpath", &[RWO]).is(UNKNOWN);

    // --- Inline CSI: the secrets store is tmpfs (6.3); inline volumes have no access mode.
    secrets_store_inline_is_tmpfs_true =>
        volume("secrets-store.csi.k8s.io", &[]).is(YES).since("6.3");

    // --- Other in-tree sources.
    in_tree_iscsi_is_true => volume("kubernetes.io/iscsi", &[RWO]).is(YES).since("5.12");
    in_tree_fc_is_true => volume("kubernetes.io/fc", &[RWO]).is(YES).since("5.12");
    in_tree_glusterfs_fuse_is_false => volume("kubernetes.io/glusterfs", &[RWX]).is(NO);
    in_tree_quobyte_fuse_is_false => volume("kubernetes.io/quobyte", &[RWX]).is(NO);
    inline_image_volume_is_unknown => volume("kubernetes.io/image", &[]).is(UNKNOWN);
    inline_git_repo_is_unknown => volume("kubernetes.io/git-repo", &[]).is(UNKNOWN);
    flexvolume_is_unknown => volume("kubernetes.io/flexvolume", &[RWO]).is(UNKNOWN);
    removed_flocker_is_unknown => volume("kubernetes.io/flocker", &[RWO]).is(UNKNOWN);
    removed_scaleio_is_unknown => volume("kubernetes.io/scaleio", &[RWO]).is(UNKNOWN);
    removed_storageos_is_unknown => volume("kubernetes.io/storageos", &[RWO]).is(UNKNOWN);
    removed_photon_pd_is_unknown => volume("kubernetes.io/photon-pd", &[RWO]).is(UNKNOWN);
}

fn check(case: &Case) {
    let table = DriverTable::defaults();
    let evaluation = table.evaluate(
        case.driver,
        &case.modes,
        VolumeMode::Filesystem,
        case.fs_type,
        &case.parameters,
    );
    assert_eq!(
        evaluation.verdict, case.expected,
        "{case:?}: table says {} ({})",
        evaluation.verdict, evaluation.reason
    );
    assert!(!evaluation.reason.is_empty(), "{case:?}: empty reason");
    if let Some(kernel) = case.min_kernel {
        for query in case.queries() {
            let rule = table
                .lookup(&query)
                .unwrap_or_else(|| panic!("{case:?}: no rule for {query:?}"));
            assert_eq!(
                rule.min_kernel.as_deref(),
                Some(kernel),
                "{case:?}: rules[{}] ({}) gives the wrong minimum kernel",
                rule.index,
                rule.driver_display()
            );
        }
    }
}

/// Every built-in rule decides at least one case above: no row is untested, and no row is
/// unreachable behind a broader one.
#[test]
fn every_built_in_rule_is_exercised() {
    let table = DriverTable::defaults();
    let cases = all_cases();
    let hit: BTreeSet<usize> = cases
        .iter()
        .flat_map(|(_, case)| {
            case.queries()
                .into_iter()
                .filter_map(|q| table.lookup(&q).map(|rule| rule.index))
                .collect::<Vec<_>>()
        })
        .collect();
    let missed: Vec<String> = table
        .rules()
        .iter()
        .filter(|rule| !hit.contains(&rule.index))
        .map(|rule| format!("rules[{}] ({})", rule.index, rule.driver_display()))
        .collect();
    assert!(
        missed.is_empty(),
        "built-in rules no case reaches: {missed:?}"
    );
    assert!(
        table
            .rules()
            .iter()
            .all(|r| r.origin == RuleOrigin::BuiltIn)
    );
    assert!(
        table.rules().len() >= 40,
        "only {} rules",
        table.rules().len()
    );
}

/// Every rule carries a source note, and rows the facts mark as uncertain say so.
#[test]
fn uncertain_rows_say_so_in_their_source() {
    let table = DriverTable::defaults();
    for rule in table.rules() {
        assert!(
            rule.source.as_deref().is_some_and(|s| !s.trim().is_empty()),
            "rules[{}] ({}) has no source note",
            rule.index,
            rule.driver_display()
        );
    }
    let decided_by = |driver, mode| {
        let parameters = BTreeMap::new();
        let query = StorageQuery {
            driver,
            access_mode: Some(mode),
            volume_mode: VolumeMode::Filesystem,
            fs_type: None,
            parameters: &parameters,
            host_path: None,
        };
        table
            .lookup(&query)
            .and_then(|r| r.source.clone())
            .unwrap_or_default()
    };
    assert!(decided_by("driver.longhorn.io", RWO).contains("medium confidence"));
    assert!(decided_by("pxd.portworx.com", RWO).contains("unverified"));
}

#[rstest]
#[case::made_up_csi_driver("made-up.csi.example.com", &[RWO])]
#[case::home_grown_provisioner("example.com/nas", &[RWX])]
#[case::inline_volume_without_modes("inline.csi.example.com", &[])]
#[case::several_modes("other.example.org", &[RWO, ROX, RWX])]
fn a_driver_no_rule_matches_is_unknown(#[case] driver: &str, #[case] modes: &[AccessMode]) {
    let evaluation = DriverTable::defaults().evaluate(
        driver,
        modes,
        VolumeMode::Filesystem,
        Some("ext4"),
        &BTreeMap::new(),
    );
    assert_eq!(evaluation.verdict, UNKNOWN, "{}", evaluation.reason);
    assert!(
        evaluation.reason.contains("No rule"),
        "{}",
        evaluation.reason
    );
}

/// Block `volumeMode` is `no` for every driver, including drivers the table says `true` for.
#[rstest]
#[case::ebs("ebs.csi.aws.com")]
#[case::longhorn("driver.longhorn.io")]
#[case::rbd("rook-ceph.rbd.csi.ceph.com")]
#[case::local_path("rancher.io/local-path")]
#[case::trident_san("csi.trident.netapp.io")]
#[case::unlisted("made-up.csi.example.com")]
fn a_block_claim_is_false_for_every_driver(#[case] provisioner: &str) {
    let mut snapshot = Snapshot::default();
    snapshot.add_class(StorageClass {
        metadata: ObjectMeta {
            name: Some("block".to_string()),
            ..Default::default()
        },
        provisioner: provisioner.to_string(),
        parameters: Some(BTreeMap::from([(
            "backendType".to_string(),
            "ontap-san".to_string(),
        )])),
        ..Default::default()
    });
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("raw".to_string()),
            namespace: Some("default".to_string()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            storage_class_name: Some("block".to_string()),
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            volume_mode: Some("Block".to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let verdict = resolve_claim(
        &claim,
        &snapshot,
        &DriverTable::defaults(),
        &Keys::default(),
    );
    assert_eq!(verdict.verdict, NO, "{}", verdict.reason);
    assert_eq!(verdict.driver.as_deref(), Some(provisioner));
}
