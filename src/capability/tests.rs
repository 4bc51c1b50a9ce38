//! Case tables for claim/volume resolution and the pod decision.

use std::sync::LazyLock;

use rstest::rstest;
use serde_json::json;
use userns_labeler_test_support::fixtures::{self, claim, class, pod, volume};

use super::resolve::{DriverSource, forbidden_host_path};
use super::*;
use crate::keys::Keys;

/// A small table whose verdicts the cases below can state without reading the default table.
static TABLE: LazyLock<DriverTable> = LazyLock::new(|| {
    DriverTable::from_operator_yaml(
        r#"
replaceDefaults: true
rules:
- {driver: block.example.com, verdict: true, reason: block device with ext4}
- {driver: other-block.example.com, verdict: true, reason: another block driver}
- {driver: nfs.example.com, verdict: false, reason: exported over NFS}
- {driver: kubernetes.io/nfs, verdict: false, reason: in-tree NFS}
- {driver: kubernetes.io/host-path, verdict: true, reason: node filesystem}
- {driver: rwx.example.com, accessModes: [ReadWriteMany], verdict: false, reason: RWX is served over NFS}
- {driver: rwx.example.com, verdict: true, reason: RWO is a block device}
- {driver: param.example.com, parameters: [{key: share, equals: nfs}], verdict: false, reason: NFS share}
- {driver: param.example.com, fsTypes: [xfs], verdict: true, reason: xfs}
- {driver: param.example.com, verdict: unknown, reason: other fs}
"#,
        "test table",
    )
    .expect("test table is valid")
});

fn keys() -> Keys {
    Keys::default()
}

fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    s.add_class(class("block", "block.example.com").build());
    s.add_class(class("nfs", "nfs.example.com").build());
    s.add_class(class("rwx", "rwx.example.com").build());
    s.add_class(
        class("param-nfs", "param.example.com")
            .param("share", "nfs")
            .build(),
    );
    s.add_class(
        class("param-xfs", "param.example.com")
            .param("csi.storage.k8s.io/fstype", "xfs")
            .build(),
    );
    s
}

