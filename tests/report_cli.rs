//! `userns-labeler report` against the real kube-apiserver: `examples/` applied, plus workloads
//! generated here with their owner chains (Deployment → ReplicaSet → Pod, CronJob → Job → Pod,
//! StatefulSet → Pod, a custom resource → Pod), pods already annotated by a webhook, and nodes
//! with and without user-namespace support.
//!
//! Every figure is checked against expectations written from the facts: the examples' decisions
//! as `examples/README.md` reasons them, the generated objects' as they are built below. The
//! summary, the blocker ranking, the claim and node counts are computed from those tables, not
//! copied from the report.
//!
//! The report runs as a user bound only to `deploy/report/rbac.yaml`, and the API server's audit
//! log shows that it made get and list calls only. The HTML report is opened in headless
//! Chromium (installed by `scripts/install-browser.sh`; the test fails, never skips, without
//! it), and `kubectl userns` runs it as a kubectl plugin.
//!
//! One control plane (with an audit log) for this binary; the tests take turns, since a report
//! over all namespaces sees every test's objects.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane::ControlPlane;
use userns_labeler_test_support::{free_port, repo_root};

const BINARY: &str = env!("CARGO_BIN_EXE_userns-labeler");
const READER: &str = "report-reader";

/// The control plane of this binary, with an audit log.
fn cp() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| ControlPlane::builder().audit_log(true).start())
}

/// One test at a time: a report over all namespaces sees every test's objects.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates any object from its JSON, finding its resource from apiVersion and kind.
async fn create(client: &Client, object: Value) -> DynamicObject {
    let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap().to_string(),
        ),
    };
    let kind = object["kind"].as_str().unwrap().to_string();
    let plural = match kind.as_str() {
        "StorageClass" => "storageclasses".to_string(),
        "PersistentVolume" | "PersistentVolumeClaim" => format!("{}s", kind.to_lowercase()),
        other => format!("{}s", other.to_lowercase()),
    };
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(&group, &version, &kind), &plural);
    let namespaced = !matches!(
        kind.as_str(),
        "Namespace"
            | "PersistentVolume"
            | "StorageClass"
            | "Node"
            | "ClusterRole"
            | "ClusterRoleBinding"
    );
    let api: Api<DynamicObject> = if namespaced {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        Api::namespaced_with(client.clone(), &ns, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {kind} {}: {e}", object.name_any()))
}

/// Every object of `examples/`, Lists expanded, pods given the `default` service account (the
/// test API server runs without the ServiceAccount admission plugin that would set it).
fn example_objects() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            match document["items"].as_array() {
                Some(items) => objects.extend(items.iter().cloned()),
                None if !document.is_null() => objects.push(document),
                None => {}
            }
        }
    }
    for object in &mut objects {
        if object["kind"] == "Pod" && object["spec"]["serviceAccountName"].is_null() {
            object["spec"]["serviceAccountName"] = json!("default");
        }
    }
    objects
}

fn owner(api_version: &str, kind: &str, created: &DynamicObject) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": created.name_any(),
            "uid": created.uid().unwrap(), "controller": true}])
}

fn template(name: &str, spec: Value) -> Value {
    json!({"metadata": {"labels": {"app": name}}, "spec": spec})
}

fn container() -> Value {
    json!({"name": "app", "image": "registry.example.com/app:1"})
}

fn safe_spec() -> Value {
    json!({"serviceAccountName": "default", "securityContext": {"runAsUser": 1000},
           "containers": [container()], "volumes": [{"name": "config", "configMap": {"name": "app"}}]})
}

fn claim_spec(claim: &str) -> Value {
    json!({"serviceAccountName": "default", "containers": [container()],
           "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]})
}

fn pod(name: &str, spec: Value, owners: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "ownerReferences": owners, "annotations": annotations},
           "spec": spec})
}

