//! The Helm chart (`deploy/helm/userns-labeler`) and the plain manifests (`deploy/manifests`),
//! checked with the real `helm` (built and cached by `tests/tools/build.sh`), against the code
//! (the CLI parser, the router path, the driver table parser), and by server-side dry runs
//! against the test kube-apiserver.
//!
//! Values variants: `ci/*-values.yaml` in the chart (default = cert-manager TLS, enforce mode;
//! self-signed; audit; secret).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use clap::Parser;
use rstest::rstest;
use serde_json::Value;
use userns_labeler::capability::DriverTable;
use userns_labeler::cli::{Cli, Command as CliCommand};
use userns_labeler::config::CONFIG_MAP_KEY;
use userns_labeler::webhook::MUTATE_PODS_PATH;
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::tool;

const RELEASE: &str = "userns-labeler";
const NAMESPACE: &str = "userns-labeler";
const CHART: &str = "deploy/helm/userns-labeler";
const MANIFESTS: &str = "deploy/manifests/userns-labeler.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn values_file(variant: &str) -> PathBuf {
    repo().join(CHART).join(format!("ci/{variant}-values.yaml"))
}

/// `helm template` of the chart with a variant's values, in `namespace`, as text.
fn render_text(variant: &str, namespace: &str, extra: &[&str]) -> Result<String, String> {
    let output = run(Command::new(tool("helm"))
        .args(["template", RELEASE])
        .arg(repo().join(CHART))
        .args(["--namespace", namespace, "-f"])
        .arg(values_file(variant))
        .args(extra));
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(text(&output.stderr))
    }
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML parses");
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// The rendered objects of a variant in the namespace `userns-labeler` (memoised).
fn rendered(variant: &str) -> &'static [Value] {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<String, &'static [Value]>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    if let Some(objects) = cache.get(variant) {
        return objects;
    }
    let yaml = render_text(variant, NAMESPACE, &[])
        .unwrap_or_else(|e| panic!("helm template with {variant} values failed:\n{e}"));
    let objects: &'static [Value] = Vec::leak(parse_documents(&yaml));
    cache.insert(variant.to_string(), objects);
    objects
}

