//! The policies under `deploy/kyverno/`, checked with the real tools:
//!
//! - the ClusterPolicy through the real Kyverno CLI (`kyverno test deploy/kyverno/tests`, built and
//!   cached by `tests/tools/build.sh`), asserting that every result the test files declare produced
//!   a passing row, so an emptied or silently unmatched test run fails;
//! - that nothing there uses `apiCall`, and that the policy reads claims only through the
//!   GlobalContextEntry shipped beside it;
//! - the ValidatingAdmissionPolicy guardrail against the real kube-apiserver of the test control
//!   plane (`kyverno test` evaluates a selector-bound VAP once with all params as one list, while
//!   the API server evaluates it once per param, so only the API server tests what ships).
//!
//! A missing tool or Go toolchain fails these tests with the reason; they never skip.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    core::v1::{PersistentVolumeClaim, Pod},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use userns_labeler_test_support::cases::{Case, Decision, Table};
use userns_labeler_test_support::control_plane;
use userns_labeler_test_support::tool;

const POLICY_NAME: &str = "userns-enable-when-safe";
const CEL_POLICY_NAME: &str = "userns-enable-when-safe-cel";
const GLOBAL_CONTEXT_ENTRY: &str = "userns-claim-maps";
/// The fewest result rows the test files may produce: the cases written today (47 for the
/// ClusterPolicy, 46 for the MutatingPolicy). Lower only when removing cases on purpose.
const MIN_KYVERNO_TEST_ROWS: usize = 93;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kyverno_dir() -> PathBuf {
    repo().join("deploy/kyverno")
}

/// The Kyverno CLI from `tests/tools/build.sh path kyverno` (built on first use).
fn kyverno_cli() -> PathBuf {
    tool("kyverno")
}

/// The output of `kyverno test deploy/kyverno/tests -o json` (run once for all tests here).
fn kyverno_test_output() -> &'static Output {
    static OUTPUT: OnceLock<Output> = OnceLock::new();
    OUTPUT.get_or_init(|| kyverno_test(&kyverno_dir().join("tests")))
}

