//! The Kyverno policies of `deploy/kyverno/` on Kyverno's real admission server (out of cluster,
//! `crates/test-support/src/kyverno.rs`) called by the real kube-apiserver of the test control
//! plane: the shipped GlobalContextEntry caching claim maps exactly as the publisher
//! (`src/policy_maps/`) writes them, each policy applied in turn, pods created (server-side dry
//! run) and their mutation checked; then a claim flipped in its map and the window until pods on
//! it stop being enabled. Needs the control plane and the tools; fails with the reason without.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use userns_labeler::{
    keys::Keys,
    policy_maps::{Support, apply_body, desired_shards},
};
use userns_labeler_test_support::{control_plane, kyverno::KyvernoServer, repo_root};

const LABELER_NAMESPACE: &str = "userns-labeler";

fn kubectl_apply(cp: &control_plane::ControlPlane, file: &Path) {
    let out = cp
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(file)
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "kubectl apply -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kubectl_delete_stdin(cp: &control_plane::ControlPlane, file: &Path) {
    let mut child = cp
        .kubectl()
        .args(["delete", "--ignore-not-found", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(file).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Publishes the maps of `claims` for `namespace` as the labeler's writer would (the same
/// bodies, server-side apply under its field manager).
async fn publish(cms: &Api<ConfigMap>, namespace: &str, claims: &[(&str, Support)]) {
    let claims: BTreeMap<String, Support> =
        claims.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect();
    let keys = Keys::default();
    for shard in desired_shards(namespace, &claims).shards {
        let body = apply_body(LABELER_NAMESPACE, &shard, &keys);
        cms.patch(
            &shard.name,
            &PatchParams::apply("userns-labeler").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    }
}

fn pod(name: &str, spec_extra: Value, volumes: Value) -> Pod {
    let mut spec = json!({
        "containers": [{"name": "app", "image": "registry.example/app:1"}],
        "volumes": volumes,
    });
    for (k, v) in spec_extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": spec,
    }))
    .unwrap()
}

fn claim_volumes(claims: &[&str]) -> Value {
    Value::Array(
        claims
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
            .collect(),
    )
}

/// The pod as the API server would store it (server-side dry run).
async fn admitted(pods: &Api<Pod>, pod: &Pod) -> Pod {
    pods.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        pod,
    )
    .await
    .unwrap_or_else(|e| panic!("creating pod {:?}: {e}", pod.metadata.name))
}

fn enabled(pod: &Pod) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_users) == Some(false)
}