/// The generated namespace `shop`, its workloads with their owner chains, and nodes.
async fn create_generated(client: &Client) {
    create(
        client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    )
    .await;
    create(client, json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "shop"}})).await;
    let claim = |name: &str, class: &str, label: Option<&str>| {
        let mut claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Gi"}}}});
        if let Some(label) = label {
            claim["metadata"]["labels"] = json!({"userns.io/idmap-supported": label});
        }
        claim
    };
    for c in [
        claim("catalog-data", "nfs-csi", Some("false")),
        claim("data-cart-db-1", "longhorn-rwx-nfs", None),
        claim("orders-1", "nfs-csi", None),
    ] {
        create(client, c).await;
    }

    // Deployment web: two ReplicaSets (the old one scaled to zero), two pods this webhook
    // enabled (hostUsers: false and the `enabled` annotation).
    let web = create(client, json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template("web", safe_spec())}})).await;
    for (rs, replicas) in [("web-5d4f", 2), ("web-1a2b", 0)] {
        let created = create(client, json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs, "namespace": "shop", "ownerReferences": owner("apps/v1", "Deployment", &web)},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": template("web", safe_spec())}})).await;
        for i in 0..replicas {
            let mut spec = safe_spec();
            spec["hostUsers"] = json!(false);
            create(client, pod(&format!("{rs}-{i}"), spec, owner("apps/v1", "ReplicaSet", &created),
                json!({"userns.io/decision": "enabled", "userns.io/decision-reason": "nothing blocks"}))).await;
        }
    }

    // Deployment catalog on NFS, its pod admitted in audit mode.
    let catalog = create(client, json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "catalog", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "catalog"}}, "template": template("catalog", claim_spec("catalog-data"))}})).await;
    let rs = create(client, json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "catalog-7f8e", "namespace": "shop", "ownerReferences": owner("apps/v1", "Deployment", &catalog)},
        "spec": {"selector": {"matchLabels": {"app": "catalog"}}, "template": template("catalog", claim_spec("catalog-data"))}})).await;
    create(
        client,
        pod(
            "catalog-7f8e-0",
            claim_spec("catalog-data"),
            owner("apps/v1", "ReplicaSet", &rs),
            json!({"userns.io/decision": "audit"}),
        ),
    )
    .await;

    // CronJob → Job → Pod.
    let cron = create(client, json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "report-mailer", "namespace": "shop"},
        "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template("mailer", json!({"restartPolicy": "Never", "containers": [container()]}))}}}})).await;
    let job = create(client, json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report-mailer-29000000", "namespace": "shop", "ownerReferences": owner("batch/v1", "CronJob", &cron)},
        "spec": {"template": template("mailer", json!({"restartPolicy": "Never", "containers": [container()]}))}})).await;
    create(client, pod("report-mailer-29000000-x", json!({"serviceAccountName": "default", "restartPolicy": "Never", "containers": [container()]}),
        owner("batch/v1", "Job", &job), json!({}))).await;

    // A Job of its own, privileged; its pod was skipped.
    let privileged = json!({"restartPolicy": "Never", "containers": [{"name": "app", "image": "app", "securityContext": {"privileged": true}}]});
    let migrate = create(
        client,
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "migrate", "namespace": "shop"},
        "spec": {"template": template("migrate", privileged.clone())}}),
    )
    .await;
    let mut spec = privileged;
    spec["serviceAccountName"] = json!("default");
    create(
        client,
        pod(
            "migrate-q",
            spec,
            owner("batch/v1", "Job", &migrate),
            json!({"userns.io/decision": "skipped"}),
        ),
    )
    .await;

    // DaemonSet in the host's PID namespace, no pods yet.
    create(client, json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "log-shipper", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "log"}}, "template": template("log", json!({"hostPID": true, "containers": [container()]}))}})).await;

    // StatefulSet on EBS whose ordinal 1 claim exists already, on Longhorn's NFS-exported class.
    let sts = create(client, json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "cart-db", "namespace": "shop"},
        "spec": {"replicas": 2, "serviceName": "cart-db", "selector": {"matchLabels": {"app": "cart-db"}},
                 "template": template("cart-db", json!({"containers": [{"name": "db", "image": "db", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]})),
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"storageClassName": "ebs-gp3", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})).await;
    create(
        client,
        pod(
            "cart-db-0",
            json!({"serviceAccountName": "default", "containers": [container()]}),
            owner("apps/v1", "StatefulSet", &sts),
            json!({}),
        ),
    )
    .await;

    // A pod owned by a custom resource (an operator's database cluster): judged from the pod.
    create(client, pod("orders-1", claim_spec("orders-1"),
        json!([{"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster", "name": "orders", "uid": "0b7d7e52-0000-4000-8000-000000000001", "controller": true}]),
        json!({}))).await;

    // Bare pods: one this webhook enabled (judged without its own mutation), one whose author
    // set hostUsers: false.
    let mut enabled = safe_spec();
    enabled["hostUsers"] = json!(false);
    create(
        client,
        pod(
            "debug",
            enabled,
            json!([]),
            json!({"userns.io/decision": "enabled"}),
        ),
    )
    .await;
    let mut pinned = safe_spec();
    pinned["hostUsers"] = json!(false);
    create(client, pod("pinned", pinned, json!([]), json!({}))).await;

    create(client, json!({"apiVersion": "v1", "kind": "ReplicationController",
        "metadata": {"name": "legacy", "namespace": "shop"},
        "spec": {"replicas": 0, "selector": {"app": "legacy"}, "template": template("legacy", safe_spec())}})).await;
    create(client, json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "batch-rs", "namespace": "shop"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "batch"}},
                 "template": template("batch", json!({"securityContext": {"runAsUser": 70000}, "containers": [container()]}))}})).await;

    // Nodes, their status as the kubelet reports it.
    let nodes: Api<Node> = Api::all(client.clone());
    let node_status = |kernel: &str, handlers: Value| {
        let mut status = json!({"nodeInfo": {"kernelVersion": kernel, "containerRuntimeVersion": "containerd://2.1.4",
            "operatingSystem": "linux", "architecture": "amd64", "bootID": "b", "kubeProxyVersion": "", "kubeletVersion": "v1.37.2",
            "machineID": "m", "osImage": "Debian GNU/Linux 13", "systemUUID": "s"}});
        if !handlers.is_null() {
            status["runtimeHandlers"] = handlers;
        }
        json!({"status": status})
    };
    let userns = |on: bool| json!([{"name": "", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": on}}]);
    for (name, status) in [
        ("node-new", node_status("6.12.38+deb13-amd64", userns(true))),
        (
            "node-old-kernel",
            node_status("5.15.0-139-generic", userns(true)),
        ),
        (
            "node-no-userns",
            node_status("6.8.0-60-generic", userns(false)),
        ),
        ("node-quiet", node_status("6.6.87", Value::Null)),
    ] {
        create(
            client,
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}),
        )
        .await;
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
}

/// The world every test reports on, created once: examples, `shop`, nodes, the reader's RBAC.
/// Returns the name the API server gave the examples' generateName pod.
fn world() -> &'static str {
    static WORLD: OnceLock<String> = OnceLock::new();
    WORLD.get_or_init(|| {
        let cp = cp();
        runtime().block_on(async {
            let client = cp.client().await;
            for object in example_objects() {
                create(&client, object).await;
            }
            create(&client, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "userns-labeler"}})).await;
            let rbac = std::fs::read_to_string(repo_root().join("deploy/report/rbac.yaml")).unwrap();
            for object in serde_saphyr::from_multiple::<Value>(&rbac).unwrap() {
                create(&client, object).await;
            }
            create(&client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "report-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "userns-labeler-report"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": READER}]})).await;
            create(&client, json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "report-reader", "namespace": "userns-labeler"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "userns-labeler-report-drivers"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": READER}]})).await;
            create_generated(&client).await;
            // A claim labelled by hand against its verdict (vaultwarden-data is `true`).
            let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(client.clone(), "home");
            claims
                .patch("vaultwarden-data", &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"userns.io/idmap-supported": "false"}}})))
                .await
                .unwrap();
            let pods: Api<Pod> = Api::namespaced(client.clone(), "db");
            pods.list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|p| p.name_any())
                .find(|n| n.starts_with("pg-backup-"))
                .expect("the generateName pod exists")
        })
    })
}

