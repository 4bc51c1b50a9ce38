//! On a real node (kubelet + containerd + runc + CNI bridge + kube-proxy, started by
//! `tests/node/cluster.sh` through `node::shared()`), with the chart installed by real helm:
//! the labeler's own pods run in user namespaces under the restricted Pod Security level; every
//! pod shape the webhook enables really starts, in its own user namespace, with idmapped volumes;
//! pods the webhook skips run exactly as written; a FUSE volume the table trusts is refused by
//! the runtime; the labeler survives losing its leader and an API server restart.
//!
//! Evidence is read where it is decided: `/proc/<pid>/uid_map` and `/proc/<pid>/mountinfo` of
//! the container's process on the host, and the owner on the host of a file the container's root
//! wrote. These tests fail (never skip) on a machine that cannot run the node; the panic says why.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Event, Namespace, PersistentVolumeClaim, Pod},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};
use tokio::sync::RwLock;
use userns_labeler_test_support::node::pods::{
    annotation, decided_in_a_row, eventually, fixture_dir, image, namespace, node_name, running,
};
use userns_labeler_test_support::node::{self, Cluster};

const RELEASE_NAMESPACE: &str = "userns-system";
const DECISION: &str = "userns.io/decision";
const SUPPORTED: &str = "userns.io/idmap-supported";
const OPT_OUT: &str = "userns.io/opt-out";
/// The identity map: a process outside any user namespace.
const IDENTITY_MAP: &str = "0 0 4294967295";

/// Tests that stop a component or kill the leader take it for writing; the others for reading.
static DISRUPTION: RwLock<()> = RwLock::const_new(());

/// The cluster with the chart installed once per test binary: two replicas, self-signed TLS,
/// the image from `make image`, `pullPolicy: Never`.
fn cluster() -> &'static Cluster {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let cluster = node::shared();
    INSTALLED.get_or_init(|| {
        let started = Instant::now();
        cluster.script(&[
            "install",
            "--set",
            "replicaCount=2",
            "--set",
            "logFormat=plain",
        ]);
        eprintln!(
            "real node: chart installed and ready in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    });
    cluster
}

/// A pod of the local shell image: prints the owner (as seen inside) of `probe`, writes
/// `<write_dir>/written-by-root` when given, then sleeps.
fn shell_pod(name: &str, probe: &str, write_dir: Option<&str>, spec: Value) -> Pod {
    let mut script = format!("cat /proc/self/uid_map; stat -L -c 'owner %u %n' {probe}; ");
    if let Some(dir) = write_dir {
        script.push_str(&format!(
            "touch {dir}/written-by-root && stat -c 'wrote %u %n' {dir}/written-by-root; "
        ));
    }
    script.push_str("exec sleep 3600");
    let mut pod = json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image("shell"),
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", script],
            }],
        }
    });
    merge(&mut pod["spec"], spec);
    serde_json::from_value(pod).unwrap()
}

/// Deep-merges `patch` into `target` (objects merged, arrays of containers merged by index).
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (Value::Array(t), Value::Array(p)) if !t.is_empty() => {
            for (i, v) in p.into_iter().enumerate() {
                match t.get_mut(i) {
                    Some(slot) => merge(slot, v),
                    None => t.push(v),
                }
            }
        }
        (t, p) => *t = p,
    }
}

/// The host pid of the pod's first container.
fn container_pid(cluster: &Cluster, pod: &Pod) -> u32 {
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .expect("a running container has an id");
    cluster
        .container_pid(&id)
        .unwrap_or_else(|| panic!("no containerd task for {id}"))
}