fn resolve(s: &Snapshot, c: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> VolumeVerdict {
    resolve_claim(c, s, &TABLE, &keys())
}

// ---- resolution order ---------------------------------------------------------------------

#[test]
fn bound_volume_csi_driver_beats_the_claim_annotations() {
    let mut s = snapshot();
    s.add_volume(volume("pv1").csi("block.example.com").build());
    let c = claim("ns", "c")
        .class("nfs")
        .provisioner("nfs.example.com")
        .beta_provisioner("nfs.example.com")
        .bound_to("pv1")
        .build();
    let v = resolve(&s, &c);
    assert_eq!(v.verdict, Verdict::True);
    assert_eq!(v.driver.as_deref(), Some("block.example.com"));
    assert_eq!(v.driver_source, Some(DriverSource::VolumeCsi));
}

#[test]
fn bound_volume_in_tree_source_beats_the_claim_annotations() {
    let mut s = snapshot();
    s.add_volume(volume("pv1").nfs().build());
    let c = claim("ns", "c")
        .class("")
        .provisioner("block.example.com")
        .bound_to("pv1")
        .build();
    let v = resolve(&s, &c);
    assert_eq!(v.verdict, Verdict::False);
    assert_eq!(v.driver.as_deref(), Some("kubernetes.io/nfs"));
    assert_eq!(v.driver_source, Some(DriverSource::VolumeInTree));
}

#[test]
fn current_annotation_beats_the_beta_annotation() {
    let c = claim("ns", "c")
        .class("nfs")
        .provisioner("block.example.com")
        .beta_provisioner("nfs.example.com")
        .build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(
        (v.verdict, v.driver_source),
        (Verdict::True, Some(DriverSource::ProvisionerAnnotation))
    );
}

#[test]
fn beta_annotation_alone_names_the_driver() {
    let c = claim("ns", "c")
        .class("block")
        .beta_provisioner("nfs.example.com")
        .build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(
        (v.verdict, v.driver_source),
        (
            Verdict::False,
            Some(DriverSource::BetaProvisionerAnnotation)
        )
    );
}

#[test]
fn volume_provisioned_by_annotation_beats_the_class() {
    let mut s = snapshot();
    // A volume whose source this version does not recognise, but that names its provisioner.
    s.add_volume(
        volume("pv1")
            .annotation("pv.kubernetes.io/provisioned-by", "nfs.example.com")
            .build(),
    );
    let c = claim("ns", "c").class("block").bound_to("pv1").build();
    let v = resolve(&s, &c);
    assert_eq!(
        (v.verdict, v.driver_source),
        (Verdict::False, Some(DriverSource::ProvisionedByAnnotation))
    );
}

#[test]
fn wait_for_first_consumer_claim_is_judged_by_its_class_provisioner() {
    let c = claim("ns", "c").class("nfs").build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(v.verdict, Verdict::False);
    assert_eq!(
        v.driver_source,
        Some(DriverSource::StorageClass("nfs".into()))
    );
}

#[test]
fn claim_without_class_name_takes_the_default_class() {
    let mut s = snapshot();
    s.add_class(
        class("standard", "block.example.com")
            .default_class()
            .build(),
    );
    let v = resolve(&s, &claim("ns", "c").build());
    assert_eq!(v.verdict, Verdict::True);
    assert_eq!(
        v.driver_source,
        Some(DriverSource::DefaultStorageClass("standard".into()))
    );
}

#[test]
fn newest_default_class_wins_when_several_are_marked() {
    let mut s = snapshot();
    s.add_class(
        class("old", "nfs.example.com")
            .default_class()
            .created("2024-01-01T00:00:00Z")
            .build(),
    );
    s.add_class(
        class("new", "block.example.com")
            .default_class()
            .created("2025-01-01T00:00:00Z")
            .build(),
    );
    let v = resolve(&s, &claim("ns", "c").build());
    assert_eq!(v.driver.as_deref(), Some("block.example.com"));
}

#[test]
fn empty_class_name_means_no_class_not_the_default() {
    let mut s = snapshot();
    s.add_class(
        class("standard", "block.example.com")
            .default_class()
            .build(),
    );
    let v = resolve(&s, &claim("ns", "c").class("").build());
    assert_eq!(v.verdict, Verdict::Unknown);
    assert_eq!(v.driver, None);
    assert!(v.reason.contains("storageClassName \"\""), "{}", v.reason);
}

#[test]
fn missing_default_class_leaves_the_claim_unknown() {
    let v = resolve(&snapshot(), &claim("ns", "c").build());
    assert_eq!(v.verdict, Verdict::Unknown);
    assert!(v.reason.contains("no default class"), "{}", v.reason);
}

#[test]
fn a_class_that_does_not_exist_is_named_in_the_reason() {
    let v = resolve(&snapshot(), &claim("ns", "c").class("gone").build());
    assert_eq!(v.verdict, Verdict::Unknown);
    assert!(
        v.reason.contains("StorageClass gone does not exist"),
        "{}",
        v.reason
    );
}

#[test]
fn an_unknown_driver_is_unknown() {
    let c = claim("ns", "c").provisioner("mystery.example.com").build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(v.verdict, Verdict::Unknown);
    assert_eq!(v.driver.as_deref(), Some("mystery.example.com"));
}

// ---- access modes, volume mode, parameters ------------------------------------------------

#[rstest]
#[case::rwo(&["ReadWriteOnce"], Verdict::True)]
#[case::rwx(&["ReadWriteMany"], Verdict::False)]
#[case::rwo_and_rwx_is_the_most_restrictive(&["ReadWriteOnce", "ReadWriteMany"], Verdict::False)]
#[case::rwop(&["ReadWriteOncePod"], Verdict::True)]
fn several_access_modes_take_the_most_restrictive_verdict(
    #[case] modes: &[&str],
    #[case] expected: Verdict,
) {
    let c = claim("ns", "c").class("rwx").modes(modes).build();
    assert_eq!(resolve(&snapshot(), &c).verdict, expected);
}

#[test]
fn bound_volume_access_modes_count_too() {
    let mut s = snapshot();
    s.add_volume(
        volume("pv1")
            .csi("rwx.example.com")
            .modes(&["ReadWriteMany"])
            .build(),
    );
    let c = claim("ns", "c").class("rwx").bound_to("pv1").build();
    assert_eq!(resolve(&s, &c).verdict, Verdict::False);
}

#[test]
fn block_claims_are_false_whatever_the_driver() {
    let c = claim("ns", "c").class("block").block().build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(v.verdict, Verdict::False);
    assert!(v.reason.contains("volumeMode: Block"), "{}", v.reason);
}

#[test]
fn a_block_volume_makes_its_claim_false() {
    let mut s = snapshot();
    s.add_volume(volume("pv1").csi("block.example.com").block().build());
    let c = claim("ns", "c").class("block").bound_to("pv1").build();
    assert_eq!(resolve(&s, &c).verdict, Verdict::False);
}

#[rstest]
#[case::class_parameter_selects_the_nfs_rule("param-nfs", None, Verdict::False)]
#[case::class_fstype_parameter_selects_the_xfs_rule("param-xfs", None, Verdict::True)]
#[case::volume_attributes_override_class_parameters("param-nfs", Some(("share", "block")), Verdict::Unknown)]
#[case::a_class_parameter_the_attributes_lack_still_counts("param-nfs", Some(("pool", "fast")), Verdict::False)]
fn class_parameters_and_volume_attributes_narrow_rules(
    #[case] class_name: &str,
    #[case] attribute: Option<(&str, &str)>,
    #[case] expected: Verdict,
) {
    let mut s = snapshot();
    let c = match attribute {
        Some((k, v)) => {
            s.add_volume(
                volume("pv1")
                    .csi("param.example.com")
                    .attribute(k, v)
                    .build(),
            );
            claim("ns", "c").class(class_name).bound_to("pv1").build()
        }
        None => claim("ns", "c").class(class_name).build(),
    };
    assert_eq!(resolve(&s, &c).verdict, expected);
}

// ---- operator override --------------------------------------------------------------------

#[rstest]
#[case::true_wins_over_an_nfs_driver("nfs", "true", Verdict::True)]
#[case::false_wins_over_a_block_driver("block", "false", Verdict::False)]
#[case::an_invalid_value_fails_closed("block", "yes", Verdict::Unknown)]
fn the_override_annotation_wins_and_says_so(
    #[case] class_name: &str,
    #[case] value: &str,
    #[case] expected: Verdict,
) {
    let c = claim("ns", "c")
        .class(class_name)
        .annotation("userns.io/idmap-override", value)
        .build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(v.verdict, expected);
    assert!(
        v.reason.contains("userns.io/idmap-override"),
        "{}",
        v.reason
    );
    assert!(v.driver.is_some(), "the driver is still reported");
}

#[test]
fn the_override_key_follows_the_configured_prefix() {
    let keys = Keys::new("example.org").unwrap();
    let c = claim("ns", "c")
        .class("nfs")
        .annotation("example.org/idmap-override", "true")
        .annotation("userns.io/idmap-override", "false")
        .build();
    let v = resolve_claim(&c, &snapshot(), &TABLE, &keys);
    assert_eq!(v.verdict, Verdict::True);
}

// ---- volumes --------------------------------------------------------------------------------

#[rstest]
#[case::csi(volume("pv").csi("block.example.com"), Verdict::True)]
#[case::in_tree_nfs(volume("pv").nfs(), Verdict::False)]
#[case::host_path_elsewhere(volume("pv").host_path("/srv/data"), Verdict::True)]
#[case::host_path_on_dev(volume("pv").host_path("/dev/sdb"), Verdict::False)]
#[case::block(volume("pv").csi("block.example.com").block(), Verdict::False)]
#[case::class_only(volume("pv").class("nfs"), Verdict::False)]
#[case::rwx(volume("pv").csi("rwx.example.com").modes(&["ReadWriteOnce", "ReadWriteMany"]), Verdict::False)]
#[case::override_on_volume(volume("pv").nfs().annotation("userns.io/idmap-override", "true"), Verdict::True)]
#[case::nothing_known(volume("pv"), Verdict::Unknown)]
fn volumes_are_labelled_from_their_own_spec(
    #[case] fixture: fixtures::Fixture<k8s_openapi::api::core::v1::PersistentVolume>,
    #[case] expected: Verdict,
) {
    let v = resolve_volume(&fixture.build(), &snapshot(), &TABLE, &keys());
    assert_eq!(v.verdict, expected, "{}", v.reason);
}

#[rstest]
#[case("/dev", Some("/dev"))]
#[case("/dev/ttyUSB0", Some("/dev"))]
#[case("/dev/", Some("/dev"))]
#[case("//dev//bus/usb", Some("/dev"))]
#[case("/proc/sys", Some("/proc"))]
#[case("/sys/fs/cgroup", Some("/sys"))]
#[case("/var/../dev/kmsg", Some("/dev"))]
#[case("/", Some("/"))]
#[case("/devices", None)]
#[case("/var/lib/data", None)]
#[case("/srv/proc", None)]
fn forbidden_host_paths_are_found_after_normalisation(
    #[case] path: &str,
    #[case] expected: Option<&str>,
) {
    assert_eq!(forbidden_host_path(path), expected);
}

// ---- the seed's case, against the built-in table ------------------------------------------

#[test]
fn seed_longhorn_claim_listing_rwo_and_rwx_is_false_with_the_default_table() {
    let c = claim("paperless", "paperless")
        .class("longhorn")
        .modes(&["ReadWriteOnce", "ReadWriteMany"])
        .provisioner("driver.longhorn.io")
        .beta_provisioner("driver.longhorn.io")
        .build();
    let v = resolve_claim(&c, &Snapshot::default(), &DriverTable::defaults(), &keys());
    assert_eq!(v.verdict, Verdict::False);
    let rwo = claim("paperless", "data")
        .class("longhorn")
        .provisioner("driver.longhorn.io")
        .build();
    let v = resolve_claim(
        &rwo,
        &Snapshot::default(),
        &DriverTable::defaults(),
        &keys(),
    );
    assert_eq!(v.verdict, Verdict::True);
}

// ---- pod decision ---------------------------------------------------------------------------

fn pod_view() -> Snapshot {
    let mut s = snapshot();
    s.add_claim(claim("ns", "safe").class("block").build());
    s.add_claim(claim("ns", "nfs").class("nfs").build());
    s.add_claim(
        claim("ns", "mystery")
            .provisioner("mystery.example.com")
            .build(),
    );
    s.add_claim(
        claim("ns", "pre-bound")
            .class("block")
            .set("/spec/volumeName", json!("pv-not-yet"))
            .build(),
    );
    s
}

fn decide(p: &k8s_openapi::api::core::v1::Pod) -> PodDecision {
    decide_pod(p, "ns", &pod_view(), &TABLE, &keys())
}

fn codes(d: &PodDecision) -> Vec<BlockerCode> {
    d.blockers.iter().map(|b| b.code).collect()
}

#[rstest]
#[case::plain_pod(pod("ns", "p"))]
#[case::node_local_volumes(pod("ns", "p")
    .volume(json!({"name": "a", "configMap": {"name": "cm"}}))
    .volume(json!({"name": "b", "secret": {"secretName": "s"}}))
    .volume(json!({"name": "c", "emptyDir": {}}))
    .volume(json!({"name": "d", "emptyDir": {"medium": "Memory"}}))
    .volume(json!({"name": "e", "projected": {"sources": []}}))
    .volume(json!({"name": "f", "downwardAPI": {"items": []}})))]