/// One workload as expected: (kind, namespace, name) → can it run, its blockers as
/// `Code` or `Code on driver`, its pods and their decision annotations.
struct Expected {
    can_run: bool,
    blockers: Vec<&'static str>,
    pods: usize,
    decisions: Vec<(&'static str, usize)>,
}

/// (kind, namespace, name, can run, blockers, pods, their decision annotations).
type ExpectedRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    bool,
    Vec<&'static str>,
    usize,
    Vec<(&'static str, usize)>,
);

/// Every workload, from the facts: `examples/README.md` for the examples (bare pods have no
/// annotation: no webhook ran), the objects built in [`create_generated`] for `shop`.
fn expected_workloads(pg_backup: &str) -> BTreeMap<(String, String, String), Expected> {
    let none = vec![("none", 1)];
    let rows: Vec<ExpectedRow> = vec![
        (
            "Pod",
            "paperless",
            "paperless",
            false,
            vec!["ClaimNotSupported on driver.longhorn.io"],
            1,
            none.clone(),
        ),
        ("Pod", "home", "homepage", true, vec![], 1, none.clone()),
        (
            "Pod",
            "home",
            "home-assistant",
            false,
            vec!["HostPathForbidden"],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "home",
            "matter-server",
            false,
            vec!["HostNetwork"],
            1,
            none.clone(),
        ),
        ("Pod", "home", "mosquitto", true, vec![], 1, none.clone()),
        ("Pod", "home", "vaultwarden", true, vec![], 1, none.clone()),
        ("Pod", "home", "node-red", true, vec![], 1, none.clone()),
        (
            "Pod",
            "media",
            "jellyfin",
            false,
            vec![
                "ClaimNotSupported on nfs.csi.k8s.io",
                "ClaimNotSupported on rancher.io/local-path",
            ],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "media",
            "navidrome",
            false,
            vec!["ClaimNotSupported on kubernetes.io/nfs"],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "media",
            "qbittorrent",
            false,
            vec!["HostUsersSet", "ClaimNotSupported on driver.longhorn.io"],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "media",
            "ffmpeg-transcode",
            true,
            vec![],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "media",
            "sonarr",
            false,
            vec!["ClaimNotFound"],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "db",
            "fio-block-bench",
            false,
            vec!["VolumeDevices", "ClaimNotSupported on driver.longhorn.io"],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "db",
            "pgbouncer",
            false,
            vec!["IDOutOfRange"],
            1,
            none.clone(),
        ),
        ("Pod", "db", "postgres-0", true, vec![], 1, none.clone()),
        ("Pod", "db", "postgres-1", true, vec![], 1, none.clone()),
        ("Pod", "db", pg_backup, true, vec![], 1, none.clone()),
        (
            "Deployment",
            "media",
            "immich-server",
            false,
            vec!["ClaimNotSupported on nfs.csi.k8s.io"],
            0,
            vec![],
        ),
        ("StatefulSet", "db", "redis", true, vec![], 0, vec![]),
        (
            "StatefulSet",
            "media",
            "minio",
            false,
            vec!["ClaimNotSupported on nfs.csi.k8s.io"],
            0,
            vec![],
        ),
        (
            "DaemonSet",
            "home",
            "node-exporter",
            false,
            vec!["HostNetwork", "HostPID", "HostPathForbidden"],
            0,
            vec![],
        ),
        ("CronJob", "db", "pg-dump-nightly", true, vec![], 0, vec![]),
        (
            "Job",
            "media",
            "library-scan",
            false,
            vec!["ClaimNotSupported on kubernetes.io/nfs"],
            0,
            vec![],
        ),
        // shop
        (
            "Deployment",
            "shop",
            "web",
            true,
            vec![],
            2,
            vec![("enabled", 2)],
        ),
        (
            "Deployment",
            "shop",
            "catalog",
            false,
            vec!["ClaimNotSupported on nfs.csi.k8s.io"],
            1,
            vec![("audit", 1)],
        ),
        (
            "CronJob",
            "shop",
            "report-mailer",
            true,
            vec![],
            1,
            none.clone(),
        ),
        (
            "Job",
            "shop",
            "migrate",
            false,
            vec!["PrivilegedContainer"],
            1,
            vec![("skipped", 1)],
        ),
        (
            "DaemonSet",
            "shop",
            "log-shipper",
            false,
            vec!["HostPID"],
            0,
            vec![],
        ),
        (
            "StatefulSet",
            "shop",
            "cart-db",
            false,
            vec!["ClaimNotSupported on driver.longhorn.io"],
            1,
            none.clone(),
        ),
        (
            "Cluster",
            "shop",
            "orders",
            false,
            vec!["ClaimNotSupported on nfs.csi.k8s.io"],
            1,
            none.clone(),
        ),
        (
            "Pod",
            "shop",
            "debug",
            true,
            vec![],
            1,
            vec![("enabled", 1)],
        ),
        (
            "Pod",
            "shop",
            "pinned",
            false,
            vec!["HostUsersSet"],
            1,
            none.clone(),
        ),
        (
            "ReplicationController",
            "shop",
            "legacy",
            true,
            vec![],
            0,
            vec![],
        ),
        (
            "ReplicaSet",
            "shop",
            "batch-rs",
            false,
            vec!["IDOutOfRange"],
            0,
            vec![],
        ),
    ];
    rows.into_iter()
        .map(|(kind, ns, name, can_run, blockers, pods, decisions)| {
            (
                (kind.to_string(), ns.to_string(), name.to_string()),
                Expected {
                    can_run,
                    blockers,
                    pods,
                    decisions,
                },
            )
        })
        .collect()
}

/// Every claim's label from the facts (`examples/README.md`, and the classes of `shop`'s
/// claims: nfs-csi is NFS, longhorn-rwx-nfs exports over NFS), with its driver.
fn expected_claims() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("paperless", "false", "driver.longhorn.io"),
        ("paperless-consume", "false", "driver.longhorn.io"),
        ("paperless-export", "false", "nfs.csi.k8s.io"),
        ("home-assistant-config", "true", "driver.longhorn.io"),
        ("vaultwarden-data", "true", "driver.longhorn.io"),
        ("mosquitto-data", "true", "driver.longhorn.io"),
        (
            "node-red-data",
            "true",
            "org.democratic-csi.zfs-local-dataset",
        ),
        ("jellyfin-config", "true", "driver.longhorn.io"),
        ("media-library", "false", "nfs.csi.k8s.io"),
        ("music-library", "false", "kubernetes.io/nfs"),
        ("downloads", "false", "driver.longhorn.io"),
        ("shared-photos", "false", "rook-ceph.cephfs.csi.ceph.com"),
        ("transcode-cache", "false", "rancher.io/local-path"),
        ("bench-block", "false", "driver.longhorn.io"),
        ("pg-backups", "true", "rancher.io/local-path"),
        ("data-postgres-0", "true", "ebs.csi.aws.com"),
        ("data-postgres-1", "true", "ebs.csi.aws.com"),
        ("catalog-data", "false", "nfs.csi.k8s.io"),
        ("data-cart-db-1", "false", "driver.longhorn.io"),
        ("orders-1", "false", "nfs.csi.k8s.io"),
    ]
}

