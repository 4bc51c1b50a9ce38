//! The Kyverno policies of `deploy/kyverno/` on Kyverno's real admission server (out of cluster,
//! `crates/test-support/src/kyverno.rs`) called by the real kube-apiserver of the test control
//! plane: the shipped GlobalContextEntry caching claim maps exactly as the publisher
//! (`src/policy_maps/`) writes them, each policy applied in turn, and every case of the pod
//! table shared with the webhook's tests (`tests/cases/pods.yaml`: the claim maps hold each
//! claim's label from it) created (server-side dry run) and its mutation checked against the
//! table (the `policies:` override where the policies are allowed to differ, else the webhook's
//! decision); then a claim flipped in its map and the window until pods on it stop being enabled.
//! Needs the control plane and the tools; fails with the reason without.

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
use serde_json::json;
use userns_labeler::{
    keys::Keys,
    policy_maps::{Support, desired_shards, shard_object},
};
use userns_labeler_test_support::{
    cases::{Case, CaseNamespaces, Decision, Table},
    control_plane,
    kyverno::KyvernoServer,
    repo_root,
};

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
    for shard in desired_shards(namespace, claims).shards {
        let body = shard_object(LABELER_NAMESPACE, &shard, &keys);
        cms.patch(
            &shard.name,
            &PatchParams::apply("userns-labeler").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    }
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

/// Every case of the shared table (`tests/cases/pods.yaml`) decided by `policy`: its `policies:`
/// expectation where the policies may differ, else the webhook's. The pod is created (dry run) in
/// `namespace_of(case)`. On the pod a policy's skip and an opt-out look the same: no decision
/// annotation, `hostUsers` as written (which blocker the ClusterPolicy named is checked with the
/// CLI, `tests/kyverno_policies.rs`).
async fn check_cases(
    client: &kube::Client,
    table: &Table,
    namespace_of: impl Fn(&Case) -> String,
    policy: &str,
) {
    let mut wrong = Vec::new();
    for case in &table.cases {
        let expected = case.policies_expect();
        let pod: Pod = serde_json::from_value(case.pod()).unwrap();
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace_of(case));
        let got = match pods
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &pod,
            )
            .await
        {
            Ok(got) => got,
            Err(e) => {
                wrong.push(format!(
                    "{}: the API server refused the pod: {e}",
                    case.name
                ));
                continue;
            }
        };
        let annotations = got.metadata.annotations.clone().unwrap_or_default();
        let host_users = got.spec.as_ref().and_then(|s| s.host_users);
        let ok = match expected.decision {
            Decision::Enabled => {
                host_users == Some(false)
                    && annotations.get("userns.io/decision").map(String::as_str) == Some("enabled")
                    && annotations
                        .get("userns.io/decision-reason")
                        .is_some_and(|r| r.contains(policy))
                    // Only hostUsers and the two annotations change: no label added.
                    && got.metadata.labels == pod.metadata.labels
            }
            Decision::Skipped | Decision::Untouched => {
                host_users == case.written_host_users()
                    && !annotations.contains_key("userns.io/decision")
            }
        };
        if !ok {
            let why = case.policies.as_ref().map_or(String::new(), |p| {
                format!(" (allowed difference: {})", p.why)
            });
            wrong.push(format!(
                "{}: expected {expected}{why}, got hostUsers {host_users:?}, annotations \
                 {annotations:?}, labels {:?} — {}",
                case.name, got.metadata.labels, case.proves
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{policy}: {} of {} cases decided otherwise than tests/cases/pods.yaml says:\n{}",
        wrong.len(),
        table.cases.len(),
        wrong.join("\n")
    );
}

/// The claim maps of the pods' namespace: every claim of the table that exists there, with its
/// label; `flipped` published as `false` instead.
fn table_maps(table: &Table, flipped: Option<&str>) -> Vec<(String, Support)> {
    table
        .present_claims()
        .map(|c| {
            // The publisher's own reading of the label.
            let support = if Some(c.name.as_str()) == flipped {
                Support::False
            } else {
                Support::from_label(c.label.value())
            };
            (c.name.clone(), support)
        })
        .collect()
}

fn as_refs(maps: &[(String, Support)]) -> Vec<(&str, Support)> {
    maps.iter().map(|(n, s)| (n.as_str(), *s)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn both_policies_decide_every_pod_case_of_the_shared_table_on_the_live_kyverno_server() {
    let table = Table::load();
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
    // A namespace of its own, labelled as the case says, for each case with namespaceLabels
    // (before the policies are applied, so that Kyverno's namespace cache has the labels).
    let own_namespaces = CaseNamespaces::create(&table, cp, &client).await;
    let namespace_of = |case: &Case| own_namespaces.of(case, &ns).to_string();

    let cms = Api::<ConfigMap>::namespaced(client.clone(), LABELER_NAMESPACE);
    // Claims that exist, with their label, only in another namespace's map must not count here.
    let elsewhere = cp.namespace("kyverno-live-elsewhere").await;
    let elsewhere_maps: Vec<(&str, Support)> = table
        .claims_elsewhere()
        .map(|(c, label)| (c.name.as_str(), Support::from_label(label.value())))
        .collect();
    publish(&cms, &elsewhere, &elsewhere_maps).await;

    let deploy = repo_root().join("deploy/kyverno");
    kubectl_apply(cp, &deploy.join("globalcontextentry.yaml"));
    // Not `kubectl wait --for=condition=Ready`: out of cluster the entry's status did not
    // turn Ready within 120 s; the first mutation below (polled) shows the entry is loaded.

    // The probe: the table's pod on one true claim, which is then flipped to false.
    let probe_case = table
        .cases
        .iter()
        .find(|c| c.name == "claim-true")
        .expect("the table has the case claim-true");
    assert_eq!(probe_case.policies_expect().decision, Decision::Enabled);
    let flipped = probe_case.claim_names()[0];
    let mut probe: Pod = serde_json::from_value(probe_case.pod()).unwrap();
    probe.metadata.name = Some("probe".into());
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for (file, policy) in [
        ("enable-userns.yaml", "userns-enable-when-safe"),
        ("enable-userns-cel.yaml", "userns-enable-when-safe-cel"),
    ] {
        publish(&cms, &ns, &as_refs(&table_maps(&table, None))).await;
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
        let started = Instant::now();
        check_cases(&client, &table, &namespace_of, policy).await;
        eprintln!(
            "{policy}: {} pod cases decided as the table says in {:?}",
            table.cases.len(),
            started.elapsed()
        );

        // The table says "false" now: the map changes, Kyverno's projection follows.
        publish(&cms, &ns, &as_refs(&table_maps(&table, Some(flipped)))).await;
        let window = wait_for(
            &pods,
            &probe,
            false,
            &format!("{policy} after {flipped} flipped to false"),
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