#[case::supported_claim(pod("ns", "p").claim_volume("data", "safe"))]
#[case::host_path_outside_dev_proc_sys(pod("ns", "p").host_path_volume("data", "/var/lib/app"))]
#[case::ids_just_inside_the_range(pod("ns", "p")
    .set("/spec/securityContext", json!({"runAsUser": 65535, "runAsGroup": 0, "fsGroup": 1000, "supplementalGroups": [65535]})))]
#[case::supported_ephemeral_volume(pod("ns", "p").volume(json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"storageClassName": "block", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}})))]
#[case::supported_inline_csi(pod("ns", "p").volume(json!({"name": "s", "csi": {"driver": "block.example.com"}})))]
#[case::explicit_false_host_namespaces(pod("ns", "p")
    .set("/spec/hostNetwork", json!(false)).set("/spec/hostPID", json!(false)).set("/spec/hostIPC", json!(false)))]
#[case::linux_pod(pod("ns", "p").set("/spec/os", json!({"name": "linux"})))]
fn pods_without_blockers_are_mutated(
    #[case] fixture: fixtures::Fixture<k8s_openapi::api::core::v1::Pod>,
) {
    let d = decide(&fixture.build());
    assert!(d.mutate(), "{:?}", d.blockers);
}

#[rstest]
#[case::host_users_true(pod("ns", "p").set("/spec/hostUsers", json!(true)), BlockerCode::HostUsersSet)]
#[case::host_users_false(pod("ns", "p").set("/spec/hostUsers", json!(false)), BlockerCode::HostUsersSet)]
#[case::host_network(pod("ns", "p").set("/spec/hostNetwork", json!(true)), BlockerCode::HostNetwork)]
#[case::host_pid(pod("ns", "p").set("/spec/hostPID", json!(true)), BlockerCode::HostPid)]
#[case::host_ipc(pod("ns", "p").set("/spec/hostIPC", json!(true)), BlockerCode::HostIpc)]
#[case::windows(pod("ns", "p").set("/spec/os", json!({"name": "windows"})), BlockerCode::WindowsPod)]
#[case::dev_host_path(pod("ns", "p").host_path_volume("zigbee", "/dev/ttyUSB0"), BlockerCode::HostPathForbidden)]
#[case::proc_host_path(pod("ns", "p").host_path_volume("p", "/proc"), BlockerCode::HostPathForbidden)]
#[case::sys_host_path(pod("ns", "p").host_path_volume("s", "/sys/fs/cgroup"), BlockerCode::HostPathForbidden)]
#[case::root_host_path(pod("ns", "p").host_path_volume("root", "/"), BlockerCode::HostPathForbidden)]
#[case::volume_devices(pod("ns", "p").set("/spec/containers/0/volumeDevices", json!([{"name": "d", "devicePath": "/dev/xvda"}])), BlockerCode::VolumeDevices)]
#[case::init_volume_devices(pod("ns", "p").set("/spec/initContainers", json!([{"name": "i", "image": "busybox", "volumeDevices": [{"name": "d", "devicePath": "/dev/xvda"}]}])), BlockerCode::VolumeDevices)]
#[case::ephemeral_volume_devices(pod("ns", "p").set("/spec/ephemeralContainers", json!([{"name": "e", "image": "busybox", "volumeDevices": [{"name": "d", "devicePath": "/dev/xvda"}]}])), BlockerCode::VolumeDevices)]
#[case::pod_run_as_user(pod("ns", "p").set("/spec/securityContext/runAsUser", json!(70000)), BlockerCode::IdOutOfRange)]
#[case::pod_run_as_group(pod("ns", "p").set("/spec/securityContext/runAsGroup", json!(65536)), BlockerCode::IdOutOfRange)]
#[case::pod_fs_group(pod("ns", "p").set("/spec/securityContext/fsGroup", json!(100000)), BlockerCode::IdOutOfRange)]
#[case::pod_supplemental_groups(pod("ns", "p").set("/spec/securityContext/supplementalGroups", json!([10, 65536])), BlockerCode::IdOutOfRange)]
#[case::container_run_as_user(pod("ns", "p").set("/spec/containers/0/securityContext/runAsUser", json!(70000)), BlockerCode::IdOutOfRange)]
#[case::init_container_run_as_group(pod("ns", "p").set("/spec/initContainers", json!([{"name": "i", "image": "busybox", "securityContext": {"runAsGroup": 70000}}])), BlockerCode::IdOutOfRange)]
#[case::resource_claims(pod("ns", "p").set("/spec/resourceClaims", json!([{"name": "gpu", "resourceClaimName": "gpu-claim"}])), BlockerCode::ResourceClaims)]
#[case::privileged(pod("ns", "p").set("/spec/containers/0/securityContext/privileged", json!(true)), BlockerCode::PrivilegedContainer)]
#[case::missing_claim(pod("ns", "p").claim_volume("data", "absent"), BlockerCode::ClaimNotFound)]
#[case::claim_pre_bound_to_a_missing_volume(pod("ns", "p").claim_volume("data", "pre-bound"), BlockerCode::ClaimVolumeNotFound)]
#[case::claim_in_another_namespace_is_missing(pod("other", "p").claim_volume("data", "safe"), BlockerCode::ClaimNotFound)]
#[case::nfs_claim(pod("ns", "p").claim_volume("data", "nfs"), BlockerCode::ClaimNotSupported)]
#[case::unknown_claim(pod("ns", "p").claim_volume("data", "mystery"), BlockerCode::ClaimSupportUnknown)]
#[case::nfs_ephemeral(pod("ns", "p").volume(json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"storageClassName": "nfs", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}})), BlockerCode::VolumeNotSupported)]
#[case::block_ephemeral(pod("ns", "p").volume(json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"storageClassName": "block", "volumeMode": "Block", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}})), BlockerCode::VolumeNotSupported)]
#[case::ephemeral_without_class(pod("ns", "p").volume(json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}})), BlockerCode::VolumeSupportUnknown)]
#[case::ephemeral_overridden_false(pod("ns", "p").volume(json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"metadata": {"annotations": {"userns.io/idmap-override": "false"}}, "spec": {"storageClassName": "block", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}})), BlockerCode::VolumeNotSupported)]
#[case::inline_nfs(pod("ns", "p").volume(json!({"name": "n", "nfs": {"server": "nas", "path": "/x"}})), BlockerCode::VolumeNotSupported)]
#[case::inline_unknown_csi(pod("ns", "p").volume(json!({"name": "n", "csi": {"driver": "mystery.example.com"}})), BlockerCode::VolumeSupportUnknown)]
#[case::unrecognized_volume_source(pod("ns", "p").volume(json!({"name": "future", "someNewSource": {}})), BlockerCode::UnrecognizedVolume)]
fn each_blocker_stops_the_mutation(
    #[case] fixture: fixtures::Fixture<k8s_openapi::api::core::v1::Pod>,
    #[case] expected: BlockerCode,
) {
    let p = fixture.build();
    let namespace = p.metadata.namespace.clone().unwrap();
    let d = decide_pod(&p, &namespace, &pod_view(), &TABLE, &keys());
    assert!(!d.mutate());
    assert_eq!(codes(&d), vec![expected], "{:?}", d.blockers);
    assert!(!d.blockers[0].message.is_empty());
}

