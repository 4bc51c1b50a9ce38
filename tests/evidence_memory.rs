//! 10,000 failure Events against the real kube-apiserver, handled by the real binary with
//! bounded memory: once as they arrive on a running leader's watch, and once as the initial
//! (paged) list of a leader that starts after them. The labeler's resident memory (VmRSS, and
//! its peak VmHWM from `/proc/<pid>/status`) is printed and must not grow with the number of
//! Events: they are handled one at a time and never cached.
//!
//! Its own test binary: its own API server, so no other test's labeler lists these Events.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Event as CoreEvent, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually, label_of};

const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const EVENTS: usize = 10_000;
/// How much the resident memory may grow while handling them (it holds none of them).
const GROWTH_LIMIT_KIB: u64 = 32 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn seen(labeler: &Labeler) -> usize {
    labeler.metric("userns_labeler_failure_events_total", &[]) as usize
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

/// A core/v1 Warning `Failed` Event about a pod, as the kubelet records it.
fn failed(namespace: &str, pod: &str, uid: &str, message: &str) -> CoreEvent {
    serde_json::from_value(json!({
        "metadata": {"generateName": format!("{pod}.")},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace,
            "name": pod, "uid": uid, "fieldPath": "spec.containers{main}"},
        "reason": "Failed", "type": "Warning", "message": message,
        "source": {"component": "kubelet", "host": "node-1"},
        "firstTimestamp": "2026-05-01T10:00:00Z", "lastTimestamp": "2026-05-01T10:00:00Z",
        "count": 1,
    }))
    .unwrap()
}

fn runc_error(uid: &str) -> String {
    format!(
        "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: failed to fulfil mount request: failed to set MOUNT_ATTR_IDMAP on /var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/pv-x/mount: invalid argument (maybe the filesystem used doesn't support idmap mounts on this kernel?)"
    )
}

const UNRELATED: [&str; 3] = [
    "Failed to pull image \"registry.example.com/app:1.2.3\": rpc error: code = NotFound desc = failed to pull and unpack image \"registry.example.com/app:1.2.3\": failed to resolve reference: not found",
    "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: container init was OOM-killed (memory limit too low?)",
    "Error: failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/var/lib/kubelet/pods/x/volumes/kubernetes.io~configmap/cfg\" to rootfs at \"/etc/cfg\": no such file or directory",
];

