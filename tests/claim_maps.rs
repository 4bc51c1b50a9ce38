//! The claim maps for policy engines, published by the real binary (`run --claim-maps`) as the
//! least-privileged user the chart renders with `claimMaps.enabled=true`, against the real
//! kube-apiserver: a namespace's map holds each of its claims with the label the claim carries
//! (NFS `false`, EBS `true` are storage facts, not the engine's output), follows a label change
//! and a deleted claim, an entry someone else wrote into a map is gone at its next write (it
//! could enable pods on a claim that is not `true`), a map deleted by someone else is written
//! again at the namespace's next change, and a namespace that loses its last claim loses its map.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually};
use userns_labeler_test_support::{repo_root, tool};

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const WAIT: Duration = Duration::from_secs(20);

/// The chart's RBAC with the claim maps on, as `helm template` renders it.
fn chart_with_claim_maps() -> String {
    let output = Command::new(tool("helm"))
        .args(["template", "userns-labeler"])
        .arg(repo_root().join("deploy/helm/userns-labeler"))
        .args([
            "--namespace",
            "userns-labeler",
            "--set",
            "claimMaps.enabled=true",
        ])
        .output()
        .expect("helm template");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn claim(name: &str, driver: &str, access: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"volume.kubernetes.io/storage-provisioner": driver}},
        "spec": {"accessModes": [access], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": ""}
    }))
    .unwrap()
}

/// Every shard of `namespace`'s map merged: claim → value (empty when there is none).
async fn map_of(maps: &Api<ConfigMap>, namespace: &str) -> BTreeMap<String, String> {
    let mut merged = BTreeMap::new();
    for index in 0..16 {
        let name = format!("userns-claims.{namespace}.{index}");
        if let Some(map) = maps.get_opt(&name).await.unwrap() {
            merged.extend(map.data.unwrap_or_default());
        }
    }
    merged
}

#[tokio::test]
async fn the_claim_maps_follow_the_labels_of_each_namespace() {
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    let admin = cp.client().await;
    let labeler_ns = cp.namespace("maps-labeler").await;
    let ns = cp.namespace("maps-app").await;
    labeler::install_rbac(&admin, &labeler_ns, &chart_with_claim_maps()).await;
    let kubeconfig = cp.user_kubeconfig(labeler::USER, &[]);
    let labeler = Labeler::start_with(
        USERNS_LABELER,
        &kubeconfig,
        &labeler_ns,
        cp.dir(),
        "claim-maps",
        &["--claim-maps"],
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &labeler_ns);
    for c in [
        claim("ebs", "ebs.csi.aws.com", "ReadWriteOnce"),
        claim("nfs", "nfs.csi.k8s.io", "ReadWriteMany"),
    ] {
        claims.create(&PostParams::default(), &c).await.unwrap();
    }
    let expected = BTreeMap::from([
        ("ebs".to_string(), "true".to_string()),
        ("nfs".to_string(), "false".to_string()),
    ]);
    eventually("the namespace's map with both claims", WAIT, || async {
        let map = map_of(&maps, &ns).await;
        (map == expected).then_some(())
    })
    .await;

    // The operator's override flips the EBS claim's label; the map follows the label.
    claims
        .patch(
            "ebs",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"userns.io/idmap-override": "false"}}}),
            ),
        )
        .await
        .unwrap();
    eventually("the overridden claim false in the map", WAIT, || async {
        let map = map_of(&maps, &ns).await;
        (map.get("ebs").map(String::as_str) == Some("false")).then_some(())
    })
    .await;

    // A deleted claim leaves the map; the last one takes the map with it. (No controller-manager
    // runs here to drop the pvc-protection finalizer of a claim no pod uses: the test does.)
    let delete = |name: &'static str| {
        let claims = claims.clone();
        async move {
            claims.delete(name, &DeleteParams::default()).await.unwrap();
            let release = json!([{"op": "remove", "path": "/metadata/finalizers"}]);
            let release: json_patch::Patch = serde_json::from_value(release).unwrap();
            claims
                .patch(name, &PatchParams::default(), &Patch::<()>::Json(release))
                .await
                .unwrap();
            eventually("the claim deleted", WAIT, || async {
                claims.get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
        }
    };
    // An entry the labeler did not write (a hand edit, another tool) says `true` for a claim
    // that does not exist; the namespace's next change rewrites the map whole, without it.
    maps.patch(
        &format!("userns-claims.{ns}.0"),
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"not-a-claim": "true"}})),
    )
    .await
    .unwrap();
    delete("nfs").await;
    let only_ebs = BTreeMap::from([("ebs".to_string(), "false".to_string())]);
    eventually(
        "the deleted claim and the foreign entry gone from the map",
        WAIT,
        || async { (map_of(&maps, &ns).await == only_ebs).then_some(()) },
    )
    .await;

    // The map deleted behind the labeler's back: the namespace's next change writes it again
    // (the override removed, the EBS claim is `true` again).
    maps.delete(&format!("userns-claims.{ns}.0"), &DeleteParams::default())
        .await
        .unwrap();
    claims
        .patch(
            "ebs",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"userns.io/idmap-override": null}}})),
        )
        .await
        .unwrap();
    let ebs_true = BTreeMap::from([("ebs".to_string(), "true".to_string())]);
    eventually("the deleted map written again", WAIT, || async {
        (map_of(&maps, &ns).await == ebs_true).then_some(())
    })
    .await;

    delete("ebs").await;
    eventually("no map for a namespace without claims", WAIT, || async {
        let left = maps
            .get_opt(&format!("userns-claims.{ns}.0"))
            .await
            .unwrap();
        left.is_none().then_some(())
    })
    .await;

    // What the maps cost is in the labeler's metrics: at least the first map, the override, the
    // deletion of one claim and the map written again; the one shard deleted with the last
    // claim; no failure (a write that found its map gone created it).
    let metric = |name: &str, filter: &str| labeler.metric(name, &[filter]);
    let writes = metric(
        "userns_labeler_claim_map_writes_total",
        "operation=\"write\"",
    );
    assert!(writes >= 4.0, "{writes} writes");
    assert_eq!(
        metric(
            "userns_labeler_claim_map_writes_total",
            "operation=\"delete\""
        ),
        1.0
    );
    assert!(metric("userns_labeler_claim_map_bytes_total", "") > 0.0);
    assert_eq!(metric("userns_labeler_claim_map_failures_total", ""), 0.0);
}