/// `kyverno test <dir>` with every result detailed, as JSON.
fn kyverno_test(dir: &Path) -> Output {
    let cli = kyverno_cli();
    Command::new(&cli)
        .arg("test")
        .arg(dir)
        .args([
            "--require-tests",
            "--remove-color",
            "--detailed-results",
            "-o",
            "json",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", cli.display()))
}

/// Every `*.yaml` file below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn documents(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// Every Kyverno CLI test file under `deploy/kyverno/tests`, with its documents.
fn kyverno_test_files() -> Vec<(PathBuf, Value)> {
    yaml_files(&kyverno_dir().join("tests"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kyverno-test.yaml"))
        .map(|p| {
            let mut docs = documents(&p);
            assert_eq!(docs.len(), 1, "{}: one Test per file", p.display());
            (p, docs.remove(0))
        })
        .collect()
}

/// How many result rows a Test declares: one per resource of each result.
fn declared_rows(test: &Value) -> usize {
    test["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .map(|r| r["resources"].as_array().map_or(0, Vec::len))
                .sum()
        })
        .unwrap_or(0)
}

/// The JSON arrays `kyverno test -o json` prints (one per test file, between progress lines),
/// concatenated.
fn json_rows(stdout: &str) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut arrays = 0;
    let mut current: Option<String> = None;
    for line in stdout.lines() {
        match (&mut current, line) {
            (None, "[]") => arrays += 1,
            (None, "[") => current = Some("[".to_owned()),
            (Some(text), "]") => {
                text.push(']');
                let parsed: Vec<Value> = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("kyverno test printed invalid JSON ({e}):\n{text}"));
                rows.extend(parsed);
                arrays += 1;
                current = None;
            }
            (Some(text), line) => {
                text.push('\n');
                text.push_str(line);
            }
            (None, _) => {}
        }
    }
    assert!(
        arrays > 0 && current.is_none(),
        "no complete JSON array in the output of kyverno test:\n{stdout}"
    );
    rows
}

/// `v1/Pod/<namespace>/<name>` of a row, as `<namespace>/<name>`.
fn row_resource(row: &Value) -> String {
    let resource = row["RESOURCE"].as_str().unwrap_or_default();
    resource
        .strip_prefix("v1/Pod/")
        .unwrap_or(resource)
        .to_owned()
}

/// The annotation by which a test pod names the blocker it must be skipped for.
const EXPECTED_BLOCKER: &str = "kyverno-test.userns.io/expected-blocker";

/// `<namespace>/<name>` → expected blocker, for every annotated pod in the resource files of
/// every test.
fn expected_blockers(tests: &[(PathBuf, Value)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, test) in tests {
        let dir = path.parent().unwrap();
        for file in test["resources"].as_array().into_iter().flatten() {
            let file = dir.join(file.as_str().expect("resource paths are strings"));
            for doc in documents(&file) {
                if let Some(blocker) = doc["metadata"]["annotations"][EXPECTED_BLOCKER].as_str() {
                    let key = format!(
                        "{}/{}",
                        doc["metadata"]["namespace"].as_str().unwrap_or("default"),
                        doc["metadata"]["name"].as_str().unwrap()
                    );
                    out.insert(key, blocker.to_owned());
                }
            }
        }
    }
    out
}

/// `<namespace>/<name>` of every resource whose result for the ClusterPolicy compares a patched
/// resource.
fn expected_mutations(tests: &[(PathBuf, Value)]) -> Vec<String> {
    tests
        .iter()
        .flat_map(|(_, t)| t["results"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["policy"] == POLICY_NAME && r["patchedResources"].is_string())
        .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn kyverno_cli_passes_every_declared_result_of_the_policy_tests() {
    let tests = kyverno_test_files();
    assert!(
        !tests.is_empty(),
        "no kyverno-test.yaml under deploy/kyverno/tests"
    );
    let declared: usize = tests.iter().map(|(_, t)| declared_rows(t)).sum();
    assert!(
        declared >= MIN_KYVERNO_TEST_ROWS,
        "the test files declare {declared} results, fewer than the {MIN_KYVERNO_TEST_ROWS} expected"
    );

    let output = kyverno_test_output();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kyverno test failed ({}):\n{stdout}\n{stderr}",
        output.status
    );

    let rows = json_rows(&stdout);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["RESULT"] != "Pass").collect();
    assert!(
        failed.is_empty(),
        "rows that did not pass:\n{}",
        serde_json::to_string_pretty(&failed).unwrap()
    );
    assert_eq!(
        rows.len(),
        declared,
        "kyverno test produced {} rows for {declared} declared results (a resource name that \
         matches no resource, or a patched resource that is missing, drops or multiplies rows):\n{stdout}",
        rows.len()
    );
    assert!(
        rows.iter()
            .all(|r| r["POLICY"] == POLICY_NAME || r["POLICY"] == CEL_POLICY_NAME),
        "every row is about {POLICY_NAME} or {CEL_POLICY_NAME}"
    );
    for policy in [POLICY_NAME, CEL_POLICY_NAME] {
        assert!(
            rows.iter().filter(|r| r["POLICY"] == policy).count() >= 46,
            "{policy} is tested on every pod"
        );
    }
}

#[test]
fn kyverno_cli_skips_each_test_pod_for_its_own_blocker_and_mutates_the_others() {
    let tests = kyverno_test_files();
    let blockers = expected_blockers(&tests);
    let mutations = expected_mutations(&tests);
    assert!(
        blockers.len() >= 30 && mutations.len() >= 6,
        "the test pods name {} blockers and {} mutations; fewer than written today",
        blockers.len(),
        mutations.len()
    );

    let stdout = String::from_utf8_lossy(&kyverno_test_output().stdout);
    let rows = json_rows(&stdout);

    let mut wrong = Vec::new();
    for (pod, blocker) in &blockers {
        // The ClusterPolicy's rows name the failing precondition; the MutatingPolicy's cannot.
        let pod_rows: Vec<&Value> = rows
            .iter()
            .filter(|r| row_resource(r) == *pod && r["POLICY"] == POLICY_NAME)
            .collect();
        if pod_rows.is_empty() {
            wrong.push(format!("{pod}: no row"));
        }
        for row in pod_rows {
            let message = row["Message"].as_str().unwrap_or_default();
            let ok = if blocker == "Excluded" {
                row["REASON"] == "Excluded"
            } else {
                message.starts_with(&format!("preconditions not met; {blocker}: "))
            };
            if !ok {
                wrong.push(format!(
                    "{pod}: expected {blocker}, got reason {} / message {message:?}",
                    row["REASON"]
                ));
            }
        }
    }
    for pod in &mutations {
        let (ns, name) = pod.split_once('/').expect("namespace/name");
        let mutated = format!("mutated Pod/{name} in namespace {ns}");
        if !rows.iter().any(|r| {
            row_resource(r) == *pod
                && r["POLICY"] == POLICY_NAME
                && r["Message"] == mutated.as_str()
        }) {
            wrong.push(format!("{pod}: no row saying {mutated:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every key named `key` anywhere in `value`, with its JSON pointer.
fn find_key(value: &Value, key: &str, at: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let here = format!("{at}/{k}");
                if k == key {
                    found.push(here.clone());
                }
                find_key(v, key, &here, found);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_key(v, key, &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn no_file_under_deploy_kyverno_uses_api_call() {
    let mut scanned_policies = 0;
    let mut found = Vec::new();
    for path in yaml_files(&kyverno_dir()) {
        for doc in documents(&path) {
            if doc["apiVersion"].as_str().is_some_and(|v| {
                v.starts_with("kyverno.io/") || v.starts_with("policies.kyverno.io/")
            }) {
                scanned_policies += 1;
            }
            let mut here = Vec::new();
            find_key(&doc, "apiCall", "", &mut here);
            found.extend(here.into_iter().map(|p| format!("{}: {p}", path.display())));
        }
    }
    assert!(
        scanned_policies >= 2,
        "expected at least the ClusterPolicy and the GlobalContextEntry under deploy/kyverno, found {scanned_policies} Kyverno objects"
    );
    assert!(found.is_empty(), "apiCall used at:\n{}", found.join("\n"));
}

/// Whitespace-insensitive text (YAML folded scalars).
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn both_policies_read_claims_only_through_the_shipped_claim_maps() {
    let gce = documents(&kyverno_dir().join("globalcontextentry.yaml"));
    assert_eq!(gce.len(), 1);
    let gce = &gce[0];
    assert_eq!(gce["kind"], "GlobalContextEntry");
    assert_eq!(gce["metadata"]["name"], GLOBAL_CONTEXT_ENTRY);
    assert_eq!(
        gce["spec"]["kubernetesResource"],
        json!({"group": "", "version": "v1", "resource": "configmaps", "namespace": "userns-labeler"}),
        "one watch on the ConfigMaps of the labeler's namespace, not on claims"
    );
    let projections = gce["spec"]["projections"].as_array().expect("projections");
    assert_eq!(projections.len(), 1);
    assert_eq!(projections[0]["name"], "byName");
    let projection = squeeze(projections[0]["jmesPath"].as_str().unwrap());
    assert!(
        projection.contains(&format!(
            "\"{}\"",
            userns_labeler::policy_maps::map_label(&Default::default())
        )) && projection.contains(userns_labeler::policy_maps::MAP_FORMAT),
        "the projection selects the maps by the publisher's label: {projection}"
    );

    let policy = documents(&kyverno_dir().join("enable-userns.yaml"));
    assert_eq!(policy.len(), 1);
    let policy = &policy[0];
    assert_eq!(policy["kind"], "ClusterPolicy");
    assert_eq!(policy["metadata"]["name"], POLICY_NAME);
    assert_eq!(
        policy["metadata"]["annotations"]["pod-policies.kyverno.io/autogen-controllers"],
        "none"
    );
    let rules = policy["spec"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 1);
    let context = rules[0]["context"].as_array().expect("a context");
    for entry in context {
        let keys: Vec<&String> = entry
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "name")
            .collect();
        match keys.as_slice() {
            [k] if *k == "variable" => {}
            [k] if *k == "globalReference" => assert_eq!(
                entry["globalReference"]["name"],
                format!("{GLOBAL_CONTEXT_ENTRY}.byName")
            ),
            other => panic!("context entry {} reads {other:?}", entry["name"]),
        }
    }
    assert!(context.iter().any(|c| c["globalReference"].is_object()));
    assert_eq!(
        rules[0]["match"]["any"][0]["resources"]["operations"],
        json!(["CREATE"])
    );
    // Every possible shard of the pod's namespace is looked up, and only those.
    let reference = squeeze(
        context
            .iter()
            .find(|c| c["globalReference"].is_object())
            .unwrap()["globalReference"]["jmesPath"]
            .as_str()
            .unwrap(),
    );
    for shard in 0..userns_labeler::policy_maps::MAX_SHARDS {
        assert!(
            reference.contains(&format!(
                "\"userns-claims.{{{{request.namespace}}}}.{shard}\""
            )),
            "shard {shard} is not looked up: {reference}"
        );
    }
    assert!(!reference.contains(&format!(".{}\"", userns_labeler::policy_maps::MAX_SHARDS)));

    let cel = documents(&kyverno_dir().join("enable-userns-cel.yaml"));
    assert_eq!(cel.len(), 1);
    let cel = &cel[0];
    assert_eq!(cel["apiVersion"], "policies.kyverno.io/v1");
    assert_eq!(cel["kind"], "MutatingPolicy");
    assert_eq!(cel["metadata"]["name"], CEL_POLICY_NAME);
    assert_eq!(
        cel["spec"]["autogen"]["podControllers"]["controllers"],
        json!([])
    );
    let text = fs::read_to_string(kyverno_dir().join("enable-userns-cel.yaml")).unwrap();
    assert!(text.contains(&format!(
        "globalContext.Get(\"{GLOBAL_CONTEXT_ENTRY}\", \"byName\")"
    )));
    assert!(
        !text.contains("resource.Get")
            && !text.contains("resource.List")
            && !text.contains("http.")
    );
    assert!(
        text.contains(&format!(
            "[{}]",
            (0..userns_labeler::policy_maps::MAX_SHARDS)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        "the CEL policy looks up every possible shard"
    );
    // The matchConditions are offloaded to the API server's webhook: nothing but the request.
    for condition in cel["spec"]["matchConditions"]
        .as_array()
        .expect("matchConditions")
    {
        let expression = condition["expression"].as_str().unwrap();
        assert!(
            !expression.contains("variables.") && !expression.contains("globalContext"),
            "{}: a matchCondition the API server cannot evaluate",
            condition["name"]
        );
    }

    // The CLI tests mock the entry with the same projection.
    for (path, test) in kyverno_test_files() {
        for mock in test["globalContextEntries"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(mock["name"], GLOBAL_CONTEXT_ENTRY, "{}", path.display());
            assert_eq!(
                squeeze(mock["projections"][0]["path"].as_str().unwrap()),
                projection,
                "{}: the mock's projection is the shipped one",
                path.display()
            );
        }
    }
}

#[test]
fn the_mocked_claim_maps_are_what_the_publisher_makes_of_the_mocked_claims() {
    use userns_labeler::policy_maps::{Support, desired_shards, shard_object};
    let dir = kyverno_dir().join("tests/enable-userns");
    let keys = userns_labeler::keys::Keys::default();
    let mut claims: BTreeMap<String, BTreeMap<String, Support>> = BTreeMap::new();
    for claim in documents(&dir.join("claims.yaml")) {
        let support =
            Support::from_label(claim["metadata"]["labels"]["userns.io/idmap-supported"].as_str());
        claims
            .entry(claim["metadata"]["namespace"].as_str().unwrap().to_owned())
            .or_default()
            .insert(
                claim["metadata"]["name"].as_str().unwrap().to_owned(),
                support,
            );
    }
    let mut expected: Vec<Value> = claims
        .iter()
        .flat_map(|(ns, c)| desired_shards(ns, c.clone()).shards)
        .map(|shard| shard_object("userns-labeler", &shard, &keys))
        .collect();
    expected.sort_by_key(|v| v["metadata"]["name"].as_str().unwrap().to_owned());
    let mut mocked: Vec<Value> = documents(&dir.join("claim-maps.yaml"))
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["userns.io/claim-map"].is_string())
        .collect();
    mocked.sort_by_key(|v| v["metadata"]["name"].as_str().unwrap().to_owned());
    assert!(mocked.len() >= 5);
    assert_eq!(mocked, expected);
}

// ---- the shared pod-case table, through the CLI ------------------------------------------------

/// The namespace of the table's pods (those of cases with `namespaceLabels` are in a namespace
/// named after the case), and the one where the table's `elsewhere` claims exist.
const CASES_NAMESPACE: &str = "cases";
const CASES_ELSEWHERE: &str = "cases-elsewhere";

/// The codes the claim maps decide inside Kyverno; every other blocker is a matchCondition of
/// the MutatingPolicy (and a precondition of the ClusterPolicy).
const CLAIM_CODES: [&str; 3] = ["ClaimNotFound", "ClaimNotSupported", "ClaimSupportUnknown"];

/// What each policy writes on a pod it enables.
fn enabled_reason(policy: &str) -> String {
    format!(
        "set by the Kyverno policy {policy}: nothing blocks a user namespace and every claim is \
         labelled userns.io/idmap-supported=true"
    )
}

fn case_namespace(case: &Case) -> &str {
    if case.namespace_labels.is_empty() {
        CASES_NAMESPACE
    } else {
        &case.name
    }
}

fn write_documents(path: &Path, docs: &[Value]) {
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string_pretty(d).unwrap())
        .collect();
    fs::write(path, text.join("\n---\n")).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A `kyverno test` directory for `policy` (the file under `deploy/kyverno/`) over every pod of
/// the table, with the claim maps the labeler would publish for the table's claims, the pods
/// it must enable (patched as it patches them) and the results each case expects.
fn write_table_test(dir: &Path, table: &Table, file: &str, policy: &str, cel: bool) -> usize {
    use userns_labeler::policy_maps::{Support, desired_shards, shard_object};
    fs::create_dir_all(dir).unwrap();
    fs::copy(kyverno_dir().join(file), dir.join(file)).unwrap();

    let keys = userns_labeler::keys::Keys::default();
    let here: BTreeMap<String, Support> = table
        .present_claims()
        .map(|c| (c.name.clone(), Support::from_label(c.label.value())))
        .collect();
    let elsewhere: BTreeMap<String, Support> = table
        .claims_elsewhere()
        .map(|(c, l)| (c.name.clone(), Support::from_label(l.value())))
        .collect();
    let maps: Vec<Value> = [(CASES_NAMESPACE, &here), (CASES_ELSEWHERE, &elsewhere)]
        .into_iter()
        .flat_map(|(ns, claims)| desired_shards(ns, claims.clone()).shards)
        .map(|shard| shard_object("userns-labeler", &shard, &keys))
        .collect();
    write_documents(&dir.join("claim-maps.yaml"), &maps);

    let mut pods = Vec::new();
    let mut patched = Vec::new();
    let mut unchanged = Vec::new();
    // result → the resources (`<namespace>/<name>`) expecting it
    let (mut enabled, mut skipped, mut applied_unchanged) = (Vec::new(), Vec::new(), Vec::new());
    for case in &table.cases {
        let mut pod = case.pod();
        pod["metadata"]["namespace"] = json!(case_namespace(case));
        let resource = format!("{}/{}", case_namespace(case), case.name);
        let expected = case.policies_expect();
        match expected.decision {
            Decision::Enabled => {
                let mut p = pod.clone();
                p["metadata"]["annotations"] = json!({
                    "userns.io/decision": "enabled",
                    "userns.io/decision-reason": enabled_reason(policy),
                });
                p["spec"]["hostUsers"] = json!(false);
                patched.push(p);
                enabled.push(resource);
            }
            // The MutatingPolicy applies when only the claim maps block, and patches nothing.
            Decision::Skipped
                if cel
                    && expected
                        .blockers
                        .iter()
                        .all(|b| CLAIM_CODES.contains(&b.as_str())) =>
            {
                unchanged.push(pod.clone());
                applied_unchanged.push(resource);
            }
            Decision::Skipped | Decision::Untouched => skipped.push(resource),
        }
        pods.push(pod);
    }
    write_documents(&dir.join("pods.yaml"), &pods);
    write_documents(&dir.join("patched.yaml"), &patched);
    write_documents(&dir.join("unchanged.yaml"), &unchanged);

    let identify = |mut result: Value| {
        if cel {
            result["isMutatingPolicy"] = json!(true);
        } else {
            result["rule"] = json!("set-host-users-false");
        }
        result
    };
    let mut results = vec![
        identify(
            json!({"policy": policy, "kind": "Pod", "resources": enabled,
                        "patchedResources": "patched.yaml", "failOnMissingResources": true,
                        "result": "pass"}),
        ),
        identify(json!({"policy": policy, "kind": "Pod", "resources": skipped, "result": "skip"})),
    ];
    if !applied_unchanged.is_empty() {
        results.push(identify(json!({"policy": policy, "kind": "Pod",
            "resources": applied_unchanged, "patchedResources": "unchanged.yaml",
            "result": "pass"})));
    }
    let mut namespaces: Vec<Value> = vec![
        json!({"name": CASES_NAMESPACE, "labels": {}}),
        json!({"name": CASES_ELSEWHERE, "labels": {}}),
    ];
    namespaces.extend(
        table
            .cases
            .iter()
            .filter(|c| !c.namespace_labels.is_empty())
            .map(|c| json!({"name": c.name, "labels": c.namespace_labels})),
    );
    let projection = documents(&kyverno_dir().join("globalcontextentry.yaml"))[0]["spec"]
        ["projections"][0]["jmesPath"]
        .clone();
    let test = json!({
        "apiVersion": "cli.kyverno.io/v1alpha1",
        "kind": "Test",
        "metadata": {"name": format!("pod-cases-{policy}")},
        "policies": [file],
        "resources": ["pods.yaml"],
        "globalContextEntries": [{
            "name": GLOBAL_CONTEXT_ENTRY,
            "resourceFiles": ["claim-maps.yaml"],
            "projections": [{"name": "byName", "path": projection}],
        }],
        "values": {"namespaceSelector": namespaces},
        "results": results,
    });
    write_documents(&dir.join("kyverno-test.yaml"), std::slice::from_ref(&test));
    declared_rows(&test)
}

#[test]
fn kyverno_cli_decides_every_pod_case_of_the_shared_table_and_the_cluster_policy_names_one_of_its_blockers()
 {
    let table = Table::load();
    let dir = tempfile::Builder::new()
        .prefix("kyverno-pod-cases.")
        .tempdir()
        .unwrap();
    let declared = write_table_test(
        &dir.path().join("cluster-policy"),
        &table,
        "enable-userns.yaml",
        POLICY_NAME,
        false,
    ) + write_table_test(
        &dir.path().join("mutating-policy"),
        &table,
        "enable-userns-cel.yaml",
        CEL_POLICY_NAME,
        true,
    );
    assert_eq!(
        declared,
        2 * table.cases.len(),
        "one result per case and policy"
    );

    let output = kyverno_test(dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rows = json_rows(&stdout);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["RESULT"] != "Pass").collect();
    assert!(
        output.status.success() && failed.is_empty(),
        "kyverno test on tests/cases/pods.yaml ({}): rows that did not pass:\n{}\n{stderr}",
        output.status,
        serde_json::to_string_pretty(&failed).unwrap()
    );
    assert_eq!(
        rows.len(),
        declared,
        "kyverno test produced {} rows for {declared} declared results:\n{stdout}",
        rows.len()
    );

    // The ClusterPolicy's skip names its first failing precondition: one of the case's blockers.
    let mut wrong = Vec::new();
    for case in &table.cases {
        let expected = case.policies_expect();
        let resource = format!("{}/{}", case_namespace(case), case.name);
        let Some(row) = rows
            .iter()
            .find(|r| r["POLICY"] == POLICY_NAME && row_resource(r) == resource)
        else {
            wrong.push(format!("{}: no row for {POLICY_NAME}", case.name));
            continue;
        };
        let message = row["Message"].as_str().unwrap_or_default();
        let ok = match expected.decision {
            Decision::Enabled => true,
            Decision::Untouched => row["REASON"] == "Excluded",
            Decision::Skipped => expected
                .blockers
                .iter()
                .any(|code| message.starts_with(&format!("preconditions not met; {code}: "))),
        };
        if !ok {
            wrong.push(format!(
                "{}: expected {expected}, got reason {} / message {message:?}",
                case.name, row["REASON"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---- the guardrail, on the real API server ----------------------------------------------------

fn guardrail() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let docs = documents(&kyverno_dir().join("guardrail-vap.yaml"));
    assert_eq!(
        docs.len(),
        2,
        "guardrail-vap.yaml holds the policy and its binding"
    );
    let policy = serde_json::from_value(docs[0].clone()).expect("a ValidatingAdmissionPolicy");
    let binding =
        serde_json::from_value(docs[1].clone()).expect("a ValidatingAdmissionPolicyBinding");
    (policy, binding)
}

fn claim(name: &str, label: Option<&str>) -> PersistentVolumeClaim {
    let mut labels = serde_json::Map::new();
    if let Some(value) = label {
        labels.insert("userns.io/idmap-supported".into(), json!(value));
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"userns.io/idmap-reason": format!("test reason for {name}")},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }))
    .unwrap()
}

fn pod(name: &str, host_users: Option<bool>, claims: &[&str]) -> Pod {
    let volumes: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
        .chain(std::iter::once(json!({"name": "scratch", "emptyDir": {}})))
        .collect();
    let mut spec = json!({
        "containers": [{"name": "app", "image": "registry.example/app:1"}],
        "volumes": volumes,
    });
    if let Some(h) = host_users {
        spec["hostUsers"] = json!(h);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Dry-run creates `pod`: `Ok(())` when admitted, `Err(message)` when rejected.
async fn admit(pods: &Api<Pod>, pod: &Pod) -> Result<(), String> {
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match pods.create(&dry_run, pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message.clone()),
        Err(e) => panic!("creating pod {:?}: {e}", pod.metadata.name),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn guardrail_rejects_host_users_false_only_with_a_claim_labelled_false_in_the_pods_namespace()
{
    let cp = control_plane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("guardrail").await;
    let elsewhere = cp.namespace("guardrail-other").await;
    let clean = cp.namespace("guardrail-clean").await;

    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
    for (name, label) in [
        ("nfs-data", Some("false")),
        ("second-nfs", Some("false")),
        ("block-data", Some("true")),
        ("vendor-data", Some("unknown")),
        ("fresh-data", None),
    ] {
        claims
            .create(&PostParams::default(), &claim(name, label))
            .await
            .unwrap();
    }
    // Same name as a "true" claim of `ns`, but "false" in another namespace.
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &elsewhere)
        .create(&PostParams::default(), &claim("block-data", Some("false")))
        .await
        .unwrap();

    let (policy, binding) = guardrail();
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    // Each test binary has its own control plane; clear leftovers of an earlier failed run
    // of this test against an external cluster.
    let _ = bindings
        .delete(
            binding.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await;
    let _ = policies
        .delete(
            policy.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await;
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The API server loads policies, bindings and params asynchronously: wait until the first
    // rejection shows.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let probe = pod("probe", Some(false), &["nfs-data"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let message = loop {
        match admit(&pods, &probe).await {
            Err(message) => break message,
            Ok(()) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(()) => panic!(
                "the guardrail did not reject a hostUsers: false pod on a false claim within 60 s"
            ),
        }
    };
    assert!(
        message.contains("nfs-data") && message.contains("test reason for nfs-data"),
        "the rejection names the claim and its reason: {message}"
    );
    assert!(
        message.contains("userns-deny-unsupported-claims"),
        "the rejection names the policy: {message}"
    );

    let rejected = |m: &Result<(), String>| m.is_err();
    let cases: [(&str, Option<bool>, &[&str], bool); 9] = [
        ("false-claim", Some(false), &["nfs-data"], true),
        ("the-other-false-claim", Some(false), &["second-nfs"], true),
        (
            "true-and-false-claims",
            Some(false),
            &["block-data", "nfs-data"],
            true,
        ),
        ("true-claim", Some(false), &["block-data"], false),
        ("unknown-claim", Some(false), &["vendor-data"], false),
        ("unlabelled-claim", Some(false), &["fresh-data"], false),
        ("missing-claim", Some(false), &["not-created"], false),
        ("host-users-unset", None, &["nfs-data"], false),
        (
            "host-users-true",
            Some(true),
            &["nfs-data", "second-nfs"],
            false,
        ),
    ];
    for (name, host_users, claim_names, expect_rejected) in cases {
        let result = admit(&pods, &pod(name, host_users, claim_names)).await;
        assert_eq!(
            rejected(&result),
            expect_rejected,
            "pod {name} (hostUsers {host_users:?}, claims {claim_names:?}): {result:?}"
        );
    }

    // A claim labelled false in another namespace does not count.
    let result = admit(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        &pod("name-false-elsewhere", Some(false), &["block-data"]),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
    // In the other namespace the same pod is rejected: its block-data is false there.
    let result = admit(
        &Api::<Pod>::namespaced(client.clone(), &elsewhere),
        &pod("name-false-here", Some(false), &["block-data"]),
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    // A namespace without any false claim: no params, parameterNotFoundAction Allow.
    let result = admit(
        &Api::<Pod>::namespaced(client.clone(), &clean),
        &pod("no-params", Some(false), &["nfs-data"]),
    )
    .await;
    assert!(result.is_ok(), "{result:?}");
}
