//! The webhook's router, driven with AdmissionReview fixtures through `oneshot` (no network, no
//! API server): every outcome, the patch applied to the original object, malformed input.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use rstest::rstest;
use serde_json::{Value, json};
use tower::ServiceExt;
use userns_labeler::capability::{BlockerCode, DriverTable, PrunedClaim};
use userns_labeler::keys::Keys;
use userns_labeler::webhook::lean::decode_pod_create;
use userns_labeler::webhook::{
    AdmissionSettings, MAX_BODY_BYTES, MUTATE_PODS_PATH, Mode, Outcome, PodCreate, WebhookMetrics,
    WebhookState, mutate, mutate_pod, router,
};
use userns_labeler_test_support::webhook::*;

fn enforce() -> AdmissionSettings {
    AdmissionSettings {
        mode: Mode::Enforce,
        cache_wait: Duration::ZERO,
        ..AdmissionSettings::default()
    }
}

fn audit() -> AdmissionSettings {
    AdmissionSettings {
        mode: Mode::Audit,
        ..enforce()
    }
}

async fn post_raw(
    state: &Arc<WebhookState>,
    settings: AdmissionSettings,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(MUTATE_PODS_PATH)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let response = router(state.clone(), settings)
        .oneshot(request)
        .await
        .expect("the router answers");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body.to_vec())
}

async fn post(state: &Arc<WebhookState>, settings: AdmissionSettings, review: &Value) -> Answer {
    let (status, body) = post_raw(state, settings, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    answer(&body)
}

fn world() -> Arc<WebhookState> {
    state(storage_world(&Keys::default()))
}

const DECISION: &str = "userns.io/decision";
const REASON: &str = "userns.io/decision-reason";

/// Sends a pod CREATE in `namespace`; returns the answer and the pod after its patch.
async fn admit(
    state: &Arc<WebhookState>,
    settings: AdmissionSettings,
    namespace: &str,
    pod: &Value,
) -> (Answer, Value) {
    let review = review("CREATE", namespace, pod);
    let answer = post(state, settings, &review).await;
    assert!(answer.allowed, "pods are never denied: {}", answer.message);
    assert_eq!(answer.uid, review["request"]["uid"].as_str().unwrap());
    let original = &review["request"]["object"];
    let after = match &answer.patch {
        Some(patch) => patched(original, patch),
        None => original.clone(),
    };
    (answer, after)
}

#[tokio::test]
async fn a_pod_with_an_rwo_longhorn_claim_gets_host_users_false_and_the_annotations() {
    let state = world();
    let pod = with_volume(pod("web"), claim_volume("data", "data"));
    let (answer, after) = admit(&state, enforce(), "app", &pod).await;

    assert!(answer.patch.is_some());
    assert_eq!(after["spec"]["hostUsers"], json!(false));
    assert_eq!(annotation(&after, DECISION), Some("enabled"));
    assert_eq!(
        annotation(&after, REASON),
        Some("no host namespaces or devices, and its one volume supports idmap mounts")
    );
    // The pod had no annotations at all: the map is created, and nothing else changes.
    let mut expected = review("CREATE", "app", &pod)["request"]["object"].clone();
    expected["spec"]["hostUsers"] = json!(false);
    expected["metadata"]["annotations"] = after["metadata"]["annotations"].clone();
    assert_eq!(after, expected);
    // It decodes as a Pod with the field set.
    assert_eq!(decode_pod(&after).spec.unwrap().host_users, Some(false));
    assert_eq!(state.metrics.admissions(Outcome::Enabled), 1);
}

#[tokio::test]
async fn existing_annotations_are_kept_and_ours_added() {
    let state = world();
    let mut pod = pod("web");
    pod["metadata"]["annotations"] = json!({"team": "infra", "userns.io/decision": "stale"});
    let (answer, after) = admit(&state, enforce(), "app", &pod).await;

    let ops = serde_json::to_value(answer.patch.unwrap()).unwrap();
    // JSON Pointer escaping of the `/` in the keys, one op per key, no map replacement.
    assert_eq!(
        ops,
        json!([
            {"op": "add", "path": "/metadata/annotations/userns.io~1decision", "value": "enabled"},
            {"op": "add", "path": "/metadata/annotations/userns.io~1decision-reason",
             "value": "no host namespaces, devices or volumes that prevent a user namespace"},
            {"op": "add", "path": "/spec/hostUsers", "value": false},
        ])
    );
    assert_eq!(annotation(&after, "team"), Some("infra"));
    assert_eq!(annotation(&after, DECISION), Some("enabled"));
}

#[tokio::test]
async fn only_config_maps_secrets_and_empty_dirs_are_enabled() {
    let state = world();
    let mut pod = pod("cfg");
    for volume in [
        json!({"name": "config", "configMap": {"name": "settings"}}),
        json!({"name": "secret", "secret": {"secretName": "creds"}}),
        json!({"name": "scratch", "emptyDir": {}}),
        json!({"name": "shm", "emptyDir": {"medium": "Memory"}}),
    ] {
        pod = with_volume(pod, volume);
    }
    let (_, after) = admit(&state, enforce(), "app", &pod).await;
    assert_eq!(after["spec"]["hostUsers"], json!(false));
    assert_eq!(
        annotation(&after, REASON),
        Some("no host namespaces or devices, and all 4 volumes support idmap mounts")
    );
}

#[tokio::test]
async fn a_generic_ephemeral_ebs_volume_is_enabled() {
    let state = world();
    let pod = with_volume(
        pod("scratch"),
        json!({"name": "work", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "ebs",
            "resources": {"requests": {"storage": "10Gi"}}}}}}),
    );
    let (_, after) = admit(&state, enforce(), "app", &pod).await;
    assert_eq!(after["spec"]["hostUsers"], json!(false));
    assert_eq!(annotation(&after, DECISION), Some("enabled"));
}