#[test]
fn every_blocker_is_reported_not_just_the_first() {
    let p = pod("ns", "p")
        .set("/spec/hostNetwork", json!(true))
        .set("/spec/hostPID", json!(true))
        .host_path_volume("dev", "/dev/ttyUSB0")
        .claim_volume("a", "nfs")
        .claim_volume("b", "absent")
        .set("/spec/securityContext/runAsUser", json!(70000))
        .build();
    let d = decide(&p);
    assert_eq!(
        codes(&d),
        vec![
            BlockerCode::HostNetwork,
            BlockerCode::HostPid,
            BlockerCode::IdOutOfRange,
            BlockerCode::HostPathForbidden,
            BlockerCode::ClaimNotSupported,
            BlockerCode::ClaimNotFound,
        ]
    );
    let summary = d.summary();
    assert!(summary.starts_with("HostNetwork: "), "{summary}");
    assert_eq!(summary.matches("; ").count(), 5, "{summary}");
}

#[test]
fn blocker_messages_name_the_volume_and_claim() {
    let d = decide(&pod("ns", "p").claim_volume("media", "nfs").build());
    let message = &d.blockers[0].message;
    assert!(message.contains("volume media"), "{message}");
    assert!(message.contains("claim nfs"), "{message}");
    assert!(message.contains("nfs.example.com"), "{message}");
    assert!(message.contains("exported over NFS"), "{message}");
}

