//! The labelling controller end to end: the real binary, as a least-privileged user, against the
//! real kube-apiserver. Expected labels follow from the storage facts (NFS false, EBS true, …),
//! not from the engine's output.
//!
//! Tests in this binary run one at a time (each starts its own controller; two controllers with
//! different driver tables would fight over the same claims).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const LABEL: &str = "userns.io/idmap-supported";
const REASON: &str = "userns.io/idmap-reason";
const DRIVER: &str = "userns.io/driver";
const WAIT: Duration = Duration::from_secs(15);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One controller for one test, with its own namespace for the ConfigMap and Lease.
struct Setup {
    admin: Client,
    controller_ns: control_plane::TestNamespace,
    ns: control_plane::TestNamespace,
    labeler: Labeler,
}

async fn setup(name: &str) -> Setup {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let ns = cp.namespace(name).await;
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let labeler = Labeler::start(USERNS_LABELER, &kubeconfig, &controller_ns, cp.dir(), name);
    Setup {
        admin,
        controller_ns,
        ns,
        labeler,
    }
}

fn claims(s: &Setup) -> Api<PersistentVolumeClaim> {
    Api::namespaced(s.admin.clone(), &s.ns)
}

async fn create_claim(s: &Setup, claim: serde_json::Value) {
    let claim: PersistentVolumeClaim = serde_json::from_value(claim).unwrap();
    claims(s)
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
}

async fn create_class(admin: &Client, class: serde_json::Value) {
    let class: StorageClass = serde_json::from_value(class).unwrap();
    Api::<StorageClass>::all(admin.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
}

fn claim(name: &str, spec: serde_json::Value, annotations: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["resources"] = json!({"requests": {"storage": "1Gi"}});
    if spec.get("accessModes").is_none() {
        spec["accessModes"] = json!(["ReadWriteOnce"]);
    }
    json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec})
}

/// Waits until the claim carries `expected`; returns its label, reason and driver annotations.
async fn wait_for_claim_label(s: &Setup, name: &str, expected: &str) -> BTreeMap<String, String> {
    let api = claims(s);
    eventually(&format!("claim {name} labelled {expected}"), WAIT, || {
        let api = api.clone();
        async move {
            let claim = api.get(name).await.ok()?;
            let labels = claim.metadata.labels.clone().unwrap_or_default();
            (labels.get(LABEL).map(String::as_str) == Some(expected)).then(|| {
                let mut out = claim.metadata.annotations.clone().unwrap_or_default();
                out.insert(LABEL.into(), expected.into());
                out
            })
        }
    })
    .await
}

fn unique(prefix: &str, ns: &str) -> String {
    format!("{prefix}-{ns}")
}

#[tokio::test]
async fn claims_are_labelled_through_every_resolution_path() {
    let _serial = SERIAL.lock().await;
    let s = setup("paths").await;

    // The current annotation alone (no class).
    create_claim(
        &s,
        claim(
            "current-annotation",
            json!({"storageClassName": ""}),
            json!({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}),
        ),
    )
    .await;
    // Only the beta annotation, as on old clusters: Longhorn RWX is served over NFS.
    create_claim(
        &s,
        claim(
            "beta-annotation",
            json!({"storageClassName": "", "accessModes": ["ReadWriteMany"]}),
            json!({"volume.beta.kubernetes.io/storage-provisioner": "driver.longhorn.io"}),
        ),
    )
    .await;
    // A block claim of a driver that is otherwise fine.
    create_claim(
        &s,
        claim(
            "block",
            json!({"storageClassName": "", "volumeMode": "Block"}),
            json!({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}),
        ),
    )
    .await;
    // The operator's override on an NFS claim.
    create_claim(
        &s,
        claim(
            "overridden",
            json!({"storageClassName": ""}),
            json!({"volume.kubernetes.io/storage-provisioner": "nfs.csi.k8s.io", "userns.io/idmap-override": "true"}),
        ),
    )
    .await;

    let current = wait_for_claim_label(&s, "current-annotation", "true").await;
    assert_eq!(current[DRIVER], "ebs.csi.aws.com");
    let beta = wait_for_claim_label(&s, "beta-annotation", "false").await;
    assert!(beta[REASON].contains("NFS"), "{}", beta[REASON]);
    let block = wait_for_claim_label(&s, "block", "false").await;
    assert!(block[REASON].contains("Block"), "{}", block[REASON]);
    let overridden = wait_for_claim_label(&s, "overridden", "true").await;
    assert!(overridden[REASON].contains("userns.io/idmap-override"));
}

