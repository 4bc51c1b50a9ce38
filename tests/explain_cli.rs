//! The `explain` command as an operator runs it: the real binary, real files.
//!
//! Expected values for `examples/` come from the examples' own README (each decision reasoned
//! from the userns facts), not from running the engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::{Value, json};

fn explain() -> Command {
    let mut cmd = Command::cargo_bin("userns-labeler").expect("binary is built");
    cmd.arg("explain");
    cmd
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn json_report(args: &[&str]) -> Value {
    let output = explain()
        .args(["-f", examples().to_str().unwrap(), "-o", "json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

fn labels(report: &Value) -> BTreeMap<String, String> {
    report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let name = v["name"].as_str().unwrap();
            let key = match (v["kind"].as_str().unwrap(), v["namespace"].as_str()) {
                ("PersistentVolumeClaim", Some(ns)) => format!("pvc {ns}/{name}"),
                ("PersistentVolumeClaimTemplate", Some(ns)) => {
                    format!("template {ns}/{} {name}", v["owner"].as_str().unwrap())
                }
                ("PersistentVolume", None) => format!("pv {name}"),
                other => panic!("unexpected volume entry {other:?}: {v}"),
            };
            (key, v["label"].as_str().unwrap().to_string())
        })
        .collect()
}

/// `Kind namespace/name` → (mutate, blocker codes); the `decision` word is checked against
/// `mutate` on the way.
fn pod_decisions(report: &Value) -> BTreeMap<String, (bool, Vec<String>)> {
    report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let codes = p["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["code"].as_str().unwrap().to_string())
                .collect();
            let mutate = p["mutate"].as_bool().unwrap();
            assert_eq!(
                p["decision"],
                if mutate { "enabled" } else { "skipped" },
                "{p}"
            );
            (
                format!(
                    "{} {}/{}",
                    p["kind"].as_str().unwrap(),
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ),
                (mutate, codes),
            )
        })
        .collect()
}

#[test]
fn examples_json_labels_every_claim_and_volume_as_the_facts_predict() {
    let report = json_report(&[]);
    let expected: BTreeMap<String, String> = [
        ("pvc paperless/paperless", "false"),
        ("pvc paperless/paperless-consume", "false"),
        ("pvc paperless/paperless-export", "false"),
        ("pvc home/home-assistant-config", "true"),
        ("pvc home/vaultwarden-data", "true"),
        ("pvc home/mosquitto-data", "true"),
        ("pvc home/node-red-data", "true"),
        ("pvc media/jellyfin-config", "true"),
        ("pvc media/media-library", "false"),
        ("pvc media/music-library", "false"),
        ("pvc media/downloads", "false"),
        ("pvc media/shared-photos", "false"),
        ("pvc media/transcode-cache", "false"),
        ("pvc db/bench-block", "false"),
        ("pvc db/pg-backups", "true"),
        ("pvc db/data-postgres-0", "true"),
        ("pvc db/data-postgres-1", "true"),
        ("pv pvc-48bee7b4-82b5-4119-a927-ceb0b0939c20", "false"),
        ("pv nfs-music", "false"),
        ("pv paperless-export", "false"),
        // 16-workloads.yaml: the claims the StatefulSets will create, from their templates'
        // classes: ebs-gp3 (EBS, ext4 on a block device), nfs-csi (NFS).
        ("template db/StatefulSet/redis data", "true"),
        ("template media/StatefulSet/minio export", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(labels(&report), expected);
}

#[test]
fn examples_json_decides_every_pod_as_the_facts_predict() {
    let report = json_report(&[]);
    let decisions = pod_decisions(&report);
    let expected: BTreeMap<String, (bool, Vec<String>)> = [
        ("Pod paperless/paperless", false, vec!["ClaimNotSupported"]),
        ("Pod home/homepage", true, vec![]),
        ("Pod home/home-assistant", false, vec!["HostPathForbidden"]),
        ("Pod home/matter-server", false, vec!["HostNetwork"]),
        ("Pod home/mosquitto", true, vec![]),
        ("Pod home/vaultwarden", true, vec![]),
        ("Pod home/node-red", true, vec![]),
        (
            "Pod media/jellyfin",
            false,
            vec!["ClaimNotSupported", "ClaimNotSupported"],
        ),
        ("Pod media/navidrome", false, vec!["ClaimNotSupported"]),
        (
            "Pod media/qbittorrent",
            false,
            vec!["HostUsersSet", "ClaimNotSupported"],
        ),
        ("Pod media/ffmpeg-transcode", true, vec![]),
        ("Pod media/sonarr", false, vec!["ClaimNotFound"]),
        (
            "Pod db/fio-block-bench",
            false,
            vec!["VolumeDevices", "ClaimNotSupported"],
        ),
        ("Pod db/pgbouncer", false, vec!["IDOutOfRange"]),
        ("Pod db/postgres-0", true, vec![]),
        ("Pod db/postgres-1", true, vec![]),
        ("Pod db/pg-backup-", true, vec![]),
        // 16-workloads.yaml, reasoned in examples/README.md.
        (
            "Deployment media/immich-server",
            false,
            vec!["ClaimNotSupported"],
        ),
        ("StatefulSet db/redis", true, vec![]),
        ("StatefulSet media/minio", false, vec!["ClaimNotSupported"]),
        (
            "DaemonSet home/node-exporter",
            false,
            vec![
                "HostNetwork",
                "HostPID",
                "HostPathForbidden",
                "HostPathForbidden",
            ],
        ),
        ("CronJob db/pg-dump-nightly", true, vec![]),
        ("Job media/library-scan", false, vec!["ClaimNotSupported"]),
    ]
    .into_iter()
    .map(|(k, m, c)| {
        (
            k.to_string(),
            (m, c.into_iter().map(String::from).collect()),
        )
    })
    .collect();
    assert_eq!(decisions, expected);
}

#[test]
fn json_output_has_the_documented_shape() {
    let report = json_report(&[]);
    let claim = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "paperless" && v["kind"] == "PersistentVolumeClaim")
        .unwrap();
    assert_eq!(claim["namespace"], "paperless");
    assert_eq!(claim["driver"], "driver.longhorn.io");
    assert!(claim["reason"].as_str().unwrap().contains("NFS"));
    let volume = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "PersistentVolume")
        .unwrap();
    assert!(
        volume.get("namespace").is_none(),
        "volumes have no namespace key"
    );
    let pod = &report["pods"][0];
    for key in ["kind", "namespace", "name", "decision", "mutate", "reasons"] {
        assert!(pod.get(key).is_some(), "pod key {key}");
    }
    let template = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "PersistentVolumeClaimTemplate")
        .unwrap();
    assert_eq!(template["owner"], "StatefulSet/redis");
    assert_eq!(template["namespace"], "db");
    assert_eq!(template["name"], "data");
    assert_eq!(template["driver"], "ebs.csi.aws.com");
    let reason = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["reasons"].as_array().unwrap())
        .next()
        .unwrap();
    assert!(reason["code"].is_string() && reason["message"].is_string());
}