fn run_report(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(BINARY)
        .arg("report")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

fn report_json(kubeconfig: &Path, args: &[&str]) -> Value {
    let output = run_report(kubeconfig, &[args, &["-o", "json"]].concat());
    assert!(
        output.status.success(),
        "report failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the report is JSON")
}

fn reader_kubeconfig() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| cp().user_kubeconfig(READER, &[]))
}

fn label_of(reason: &Value) -> String {
    match reason["driver"].as_str() {
        Some(driver) => format!("{} on {driver}", reason["code"].as_str().unwrap()),
        None => reason["code"].as_str().unwrap().to_string(),
    }
}

/// The whole report over all namespaces, as the read-only user: every workload, the summary,
/// the ranking, the namespaces, the claims and the nodes against the facts.
#[test]
fn report_over_all_namespaces_matches_the_objects() {
    let _turn = turn();
    let pg_backup = world();
    let report = report_json(reader_kubeconfig(), &["-A"]);
    let expected = expected_workloads(pg_backup);

    assert_eq!(report["scope"], "all namespaces");
    assert_eq!(
        report["driverTable"],
        "the built-in table (no ConfigMap userns-labeler/userns-labeler-drivers)"
    );

    // Workloads, one by one.
    let mut seen = BTreeMap::new();
    for w in report["workloads"].as_array().unwrap() {
        let key = (
            w["kind"].as_str().unwrap().to_string(),
            w["namespace"].as_str().unwrap().to_string(),
            w["name"].as_str().unwrap().to_string(),
        );
        let labels: BTreeSet<String> = w["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(label_of)
            .collect();
        let decisions: BTreeMap<String, usize> = w["podDecisions"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
            .collect();
        let judged = w["judgedFrom"].as_str().unwrap().to_string();
        let decision = w["decision"].as_str().unwrap().to_string();
        seen.insert(
            key,
            (
                w["canRun"].as_bool().unwrap(),
                labels,
                w["pods"].as_u64().unwrap() as usize,
                decisions,
                judged,
                decision,
            ),
        );
    }
    let expected_view: BTreeMap<_, _> = expected
        .iter()
        .map(|(key, e)| {
            let judged = if matches!(key.0.as_str(), "Pod" | "Cluster") {
                "pods"
            } else {
                "template"
            };
            (
                key.clone(),
                (
                    e.can_run,
                    e.blockers
                        .iter()
                        .map(|b| b.to_string())
                        .collect::<BTreeSet<_>>(),
                    e.pods,
                    e.decisions
                        .iter()
                        .map(|(k, n)| (k.to_string(), *n))
                        .collect::<BTreeMap<_, _>>(),
                    judged.to_string(),
                    if e.can_run { "enabled" } else { "skipped" }.to_string(),
                ),
            )
        })
        .collect();
    assert_eq!(seen, expected_view);

    // The summary, from the table above.
    let total = expected.len();
    let can_run = expected.values().filter(|e| e.can_run).count();
    let mut ranking: BTreeMap<&str, usize> = BTreeMap::new();
    for e in expected.values() {
        for b in e.blockers.iter().collect::<BTreeSet<_>>() {
            *ranking.entry(b).or_default() += 1;
        }
    }
    let mut ranked: Vec<(&str, usize)> = ranking.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let percent = (can_run * 100 + total / 2) / total;
    let summary = &report["summary"];
    assert_eq!(summary["workloads"], total);
    assert_eq!(summary["canRun"], can_run);
    assert_eq!(summary["percent"], percent);
    assert_eq!(summary["topBlocker"]["label"], ranked[0].0);
    assert_eq!(summary["topBlocker"]["workloads"], ranked[0].1);
    assert_eq!(
        summary["text"],
        format!(
            "{can_run} of {total} workloads ({percent} %) can run with user namespaces; the top blocker is {} ({}).",
            ranked[0].0, ranked[0].1
        )
    );
    let blockers: Vec<(String, usize)> = report["blockers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["label"].as_str().unwrap().to_string(),
                b["workloads"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let ranked: Vec<(String, usize)> = ranked
        .into_iter()
        .map(|(l, n)| (l.to_string(), n))
        .collect();
    assert_eq!(blockers, ranked);

    // Namespaces.
    let mut namespaces: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for ((_, ns, _), e) in &expected {
        let entry = namespaces.entry(ns.clone()).or_default();
        entry.0 += 1;
        entry.1 += usize::from(e.can_run);
    }
    let got: BTreeMap<String, (usize, usize)> = report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["namespace"].as_str().unwrap().to_string(),
                (
                    n["workloads"].as_u64().unwrap() as usize,
                    n["canRun"].as_u64().unwrap() as usize,
                ),
            )
        })
        .collect();
    assert_eq!(got, namespaces);

    // Claims by label, the drivers behind `false`, and the one claim already labelled so.
    let claims = expected_claims();
    let count = |label: &str| claims.iter().filter(|c| c.1 == label).count();
    let c = &report["claims"];
    assert_eq!(c["total"], claims.len());
    assert_eq!(
        c["byLabel"],
        json!({"true": count("true"), "false": count("false"), "unknown": count("unknown")})
    );
    assert_eq!(
        c["labelled"], 1,
        "catalog-data is labelled false, as judged; vaultwarden-data is not"
    );
    let mut drivers: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (_, label, driver) in claims.iter().filter(|c| c.1 != "true") {
        *drivers
            .entry((label.to_string(), driver.to_string()))
            .or_default() += 1;
    }
    // Rows are by driver and reason: Longhorn's `false` has three (NFS for RWX, nfsOptions, a
    // raw block volume).
    let mut got: BTreeMap<(String, String), usize> = BTreeMap::new();
    for d in c["drivers"].as_array().unwrap() {
        *got.entry((
            d["label"].as_str().unwrap().to_string(),
            d["driver"].as_str().unwrap().to_string(),
        ))
        .or_default() += d["claims"].as_u64().unwrap() as usize;
    }
    assert_eq!(got, drivers);
    let longhorn_reasons = c["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["driver"] == "driver.longhorn.io")
        .count();
    assert_eq!(longhorn_reasons, 3);

    // Nodes: a kernel of 6.3 or later and a runtime that says so; an old kernel; a runtime that
    // says no; a kubelet that says nothing.
    let n = &report["nodes"];
    assert_eq!(n["listed"], true);
    assert_eq!(
        n["bySupport"],
        json!({"supported": 1, "unsupported": 2, "unknown": 1})
    );
    let support: BTreeMap<&str, &str> = n["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["support"].as_str().unwrap()))
        .collect();
    assert_eq!(
        support,
        BTreeMap::from([
            ("node-new", "supported"),
            ("node-no-userns", "unsupported"),
            ("node-old-kernel", "unsupported"),
            ("node-quiet", "unknown"),
        ])
    );
}

/// The read-only user's requests, from the audit log: get and list only.
#[test]
fn the_report_makes_get_and_list_calls_only() {
    let _turn = turn();
    world();
    let before = cp().audit_events().len();
    report_json(reader_kubeconfig(), &["-A"]);
    report_json(reader_kubeconfig(), &["-n", "shop"]);
    // The audit log is written as requests complete; wait until the reader's last list is in.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let requests = loop {
        let events = cp().audit_events();
        let requests: Vec<(String, String)> = events[before..]
            .iter()
            .filter(|e| e["user"]["username"] == READER && e["stage"] == "ResponseComplete")
            .map(|e| {
                (
                    e["verb"].as_str().unwrap_or_default().to_string(),
                    e["objectRef"]["resource"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let resources: BTreeSet<&str> = requests.iter().map(|(_, r)| r.as_str()).collect();
        if resources.len() >= 13 || std::time::Instant::now() > deadline {
            break requests;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let verbs: BTreeSet<&str> = requests.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list"]), "{requests:?}");
    let resources: BTreeSet<&str> = requests.iter().map(|(_, r)| r.as_str()).collect();
    assert_eq!(
        resources,
        BTreeSet::from([
            "configmaps",
            "cronjobs",
            "daemonsets",
            "deployments",
            "jobs",
            "nodes",
            "persistentvolumeclaims",
            "persistentvolumes",
            "pods",
            "replicasets",
            "replicationcontrollers",
            "statefulsets",
            "storageclasses",
        ])
    );
}

#[test]
fn one_namespace_is_reported_with_n_and_the_contexts_namespace_by_default() {
    let _turn = turn();
    let pg_backup = world();
    let report = report_json(reader_kubeconfig(), &["-n", "media"]);
    assert_eq!(report["scope"], "namespace media");
    let names: BTreeSet<(String, String)> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["kind"].as_str().unwrap().to_string(),
                w["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = expected_workloads(pg_backup)
        .into_keys()
        .filter(|(_, ns, _)| ns == "media")
        .map(|(kind, _, name)| (kind, name))
        .collect();
    assert_eq!(names, expected);
    // media's claims: jellyfin-config, media-library, music-library, downloads, shared-photos,
    // transcode-cache (examples/README.md).
    assert_eq!(report["claims"]["total"], 6);
    assert_eq!(report["claims"]["byLabel"]["true"], 1);

    // The test kubeconfig's context names no namespace: `default`, which holds no workload.
    let report = report_json(reader_kubeconfig(), &[]);
    assert_eq!(report["scope"], "namespace default");
    assert_eq!(
        report["summary"]["text"],
        "No workloads found in namespace default."
    );
}

#[test]
fn the_table_output_leads_with_the_summary_and_names_each_blocker() {
    let _turn = turn();
    world();
    let output = run_report(reader_kubeconfig(), &["-n", "shop"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let json = report_json(reader_kubeconfig(), &["-n", "shop"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[2], json["summary"]["text"].as_str().unwrap());
    assert!(
        text.contains("\nBLOCKERS (by the workloads they hold back)\nWORKLOADS   BLOCKER"),
        "{text}"
    );
    let cells = |workload: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.contains(workload))
            .unwrap_or_else(|| panic!("no {workload} in {text}"));
        line.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        cells(" deployment/catalog "),
        [
            "shop",
            "deployment/catalog",
            "1 (audit 1)",
            "skipped",
            "ClaimNotSupported: volume data: claim catalog-data (driver nfs.csi.k8s.io) cannot be idmap-mounted: NFS volumes cannot be idmapped."
        ]
    );
    assert_eq!(
        cells(" deployment/web "),
        ["shop", "deployment/web", "2 (enabled 2)", "enabled", "-"]
    );
    assert!(text.contains("Cluster/orders"), "{text}");
    assert!(
        text.contains("\nNODES: 4 (1 supported, 2 unsupported, 1 unknown)\n"),
        "{text}"
    );
}

/// The driver table in force is the labeler's: its ConfigMap, else the last good copy; with
/// neither usable, every pod is skipped, as the webhook would.
#[test]
fn the_labelers_driver_table_is_the_one_judged_by() {
    let _turn = turn();
    world();
    let cp = cp();
    let admin = cp.kubeconfig_path();
    let trust_nfs =
        "rules:\n- driver: nfs.csi.k8s.io\n  verdict: true\n  reason: our NFS is a test double\n";
    let config_map = |name: &str, table: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "report-config"},
               "data": {"drivers.yaml": table}})
    };
    let args = [
        "-n",
        "shop",
        "--labeler-namespace",
        "report-config",
        "--config-map",
        "drivers",
    ];
    let can_run = |report: &Value, name: &str| {
        report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap()["canRun"]
            .as_bool()
            .unwrap()
    };
    runtime().block_on(async {
        let client = cp.client().await;
        create(
            &client,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "report-config"}}),
        )
        .await;
        create(&client, config_map("drivers", trust_nfs)).await;
    });
    let report = report_json(admin, &args);
    assert_eq!(report["driverTable"], "ConfigMap report-config/drivers");
    assert!(
        can_run(&report, "catalog"),
        "the operator's rule trusts NFS"
    );

    runtime().block_on(async {
        let client = cp.client().await;
        let configs: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(client.clone(), "report-config");
        configs
            .patch(
                "drivers",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"drivers.yaml": "rules: [\n"}})),
            )
            .await
            .unwrap();
    });
    let report = report_json(admin, &args);
    assert!(
        report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["reasons"][0]["code"] == "DriverTableInvalid")
    );
    assert_eq!(report["summary"]["canRun"], 0);

    runtime().block_on(async {
        let client = cp.client().await;
        create(&client, config_map("drivers-last-good", trust_nfs)).await;
    });
    let report = report_json(admin, &args);
    let source = report["driverTable"].as_str().unwrap();
    assert!(
        source.starts_with("the last good copy report-config/drivers-last-good (ConfigMap report-config/drivers is invalid: "),
        "{source}"
    );
    assert!(can_run(&report, "catalog"));
}

