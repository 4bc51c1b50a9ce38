//! The real node's teardown (`tests/node/cluster.sh`) leaves nothing behind — no process, mount,
//! cgroup, bridge, nftables table, state directory or host path it created — both when the
//! cluster is stopped in order and after a crash (the script, the kubelet and containerd killed
//! with SIGKILL while a pod with a tmpfs hostPath runs), followed by `cluster.sh cleanup`.
//! One test: two clusters one after the other in this binary.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use serde_json::json;
use userns_labeler_test_support::node::{self, Cluster, HOST_PATHS};

/// Starts a pod that keeps a tmpfs hostPath volume and an emptyDir mounted, and waits for it.
async fn running_pod(cluster: &Cluster) {
    let tmpfs = cluster.state_dir().join("fixtures/tmpfs");
    std::fs::create_dir_all(&tmpfs).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "cleanup-test"])
        .arg(&tmpfs)
        .status()
        .unwrap();
    assert!(status.success());
    let shell = std::fs::read_to_string(
        userns_labeler_test_support::repo_root().join("target/images/shell.ref"),
    )
    .expect("target/images/shell.ref (make test-images)");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "holds-mounts"},
        "spec": {
            "hostUsers": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": shell.trim(), "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "exec sleep 3600"],
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp-host"}, {"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "tmp", "hostPath": {"path": tmpfs, "type": "Directory"}},
                        {"name": "scratch", "emptyDir": {}}],
        }
    }))
    .unwrap();
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pod = pods.get("holds-mounts").await.unwrap();
        if pod.status.and_then(|s| s.phase).as_deref() == Some("Running") {
            return;
        }
        assert!(Instant::now() < deadline, "the pod did not start");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn teardown_leaves_nothing_behind_after_an_orderly_stop_and_after_a_crash() {
    let existed: Vec<&str> = HOST_PATHS
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Orderly: EOF on the script's stdin.
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(running_pod(&cluster));
    assert!(
        !node::leftovers(&existed).is_empty(),
        "a running cluster is visible to the leftover check"
    );
    let stopping = Instant::now();
    cluster.stop();
    eprintln!(
        "real node: orderly teardown in {:.1}s",
        stopping.elapsed().as_secs_f64()
    );
    let left = node::leftovers(&existed);
    assert!(left.is_empty(), "left after an orderly stop: {left:#?}");

    // Crash: the script, the kubelet and containerd die with SIGKILL; shims, the pod's
    // processes, mounts, cgroups and the bridge stay until `cluster.sh cleanup`.
    let cluster = Cluster::start().unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(running_pod(&cluster));
    let mut victims = vec![cluster.supervisor_pid()];
    victims.extend(cluster.component_pid("kubelet"));
    victims.extend(cluster.component_pid("containerd"));
    for pid in &victims {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let left = node::leftovers(&existed);
    assert!(
        left.iter().any(|l| l.starts_with("mount "))
            && left.iter().any(|l| l.starts_with("process ")),
        "the crash left mounts and processes to clean: {left:#?}"
    );
    let cleaning = Instant::now();
    let output = Command::new("bash")
        .arg(node::script())
        .arg("cleanup")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cluster.sh cleanup: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "real node: crash cleanup in {:.1}s",
        cleaning.elapsed().as_secs_f64()
    );
    let left = node::leftovers(&existed);
    assert!(left.is_empty(), "left after a crash and cleanup: {left:#?}");
    drop(cluster);
}
