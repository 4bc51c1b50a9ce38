//! The fast decoder ([`super::lean`]) against kube's full typed decoder: equal pods (after
//! [`prune`]), equal decisions and equal admissions for every pod of `examples/`, for generated
//! pods, and for the odd encodings both must read alike; and the reviews it leaves to the full
//! decoder.

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::core::PartialObjectMeta;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use proptest::prelude::*;
use serde_json::{Value, json};
use userns_labeler_test_support::fixtures::{claim, class};

use super::admission::{Admission, PodCreate, mutate, mutate_pod};
use super::lean::decode_pod_create;
use super::*;
use crate::capability::pod::decide;
use crate::capability::sources::tests::decoded_members;
use crate::capability::{BlockerCode, DriverTable, decide_pod};

fn namespace(name: &str, labels: Value) -> PartialObjectMeta<Namespace> {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn review(namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7b0c0a4e-0d3f-4a41-9d1e-3f1d2a6b5c01",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "f0e1", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

fn decode<T: serde::de::DeserializeOwned>(values: Vec<Value>) -> Vec<T> {
    values
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

fn full_decode(body: &[u8]) -> AdmissionRequest<Pod> {
    let review: AdmissionReview<Pod> =
        serde_json::from_slice(body).expect("the full decoder reads it");
    review.try_into().expect("a request")
}

fn fast_decode<'b>(body: &'b [u8], keys: &Keys) -> PodCreate<'b> {
    decode_pod_create(body, keys)
        .unwrap_or_else(|| panic!("the fast path declined {}", String::from_utf8_lossy(body)))
}

fn assert_same_admission(fast: &Admission, full: &Admission, body: &[u8]) {
    let context = String::from_utf8_lossy(body);
    assert_eq!(fast.response, full.response, "{context}");
    assert_eq!(fast.response.patch, full.response.patch, "{context}");
    assert_eq!(fast.outcome, full.outcome, "{context}");
    assert_eq!(fast.blockers, full.blockers, "{context}");
    assert_eq!(fast.error, full.error, "{context}");
    assert_eq!(fast.cache_miss, full.cache_miss, "{context}");
}

/// Decodes `body` both ways and checks that the fast decoder gives exactly what the webhook
/// takes from the full decode ([`PodCreate::of`]), and that the decision and the admission (both
/// modes) are the same. Returns the fast admission in enforce mode.
fn assert_equivalent(body: &[u8], state: &WebhookState) -> Admission {
    let full = full_decode(body);
    let fast = fast_decode(body, &state.keys);
    let context = String::from_utf8_lossy(body);
    let full_pod = full.object.as_ref().expect("a pod");
    assert_eq!(
        fast,
        PodCreate::of(&full, full_pod, &state.keys),
        "{context}"
    );

    let namespace = full.namespace.as_deref().unwrap_or("default");
    let table = state.table.borrow().table().cloned().expect("a table");
    assert_eq!(
        decide(&fast.facts, namespace, &state.caches, &table, &state.keys),
        decide_pod(full_pod, namespace, &state.caches, &table, &state.keys),
        "{context}"
    );
    for mode in [Mode::Audit, Mode::Enforce] {
        let (fast, full) = (mutate_pod(&fast, state, mode), mutate(&full, state, mode));
        assert_same_admission(&fast, &full, body);
    }
    mutate_pod(&fast, state, Mode::Enforce)
}

fn state_with(
    claims: Vec<PersistentVolumeClaim>,
    volumes: Vec<PersistentVolume>,
    classes: Vec<StorageClass>,
    namespaces: Vec<PartialObjectMeta<Namespace>>,
    keys: Keys,
) -> WebhookState {
    let table = crate::config::TableState::channel(DriverTable::defaults());
    WebhookState {
        caches: Caches::from_objects(claims, volumes, classes, namespaces),
        table,
        keys,
        metrics: WebhookMetrics::default(),
        nodes: Default::default(),
    }
}

/// Every object of `examples/` (Lists expanded), as written.
fn example_objects() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for document in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            match document["items"].as_array() {
                Some(items) => objects.extend(items.iter().cloned()),
                None if !document.is_null() => objects.push(document),
                None => {}
            }
        }
    }
    objects
}

