//! The shared table of pod cases (`tests/cases/pods.yaml`, read by
//! `crates/test-support/src/cases.rs`) against the built-in webhook, end to end: the real
//! `userns-labeler run` binary (controller and webhook, as the least-privileged user of the
//! chart's RBAC) on the real kube-apiserver of the test control plane. The table's storage
//! classes, volumes, nodes and claims are created as real objects; the test waits until the
//! controller has labelled every claim (and node) as the table says, then creates each case's pod
//! through the API server (server-side dry run, the webhook registered with `failurePolicy:
//! Fail`) and compares the webhook's decision with the table's `webhook:` column: `hostUsers`,
//! the `userns.io/decision` annotation, and every blocker code the decision-reason names.
//!
//! The Kyverno policies are checked against the same table in `tests/kyverno_server.rs`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use userns_labeler_test_support::cases::{Case, CaseNamespaces, Decision, Table, named_blockers};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, eventually, label_of};

/// The binary under test (cargo sets this for the root package's tests).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const LABEL: &str = "userns.io/idmap-supported";
const NODE_LABEL: &str = "userns.io/user-namespaces";
const DECISION: &str = "userns.io/decision";
const REASON: &str = "userns.io/decision-reason";
const WAIT: Duration = Duration::from_secs(60);
const OPT_OUTS: &str = "userns_labeler_webhook_admissions_total";
/// The labeler's hostPath evidence ConfigMap (`--evidence-config-map`'s default).
const EVIDENCE_CONFIG_MAP: &str = "userns-labeler-idmap-evidence";

/// Creates `object` (JSON) with `api`, failing with the object's name and the error.
async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let what = format!("{} {}", object["kind"], object["metadata"]["name"]);
    let object: K = serde_json::from_value(object).unwrap_or_else(|e| panic!("{what}: {e}"));
    api.create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("creating {what}: {e}"))
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn host_users(pod: &Pod) -> Option<bool> {
    pod.spec.as_ref()?.host_users
}

/// The pod of `case` in `namespace`, as the API server would store it after the webhook
/// (server-side dry run); the API server's refusal as an error.
async fn admitted(admin: &Client, namespace: &str, case: &Case) -> Result<Pod, String> {
    let pod: Pod = serde_json::from_value(case.pod()).map_err(|e| format!("not a Pod: {e}"))?;
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(admin.clone(), namespace)
        .create(&dry_run, &pod)
        .await
        .map_err(|e| format!("the API server refused the pod: {e}"))
}

