//! Self-correction and node awareness on a real node (kubelet + containerd + runc, started by
//! `tests/node/cluster.sh` through `node::shared()`, the chart installed by real helm):
//!
//! - a Deployment whose claim is on a FUSE (bindfs) local volume: the table trusts local
//!   volumes, so its first pod is enabled and runc refuses the idmapped mount; within seconds
//!   the claim and its PV are labelled `false` with the evidence; with `deleteFailedPods` the
//!   failed pod is deleted and its replacement is created without `hostUsers: false` and runs;
//!   without it the failed pod stays and the next pod the operator creates is skipped;
//! - an inline hostPath on the FUSE mount: recorded in the labeler's ConfigMap within seconds,
//!   and the next pod with that hostPath is skipped, naming it;
//! - the real kubelet's `status.runtimeHandlers` labels its Node `true`; with a second Node
//!   object reporting no support, `affinity` mode requires the label and the pod is scheduled
//!   on the real node; `any` mode with no schedulable supporting node skips with the reason.
//!
//! Its own test binary (one cluster per binary) with its own chart installs; tests take a
//! lock and reinstall the chart when they need other values. They fail (never skip) on a
//! machine that cannot run the node.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Event, Node, PersistentVolume, PersistentVolumeClaim, Pod},
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use userns_labeler_test_support::node::pods::{
    annotation, eventually, fixture_dir, image, namespace, node_name, running,
};
use userns_labeler_test_support::node::{self, Cluster};

const RELEASE_NAMESPACE: &str = "userns-system";
const DECISION: &str = "userns.io/decision";
const REASON: &str = "userns.io/decision-reason";
const SUPPORTED: &str = "userns.io/idmap-supported";
const EVIDENCE: &str = "userns.io/idmap-evidence";
const NODE_LABEL: &str = "userns.io/user-namespaces";
const EVIDENCE_CONFIG_MAP: &str = "userns-labeler-idmap-evidence";
/// "Within seconds": from the kubelet's Failed Event to the evidence in place.
const EVIDENCE_WITHIN: Duration = Duration::from_secs(30);

/// The chart values a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Values {
    delete_failed_pods: bool,
    node_mode: &'static str,
}

/// Held for a whole test: the installed values, reinstalled when a test needs others.
static INSTALLED: Mutex<Option<Values>> = Mutex::const_new(None);

async fn cluster_with(
    values: Values,
) -> (
    &'static Cluster,
    tokio::sync::MutexGuard<'static, Option<Values>>,
) {
    let mut installed = INSTALLED.lock().await;
    let cluster = node::shared();
    if *installed != Some(values) {
        let started = Instant::now();
        let delete = format!("controller.deleteFailedPods={}", values.delete_failed_pods);
        let mode = format!("webhook.nodeMode={}", values.node_mode);
        cluster.script(&[
            "install",
            "--set",
            "replicaCount=1",
            "--set",
            "logFormat=plain",
            "--set",
            &delete,
            "--set",
            &mode,
        ]);
        eprintln!(
            "real node: chart installed with {values:?} and its webhook deciding pods (cluster.sh install waits for it) in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        *installed = Some(values);
    }
    (cluster, installed)
}

/// A pod spec of the shell image that sleeps, with `volumes` mounted at `/vol`.
fn shell_spec(volume: Value) -> Value {
    json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "main",
            "image": image("shell"),
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", "ls /vol >/dev/null; exec sleep 3600"],
            "volumeMounts": [{"name": "vol", "mountPath": "/vol"}],
        }],
        "volumes": [volume],
    })
}

fn plain_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image("shell"), "imagePullPolicy": "Never",
                            "command": ["/bin/sh", "-c", "exec sleep 3600"]}],
        }
    }))
    .unwrap()
}