#[test]
fn every_example_pod_and_pod_template_gets_the_same_admission_from_both_decoders() {
    let objects = example_objects();
    let of_kind = |kind: &str| -> Vec<Value> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .cloned()
            .collect()
    };
    let mut pods = of_kind("Pod");
    // The pods a StatefulSet or Deployment of the examples would create.
    for owner in objects
        .iter()
        .filter(|o| o["spec"]["template"]["spec"].is_object())
    {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
        pod["metadata"] = owner["spec"]["template"]["metadata"].clone();
        pod["metadata"]["generateName"] =
            json!(format!("{}-", owner["metadata"]["name"].as_str().unwrap()));
        pod["metadata"]["namespace"] = owner["metadata"]["namespace"].clone();
        pod["spec"] = owner["spec"]["template"]["spec"].clone();
        pods.push(pod);
    }
    let namespaces: Vec<String> = pods
        .iter()
        .map(|p| {
            p["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        })
        .collect();
    let state = state_with(
        decode(of_kind("PersistentVolumeClaim")),
        decode(of_kind("PersistentVolume")),
        decode(of_kind("StorageClass")),
        namespaces.iter().map(|n| namespace(n, json!({}))).collect(),
        Keys::default(),
    );
    assert!(pods.len() >= 10, "the examples hold pods: {}", pods.len());
    let mut outcomes = std::collections::BTreeSet::new();
    for (pod, namespace) in pods.iter().zip(&namespaces) {
        let body = serde_json::to_vec(&review(namespace, pod)).unwrap();
        outcomes.insert(assert_equivalent(&body, &state).outcome.as_str());
    }
    assert!(
        outcomes.contains("enabled") && outcomes.contains("skipped"),
        "the examples cover both decisions: {outcomes:?}"
    );
}

#[test]
fn a_volume_source_this_version_does_not_know_still_blocks_on_the_fast_path() {
    let state = generated_state(Keys::default());
    for volume in [
        json!({"name": "v", "futureVolume": {"server": "x"}}),
        json!({"name": "v"}),
        json!({"name": "v", "nfs": null, "futureVolume": {}}),
    ] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a", "image": "x"}], "volumes": [volume]}});
        let body = serde_json::to_vec(&review("app", &pod)).unwrap();
        let admission = assert_equivalent(&body, &state);
        assert_eq!(admission.outcome, Outcome::Skipped, "{pod}");
        assert_eq!(
            admission.blockers,
            vec![BlockerCode::UnrecognizedVolume],
            "{pod}"
        );
    }
}

/// Escaped keys and values, and a key given twice: read as the full decoder reads them (the
/// later duplicate wins in a pod, as in k8s-openapi).
#[test]
fn escapes_and_duplicate_pod_keys_read_as_in_the_full_decoder() {
    let state = generated_state(Keys::default());
    let pod = |spec: &str, metadata: &str| {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u\"1","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"namespace":"app","operation":"CREATE","userInfo":{{}},"object":{{"metadata":{metadata},"spec":{spec}}}}}}}"#
        )
    };
    let containers = r#""containers":[{"name":"a\u0062c","image":"x"}]"#;
    let cases = [
        // An escaped key is the key it spells.
        (
            pod(
                &format!(r#"{{"\u0068ostNetwork":true,{containers}}}"#),
                r#"{"name":"p"}"#,
            ),
            Outcome::Skipped,
        ),
        (
            pod(
                &format!(r#"{{"hostNetwork":true,"hostNetwork":false,{containers}}}"#),
                r#"{"name":"p"}"#,
            ),
            Outcome::Enabled,
        ),
        (
            pod(
                &format!(r#"{{"hostNetwork":false,"hostNetwork":true,{containers}}}"#),
                r#"{"name":"p"}"#,
            ),
            Outcome::Skipped,
        ),
        (
            pod(
                &format!(
                    r#"{{{containers},"containers":[{{"name":"b","securityContext":{{"privileged":true}}}}]}}"#
                ),
                r#"{"name":"p"}"#,
            ),
            Outcome::Skipped,
        ),
        (
            pod(
                &format!(r#"{{{containers}}}"#),
                r#"{"name":"p","labels":{"userns.io/opt-out":"true","userns.io/opt-out":"no"}}"#,
            ),
            Outcome::Enabled,
        ),
        (
            pod(
                &format!(r#"{{{containers}}}"#),
                r#"{"name":"p","labels":{"userns.io\/opt-out":"tr\u0075e"}}"#,
            ),
            Outcome::OptOut,
        ),
        (
            pod(
                &format!(r#"{{{containers}}}"#),
                r#"{"name":"p","labels":{"userns.io/opt-out":"true"},"labels":null}"#,
            ),
            Outcome::Enabled,
        ),
        (
            pod(
                &format!(r#"{{"hostUsers":false,{containers}}}"#),
                r#"{"name":"p\"q","annotations":{"userns.io/decision":"enabled"}}"#,
            ),
            Outcome::Ignored,
        ),
        (
            pod(
                &format!(r#"{{"hostUsers":null,{containers}}}"#),
                r#"{"annotations":{}}"#,
            ),
            Outcome::Enabled,
        ),
    ];
    for (body, outcome) in cases {
        let admission = assert_equivalent(body.as_bytes(), &state);
        assert_eq!(admission.outcome, outcome, "{body}");
    }
}

/// What the fast path does not handle goes to the full decoder, which answers it as before
/// (tested through the router in `tests/webhook_router.rs`).
#[test]
fn the_fast_path_leaves_everything_but_a_well_formed_pod_create_to_the_full_decoder() {
    let keys = Keys::default();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let base = review("app", &pod);
    let body = serde_json::to_vec(&base).unwrap();
    assert!(
        decode_pod_create(&body, &keys).is_some(),
        "the base case is decoded"
    );
    let set = |pointer: &str, value: Value| {
        let mut review = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = review.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        parent.insert(key.to_string(), value);
        serde_json::to_string(&review).unwrap()
    };
    let remove = |pointer: &str| {
        let mut review = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        review
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        serde_json::to_string(&review).unwrap()
    };
    let text = String::from_utf8(body).unwrap();
    let declined = [
        ("update", set("/request/operation", json!("UPDATE"))),
        ("delete", set("/request/operation", json!("DELETE"))),
        (
            "lower-case operation",
            set("/request/operation", json!("create")),
        ),
        (
            "another kind",
            set("/request/kind/kind", json!("ConfigMap")),
        ),
        ("another group", set("/request/kind/group", json!("apps"))),
        (
            "a subresource",
            set("/request/subResource", json!("binding")),
        ),
        ("a null object", set("/request/object", Value::Null)),
        ("no object", remove("/request/object")),
        ("an oldObject", set("/request/oldObject", pod.clone())),
        ("no request", remove("/request")),
        ("a null request", set("/request", Value::Null)),
        (
            "a response",
            set("/response", json!({"uid": "x", "allowed": true})),
        ),
        ("not a review", set("/kind", json!("Pod"))),
        ("another API group", set("/apiVersion", json!("v1"))),
        ("no apiVersion", remove("/apiVersion")),
        ("no uid", remove("/request/uid")),
        ("no userInfo", remove("/request/userInfo")),
        (
            "userInfo not an object",
            set("/request/userInfo", json!("admin")),
        ),
        ("a null name", set("/request/name", Value::Null)),
        ("a null dryRun", set("/request/dryRun", Value::Null)),
        ("an incomplete kind", remove("/request/kind/version")),
        (
            "an incomplete resource",
            remove("/request/resource/resource"),
        ),
        (
            "containers not a list",
            set("/request/object/spec/containers", json!("not a list")),
        ),
        (
            "a spec that is a list",
            set("/request/object/spec", json!([true])),
        ),
        (
            "a container that is a list",
            set("/request/object/spec/containers", json!([["a"]])),
        ),
        (
            "an object of apiVersion v2",
            set("/request/object/apiVersion", json!("v2")),
        ),
        (
            "an object of another kind",
            set("/request/object/kind", json!("ConfigMap")),
        ),
        (
            "hostNetwork not a bool",
            set("/request/object/spec/hostNetwork", json!("yes")),
        ),
        (
            "a label value not a string",
            set("/request/object/metadata/labels", json!({"a": 1})),
        ),
        (
            "a malformed volume source",
            set(
                "/request/object/spec/volumes",
                json!([{"name": "v", "nfs": "nas"}]),
            ),
        ),
        (
            "runAsUser not a number",
            set(
                "/request/object/spec/securityContext",
                json!({"runAsUser": "0"}),
            ),
        ),
        (
            "a duplicate uid",
            text.replacen("\"uid\":", "\"uid\":\"x\",\"uid\":", 1),
        ),
        ("trailing characters", format!("{text} x")),
        ("not JSON", "{ this is not json".to_string()),
        ("an array", "[1, 2, 3]".to_string()),
    ];
    for (case, body) in declined {
        assert!(
            decode_pod_create(body.as_bytes(), &keys).is_none(),
            "{case}: {body}"
        );
    }
}

fn generated_state(keys: Keys) -> WebhookState {
    let opt_out = keys.opt_out.clone();
    state_with(
        vec![
            claim("app", "rwo").class("longhorn").build(),
            claim("app", "rwx")
                .class("longhorn")
                .modes(&["ReadWriteMany"])
                .build(),
            claim("app", "raw").class("longhorn").block().build(),
            claim("app", "odd").class("mystery").build(),
        ],
        vec![],
        vec![
            class("longhorn", "driver.longhorn.io")
                .default_class()
                .build(),
            class("ebs", "ebs.csi.aws.com").build(),
            class("mystery", "storage.example.com").build(),
        ],
        vec![
            namespace("app", json!({})),
            namespace("quiet", json!({opt_out: "true"})),
        ],
        keys,
    )
}

/// One of: absent (`None`), `null`, or one of `values`.
fn member(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => proptest::sample::select(values).prop_map(Some),
    ]
}

fn put(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object[key] = value;
    }
}

/// Like [`member`], mostly absent, `null` or `values[0]` (harmless), sometimes another value.
fn mostly_first(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    let first = values[0].clone();
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(Value::Null)),
        2 => Just(Some(first)),
        2 => proptest::sample::select(values).prop_map(Some),
    ]
}

/// A UID or GID, mostly inside the pod's range.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => proptest::sample::select(vec![0i64, 999, 65_535]),
        1 => proptest::sample::select(vec![65_536i64, 70_000]),
    ]
    .prop_map(Value::from)
}

fn container() -> impl Strategy<Value = Value> {
    let security = prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (mostly_first(vec![json!(false), json!(true)]), proptest::option::of(id()), proptest::option::of(id()))
            .prop_map(|(privileged, user, group)| {
                let mut sc = json!({"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
                put(&mut sc, "privileged", privileged);
                put(&mut sc, "runAsUser", user);
                put(&mut sc, "runAsGroup", group);
                Some(sc)
            }),
    ];
    (
        member(vec![json!("app"), json!("side\"car"), json!("init")]),
        security,
        mostly_first(vec![json!([]), json!([{"name": "raw", "devicePath": "/dev/xvda"}])]),
    )
        .prop_map(|(name, security, devices)| {
            let mut c = json!({
                "image": "registry.example.com/app:1.0", "args": ["--listen=:8080"],
                "env": [{"name": "A", "value": "b"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
                "volumeMounts": [{"name": "v", "mountPath": "/data"}],
            });
            put(&mut c, "name", name);
            put(&mut c, "securityContext", security);
            put(&mut c, "volumeDevices", devices);
            c
        })
}

/// Volumes that never block (with the claims of [`generated_state`]).
fn harmless_volume() -> impl Strategy<Value = Value> {
    proptest::sample::select(vec![
        json!({"name": "a", "persistentVolumeClaim": {"claimName": "rwo"}}),
        json!({"name": "f", "emptyDir": {}}),
        json!({"name": "h", "configMap": {"name": "settings"}}),
        json!({"name": "i", "secret": {"secretName": "creds"}}),
        json!({"name": "m", "hostPath": {"path": "/var/lib/data"}}),
        json!({"name": "p", "csi": {"driver": "driver.longhorn.io", "fsType": "ext4"}}),
    ])
}

fn volume() -> impl Strategy<Value = Value> {
    proptest::sample::select(vec![
        json!({"name": "a", "persistentVolumeClaim": {"claimName": "rwo"}}),
        json!({"name": "b", "persistentVolumeClaim": {"claimName": "rwx", "readOnly": true}}),
        json!({"name": "c", "persistentVolumeClaim": {"claimName": "raw"}}),
        json!({"name": "d", "persistentVolumeClaim": {"claimName": "odd"}}),
        json!({"name": "e", "persistentVolumeClaim": {"claimName": "not-there"}}),
        json!({"name": "f", "emptyDir": {}}),
        json!({"name": "g", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}),
        json!({"name": "h", "configMap": {"name": "settings", "items": [{"key": "a", "path": "a"}]}}),
        json!({"name": "i", "secret": {"secretName": "creds", "defaultMode": 256}}),
        json!({"name": "j", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}},
            {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}),
        json!({"name": "k", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}),
        json!({"name": "l", "hostPath": {"path": "/dev/ttyUSB0"}}),
        json!({"name": "m", "hostPath": {"path": "/var/lib/data", "type": "Directory"}}),
        json!({"name": "n", "hostPath": {"path": "/"}}),
        json!({"name": "o", "nfs": {"server": "nas", "path": "/export"}}),
        json!({"name": "p", "csi": {"driver": "driver.longhorn.io", "fsType": "ext4"}}),
        json!({"name": "q", "csi": {"driver": "nfs.csi.k8s.io", "volumeAttributes": {"server": "nas"}}}),
        json!({"name": "r", "csi": {"driver": "unknown.example.com"}}),
        json!({"name": "s", "ephemeral": {"volumeClaimTemplate": {"spec": {"accessModes": ["ReadWriteOnce"],
            "storageClassName": "ebs", "resources": {"requests": {"storage": "1Gi"}}}}}}),
        json!({"name": "t", "ephemeral": {"volumeClaimTemplate": {"metadata": {"labels": {"a": "b"}},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}}}),
        json!({"name": "u", "ephemeral": {}}),
        json!({"name": "v", "iscsi": {"targetPortal": "10.0.0.1:3260", "iqn": "iqn.x", "lun": 0, "fsType": "xfs"}}),
        json!({"name": "w", "image": {"reference": "registry.example.com/data:1"}}),
        json!({"name": "x", "gitRepo": {"repository": "https://example.com/r.git"}}),
        json!({"name": "y", "cephfs": {"monitors": ["10.0.0.1"]}}),
        json!({"name": "z", "futureVolume": {"anything": [1, 2]}}),
        json!({"name": "zz", "nfs": null, "azureFile": {"secretName": "s", "shareName": "x"}}),
        json!({"name": "zzz", "awsElasticBlockStore": {"volumeID": "vol-1", "fsType": "ext4"}}),
    ])
}

fn generated_pod(prefix: &'static str) -> impl Strategy<Value = Value> {
    let opt_out = format!("{prefix}/opt-out");
    let decision = format!("{prefix}/decision");
    let metadata = (
        member(vec![json!("web-0"), json!("we\"b"), json!("")]),
        member(vec![json!("web-"), json!("job-\u{e9}-")]),
        member(vec![
            json!({}),
            json!({"app": "web", opt_out.clone(): "true"}),
            json!({opt_out.clone(): "false", "tier": "x"}),
            json!({"userns.io/opt-out": "true", "team": "q\\\"x"}),
        ]),
        member(vec![
            json!({}),
            json!({decision.clone(): "enabled", "team": "infra"}),
            json!({decision.clone(): "skipped"}),
            json!({"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}"}),
        ]),
    )
        .prop_map(|(name, generate_name, labels, annotations)| {
            let mut m = json!({
                "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
                "creationTimestamp": null,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": "1", "controller": true}],
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": {}}}}],
            });
            put(&mut m, "name", name);
            put(&mut m, "generateName", generate_name);
            put(&mut m, "labels", labels);
            put(&mut m, "annotations", annotations);
            m
        });
    let flag = || mostly_first(vec![json!(false), json!(true)]);
    let host = (flag(), flag(), flag(), flag());
    let pod_level = (
        member(vec![
            json!({"name": "linux"}),
            json!({"name": "windows"}),
            json!({"name": "Windows"}),
        ]),
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            (
                proptest::option::of(id()),
                proptest::option::of(id()),
                proptest::option::of(id()),
                prop::collection::vec(id(), 0..3)
            )
                .prop_map(|(user, group, fs, supplemental)| {
                    let mut sc = json!({"runAsNonRoot": true, "supplementalGroups": supplemental});
                    put(&mut sc, "runAsUser", user);
                    put(&mut sc, "runAsGroup", group);
                    put(&mut sc, "fsGroup", fs);
                    Some(sc)
                }),
        ],
        member(vec![
            json!([]),
            json!([{"name": "gpu", "resourceClaimName": "gpu-claim"}]),
        ]),
        member(vec![json!("node-a"), json!("")]),
        member(vec![
            json!({}),
            json!({"podAntiAffinity": {}}),
            json!({"nodeAffinity": {}}),
            json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}),
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]},
                {"matchExpressions": null}
            ]}}}),
        ]),
    );
    let containers = (
        prop::collection::vec(container(), 0..3),
        proptest::option::of(prop::collection::vec(container(), 0..2)),
        proptest::option::of(prop::collection::vec(container(), 0..2)),
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            4 => prop::collection::vec(harmless_volume(), 0..4).prop_map(|v| Some(Value::Array(v))),
            4 => prop::collection::vec(volume(), 0..5).prop_map(|v| Some(Value::Array(v))),
        ],
    );
    (metadata, host, pod_level, containers, any::<bool>()).prop_map(
        |(metadata, (users, network, pid, ipc), (os, security, claims, node_name, affinity), (containers, init, ephemeral, volumes), status)| {
            let mut spec = json!({
                "containers": containers,
                "serviceAccountName": "default", "restartPolicy": "Always",
                "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
            });
            put(&mut spec, "hostUsers", users);
            put(&mut spec, "hostNetwork", network);
            put(&mut spec, "hostPID", pid);
            put(&mut spec, "hostIPC", ipc);
            put(&mut spec, "os", os);
            put(&mut spec, "securityContext", security);
            put(&mut spec, "resourceClaims", claims);
            put(&mut spec, "nodeName", node_name);
            put(&mut spec, "affinity", affinity);
            put(&mut spec, "initContainers", init.map(Value::from));
            put(&mut spec, "ephemeralContainers", ephemeral.map(Value::from));
            put(&mut spec, "volumes", volumes);
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
            if status {
                pod["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
            }
            pod
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Generated pods, with every field the decision reads absent, null or set, and fields it
    /// does not read around them: both decoders give the same pruned pod, decision and
    /// admission — so the fast path never enables a pod the full decoder would not.
    #[test]
    fn generated_pods_get_the_same_admission_from_both_decoders(
        pod in generated_pod("userns.io"),
        namespace in proptest::sample::select(vec!["app", "quiet", "elsewhere"]),
        pod_namespace in proptest::option::of(proptest::sample::select(vec!["app", "quiet"])),
    ) {
        let state = generated_state(Keys::default());
        let mut review = review(namespace, &pod);
        if let Some(ns) = pod_namespace {
            review["request"]["object"]["metadata"]["namespace"] = json!(ns);
        }
        assert_equivalent(&serde_json::to_vec(&review).unwrap(), &state);
    }

    /// The same with another key prefix: only that prefix's opt-out label and decision
    /// annotation count.
    #[test]
    fn a_custom_prefix_gets_the_same_admission_from_both_decoders(
        pod in generated_pod("security.example.com"),
    ) {
        let state = generated_state(Keys::new("security.example.com").unwrap());
        assert_equivalent(&serde_json::to_vec(&review("app", &pod)).unwrap(), &state);
    }
}

/// The generator reaches every outcome of a pod CREATE, so the properties above are not
/// checked on skipped pods only.
#[test]
fn the_generated_pods_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let state = generated_state(Keys::default());
    let mut runner = TestRunner::deterministic();
    let strategy = generated_pod("userns.io");
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..2048 {
        let pod = strategy.new_tree(&mut runner).unwrap().current();
        for namespace in ["app", "quiet"] {
            let body = serde_json::to_vec(&review(namespace, &pod)).unwrap();
            let admission = mutate_pod(&fast_decode(&body, &state.keys), &state, Mode::Enforce);
            *seen.entry(admission.outcome.as_str()).or_default() += 1;
        }
    }
    for outcome in ["enabled", "skipped", "opt_out", "ignored", "reverted"] {
        assert!(seen.get(outcome).is_some_and(|n| *n >= 5), "{seen:?}");
    }
}

/// Every volume source this version of k8s-openapi knows is a source on the fast path too (read
/// or kept as present), so only a source unknown to both is `UnrecognizedVolume`.
#[test]
fn every_volume_source_of_the_api_version_is_known_to_the_fast_path() {
    let state = generated_state(Keys::default());
    let members = decoded_members::<k8s_openapi::api::core::v1::Volume>();
    assert!(members.len() > 25, "{members:?}");
    for source in members.iter().filter(|m| **m != "name") {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}], "volumes": [{"name": "v", *source: {}}]}});
        let body = serde_json::to_vec(&review("app", &pod)).unwrap();
        let admission = assert_equivalent(&body, &state);
        assert!(
            !admission
                .blockers
                .contains(&BlockerCode::UnrecognizedVolume),
            "{source}: {:?}",
            admission.blockers
        );
    }
}

