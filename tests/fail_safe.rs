//! Fail safe under faults, end to end: the real binary as a least-privileged user, the real
//! kube-apiserver, pods sent through the API server to the binary's webhook. Each test is a
//! fault an operator can cause: a restart under an invalid or absent driver ConfigMap, a claim
//! pre-bound to a PV that does not exist yet, a cold start over many statically provisioned
//! claims.
//!
//! Tests in this binary run one at a time (each starts its own controller, and controllers with
//! different driver tables would fight over the same objects).

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually, label_of};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const LABEL: &str = "userns.io/idmap-supported";
const DECISION: &str = "userns.io/decision";
const REASON: &str = "userns.io/decision-reason";
const WAIT: Duration = Duration::from_secs(20);
const CONFIG_MAP: &str = "userns-labeler-drivers";
const COPY: &str = "userns-labeler-drivers-last-good";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A controller namespace (ConfigMap, copy, Lease), a workload namespace, and the kubeconfig of
/// the least-privileged user the binary runs as.
struct World {
    admin: Client,
    controller_ns: control_plane::TestNamespace,
    ns: control_plane::TestNamespace,
    kubeconfig: std::path::PathBuf,
}

impl World {
    async fn new(name: &str) -> World {
        control_plane::install_crypto_provider();
        let cp = control_plane::shared();
        let admin = cp.client().await;
        let controller_ns = cp.namespace("labeler").await;
        let ns = cp.namespace(name).await;
        let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
        labeler::grant_own_webhook_configuration(
            &admin,
            &format!("userns-fail-safe-{}", ns.name()),
        )
        .await;
        World {
            admin,
            controller_ns,
            ns,
            kubeconfig,
        }
    }

    /// The webhook configuration of this world (its name is granted in [`World::new`]).
    fn webhook_config(&self) -> String {
        format!("userns-fail-safe-{}", self.ns.name())
    }

