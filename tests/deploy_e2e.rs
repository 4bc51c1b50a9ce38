//! The chart's objects at work: the real `userns-labeler run`, bound only to the RBAC rendered by
//! the chart (self-signed variant, the one with most permissions), behind the chart's own
//! MutatingWebhookConfiguration (its `service` reference swapped for the binary's loopback URL,
//! as the test API server cannot reach Services), goes through its whole life — caches, labels,
//! label changes with Events, a valid and an invalid driver ConfigMap, the self-signed CA stored
//! in the chart's Secret and written into the caBundle,
//! pods admitted or not sent at all (selectors and CEL matchConditions), leader election,
//! graceful shutdown — against a kube-apiserver that writes an audit log.
//!
//! Then every request of that user in the log is checked: none was refused, and each is granted
//! by a rendered rule (our own small RBAC matcher over the rendered objects, so "RBAC ⊇ calls" is
//! checked directly, not only through the absence of 403s).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::labeler::{self, Labeler, USER, eventually};
use userns_labeler_test_support::tool;

/// The binary under test (cargo sets this for the root package's tests and benchmarks).
const USERNS_LABELER: &str = env!("CARGO_BIN_EXE_userns-labeler");
const WAIT: Duration = Duration::from_secs(30);
const LABEL: &str = "userns.io/idmap-supported";
/// Calls the scenario is known to make (verb, resource): the audit log is judged once all are in.
const EXPECTED_CALLS: [(&str, &str); 18] = [
    ("watch", "persistentvolumeclaims"),
    ("watch", "nodes"),
    ("watch", "events"),
    ("watch", "configmaps"),
    // The claim maps (chart default claimMaps.enabled): created (replaced by update when a
    // namespace's claims change later: `tests/claim_maps.rs`, as the same rendered user).
    ("create", "configmaps"),
    // The last good copy of the driver table.
    ("patch", "configmaps"),
    ("watch", "namespaces"),
    ("patch", "persistentvolumeclaims"),
    ("patch", "persistentvolumes"),
    ("create", "events"),
    ("list", "mutatingwebhookconfigurations"),
    ("watch", "mutatingwebhookconfigurations"),
    ("update", "mutatingwebhookconfigurations"),
    ("create", "leases"),
    ("watch", "leases"),
    ("update", "leases"),
    ("get", "secrets"),
    ("update", "secrets"),
];

/// One rendered RBAC rule, with the namespace it applies in (`None`: cluster-wide).
#[derive(Debug)]
struct Grant {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    names: Vec<String>,
    verbs: Vec<String>,
}

impl Grant {
    fn allows(&self, request: &Request) -> bool {
        let any = |list: &[String], value: &str| list.iter().any(|v| v == "*" || v == value);
        self.namespace
            .as_ref()
            .is_none_or(|ns| request.namespace.as_deref() == Some(ns))
            && any(&self.groups, &request.group)
            && any(&self.resources, &request.resource)
            && any(&self.verbs, &request.verb)
            && (self.names.is_empty()
                || request
                    .name
                    .as_ref()
                    .is_some_and(|n| self.names.contains(n)))
    }
}

/// One request from the audit log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Request {
    verb: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules of the rendered roles, as bound (every binding in the rendering is to the
/// ServiceAccount, which the test replaces by its user).
fn grants(objects: &[Value], namespace: &str) -> Vec<Grant> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .flat_map(|role| {
            let scope = (role["kind"] == "Role").then(|| namespace.to_string());
            role["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |rule| Grant {
                    namespace: scope.clone(),
                    groups: strings(&rule["apiGroups"]),
                    resources: strings(&rule["resources"]),
                    names: strings(&rule["resourceNames"]),
                    verbs: strings(&rule["verbs"]),
                })
        })
        .collect()
}