fn uid_map(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/uid_map")).expect("reading uid_map");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The options of the mount at `target` inside the container (from the host).
fn mount_options(pid: u32, target: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("reading mountinfo");
    text.lines()
        .rfind(|line| line.split(' ').nth(4) == Some(target))
        .unwrap_or_else(|| panic!("no mount at {target} in pid {pid}:\n{text}"))
        .to_owned()
}

async fn logs(pods: &Api<Pod>, name: &str) -> String {
    eventually(
        &format!("the log of {name}"),
        Duration::from_secs(30),
        || async {
            let text = pods
                .logs(name, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
            if text.contains("owner ") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await
}

fn run(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn apply(client: &Client, ns: &str, objects: Value) {
    for object in objects.as_array().expect("a list of objects") {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let ar = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            object["apiVersion"]
                .as_str()
                .unwrap()
                .rsplit_once('/')
                .map_or("", |(g, _)| g),
            object["apiVersion"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap(),
            kind,
        ));
        let namespaced = !matches!(kind, "PersistentVolume" | "StorageClass" | "Namespace");
        let api: Api<kube::api::DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), ns, &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let obj: kube::api::DynamicObject = serde_json::from_value(object.clone()).unwrap();
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("creating {kind} {name}: {e}"));
    }
}

/// Waits until the claim is Bound and labelled, and returns the label.
async fn bound_and_labelled(client: &Client, ns: &str, claim: &str) -> String {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("claim {ns}/{claim} Bound and labelled"),
        Duration::from_secs(90),
        || async {
            let pvc = api.get(claim).await.map_err(|e| e.to_string())?;
            let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
            let label = pvc.metadata.labels.as_ref().and_then(|l| l.get(SUPPORTED));
            match (phase.as_deref(), label) {
                (Some("Bound"), Some(label)) => Ok(label.clone()),
                _ => Err(format!("phase {phase:?}, labels {:?}", pvc.metadata.labels)),
            }
        },
    )
    .await
}

/// A local PV at `path` (node affinity on this node), a class without provisioner and a claim
/// bound to it by name.
fn local_claim(ns: &str, name: &str, path: &Path, source: &str) -> Value {
    let node = node_name();
    let source = match source {
        "local" => json!({"local": {"path": path}}),
        _ => json!({"hostPath": {"path": path, "type": "Directory"}}),
    };
    let mut pv = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": format!("{ns}-{name}")},
        "spec": {
            "capacity": {"storage": "1Mi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": ns, "name": name},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
        }
    });
    merge(&mut pv["spec"], source);
    json!([pv, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": format!("{ns}-{name}"),
            "resources": {"requests": {"storage": "1Mi"}},
        }
    }])
}

/// The replica (pod) name of a Lease holder `<pod name>_<suffix new on every start>`.
fn replica_of(holder: &str) -> &str {
    holder
        .rsplit_once('_')
        .map_or(holder, |(replica, _)| replica)
}

#[tokio::test]
async fn the_chart_runs_two_ready_replicas_in_user_namespaces_under_restricted_pod_security() {
    let _shared = DISRUPTION.read().await;
    let cluster = cluster();
    let client = cluster.client().await;

    let ns = Api::<Namespace>::all(client.clone())
        .get(RELEASE_NAMESPACE)
        .await
        .unwrap();
    assert_eq!(
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-security.kubernetes.io/enforce"))
            .map(String::as_str),
        Some("restricted"),
        "the release namespace enforces the restricted level"
    );

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let deployment = deployments.get("userns-labeler").await.unwrap();
    let status = deployment.status.unwrap_or_default();
    assert_eq!(status.ready_replicas, Some(2), "both replicas Ready");

    let pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let ours = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=userns-labeler"))
        .await
        .unwrap()
        .items;
    assert_eq!(ours.len(), 2, "two replica pods");
    let mut names = Vec::new();
    for pod in &ours {
        let name = pod.metadata.name.clone().unwrap();
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.host_users),
            Some(false),
            "{name} asks for its own user namespace"
        );
        let map = uid_map(container_pid(cluster, pod));
        assert_ne!(map, IDENTITY_MAP, "{name} runs in a user namespace");
        assert!(
            map.starts_with("0 ") && map.ends_with(" 65536") && !map.starts_with("0 0 "),
            "{name}: container root maps to an unprivileged host range, got {map}"
        );
        names.push(name);
    }

    // A leader among them.
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let holder = eventually("a lease holder", Duration::from_secs(60), || async {
        let lease = leases
            .get("userns-labeler")
            .await
            .map_err(|e| e.to_string())?;
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .ok_or_else(|| "no holder".to_owned())
    })
    .await;
    assert!(
        names.iter().any(|n| replica_of(&holder) == n),
        "the lease holder {holder} is one of {names:?}"
    );

    // The PodDisruptionBudget sees both.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let pdb = eventually(
        "the PDB counting both replicas",
        Duration::from_secs(60),
        || async {
            let pdb = pdbs
                .get("userns-labeler")
                .await
                .map_err(|e| e.to_string())?;
            let healthy = pdb.status.as_ref().map(|s| s.current_healthy);
            if healthy == Some(2) {
                Ok(pdb)
            } else {
                Err(format!("currentHealthy {healthy:?}"))
            }
        },
    )
    .await;
    assert_eq!(pdb.status.unwrap().disruptions_allowed, 1);

    // The webhook is reached through the chart's Service, with the caBundle in place.
    let mwc = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("userns-labeler")
        .await
        .unwrap();
    for webhook in mwc.webhooks.iter().flatten() {
        let service = webhook
            .client_config
            .service
            .as_ref()
            .expect("registered by Service");
        assert_eq!(service.namespace, RELEASE_NAMESPACE);
        assert!(
            webhook
                .client_config
                .ca_bundle
                .as_ref()
                .is_some_and(|b| b.0.starts_with(b"-----BEGIN CERTIFICATE-----")),
            "the caBundle holds a PEM CA"
        );
    }
    let ns = namespace(&client, "rn-chart").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // `cluster.sh install` returned once ten dry-run pods in a row came back decided through the Service;
    // a test that restarted a replica since may have left one not reachable yet.
    let probe = shell_pod("probe", "/tmp", None, json!({}));
    decided_in_a_row(&pods, &probe, DECISION, 10).await;
    let pod = pods
        .create(
            &PostParams::default(),
            &shell_pod("decided", "/tmp", None, json!({})),
        )
        .await
        .unwrap();
    assert_eq!(
        annotation(&pod, DECISION).as_deref(),
        Some("enabled"),
        "the API server called the webhook through its Service"
    );
    assert_eq!(pod.spec.unwrap().host_users, Some(false));
}