    /// Starts the binary with its webhook registered for this world's namespace (the binary
    /// writes its self-signed CA into the configuration).
    async fn start(&self, identity: &str) -> Labeler {
        // A fresh configuration for each replica: its self-signed CA is written into it once
        // the configuration exists.
        self.cleanup().await;
        let config = self.webhook_config();
        let labeler = Labeler::start_with(
            USERNS_LABELER,
            &self.kubeconfig,
            &self.controller_ns,
            control_plane::shared().dir(),
            identity,
            &["--webhook-config-name", &config],
        );
        labeler
            .register_webhook(&self.admin, &config, &[&self.ns])
            .await;
        labeler
    }

    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.admin.clone(), &self.controller_ns)
    }

    fn claims(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    async fn set_table(&self, rules: &str) {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": CONFIG_MAP},
            "data": {"drivers.yaml": rules},
        }))
        .unwrap();
        let api = self.config_maps();
        match api.get_opt(CONFIG_MAP).await.unwrap() {
            None => api.create(&PostParams::default(), &cm).await.map(|_| ()),
            Some(old) => {
                let mut cm = cm;
                cm.metadata.resource_version = old.metadata.resource_version;
                api.replace(CONFIG_MAP, &PostParams::default(), &cm)
                    .await
                    .map(|_| ())
            }
        }
        .unwrap();
    }

    async fn create_claim(&self, name: &str, spec: Value, annotations: Value) {
        let mut spec = spec;
        spec["resources"] = json!({"requests": {"storage": "1Gi"}});
        spec["accessModes"] = json!(["ReadWriteOnce"]);
        let claim: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec}),
        )
        .unwrap();
        self.claims()
            .create(&PostParams::default(), &claim)
            .await
            .unwrap();
    }

    async fn wait_for_label(&self, claim: &str, expected: &str) -> PersistentVolumeClaim {
        let api = self.claims();
        eventually(&format!("claim {claim} labelled {expected}"), WAIT, || {
            let api = api.clone();
            async move {
                let c = api.get(claim).await.ok()?;
                (label_of(&c, LABEL).as_deref() == Some(expected)).then_some(c)
            }
        })
        .await
    }

    /// Creates a pod (dry run) until the webhook has answered for it; returns what the API
    /// server would persist.
    async fn admit(&self, name: &str, volumes: Value) -> Pod {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "busybox"}], "volumes": volumes},
        }))
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &self.ns);
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        eventually(&format!("pod {name} decided by the webhook"), WAIT, || {
            let (pods, pod, dry_run) = (pods.clone(), pod.clone(), dry_run.clone());
            async move {
                let created = pods.create(&dry_run, &pod).await.ok()?;
                annotation(&created, DECISION).is_some().then_some(created)
            }
        })
        .await
    }

    async fn events(&self, namespace: &str, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.admin.clone(), namespace);
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    async fn cleanup(&self) {
        let _ = Api::<MutatingWebhookConfiguration>::all(self.admin.clone())
            .delete(&self.webhook_config(), &DeleteParams::default())
            .await;
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn host_users(pod: &Pod) -> Option<bool> {
    pod.spec.as_ref()?.host_users
}

const CEPHFS_FALSE: &str = "rules:\n- driver: cephfs.csi.ceph.com\n  verdict: false\n  reason: this cluster's MDS is too old\n- driver: kubernetes.io/host-path\n  verdict: false\n  reason: node directories are NFS mounts here\n";
const BAD_REGEX: &str = "rules:\n- driverRegex: '('\n  verdict: true\n  reason: broken\n";

fn cephfs_claim() -> (Value, Value) {
    (
        json!({"storageClassName": ""}),
        json!({"volume.kubernetes.io/storage-provisioner": "cephfs.csi.ceph.com"}),
    )
}

#[tokio::test]
async fn a_restart_under_an_invalid_driver_table_keeps_the_last_good_table() {
    let _serial = SERIAL.lock().await;
    let w = World::new("invalid-restart").await;
    w.set_table(CEPHFS_FALSE).await;
    let labeler = w.start("first").await;
    let (spec, annotations) = cephfs_claim();
    w.create_claim("ceph", spec, annotations).await;
    let version = w
        .wait_for_label("ceph", "false")
        .await
        .metadata
        .resource_version;
    // The leader keeps a copy of the good table.
    eventually("the last good copy", WAIT, || async {
        let copy = w.config_maps().get_opt(COPY).await.ok()??;
        (copy.data?.get("drivers.yaml")? == CEPHFS_FALSE).then_some(())
    })
    .await;

    w.set_table(BAD_REGEX).await;
    eventually("the invalid edit seen", WAIT, || async {
        (labeler.metric(
            "userns_labeler_config_reloads_total",
            &["outcome=\"invalid\""],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    assert!(labeler.stop().success());

    let restarted = w.start("restarted").await;
    assert_eq!(
        restarted.metric(
            "userns_labeler_config_reloads_total",
            &["outcome=\"invalid\""]
        ),
        1.0,
        "the restart read the invalid ConfigMap"
    );
    eventually(
        "the restarted replica reconciled the claim",
        WAIT,
        || async {
            (restarted.metric("userns_labeler_reconciles_total", &["kind=\"claim\""]) >= 1.0)
                .then_some(())
        },
    )
    .await;
    let ceph = w.claims().get("ceph").await.unwrap();
    assert_eq!(label_of(&ceph, LABEL).as_deref(), Some("false"));
    assert_eq!(
        ceph.metadata.resource_version, version,
        "the claim was not rewritten"
    );

    let pod = w
        .admit(
            "on-ceph",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "ceph"}}]),
        )
        .await;
    assert_eq!(annotation(&pod, DECISION), Some("skipped"));
    assert_eq!(host_users(&pod), None);
    // The operator rule for inline hostPath volumes of the same table applies too.
    let pod = w
        .admit(
            "on-host-dir",
            json!([{"name": "d", "hostPath": {"path": "/mnt/nfs"}}]),
        )
        .await;
    assert_eq!(
        annotation(&pod, DECISION),
        Some("skipped"),
        "{:?}",
        pod.metadata
    );
    assert!(
        annotation(&pod, REASON).unwrap().contains("/mnt/nfs"),
        "{:?}",
        annotation(&pod, REASON)
    );
    assert_eq!(host_users(&pod), None);
    w.cleanup().await;
}

#[tokio::test]
async fn a_restart_without_the_config_map_keeps_the_last_good_copy_until_it_is_deleted() {
    let _serial = SERIAL.lock().await;
    let w = World::new("absent-restart").await;
    w.set_table(CEPHFS_FALSE).await;
    let labeler = w.start("first").await;
    let (spec, annotations) = cephfs_claim();
    w.create_claim("ceph", spec, annotations).await;
    w.wait_for_label("ceph", "false").await;
    eventually("the last good copy", WAIT, || async {
        w.config_maps().get_opt(COPY).await.ok()?.map(|_| ())
    })
    .await;
    assert!(labeler.stop().success());

    // Gone while no replica watched (e.g. a namespace clean-up by hand).
    w.config_maps()
        .delete(CONFIG_MAP, &DeleteParams::default())
        .await
        .unwrap();
    let restarted = w.start("restarted").await;
    let warning = eventually("a LastGoodDriverTableInForce warning", WAIT, || async {
        w.events(&w.controller_ns, "LastGoodDriverTableInForce")
            .await
            .into_iter()
            .find_map(|e| e.note)
    })
    .await;
    assert!(warning.contains(CONFIG_MAP), "{warning}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ceph = w.claims().get("ceph").await.unwrap();
    assert_eq!(
        label_of(&ceph, LABEL).as_deref(),
        Some("false"),
        "the copy is in force"
    );

    // Deleting the copy is the explicit reset to the built-in defaults (cephfs: true).
    w.config_maps()
        .delete(COPY, &DeleteParams::default())
        .await
        .unwrap();
    w.wait_for_label("ceph", "true").await;
    drop(restarted);
    w.cleanup().await;
}

#[tokio::test]
async fn an_invalid_table_with_no_last_good_copy_fails_closed() {
    let _serial = SERIAL.lock().await;
    let w = World::new("fail-closed").await;
    w.set_table(BAD_REGEX).await;
    let labeler = Labeler::start_unready(
        USERNS_LABELER,
        &w.kubeconfig,
        &w.controller_ns,
        control_plane::shared().dir(),
        "closed",
        &["--webhook-config-name", &w.webhook_config()],
    );
    let readyz = eventually("/readyz naming the table", WAIT, || async {
        let (status, body) = labeler.get("/readyz")?;
        (status == 503 && body.contains("no usable driver table")).then_some(body)
    })
    .await;
    assert!(readyz.contains("failing closed"), "{readyz}");
    assert_eq!(labeler.get("/livez").map(|(s, _)| s), Some(200));
    labeler
        .register_webhook(&w.admin, &w.webhook_config(), &[&w.ns])
        .await;
    let (spec, annotations) = cephfs_claim();
    w.create_claim("ceph", spec, annotations).await;
    let pod = w
        .admit("plain", json!([{"name": "tmp", "emptyDir": {}}]))
        .await;
    assert_eq!(annotation(&pod, DECISION), Some("skipped"));
    assert!(
        annotation(&pod, REASON)
            .unwrap()
            .starts_with("DriverTableInvalid: "),
        "{:?}",
        annotation(&pod, REASON)
    );
    assert_eq!(host_users(&pod), None);
    assert!(
        !w.events(&w.controller_ns, "NoUsableDriverTable")
            .await
            .is_empty()
    );
    assert_eq!(
        labeler.metric("userns_labeler_driver_table_usable", &[]),
        0.0
    );
    let ceph = w.claims().get("ceph").await.unwrap();
    assert_eq!(
        label_of(&ceph, LABEL),
        None,
        "no label is written while failing closed"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn a_claim_pre_bound_to_a_volume_created_after_its_pod_is_not_enabled() {
    let _serial = SERIAL.lock().await;
    let w = World::new("pre-bound").await;
    let labeler = w.start("pre-bound").await;
    let pv_name = format!("nfs-{}", w.ns.name());
    // Its class says EBS (true); the PV it names will be NFS.
    w.create_claim(
        "static",
        json!({"storageClassName": "", "volumeName": pv_name}),
        json!({"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}),
    )
    .await;
    let claim = w.wait_for_label("static", "unknown").await;
    let reason = claim.metadata.annotations.unwrap()["userns.io/idmap-reason"].clone();
    assert!(reason.contains(&pv_name), "{reason}");

    let pod = w
        .admit(
            "early",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "static"}}]),
        )
        .await;
    assert_eq!(annotation(&pod, DECISION), Some("skipped"));
    assert!(
        annotation(&pod, REASON)
            .unwrap()
            .starts_with("ClaimVolumeNotFound: "),
        "{:?}",
        annotation(&pod, REASON)
    );
    assert_eq!(host_users(&pod), None);

    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "nfs": {"server": "nas.example.com", "path": "/exports/a"}},
    }))
    .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(w.admin.clone());
    pvs.create(&PostParams::default(), &pv).await.unwrap();
    w.wait_for_label("static", "false").await;
    let pod = w
        .admit(
            "late",
            json!([{"name": "d", "persistentVolumeClaim": {"claimName": "static"}}]),
        )
        .await;
    assert_eq!(annotation(&pod, DECISION), Some("skipped"));
    assert_eq!(host_users(&pod), None);
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await;
    drop(labeler);
    w.cleanup().await;
}