#[test]
fn default_output_is_a_table_of_volumes_then_pods() {
    explain()
        .args(["-f", examples().to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::starts_with("NAMESPACE   VOLUME"))
        .stdout(predicate::str::contains(
            "NAMESPACE   WORKLOAD                   DECISION   BLOCKERS",
        ))
        .stdout(predicate::str::contains("pvc/paperless "))
        .stdout(predicate::str::contains(
            "claimtemplate/export (statefulset/minio)",
        ))
        // examples/README.md: 10 of the 23 pods and workloads are enabled.
        .stdout(predicate::str::ends_with(
            "\n10 of 23 pods and workloads are enabled, 13 skipped.\n",
        ));
}

#[test]
fn objects_without_namespace_are_in_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lonely}\nspec: {containers: [{name: a, image: a}]}\n",
    )
    .unwrap();
    let output = explain()
        .args(["-f", file.to_str().unwrap(), "-o", "json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["pods"][0]["namespace"], "default");
    assert_eq!(report["pods"][0]["mutate"], true);
}

#[test]
fn an_operator_table_goes_before_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("drivers.yaml");
    std::fs::write(
        &table,
        "rules:\n- driver: rancher.io/local-path\n  verdict: false\n  reason: our nodes keep local-path on NFS\n",
    )
    .unwrap();
    let report = json_report(&["--drivers", table.to_str().unwrap()]);
    let labels = labels(&report);
    assert_eq!(labels["pvc db/pg-backups"], "false");
    // Claims of other drivers keep the built-in verdicts.
    assert_eq!(labels["pvc db/data-postgres-0"], "true");
}