/// Sets the member at `pointer`; its parent must exist.
fn set(mut pod: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    pod.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("the parent exists")
        .insert(key.to_string(), value);
    pod
}

fn skipped_pod(case: &str) -> Value {
    let base = pod(case);
    match case {
        "host-network" => set(
            base,
            "/spec",
            json!({"hostNetwork": true, "containers": [{"name": "app", "image": "x"}]}),
        ),
        "host-pid" => set(
            base,
            "/spec",
            json!({"hostPID": true, "containers": [{"name": "app", "image": "x"}]}),
        ),
        "host-ipc" => set(
            base,
            "/spec",
            json!({"hostIPC": true, "containers": [{"name": "app", "image": "x"}]}),
        ),
        "host-users-true" => set(
            base,
            "/spec",
            json!({"hostUsers": true, "containers": [{"name": "app", "image": "x"}]}),
        ),
        "host-users-false" => set(
            base,
            "/spec",
            json!({"hostUsers": false, "containers": [{"name": "app", "image": "x"}]}),
        ),
        "dev-host-path" => with_volume(
            base,
            json!({"name": "usb", "hostPath": {"path": "/dev/ttyUSB0"}}),
        ),
        "volume-devices" => {
            let pod = with_volume(base, claim_volume("raw", "raw"));
            set(
                pod,
                "/spec/containers/0/volumeDevices",
                json!([{"name": "raw", "devicePath": "/dev/xvda"}]),
            )
        }
        "rwx-longhorn" => with_volume(base, claim_volume("shared", "shared")),
        "nfs-claim" => with_volume(base, claim_volume("media", "nfs-data")),
        "unknown-driver" => with_volume(base, claim_volume("odd", "odd")),
        "missing-claim" => with_volume(base, claim_volume("config", "not-there")),
        "run-as-user-70000" => set(base, "/spec/securityContext", json!({"runAsUser": 70000})),
        "privileged" => set(
            base,
            "/spec/containers/0/securityContext",
            json!({"privileged": true}),
        ),
        other => panic!("no case {other}"),
    }
}