/// A cold start over 2,000 statically provisioned claims, each bound to its PV: the controller
/// writes only once the PVs, classes and table are loaded, so each claim is written once, with
/// its final label, and no label changes (no `IdmapSupportChanged` Events).
#[tokio::test]
async fn a_cold_start_over_static_claims_writes_each_claim_once() {
    const CLAIMS: usize = 2_000;
    let _serial = SERIAL.lock().await;
    let w = World::new("cold-start").await;
    let pvs: Api<PersistentVolume> = Api::all(w.admin.clone());
    let prefix = format!("cold-{}", w.ns.name());
    let create = |i: usize| {
        let (pvs, claims, prefix, ns) = (
            pvs.clone(),
            w.claims(),
            prefix.clone(),
            w.ns.name().to_string(),
        );
        async move {
            let name = format!("{prefix}-{i}");
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"userns-test": prefix}},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "claimRef": {"namespace": ns, "name": format!("c{i}")},
                         "nfs": {"server": "nas.example.com", "path": "/exports"}},
            }))
            .unwrap();
            pvs.create(&PostParams::default(), &pv).await.unwrap();
            // The class would say EBS (true): only the PV says NFS (false).
            let claim: PersistentVolumeClaim = serde_json::from_value(json!({
                "metadata": {"name": format!("c{i}"),
                             "annotations": {"volume.kubernetes.io/storage-provisioner": "ebs.csi.aws.com"}},
                "spec": {"storageClassName": "", "volumeName": name, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "1Gi"}}},
            }))
            .unwrap();
            claims.create(&PostParams::default(), &claim).await.unwrap();
        }
    };
    use futures::StreamExt;
    futures::stream::iter(0..CLAIMS)
        .map(create)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    let labeler = w.start("cold").await;
    eventually("every claim labelled", Duration::from_secs(180), || async {
        let list = w.claims().list(&ListParams::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|c| label_of(*c, LABEL).as_deref() == Some("false"))
            .count();
        (done == CLAIMS).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = labeler.metric("userns_labeler_label_writes_total", &["kind=\"claim\""]);
    assert_eq!(writes, CLAIMS as f64, "each claim written exactly once");
    assert!(
        w.events(&w.ns, "IdmapSupportChanged").await.is_empty(),
        "no label changed after the first write"
    );
    assert_eq!(
        labeler.metric("userns_labeler_label_changes_total", &[]),
        0.0
    );
    drop(labeler);
    let _ = pvs
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("userns-test={prefix}")),
        )
        .await;
    w.cleanup().await;
}
