//! The Kyverno chains of the admission benchmark: one Kyverno admission server
//! (`scripts/kyverno-server.sh`, out of cluster) serving four policies, each applied for pods
//! labelled with its own chain only:
//! - `kyverno-noop`: a mutate rule matching every pod and changing none, Kyverno's floor
//!   (`benches/fixtures/kyverno/noop-mutate.yaml`);
//! - `kyverno-seed`: the seed write-up's approach, a LIST of the namespace's claims per
//!   admission (`benches/fixtures/kyverno/apicall-list-per-pod.yaml`);
//! - `kyverno-policy`: `deploy/kyverno/enable-userns.yaml` (ClusterPolicy);
//! - `kyverno-cel`: `deploy/kyverno/enable-userns-cel.yaml` (MutatingPolicy);
//! - `kyverno-const`, `kyverno-const-cel`: the same mutation as those two, made on every pod
//!   without a condition or a lookup (`benches/fixtures/kyverno/constant-mutate*.yaml`), Kyverno's
//!   floor for producing that patch, as a ClusterPolicy and as a MutatingPolicy.
//!
//! The last two read the claim maps the labeler publishes (it runs with `--claim-maps`) through
//! `deploy/kyverno/globalcontextentry.yaml`, pointed at the labeler's namespace. Kyverno's own
//! configuration narrows its webhooks to pods of the Kyverno chains, so that the other chains'
//! pods never reach it; [`start_server`] checks that on the registered configurations.

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use userns_labeler_test_support::kyverno::KyvernoServer;
use userns_labeler_test_support::repo_root;

use super::{CHAIN_LABEL, Env, Running, create, pod};

/// The chains served by Kyverno, in the order they start: the chain, its policy file, and
/// whether it enables the benchmark pod.
pub const POLICIES: [(&str, &str, bool); 6] = [
    (
        "kyverno-noop",
        "benches/fixtures/kyverno/noop-mutate.yaml",
        false,
    ),
    (
        "kyverno-const",
        "benches/fixtures/kyverno/constant-mutate.yaml",
        true,
    ),
    (
        "kyverno-const-cel",
        "benches/fixtures/kyverno/constant-mutate-cel.yaml",
        true,
    ),
    (
        "kyverno-seed",
        "benches/fixtures/kyverno/apicall-list-per-pod.yaml",
        true,
    ),
    ("kyverno-policy", "deploy/kyverno/enable-userns.yaml", true),
    ("kyverno-cel", "deploy/kyverno/enable-userns-cel.yaml", true),
];

/// The names of the Kyverno chains.
fn chains() -> [&'static str; POLICIES.len()] {
    POLICIES.map(|(chain, _, _)| chain)
}

/// Starts one Kyverno chain: the server first if no Kyverno chain has started it yet (it is
/// kept in [`Env::kyverno`] and stopped with the environment), then the chain's policy, once a
/// probe pod shows that Kyverno serves it.
pub async fn start(env: &Env, chain: &'static str) -> Running {
    if env.kyverno.lock().unwrap().is_none() {
        let server = start_server(env).await;
        *env.kyverno.lock().unwrap() = Some(server);
    }
    let (_, file, _) = POLICIES
        .iter()
        .find(|(name, _, _)| *name == chain)
        .unwrap_or_else(|| panic!("not a Kyverno chain: {chain}"));
    let document = single_document(&repo_root().join(file));
    let applied = for_chain(document, chain);
    kubectl_apply(env, &applied);
    wait_served(env, chain).await;
    Running::new(())
}

/// The Kyverno server with its webhooks narrowed to the Kyverno chains' pods, and the
/// GlobalContextEntry of the claim maps in the labeler's namespace.
async fn start_server(env: &Env) -> KyvernoServer {
    let server = KyvernoServer::start(env.cp);
    let selector = json!({"matchExpressions": [
        {"key": CHAIN_LABEL, "operator": "In", "values": chains()}
    ]});
    let config = json!({"objectSelector": selector});
    let configs: Api<ConfigMap> = Api::namespaced(env.admin.clone(), "kyverno");
    configs
        .patch(
            "kyverno",
            &PatchParams::apply("admission-bench").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kyverno", "namespace": "kyverno"},
                "data": {"webhooks": config.to_string()},
            })),
        )
        .await
        .expect("Kyverno's configuration");
    let mut entry = single_document(&repo_root().join("deploy/kyverno/globalcontextentry.yaml"));
    entry["spec"]["kubernetesResource"]["namespace"] = json!(env.labeler_ns);
    kubectl_apply(env, &entry);
    server
}