#[test]
fn blocker_codes_are_unique_and_stable_strings() {
    let mut names: Vec<&str> = BlockerCode::ALL.iter().map(|c| c.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), BlockerCode::ALL.len());
    assert!(
        names
            .iter()
            .all(|n| n.chars().all(|c| c.is_ascii_alphanumeric()))
    );
}

#[test]
fn the_summary_of_an_enabled_pod_counts_its_volumes() {
    let d = decide(&pod("ns", "p").claim_volume("data", "safe").build());
    assert_eq!(
        d.summary(),
        "no host namespaces or devices, and its one volume supports idmap mounts"
    );
    let d = decide(
        &pod("ns", "p")
            .claim_volume("data", "safe")
            .claim_volume("more", "safe")
            .build(),
    );
    assert_eq!(
        d.summary(),
        "no host namespaces or devices, and all 2 volumes support idmap mounts"
    );
}

#[test]
fn the_summary_joins_blockers_without_doubled_punctuation() {
    // The built-in table's reasons are sentences with their own full stop.
    let mut s = Snapshot::default();
    s.add_class(class("nfs-csi", "nfs.csi.k8s.io").build());
    s.add_claim(claim("ns", "media").class("nfs-csi").build());
    s.add_claim(claim("ns", "more").class("nfs-csi").build());
    let p = pod("ns", "p")
        .claim_volume("media", "media")
        .claim_volume("more", "more")
        .build();
    let d = decide_pod(&p, "ns", &s, &DriverTable::defaults(), &keys());
    assert_eq!(d.blockers.len(), 2);
    assert!(d.blockers.iter().all(|b| b.message.ends_with('.')));
    let summary = d.summary();
    assert!(!summary.contains(".;"), "{summary}");
    assert!(!summary.ends_with('.'), "{summary}");
    assert_eq!(
        summary.matches("; ClaimNotSupported: volume more").count(),
        1,
        "{summary}"
    );
    // The driver behind a claim blocker is kept for ranking.
    assert_eq!(d.blockers[0].driver.as_deref(), Some("nfs.csi.k8s.io"));
}

// ---- property: never mutate when a blocker applies ----------------------------------------

mod property {
    use super::*;
    use proptest::prelude::*;

