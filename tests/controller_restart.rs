//! Crash safety: the controller killed with SIGKILL in the middle of labelling 2,000 claims,
//! then restarted, leaves every claim correct; a further restart writes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const CLAIMS: usize = 2_000;
const LABEL: &str = "userns.io/idmap-supported";

/// Even claims are on EBS (a block device with ext4: true), odd ones on NFS (false).
fn expected(i: usize) -> &'static str {
    if i.is_multiple_of(2) { "true" } else { "false" }
}

async fn labels(api: &Api<PersistentVolumeClaim>) -> BTreeMap<String, (Option<String>, String)> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| {
            let label = c
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL).cloned());
            (
                c.metadata.name.clone().unwrap(),
                (label, c.metadata.resource_version.clone().unwrap()),
            )
        })
        .collect()
}

fn all_correct(current: &BTreeMap<String, (Option<String>, String)>) -> bool {
    current.len() == CLAIMS
        && current.iter().all(|(name, (label, _))| {
            let i: usize = name.trim_start_matches("claim-").parse().unwrap();
            label.as_deref() == Some(expected(i))
        })
}

#[tokio::test]
async fn killed_mid_labelling_then_restarted_every_claim_ends_correct_and_another_restart_writes_nothing()
 {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let ns = cp.namespace("crash").await;
    let api: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);

    futures::stream::iter(0..CLAIMS)
        .map(|i| {
            let api = api.clone();
            async move {
                let driver = if i.is_multiple_of(2) { "ebs.csi.aws.com" } else { "nfs.csi.k8s.io" };
                let claim: PersistentVolumeClaim = serde_json::from_value(json!({
                    "metadata": {"name": format!("claim-{i}"),
                                 "annotations": {"volume.kubernetes.io/storage-provisioner": driver}},
                    "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}
                }))
                .unwrap();
                api.create(&PostParams::default(), &claim).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("claims created");

    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let first = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "replica",
    );
    let labelled_at_kill = eventually("some claims labelled", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let n = labels(&api)
                .await
                .values()
                .filter(|(l, _)| l.is_some())
                .count();
            (n >= 100).then_some(n)
        }
    })
    .await;
    first.kill();
    let after_kill = labels(&api)
        .await
        .values()
        .filter(|(l, _)| l.is_some())
        .count();
    eprintln!("labelled when SIGKILLed: {labelled_at_kill}..{after_kill} of {CLAIMS}");

    // Same identity as a restarted pod would have with a stable name: it may retake its lease.
    let second = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "replica",
    );
    eventually("all claims correct", Duration::from_secs(120), || {
        let api = api.clone();
        async move { all_correct(&labels(&api).await).then_some(()) }
    })
    .await;
    assert!(second.stop().success());

    let before = labels(&api).await;
    let third = Labeler::start(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "replica",
    );
    eventually(
        "every claim reconciled by the new process",
        Duration::from_secs(60),
        || async {
            (third.metric("userns_labeler_reconciles_total", &["kind=\"claim\""]) >= CLAIMS as f64)
                .then_some(())
        },
    )
    .await;
    // Reconciles run while not yet leader are no-ops; wait for the lease, then for a full pass.
    eventually("leadership", Duration::from_secs(30), || async {
        third.log_text().contains("is_leader=true").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = labels(&api).await;
    assert_eq!(
        third.metric("userns_labeler_label_writes_total", &[]),
        0.0,
        "no writes from the third process"
    );
    let changed: Vec<&String> = before
        .iter()
        .filter(|(name, v)| after.get(*name) != Some(v))
        .map(|(name, _)| name)
        .collect();
    assert!(changed.is_empty(), "claims rewritten: {changed:?}");
}
