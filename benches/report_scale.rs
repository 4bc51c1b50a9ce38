//! `userns-labeler report -A` on the local control plane with 10,000 pods and 10,000 claims:
//! 2,000 Deployments of 5 pods each (Deployment → ReplicaSet → Pod, as a cluster has them),
//! each pod mounting its own claim (`crates/test-support/src/generate.rs`), in 10 namespaces.
//!
//! Reported: the time to create them, then for `-o json` and `-o html` the wall time (best and
//! median of 3) and the peak resident memory of the report process. The answer is checked
//! against the generator (which Deployments can run). Run: `cargo bench --bench report_scale`
//! (needs `make control-plane`). `USERNS_BENCH_PODS` changes the size (a multiple of 10).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::generate::{self, Shape};

const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const CONCURRENCY: usize = 64;
const PODS_PER_DEPLOYMENT: usize = 5;

fn api(
    client: &Client,
    api_version: &str,
    kind: &str,
    plural: &str,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// Creates the objects, `CONCURRENCY` at a time; returns them as created (with their uids).
async fn create_all(
    client: &Client,
    objects: Vec<Value>,
    kind: &str,
    plural: &str,
) -> Vec<DynamicObject> {
    futures::stream::iter(objects)
        .map(|object| {
            let client = client.clone();
            async move {
                let ns = object["metadata"]["namespace"].as_str().map(str::to_string);
                let api = api(
                    &client,
                    object["apiVersion"].as_str().unwrap(),
                    kind,
                    plural,
                    ns.as_deref(),
                );
                let object: DynamicObject = serde_json::from_value(object).unwrap();
                api.create(&PostParams::default(), &object).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("creating {plural}: {e}"))
}

/// Runs the report; returns the time and the peak resident memory (MiB), checking the answer.
fn report(
    kubeconfig: &std::path::Path,
    format: &str,
    expected_can_run: usize,
    deployments: usize,
) -> (Duration, f64) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let start = Instant::now();
    let mut child = Command::new(USERNS_LABELER)
        .args(["report", "-A", "-o", format, "--kubeconfig"])
        .arg(kubeconfig)
        .stdout(out.reopen().unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut peak_kib = 0u64;
    let status = loop {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        if let Some(kib) = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    assert!(status.success(), "report failed: {status}");
    if format == "json" {
        let report: Value =
            serde_json::from_reader(std::fs::File::open(out.path()).unwrap()).unwrap();
        let deployments_can_run = report["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["kind"] == "Deployment" && w["canRun"] == true)
            .count();
        assert_eq!(deployments_can_run, expected_can_run);
        assert_eq!(report["summary"]["workloads"], deployments);
        assert_eq!(report["claims"]["total"], deployments * PODS_PER_DEPLOYMENT);
    }
    (elapsed, peak_kib as f64 / 1024.0)
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        println!("report_scale: a benchmark; run it with `cargo bench --bench report_scale`");
        return;
    }
    let pods: usize = std::env::var("USERNS_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let deployments = pods / PODS_PER_DEPLOYMENT;
    control_plane::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cp = control_plane::shared();
    let expected_can_run = (0..deployments)
        .filter(|&d| generate::expected_enabled(d))
        .count();
    rt.block_on(async {
        let client = cp.client().await;
        let t = Instant::now();
        let namespaces: Vec<String> = (0..10).map(generate::namespace).collect();
        create_all(&client, namespaces.iter().map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).collect(), "Namespace", "namespaces").await;
        create_all(&client, namespaces.iter().map(|ns| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}})).collect(), "ServiceAccount", "serviceaccounts").await;
        create_all(&client, (0..pods).map(|i| generate::claim(i, Shape::Create)).collect(), "PersistentVolumeClaim", "persistentvolumeclaims").await;
        // Deployment d runs pods d, d + deployments, …: all in namespace team-(d % 10).
        let template = |d: usize| {
            let pod = generate::pod(d, Shape::Create);
            json!({"metadata": {"labels": {"app": format!("app-{d}")}}, "spec": pod["spec"]})
        };
        let created = create_all(&client, (0..deployments).map(|d| json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("app-{d}"), "namespace": generate::namespace(d)},
            "spec": {"replicas": PODS_PER_DEPLOYMENT, "selector": {"matchLabels": {"app": format!("app-{d}")}}, "template": template(d)}
        })).collect(), "Deployment", "deployments").await;
        let owner = |o: &DynamicObject, kind: &str| json!([{"apiVersion": "apps/v1", "kind": kind, "name": o.name_any(), "uid": o.uid().unwrap(), "controller": true}]);
        let replica_sets = create_all(&client, created.iter().map(|d| {
            let i: usize = d.name_any().strip_prefix("app-").unwrap().parse().unwrap();
            json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                   "metadata": {"name": format!("app-{i}-7c9d5b6f4d"), "namespace": generate::namespace(i), "ownerReferences": owner(d, "Deployment")},
                   "spec": {"replicas": PODS_PER_DEPLOYMENT, "selector": {"matchLabels": {"app": format!("app-{i}")}}, "template": template(i)}})
        }).collect(), "ReplicaSet", "replicasets").await;
        let by_deployment: std::collections::HashMap<usize, &DynamicObject> = replica_sets
            .iter()
            .map(|rs| (rs.name_any().split('-').nth(1).unwrap().parse().unwrap(), rs))
            .collect();
        create_all(&client, (0..pods).map(|i| {
            let mut pod = generate::pod(i, Shape::Create);
            pod["spec"]["serviceAccountName"] = json!("default");
            pod["metadata"]["ownerReferences"] = owner(by_deployment[&(i % deployments)], "ReplicaSet");
            pod
        }).collect(), "Pod", "pods").await;
        eprintln!(
            "created {pods} claims, {deployments} Deployments and ReplicaSets, {pods} pods in {:.1?}",
            t.elapsed()
        );
    });
    for format in ["json", "html"] {
        let mut runs: Vec<(Duration, f64)> = (0..3)
            .map(|_| report(cp.kubeconfig_path(), format, expected_can_run, deployments))
            .collect();
        runs.sort_by_key(|a| a.0);
        eprintln!(
            "report -A -o {format}: {pods} pods, {pods} claims, {deployments} workloads: best {:.2?}, median {:.2?}; peak RSS {:.0} MiB",
            runs[0].0,
            runs[1].0,
            runs.iter().map(|r| r.1).fold(0.0, f64::max)
        );
    }
}