    /// Pod features, each either harmless or blocking. The oracle below knows which from the
    /// facts, independently of the engine.
    #[derive(Debug, Clone)]
    struct Features {
        host_users: Option<bool>,
        host_network: Option<bool>,
        host_pid: Option<bool>,
        host_ipc: Option<bool>,
        windows: bool,
        host_path: Option<&'static str>,
        volume_devices_in: Option<&'static str>,
        run_as_user: Option<i64>,
        container_run_as_group: Option<i64>,
        supplemental: Vec<i64>,
        resource_claims: bool,
        privileged: bool,
        claims: Vec<&'static str>,
        inline_nfs: bool,
    }

    const HOST_PATHS: [&str; 7] = [
        "/var/lib/app",
        "/srv/data",
        "/dev/ttyUSB0",
        "/dev",
        "/proc/1",
        "/sys/class",
        "/",
    ];
    const CLAIMS: [&str; 4] = ["safe", "nfs", "mystery", "absent"];

    fn features() -> impl Strategy<Value = Features> {
        (
            (
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
                proptest::option::of(any::<bool>()),
                prop::bool::weighted(0.1),
            ),
            (
                proptest::option::of(proptest::sample::select(HOST_PATHS.to_vec())),
                proptest::option::weighted(
                    0.1,
                    proptest::sample::select(vec![
                        "containers",
                        "initContainers",
                        "ephemeralContainers",
                    ]),
                ),
                proptest::option::of(prop_oneof![0i64..70_000, Just(65_535), Just(65_536)]),
                proptest::option::of(prop_oneof![0i64..70_000, Just(65_536)]),
                proptest::collection::vec(prop_oneof![0i64..1000, Just(65_536)], 0..3),
            ),
            (
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.1),
                proptest::collection::vec(proptest::sample::select(CLAIMS.to_vec()), 0..4),
                prop::bool::weighted(0.1),
            ),
        )
            .prop_map(
                |((hu, hn, hp, hi, w), (path, vd, ru, rg, sg), (rc, pr, claims, nfs))| Features {
                    host_users: hu,
                    host_network: hn,
                    host_pid: hp,
                    host_ipc: hi,
                    windows: w,
                    host_path: path,
                    volume_devices_in: vd,
                    run_as_user: ru,
                    container_run_as_group: rg,
                    supplemental: sg,
                    resource_claims: rc,
                    privileged: pr,
                    claims,
                    inline_nfs: nfs,
                },
            )
    }

    fn build(f: &Features) -> k8s_openapi::api::core::v1::Pod {
        let mut p = pod("ns", "p");
        let flags = [
            ("/spec/hostUsers", f.host_users),
            ("/spec/hostNetwork", f.host_network),
            ("/spec/hostPID", f.host_pid),
            ("/spec/hostIPC", f.host_ipc),
        ];
        for (pointer, value) in flags {
            if let Some(v) = value {
                p = p.set(pointer, json!(v));
            }
        }
        if f.windows {
            p = p.set("/spec/os", json!({"name": "windows"}));
        }
        if let Some(path) = f.host_path {
            p = p.host_path_volume("host", path);
        }
        if let Some(kind) = f.volume_devices_in {
            let device = json!([{"name": "d", "devicePath": "/dev/xvdb"}]);
            p = if kind == "containers" {
                p.set("/spec/containers/0/volumeDevices", device)
            } else {
                p.set(
                    &format!("/spec/{kind}"),
                    json!([{"name": "x", "image": "busybox", "volumeDevices": device}]),
                )
            };
        }
        if let Some(id) = f.run_as_user {
            p = p.set("/spec/securityContext/runAsUser", json!(id));
        }
        if let Some(id) = f.container_run_as_group {
            p = p.set("/spec/containers/0/securityContext/runAsGroup", json!(id));
        }
        if !f.supplemental.is_empty() {
            p = p.set(
                "/spec/securityContext/supplementalGroups",
                json!(f.supplemental),
            );
        }
        if f.resource_claims {
            p = p.set(
                "/spec/resourceClaims",
                json!([{"name": "gpu", "resourceClaimName": "g"}]),
            );
        }
        if f.privileged {
            p = p.set("/spec/containers/0/securityContext/privileged", json!(true));
        }
        for (i, c) in f.claims.iter().enumerate() {
            p = p.claim_volume(&format!("claim-{i}"), c);
        }
        if f.inline_nfs {
            p = p.volume(json!({"name": "nfs", "nfs": {"server": "nas", "path": "/x"}}));
        }
        p.build()
    }

    /// The oracle: does any feature block, by the facts (not by the engine)?
    fn blocked(f: &Features) -> bool {
        f.host_users.is_some()
            || f.host_network == Some(true)
            || f.host_pid == Some(true)
            || f.host_ipc == Some(true)
            || f.windows
            || f.host_path.is_some_and(|p| {
                p == "/"
                    || ["/dev", "/proc", "/sys"]
                        .iter()
                        .any(|r| p == *r || p.starts_with(&format!("{r}/")))
            })
            || f.volume_devices_in.is_some()
            || f.run_as_user.is_some_and(|id| id >= 65_536)
            || f.container_run_as_group.is_some_and(|id| id >= 65_536)
            || f.supplemental.iter().any(|id| *id >= 65_536)
            || f.resource_claims
            || f.privileged
            || f.claims.iter().any(|c| *c != "safe")
            || f.inline_nfs
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_decision_never_mutates_when_any_blocker_applies(f in features()) {
            let d = decide(&build(&f));
            prop_assert_eq!(d.mutate(), !blocked(&f), "features {:?} gave {:?}", f, d.blockers);
        }
    }
}