/// Polls `check` every 500 ms until it returns `Ok`, or panics with `what` and the last state.
/// A FUSE mount (bindfs over a directory) under the node's state directory, removed with it.
fn fuse_mount(cluster: &Cluster, name: &str) -> PathBuf {
    let source = fixture_dir(cluster, &format!("{name}-source"));
    let mounted = fixture_dir(cluster, &format!("{name}-fuse"));
    let output = Command::new("bindfs")
        .arg(&source)
        .arg(&mounted)
        .output()
        .expect("bindfs");
    assert!(
        output.status.success(),
        "bindfs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    mounted
}

/// A local PV at `path` on this node, and a claim pre-bound to it; waits until the claim is
/// Bound and labelled, and returns the label and the PV's name.
async fn local_claim(client: &Client, ns: &str, name: &str, path: &Path) -> (String, String) {
    let pv_name = format!("{ns}-{name}");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Mi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
            "claimRef": {"namespace": ns, "name": name},
            "local": {"path": path},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name()]}]}]}},
        }
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv_name,
                 "resources": {"requests": {"storage": "1Mi"}}}
    }))
    .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let label = eventually(
        &format!("claim {name} Bound and labelled"),
        Duration::from_secs(90),
        || async {
            let pvc = claims.get(name).await.map_err(|e| e.to_string())?;
            let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
            match (
                phase.as_deref(),
                pvc.metadata.labels.as_ref().and_then(|l| l.get(SUPPORTED)),
            ) {
                (Some("Bound"), Some(label)) => Ok(label.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    (label, pv_name)
}

/// The kubelet's Failed Event naming MOUNT_ATTR_IDMAP for the pod: its message and time.
async fn runc_refusal(client: &Client, ns: &str, pod: &str) -> (String, Timestamp) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("the kubelet's Failed event for {pod}"),
        Duration::from_secs(180),
        || async {
            let list = events
                .list(
                    &ListParams::default()
                        .fields(&format!("involvedObject.name={pod},reason=Failed")),
                )
                .await
                .map_err(|e| e.to_string())?;
            list.items
                .into_iter()
                .filter_map(|e| {
                    let time = e.first_timestamp.as_ref().map(|t| t.0)?;
                    e.message
                        .filter(|m| m.contains("MOUNT_ATTR_IDMAP"))
                        .map(|m| (m, time))
                })
                .next()
                .ok_or_else(|| "no Failed event naming MOUNT_ATTR_IDMAP yet".to_owned())
        },
    )
    .await
}

/// Waits until `claim` and `pv` are labelled `false` with evidence; returns the claim's
/// evidence and when it was seen.
async fn labelled_false_with_evidence(
    client: &Client,
    ns: &str,
    claim: &str,
    pv: &str,
) -> (Value, Timestamp) {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    eventually(
        &format!("claim {claim} and PV {pv} labelled false with evidence"),
        Duration::from_secs(120),
        || async {
            let c = claims.get(claim).await.map_err(|e| e.to_string())?;
            let v = volumes.get(pv).await.map_err(|e| e.to_string())?;
            let state =
                |labels: Option<&std::collections::BTreeMap<String, String>>,
                 annotations: Option<&std::collections::BTreeMap<String, String>>| {
                    (
                        labels.and_then(|l| l.get(SUPPORTED).cloned()),
                        annotations.and_then(|a| a.get(EVIDENCE).cloned()),
                    )
                };
            match (
                state(c.metadata.labels.as_ref(), c.metadata.annotations.as_ref()),
                state(v.metadata.labels.as_ref(), v.metadata.annotations.as_ref()),
            ) {
                ((Some(a), Some(evidence)), (Some(b), Some(_))) if a == "false" && b == "false" => {
                    Ok((
                        serde_json::from_str(&evidence).map_err(|e| e.to_string())?,
                        Timestamp::now(),
                    ))
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

fn deployment(name: &str, claim: &str) -> Deployment {
    let mut spec =
        shell_spec(json!({"name": "vol", "persistentVolumeClaim": {"claimName": claim}}));
    spec["terminationGracePeriodSeconds"] = json!(1);
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            // The replacement may start while the failed pod is still going away.
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        }
    }))
    .unwrap()
}

async fn pods_of(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

/// The Deployment's first pod, once it exists.
async fn first_pod(pods: &Api<Pod>, app: &str) -> Pod {
    eventually(
        &format!("the first pod of {app}"),
        Duration::from_secs(60),
        || async {
            pods_of(pods, app)
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "none yet".to_owned())
        },
    )
    .await
}

/// Checks the runc refusal and the evidence it became; returns the first pod.
async fn refused_and_labelled(client: &Client, ns: &str, app: &str, claim: &str, pv: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first = first_pod(&pods, app).await;
    let first_name = first.metadata.name.clone().unwrap();
    assert_eq!(
        annotation(&first, DECISION).as_deref(),
        Some("enabled"),
        "the table trusts local volumes"
    );
    let (message, failed_at) = runc_refusal(client, ns, &first_name).await;
    assert!(
        message.contains("failed to set MOUNT_ATTR_IDMAP on")
            && message.contains(&format!("kubernetes.io~local-volume/{pv}")),
        "runc names the kubelet's mount of the local volume: {message}"
    );
    let (evidence, seen_at) = labelled_false_with_evidence(client, ns, claim, pv).await;
    let took = seen_at.duration_since(failed_at);
    eprintln!(
        "real node: claim {ns}/{claim} labelled false {:.1}s after the kubelet's Failed event (event time has 1 s resolution); evidence {evidence}",
        took.as_secs_f64()
    );
    assert!(
        took.as_secs_f64() < EVIDENCE_WITHIN.as_secs_f64(),
        "took {took:?}"
    );
    assert_eq!(evidence["pod"], format!("{ns}/{first_name}"));
    assert_eq!(evidence["node"], node_name());
    assert_eq!(evidence["runtime"], "runc");
    assert!(
        evidence["error"]
            .as_str()
            .unwrap()
            .contains("MOUNT_ATTR_IDMAP"),
        "{evidence}"
    );
    let warnings: Api<Event> = Api::namespaced(client.clone(), ns);
    let warned = warnings
        .list(&ListParams::default().fields(&format!(
            "reason=IdmapMountFailed,involvedObject.name={claim}"
        )))
        .await
        .unwrap();
    assert!(!warned.items.is_empty(), "a Warning Event on the claim");
    first
}

#[tokio::test]
async fn with_deletion_on_a_deployment_on_fuse_is_labelled_false_and_replaced_by_a_running_pod_without_a_user_namespace()
 {
    let (cluster, _installed) = cluster_with(Values {
        delete_failed_pods: true,
        node_mode: "affinity",
    })
    .await;
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-ev-delete").await;
    let mounted = fuse_mount(cluster, "ev-delete");
    let (label, pv) = local_claim(&client, &ns, "data", &mounted).await;
    assert_eq!(label, "true", "the table cannot see the node's filesystem");
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("app", "data"))
        .await
        .unwrap();
    let first = refused_and_labelled(&client, &ns, "app", "data", &pv).await;
    let first_uid = first.metadata.uid.clone().unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let replacement = eventually("the replacement pod", Duration::from_secs(120), || async {
        pods_of(&pods, "app")
            .await
            .into_iter()
            .find(|p| {
                p.metadata.uid.as_deref() != Some(&first_uid)
                    && p.metadata.deletion_timestamp.is_none()
            })
            .ok_or_else(|| "only the failed pod".to_owned())
    })
    .await;
    let name = replacement.metadata.name.clone().unwrap();
    assert_eq!(
        annotation(&replacement, DECISION).as_deref(),
        Some("skipped")
    );
    let reason = annotation(&replacement, REASON).unwrap();
    assert!(
        reason.starts_with("ClaimNotSupported: ") && reason.contains(EVIDENCE),
        "{reason}"
    );
    assert_eq!(
        replacement.spec.as_ref().unwrap().host_users,
        None,
        "no hostUsers: false"
    );
    running(&pods, &name).await;
    eprintln!("real node: replacement {name} Running without a user namespace: {reason}");
    assert!(
        pods.get_opt(first.metadata.name.as_deref().unwrap())
            .await
            .unwrap()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    );
}

#[tokio::test]
async fn with_deletion_off_the_failed_pod_stays_and_the_next_pod_the_operator_creates_is_skipped() {
    let (cluster, _installed) = cluster_with(Values {
        delete_failed_pods: false,
        node_mode: "any",
    })
    .await;
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-ev-keep").await;
    let mounted = fuse_mount(cluster, "ev-keep");
    let (_, pv) = local_claim(&client, &ns, "data", &mounted).await;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("app", "data"))
        .await
        .unwrap();
    let first = refused_and_labelled(&client, &ns, "app", "data", &pv).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let still = pods
        .get(first.metadata.name.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        still.metadata.uid, first.metadata.uid,
        "without the option the failed pod stays"
    );
    assert!(still.metadata.deletion_timestamp.is_none());

    let mut next = plain_pod("next");
    next.spec = Some(
        serde_json::from_value(shell_spec(
            json!({"name": "vol", "persistentVolumeClaim": {"claimName": "data"}}),
        ))
        .unwrap(),
    );
    let created = pods.create(&PostParams::default(), &next).await.unwrap();
    assert_eq!(annotation(&created, DECISION).as_deref(), Some("skipped"));
    let reason = annotation(&created, REASON).unwrap();
    assert!(
        reason.starts_with("ClaimNotSupported: volume vol: claim data"),
        "{reason}"
    );
    running(&pods, "next").await;
    eprintln!("real node: the next pod on the claim is skipped and Running: {reason}");
}