#[rstest]
#[case::host_network("host-network", &[BlockerCode::HostNetwork])]
#[case::host_pid("host-pid", &[BlockerCode::HostPid])]
#[case::host_ipc("host-ipc", &[BlockerCode::HostIpc])]
#[case::explicit_host_users_true("host-users-true", &[BlockerCode::HostUsersSet])]
#[case::explicit_host_users_false("host-users-false", &[BlockerCode::HostUsersSet])]
#[case::dev_host_path("dev-host-path", &[BlockerCode::HostPathForbidden])]
#[case::volume_devices_on_a_block_claim("volume-devices", &[BlockerCode::VolumeDevices, BlockerCode::ClaimNotSupported])]
#[case::rwx_longhorn("rwx-longhorn", &[BlockerCode::ClaimNotSupported])]
#[case::nfs_claim("nfs-claim", &[BlockerCode::ClaimNotSupported])]
#[case::unknown_driver("unknown-driver", &[BlockerCode::ClaimSupportUnknown])]
#[case::missing_claim("missing-claim", &[BlockerCode::ClaimNotFound])]
#[case::run_as_user_70000("run-as-user-70000", &[BlockerCode::IdOutOfRange])]
#[case::privileged("privileged", &[BlockerCode::PrivilegedContainer])]
#[tokio::test]
async fn a_skipped_pod_keeps_host_users_and_says_why(
    #[case] case: &str,
    #[case] codes: &[BlockerCode],
) {
    let state = world();
    let pod = skipped_pod(case);
    let (answer, after) = admit(&state, enforce(), "app", &pod).await;

    let original = &review("CREATE", "app", &pod)["request"]["object"];
    assert_eq!(
        after["spec"], original["spec"],
        "{case}: the spec is left as written"
    );
    assert_eq!(annotation(&after, DECISION), Some("skipped"), "{case}");
    let reason = annotation(&after, REASON).unwrap();
    let reported: Vec<&str> = reason
        .split("; ")
        .map(|part| part.split_once(": ").expect("code: message").0)
        .collect();
    let expected: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    assert_eq!(reported, expected, "{case}: {reason}");
    // Only the annotations are patched.
    let ops = serde_json::to_value(answer.patch.unwrap()).unwrap();
    assert!(
        ops.as_array().unwrap().iter().all(|op| op["path"]
            .as_str()
            .unwrap()
            .starts_with("/metadata/annotations")),
        "{case}: {ops}"
    );
    assert_eq!(state.metrics.admissions(Outcome::Skipped), 1);
    for code in codes {
        assert_eq!(state.metrics.blockers(*code), 1, "{case}: {code}");
    }
}

/// The fixture pods of this file, enabled and skipped.
fn fixture_pods() -> Vec<Value> {
    let mut pods = vec![
        pod("web"),
        with_volume(pod("web"), claim_volume("data", "data")),
        with_volume(
            pod("scratch"),
            json!({"name": "work", "ephemeral": {"volumeClaimTemplate": {"spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "ebs",
                "resources": {"requests": {"storage": "10Gi"}}}}}}),
        ),
    ];
    let mut config = pod("cfg");
    for volume in [
        json!({"name": "config", "configMap": {"name": "settings"}}),
        json!({"name": "secret", "secret": {"secretName": "creds"}}),
        json!({"name": "scratch", "emptyDir": {}}),
    ] {
        config = with_volume(config, volume);
    }
    pods.push(config);
    for case in [
        "host-network",
        "host-pid",
        "host-ipc",
        "host-users-true",
        "host-users-false",
        "dev-host-path",
        "volume-devices",
        "rwx-longhorn",
        "nfs-claim",
        "unknown-driver",
        "missing-claim",
        "run-as-user-70000",
        "privileged",
    ] {
        pods.push(skipped_pod(case));
    }
    let mut labelled = with_volume(pod("web"), claim_volume("data", "data"));
    labelled["metadata"]["labels"] = json!({"userns.io/opt-out": "true"});
    pods.push(labelled);
    pods
}

