//! The pod decision for a pod with 10 claims against the full default table, with 10,000 claims
//! in the view (as in a busy cluster's cache).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use userns_labeler::capability::{DriverTable, PrunedClaim, Snapshot, decide_pod, resolve_claim};
use userns_labeler::keys::Keys;

const DRIVERS: [(&str, &str); 5] = [
    ("longhorn", "driver.longhorn.io"),
    ("ebs", "ebs.csi.aws.com"),
    ("ceph", "rook-ceph.rbd.csi.ceph.com"),
    ("local", "rancher.io/local-path"),
    ("topolvm", "topolvm.io"),
];

fn view() -> Snapshot {
    let mut view = Snapshot::default();
    for (name, provisioner) in DRIVERS {
        view.add_class(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "provisioner": provisioner,
                "parameters": {"csi.storage.k8s.io/fstype": "ext4"}
            }))
            .unwrap(),
        );
    }
    for i in 0..10_000 {
        let (class, driver) = DRIVERS[i % DRIVERS.len()];
        view.add_claim(
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("data-{i}"),
                    "namespace": format!("ns-{}", i % 100),
                    "annotations": {"volume.kubernetes.io/storage-provisioner": driver}
                },
                "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"]}
            }))
            .unwrap(),
        );
    }
    view
}

/// A pod in ns-0 mounting 10 of its claims (all supported), plus the usual projected token,
/// a configMap and an emptyDir.
fn pod() -> Pod {
    let mut volumes: Vec<_> = (0..10)
        .map(|k| json!({"name": format!("v{k}"), "persistentVolumeClaim": {"claimName": format!("data-{}", k * 100)}}))
        .collect();
    volumes.push(json!({"name": "token", "projected": {"sources": []}}));
    volumes.push(json!({"name": "config", "configMap": {"name": "app"}}));
    volumes.push(json!({"name": "tmp", "emptyDir": {}}));
    serde_json::from_value(json!({
        "metadata": {"name": "app-0", "namespace": "ns-0"},
        "spec": {
            "containers": [{"name": "app", "image": "nginx:1.27", "securityContext": {"runAsUser": 1000}}],
            "volumes": volumes
        }
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let view = view();
    let table = DriverTable::defaults();
    let keys = Keys::default();
    let pod = pod();
    let decision = decide_pod(&pod, "ns-0", &view, &table, &keys);
    assert!(
        decision.mutate(),
        "bench pod must be the full path: {:?}",
        decision.blockers
    );
    assert_eq!(decision.volumes_checked, 13);

    c.bench_function("decide_pod/10_claims/default_table", |b| {
        b.iter(|| decide_pod(black_box(&pod), "ns-0", &view, &table, &keys))
    });

    // Pruned, as the controller's cache holds it.
    let claim: PrunedClaim = serde_json::from_value(json!({
        "metadata": {"name": "c", "namespace": "ns-0",
                     "annotations": {"volume.kubernetes.io/storage-provisioner": "topolvm.io"}},
        "spec": {"storageClassName": "topolvm", "accessModes": ["ReadWriteOnce", "ReadWriteOncePod"]}
    }))
    .unwrap();
    c.bench_function("resolve_claim/default_table", |b| {
        b.iter(|| resolve_claim(black_box(&claim), &view, &table, &keys))
    });

    let unknown: Pod = serde_json::from_value(json!({
        "metadata": {"name": "x", "namespace": "ns-0"},
        "spec": {"containers": [{"name": "a", "image": "a"}],
                 "volumes": [{"name": "v", "csi": {"driver": "nothing.matches.example.com"}}]}
    }))
    .unwrap();
    c.bench_function("decide_pod/unmatched_driver_scans_whole_table", |b| {
        b.iter(|| decide_pod(black_box(&unknown), "ns-0", &view, &table, &keys))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