#[tokio::test]
async fn a_static_volume_labels_its_claim_and_itself_from_its_csi_driver() {
    let _serial = SERIAL.lock().await;
    let s = setup("static").await;
    let pv_name = unique("nfs-static", &s.ns);
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "csi": {"driver": "nfs.csi.k8s.io", "volumeHandle": "nas#export", "volumeAttributes": {"server": "nas", "share": "/export"}},
            "claimRef": {"namespace": s.ns.name(), "name": "static"}
        }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(s.admin.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    create_claim(
        &s,
        claim(
            "static",
            json!({"storageClassName": "", "volumeName": pv_name}),
            json!({}),
        ),
    )
    .await;
    let labels = wait_for_claim_label(&s, "static", "false").await;
    assert_eq!(labels[DRIVER], "nfs.csi.k8s.io");

    let volumes: Api<PersistentVolume> = Api::all(s.admin.clone());
    eventually("the PV labelled false", WAIT, || {
        let volumes = volumes.clone();
        let pv_name = pv_name.clone();
        async move {
            let pv = volumes.get(&pv_name).await.ok()?;
            (pv.metadata.labels?.get(LABEL)? == "false").then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_wait_for_first_consumer_claim_is_labelled_from_its_class_then_relabelled_when_bound() {
    let _serial = SERIAL.lock().await;
    let s = setup("wffc").await;
    let class = unique("gp3", &s.ns);
    create_class(
        &s.admin,
        json!({"metadata": {"name": class}, "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"}),
    )
    .await;
    create_claim(
        &s,
        claim("data", json!({"storageClassName": class}), json!({})),
    )
    .await;
    let labels = wait_for_claim_label(&s, "data", "true").await;
    assert_eq!(labels[DRIVER], "ebs.csi.aws.com");

    // It binds to a volume of another driver (NFS): the label follows the volume.
    let pv_name = unique("bound-nfs", &s.ns);
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "nfs": {"server": "nas", "path": "/export"},
            "claimRef": {"namespace": s.ns.name(), "name": "data"}
        }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(s.admin.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    claims(&s)
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"volumeName": pv_name}})),
        )
        .await
        .unwrap();
    let labels = wait_for_claim_label(&s, "data", "false").await;
    assert_eq!(labels[DRIVER], "kubernetes.io/nfs");

    // The change is announced by an Event on the claim.
    let events: Api<Event> = Api::namespaced(s.admin.clone(), &s.ns);
    let note = eventually("an IdmapSupportChanged event", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("IdmapSupportChanged"))
                .and_then(|e| e.note)
        }
    })
    .await;
    assert!(note.contains("from true to false"), "{note}");
}

#[tokio::test]
async fn a_claim_without_a_class_is_labelled_from_the_default_class() {
    let _serial = SERIAL.lock().await;
    let s = setup("default-class").await;
    let class = unique("standard", &s.ns);
    create_class(
        &s.admin,
        json!({
            "metadata": {"name": class, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": "nfs.csi.k8s.io"
        }),
    )
    .await;
    create_claim(&s, claim("defaulted", json!({}), json!({}))).await;
    let labels = wait_for_claim_label(&s, "defaulted", "false").await;
    assert_eq!(labels[DRIVER], "nfs.csi.k8s.io");
    // Leave no default class behind for other tests.
    Api::<StorageClass>::all(s.admin.clone())
        .delete(&class, &Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tampered_label_is_restored() {
    let _serial = SERIAL.lock().await;
    let s = setup("tamper").await;
    create_claim(
        &s,
        claim(
            "nfs",
            json!({"storageClassName": ""}),
            json!({"volume.kubernetes.io/storage-provisioner": "nfs.csi.k8s.io"}),
        ),
    )
    .await;
    wait_for_claim_label(&s, "nfs", "false").await;
    claims(&s)
        .patch(
            "nfs",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {LABEL: "true"}}})),
        )
        .await
        .unwrap();
    // The edit lands, then is reverted.
    wait_for_claim_label(&s, "nfs", "false").await;
    let claim = claims(&s).get("nfs").await.unwrap();
    assert_eq!(claim.metadata.labels.unwrap()[LABEL], "false");
}