#[test]
fn a_configmap_manifest_is_accepted_as_the_driver_table() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("cm.yaml");
    std::fs::write(
        &table,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: userns-labeler-drivers, namespace: userns-labeler}\ndata:\n  drivers.yaml: |\n    replaceDefaults: true\n    rules:\n    - driver: ebs.csi.aws.com\n      verdict: true\n      reason: EBS only\n",
    )
    .unwrap();
    let report = json_report(&["--drivers", table.to_str().unwrap()]);
    let labels = labels(&report);
    assert_eq!(labels["pvc db/data-postgres-0"], "true");
    // replaceDefaults dropped the Longhorn rules.
    assert_eq!(labels["pvc home/vaultwarden-data"], "unknown");
}

/// One case per class of bad input: exit status 2, a located message on stderr, nothing on
/// stdout, and never a panic.
#[rstest::rstest]
#[case::table_bad_regex(
    "rules:\n- driverRegex: 'x(['\n  verdict: false\n  reason: r\n",
    "rules[0] (driverRegex \"x([\"): field driverRegex: invalid regex"
)]
#[case::table_unknown_field(
    "rules:\n- driver: a.example.com\n  verdicts: false\n  verdict: false\n  reason: r\n",
    "rules[0] (driver \"a.example.com\"): field verdicts: unknown field"
)]
#[case::table_unknown_access_mode(
    "rules:\n- driver: a.example.com\n  accessModes: [RWX]\n  verdict: false\n  reason: r\n",
    "field accessModes: unknown access mode \"RWX\""
)]
#[case::table_empty_match(
    "rules:\n- verdict: false\n  reason: r\n",
    "rules[0] (no driver): field driver: empty match"
)]
#[case::table_unknown_verdict(
    "rules:\n- driver: a.example.com\n  verdict: perhaps\n  reason: r\n",
    "field verdict: unknown verdict \"perhaps\""
)]
#[case::table_malformed_yaml("rules: [\n", "malformed YAML")]
fn an_invalid_driver_table_exits_2_with_a_located_message(
    #[case] table: &str,
    #[case] expected: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-table.yaml");
    std::fs::write(&path, table).unwrap();
    explain()
        .args([
            "-f",
            examples().to_str().unwrap(),
            "--drivers",
            path.to_str().unwrap(),
        ])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains("bad-table.yaml"))
        .stderr(predicate::str::contains(expected));
}

#[rstest::rstest]
#[case::malformed_yaml_in_second_document(
    "bad.yaml",
    "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n---\nkind: Pod\nmetadata: {name: [b\n",
    "bad.yaml: document 2 (line "
)]
#[case::malformed_json("bad.json", "{\"kind\": \"Pod\",", "bad.json: document 1 (line 1")]
#[case::wrong_field_type(
    "bad.yaml",
    "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {accessModes: 3}\n",
    "bad.yaml: document 1: PersistentVolumeClaim data: invalid type"
)]
#[case::not_a_kubernetes_object(
    "bad.yaml",
    "- just\n- a list\n",
    "bad.yaml: document 1: not a Kubernetes object"
)]
#[case::binary_garbage("bad.yaml", "\u{0}\u{1}\u{2}: [}{", "bad.yaml: document 1")]
fn malformed_manifests_exit_2_naming_file_and_document(
    #[case] name: &str,
    #[case] text: &str,
    #[case] expected: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    explain()
        .args(["-f", path.to_str().unwrap()])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(expected));
}

#[test]
fn an_unreadable_path_exits_2() {
    explain()
        .args(["-f", "/nonexistent/manifests"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "/nonexistent/manifests: cannot read",
        ));
}

#[test]
fn a_directory_without_manifests_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    explain()
        .args(["-f", dir.path().to_str().unwrap()])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no YAML or JSON files found"));
}

#[test]
fn an_invalid_label_prefix_exits_2() {
    explain()
        .args([
            "-f",
            examples().to_str().unwrap(),
            "--label-prefix",
            "Not_A_Domain",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid label prefix"));
}

// ---- workloads, standard input, readable output -------------------------------------------

/// Runs `explain -f - -o json` on `stdin`.
fn explain_stdin(stdin: &str, args: &[&str]) -> Value {
    let output = explain()
        .args(["-f", "-", "-o", "json"])
        .args(args)
        .write_stdin(stdin)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// A YAML stream of these objects (each written as JSON, which is YAML).
fn stream(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{o}\n"))
        .collect::<String>()
}

/// What every case below decides against: an NFS class and a claim of it, in namespace `apps`.
fn storage() -> Vec<Value> {
    vec![
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "nfs"}, "provisioner": "nfs.csi.k8s.io"}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "ebs"}, "provisioner": "ebs.csi.aws.com"}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "shared", "namespace": "apps"},
               "spec": {"storageClassName": "nfs", "accessModes": ["ReadWriteMany"]}}),
    ]
}