/// `policy` matching only pods labelled `bench-chain: <chain>`, under its own name.
fn for_chain(mut policy: Value, chain: &str) -> Value {
    policy["metadata"]["name"] = json!(format!("bench-{chain}"));
    let only = json!({"key": CHAIN_LABEL, "operator": "In", "values": [chain]});
    match policy["kind"].as_str() {
        Some("ClusterPolicy") => {
            for rule in policy["spec"]["rules"].as_array_mut().expect("rules") {
                for filter in rule["match"]["any"].as_array_mut().expect("match.any") {
                    filter["resources"]["selector"] = json!({"matchExpressions": [only.clone()]});
                }
            }
        }
        Some("MutatingPolicy") => {
            let constraints = &mut policy["spec"]["matchConstraints"];
            if constraints["objectSelector"]["matchExpressions"].is_null() {
                constraints["objectSelector"]["matchExpressions"] = json!([]);
            }
            constraints["objectSelector"]["matchExpressions"]
                .as_array_mut()
                .unwrap()
                .push(only);
        }
        other => panic!("not a policy kind of the benchmark: {other:?}"),
    }
    policy
}

/// Polls until Kyverno serves `chain`'s policy: the benchmark pod is enabled in the first
/// namespace, or, for the no-op policy, the one pod name its rule mutates gets its annotation.
/// Then checks that each Kyverno webhook sees only the Kyverno chains' pods.
async fn wait_served(env: &Env, chain: &str) {
    let (_, ns) = &env.namespaces[0];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut probe = pod(chain);
    if chain == "kyverno-noop" {
        probe["metadata"]["name"] = json!("never-a-pod-name-bench-noop");
        probe["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("generateName");
    }
    let body = serde_json::to_vec(&probe).unwrap();
    loop {
        let answer = create(&env.admin, ns, &body).await;
        let served = if chain == "kyverno-noop" {
            answer["metadata"]["annotations"]["bench.userns.io/never"] == "set"
        } else {
            answer["spec"]["hostUsers"] == json!(false)
        };
        if served {
            break;
        }
        let log = env
            .kyverno
            .lock()
            .unwrap()
            .as_ref()
            .map(|s| s.log_tail(30))
            .unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "Kyverno does not serve chain {chain} after 120 s; its log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let configs: Api<MutatingWebhookConfiguration> = Api::all(env.admin.clone());
    let kyverno = configs
        .list(&ListParams::default().labels("webhook.kyverno.io/managed-by=kyverno"))
        .await
        .expect("Kyverno's webhook configurations");
    for config in kyverno {
        for webhook in config.webhooks.unwrap_or_default() {
            let pods = webhook.rules.iter().flatten().any(|r| {
                r.resources
                    .iter()
                    .flatten()
                    .any(|x| x == "pods" || x == "*" || x == "*/*")
            });
            let narrowed = webhook
                .object_selector
                .as_ref()
                .and_then(|s| s.match_expressions.as_ref())
                .is_some_and(|e| {
                    e.iter().any(|r| {
                        r.key == CHAIN_LABEL
                            && r.operator == "In"
                            && r.values
                                .iter()
                                .flatten()
                                .all(|v| chains().contains(&v.as_str()))
                    })
                });
            assert!(
                !pods || narrowed,
                "Kyverno's webhook {} would see other chains' pods: {:?}",
                webhook.name,
                webhook.object_selector
            );
        }
    }
}

/// The one YAML document of `path` (comments allowed), as JSON.
fn single_document(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    documents.retain(|d| !d.is_null());
    assert_eq!(documents.len(), 1, "{}: one document", path.display());
    documents.pop().unwrap()
}

/// `kubectl apply --server-side` of `object` against the control plane.
fn kubectl_apply(env: &Env, object: &Value) {
    let mut child = env
        .cp
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply of {} {}: {}",
        object["kind"],
        object["metadata"]["name"],
        String::from_utf8_lossy(&out.stderr)
    );
}
