//! Self-correction against the real kube-apiserver: the real binary, as a user bound only to
//! the chart's RBAC, reads Events recorded through the API exactly as the kubelet records them
//! (core/v1 `Failed` Warnings about a pod, with the runtime's error in the message), and turns
//! the idmap-mount errors of pods it enabled into evidence: the claim and PV labelled `false`,
//! an inline hostPath in its ConfigMap, a node labelled `false`. Expected values follow from
//! the facts (EBS volumes are idmap-mountable, so the table says `true` until a node says
//! otherwise; runc names the kubelet's host path of the volume, crun the container's mount
//! path), not from the engine's output.
//!
//! Tests in this binary run one at a time: each starts its own labeler.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Event as CoreEvent, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually, label_of};

const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const LABEL: &str = "userns.io/idmap-supported";
const EVIDENCE: &str = "userns.io/idmap-evidence";
const NODE_LABEL: &str = "userns.io/user-namespaces";
const WAIT: Duration = Duration::from_secs(30);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    admin: Client,
    controller_ns: control_plane::TestNamespace,
    ns: control_plane::TestNamespace,
    labeler: Labeler,
}

/// A labeler bound to the RBAC of the chart rendered with `set` (helm `--set` values).
async fn setup(name: &str, set: &[&str], args: &[&str]) -> Setup {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let ns = cp.namespace(name).await;
    let mut helm = std::process::Command::new(userns_labeler_test_support::tool("helm"));
    helm.args(["template", "userns-labeler"])
        .arg(userns_labeler_test_support::repo_root().join("deploy/helm/userns-labeler"))
        .args(["--namespace", &controller_ns]);
    for value in set {
        helm.args(["--set", value]);
    }
    let rendered = helm.output().expect("helm template");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    labeler::install_rbac(
        &admin,
        &controller_ns,
        &String::from_utf8_lossy(&rendered.stdout),
    )
    .await;
    let kubeconfig = cp.user_kubeconfig(labeler::USER, &[]);
    let labeler = Labeler::start_with(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        name,
        args,
    );
    Setup {
        admin,
        controller_ns,
        ns,
        labeler,
    }
}

async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {object:?}: {e}"))
}

/// A static EBS volume `<ns>-<claim>` and the claim pre-bound to it. EBS volumes are block
/// devices formatted ext4 or xfs: idmap-mountable, so the table says `true`.
async fn ebs_claim(s: &Setup, claim: &str) -> String {
    let pv_name = format!("{}-{claim}", s.ns.name());
    create(
        &Api::<PersistentVolume>::all(s.admin.clone()),
        json!({
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "claimRef": {"namespace": s.ns.name(), "name": claim},
                "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": format!("vol-{pv_name}")},
            }
        }),
    )
    .await;
    create(
        &Api::<PersistentVolumeClaim>::namespaced(s.admin.clone(), &s.ns),
        json!({
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "volumeName": pv_name, "resources": {"requests": {"storage": "1Gi"}}}
        }),
    )
    .await;
    pv_name
}

/// A pod as the webhook leaves it after enabling it (`enabled` and `hostUsers: false`), or
/// as written (`decision: None`), with `volumes` mounted in container `main` at `mounts`.
async fn pod(
    s: &Setup,
    name: &str,
    decision: Option<&str>,
    volumes: Value,
    mounts: Value,
    extra: Value,
) -> Pod {
    let mut pod = json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": "node-1",
            "containers": [{"name": "main", "image": "localhost/shell:userns-test",
                            "volumeMounts": mounts}],
            "volumes": volumes,
        }
    });
    if let Some(decision) = decision {
        pod["metadata"]["annotations"] = json!({"userns.io/decision": decision});
        if decision == "enabled" {
            pod["spec"]["hostUsers"] = json!(false);
        }
    }
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        if key == "metadata" {
            for (k, v) in value.as_object().unwrap() {
                pod["metadata"][k] = v.clone();
            }
        } else {
            pod["spec"][key] = value;
        }
    }
    create(&Api::<Pod>::namespaced(s.admin.clone(), &s.ns), pod).await
}

