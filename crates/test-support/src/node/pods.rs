//! What the real-node tests share: the local images, namespaces, waiting for a pod to run,
//! fixture directories under the node's state directory.

use std::{
    fs,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt as _},
};
use serde_json::json;

use super::Cluster;
use crate::repo_root;

/// The reference of a local image built by `make image test-images` (`userns-labeler`, `shell`,
/// `pause`), imported into the node's containerd.
pub fn image(name: &str) -> String {
    let path = repo_root().join(format!("target/images/{name}.ref"));
    fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make image test-images`)", path.display()))
        .trim()
        .to_owned()
}

/// Creates namespace `name`, labelled as a real-node test's; its name.
pub async fn namespace(client: &Client, name: &str) -> String {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"userns-test": "real-node"}}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    name.to_owned()
}

/// The node's name: the host name, lower-cased, as the kubelet registers it.
pub fn node_name() -> String {
    let output = Command::new("hostname").output().expect("hostname");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .to_lowercase()
}

/// Polls `check` every 500 ms until it returns `Ok`; panics after `timeout` with `what` and the
/// last error.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Waits (3 minutes at most) until the pod is Running with every container running; the pod.
pub async fn running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(
        &format!("pod {name} Running"),
        Duration::from_secs(180),
        || async {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            let status = pod.status.clone().unwrap_or_default();
            let statuses = status.container_statuses.clone().unwrap_or_default();
            let all_running = !statuses.is_empty()
                && statuses
                    .iter()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
            if status.phase.as_deref() == Some("Running") && all_running {
                Ok(pod)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
}

/// The pod's annotation `key`, if set.
pub fn annotation(pod: &Pod, key: &str) -> Option<String> {
    pod.annotations().get(key).cloned()
}

/// A fixture directory under the node's state directory (removed with the cluster).
pub fn fixture_dir(cluster: &Cluster, name: &str) -> PathBuf {
    let dir = cluster.state_dir().join("fixtures").join(name);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// Waits (60 s at most) until `n` server-side dry-run creates of `probe` in a row come back
/// with the annotation `decision`: every replica behind the webhook's Service answers, not
/// only the first one reached (a replica restarted by another test, or endpoints that kube-proxy
/// has not caught up with, would let a pod through unchanged under failurePolicy Ignore).
pub async fn decided_in_a_row(pods: &Api<Pod>, probe: &Pod, decision: &str, n: usize) {
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let in_a_row = std::cell::Cell::new(0);
    eventually(
        &format!("{n} dry-run pods in a row decided through the Service"),
        Duration::from_secs(60),
        || async {
            let decided = pods
                .create(&dry_run, probe)
                .await
                .is_ok_and(|pod| annotation(&pod, decision).is_some());
            in_a_row.set(if decided { in_a_row.get() + 1 } else { 0 });
            if in_a_row.get() >= n {
                Ok(())
            } else {
                Err(format!("{} in a row", in_a_row.get()))
            }
        },
    )
    .await
}