/// Dry-run creates `probe` until `want(enabled)` holds; the time it took.
async fn wait_for(
    pods: &Api<Pod>,
    probe: &Pod,
    want: bool,
    what: &str,
    server: &KyvernoServer,
) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    loop {
        if enabled(&admitted(pods, probe).await) == want {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen within 120 s; Kyverno's log:\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The cases every policy must decide the same way (from the blockers in the README).
async fn check_cases(pods: &Api<Pod>, policy: &str) {
    let cases: Vec<(&str, Pod, bool)> = vec![
        (
            "true-claim",
            pod("true-claim", json!({}), claim_volumes(&["db"])),
            true,
        ),
        ("no-volumes", pod("no-volumes", json!({}), json!([])), true),
        (
            "false-claim",
            pod("false-claim", json!({}), claim_volumes(&["nfs"])),
            false,
        ),
        (
            "unknown-claim",
            pod("unknown-claim", json!({}), claim_volumes(&["vendor"])),
            false,
        ),
        (
            "missing-claim",
            pod("missing-claim", json!({}), claim_volumes(&["not-there"])),
            false,
        ),
        (
            "true-and-false",
            pod("true-and-false", json!({}), claim_volumes(&["db", "nfs"])),
            false,
        ),
        (
            "host-network",
            pod(
                "host-network",
                json!({"hostNetwork": true}),
                claim_volumes(&["db"]),
            ),
            false,
        ),
        (
            "host-users-true",
            pod("host-users-true", json!({"hostUsers": true}), json!([])),
            false,
        ),
        (
            "inline-nfs",
            pod(
                "inline-nfs",
                json!({}),
                json!([{"name": "n", "nfs": {"server": "nfs.example", "path": "/x"}}]),
            ),
            false,
        ),
        (
            "hostpath-dev",
            pod(
                "hostpath-dev",
                json!({}),
                json!([{"name": "d", "hostPath": {"path": "/dev/ttyUSB0"}}]),
            ),
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, pod, want) in cases {
        let got = admitted(pods, &pod).await;
        if enabled(&got) != want {
            wrong.push(format!("{name}: enabled {} (want {want})", enabled(&got)));
            continue;
        }
        let annotations = got.metadata.annotations.clone().unwrap_or_default();
        if want {
            assert_eq!(
                annotations.get("userns.io/decision").map(String::as_str),
                Some("enabled"),
                "{policy} {name}"
            );
            assert!(
                annotations["userns.io/decision-reason"].contains(policy),
                "{policy} {name}: {annotations:?}"
            );
            // Only hostUsers and the two annotations change: no label added.
            assert_eq!(
                got.metadata.labels, pod.metadata.labels,
                "{policy} {name}: labels"
            );
        } else {
            assert!(
                !annotations.contains_key("userns.io/decision"),
                "{policy} {name}: {annotations:?}"
            );
        }
    }
    assert!(wrong.is_empty(), "{policy}:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn both_policies_decide_pods_on_the_live_kyverno_server_from_the_published_claim_maps() {
    let cp = control_plane::shared();
    assert!(
        !cp.is_external(),
        "this test starts Kyverno against the local control plane"
    );
    let server = KyvernoServer::start(cp);
    let client = cp.client().await;
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": LABELER_NAMESPACE}})).unwrap(),
        )
        .await;
    let ns = cp.namespace("kyverno-live").await;
    let cms = Api::<ConfigMap>::namespaced(client.clone(), LABELER_NAMESPACE);
    publish(
        &cms,
        &ns,
        &[
            ("db", Support::True),
            ("nfs", Support::False),
            ("vendor", Support::Unknown),
        ],
    )
    .await;
    // A claim "true" only in another namespace's map must not count here.
    publish(&cms, "elsewhere", &[("not-there", Support::True)]).await;

    let deploy = repo_root().join("deploy/kyverno");
    kubectl_apply(cp, &deploy.join("globalcontextentry.yaml"));
    // Not `kubectl wait --for=condition=Ready`: out of cluster the entry's status did not
    // turn Ready within 120 s; the first mutation below (polled) shows the entry is loaded.

    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let probe = pod("probe", json!({}), claim_volumes(&["db"]));
    for (file, policy) in [
        ("enable-userns.yaml", "userns-enable-when-safe"),
        ("enable-userns-cel.yaml", "userns-enable-when-safe-cel"),
    ] {
        publish(
            &cms,
            &ns,
            &[
                ("db", Support::True),
                ("nfs", Support::False),
                ("vendor", Support::Unknown),
            ],
        )
        .await;
        kubectl_apply(cp, &deploy.join(file));
        let took = wait_for(
            &pods,
            &probe,
            true,
            &format!("{policy} enabling a pod"),
            &server,
        )
        .await;
        eprintln!("{policy}: first mutation seen {took:?} after apply");
        check_cases(&pods, policy).await;

        // The table says "false" now: the map changes, Kyverno's projection follows.
        publish(
            &cms,
            &ns,
            &[
                ("db", Support::False),
                ("nfs", Support::False),
                ("vendor", Support::Unknown),
            ],
        )
        .await;
        let window = wait_for(
            &pods,
            &probe,
            false,
            &format!("{policy} after db flipped to false"),
            &server,
        )
        .await;
        eprintln!(
            "{policy}: a flipped claim stops enabling pods {window:?} after its map is written"
        );
        assert!(
            window < Duration::from_secs(10),
            "{policy}: {window:?} from the map write until Kyverno stopped enabling"
        );
        // The next policy starts from a clean slate (each would see the other's hostUsers).
        kubectl_delete_stdin(cp, &deploy.join(file));
    }
}