#[test]
fn a_claim_pre_bound_to_a_volume_not_known_yet_is_unknown_naming_it() {
    let v = resolve(
        &snapshot(),
        &claim("ns", "c")
            .class("block")
            .set("/spec/volumeName", json!("pv-static"))
            .build(),
    );
    assert_eq!(v.verdict, Verdict::Unknown, "{v:?}");
    assert!(v.reason.contains("pv-static"), "{}", v.reason);
}

#[test]
fn a_claim_pre_bound_to_a_missing_volume_keeps_a_false_verdict_of_its_own() {
    let v = resolve(
        &snapshot(),
        &claim("ns", "c")
            .class("nfs")
            .set("/spec/volumeName", json!("pv-static"))
            .build(),
    );
    assert_eq!(v.verdict, Verdict::False, "{v:?}");
}

#[test]
fn a_pre_bound_claim_is_judged_by_its_volume_once_it_exists() {
    let mut s = snapshot();
    s.add_volume(
        volume("pv-static")
            .set("/spec/nfs", json!({"server": "nas", "path": "/x"}))
            .build(),
    );
    let c = claim("ns", "c")
        .class("block")
        .set("/spec/volumeName", json!("pv-static"))
        .build();
    assert_eq!(resolve(&s, &c).verdict, Verdict::False);
}

#[test]
fn the_override_decides_a_claim_whose_volume_is_not_known_yet() {
    let c = claim("ns", "c")
        .set("/spec/volumeName", json!("pv-static"))
        .annotation("userns.io/idmap-override", "true")
        .build();
    assert_eq!(resolve(&snapshot(), &c).verdict, Verdict::True);
    let p = pod("ns", "p").claim_volume("data", "c").build();
    let mut view = pod_view();
    view.add_claim(c);
    assert!(decide_pod(&p, "ns", &view, &TABLE, &keys()).mutate());
}

#[test]
fn an_operator_rule_for_host_path_applies_to_inline_host_path_volumes() {
    let table = DriverTable::from_operator_yaml(
        "rules:\n- {driver: kubernetes.io/host-path, verdict: false, reason: node dirs on NFS here}\n",
        "test",
    )
    .unwrap();
    let p = pod("ns", "p").host_path_volume("data", "/mnt/nfs").build();
    let d = decide_pod(&p, "ns", &pod_view(), &table, &keys());
    assert_eq!(codes(&d), vec![BlockerCode::VolumeNotSupported]);
    assert!(
        d.blockers[0].message.contains("/mnt/nfs"),
        "{:?}",
        d.blockers
    );
    assert!(
        d.blockers[0].message.contains("node dirs on NFS here"),
        "{:?}",
        d.blockers
    );
    assert!(
        decide_pod(&p, "ns", &pod_view(), &TABLE, &keys()).mutate(),
        "the default row keeps inline hostPath volumes enabled"
    );
}

#[test]
fn an_override_true_on_an_ephemeral_template_enables_its_pod() {
    let p = pod("ns", "p")
        .volume(
            json!({"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
            "metadata": {"annotations": {"userns.io/idmap-override": "true"}},
            "spec": {"storageClassName": "nfs", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}}}),
        )
        .build();
    assert!(decide(&p).mutate(), "{:?}", decide(&p).blockers);
}