fn claim_volume(name: &str, claim: &str) -> Value {
    json!({"name": name, "persistentVolumeClaim": {"claimName": claim}})
}

/// The Event the kubelet records (core/v1, as its recorder does) when a container of `pod`
/// fails with `message`.
async fn kubelet_failed(s: &Setup, pod: &Pod, reason: &str, message: &str) {
    let name = pod.metadata.name.clone().unwrap();
    let now = "2026-05-01T10:00:00Z";
    create(
        &Api::<CoreEvent>::namespaced(s.admin.clone(), &s.ns),
        json!({
            "metadata": {"generateName": format!("{name}.")},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": s.ns.name(),
                "name": name, "uid": pod.metadata.uid, "fieldPath": "spec.containers{main}"},
            "reason": reason, "type": "Warning", "message": message,
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }),
    )
    .await;
}

/// runc's error for a volume (libcontainer): the kubelet's host path of the CSI volume.
fn runc_error(pod: &Pod, pv: &str) -> String {
    format!(
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: failed to fulfil mount request: failed to set MOUNT_ATTR_IDMAP on /var/lib/kubelet/pods/{}/volumes/kubernetes.io~csi/{pv}/mount: invalid argument (maybe the filesystem used doesn't support idmap mounts on this kernel?)",
        pod.metadata.uid.as_deref().unwrap()
    )
}

/// crun's error: the mount path inside the container.
fn crun_error(mount_path: &str) -> String {
    format!(
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: crun: mount_setattr `{mount_path}` (maybe the file system used doesn't support idmap mounts on this kernel?): Invalid argument: unknown"
    )
}

async fn claim_labels(s: &Setup, claim: &str) -> (Option<String>, Option<String>) {
    let c = Api::<PersistentVolumeClaim>::namespaced(s.admin.clone(), &s.ns)
        .get(claim)
        .await
        .unwrap();
    let evidence = c
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EVIDENCE).cloned());
    (label_of(&c, LABEL), evidence)
}

async fn wait_claim(s: &Setup, claim: &str, label: &str) -> Option<String> {
    eventually(&format!("claim {claim} labelled {label}"), WAIT, || async {
        let (l, evidence) = claim_labels(s, claim).await;
        (l.as_deref() == Some(label)).then_some(evidence)
    })
    .await
}

async fn volume_labels(s: &Setup, pv: &str) -> (Option<String>, Option<String>) {
    let v = Api::<PersistentVolume>::all(s.admin.clone())
        .get(pv)
        .await
        .unwrap();
    let evidence = v
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EVIDENCE).cloned());
    (label_of(&v, LABEL), evidence)
}

/// The Warning Events with `reason` about `name` in `namespace`.
async fn events_about(admin: &Client, namespace: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(admin.clone(), namespace)
        .list(&ListParams::default().fields(&format!("reason={reason},regarding.name={name}")))
        .await
        .unwrap()
        .items
}