/// A pod spec with two blockers by the facts: the host's network namespace, and a claim on NFS.
fn blocked_spec() -> Value {
    json!({"hostNetwork": true,
           "containers": [{"name": "app", "image": "app", "volumeMounts": [{"name": "shared", "mountPath": "/s"}]}],
           "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}}]})
}

/// A pod spec nothing blocks: a configMap volume, a UID inside the pod's range.
fn safe_spec() -> Value {
    json!({"securityContext": {"runAsUser": 1000},
           "containers": [{"name": "app", "image": "app"}],
           "volumes": [{"name": "config", "configMap": {"name": "app"}}]})
}

/// `kind` named `name` in namespace `apps`, whose pods get `spec` (a pod: that spec itself).
fn workload(kind: &str, name: &str, spec: Value) -> Value {
    let meta = json!({"name": name, "namespace": "apps"});
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": spec});
    let selector = json!({"matchLabels": {"app": name}});
    match kind {
        "Pod" => json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            json!({"apiVersion": "apps/v1", "kind": kind, "metadata": meta,
                   "spec": {"selector": selector, "template": template}})
        }
        "ReplicationController" => json!({"apiVersion": "v1", "kind": kind, "metadata": meta,
                   "spec": {"selector": {"app": name}, "template": template}}),
        "Job" => json!({"apiVersion": "batch/v1", "kind": kind, "metadata": meta,
                   "spec": {"template": template}}),
        "CronJob" => json!({"apiVersion": "batch/v1", "kind": kind, "metadata": meta,
                   "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}),
        "PodTemplate" => json!({"apiVersion": "v1", "kind": kind, "metadata": meta,
                   "template": template}),
        other => panic!("no such workload kind {other}"),
    }
}

const WORKLOAD_KINDS: [&str; 8] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
    "PodTemplate",
];

fn entry<'a>(report: &'a Value, kind: &str, name: &str) -> &'a Value {
    report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == kind && p["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {report}"))
}

/// Each workload kind, judged through its pod template, gets exactly the decision of a pod with
/// that spec: the same blockers with the same sentences.
#[rstest::rstest]
fn each_workload_kind_is_decided_as_its_pod_would_be(
    #[values(
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "ReplicaSet",
        "ReplicationController",
        "Job",
        "CronJob",
        "PodTemplate"
    )]
    kind: &str,
) {
    let mut objects = storage();
    objects.extend([
        workload(kind, "blocked", blocked_spec()),
        workload(kind, "safe", safe_spec()),
        workload("Pod", "blocked", blocked_spec()),
        workload("Pod", "safe", safe_spec()),
    ]);
    let report = explain_stdin(&stream(&objects), &[]);
    let blocked = entry(&report, kind, "blocked");
    assert_eq!(blocked["namespace"], "apps");
    assert_eq!(blocked["decision"], "skipped");
    let codes: Vec<&str> = blocked["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["HostNetwork", "ClaimNotSupported"]);
    assert_eq!(
        blocked["reasons"],
        entry(&report, "Pod", "blocked")["reasons"]
    );
    let safe = entry(&report, kind, "safe");
    assert_eq!(safe["decision"], "enabled");
    assert_eq!(safe["reasons"], json!([]));
}

/// The case: one stream on standard input holding every kind, as `helm template`
/// prints a chart.
#[test]
fn a_stream_on_standard_input_mixing_every_kind_decides_each() {
    let mut objects = storage();
    for (i, kind) in WORKLOAD_KINDS.iter().chain(&["Pod"]).enumerate() {
        let spec = if i % 2 == 0 {
            blocked_spec()
        } else {
            safe_spec()
        };
        objects.push(workload(kind, &format!("w{i}"), spec));
    }
    // Kinds explain does not judge are read past.
    objects.push(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}}));
    let report = explain_stdin(&stream(&objects), &[]);
    let pods = report["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 9);
    for (i, kind) in WORKLOAD_KINDS.iter().chain(&["Pod"]).enumerate() {
        let expected = if i % 2 == 0 { "skipped" } else { "enabled" };
        assert_eq!(
            entry(&report, kind, &format!("w{i}"))["decision"],
            expected,
            "{kind}"
        );
    }
}