#[test]
fn a_pod_with_thousands_of_blockers_has_a_bounded_summary_that_counts_the_rest() {
    let volumes: Vec<_> = (0..5_000)
        .map(|i| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": format!("missing-{i}")}}))
        .collect();
    let d = decide(&pod("ns", "p").set("/spec/volumes", json!(volumes)).build());
    assert_eq!(d.blockers.len(), 5_000);
    let summary = d.summary();
    assert!(summary.len() <= pod::MAX_SUMMARY_BYTES, "{}", summary.len());
    assert!(
        summary.starts_with("ClaimNotFound: volume v0: "),
        "{summary}"
    );
    let listed = summary.matches("ClaimNotFound: ").count();
    assert!(
        summary.ends_with(&format!("; … and {} more", 5_000 - listed)),
        "{summary}"
    );
}

#[test]
fn one_overlong_blocker_message_is_cut_within_the_bound() {
    let long = "x".repeat(5_000);
    let mut p = pod("ns", "p").host_path_volume("dev", &format!("/dev/{long}"));
    p = p.claim_volume("b", "absent");
    let summary = decide(&p.build()).summary();
    assert!(summary.len() <= pod::MAX_SUMMARY_BYTES, "{}", summary.len());
    assert!(summary.ends_with("…; … and 1 more"), "{summary}");
}

// ---- evidence from the nodes ---------------------------------------------------------------

/// What the evidence loop writes after runc refused a FUSE volume (the real node's error).
const RUNC_EVIDENCE: &str = r#"{"pod":"app/web-1","node":"node-a","time":"2026-05-01T10:00:00Z","runtime":"runc","error":"failed to set MOUNT_ATTR_IDMAP on /mnt/fuse: invalid argument (maybe the filesystem used doesn't support idmap mounts on this kernel?)"}"#;

#[test]
fn evidence_on_a_claim_wins_over_the_table_and_says_where_it_came_from() {
    let c = claim("ns", "c")
        .class("block")
        .annotation("userns.io/idmap-evidence", RUNC_EVIDENCE)
        .build();
    let v = resolve(&snapshot(), &c);
    assert_eq!(v.verdict, Verdict::False, "the table says true for block");
    assert_eq!(
        v.driver.as_deref(),
        Some("block.example.com"),
        "the driver stays"
    );
    for part in [
        "node node-a",
        "pod app/web-1",
        "runc",
        "MOUNT_ATTR_IDMAP",
        "userns.io/idmap-evidence",
    ] {
        assert!(v.reason.contains(part), "{part}: {}", v.reason);
    }
}

#[test]
fn evidence_on_the_bound_volume_makes_its_claim_false_naming_the_volume() {
    let mut s = snapshot();
    s.add_volume(
        volume("pv1")
            .csi("block.example.com")
            .annotation("userns.io/idmap-evidence", RUNC_EVIDENCE)
            .build(),
    );
    let c = claim("ns", "c").bound_to("pv1").build();
    let v = resolve(&s, &c);
    assert_eq!(v.verdict, Verdict::False);
    assert!(
        v.reason.contains("its PersistentVolume pv1"),
        "{}",
        v.reason
    );
    let pv = s.volume("pv1").unwrap();
    assert_eq!(
        resolve_volume(pv.as_ref(), &s, &TABLE, &keys()).verdict,
        Verdict::False
    );
}

#[test]
fn the_override_wins_over_evidence() {
    let c = claim("ns", "c")
        .class("block")
        .annotation("userns.io/idmap-evidence", RUNC_EVIDENCE)
        .annotation("userns.io/idmap-override", "true")
        .build();
    assert_eq!(resolve(&snapshot(), &c).verdict, Verdict::True);
}

#[test]
fn empty_evidence_is_no_evidence_and_hand_written_evidence_counts() {
    let empty = claim("ns", "c")
        .class("block")
        .annotation("userns.io/idmap-evidence", " ")
        .build();
    assert_eq!(resolve(&snapshot(), &empty).verdict, Verdict::True);
    let by_hand = claim("ns", "c")
        .class("block")
        .annotation("userns.io/idmap-evidence", "fails on our FUSE nodes")
        .build();
    let v = resolve(&snapshot(), &by_hand);
    assert_eq!(v.verdict, Verdict::False);
    assert!(v.reason.contains("fails on our FUSE nodes"), "{}", v.reason);
}

/// A view with hostPath evidence for `/mnt/fuse`.
struct WithFuseEvidence(Snapshot);

impl ClusterView for WithFuseEvidence {
    fn claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<std::sync::Arc<crate::capability::PrunedClaim>> {
        self.0.claim(ns, name)
    }
    fn volume(&self, name: &str) -> Option<std::sync::Arc<crate::capability::PrunedVolume>> {
        self.0.volume(name)
    }
    fn storage_class(&self, name: &str) -> Option<std::sync::Arc<crate::capability::PrunedClass>> {
        self.0.storage_class(name)
    }
    fn default_storage_class(&self) -> Option<std::sync::Arc<crate::capability::PrunedClass>> {
        self.0.default_storage_class()
    }
    fn host_path_evidence(&self, path: &str) -> Option<Evidence> {
        let mut evidence = Evidence::parse(RUNC_EVIDENCE).unwrap();
        evidence.path = Some("/mnt/fuse".into());
        let data = [(evidence::host_path_key("/mnt/fuse"), evidence.to_json())].into();
        HostPathEvidence::from_data(&data).lookup(path).cloned()
    }
}

#[rstest]
#[case::the_path("/mnt/fuse", true)]
#[case::below_it("/mnt/fuse/sub", true)]
#[case::a_sibling("/mnt/fuse2", false)]
#[case::elsewhere("/srv/data", false)]
fn a_host_path_with_evidence_is_skipped_naming_it(#[case] path: &str, #[case] skipped: bool) {
    let p = pod("ns", "p").host_path_volume("data", path).build();
    let d = decide_pod(&p, "ns", &WithFuseEvidence(pod_view()), &TABLE, &keys());
    if !skipped {
        assert!(d.mutate(), "{:?}", d.blockers);
        return;
    }
    assert_eq!(codes(&d), vec![BlockerCode::VolumeNotSupported]);
    let message = &d.blockers[0].message;
    for part in [
        &format!("hostPath {path}"),
        "node node-a",
        "pod app/web-1",
        "MOUNT_ATTR_IDMAP",
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
}

#[test]
fn the_decision_reads_the_pods_node_name_and_node_affinity() {
    use super::pod::{PodFacts, RequiredNodeAffinity};
    let p = pod("ns", "p")
        .set("/spec/nodeName", json!("node-a"))
        .set(
            "/spec/affinity",
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": []}, {"matchFields": []}]}}}),
        )
        .build();
    let facts = PodFacts::of(&p);
    let spec = facts.spec.unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("node-a"));
    assert_eq!(
        spec.node_affinity,
        RequiredNodeAffinity::Terms(vec![true, false])
    );
    let plain = pod("ns", "p").build();
    assert_eq!(
        PodFacts::of(&plain).spec.unwrap().node_affinity,
        RequiredNodeAffinity::NoAffinity
    );
}