/// One pod shape the webhook enables: its volume, where it is mounted, the file to stat inside,
/// and where a file written by the container's root lands on the host (writable volumes).
struct Shape {
    name: &'static str,
    spec: Value,
    mount: &'static str,
    probe: String,
    host_dir: Option<PathBuf>,
}

#[tokio::test]
async fn every_volume_shape_the_webhook_enables_runs_with_idmapped_mounts() {
    let _shared = DISRUPTION.read().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-shapes").await;

    apply(
        &client,
        &ns,
        json!([
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "test"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"key": "value"}},
        ]),
    )
    .await;
    let ext4 = fixture_dir(cluster, "hostpath-ext4");
    let tmpfs = fixture_dir(cluster, "hostpath-tmpfs");
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "userns-test"])
        .arg(&tmpfs));
    let local = fixture_dir(cluster, "local-pv");
    let host_path_pv = fixture_dir(cluster, "hostpath-pv");
    apply(&client, &ns, local_claim(&ns, "on-local", &local, "local")).await;
    apply(
        &client,
        &ns,
        local_claim(&ns, "on-hostpath", &host_path_pv, "hostPath"),
    )
    .await;
    for claim in ["on-local", "on-hostpath"] {
        assert_eq!(
            bound_and_labelled(&client, &ns, claim).await,
            "true",
            "the default table trusts node-local volumes on this node's ext4"
        );
    }

    let volume = |source: Value| {
        let mut v = json!({"name": "vol"});
        merge(&mut v, source);
        json!({"volumes": [v], "containers": [{"volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}]})
    };
    let shapes = vec![
        Shape {
            name: "emptydir",
            spec: volume(json!({"emptyDir": {}})),
            mount: "/vol",
            probe: "/vol".into(),
            host_dir: None, // below the kubelet's pod directory; found from the pod's uid
        },
        Shape {
            name: "configmap",
            spec: volume(json!({"configMap": {"name": "settings"}})),
            mount: "/vol",
            probe: "/vol/mode".into(),
            host_dir: None,
        },
        Shape {
            name: "secret",
            spec: volume(json!({"secret": {"secretName": "token"}})),
            mount: "/vol",
            probe: "/vol/key".into(),
            host_dir: None,
        },
        Shape {
            name: "projected",
            spec: volume(json!({"projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            ]}})),
            mount: "/vol",
            probe: "/vol/token".into(),
            host_dir: None,
        },
        Shape {
            name: "hostpath-ext4",
            spec: volume(json!({"hostPath": {"path": ext4, "type": "Directory"}})),
            mount: "/vol",
            probe: "/vol".into(),
            host_dir: Some(ext4.clone()),
        },
        Shape {
            name: "hostpath-tmpfs",
            spec: volume(json!({"hostPath": {"path": tmpfs, "type": "Directory"}})),
            mount: "/vol",
            probe: "/vol".into(),
            host_dir: Some(tmpfs.clone()),
        },
        Shape {
            name: "claim-local-pv",
            spec: volume(json!({"persistentVolumeClaim": {"claimName": "on-local"}})),
            mount: "/vol",
            probe: "/vol".into(),
            host_dir: Some(local.clone()),
        },
        Shape {
            name: "claim-hostpath-pv",
            spec: volume(json!({"persistentVolumeClaim": {"claimName": "on-hostpath"}})),
            mount: "/vol",
            probe: "/vol".into(),
            host_dir: Some(host_path_pv.clone()),
        },
    ];

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for shape in &shapes {
        let writable = shape.probe == shape.mount;
        let pod = shell_pod(
            shape.name,
            &shape.probe,
            writable.then_some(shape.mount),
            shape.spec.clone(),
        );
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        assert_eq!(
            annotation(&created, DECISION).as_deref(),
            Some("enabled"),
            "{}: the webhook enables it ({:?})",
            shape.name,
            annotation(&created, "userns.io/decision-reason")
        );
    }

    let kubelet_pods = cluster.state_dir().join("kubelet/root/pods");
    for shape in &shapes {
        let pod = running(&pods, shape.name).await;
        let pid = container_pid(cluster, &pod);
        let map = uid_map(pid);
        assert_ne!(
            map, IDENTITY_MAP,
            "{}: runs in a user namespace",
            shape.name
        );
        assert!(
            map.starts_with("0 ") && !map.starts_with("0 0 ") && map.ends_with(" 65536"),
            "{}: root maps to an unprivileged host range, got {map}",
            shape.name
        );
        let mount = mount_options(pid, shape.mount);
        assert!(
            mount.contains("idmapped"),
            "{}: the volume is an idmapped mount: {mount}",
            shape.name
        );
        let log = logs(&pods, shape.name).await;
        assert!(
            log.contains(&format!("owner 0 {}", shape.probe)),
            "{}: host root's files appear owned by root inside (idmapped), log:\n{log}",
            shape.name
        );
        if shape.probe == shape.mount {
            let host_dir = shape.host_dir.clone().unwrap_or_else(|| {
                let uid = pod.metadata.uid.clone().unwrap();
                kubelet_pods
                    .join(uid)
                    .join("volumes/kubernetes.io~empty-dir/vol")
            });
            let written = host_dir.join("written-by-root");
            let meta = fs::metadata(&written).unwrap_or_else(|e| {
                panic!("{}: {}: {e}\nlog:\n{log}", shape.name, written.display())
            });
            assert_eq!(
                meta.uid(),
                0,
                "{}: the file the container's root wrote is owned by host uid 0 (idmapped), not by its mapped uid",
                shape.name
            );
            assert!(log.contains("wrote 0 "), "{}: log:\n{log}", shape.name);
        }
    }
}

#[tokio::test]
async fn pods_the_webhook_skips_run_exactly_as_written() {
    let _shared = DISRUPTION.read().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-skipped").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Host namespaces and opted-out pods are never sent to the webhook (the chart's
    // matchConditions and objectSelector): no annotation. A UID beyond the pod's 65,536-ID range
    // is sent and skipped with its reason.
    let cases = [
        ("host-network", json!({"hostNetwork": true}), None),
        ("opted-out", json!({}), None),
        (
            "high-uid",
            json!({"securityContext": {"runAsUser": 70000, "runAsGroup": 70000}}),
            Some("skipped"),
        ),
    ];
    for (name, spec, decision) in &cases {
        let mut pod = shell_pod(name, "/tmp", None, spec.clone());
        if *name == "opted-out" {
            pod.metadata.labels = Some(BTreeMap::from([(OPT_OUT.into(), "true".into())]));
        }
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        assert_eq!(
            annotation(&created, DECISION).as_deref(),
            *decision,
            "{name}: decision ({:?})",
            annotation(&created, "userns.io/decision-reason")
        );
        assert_eq!(
            created.spec.as_ref().unwrap().host_users,
            None,
            "{name}: hostUsers left unset"
        );
    }
    for (name, _, _) in &cases {
        let pod = running(&pods, name).await;
        let map = uid_map(container_pid(cluster, &pod));
        assert_eq!(map, IDENTITY_MAP, "{name}: runs without a user namespace");
    }
}

#[tokio::test]
async fn a_local_volume_on_fuse_is_enabled_by_the_table_and_refused_by_the_runtime() {
    let _shared = DISRUPTION.read().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-fuse").await;
    let source = fixture_dir(cluster, "fuse-source");
    let mounted = fixture_dir(cluster, "fuse-mounted");
    run(Command::new("bindfs").arg(&source).arg(&mounted));
    apply(&client, &ns, local_claim(&ns, "on-fuse", &mounted, "local")).await;
    assert_eq!(
        bound_and_labelled(&client, &ns, "on-fuse").await,
        "true",
        "the table cannot see the node's filesystem: a local volume is trusted"
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = shell_pod(
        "on-fuse",
        "/vol",
        None,
        json!({"volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": "on-fuse"}}],
               "containers": [{"volumeMounts": [{"name": "vol", "mountPath": "/vol"}]}]}),
    );
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(annotation(&created, DECISION).as_deref(), Some("enabled"));

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let message = eventually(
        "the kubelet's Failed event for the FUSE pod",
        Duration::from_secs(120),
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=on-fuse,reason=Failed"))
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .filter_map(|e| e.message)
                .find(|m| m.contains("MOUNT_ATTR_IDMAP"))
                .ok_or_else(|| "no Failed event naming MOUNT_ATTR_IDMAP yet".to_owned())
        },
    )
    .await;
    eprintln!("real node: the runtime's refusal of the FUSE volume: {message}");
    // runc names the kubelet's bind mount of the local volume (named after the PV) and why.
    assert!(
        message.contains(&format!("kubernetes.io~local-volume/{ns}-on-fuse"))
            && message.contains("maybe the filesystem used doesn't support idmap mounts"),
        "runc names the mount and the reason: {message}"
    );
    let record = userns_labeler_test_support::repo_root().join("target/real-node");
    fs::create_dir_all(&record).unwrap();
    fs::write(record.join("fuse-idmap-event.txt"), format!("{message}\n")).unwrap();
}

/// Storage classes whose table verdicts differ (facts from the driver table: NFS cannot be
/// idmapped, local-path inherits the node's ext4, a driver in no table is unknown) and the label
/// each class's claims must carry.
const CLASSES: [(&str, &str, &str); 3] = [
    ("rn-nfs", "nfs.csi.k8s.io", "false"),
    ("rn-local-path", "rancher.io/local-path", "true"),
    ("rn-unknown", "example.com/not-in-any-table", "unknown"),
];

/// Creates claims `claim-<i>` for each i in `range`, cycling through [`CLASSES`] (created when
/// missing); returns each claim's name and expected label.
async fn create_claims(
    client: &Client,
    ns: &str,
    range: std::ops::Range<usize>,
) -> Vec<(String, &'static str)> {
    let storage = kube::discovery::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "storage.k8s.io",
        "v1",
        "StorageClass",
    ));
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &storage);
    for (name, provisioner, _) in CLASSES {
        let class: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name}, "provisioner": provisioner,
            "volumeBindingMode": "WaitForFirstConsumer",
        }))
        .unwrap();
        match api.create(&PostParams::default(), &class).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("creating class {name}: {e}"),
        }
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut expected = Vec::new();
    for i in range {
        let (class, _, label) = CLASSES[i % CLASSES.len()];
        let name = format!("claim-{i}");
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                     "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
        claims
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap_or_else(|e| panic!("creating claim {name}: {e}"));
        expected.push((name, label));
    }
    expected
}