#[tokio::test]
async fn runc_and_crun_errors_label_the_claim_their_mount_belongs_to() {
    let _serial = SERIAL.lock().await;
    let s = setup("volumes", &[], &[]).await;
    let pv_a = ebs_claim(&s, "a").await;
    let pv_b = ebs_claim(&s, "b").await;
    let pv_c = ebs_claim(&s, "c").await;
    for claim in ["a", "b", "c"] {
        assert_eq!(
            wait_claim(&s, claim, "true").await,
            None,
            "the table trusts EBS"
        );
    }

    // runc names the host side: the kubelet's directory of PV a, so claim a, not b.
    let two = pod(
        &s,
        "two-claims",
        Some("enabled"),
        json!([claim_volume("va", "a"), claim_volume("vb", "b")]),
        json!([{"name": "va", "mountPath": "/a"}, {"name": "vb", "mountPath": "/data"}]),
        json!({}),
    )
    .await;
    kubelet_failed(&s, &two, "Failed", &runc_error(&two, &pv_a)).await;
    let evidence = wait_claim(&s, "a", "false")
        .await
        .expect("evidence on claim a");
    let evidence: Value = serde_json::from_str(&evidence).expect("evidence is JSON");
    assert_eq!(evidence["pod"], format!("{}/two-claims", s.ns.name()));
    assert_eq!(evidence["node"], "node-1");
    assert_eq!(evidence["runtime"], "runc");
    assert!(
        evidence["error"]
            .as_str()
            .unwrap()
            .contains(&format!("kubernetes.io~csi/{pv_a}/mount"))
    );
    assert_eq!(volume_labels(&s, &pv_a).await.0.as_deref(), Some("false"));
    assert!(
        volume_labels(&s, &pv_a).await.1.is_some(),
        "the PV carries the evidence too"
    );

    // crun names the container side: /data in container main is claim c here.
    let crun_pod = pod(
        &s,
        "crun",
        Some("enabled"),
        json!([claim_volume("data", "c")]),
        json!([{"name": "data", "mountPath": "/data"}]),
        json!({}),
    )
    .await;
    kubelet_failed(&s, &crun_pod, "Failed", &crun_error("/data")).await;
    let evidence = wait_claim(&s, "c", "false")
        .await
        .expect("evidence on claim c");
    assert!(evidence.contains("\"runtime\":\"crun\""), "{evidence}");
    assert_eq!(volume_labels(&s, &pv_c).await.0.as_deref(), Some("false"));

    assert_eq!(
        claim_labels(&s, "b").await,
        (Some("true".into()), None),
        "claim b was not it"
    );
    assert_eq!(volume_labels(&s, &pv_b).await, (Some("true".into()), None));

    let reason = Api::<PersistentVolumeClaim>::namespaced(s.admin.clone(), &s.ns)
        .get("a")
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap()["userns.io/idmap-reason"]
        .clone();
    assert!(
        reason.contains("node node-1") && reason.contains(EVIDENCE),
        "{reason}"
    );
    let warnings = eventually("the IdmapMountFailed Event on claim a", WAIT, || async {
        let events = events_about(&s.admin, &s.ns, "a", "IdmapMountFailed").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        s.labeler.metric(
            "userns_labeler_idmap_failures_total",
            &["outcome=\"claim\"", "runtime=\"runc\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn unrelated_failures_and_pods_we_did_not_enable_change_nothing() {
    let _serial = SERIAL.lock().await;
    let s = setup("unrelated", &[], &[]).await;
    let pv = ebs_claim(&s, "data").await;
    let sentinel_pv = ebs_claim(&s, "sentinel").await;
    wait_claim(&s, "data", "true").await;
    wait_claim(&s, "sentinel", "true").await;
    let volumes = json!([claim_volume("data", "data")]);
    let mounts = json!([{"name": "data", "mountPath": "/data"}]);
    let enabled = pod(
        &s,
        "enabled",
        Some("enabled"),
        volumes.clone(),
        mounts.clone(),
        json!({}),
    )
    .await;
    // Failures that are not idmap-mount errors, of a pod we enabled.
    for message in [
        "Failed to pull image \"localhost/shell:nope\": rpc error: code = NotFound desc = failed to pull and unpack image \"localhost/shell:nope\": not found",
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: container init was OOM-killed (memory limit too low?)",
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/var/lib/kubelet/pods/x/volumes/kubernetes.io~configmap/cfg\" to rootfs at \"/etc/cfg\": no such file or directory",
        "Error: failed to set MOUNT_ATTR_IDMAP on /var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/pv/mount: operation not permitted",
    ] {
        kubelet_failed(&s, &enabled, "Failed", message).await;
    }
    // The real idmap error, for pods this webhook did not enable: written that way, skipped,
    // and enabled in the annotation only (hostUsers not false).
    let as_written = pod(
        &s,
        "as-written",
        None,
        volumes.clone(),
        mounts.clone(),
        json!({}),
    )
    .await;
    let skipped = pod(
        &s,
        "skipped",
        Some("skipped"),
        volumes.clone(),
        mounts.clone(),
        json!({}),
    )
    .await;
    let tampered = pod(
        &s,
        "tampered",
        Some("enabled"),
        volumes.clone(),
        mounts.clone(),
        json!({"hostUsers": true}),
    )
    .await;
    for p in [&as_written, &skipped, &tampered] {
        kubelet_failed(&s, p, "Failed", &runc_error(p, &pv)).await;
    }
    // A sentinel after them in the same watch: once it is labelled, all above were read.
    let sentinel = pod(
        &s,
        "sentinel",
        Some("enabled"),
        json!([claim_volume("s", "sentinel")]),
        json!([{"name": "s", "mountPath": "/s"}]),
        json!({}),
    )
    .await;
    kubelet_failed(
        &s,
        &sentinel,
        "Failed",
        &runc_error(&sentinel, &sentinel_pv),
    )
    .await;
    wait_claim(&s, "sentinel", "false").await;

    assert_eq!(claim_labels(&s, "data").await, (Some("true".into()), None));
    assert_eq!(volume_labels(&s, &pv).await, (Some("true".into()), None));
    assert!(
        events_about(&s.admin, &s.ns, "data", "IdmapMountFailed")
            .await
            .is_empty()
    );
    assert!(
        s.labeler.metric(
            "userns_labeler_failure_events_total",
            &["kind=\"unrelated\""]
        ) >= 4.0
    );
    assert!(
        s.labeler.metric(
            "userns_labeler_idmap_failures_total",
            &["outcome=\"not_enabled\""]
        ) >= 3.0
    );
    let pods = Api::<Pod>::namespaced(s.admin.clone(), &s.ns);
    assert!(
        pods.get_opt("enabled").await.unwrap().is_some(),
        "nothing deletes without the option"
    );
}

#[tokio::test]
async fn evidence_survives_reconciles_and_removing_it_gives_the_claim_back_to_the_table() {
    let _serial = SERIAL.lock().await;
    let s = setup("clearing", &[], &[]).await;
    let pv = ebs_claim(&s, "data").await;
    wait_claim(&s, "data", "true").await;
    let p = pod(
        &s,
        "p",
        Some("enabled"),
        json!([claim_volume("d", "data")]),
        json!([{"name": "d", "mountPath": "/d"}]),
        json!({}),
    )
    .await;
    kubelet_failed(&s, &p, "Failed", &runc_error(&p, &pv)).await;
    wait_claim(&s, "data", "false").await;

    // A driver ConfigMap change re-evaluates everything: the evidence stays.
    let reconciles = s.labeler.metric("userns_labeler_reconciles_total", &[]);
    create(
        &Api::<ConfigMap>::namespaced(s.admin.clone(), &s.controller_ns),
        json!({"metadata": {"name": "userns-labeler-drivers"},
               "data": {"drivers.yaml": "rules:\n- driver: nfs.example.com\n  verdict: false\n  reason: NFS\n"}}),
    )
    .await;
    eventually("a reconcile of everything", WAIT, || async {
        (s.labeler.metric("userns_labeler_reconciles_total", &[]) >= reconciles + 2.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (label, evidence) = claim_labels(&s, "data").await;
    assert_eq!(label.as_deref(), Some("false"));
    assert!(evidence.is_some(), "the reconcile kept the evidence");

    // The operator clears it on the claim and its volume (kubectl annotate … idmap-evidence-).
    let clear = json!({"metadata": {"annotations": {EVIDENCE: null}}});
    let params = PatchParams::default();
    Api::<PersistentVolumeClaim>::namespaced(s.admin.clone(), &s.ns)
        .patch("data", &params, &Patch::Merge(&clear))
        .await
        .unwrap();
    Api::<PersistentVolume>::all(s.admin.clone())
        .patch(&pv, &params, &Patch::Merge(&clear))
        .await
        .unwrap();
    assert_eq!(wait_claim(&s, "data", "true").await, None);
    eventually("the volume back to true", WAIT, || async {
        (volume_labels(&s, &pv).await == (Some("true".into()), None)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_inline_host_path_failure_is_recorded_in_the_labelers_config_map() {
    let _serial = SERIAL.lock().await;
    let s = setup("hostpath", &[], &[]).await;
    let p = pod(
        &s,
        "fuse",
        Some("enabled"),
        json!([{"name": "f", "hostPath": {"path": "/mnt/fuse"}}]),
        json!([{"name": "f", "mountPath": "/f"}]),
        json!({}),
    )
    .await;
    kubelet_failed(
        &s,
        &p,
        "Failed",
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: failed to fulfil mount request: failed to set MOUNT_ATTR_IDMAP on /mnt/fuse: invalid argument (maybe the filesystem used doesn't support idmap mounts on this kernel?)",
    )
    .await;
    let config_maps = Api::<ConfigMap>::namespaced(s.admin.clone(), &s.controller_ns);
    let entry = eventually("the hostPath evidence entry", WAIT, || async {
        let cm = config_maps
            .get_opt("userns-labeler-idmap-evidence")
            .await
            .ok()??;
        cm.data?.into_values().next()
    })
    .await;
    let entry: Value = serde_json::from_str(&entry).unwrap();
    assert_eq!(entry["path"], "/mnt/fuse");
    assert_eq!(entry["node"], "node-1");
    assert_eq!(entry["pod"], format!("{}/fuse", s.ns.name()));
    let warnings = eventually("the IdmapMountFailed Event on the pod", WAIT, || async {
        let events = events_about(&s.admin, &s.ns, "fuse", "IdmapMountFailed").await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert!(
        warnings[0]
            .note
            .as_deref()
            .unwrap()
            .contains("hostPath /mnt/fuse")
    );
}

fn node(name: &str, handlers: Value) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
           "status": {"runtimeHandlers": handlers}})
}

async fn node_label(admin: &Client, name: &str) -> (Option<String>, Option<String>) {
    let n = Api::<Node>::all(admin.clone()).get(name).await.unwrap();
    let evidence = n
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EVIDENCE).cloned());
    (label_of(&n, NODE_LABEL), evidence)
}

#[tokio::test]
async fn nodes_are_labelled_from_their_runtime_handlers_and_an_image_level_error_marks_the_node() {
    let _serial = SERIAL.lock().await;
    let s = setup("nodes", &[], &[]).await;
    let nodes = Api::<Node>::all(s.admin.clone());
    let prefix = s.ns.name().to_string();
    let (yes, no, old) = (
        format!("{prefix}-new"),
        format!("{prefix}-lacking"),
        format!("{prefix}-old"),
    );
    // What kubelet 1.37 with containerd 2.4 reports, one without support, one that says nothing.
    create(
        &nodes,
        node(
            &yes,
            json!([
        {"name": "", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}},
        {"name": "runc", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}}]),
        ),
    )
    .await;
    create(
        &nodes,
        node(
            &no,
            json!([{"name": "", "features": {"userNamespaces": false}}]),
        ),
    )
    .await;
    create(&nodes, json!({"metadata": {"name": old}})).await;
    for (name, expected) in [(&yes, "true"), (&no, "false"), (&old, "false")] {
        eventually(
            &format!("node {name} labelled {expected}"),
            WAIT,
            || async {
                (node_label(&s.admin, name).await.0.as_deref() == Some(expected)).then_some(())
            },
        )
        .await;
    }
    assert!(
        s.labeler
            .metric("userns_labeler_nodes", &["user_namespaces=\"true\""])
            >= 1.0
    );

    // containerd could not idmap the container's root filesystem on the supporting node.
    let p = pod(
        &s,
        "rootfs",
        Some("enabled"),
        json!([]),
        json!([]),
        json!({"nodeName": yes}),
    )
    .await;
    kubelet_failed(&s, &p, "Failed", "Error: failed to create containerd container: snapshotter \"overlayfs\" doesn't support idmap mounts on this host, configure `slow_chown` to allow a slower and expensive fallback").await;
    let evidence = eventually("the node labelled false with evidence", WAIT, || async {
        match node_label(&s.admin, &yes).await {
            (Some(label), Some(evidence)) if label == "false" => Some(evidence),
            _ => None,
        }
    })
    .await;
    assert!(
        evidence.contains("overlayfs") && evidence.contains("\"runtime\":\"containerd\""),
        "{evidence}"
    );
    let n = nodes.get(&yes).await.unwrap();
    let reason = &n.metadata.annotations.unwrap()["userns.io/user-namespaces-reason"];
    assert!(reason.contains(EVIDENCE), "{reason}");
    let changed = eventually(
        "the node's UserNamespaceSupportChanged Event",
        WAIT,
        || async {
            let list = Api::<Event>::all(s.admin.clone())
                .list(&ListParams::default().fields(&format!(
                    "reason=UserNamespaceSupportChanged,regarding.name={yes}"
                )))
                .await
                .ok()?;
            list.items.into_iter().next()
        },
    )
    .await;
    assert_eq!(changed.type_.as_deref(), Some("Warning"));
}

#[tokio::test]
async fn with_the_option_a_failed_pod_with_a_controller_is_deleted_and_a_bare_pod_is_not() {
    let _serial = SERIAL.lock().await;
    let s = setup(
        "deleting",
        &["controller.deleteFailedPods=true"],
        &["--delete-failed-pods"],
    )
    .await;
    let owned_pv = ebs_claim(&s, "owned").await;
    let bare_pv = ebs_claim(&s, "bare").await;
    wait_claim(&s, "owned", "true").await;
    wait_claim(&s, "bare", "true").await;
    let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "web-5d9c", "uid": "6f1c3c5e-8a9b-4c1d-9e2f-0a1b2c3d4e5f", "controller": true}]}});
    let owned = pod(
        &s,
        "web-5d9c-x",
        Some("enabled"),
        json!([claim_volume("d", "owned")]),
        json!([{"name": "d", "mountPath": "/d"}]),
        owner,
    )
    .await;
    let bare = pod(
        &s,
        "bare",
        Some("enabled"),
        json!([claim_volume("d", "bare")]),
        json!([{"name": "d", "mountPath": "/d"}]),
        json!({}),
    )
    .await;
    kubelet_failed(&s, &owned, "Failed", &runc_error(&owned, &owned_pv)).await;
    kubelet_failed(&s, &bare, "Failed", &runc_error(&bare, &bare_pv)).await;
    wait_claim(&s, "owned", "false").await;
    wait_claim(&s, "bare", "false").await;
    let pods = Api::<Pod>::namespaced(s.admin.clone(), &s.ns);
    // Without a kubelet to confirm, a deleted pod bound to a node keeps its deletionTimestamp.
    let deleting = |p: Option<Pod>| p.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
    eventually("the owned pod deleted", WAIT, || async {
        deleting(pods.get_opt("web-5d9c-x").await.ok()?).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !deleting(pods.get_opt("bare").await.unwrap()),
        "a bare pod is never deleted"
    );
    assert_eq!(
        s.labeler.metric(
            "userns_labeler_failed_pod_deletions_total",
            &["outcome=\"deleted\""]
        ),
        1.0
    );
}