#[test]
fn a_refused_or_unreachable_cluster_exits_3() {
    let _turn = turn();
    world();
    let nobody = cp().user_kubeconfig("nobody", &[]);
    let output = run_report(&nobody, &["-A"]);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is forbidden"), "{stderr}");
    assert!(stderr.contains("deploy/report/rbac.yaml"), "{stderr}");
    assert!(output.stdout.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let unreachable = dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(cp().kubeconfig_path())
        .unwrap()
        .replace(
            cp().server_url(),
            &format!("https://127.0.0.1:{}", free_port()),
        );
    std::fs::write(&unreachable, text).unwrap();
    let output = run_report(&unreachable, &["-A"]);
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("error: listing "));

    let output = run_report(&dir.path().join("missing"), &["-A"]);
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loading the kubeconfig"));

    // Usage errors are 2, as for explain.
    let output = run_report(cp().kubeconfig_path(), &["-A", "-n", "x"]);
    assert_eq!(output.status.code(), Some(2));
}

// ---- the HTML report in a real browser ------------------------------------------------------

/// Debian's chromium, installed by `scripts/install-browser.sh` (run by `make test`). Fails
/// with the reason, never skips.
fn chromium() -> PathBuf {
    let script = repo_root().join("scripts/install-browser.sh");
    let output = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "the HTML report test needs a headless Chromium, and {} could not provide one: {}\n\
         run `make browser` (apt-get install chromium) or set USERNS_CHROMIUM",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// The flags of a quiet headless browser: no background requests of its own, so that every
/// request in its network log is the page's.
const BROWSER_FLAGS: [&str; 14] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--no-first-run",
    "--no-pings",
    "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--hide-scrollbars",
];