/// A StatefulSet's claim templates are judged as the claims it will create, from the template's
/// class; a claim of one of its ordinals that already exists is judged as it is.
#[test]
fn statefulset_claim_templates_are_judged_as_the_claims_they_create() {
    let sts = |name: &str, class: &str, replicas: u32, volumes: Value| {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": name, "namespace": "apps"},
               "spec": {"replicas": replicas, "serviceName": name,
                        "selector": {"matchLabels": {"app": name}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"containers": [{"name": "c", "image": "c",
                                              "volumeMounts": [{"name": "data", "mountPath": "/d"}]}],
                                              "volumes": volumes}},
                        "volumeClaimTemplates": [{"metadata": {"name": "data"},
                            "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
                                     "resources": {"requests": {"storage": "1Gi"}}}}]}})
    };
    let mut objects = storage();
    objects.extend([
        sts("on-nfs", "nfs", 2, json!([])),
        sts("on-ebs", "ebs", 3, json!([])),
        // Ordinal 1 of on-ebs was created earlier on NFS: its pod will mount that claim.
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-on-ebs-1", "namespace": "apps"},
               "spec": {"storageClassName": "nfs", "accessModes": ["ReadWriteOnce"]}}),
        // The controller mounts the claim in place of a pod volume of the template's name.
        sts(
            "shadowed",
            "nfs",
            1,
            json!([{"name": "data", "emptyDir": {}}]),
        ),
        sts("fresh", "ebs", 1, json!([])),
    ]);
    let report = explain_stdin(&stream(&objects), &[]);

    let messages = |name: &str| -> Vec<String> {
        entry(&report, "StatefulSet", name)["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{}: {}",
                    r["code"].as_str().unwrap(),
                    r["message"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(
        messages("on-nfs"),
        [
            "ClaimNotSupported: volume data: claim data-on-nfs-0 (driver nfs.csi.k8s.io) cannot be idmap-mounted: NFS volumes cannot be idmapped."
        ]
    );
    assert_eq!(
        messages("on-ebs"),
        [
            "ClaimNotSupported: volume data: claim data-on-ebs-1 (driver nfs.csi.k8s.io) cannot be idmap-mounted: NFS volumes cannot be idmapped."
        ]
    );
    assert_eq!(messages("shadowed").len(), 1, "{:?}", messages("shadowed"));
    assert!(messages("shadowed")[0].contains("claim data-shadowed-0"));
    assert_eq!(
        entry(&report, "StatefulSet", "fresh")["decision"],
        "enabled"
    );

    let templates: Vec<(String, String, String)> = report["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "PersistentVolumeClaimTemplate")
        .map(|v| {
            assert_eq!(v["namespace"], "apps");
            assert_eq!(v["name"], "data");
            (
                v["owner"].as_str().unwrap().to_string(),
                v["label"].as_str().unwrap().to_string(),
                v["driver"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let owned = |owner: &str, label: &str, driver: &str| {
        (owner.to_string(), label.to_string(), driver.to_string())
    };
    assert_eq!(
        templates,
        [
            owned("StatefulSet/fresh", "true", "ebs.csi.aws.com"),
            owned("StatefulSet/on-ebs", "true", "ebs.csi.aws.com"),
            owned("StatefulSet/on-nfs", "false", "nfs.csi.k8s.io"),
            owned("StatefulSet/shadowed", "false", "nfs.csi.k8s.io"),
        ]
    );
}

/// `helm template` of this project's own chart, explained end to end. The chart sets
/// `hostUsers: false` on its own pods (values.yaml): the author decided, so the webhook would
/// leave them alone (`HostUsersSet`). Without it, nothing in its pod blocks: a secret volume and
/// UID 65532.
#[rstest::rstest]
#[case::as_shipped(&[], "skipped", &["HostUsersSet"])]
#[case::host_users_unset(&["--set", "hostUsers=null"], "enabled", &[])]
fn helm_template_of_the_chart_is_explained_from_standard_input(
    #[case] values: &[&str],
    #[case] decision: &str,
    #[case] codes: &[&str],
) {
    let rendered = std::process::Command::new(userns_labeler_test_support::tool("helm"))
        .args(["template", "userns-labeler"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/userns-labeler"))
        .args(["--namespace", "userns-labeler"])
        .args(values)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let report = explain_stdin(&String::from_utf8(rendered.stdout).unwrap(), &[]);
    let pods = report["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1, "the chart has one workload: {report}");
    assert_eq!(pods[0]["kind"], "Deployment");
    assert_eq!(pods[0]["namespace"], "userns-labeler");
    assert_eq!(pods[0]["name"], "userns-labeler");
    assert_eq!(pods[0]["decision"], decision);
    let found: Vec<&str> = pods[0]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(found, codes);
}

/// The table names each blocker with its sentence, one per line, under the BLOCKERS column, in
/// the decision words the webhook writes.
#[test]
fn the_table_shows_each_blocker_with_its_sentence() {
    let mut objects = storage();
    objects.push(workload("Deployment", "web", blocked_spec()));
    objects.push(workload("Pod", "ok", safe_spec()));
    let output = explain()
        .args(["-f", "-"])
        .write_stdin(stream(&objects))
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("NAMESPACE   WORKLOAD"))
        .collect();
    assert_eq!(
        table,
        [
            "NAMESPACE   WORKLOAD         DECISION   BLOCKERS",
            "apps        pod/ok           enabled    -",
            "apps        deployment/web   skipped    HostNetwork: host namespaces (spec.hostNetwork: true) cannot be combined with a user namespace",
            "                                        ClaimNotSupported: volume shared: claim shared (driver nfs.csi.k8s.io) cannot be idmap-mounted: NFS volumes cannot be idmapped.",
            "",
            "1 of 2 pods and workloads are enabled, 1 skipped.",
        ]
    );
}

#[test]
fn help_documents_the_columns_and_the_exit_codes() {
    explain()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "DECISION (what the webhook in enforce mode",
        ))
        .stdout(predicate::str::contains(
            "enabled = sets spec.hostUsers: false",
        ))
        .stdout(predicate::str::contains(
            "BLOCKERS (each blocker on its own line",
        ))
        .stdout(predicate::str::contains(
            "Exit status: 0 done; 2 bad input or usage",
        ));
}

#[rstest::rstest]
#[case::workload_with_the_wrong_shape(
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {template: 3}\n",
    "<stdin>: document 1: Deployment web: invalid type"
)]
#[case::statefulset_template_with_the_wrong_shape(
    "---\nkind: PersistentVolume\nmetadata: {name: ok}\n---\nkind: StatefulSet\nmetadata: {name: db}\nspec: {selector: {}, template: {}, volumeClaimTemplates: [{spec: {accessModes: 1}}]}\n",
    "<stdin>: document 2: StatefulSet db: invalid type"
)]
#[case::malformed_yaml_in_a_stream("kind: Pod\n---\nkind: [\n", "<stdin>: document 2 (line 3")]
fn bad_input_on_standard_input_exits_2_located(#[case] text: &str, #[case] expected: &str) {
    explain()
        .args(["-f", "-"])
        .write_stdin(text)
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(expected));
}

#[test]
fn standard_input_named_twice_exits_2() {
    explain()
        .args(["-f", "-", "-f", "-"])
        .write_stdin("kind: Pod\n")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("can be read only once"));
}

#[test]
fn input_over_the_size_limit_exits_2_saying_it_is_a_limit() {
    let big = "# padding\n".repeat(120_000);
    explain()
        .args(["-f", "-", "--max-input-mib", "1"])
        .write_stdin(big)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "<stdin>: over a safety limit, not malformed: the input is larger than 1 MiB (--max-input-mib)",
        ));
}

/// What the issue found refused: more than 1,024 documents (the YAML reader's default budget)
/// and a List of 20,000 small objects (its node budget).
#[test]
fn a_stream_of_thousands_of_documents_and_a_list_of_20000_objects_are_read() {
    let documents: String = (0..2_000)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: apps}}\nspec: {{hostNetwork: {}, containers: [{{name: c, image: c}}]}}\n",
                i % 2 == 0
            )
        })
        .collect();
    let report = explain_stdin(&documents, &[]);
    let pods = report["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 2_000);
    assert_eq!(
        pods.iter().filter(|p| p["decision"] == "enabled").count(),
        1_000
    );

    let mut list = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for i in 0..20_000 {
        list.push_str(&format!(
            "- {{apiVersion: v1, kind: PersistentVolume, metadata: {{name: pv{i}}}, spec: {{csi: {{driver: {}, volumeHandle: h{i}}}}}}}\n",
            if i % 4 == 0 { "nfs.csi.k8s.io" } else { "ebs.csi.aws.com" }
        ));
    }
    let report = explain_stdin(&list, &[]);
    let volumes = report["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 20_000);
    assert_eq!(
        volumes.iter().filter(|v| v["label"] == "false").count(),
        5_000
    );
}