/// A review that is no pod CREATE (another operation, kind or subresource; its object in any
/// shape, before or after the fields that say so) is read once, by the fast path, and
/// answered exactly as the full decoder's request would be: allowed, unchanged.
#[test]
fn reviews_other_than_a_pod_create_are_answered_from_one_decode() {
    use super::admission::allowed_response;
    use super::lean::{Review, decode_review};
    let keys = Keys::default();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                     "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
    let base = review("app", &pod);
    let with = |edits: &[(&str, Value)]| {
        let mut review = base.clone();
        for (pointer, value) in edits {
            let (parent, member) = pointer.rsplit_once('/').unwrap();
            review.pointer_mut(parent).unwrap()[member] = value.clone();
        }
        review
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                            "metadata": {"name": "d"}, "spec": {"replicas": "not a number"}});
    let other = [
        (
            "an UPDATE",
            with(&[
                ("/request/operation", json!("UPDATE")),
                ("/request/oldObject", pod.clone()),
            ]),
        ),
        (
            "a DELETE without object",
            with(&[
                ("/request/operation", json!("DELETE")),
                ("/request/object", Value::Null),
            ]),
        ),
        (
            "a deployment",
            with(&[
                (
                    "/request/kind",
                    json!({"group": "apps", "version": "v1", "kind": "Deployment"}),
                ),
                ("/request/object", deployment.clone()),
            ]),
        ),
        (
            "a subresource",
            with(&[
                ("/request/subResource", json!("binding")),
                ("/request/object", json!({"target": 1})),
            ]),
        ),
    ];
    for (case, review) in other {
        let body = serde_json::to_vec(&review).unwrap();
        let Review::Other(request) = decode_review(&body, &keys) else {
            panic!("{case}: not answered on the fast path");
        };
        let full: AdmissionReview<kube::core::DynamicObject> =
            serde_json::from_slice(&body).unwrap();
        let full: AdmissionRequest<kube::core::DynamicObject> = full.try_into().unwrap();
        assert_eq!(
            allowed_response(&request.api_version, &request.kind, &request.uid),
            AdmissionResponse::from(&full),
            "{case}"
        );
    }
    // serde_json writes members sorted (`object` before `operation`): above, the object was
    // read as a pod first. With the operation first, the object is skipped.
    let mut text =
        serde_json::to_string(&with(&[("/request/operation", json!("UPDATE"))])).unwrap();
    text = text.replacen("\"operation\":\"UPDATE\",", "", 1);
    let text = text.replacen("\"request\":{", "\"request\":{\"operation\":\"UPDATE\",", 1);
    assert!(
        matches!(decode_review(text.as_bytes(), &keys), Review::Other(_)),
        "{text}"
    );
    // A pod CREATE stays on the pod path.
    let body = serde_json::to_vec(&base).unwrap();
    assert!(matches!(decode_review(&body, &keys), Review::PodCreate(_)));
}
