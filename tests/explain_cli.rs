//! The `explain` command as an operator runs it: the real binary, real files.
//!
//! Expected values for `examples/` come from the examples' own README (each decision reasoned
//! from the userns facts), not from running the engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

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
            let key = match v["namespace"].as_str() {
                Some(ns) => format!("pvc {ns}/{}", v["name"].as_str().unwrap()),
                None => format!("pv {}", v["name"].as_str().unwrap()),
            };
            (key, v["label"].as_str().unwrap().to_string())
        })
        .collect()
}

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
            (
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["name"].as_str().unwrap()
                ),
                (p["mutate"].as_bool().unwrap(), codes),
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
        ("paperless/paperless", false, vec!["ClaimNotSupported"]),
        ("home/homepage", true, vec![]),
        ("home/home-assistant", false, vec!["HostPathForbidden"]),
        ("home/matter-server", false, vec!["HostNetwork"]),
        ("home/mosquitto", true, vec![]),
        ("home/vaultwarden", true, vec![]),
        ("home/node-red", true, vec![]),
        (
            "media/jellyfin",
            false,
            vec!["ClaimNotSupported", "ClaimNotSupported"],
        ),
        ("media/navidrome", false, vec!["ClaimNotSupported"]),
        (
            "media/qbittorrent",
            false,
            vec!["HostUsersSet", "ClaimNotSupported"],
        ),
        ("media/ffmpeg-transcode", true, vec![]),
        ("media/sonarr", false, vec!["ClaimNotFound"]),
        (
            "db/fio-block-bench",
            false,
            vec!["VolumeDevices", "ClaimNotSupported"],
        ),
        ("db/pgbouncer", false, vec!["IDOutOfRange"]),
        ("db/postgres-0", true, vec![]),
        ("db/postgres-1", true, vec![]),
        ("db/pg-backup-", true, vec![]),
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
    for key in ["namespace", "name", "mutate", "reasons"] {
        assert!(pod.get(key).is_some(), "pod key {key}");
    }
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
        .stdout(predicate::str::contains("NAMESPACE   POD"))
        .stdout(predicate::str::contains("pvc/paperless "));
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