/// Loads `page` and returns its rendered DOM and the URLs the page itself requested (requests
/// the browser makes for itself carry no initiator origin and are left out).
fn load(browser: &Path, page: &Path, dir: &Path) -> (String, Vec<String>) {
    let netlog = dir.join(format!(
        "{}.netlog.json",
        page.file_name().unwrap().to_string_lossy()
    ));
    let output = Command::new(browser)
        .args(BROWSER_FLAGS)
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let log: Value = serde_json::from_str(&std::fs::read_to_string(&netlog).unwrap())
        .expect("the network log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .unwrap();
    let requests = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect();
    (String::from_utf8(output.stdout).unwrap(), requests)
}

/// The values of `attribute` on elements with `class`, in document order.
fn attributes(dom: &str, class: &str, attribute: &str) -> Vec<String> {
    let marker = format!("class=\"{class}\"");
    dom.match_indices(&marker)
        .filter_map(|(at, _)| {
            let element = &dom[dom[..at].rfind('<')?..];
            let element = &element[..element.find('>')?];
            let start = element.find(&format!("{attribute}=\""))? + attribute.len() + 2;
            let end = element[start..].find('"')? + start;
            Some(
                element[start..end]
                    .replace("&amp;", "&")
                    .replace("&quot;", "\""),
            )
        })
        .collect()
}

#[test]
fn the_html_report_renders_in_a_headless_browser_without_a_request() {
    let _turn = turn();
    world();
    let browser = chromium();
    let dir = tempfile::tempdir().unwrap();

    // The network log does see a page's requests: a page that makes two.
    let control = dir.path().join("control.html");
    std::fs::write(&control, format!(
        "<!DOCTYPE html><html><body><img src=\"http://127.0.0.1:{}/x.png\"><link rel=\"stylesheet\" href=\"https://example.invalid/x.css\"></body></html>",
        free_port()
    )).unwrap();
    let (_, requests) = load(&browser, &control, dir.path());
    assert_eq!(
        requests.len(),
        2,
        "the control page's requests are seen: {requests:?}"
    );

    let output = run_report(reader_kubeconfig(), &["-A", "-o", "html"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let html = String::from_utf8(output.stdout).unwrap();
    for attribute in ["src=", "href=", "<script", "url("] {
        assert!(
            !html.contains(attribute),
            "the page has no external reference or script: {attribute}"
        );
    }
    let page = dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let json = report_json(reader_kubeconfig(), &["-A"]);

    let (dom, requests) = load(&browser, &page, dir.path());
    assert_eq!(requests, Vec::<String>::new(), "the report made requests");
    let summary = json["summary"]["text"].as_str().unwrap();
    assert!(
        dom.contains(&format!(
            "<p id=\"summary\">{}</p>",
            summary.replace('&', "&amp;")
        )),
        "summary missing"
    );

    let blockers = json["blockers"].as_array().unwrap();
    let labels = attributes(&dom, "bar", "data-label");
    let counts = attributes(&dom, "bar", "data-workloads");
    assert_eq!(labels.len(), blockers.len().min(20));
    for ((label, count), blocker) in labels.iter().zip(&counts).zip(blockers) {
        assert_eq!(label, blocker["label"].as_str().unwrap());
        assert_eq!(count, &blocker["workloads"].to_string());
    }
    let namespaces = attributes(&dom, "namespace-bar", "data-namespace");
    let expected: Vec<String> = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(namespaces, expected);
    let can_run = attributes(&dom, "namespace-bar", "data-can-run");
    assert_eq!(
        can_run,
        json["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["canRun"].to_string())
            .collect::<Vec<_>>()
    );
    let rows = attributes(&dom, "workload", "data-decision");
    assert_eq!(rows.len(), json["workloads"].as_array().unwrap().len());
    assert_eq!(
        rows.iter().filter(|d| *d == "enabled").count(),
        json["summary"]["canRun"].as_u64().unwrap() as usize
    );

    // A screenshot, kept as the test's artifact.
    let artifacts = std::env::var_os("USERNS_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts"));
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&screenshot);
    let output = Command::new(&browser)
        .args(BROWSER_FLAGS)
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--window-size=1280,2600")
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a screenshot of {} bytes",
        png.len()
    );
    std::fs::copy(&page, artifacts.join("report.html")).unwrap();
    eprintln!("HTML report and screenshot: {}", artifacts.display());
}

// ---- the kubectl plugin ----------------------------------------------------------------------

#[test]
fn kubectl_runs_it_as_the_userns_plugin() {
    let _turn = turn();
    world();
    let cp = cp();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BINARY, dir.path().join("kubectl-userns")).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = |args: &[&str]| {
        Command::new(cp.kubectl_path())
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", reader_kubeconfig())
            .output()
            .unwrap()
    };

    let listed = kubectl(&["plugin", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("kubectl-userns"),
        "{listed:?}"
    );

    // kubectl's usual flags: the kubeconfig from KUBECONFIG, --context, -n, -A, -o.
    let output = kubectl(&[
        "userns",
        "report",
        "--context",
        "userns-test",
        "-A",
        "-o",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let via_kubectl: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(via_kubectl, report_json(reader_kubeconfig(), &["-A"]));
    let output = kubectl(&["userns", "report", "-n", "shop"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("Scope: namespace shop."));

    let workloads = repo_root().join("examples/16-workloads.yaml");
    let output = kubectl(&[
        "userns",
        "explain",
        "-f",
        workloads.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["pods"].as_array().unwrap().len(), 6);

    // Help and errors name the command as typed.
    let output = kubectl(&["userns", "--help"]);
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("Usage: kubectl userns [OPTIONS] <COMMAND>")
    );
    let output = kubectl(&["userns", "report", "--no-such-flag"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("kubectl userns report"));
}

/// The `-o json` schema as the README documents it: every key, with its type. Keys may be
/// added later; none may be renamed.
#[test]
fn the_json_output_has_the_documented_keys() {
    let _turn = turn();
    world();
    let report = report_json(reader_kubeconfig(), &["-A"]);
    let keys = |value: &Value| -> BTreeSet<String> {
        value
            .as_object()
            .unwrap_or_else(|| panic!("an object: {value}"))
            .keys()
            .cloned()
            .collect()
    };
    let set =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| n.to_string()).collect() };
    assert_eq!(
        keys(&report),
        set(&[
            "scope",
            "driverTable",
            "summary",
            "workloads",
            "blockers",
            "namespaces",
            "claims",
            "nodes"
        ])
    );
    assert_eq!(
        keys(&report["summary"]),
        set(&["workloads", "canRun", "percent", "topBlocker", "text"])
    );
    assert_eq!(
        keys(&report["summary"]["topBlocker"]),
        set(&["label", "workloads"])
    );
    for w in report["workloads"].as_array().unwrap() {
        assert_eq!(
            keys(w),
            set(&[
                "kind",
                "namespace",
                "name",
                "judgedFrom",
                "decision",
                "canRun",
                "reasons",
                "pods",
                "podDecisions"
            ])
        );
        for r in w["reasons"].as_array().unwrap() {
            let expected: &[&str] = if r.get("driver").is_some() {
                &["code", "message", "driver"]
            } else {
                &["code", "message"]
            };
            assert_eq!(keys(r), set(expected));
        }
    }
    for b in report["blockers"].as_array().unwrap() {
        let expected: &[&str] = if b.get("driver").is_some() {
            &["code", "driver", "label", "workloads", "example"]
        } else {
            &["code", "label", "workloads", "example"]
        };
        assert_eq!(keys(b), set(expected));
    }
    for n in report["namespaces"].as_array().unwrap() {
        assert_eq!(keys(n), set(&["namespace", "workloads", "canRun"]));
    }
    assert_eq!(
        keys(&report["claims"]),
        set(&["total", "byLabel", "drivers", "labelled"])
    );
    assert_eq!(
        keys(&report["claims"]["byLabel"]),
        set(&["true", "false", "unknown"])
    );
    for d in report["claims"]["drivers"].as_array().unwrap() {
        assert_eq!(keys(d), set(&["label", "driver", "claims", "reason"]));
    }
    assert_eq!(
        keys(&report["nodes"]),
        set(&["listed", "total", "bySupport", "nodes"])
    );
    assert_eq!(
        keys(&report["nodes"]["bySupport"]),
        set(&["supported", "unsupported", "unknown"])
    );
    for n in report["nodes"]["nodes"].as_array().unwrap() {
        assert_eq!(
            keys(n),
            set(&["name", "support", "reason", "kernel", "runtime"])
        );
    }
    assert!(report["summary"]["percent"].is_u64() && report["summary"]["text"].is_string());
    assert!(
        report["workloads"][0]["canRun"].is_boolean() && report["workloads"][0]["pods"].is_u64()
    );
}