/// What is wrong with the webhook's answer for `case`, if anything. `opt_outs`: how many
/// admissions the webhook counted as opted out while this pod was created.
fn mismatch(case: &Case, pod: &Pod, opt_outs: f64) -> Option<String> {
    let expected = &case.webhook;
    let decision = annotation(pod, DECISION);
    let reason = annotation(pod, REASON).unwrap_or_default();
    let written = case.written_host_users();
    let got = format!(
        "decision {decision:?}, hostUsers {:?}, reason {reason:?}",
        host_users(pod)
    );
    let wrong = match expected.decision {
        Decision::Enabled => decision != Some("enabled") || host_users(pod) != Some(false),
        Decision::Skipped => {
            let named: BTreeSet<&str> = named_blockers(reason).into_iter().collect();
            let want: BTreeSet<&str> = expected.blockers.iter().map(String::as_str).collect();
            decision != Some("skipped") || host_users(pod) != written || named != want
        }
        Decision::Untouched => {
            decision.is_some()
                || annotation(pod, REASON).is_some()
                || host_users(pod) != written
                || opt_outs != 1.0
        }
    };
    wrong.then(|| {
        format!(
            "{}: expected {expected}, got {got} (opt-out admissions counted: {opt_outs}) — {}",
            case.name, case.proves
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_webhook_decides_every_pod_case_of_the_shared_table_as_the_table_says() {
    let table = Table::load();
    control_plane::install_crypto_provider();
    let cp = control_plane::shared();
    assert!(
        !cp.is_external(),
        "the API server must reach the labeler's webhook at https://127.0.0.1:<port>; unset \
         USERNS_TEST_KUBECONFIG to run this test on the local control plane"
    );
    let admin = cp.client().await;
    let controller_ns = cp.namespace("labeler").await;
    let ns = cp.namespace("pod-cases").await;
    let elsewhere = cp.namespace("pod-cases-elsewhere").await;

    // A namespace of its own, labelled as the case says, for each case with namespaceLabels.
    let own_namespaces = CaseNamespaces::create(&table, cp, &admin).await;

    // The table's cluster-wide objects, then its claims.
    for class in &table.storage_classes {
        create(&Api::<StorageClass>::all(admin.clone()), class.object()).await;
    }
    for volume in &table.volumes {
        create(
            &Api::<PersistentVolume>::all(admin.clone()),
            volume.object(),
        )
        .await;
    }
    for node in &table.nodes {
        create(&Api::<Node>::all(admin.clone()), node.object()).await;
    }
    let claims = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), &ns);
    for claim in table.present_claims() {
        create(&claims, claim.object()).await;
    }
    let claims_elsewhere = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), &elsewhere);
    for (claim, _) in table.claims_elsewhere() {
        create(&claims_elsewhere, claim.object()).await;
    }

    // What the nodes taught the labeler about inline hostPaths, as its leader records it.
    let evidence: std::collections::BTreeMap<String, String> =
        table.host_path_evidence.iter().map(|e| e.entry()).collect();
    if !evidence.is_empty() {
        create(
            &Api::<ConfigMap>::namespaced(admin.clone(), &controller_ns),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": EVIDENCE_CONFIG_MAP}, "data": evidence}),
        )
        .await;
    }

    let kubeconfig = labeler::least_privileged_kubeconfig(cp, &admin, &controller_ns).await;
    let config = format!("userns-pod-cases-{}", ns.name());
    labeler::grant_own_webhook_configuration(&admin, &config).await;
    let started = Instant::now();
    let labeler = Labeler::start_with(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "pod-cases",
        &["--webhook-config-name", &config],
    );
    let mut webhook_namespaces = vec![ns.name(), elsewhere.name()];
    webhook_namespaces.extend(own_namespaces.names());
    labeler
        .register_webhook(&admin, &config, &webhook_namespaces)
        .await;

    // Every claim labelled as the table says (so the controller, and the caches the webhook
    // shares with it, have seen each claim with its class or volume), every node too.
    let expected_labels: Vec<(&Api<PersistentVolumeClaim>, &str, &str)> = table
        .present_claims()
        .map(|c| (&claims, c.name.as_str(), c.label.value().unwrap()))
        .chain(
            table
                .claims_elsewhere()
                .map(|(c, l)| (&claims_elsewhere, c.name.as_str(), l.value().unwrap())),
        )
        .collect();
    for (api, name, label) in &expected_labels {
        let seen = eventually(
            &format!("claim {name} labelled {LABEL}={label}"),
            WAIT,
            || async move {
                let claim = api.get(name).await.ok()?;
                let seen = label_of(&claim, LABEL);
                seen.is_some().then_some(seen)
            },
        )
        .await;
        if seen.as_deref() != Some(*label) {
            let claim = api.get(name).await.unwrap();
            panic!(
                "claim {name}: labelled {seen:?}, but tests/cases/pods.yaml declares {label} \
                 ({}); the labeler's reason: {:?}",
                table.claim(name).unwrap().why,
                claim
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .get("userns.io/idmap-reason")
            );
        }
    }
    let nodes = Api::<Node>::all(admin.clone());
    for node in &table.nodes {
        let want = node.user_namespaces.to_string();
        eventually(
            &format!("node {} labelled {NODE_LABEL}={want}", node.name),
            WAIT,
            || async {
                let n = nodes.get(&node.name).await.ok()?;
                (label_of(&n, NODE_LABEL).as_deref() == Some(want.as_str())).then_some(())
            },
        )
        .await;
    }
    if !evidence.is_empty() {
        let read = format!("host_paths={}", evidence.len());
        eventually(
            "the labeler reading its hostPath evidence",
            WAIT,
            || async {
                let log = labeler.log_text();
                log.lines()
                    .any(|l| l.contains("hostPath evidence updated") && l.contains(&read))
                    .then_some(())
            },
        )
        .await;
    }
    eprintln!(
        "{} claims and {} nodes labelled {:?} after the labeler started",
        expected_labels.len(),
        table.nodes.len(),
        started.elapsed()
    );

    // The webhook answers (its CA is in the configuration, the namespace in its caches).
    let ready = table
        .cases
        .iter()
        .find(|c| c.name == "no-volumes")
        .expect("the table has the case no-volumes");
    eventually("the webhook deciding a first pod", WAIT, || async {
        let pod = admitted(&admin, &ns, ready).await.ok()?;
        annotation(&pod, DECISION).map(|_| ())
    })
    .await;

    let started = Instant::now();
    let mut wrong = Vec::new();
    for case in &table.cases {
        let namespace = own_namespaces.of(case, ns.name());
        let opt_outs_before = labeler.metric(OPT_OUTS, &["outcome=\"opt_out\""]);
        match admitted(&admin, namespace, case).await {
            Err(e) => wrong.push(format!("{}: {e}", case.name)),
            Ok(pod) => {
                let opt_outs = labeler.metric(OPT_OUTS, &["outcome=\"opt_out\""]) - opt_outs_before;
                wrong.extend(mismatch(case, &pod, opt_outs));
            }
        }
    }
    eprintln!(
        "{} pod cases created (dry run) in {:?}",
        table.cases.len(),
        started.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} of {} cases decided otherwise than tests/cases/pods.yaml says:\n{}",
        wrong.len(),
        table.cases.len(),
        wrong.join("\n")
    );
    drop(labeler);
    let _ = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .delete(&config, &Default::default())
        .await;
}