/// The router decodes pod CREATEs on a fast path that keeps only what the decision reads; every
/// fixture pod gets from it the same admission, in both modes and namespaces, as from kube's
/// full typed decoder.
#[test]
fn every_fixture_pod_gets_the_same_admission_from_the_fast_and_the_full_decoder() {
    let state = world();
    for pod in fixture_pods() {
        for namespace in ["app", "quiet"] {
            let body = serde_json::to_vec(&review("CREATE", namespace, &pod)).unwrap();
            let full: AdmissionReview<Pod> = serde_json::from_slice(&body).unwrap();
            let full: AdmissionRequest<Pod> = full.try_into().unwrap();
            let fast = decode_pod_create(&body, &state.keys).expect("the fast path decodes it");
            let full_pod = full.object.as_ref().unwrap();
            assert_eq!(fast, PodCreate::of(&full, full_pod, &state.keys), "{pod}");
            for mode in [Mode::Enforce, Mode::Audit] {
                let (a, b) = (mutate_pod(&fast, &state, mode), mutate(&full, &state, mode));
                assert_eq!(a.response, b.response, "{pod}");
                assert_eq!(
                    (a.outcome, &a.blockers, a.error, a.cache_miss),
                    (b.outcome, &b.blockers, b.error, b.cache_miss),
                    "{pod}"
                );
            }
        }
    }
}

/// The answer is JSON with the patch as a base64 string and its type, as the API server's own
/// types encode it.
#[tokio::test]
async fn the_answer_is_json_with_a_base64_patch() {
    let state = world();
    let review = review("CREATE", "app", &pod("web"));
    let request = Request::post(MUTATE_PODS_PATH)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&review).unwrap()))
        .unwrap();
    let response = router(state, enforce()).oneshot(request).await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(value["kind"], "AdmissionReview");
    assert_eq!(value["response"]["allowed"], true);
    assert_eq!(value["response"]["status"], json!({}));
    assert_eq!(value["response"]["patchType"], "JSONPatch");
    let patch = value["response"]["patch"]
        .as_str()
        .expect("a base64 string");
    assert!(
        answer(&body).patch.is_some_and(|p| !p.0.is_empty()),
        "{patch}"
    );
}