fn objects_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = objects_of(objects, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, got {}",
        found.len()
    );
    found[0]
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn container(objects: &[Value]) -> &Value {
    &one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn container_args(objects: &[Value]) -> Vec<String> {
    strings(&container(objects)["args"])
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn container_port(objects: &[Value], name: &str) -> u16 {
    container(objects)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}")) as u16
}

/// The rendered container's command line, parsed by the binary's own parser (with the env
/// variables the Deployment sets from the downward API).
fn parsed_run_args(objects: &[Value]) -> userns_labeler::runtime::RunArgs {
    let args = container_args(objects);
    let cli = Cli::try_parse_from(std::iter::once("userns-labeler".to_string()).chain(args))
        .unwrap_or_else(|e| panic!("the chart's args do not parse: {e}"));
    match cli.command {
        CliCommand::Run(run) => *run,
        other => panic!("the chart runs {other:?}, not `run`"),
    }
}

#[rstest]
#[case::default("default")]
#[case::self_signed("self-signed")]
#[case::audit("audit")]
#[case::secret("secret")]
fn helm_lint_passes_strictly(#[case] variant: &str) {
    let output = run(Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(repo().join(CHART))
        .args(["--namespace", NAMESPACE, "-f"])
        .arg(values_file(variant)));
    assert!(
        output.status.success(),
        "helm lint --strict ({variant}):\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).contains("0 chart(s) failed"),
        "{}",
        text(&output.stdout)
    );
}

#[rstest]
#[case::unknown_mode("webhook.mode=block", "webhook.mode")]
#[case::unknown_tls_mode("tls.mode=none", "tls.mode")]
#[case::bad_prefix("labelPrefix=Not_A_Domain", "labelPrefix")]
#[case::bad_log_format("logFormat=xml", "logFormat")]
#[case::zero_replicas("replicaCount=0", "replicaCount")]
#[case::unknown_node_mode("webhook.nodeMode=some", "webhook.nodeMode")]
fn invalid_values_are_rejected_naming_the_value(#[case] set: &str, #[case] field: &str) {
    let error = render_text("default", NAMESPACE, &["--set", set])
        .expect_err("helm template must refuse the value");
    let dotted_to_path = field.replace('.', "/");
    assert!(
        error.contains(field) || error.contains(&dotted_to_path),
        "the error should name {field}:\n{error}"
    );
}

#[rstest]
#[case::no_secret_name("tls.caBundle=PEM", "tls.secretName is required")]
#[case::no_ca_bundle("tls.secretName=mine", "tls.caBundle is required")]
fn secret_mode_without_its_secret_or_ca_fails_with_a_message(
    #[case] set: &str,
    #[case] message: &str,
) {
    let error = render_text(
        "default",
        NAMESPACE,
        &["--set", "tls.mode=secret", "--set", set],
    )
    .expect_err("helm template must refuse an incomplete tls.mode=secret");
    assert!(error.contains(message), "{error}");
}

#[test]
fn webhook_configuration_follows_admission_webhook_good_practices() {
    let objects = rendered("default");
    let config = one(objects, "MutatingWebhookConfiguration");
    let webhooks = config["webhooks"].as_array().unwrap();
    assert_eq!(webhooks.len(), 1);
    let webhook = &webhooks[0];
    assert_eq!(webhook["failurePolicy"], "Ignore");
    assert_eq!(webhook["sideEffects"], "None");
    assert_eq!(strings(&webhook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(webhook["timeoutSeconds"], 5);
    let rules = webhook["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["operations"]), ["CREATE"]);
    assert_eq!(strings(&rules[0]["resources"]), ["pods"]);
    assert_eq!(strings(&rules[0]["apiGroups"]), [""]);

    let expressions = webhook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap();
    let excluded: BTreeSet<&str> = expressions
        .iter()
        .filter(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .flat_map(|e| strings(&e["values"]))
        .collect();
    for namespace in ["kube-system", "kube-node-lease", NAMESPACE] {
        assert!(
            excluded.contains(namespace),
            "{namespace} not excluded: {excluded:?}"
        );
    }
    let opts_out = |selector: &Value| {
        selector["matchExpressions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| {
                e["key"] == "userns.io/opt-out"
                    && e["operator"] == "NotIn"
                    && strings(&e["values"]) == ["true"]
            })
    };
    assert!(opts_out(&webhook["namespaceSelector"]), "namespace opt-out");
    assert!(opts_out(&webhook["objectSelector"]), "pod opt-out");

    let conditions: Vec<&str> = webhook["matchConditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["expression"].as_str().unwrap())
        .collect();
    let all = conditions.join("\n");
    for field in ["hostUsers", "hostNetwork", "hostPID", "hostIPC"] {
        assert!(
            all.contains(&format!("object.spec.{field}")),
            "{field}: {all}"
        );
    }
}

#[test]
fn webhook_client_config_targets_the_router_path_and_the_container_port() {
    let objects = rendered("default");
    let webhook = &one(objects, "MutatingWebhookConfiguration")["webhooks"][0];
    let service_ref = &webhook["clientConfig"]["service"];
    assert_eq!(service_ref["path"], MUTATE_PODS_PATH);
    let service = one(objects, "Service");
    assert_eq!(service_ref["name"], service["metadata"]["name"]);
    assert_eq!(service_ref["namespace"], NAMESPACE);
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == service_ref["port"])
        .expect("the webhook's Service port exists");
    assert_eq!(port["targetPort"], "webhook");

    let run = parsed_run_args(objects);
    assert_eq!(
        container_port(objects, "webhook"),
        run.webhook.webhook_addr.port()
    );
    assert_eq!(container_port(objects, "metrics"), run.admin_addr.port());
}

#[test]
fn container_ports_are_the_binarys_default_ports() {
    let defaults = match Cli::try_parse_from(["userns-labeler", "run", "--self-signed-tls"])
        .expect("defaults parse")
        .command
    {
        CliCommand::Run(run) => run,
        other => panic!("{other:?}"),
    };
    let objects = rendered("default");
    assert_eq!(
        container_port(objects, "webhook"),
        defaults.webhook.webhook_addr.port()
    );
    assert_eq!(
        container_port(objects, "metrics"),
        defaults.admin_addr.port()
    );
}

#[rstest]
#[case::default("default")]
#[case::self_signed("self-signed")]
#[case::audit("audit")]
#[case::secret("secret")]
fn deployment_args_parse_and_name_the_rendered_objects(#[case] variant: &str) {
    let objects = rendered(variant);
    let run = parsed_run_args(objects);
    let config_map = one(objects, "ConfigMap");
    assert_eq!(
        run.config_map,
        config_map["metadata"]["name"].as_str().unwrap()
    );
    assert_eq!(run.label_prefix, "userns.io");
    let expected_mode = if variant == "audit" {
        "Audit"
    } else {
        "Enforce"
    };
    assert_eq!(format!("{:?}", run.webhook.webhook_mode), expected_mode);
    // The env variables the Deployment sets are the ones the binary reads.
    let env: BTreeSet<&str> = container(objects)["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let command = <Cli as clap::CommandFactory>::command();
    let mut known: BTreeSet<String> = BTreeSet::from(["RUST_LOG".to_string()]);
    let mut collect = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            if let Some(name) = arg.get_env() {
                known.insert(name.to_string_lossy().into_owned());
            }
        }
    };
    collect(&command);
    collect(command.find_subcommand("run").unwrap());
    for name in &env {
        assert!(known.contains(*name), "{name} is not read by the binary");
    }
    for name in ["POD_NAMESPACE", "POD_NAME"] {
        assert!(env.contains(name), "{name} missing");
    }
}

#[rstest]
#[case::default("default")]
#[case::audit("audit")]
fn driver_config_map_is_a_valid_operator_table(#[case] variant: &str) {
    let objects = rendered(variant);
    let config_map = one(objects, "ConfigMap");
    let document = config_map["data"][CONFIG_MAP_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap has no key {CONFIG_MAP_KEY}"));
    let table = DriverTable::from_operator_yaml(document, "chart ConfigMap")
        .unwrap_or_else(|e| panic!("{e}"));
    let builtin = DriverTable::defaults();
    let operator_rules = if variant == "audit" { 1 } else { 0 };
    assert_eq!(table.rules().len(), builtin.rules().len() + operator_rules);
}

#[test]
fn deployment_is_hardened_and_spread_over_nodes() {
    let objects = rendered("default");
    let deployment = one(objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["hostUsers"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container(objects)["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let pdb = one(objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(container(objects)[probe]["httpGet"]["port"], "metrics");
    }
    assert_eq!(
        container(objects)["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert_eq!(
        container(objects)["livenessProbe"]["httpGet"]["path"],
        "/livez"
    );
}

#[test]
fn cert_manager_mode_issues_a_certificate_for_the_service_and_injects_its_ca() {
    let objects = rendered("default");
    let certificate = one(objects, "Certificate");
    let name = certificate["metadata"]["name"].as_str().unwrap();
    let config = one(objects, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!("{NAMESPACE}/{name}").as_str()
    );
    let service = one(objects, "Service")["metadata"]["name"]
        .as_str()
        .unwrap();
    assert!(
        strings(&certificate["spec"]["dnsNames"])
            .contains(&format!("{service}.{NAMESPACE}.svc").as_str()),
        "{certificate}"
    );
    let volumes = &one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        volumes[0]["secret"]["secretName"],
        certificate["spec"]["secretName"]
    );
    let mount = &container(objects)["volumeMounts"][0];
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees rotation"
    );
    let run = parsed_run_args(objects);
    let dir = mount["mountPath"].as_str().unwrap();
    assert_eq!(
        run.webhook.tls_cert_file.unwrap(),
        Path::new(dir).join("tls.crt")
    );
    assert_eq!(
        run.webhook.tls_key_file.unwrap(),
        Path::new(dir).join("tls.key")
    );
    let issuer = one(objects, "Issuer");
    assert_eq!(
        certificate["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
}

#[test]
fn self_signed_mode_runs_two_replicas_sharing_the_ca_secret_it_renders_empty() {
    let objects = rendered("self-signed");
    let deployment = one(objects, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pdb = one(objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(objects_of(objects, "Certificate").is_empty());
    let run = parsed_run_args(objects);
    assert!(run.webhook.self_signed_tls);
    let config_name = one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]
        .as_str()
        .unwrap();
    assert_eq!(
        run.webhook.webhook_config_name.as_deref(),
        Some(config_name)
    );
    let service = one(objects, "Service")["metadata"]["name"]
        .as_str()
        .unwrap();
    assert!(
        run.webhook
            .tls_san
            .contains(&format!("{service}.{NAMESPACE}.svc"))
    );
    // The CA Secret: in the release namespace (where the binary looks, --namespace from
    // POD_NAMESPACE), owned by the release, empty (the binary stores the CA).
    let secret = one(objects, "Secret");
    assert_eq!(
        run.webhook.self_signed_ca_secret.as_deref(),
        secret["metadata"]["name"].as_str()
    );
    assert_eq!(secret["metadata"]["namespace"], NAMESPACE);
    assert_eq!(secret["type"], "Opaque");
    assert!(secret.get("data").is_none() && secret.get("stringData").is_none());
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
}

#[test]
fn self_signed_mode_may_get_and_update_only_its_ca_secret_and_its_webhook_configuration() {
    let objects = rendered("self-signed");
    let secret = one(objects, "Secret")["metadata"]["name"].as_str().unwrap();
    let config_name = one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]
        .as_str()
        .unwrap();
    let rules_for = |kind: &str, resource: &str| -> Vec<Value> {
        objects_of(objects, kind)
            .into_iter()
            .flat_map(|r| r["rules"].as_array().unwrap().clone())
            .filter(|rule| strings(&rule["resources"]).contains(&resource))
            .collect()
    };
    let secret_rules = rules_for("Role", "secrets");
    assert_eq!(secret_rules.len(), 1, "{secret_rules:?}");
    assert_eq!(strings(&secret_rules[0]["resourceNames"]), [secret]);
    assert_eq!(strings(&secret_rules[0]["verbs"]), ["get", "update"]);
    assert!(rules_for("ClusterRole", "secrets").is_empty());
    let webhook_rules = rules_for("ClusterRole", "mutatingwebhookconfigurations");
    assert_eq!(webhook_rules.len(), 1);
    assert_eq!(strings(&webhook_rules[0]["resourceNames"]), [config_name]);
    assert_eq!(
        strings(&webhook_rules[0]["verbs"]),
        ["get", "list", "watch", "update"]
    );
}

#[rstest]
#[case::one(1, false)]
#[case::three(3, true)]
fn self_signed_mode_runs_replica_count_replicas_with_a_pdb_above_one(
    #[case] replicas: u64,
    #[case] pdb: bool,
) {
    let yaml = render_text(
        "self-signed",
        NAMESPACE,
        &["--set", &format!("replicaCount={replicas}")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let objects = parse_documents(&yaml);
    assert_eq!(one(&objects, "Deployment")["spec"]["replicas"], replicas);
    assert_eq!(!objects_of(&objects, "PodDisruptionBudget").is_empty(), pdb);
}

#[test]
fn only_self_signed_mode_may_touch_webhook_configurations_or_secrets() {
    for variant in ["default", "audit", "secret"] {
        let objects = rendered(variant);
        for resource in ["mutatingwebhookconfigurations", "secrets"] {
            let grants = objects_of(objects, "ClusterRole")
                .into_iter()
                .chain(objects_of(objects, "Role"))
                .flat_map(|r| r["rules"].as_array().unwrap())
                .any(|rule| strings(&rule["resources"]).contains(&resource));
            assert!(!grants, "{variant} grants access to {resource}");
        }
        assert!(
            objects_of(objects, "Secret").is_empty(),
            "{variant} renders a Secret"
        );
    }
}

/// The verbs the rendered ClusterRoles grant on a core resource.
fn cluster_verbs<'a>(objects: &'a [Value], resource: &str) -> Vec<&'a str> {
    objects_of(objects, "ClusterRole")
        .into_iter()
        .flat_map(|r| r["rules"].as_array().unwrap())
        .filter(|rule| strings(&rule["resources"]).contains(&resource))
        .flat_map(|rule| strings(&rule["verbs"]))
        .collect()
}

#[test]
fn failed_pods_are_deleted_only_with_the_option_which_brings_the_right_to_delete_them() {
    for variant in ["default", "audit", "secret", "self-signed"] {
        let objects = rendered(variant);
        assert!(
            !parsed_run_args(objects).evidence.delete_failed_pods,
            "{variant}"
        );
        assert_eq!(cluster_verbs(objects, "pods"), vec!["get"], "{variant}");
    }
    let yaml = render_text(
        "default",
        NAMESPACE,
        &["--set", "controller.deleteFailedPods=true"],
    )
    .unwrap();
    let objects = parse_documents(&yaml);
    assert!(parsed_run_args(&objects).evidence.delete_failed_pods);
    assert_eq!(cluster_verbs(&objects, "pods"), vec!["get", "delete"]);
}

#[rstest]
#[case::default(None, "Any")]
#[case::affinity(Some("affinity"), "Affinity")]
#[case::off(Some("off"), "Off")]
fn the_node_mode_value_reaches_the_binary_which_may_watch_and_label_nodes(
    #[case] value: Option<&str>,
    #[case] expected: &str,
) {
    let set = value.map(|v| format!("webhook.nodeMode={v}"));
    let extra: Vec<&str> = set.iter().flat_map(|s| ["--set", s.as_str()]).collect();
    let objects = parse_documents(&render_text("default", NAMESPACE, &extra).unwrap());
    let run = parsed_run_args(&objects);
    assert_eq!(format!("{:?}", run.nodes.webhook_node_mode), expected);
    assert_eq!(
        cluster_verbs(&objects, "nodes"),
        vec!["get", "list", "watch", "patch"]
    );
    let event_verbs = cluster_verbs(&objects, "events");
    assert!(
        event_verbs.contains(&"watch") && event_verbs.contains(&"list"),
        "{event_verbs:?}"
    );
    // The evidence ConfigMap the binary writes is the one its Role may patch.
    let role_names: Vec<&str> = objects_of(&objects, "Role")
        .into_iter()
        .flat_map(|r| r["rules"].as_array().unwrap())
        .filter(|rule| strings(&rule["verbs"]).contains(&"patch"))
        .flat_map(|rule| strings(&rule["resourceNames"]))
        .collect();
    assert!(
        role_names.contains(&run.evidence.evidence_config_map.as_str()),
        "{role_names:?} vs {}",
        run.evidence.evidence_config_map
    );
}

#[test]
fn audit_mode_renders_a_service_monitor_scraping_the_metrics_port() {
    let objects = rendered("audit");
    let monitor = one(objects, "ServiceMonitor");
    let service = one(objects, "Service");
    let port_names: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(port_names.contains(&endpoint["port"].as_str().unwrap()));
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
}

#[test]
fn secret_mode_mounts_the_given_secret_and_sets_its_ca_bundle() {
    let objects = rendered("secret");
    let deployment = one(objects, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "userns-labeler-tls"
    );
    let webhook = &one(objects, "MutatingWebhookConfiguration")["webhooks"][0];
    let bundle = webhook["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle");
    assert!(
        !bundle.contains("BEGIN"),
        "caBundle must be base64, not PEM"
    );
    let included: Vec<&str> = webhook["namespaceSelector"]["matchExpressions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operator"] == "In")
        .flat_map(|e| strings(&e["values"]))
        .collect();
    assert_eq!(included, ["team-a", "team-b"]);
}

#[test]
fn plain_manifests_are_the_charts_rendering() {
    let expected = manifests_rendering();
    let actual = std::fs::read_to_string(repo().join(MANIFESTS))
        .unwrap_or_else(|e| panic!("{MANIFESTS}: {e}"));
    assert!(
        actual == expected,
        "{MANIFESTS} differs from the chart's rendering; run `make manifests` and commit it"
    );
}

/// What `make manifests` writes (scripts/render-manifests.sh does the same).
fn manifests_rendering() -> String {
    let output = run(Command::new("bash")
        .arg(repo().join("scripts/render-manifests.sh"))
        .arg("--stdout")
        .env("HELM", tool("helm")));
    assert!(output.status.success(), "{}", text(&output.stderr));
    text(&output.stdout)
}

/// kubectl with the control plane's admin kubeconfig, `stdin` piped in.
fn kubectl(cp: &control_plane::ControlPlane, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(cp.kubectl_path())
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// CRDs (cert-manager, Kyverno, ServiceMonitor) applied once, for real, and established.
fn control_plane_with_crds() -> &'static control_plane::ControlPlane {
    static READY: OnceLock<()> = OnceLock::new();
    let cp = control_plane::shared();
    READY.get_or_init(|| {
        let crds = tool("crds");
        let output = kubectl(
            cp,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                crds.to_str().unwrap(),
            ],
            None,
        );
        assert!(
            output.status.success(),
            "applying CRDs from {}: {}",
            crds.display(),
            text(&output.stderr)
        );
        let output = kubectl(
            cp,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd",
                "--all",
            ],
            None,
        );
        assert!(output.status.success(), "{}", text(&output.stderr));
    });
    cp
}

/// `kubectl apply --server-side --dry-run=server` of `yaml`: it must succeed and report every
/// object of `yaml` as applied.
fn assert_dry_run_accepts(cp: &control_plane::ControlPlane, yaml: &str, what: &str) {
    let objects = parse_documents(yaml).len();
    assert!(objects > 0, "{what}: no objects");
    let output = kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=userns-labeler-tests",
            "-f",
            "-",
        ],
        Some(yaml),
    );
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "server-side dry run of {what}:\n{stdout}{}",
        text(&output.stderr)
    );
    let applied = stdout
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(applied, objects, "{what}: every object accepted:\n{stdout}");
}

#[rstest]
#[case::default("default")]
#[case::self_signed("self-signed")]
#[case::audit("audit")]
#[case::secret("secret")]
#[tokio::test]
async fn every_rendered_object_passes_a_server_side_dry_run(#[case] variant: &str) {
    let cp = control_plane_with_crds();
    let namespace = cp.namespace(&format!("chart-{variant}")).await;
    let yaml = render_text(variant, namespace.name(), &[])
        .unwrap_or_else(|e| panic!("helm template: {e}"));
    assert_dry_run_accepts(cp, &yaml, &format!("the {variant} rendering"));
}

#[tokio::test]
async fn plain_manifests_pass_a_server_side_dry_run() {
    let cp = control_plane_with_crds();
    // The Namespace object itself is only dry-run, so the namespaced objects need it to exist.
    let _ = kubectl(cp, &["create", "namespace", NAMESPACE], None);
    let yaml = std::fs::read_to_string(repo().join(MANIFESTS)).expect(MANIFESTS);
    assert!(
        parse_documents(&yaml)
            .iter()
            .any(|o| o["kind"] == "Namespace")
    );
    assert_dry_run_accepts(cp, &yaml, MANIFESTS);
}

#[tokio::test]
async fn kyverno_policies_and_the_guardrail_pass_a_server_side_dry_run() {
    let cp = control_plane_with_crds();
    let dir = repo().join("deploy/kyverno");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kyverno")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    for file in files {
        let yaml = std::fs::read_to_string(&file).unwrap();
        assert_dry_run_accepts(cp, &yaml, &file.display().to_string());
    }
}

/// The Deployment's pod, as a Pod in `namespace`, in YAML.
fn deployment_pod(objects: &[Value], namespace: &str) -> Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "userns-labeler-pod", "namespace": namespace},
        "spec": one(objects, "Deployment")["spec"]["template"]["spec"].clone(),
    })
}

#[tokio::test]
async fn controller_pod_is_admitted_under_the_restricted_pod_security_standard() {
    let cp = control_plane::shared();
    let namespace = cp.namespace("restricted").await;
    let output = kubectl(
        cp,
        &[
            "label",
            "namespace",
            namespace.name(),
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let pod = deployment_pod(rendered("default"), namespace.name());
    assert_dry_run_accepts(cp, &pod.to_string(), "the controller's pod");

    // The same pod without its security contexts is refused: the namespace really enforces.
    let mut loose = pod;
    loose["spec"]["securityContext"] = Value::Null;
    loose["spec"]["containers"][0]["securityContext"] = Value::Null;
    let output = kubectl(
        cp,
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&loose.to_string()),
    );
    assert!(
        !output.status.success(),
        "a non-restricted pod was admitted"
    );
    assert!(
        text(&output.stderr).contains("violates PodSecurity \"restricted"),
        "{}",
        text(&output.stderr)
    );
}