#[tokio::test]
async fn an_inline_host_path_on_fuse_is_recorded_and_the_next_pod_with_it_is_skipped_naming_it() {
    let (cluster, _installed) = cluster_with(Values {
        delete_failed_pods: true,
        node_mode: "affinity",
    })
    .await;
    let client = cluster.client().await;
    let ns = namespace(&client, "rn-ev-hostpath").await;
    let mounted = fuse_mount(cluster, "ev-hostpath");
    let path = mounted.display().to_string();
    let volume = json!({"name": "vol", "hostPath": {"path": path, "type": "Directory"}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut first = plain_pod("first");
    first.spec = Some(serde_json::from_value(shell_spec(volume.clone())).unwrap());
    let created = pods.create(&PostParams::default(), &first).await.unwrap();
    assert_eq!(annotation(&created, DECISION).as_deref(), Some("enabled"));
    let (message, failed_at) = runc_refusal(&client, &ns, "first").await;
    assert!(
        message.contains(&format!("failed to set MOUNT_ATTR_IDMAP on {path}")),
        "{message}"
    );

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    let (entry, seen_at) = eventually(
        "the hostPath evidence",
        Duration::from_secs(120),
        || async {
            let cm = config_maps
                .get_opt(EVIDENCE_CONFIG_MAP)
                .await
                .map_err(|e| e.to_string())?;
            cm.and_then(|cm| cm.data)
                .into_iter()
                .flat_map(|d| d.into_values())
                .filter_map(|v| serde_json::from_str::<Value>(&v).ok())
                .find(|v| v["path"] == path.as_str())
                .map(|v| (v, Timestamp::now()))
                .ok_or_else(|| "no entry yet".to_owned())
        },
    )
    .await;
    let took = seen_at.duration_since(failed_at);
    eprintln!(
        "real node: hostPath {path} recorded {:.1}s after the Failed event: {entry}",
        took.as_secs_f64()
    );
    assert!(
        took.as_secs_f64() < EVIDENCE_WITHIN.as_secs_f64(),
        "took {took:?}"
    );
    assert_eq!(entry["node"], node_name());
    assert_eq!(entry["pod"], format!("{ns}/first"));

    // The webhook of every replica follows the ConfigMap: give the watch a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut next = plain_pod("next");
    next.spec = Some(serde_json::from_value(shell_spec(volume)).unwrap());
    let created = pods.create(&PostParams::default(), &next).await.unwrap();
    assert_eq!(annotation(&created, DECISION).as_deref(), Some("skipped"));
    let reason = annotation(&created, REASON).unwrap();
    assert!(
        reason.starts_with(&format!(
            "VolumeNotSupported: volume vol: hostPath {path} could not be idmap-mounted"
        )),
        "{reason}"
    );
    running(&pods, "next").await;
    eprintln!("real node: the next pod with the hostPath is skipped and Running: {reason}");
}

/// A Node object without a kubelet whose default runtime handler reports no user namespaces.
async fn lacking_node(cluster: &'static Cluster, client: &Client, name: &str) -> NodeGuard {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
        "status": {"runtimeHandlers": [{"name": "", "features": {"recursiveReadOnlyMounts": true, "userNamespaces": false}}]}
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    NodeGuard {
        cluster,
        name: name.to_owned(),
    }
}

/// Deletes a fake Node when the test ends (by kubectl: a drop cannot wait on the test's
/// runtime).
struct NodeGuard {
    cluster: &'static Cluster,
    name: String,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl()
            .args(["delete", "node", &self.name, "--wait=false"])
            .output();
    }
}

async fn node_labelled(client: &Client, name: &str, expected: &str) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        &format!("node {name} labelled {expected}"),
        Duration::from_secs(60),
        || async {
            let node = nodes.get(name).await.map_err(|e| e.to_string())?;
            let label = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(NODE_LABEL).cloned());
            if label.as_deref() == Some(expected) {
                Ok(node)
            } else {
                Err(format!("{label:?}"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_real_kubelet_labels_its_node_and_affinity_mode_schedules_on_it_beside_a_node_without_support()
 {
    let (cluster, _installed) = cluster_with(Values {
        delete_failed_pods: true,
        node_mode: "affinity",
    })
    .await;
    let client = cluster.client().await;
    let real = node_name();
    let node = node_labelled(&client, &real, "true").await;
    let handlers = serde_json::to_string(&node.status.as_ref().unwrap().runtime_handlers).unwrap();
    let reason =
        node.metadata.annotations.as_ref().unwrap()["userns.io/user-namespaces-reason"].clone();
    eprintln!("real node: {real} runtimeHandlers {handlers}; labelled true: {reason}");
    assert!(reason.contains("userNamespaces: true"), "{reason}");

    let _lacking = lacking_node(cluster, &client, "rn-ev-no-userns").await;
    node_labelled(&client, "rn-ev-no-userns", "false").await;
    let ns = namespace(&client, "rn-ev-affinity").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let created = pods
        .create(&PostParams::default(), &plain_pod("placed"))
        .await
        .unwrap();
    assert_eq!(annotation(&created, DECISION).as_deref(), Some("enabled"));
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.host_users, Some(false));
    let terms = serde_json::to_value(
        spec.affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        terms,
        json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": NODE_LABEL, "operator": "In", "values": ["true"]}]}]})
    );
    let placed = running(&pods, "placed").await;
    assert_eq!(
        placed.spec.unwrap().node_name.as_deref(),
        Some(real.as_str())
    );
    eprintln!("real node: affinity mode required {NODE_LABEL}=true and the pod runs on {real}");
}

/// Cordons the real node; uncordons it when dropped (by kubectl, as above).
struct Cordon {
    cluster: &'static Cluster,
    name: String,
}

impl Cordon {
    fn new(cluster: &'static Cluster, name: &str) -> Cordon {
        let output = cluster.kubectl().args(["cordon", name]).output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Cordon {
            cluster,
            name: name.to_owned(),
        }
    }
}

impl Drop for Cordon {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl()
            .args(["uncordon", &self.name])
            .output();
    }
}

#[tokio::test]
async fn any_mode_skips_a_pod_with_the_reason_when_no_schedulable_node_supports_user_namespaces() {
    let (cluster, _installed) = cluster_with(Values {
        delete_failed_pods: false,
        node_mode: "any",
    })
    .await;
    let client = cluster.client().await;
    let _lacking = lacking_node(cluster, &client, "rn-ev-only-lacking").await;
    node_labelled(&client, "rn-ev-only-lacking", "false").await;
    let real = node_name();
    let ns = namespace(&client, "rn-ev-any").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    {
        let _cordoned = Cordon::new(cluster, &real);
        // The webhook's Node store follows the cordon.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let created = pods
            .create(&PostParams::default(), &plain_pod("nowhere"))
            .await
            .unwrap();
        assert_eq!(annotation(&created, DECISION).as_deref(), Some("skipped"));
        let reason = annotation(&created, REASON).unwrap();
        eprintln!("real node: with {real} cordoned: {reason}");
        assert!(
            reason.starts_with("NoUserNamespaceNode: none of the 1 schedulable Linux node(s) supports user namespaces (rn-ev-only-lacking: "),
            "{reason}"
        );
        assert_eq!(created.spec.unwrap().host_users, None);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let created = pods
        .create(&PostParams::default(), &plain_pod("somewhere"))
        .await
        .unwrap();
    assert_eq!(
        annotation(&created, DECISION).as_deref(),
        Some("enabled"),
        "uncordoned, the real node counts again"
    );
    assert_eq!(
        created.spec.unwrap().affinity,
        None,
        "any mode adds no affinity"
    );
}