#[tokio::test]
async fn the_decision_reason_is_deterministic() {
    let state = world();
    let pod = with_volume(
        skipped_pod("host-network"),
        claim_volume("media", "nfs-data"),
    );
    let review = review("CREATE", "app", &pod);
    let (_, first) = post_raw(&state, enforce(), serde_json::to_vec(&review).unwrap()).await;
    let (_, second) = post_raw(&state, enforce(), serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(
        first, second,
        "the same request gets byte-identical answers"
    );
    let after = patched(&review["request"]["object"], &answer(&first).patch.unwrap());
    assert_eq!(
        annotation(&after, REASON),
        Some(
            "HostNetwork: host namespaces (spec.hostNetwork: true) cannot be combined with a user namespace; \
             ClaimNotSupported: volume media: claim nfs-data (driver nfs.csi.k8s.io) cannot be idmap-mounted: \
             NFS volumes cannot be idmapped"
        )
    );
}

#[tokio::test]
async fn audit_mode_annotates_what_enforce_would_do_and_never_touches_host_users() {
    let state = world();
    let enabled = with_volume(pod("web"), claim_volume("data", "data"));
    let (_, after) = admit(&state, audit(), "app", &enabled).await;
    assert_eq!(after["spec"].get("hostUsers"), None);
    assert_eq!(annotation(&after, DECISION), Some("audit"));
    assert_eq!(
        annotation(&after, REASON),
        Some(
            "enforce mode would set spec.hostUsers: false; \
             no host namespaces or devices, and its one volume supports idmap mounts"
        )
    );

    let skipped = skipped_pod("host-pid");
    let (_, after) = admit(&state, audit(), "app", &skipped).await;
    assert_eq!(after["spec"].get("hostUsers"), None);
    assert_eq!(annotation(&after, DECISION), Some("audit"));
    assert!(
        annotation(&after, REASON)
            .unwrap()
            .starts_with("enforce mode would leave the pod as written; HostPID: "),
        "{after}"
    );
    assert_eq!(state.metrics.admissions(Outcome::Audit), 2);
    assert_eq!(state.metrics.blockers(BlockerCode::HostPid), 1);
}

#[tokio::test]
async fn a_pod_opt_out_label_leaves_the_pod_untouched() {
    let state = world();
    let mut pod = with_volume(pod("web"), claim_volume("data", "data"));
    pod["metadata"]["labels"] = json!({"userns.io/opt-out": "true"});
    let (answer, _) = admit(&state, enforce(), "app", &pod).await;
    assert!(answer.patch.is_none(), "opted out: no patch at all");
    assert_eq!(state.metrics.admissions(Outcome::OptOut), 1);

    // Any other value is not an opt-out.
    pod["metadata"]["labels"] = json!({"userns.io/opt-out": "yes"});
    let (_, after) = admit(&state, enforce(), "app", &pod).await;
    assert_eq!(after["spec"]["hostUsers"], json!(false));
}

#[tokio::test]
async fn a_namespace_opt_out_label_leaves_the_pod_untouched() {
    let state = world();
    let pod = with_volume(pod("web"), claim_volume("data", "data"));
    let (answer, _) = admit(&state, enforce(), "quiet", &pod).await;
    assert!(answer.patch.is_none());
    let (answer, _) = admit(&state, audit(), "quiet", &pod).await;
    assert!(answer.patch.is_none(), "audit mode honours the opt-out too");
    assert_eq!(state.metrics.admissions(Outcome::OptOut), 2);
}

#[tokio::test]
async fn a_custom_prefix_moves_the_annotations_and_the_opt_out() {
    let keys = Keys::new("security.example.com").unwrap();
    let table = userns_labeler::config::TableState::channel(DriverTable::defaults());
    let state = Arc::new(WebhookState {
        caches: storage_world(&keys),
        table,
        keys,
        metrics: WebhookMetrics::default(),
        nodes: Default::default(),
    });
    let (_, after) = admit(&state, enforce(), "app", &pod("web")).await;
    assert_eq!(
        annotation(&after, "security.example.com/decision"),
        Some("enabled")
    );
    assert_eq!(annotation(&after, DECISION), None);
    let (answer, _) = admit(&state, enforce(), "quiet", &pod("web")).await;
    assert!(answer.patch.is_none());
}

#[tokio::test]
async fn a_reinvocation_after_our_own_mutation_changes_nothing() {
    let state = world();
    let (_, first) = admit(&state, enforce(), "app", &pod("web")).await;
    let (answer, second) = admit(&state, enforce(), "app", &first).await;
    assert!(answer.patch.is_none(), "idempotent: {second}");
    assert_eq!(state.metrics.admissions(Outcome::Ignored), 1);
}

#[tokio::test]
async fn a_reinvocation_after_a_later_webhook_added_an_nfs_volume_reverts_host_users() {
    let state = world();
    let (_, first) = admit(&state, enforce(), "app", &pod("web")).await;
    assert_eq!(first["spec"]["hostUsers"], json!(false));
    // What a later webhook did: an NFS claim.
    let changed = with_volume(first, claim_volume("media", "nfs-data"));
    let (answer, after) = admit(&state, enforce(), "app", &changed).await;
    assert!(answer.patch.is_some());
    assert_eq!(
        after["spec"].get("hostUsers"),
        None,
        "our hostUsers: false removed"
    );
    assert_eq!(annotation(&after, DECISION), Some("reverted"));
    let reason = annotation(&after, REASON).unwrap();
    assert!(reason.contains("ClaimNotSupported: "), "{reason}");
    assert_eq!(state.metrics.admissions(Outcome::Reverted), 1);
}

#[tokio::test]
async fn a_reinvocation_after_a_later_webhook_added_host_network_reverts_host_users() {
    let state = world();
    let (_, first) = admit(&state, enforce(), "app", &pod("web")).await;
    let mut changed = first;
    changed["spec"]["hostNetwork"] = json!(true);
    let (_, after) = admit(&state, enforce(), "app", &changed).await;
    assert_eq!(after["spec"].get("hostUsers"), None);
    assert_eq!(
        after["spec"]["hostNetwork"],
        json!(true),
        "nothing else changes"
    );
    assert_eq!(annotation(&after, DECISION), Some("reverted"));
    assert!(
        annotation(&after, REASON)
            .unwrap()
            .contains("HostNetwork: ")
    );
}

#[tokio::test]
async fn a_dry_run_gets_the_same_decision() {
    let state = world();
    let mut review = review("CREATE", "app", &pod("web"));
    review["request"]["dryRun"] = json!(true);
    let answer = post(&state, enforce(), &review).await;
    let after = patched(&review["request"]["object"], &answer.patch.unwrap());
    assert_eq!(after["spec"]["hostUsers"], json!(false));
}

#[rstest]
#[case::update("UPDATE")]
#[case::delete("DELETE")]
#[case::connect("CONNECT")]
#[tokio::test]
async fn other_operations_are_allowed_without_a_patch(#[case] operation: &str) {
    let state = world();
    let mut review = review(operation, "app", &pod("web"));
    if operation == "DELETE" {
        review["request"]["object"] = Value::Null;
    }
    let answer = post(&state, enforce(), &review).await;
    assert!(answer.allowed);
    assert!(answer.patch.is_none());
    assert_eq!(state.metrics.admissions(Outcome::Ignored), 1);
}

#[tokio::test]
async fn a_subresource_create_is_ignored() {
    let state = world();
    let mut review = review("CREATE", "app", &pod("web"));
    review["request"]["subResource"] = json!("binding");
    let answer = post(&state, enforce(), &review).await;
    assert!(answer.allowed && answer.patch.is_none());
}

#[rstest]
#[case::config_map(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}))]
#[case::deployment(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
    "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}}}))]
#[tokio::test]
async fn other_kinds_are_allowed_without_a_patch(#[case] object: Value) {
    let state = world();
    let review = review("CREATE", "app", &object);
    let answer = post(&state, enforce(), &review).await;
    assert!(answer.allowed, "{}", answer.message);
    assert!(answer.patch.is_none());
    assert_eq!(answer.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(state.metrics.admissions(Outcome::Ignored), 1);
}

#[rstest]
#[case::not_json("{ this is not json")]
#[case::empty("")]
#[case::json_array("[1, 2, 3]")]
#[case::a_pod(r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}"#)]
#[case::no_types(r#"{"request": null}"#)]
#[tokio::test]
async fn a_body_that_is_not_an_admission_review_is_a_400(#[case] body: &'static str) {
    let state = world();
    let (status, text) = post_raw(&state, enforce(), body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&text).starts_with("the request body is not an AdmissionReview"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(state.metrics.errors("not_admission_review"), 1);
    assert_eq!(state.metrics.admissions(Outcome::Error), 1);
}

#[tokio::test]
async fn a_review_without_a_request_gets_an_invalid_response() {
    let state = world();
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let answer = post(&state, enforce(), &review).await;
    assert!(!answer.allowed);
    assert_eq!(answer.message, "the AdmissionReview carries no request");
    assert!(answer.patch.is_none());
    assert_eq!(state.metrics.errors("no_request"), 1);
}

#[tokio::test]
async fn a_pod_create_without_an_object_gets_an_invalid_response_with_its_uid() {
    let state = world();
    let mut review = review("CREATE", "app", &pod("web"));
    review["request"]["object"] = Value::Null;
    let answer = post(&state, enforce(), &review).await;
    assert!(!answer.allowed);
    assert_eq!(answer.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(
        answer.message.contains("carries no object"),
        "{}",
        answer.message
    );
    assert_eq!(state.metrics.errors("no_object"), 1);
}

#[tokio::test]
async fn a_pod_that_does_not_decode_is_admitted_unchanged() {
    let state = world();
    let mut review = review("CREATE", "app", &pod("web"));
    review["request"]["object"]["spec"]["containers"] = json!("not a list");
    let answer = post(&state, enforce(), &review).await;
    assert!(
        answer.allowed,
        "fail safe: never block a pod we cannot read"
    );
    assert!(answer.patch.is_none());
    assert_eq!(state.metrics.errors("pod_undecodable"), 1);
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_parsing() {
    let state = world();
    let body = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, _) = post_raw(&state, enforce(), body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(state.metrics.errors("body_too_large"), 1);
}

#[tokio::test]
async fn other_methods_and_paths_are_refused() {
    let state = world();
    let get = Request::get(MUTATE_PODS_PATH).body(Body::empty()).unwrap();
    let response = router(state.clone(), enforce()).oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let elsewhere = Request::post("/validate").body(Body::from("{}")).unwrap();
    let response = router(state, enforce()).oneshot(elsewhere).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_namespace_missing_from_the_cache_leaves_the_pod_unchanged() {
    let state = world();
    let (answer, _) = admit(&state, enforce(), "elsewhere", &pod("web")).await;
    assert!(answer.patch.is_none());
    assert_eq!(state.metrics.errors("namespace_not_cached"), 1);
}

#[tokio::test]
async fn unsynced_caches_leave_the_pod_unchanged() {
    let world = storage_world(&Keys::default());
    let unsynced = userns_labeler::cache::Caches {
        claims: Writer::default().as_reader(),
        ..world
    };
    let state = state(unsynced);
    let (answer, _) = admit(&state, enforce(), "app", &pod("web")).await;
    assert!(answer.patch.is_none());
    assert_eq!(state.metrics.errors("caches_not_synced"), 1);
}

/// A claim created a moment before its pod reaches the cache while the admission waits.
#[tokio::test]
async fn a_claim_arriving_during_the_cache_wait_is_seen() {
    let world = storage_world(&Keys::default());
    let mut writer = Writer::default();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    let state = state(userns_labeler::cache::Caches {
        claims: writer.as_reader(),
        ..world
    });
    let settings = AdmissionSettings {
        mode: Mode::Enforce,
        cache_wait: Duration::from_secs(5),
        ..AdmissionSettings::default()
    };
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The caches hold claims pruned, as their watch decodes them.
        writer.apply_watcher_event(&Event::Apply(PrunedClaim::from(&claim(
            "app",
            "fresh",
            "longhorn",
            &["ReadWriteOnce"],
            false,
        ))));
        writer
    });
    let pod = with_volume(pod("sts-0"), claim_volume("data", "fresh"));
    let started = std::time::Instant::now();
    let (_, after) = admit(&state, settings, "app", &pod).await;
    assert_eq!(after["spec"]["hostUsers"], json!(false), "{after}");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(state.metrics.cache_waits(true), 1);
    let _writer = late.await.unwrap();
}

/// A claim that never shows up blocks after the bounded wait (fail closed).
#[tokio::test]
async fn a_claim_that_never_arrives_blocks_after_the_wait() {
    let state = world();
    let settings = AdmissionSettings {
        mode: Mode::Enforce,
        cache_wait: Duration::from_millis(200),
        ..AdmissionSettings::default()
    };
    let pod = with_volume(pod("web"), claim_volume("data", "never"));
    let started = std::time::Instant::now();
    let (_, after) = admit(&state, settings, "app", &pod).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(annotation(&after, DECISION), Some("skipped"));
    assert!(
        annotation(&after, REASON)
            .unwrap()
            .starts_with("ClaimNotFound: ")
    );
    assert_eq!(state.metrics.cache_waits(false), 1);
}