#[tokio::test]
async fn a_config_map_edit_relabels_exactly_the_affected_claims_and_an_invalid_edit_changes_nothing()
 {
    let _serial = SERIAL.lock().await;
    let s = setup("configmap").await;
    for (name, driver) in [("a", "a.example.com"), ("b", "b.example.com")] {
        create_claim(
            &s,
            claim(
                name,
                json!({"storageClassName": ""}),
                json!({"volume.kubernetes.io/storage-provisioner": driver}),
            ),
        )
        .await;
    }
    wait_for_claim_label(&s, "a", "unknown").await;
    wait_for_claim_label(&s, "b", "unknown").await;
    let b_version = claims(&s).get("b").await.unwrap().metadata.resource_version;

    let config_maps: Api<ConfigMap> = Api::namespaced(s.admin.clone(), &s.controller_ns);
    let config_map = |table: &str| -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": "userns-labeler-drivers"},
            "data": {"drivers.yaml": table}
        }))
        .unwrap()
    };
    config_maps
        .create(
            &PostParams::default(),
            &config_map("rules:\n- driver: a.example.com\n  verdict: true\n  reason: Our block storage, checked by us.\n"),
        )
        .await
        .unwrap();
    let a = wait_for_claim_label(&s, "a", "true").await;
    assert_eq!(a[REASON], "Our block storage, checked by us.");
    let b = claims(&s).get("b").await.unwrap();
    assert_eq!(
        b.metadata.resource_version, b_version,
        "claim b was not rewritten"
    );

    // An invalid edit: the last good table stays, nothing is relabelled, a Warning Event says why.
    let a_version = claims(&s).get("a").await.unwrap().metadata.resource_version;
    config_maps
        .replace(
            "userns-labeler-drivers",
            &PostParams::default(),
            &config_map(
                "rules:\n- driverRegex: 'a.example.com('\n  verdict: false\n  reason: broken\n",
            ),
        )
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(s.admin.clone(), &s.controller_ns);
    let note = eventually("an InvalidDriverTable warning", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("InvalidDriverTable")
                        && e.type_.as_deref() == Some("Warning")
                })
                .and_then(|e| e.note)
        }
    })
    .await;
    assert!(
        note.contains("rules[0]") && note.contains("driverRegex"),
        "{note}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a = claims(&s).get("a").await.unwrap();
    assert_eq!(
        a.metadata.resource_version, a_version,
        "claim a was not rewritten"
    );
    assert_eq!(a.metadata.labels.unwrap()[LABEL], "true");
    assert_eq!(
        s.labeler.metric(
            "userns_labeler_config_reloads_total",
            &["outcome=\"invalid\""]
        ),
        1.0
    );

    // Deleting the ConfigMap brings back the built-in defaults.
    config_maps
        .delete("userns-labeler-drivers", &Default::default())
        .await
        .unwrap();
    wait_for_claim_label(&s, "a", "unknown").await;
}

#[tokio::test]
async fn a_restart_of_a_correctly_labelled_cluster_writes_nothing() {
    let _serial = SERIAL.lock().await;
    let s = setup("restart").await;
    create_claim(
        &s,
        claim(
            "ebs",
            json!({"storageClassName": ""}),
            json!({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}),
        ),
    )
    .await;
    wait_for_claim_label(&s, "ebs", "true").await;
    let version = claims(&s)
        .get("ebs")
        .await
        .unwrap()
        .metadata
        .resource_version;
    let Setup {
        admin,
        controller_ns,
        ns,
        labeler,
    } = s;
    assert!(labeler.stop().success(), "graceful exit on SIGTERM");

    let cp = control_plane::shared();
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let restarted = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "restarted",
    );
    // Give it time to reconcile everything it has cached.
    eventually("every cached claim reconciled", WAIT, || async {
        (restarted.metric("userns_labeler_reconciles_total", &["kind=\"claim\""]) >= 1.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), &ns)
        .get("ebs")
        .await
        .unwrap();
    assert_eq!(after.metadata.resource_version, version);
    assert_eq!(
        restarted.metric("userns_labeler_label_writes_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn with_two_replicas_only_the_lease_holder_writes() {
    let _serial = SERIAL.lock().await;
    let s = setup("replicas").await;
    let cp = control_plane::shared();
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &s.admin, &s.controller_ns).await;
    let second = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &s.controller_ns,
        cp.dir(),
        "second-replica",
    );
    // Both are ready (caches warm, webhook served); the first started holds the lease.
    create_claim(
        &s,
        claim(
            "shared",
            json!({"storageClassName": ""}),
            json!({"volume.kubernetes.io/storage-provisioner": "nfs.csi.k8s.io"}),
        ),
    )
    .await;
    wait_for_claim_label(&s, "shared", "false").await;
    assert!(s.labeler.log_text().contains("is_leader=true"));
    assert!(!second.log_text().contains("is_leader=true"));
    assert_eq!(
        second.metric("userns_labeler_label_writes_total", &[]),
        0.0,
        "the standby replica wrote"
    );
    assert!(s.labeler.metric("userns_labeler_label_writes_total", &[]) >= 1.0);
    assert!(second.metric("userns_labeler_reconciles_total", &["kind=\"claim\""]) >= 1.0);

    // The leader stops gracefully and releases the lease: the standby takes over and writes.
    let Setup { labeler, .. } = s;
    assert!(labeler.stop().success());
    eventually(
        "the standby to become leader",
        Duration::from_secs(30),
        || async { second.log_text().contains("is_leader=true").then_some(()) },
    )
    .await;
}
