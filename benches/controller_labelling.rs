//! Labelling throughput on the local control plane, side by side with the API server's own limit.
//!
//! 1. A plain client loop sends the controller's exact server-side-apply patches for 10,000
//!    claims (namespace A) at the controller's concurrency: the API server's limit.
//! 2. The controller is started and labels another 10,000 claims (namespace B) and 10,000
//!    volumes; claims in A are already correct and cost no write.
//!
//! Reported: claims per second for both, and the controller's resident memory with everything
//! cached. Run: `cargo bench --bench controller_labelling` (needs `make control-plane`).
//! `USERNS_BENCH_CLAIMS` changes the size.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use userns_labeler_test_support::{control_plane, labeler};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const CONCURRENCY: usize = 16;

fn claim(i: usize) -> PersistentVolumeClaim {
    let driver = if i.is_multiple_of(2) {
        "ebs.csi.aws.com"
    } else {
        "nfs.csi.k8s.io"
    };
    serde_json::from_value(json!({
        "metadata": {"name": format!("claim-{i}"),
                     "annotations": {"volume.kubernetes.io/storage-provisioner": driver}},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap()
}

async fn create_all<K, F>(api: &Api<K>, n: usize, make: F)
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: Fn(usize) -> K,
{
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let object = make(i);
            async move {
                api.create(&PostParams::default(), &object)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("objects created");
}

async fn labelled(api: &Api<PersistentVolumeClaim>) -> usize {
    api.list_metadata(&ListParams::default().labels("userns.io/idmap-supported"))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: build-check only.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "controller_labelling: a benchmark; run it with `cargo bench --bench controller_labelling`"
        );
        return;
    }
    let n: usize = std::env::var("USERNS_BENCH_CLAIMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    control_plane::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cp = control_plane::shared();
        let admin = cp.client().await;
        let controller_ns = cp.namespace("labeler").await;
        let ns_a = cp.namespace("loop").await;
        let ns_b = cp.namespace("controller").await;
        let a: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns_a);
        let b: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns_b);
        let volumes: Api<PersistentVolume> = Api::all(admin.clone());

        let t = Instant::now();
        create_all(&a, n, claim).await;
        create_all(&b, n, claim).await;
        create_all(&volumes, n, |i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("pv-{}-{i}", ns_b.name())},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": format!("vol-{i}")}}
            }))
            .unwrap()
        })
        .await;
        eprintln!("created {} claims and {n} volumes in {:.1?}", 2 * n, t.elapsed());

        // 1. The API server's limit: the same patches from a plain loop, same concurrency.
        let params = PatchParams::apply("userns-labeler").force();
        let t = Instant::now();
        futures::stream::iter(0..n)
            .map(|i| {
                let a = a.clone();
                let params = params.clone();
                async move {
                    let (label, reason, driver) = if i.is_multiple_of(2) {
                        ("true", "EBS volumes are block devices formatted ext4 or xfs, which support idmapped mounts.", "ebs.csi.aws.com")
                    } else {
                        ("false", "NFS volumes cannot be idmapped.", "nfs.csi.k8s.io")
                    };
                    let patch = json!({
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": format!("claim-{i}"),
                                     "labels": {"userns.io/idmap-supported": label},
                                     "annotations": {"userns.io/idmap-reason": reason, "userns.io/driver": driver}}
                    });
                    a.patch_metadata(&format!("claim-{i}"), &params, &Patch::Apply(&patch))
                        .await
                        .map(|_| ())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .expect("patches");
        let loop_time = t.elapsed();

        // 2. The controller: from start to every claim of B labelled.
        let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
        let t = Instant::now();
        let controller = labeler::Labeler::start(USERNS_LABELER, &kubeconfig, &controller_ns, cp.dir(), "bench");
        let ready_time = t.elapsed();
        loop {
            if labelled(&b).await >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let controller_time = t.elapsed();
        // Let the volume controller finish too, then measure memory with everything cached.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pid = controller.pid();
        let rss = rss_mib(pid);
        let writes = controller.metric("userns_labeler_label_writes_total", &[]);

        println!("labelling {n} claims, concurrency {CONCURRENCY}, on the local control plane:");
        println!(
            "  plain client loop (same SSA patches):   {:>7.0} claims/s  ({:.2?})",
            n as f64 / loop_time.as_secs_f64(),
            loop_time
        );
        println!(
            "  userns-labeler run (start to all done): {:>7.0} claims/s  ({:.2?}, of which {:.2?} to ready; it also labels {n} volumes)",
            n as f64 / controller_time.as_secs_f64(),
            controller_time,
            ready_time
        );
        println!("  controller writes: {writes} (claims of the loop's namespace were already correct)");
        println!(
            "  controller resident memory with {} claims and {n} volumes cached: {rss:.1} MiB",
            2 * n
        );
        drop(controller);
    });
}