async fn all_labelled(client: &Client, ns: &str, expected: &[(String, &'static str)]) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!(
            "{} claims in {ns} labelled as the table says",
            expected.len()
        ),
        Duration::from_secs(120),
        || async {
            let list = claims
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let actual: BTreeMap<String, Option<String>> = list
                .items
                .into_iter()
                .map(|c| {
                    let label = c
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SUPPORTED).cloned());
                    (c.metadata.name.unwrap(), label)
                })
                .collect();
            let wrong: Vec<String> = expected
                .iter()
                .filter(|(name, label)| {
                    actual.get(name).cloned().flatten().as_deref() != Some(*label)
                })
                .map(|(name, label)| format!("{name}: want {label}, have {:?}", actual.get(name)))
                .collect();
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} wrong, e.g. {:?}",
                    wrong.len(),
                    &wrong[..wrong.len().min(5)]
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn killing_the_leaders_container_hands_over_and_pods_keep_being_decided() {
    let _exclusive = DISRUPTION.write().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-leader").await;
    let before = create_claims(&client, &ns, 0..6).await;
    all_labelled(&client, &ns, &before).await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let holder = leases
        .get("userns-labeler")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .expect("a leader");
    let system_pods: Api<Pod> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let leader = system_pods.get(replica_of(&holder)).await.unwrap();
    let restarts_before = leader
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count);
    let pid = container_pid(cluster, &leader);
    let killed_at = Instant::now();
    run(Command::new("kill").args(["-KILL", &pid.to_string()]));

    // The other replica's expiry clock started at the dead leader's last renewal; the restarted
    // container is a new candidate (a new holder suffix) whose clock starts when it first looks.
    let new_holder = eventually(
        "the other replica holding the lease",
        Duration::from_secs(60),
        || async {
            let lease = leases
                .get("userns-labeler")
                .await
                .map_err(|e| e.to_string())?;
            match lease.spec.and_then(|s| s.holder_identity) {
                Some(h) if replica_of(&h) != replica_of(&holder) => Ok(h),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "real node: {new_holder} took the lease {:.1}s after kill -9 of {holder}'s container",
        killed_at.elapsed().as_secs_f64()
    );

    // Labels written before stay; new claims are labelled by the new leader.
    let mut after = before;
    after.extend(create_claims(&client, &ns, 6..12).await);
    all_labelled(&client, &ns, &after).await;

    // Pods keep being decided: by the surviving replica now, by both once the killed one is back.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..5 {
        let pod = pods
            .create(
                &PostParams::default(),
                &shell_pod(&format!("after-kill-{i}"), "/tmp", None, json!({})),
            )
            .await
            .unwrap();
        assert_eq!(
            annotation(&pod, DECISION).as_deref(),
            Some("enabled"),
            "pod {i} decided"
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    eventually(
        "the killed replica restarted and Ready again",
        Duration::from_secs(120),
        || async {
            let pod = system_pods
                .get(replica_of(&holder))
                .await
                .map_err(|e| e.to_string())?;
            let restarts = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|c| c.first())
                .map_or(0, |c| c.restart_count);
            let ready = deployments
                .get("userns-labeler")
                .await
                .map_err(|e| e.to_string())?
                .status
                .and_then(|s| s.ready_replicas);
            if restarts > restarts_before && ready == Some(2) {
                Ok(())
            } else {
                Err(format!("restarts {restarts}, ready {ready:?}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn restarting_the_api_server_while_labelling_loses_no_label() {
    let _exclusive = DISRUPTION.write().await;
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-apiserver").await;
    let mut expected = create_claims(&client, &ns, 0..60).await;
    // The restart lands while the leader is still writing the first batch.
    tokio::task::spawn_blocking(|| node::shared().restart("kube-apiserver"))
        .await
        .unwrap();
    let client = cluster.client().await;
    expected.extend(create_claims(&client, &ns, 60..90).await);
    all_labelled(&client, &ns, &expected).await;
    // And pods are decided again.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually(
        "a decided pod after the restart",
        Duration::from_secs(60),
        || async {
            let name = format!("after-restart-{}", rand_suffix());
            let pod = pods
                .create(
                    &PostParams::default(),
                    &shell_pod(&name, "/tmp", None, json!({})),
                )
                .await
                .map_err(|e| e.to_string())?;
            match annotation(&pod, DECISION) {
                Some(_) => Ok(pod),
                None => {
                    let _ = pods.delete(&name, &DeleteParams::default()).await;
                    Err("undecided (webhook not reachable yet)".to_owned())
                }
            }
        },
    )
    .await;
    assert_eq!(annotation(&pod, DECISION).as_deref(), Some("enabled"));
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}