/// 10,000 Events: 8,000 unrelated failures, 1,000 idmap errors of pods that no longer exist
/// (one GET each), 1,000 idmap errors of 10 pods the webhook did not enable (one GET each pod,
/// then remembered).
async fn record_events(admin: &Client, namespace: &str, not_ours: &[Pod]) {
    let api: Api<CoreEvent> = Api::namespaced(admin.clone(), namespace);
    let events = (0..EVENTS).map(|i| match i % 10 {
        8 => {
            let uid = format!("00000000-0000-4000-8000-{i:012}");
            failed(namespace, &format!("gone-{i}"), &uid, &runc_error(&uid))
        }
        9 => {
            let pod = &not_ours[(i / 10) % not_ours.len()];
            let uid = pod.metadata.uid.clone().unwrap();
            failed(
                namespace,
                pod.metadata.name.as_deref().unwrap(),
                &uid,
                &runc_error(&uid),
            )
        }
        n => failed(
            namespace,
            &format!("app-{i}"),
            &format!("uid-{i}"),
            UNRELATED[n % 3],
        ),
    });
    futures::stream::iter(events)
        .map(|event| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &event)
                    .await
                    .unwrap_or_else(|e| panic!("creating an Event: {e}"));
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test]
async fn ten_thousand_failure_events_are_handled_with_bounded_memory() {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let ns = cp.namespace("events").await;
    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let live = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "live",
    );

    // A sentinel: once its claim is labelled false, the leader is watching Events.
    create(
        &Api::<PersistentVolume>::all(admin.clone()),
        json!({"metadata": {"name": format!("{}-data", ns.name())},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "storageClassName": "", "claimRef": {"namespace": ns.name(), "name": "data"},
                        "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}}}),
    )
    .await;
    create(
        &Api::<PersistentVolumeClaim>::namespaced(admin.clone(), &ns),
        json!({"metadata": {"name": "data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                        "volumeName": format!("{}-data", ns.name()),
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod = |name: &str, enabled: bool| {
        let mut pod = json!({"metadata": {"name": name},
            "spec": {"nodeName": "node-1",
                     "containers": [{"name": "main", "image": "x", "volumeMounts": [{"name": "d", "mountPath": "/d"}]}],
                     "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}});
        if enabled {
            pod["metadata"]["annotations"] = json!({"userns.io/decision": "enabled"});
            pod["spec"]["hostUsers"] = json!(false);
        }
        pod
    };
    let sentinel = create(&pods, pod("sentinel", true)).await;
    let uid = sentinel.metadata.uid.clone().unwrap();
    let sentinel_error = runc_error(&uid).replace("pv-x", &format!("{}-data", ns.name()));
    Api::<CoreEvent>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &failed(&ns, "sentinel", &uid, &sentinel_error),
        )
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);
    eventually(
        "the sentinel claim labelled false",
        Duration::from_secs(30),
        || async {
            let claim = claims.get("data").await.ok()?;
            (label_of(&claim, "userns.io/idmap-supported").as_deref() == Some("false"))
                .then_some(())
        },
    )
    .await;
    let mut not_ours = Vec::new();
    for i in 0..10 {
        not_ours.push(create(&pods, pod(&format!("not-ours-{i}"), false)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (base_rss, base_peak) = (
        status_kib(live.pid(), "VmRSS:"),
        status_kib(live.pid(), "VmHWM:"),
    );
    let before = seen(&live);

    let started = Instant::now();
    record_events(&admin, &ns, &not_ours).await;
    let created_in = started.elapsed();
    eventually(
        "10,000 Events handled by the running leader",
        Duration::from_secs(300),
        || async { (seen(&live) >= before + EVENTS).then_some(()) },
    )
    .await;
    let handled_in = started.elapsed();
    let (live_rss, live_peak) = (
        status_kib(live.pid(), "VmRSS:"),
        status_kib(live.pid(), "VmHWM:"),
    );
    let gets = live.metric(
        "userns_labeler_idmap_failures_total",
        &["outcome=\"pod_gone\""],
    ) + live.metric(
        "userns_labeler_idmap_failures_total",
        &["outcome=\"not_enabled\""],
    );
    let repeated = live.metric(
        "userns_labeler_idmap_failures_total",
        &["outcome=\"repeated\""],
    );
    eprintln!(
        "evidence memory: {EVENTS} Events created in {:.1}s and handled by the running leader within {:.1}s of the first; VmRSS {} -> {} KiB, VmHWM {} -> {} KiB; pods read {gets}, repeated Events answered without a read {repeated}",
        created_in.as_secs_f64(),
        handled_in.as_secs_f64(),
        base_rss,
        live_rss,
        base_peak,
        live_peak
    );
    assert_eq!(seen(&live), before + EVENTS, "every Event once");
    assert!(
        repeated >= 980.0,
        "the 10 pods not enabled are read once each: {repeated}"
    );
    assert!(
        live_peak.saturating_sub(base_peak) < GROWTH_LIMIT_KIB,
        "peak grew by {} KiB",
        live_peak - base_peak
    );
    live.stop();

    // A leader that starts after them lists all of them (paged) when it takes the lease.
    let listing = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "listing",
    );
    let started = Instant::now();
    eventually(
        "10,001 Events listed by the new leader",
        Duration::from_secs(300),
        || async { (seen(&listing) > EVENTS).then_some(()) },
    )
    .await;
    let listed_in = started.elapsed();
    let (rss, peak) = (
        status_kib(listing.pid(), "VmRSS:"),
        status_kib(listing.pid(), "VmHWM:"),
    );
    eprintln!(
        "evidence memory: a new leader listed and handled {} Events within {:.1}s of its start; VmRSS {rss} KiB, VmHWM {peak} KiB (the first leader before the Events: VmHWM {base_peak} KiB)",
        seen(&listing),
        listed_in.as_secs_f64()
    );
    assert_eq!(seen(&listing), EVENTS + 1);
    assert!(
        peak.saturating_sub(base_peak) < GROWTH_LIMIT_KIB,
        "listing {EVENTS} Events raised the peak by {} KiB",
        peak.saturating_sub(base_peak)
    );
}