fn render_self_signed(namespace: &str) -> String {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/userns-labeler");
    let output = Command::new(tool("helm"))
        .args([
            "template",
            "userns-labeler",
            chart,
            "--namespace",
            namespace,
        ])
        .args(["--set", "tls.mode=self-signed"])
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Pods created through the API server behind the chart's webhook configuration: the plain one
/// is enabled, the one with the claim labelled `false` is skipped with a reason, and those the
/// configuration's selectors and matchConditions filter out are not even sent (no annotation).
async fn admit_pods(admin: &kube::Client, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let pod = |name: &str, extra: Value| -> Pod {
        let mut pod = json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        });
        merge(&mut pod, extra);
        serde_json::from_value(pod).unwrap()
    };
    let cases = [
        ("plain", json!({}), Some(false), Some("enabled")),
        (
            "claim-false",
            json!({"spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}}),
            None,
            Some("skipped"),
        ),
        (
            "host-network",
            json!({"spec": {"hostNetwork": true}}),
            None,
            None,
        ),
        ("host-pid", json!({"spec": {"hostPID": true}}), None, None),
        (
            "explicit-host-users",
            json!({"spec": {"hostUsers": true}}),
            Some(true),
            None,
        ),
        (
            "opted-out",
            json!({"metadata": {"labels": {"userns.io/opt-out": "true"}}}),
            None,
            None,
        ),
    ];
    // The API server picks the configuration and its caBundle up asynchronously: wait until
    // the plain pod is mutated in a dry run.
    eventually("the webhook configuration in effect", WAIT, || {
        let pods = pods.clone();
        let plain = pod("plain", json!({}));
        async move {
            let created = pods
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &plain,
                )
                .await
                .ok()?;
            (created.spec?.host_users == Some(false)).then_some(())
        }
    })
    .await;
    for (name, extra, host_users, decision) in cases {
        let created = pods
            .create(&PostParams::default(), &pod(name, extra))
            .await
            .unwrap_or_else(|e| panic!("pod {name}: {e}"));
        let annotations = created.metadata.annotations.unwrap_or_default();
        assert_eq!(
            created.spec.unwrap().host_users,
            host_users,
            "pod {name}: hostUsers"
        );
        assert_eq!(
            annotations.get("userns.io/decision").map(String::as_str),
            decision,
            "pod {name}: decision ({annotations:?})"
        );
        if decision == Some("skipped") {
            let reason = &annotations["userns.io/decision-reason"];
            assert!(
                reason.contains("data"),
                "pod {name}: reason names the claim: {reason}"
            );
        }
    }
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

#[tokio::test]
async fn chart_rbac_grants_every_call_and_its_webhook_configuration_routes_pods_to_the_binary() {
    control_plane::install_crypto_provider();
    let cp = control_plane::ControlPlane::builder()
        .audit_log(true)
        .start();
    let admin = cp.client().await;
    let controller_ns = cp.namespace("rbac-labeler").await;
    let ns = cp.namespace("rbac-claims").await;

    let rendering = render_self_signed(&controller_ns);
    let objects: Vec<Value> = serde_saphyr::from_multiple::<Value>(&rendering)
        .unwrap()
        .into_iter()
        .filter(|o| !o.is_null())
        .collect();
    labeler::install_rbac(&admin, &controller_ns, &rendering).await;
    let kubeconfig = cp.user_kubeconfig(USER, &[]);

    let object = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .unwrap_or_else(|| panic!("the self-signed rendering has a {kind}"))
    };
    let name_of = |kind: &str| {
        object(kind)["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let config_name = name_of("MutatingWebhookConfiguration");
    let config_map_name = name_of("ConfigMap");
    // The chart's CA Secret, created empty as rendered: the binary stores its CA in it.
    let ca_secret_name = name_of("Secret");
    Api::<Secret>::namespaced(admin.clone(), &controller_ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(object("Secret").clone()).unwrap(),
        )
        .await
        .expect("CA Secret");

    let labeler = Labeler::start_with(
        USERNS_LABELER,
        &kubeconfig,
        &controller_ns,
        cp.dir(),
        "rbac",
        &[
            "--webhook-config-name",
            &config_name,
            "--config-map",
            &config_map_name,
            "--self-signed-ca-secret",
            &ca_secret_name,
            // As the chart runs it (claimMaps.enabled by default): the maps' calls judged too.
            "--claim-maps",
        ],
    );

    // The rendered webhook configuration, for real, so the binary writes its CA into it and the
    // API server calls it. Only the Service reference becomes a URL (same path).
    let mut config = object("MutatingWebhookConfiguration").clone();
    let path = config["webhooks"][0]["clientConfig"]["service"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    config["webhooks"][0]["clientConfig"] =
        json!({"url": format!("https://{}{path}", labeler.webhook)});
    let configs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    configs
        .patch(
            &config_name,
            &PatchParams::apply("userns-labeler-tests"),
            &Patch::Apply(&config),
        )
        .await
        .expect("webhook configuration");

    // A class, a claim of it, and a bound volume: labelled true (Longhorn RWO).
    let class: StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "rbac-longhorn"}, "provisioner": "driver.longhorn.io"
    }))
    .unwrap();
    Api::<StorageClass>::all(admin.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"storageClassName": "rbac-longhorn", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("rbac-{}", ns.name())},
        "spec": {"storageClassName": "rbac-longhorn", "accessModes": ["ReadWriteOnce"],
                 "capacity": {"storage": "1Gi"},
                 "csi": {"driver": "driver.longhorn.io", "volumeHandle": "v1"}}
    }))
    .unwrap();
    let volumes: Api<PersistentVolume> = Api::all(admin.clone());
    volumes
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    let label_of = |api: Api<PersistentVolumeClaim>, expected: &'static str| async move {
        eventually(&format!("claim labelled {expected}"), WAIT, || {
            let api = api.clone();
            async move {
                let claim = api.get("data").await.ok()?;
                (claim.metadata.labels?.get(LABEL)? == expected).then_some(())
            }
        })
        .await
    };
    label_of(claims.clone(), "true").await;

    // An operator rule flipping Longhorn to false: a label change, so an Event on the claim.
    let config_maps: Api<ConfigMap> = Api::namespaced(admin.clone(), &controller_ns);
    let rules = "rules:\n  - driver: driver.longhorn.io\n    verdict: false\n    reason: test\n";
    let config_map: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": config_map_name}, "data": {"drivers.yaml": rules}
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &config_map)
        .await
        .unwrap();
    label_of(claims.clone(), "false").await;
    // An invalid table: a Warning Event on the ConfigMap.
    config_maps
        .patch(
            &config_map_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"drivers.yaml": "rules: [{driverRegex: '('}]"}})),
        )
        .await
        .unwrap();
    eventually("the invalid table reported", WAIT, || async {
        (labeler.metric("userns_labeler_config_reloads_total", &["invalid"]) >= 1.0).then_some(())
    })
    .await;
    // The self-signed CA written into the webhook configuration; written again, through the
    // watch on the configuration, once it is deleted and re-created as a GitOps tool would.
    let ca_bundle_written = || {
        eventually("caBundle written", WAIT, || {
            let configs = configs.clone();
            let name = config_name.clone();
            async move {
                let config = configs.get(&name).await.ok()?;
                config.webhooks?[0]
                    .client_config
                    .ca_bundle
                    .as_ref()
                    .map(|_| ())
            }
        })
    };
    ca_bundle_written().await;
    configs
        .delete(&config_name, &Default::default())
        .await
        .expect("webhook configuration deleted");
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(config).unwrap(),
        )
        .await
        .expect("webhook configuration re-created");
    let started = Instant::now();
    ca_bundle_written().await;
    eprintln!(
        "caBundle restored {:?} after the configuration was re-created",
        started.elapsed()
    );
    eventually("both caBundle writes counted", WAIT, || async {
        let ok = labeler.metric(
            "userns_labeler_webhook_ca_bundle_injections_total",
            &["result=\"ok\""],
        );
        (ok == 2.0).then_some(())
    })
    .await;
    admit_pods(&admin, &ns).await;

    // Give the Events (sent in the background) a moment, then a graceful stop: the lease is
    // released and the watches end, so every request reaches the audit log.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = labeler.stop();
    assert!(status.success(), "exit status {status}");

    let grants = grants(&objects, &controller_ns);
    let give_up = Instant::now() + WAIT - Duration::from_secs(1);
    let requests: BTreeSet<Request> =
        eventually("the user's requests in the audit log", WAIT, || {
            let events = cp.audit_events();
            async move {
                let mine: Vec<&Value> = events
                    .iter()
                    .filter(|e| e["user"]["username"] == USER && e["stage"] == "ResponseComplete")
                    .collect();
                let refused: Vec<String> = mine
                    .iter()
                    .filter(|e| e["responseStatus"]["code"] == 403)
                    .map(|e| format!("{} {}", e["verb"], e["requestURI"]))
                    .collect();
                assert!(refused.is_empty(), "refused by RBAC: {refused:#?}");
                let requests: BTreeSet<Request> = mine
                    .iter()
                    .filter(|e| e["objectRef"].is_object())
                    .map(|e| Request {
                        verb: e["verb"].as_str().unwrap().to_string(),
                        group: e["objectRef"]["apiGroup"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        resource: e["objectRef"]["resource"].as_str().unwrap().to_string(),
                        namespace: e["objectRef"]["namespace"].as_str().map(String::from),
                        name: e["objectRef"]["name"].as_str().map(String::from),
                    })
                    .collect();
                // Every kind of call the scenario makes must be in the log before judging it.
                let seen = |verb: &str, resource: &str| {
                    requests
                        .iter()
                        .any(|r| r.verb == verb && r.resource == resource)
                };
                let missing: Vec<String> = EXPECTED_CALLS
                    .iter()
                    .filter(|(verb, resource)| !seen(verb, resource))
                    .map(|(verb, resource)| format!("{verb} {resource}"))
                    .collect();
                if !missing.is_empty() && Instant::now() > give_up {
                    panic!("calls missing from the audit log: {missing:?}; logged: {requests:#?}");
                }
                missing.is_empty().then_some(requests)
            }
        })
        .await;

    let ungranted: Vec<&Request> = requests
        .iter()
        .filter(|r| !grants.iter().any(|g| g.allows(r)))
        .collect();
    assert!(
        ungranted.is_empty(),
        "requests no rendered rule grants: {ungranted:#?}"
    );
    let resources: BTreeSet<&str> = requests.iter().map(|r| r.resource.as_str()).collect();
    for resource in [
        "persistentvolumeclaims",
        "persistentvolumes",
        "storageclasses",
        "namespaces",
        "configmaps",
        "leases",
        "events",
        "mutatingwebhookconfigurations",
        "secrets",
    ] {
        assert!(
            resources.contains(resource),
            "no request for {resource}: {resources:?}"
        );
    }
}
