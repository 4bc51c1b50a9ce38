//! Unit tests of the pure admission function and the patch; the router is tested through
//! `oneshot` in `tests/webhook_router.rs`.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use proptest::prelude::*;
use serde_json::{Value, json};
use userns_labeler_test_support::fixtures::{claim, class};

use super::admission::{decision_patch, mutate};
use super::*;
use crate::cache::Caches;
use crate::capability::{BlockerCode, DriverTable};

fn namespace(name: &str) -> kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> {
    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
}

fn state() -> WebhookState {
    let table = crate::config::TableState::channel(DriverTable::defaults());
    WebhookState {
        caches: Caches::from_objects(
            vec![
                claim("app", "rwo").class("longhorn").build(),
                claim("app", "rwx")
                    .class("longhorn")
                    .modes(&["ReadWriteMany"])
                    .build(),
            ],
            vec![],
            vec![class("longhorn", "driver.longhorn.io").build()],
            vec![namespace("app")],
        ),
        table,
        keys: Keys::default(),
        metrics: WebhookMetrics::default(),
        nodes: Default::default(),
    }
}

fn request(pod: &Value) -> AdmissionRequest<Pod> {
    let review: AdmissionReview<Pod> = serde_json::from_value(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "p",
            "namespace": "app",
            "operation": "CREATE",
            "userInfo": {},
            "object": pod,
        }
    }))
    .unwrap();
    review.try_into().unwrap()
}

fn apply(pod: &Value, admission: &Admission) -> Value {
    let mut after = pod.clone();
    if let Some(bytes) = &admission.response.patch {
        let patch: json_patch::Patch = serde_json::from_slice(bytes).unwrap();
        json_patch::patch(&mut after, &patch).unwrap();
    }
    after
}

#[test]
fn the_patch_creates_the_annotation_map_when_absent() {
    let patch = decision_patch(false, &Keys::default(), "enabled", "why".into(), true);
    assert_eq!(
        serde_json::to_value(&patch).unwrap(),
        json!([
            {"op": "add", "path": "/metadata/annotations",
             "value": {"userns.io/decision": "enabled", "userns.io/decision-reason": "why"}},
            {"op": "add", "path": "/spec/hostUsers", "value": false},
        ])
    );
}

#[test]
fn a_null_annotation_map_is_replaced() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": null},
        "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let admission = mutate(&request(&pod), &state(), Mode::Enforce);
    let after = apply(&pod, &admission);
    assert_eq!(
        after["metadata"]["annotations"]["userns.io/decision"],
        "enabled"
    );
    assert_eq!(after["spec"]["hostUsers"], false);
}

#[test]
fn skipped_and_audit_never_set_host_users() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "x"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "rwx"}}]}});
    let state = state();
    let skipped = mutate(&request(&pod), &state, Mode::Enforce);
    assert_eq!(skipped.outcome, Outcome::Skipped);
    assert_eq!(skipped.blockers, vec![BlockerCode::ClaimNotSupported]);
    assert!(!skipped.cache_miss);
    assert_eq!(apply(&pod, &skipped)["spec"].get("hostUsers"), None);

    let enabled_pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "x"}]}});
    let audited = mutate(&request(&enabled_pod), &state, Mode::Audit);
    assert_eq!(audited.outcome, Outcome::Audit);
    assert_eq!(apply(&enabled_pod, &audited)["spec"].get("hostUsers"), None);
}

#[test]
fn a_missing_claim_is_a_cache_miss() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "x"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "later"}}]}});
    let admission = mutate(&request(&pod), &state(), Mode::Enforce);
    assert!(admission.cache_miss);
    assert_eq!(admission.outcome, Outcome::Skipped);
    assert_eq!(admission.blockers, vec![BlockerCode::ClaimNotFound]);
}

#[test]
fn registered_metrics_have_bounded_labels() {
    let mut registry = crate::metrics::registry();
    let metrics = WebhookMetrics::register(&mut registry);
    metrics.record(Outcome::Skipped, &[BlockerCode::HostNetwork], None, 0.001);
    metrics.record(Outcome::Error, &[], Some("no_request"), 0.0001);
    metrics.tls_reload(true);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "userns_labeler_webhook_admissions_total{outcome=\"skipped\"} 1",
        "userns_labeler_webhook_admissions_total{outcome=\"enabled\"} 0",
        "userns_labeler_webhook_admission_blockers_total{code=\"HostNetwork\"} 1",
        "userns_labeler_webhook_admission_blockers_total{code=\"ClaimNotFound\"} 0",
        "userns_labeler_webhook_admission_errors_total{category=\"no_request\"} 1",
        "userns_labeler_webhook_admission_duration_seconds_count{outcome=\"skipped\"} 1",
        "userns_labeler_webhook_tls_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

fn arbitrary_pod() -> impl Strategy<Value = Value> {
    let volume = prop_oneof![
        Just(json!({"name": "v", "persistentVolumeClaim": {"claimName": "rwo"}})),
        Just(json!({"name": "v", "persistentVolumeClaim": {"claimName": "rwx"}})),
        Just(json!({"name": "v", "persistentVolumeClaim": {"claimName": "absent"}})),
        Just(json!({"name": "v", "emptyDir": {}})),
        Just(json!({"name": "v", "hostPath": {"path": "/dev/kmsg"}})),
        Just(json!({"name": "v", "nfs": {"server": "nas", "path": "/x"}})),
    ];
    (
        proptest::option::of(any::<bool>()),
        any::<bool>(),
        proptest::option::of(prop::collection::btree_map(
            "[a-z./~]{1,12}",
            "[ -~]{0,8}",
            0..3,
        )),
        proptest::option::of(0i64..200_000),
        prop::collection::vec(volume, 0..4),
    )
        .prop_map(|(host_users, host_network, annotations, uid, volumes)| {
            let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                "spec": {"containers": [{"name": "a", "image": "x"}], "volumes": volumes}});
            if let Some(host_users) = host_users {
                pod["spec"]["hostUsers"] = json!(host_users);
            }
            if host_network {
                pod["spec"]["hostNetwork"] = json!(true);
            }
            if let Some(annotations) = annotations {
                pod["metadata"]["annotations"] = json!(annotations);
            }
            if let Some(uid) = uid {
                pod["spec"]["securityContext"] = json!({"runAsUser": uid});
            }
            pod
        })
}

proptest! {
    /// Whatever the pod, the answer allows it, its patch applies to the original object, and
    /// `hostUsers` changes exactly when the decision is `enabled` — from unset to false.
    #[test]
    fn every_patch_applies_and_only_enabled_sets_host_users(pod in arbitrary_pod(), audit in any::<bool>()) {
        let state = state();
        let mode = if audit { Mode::Audit } else { Mode::Enforce };
        let admission = mutate(&request(&pod), &state, mode);
        prop_assert!(admission.response.allowed);
        let after = apply(&pod, &admission);
        let decision = after["metadata"]["annotations"]["userns.io/decision"].as_str();
        prop_assert!(decision.is_some());
        if decision == Some("enabled") {
            prop_assert_eq!(pod["spec"].get("hostUsers"), None);
            prop_assert_eq!(&after["spec"]["hostUsers"], &json!(false));
        } else {
            prop_assert_eq!(after["spec"].get("hostUsers"), pod["spec"].get("hostUsers"));
        }
        // Only the two annotations and hostUsers may differ.
        let mut expected = after.clone();
        let annotations = expected["metadata"]["annotations"].as_object_mut().unwrap();
        annotations.remove("userns.io/decision");
        annotations.remove("userns.io/decision-reason");
        let mut original = pod.clone();
        if original["metadata"].get("annotations").is_none() {
            original["metadata"]["annotations"] = json!({});
        }
        if decision == Some("enabled") {
            expected["spec"].as_object_mut().unwrap().remove("hostUsers");
        }
        // The original's own values of our two keys are overwritten.
        if let Some(map) = original["metadata"]["annotations"].as_object_mut() {
            map.remove("userns.io/decision");
            map.remove("userns.io/decision-reason");
        }
        prop_assert_eq!(expected, original);
    }
}

#[test]
fn state_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<WebhookState>();
    let _ = Arc::new(state());
}

// ---- nodes and hostPath evidence -----------------------------------------------------------

/// A node as the real kubelet reports it: the default handler with `userNamespaces: true`
/// (or false, as a runtime without support reports).
fn node(name: &str, user_namespaces: bool) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
        "status": {"runtimeHandlers": [{"name": "", "features": {"userNamespaces": user_namespaces}}]}
    }))
    .unwrap()
}

fn state_with_nodes(
    mode: crate::nodes::NodeMode,
    nodes: Vec<k8s_openapi::api::core::v1::Node>,
    host_paths: crate::capability::HostPathEvidence,
) -> WebhookState {
    state().with_nodes(crate::nodes::NodeSignals::from_objects(
        mode, nodes, host_paths,
    ))
}

fn plain_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a", "image": "x"}]}})
}

#[test]
fn any_mode_skips_a_pod_when_no_node_supports_user_namespaces() {
    use crate::nodes::NodeMode;
    let state = state_with_nodes(
        NodeMode::Any,
        vec![node("old-1", false)],
        Default::default(),
    );
    let admission = mutate(&request(&plain_pod()), &state, Mode::Enforce);
    assert_eq!(admission.outcome, Outcome::Skipped);
    assert_eq!(admission.blockers, vec![BlockerCode::NoUserNamespaceNode]);
    let after = apply(&plain_pod(), &admission);
    assert_eq!(after["spec"].get("hostUsers"), None);
    let reason = after["metadata"]["annotations"]["userns.io/decision-reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.starts_with("NoUserNamespaceNode: none of the 1 schedulable Linux node(s)"),
        "{reason}"
    );
    assert!(reason.contains("old-1"), "{reason}");
}

#[test]
fn without_node_objects_or_in_off_mode_nodes_are_not_judged() {
    use crate::nodes::NodeMode;
    let none = state_with_nodes(NodeMode::Affinity, vec![], Default::default());
    let off = state_with_nodes(
        NodeMode::Off,
        vec![node("old-1", false)],
        Default::default(),
    );
    for state in [none, off] {
        let admission = mutate(&request(&plain_pod()), &state, Mode::Enforce);
        assert_eq!(admission.outcome, Outcome::Enabled);
        assert_eq!(
            apply(&plain_pod(), &admission)["spec"].get("affinity"),
            None
        );
    }
}

#[test]
fn affinity_mode_requires_a_supporting_node_when_only_some_support_them() {
    use crate::nodes::NodeMode;
    let state = state_with_nodes(
        NodeMode::Affinity,
        vec![node("new-1", true), node("old-1", false)],
        Default::default(),
    );
    let admission = mutate(&request(&plain_pod()), &state, Mode::Enforce);
    assert_eq!(admission.outcome, Outcome::Enabled);
    let after = apply(&plain_pod(), &admission);
    assert_eq!(after["spec"]["hostUsers"], false);
    assert_eq!(
        after["spec"]["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "userns.io/user-namespaces", "operator": "In", "values": ["true"]}]}]}}})
    );
    let reason = after["metadata"]["annotations"]["userns.io/decision-reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("requires a node labelled userns.io/user-namespaces=true"),
        "{reason}"
    );

    // Audit mode says so and changes nothing.
    let audited = mutate(&request(&plain_pod()), &state, Mode::Audit);
    let after = apply(&plain_pod(), &audited);
    assert_eq!(after["spec"].get("affinity"), None);
    assert!(
        after["metadata"]["annotations"]["userns.io/decision-reason"]
            .as_str()
            .unwrap()
            .contains("requires a node labelled")
    );

    // A skipped pod gets no affinity.
    let mut blocked = plain_pod();
    blocked["spec"]["hostNetwork"] = json!(true);
    let skipped = mutate(&request(&blocked), &state, Mode::Enforce);
    assert_eq!(apply(&blocked, &skipped)["spec"].get("affinity"), None);
}

#[test]
fn a_pod_bound_to_a_node_without_support_is_skipped_naming_it() {
    use crate::nodes::NodeMode;
    let state = state_with_nodes(
        NodeMode::Affinity,
        vec![node("new-1", true), node("old-1", false)],
        Default::default(),
    );
    let mut pod = plain_pod();
    pod["spec"]["nodeName"] = json!("old-1");
    let admission = mutate(&request(&pod), &state, Mode::Enforce);
    assert_eq!(admission.blockers, vec![BlockerCode::NoUserNamespaceNode]);
    pod["spec"]["nodeName"] = json!("new-1");
    let admission = mutate(&request(&pod), &state, Mode::Enforce);
    assert_eq!(admission.outcome, Outcome::Enabled);
    assert_eq!(
        apply(&pod, &admission)["spec"].get("affinity"),
        None,
        "bound: no affinity"
    );
}

#[test]
fn a_host_path_with_evidence_is_skipped_by_the_webhook() {
    use crate::capability::{Evidence, HostPathEvidence, evidence::host_path_key};
    let evidence = Evidence {
        pod: "app/first".into(),
        node: "node-a".into(),
        time: "2026-05-01T10:00:00Z".into(),
        runtime: "runc".into(),
        error: "failed to set MOUNT_ATTR_IDMAP on /mnt/fuse: invalid argument".into(),
        path: Some("/mnt/fuse".into()),
    };
    let records =
        HostPathEvidence::from_data(&[(host_path_key("/mnt/fuse"), evidence.to_json())].into());
    let state = state_with_nodes(crate::nodes::NodeMode::Any, vec![], records);
    let mut pod = plain_pod();
    pod["spec"]["volumes"] = json!([{"name": "f", "hostPath": {"path": "/mnt/fuse"}}]);
    let admission = mutate(&request(&pod), &state, Mode::Enforce);
    assert_eq!(admission.blockers, vec![BlockerCode::VolumeNotSupported]);
    let after = apply(&pod, &admission);
    let reason = after["metadata"]["annotations"]["userns.io/decision-reason"]
        .as_str()
        .unwrap();
    assert!(
        reason.contains("hostPath /mnt/fuse could not be idmap-mounted"),
        "{reason}"
    );
    assert!(reason.contains("pod app/first"), "{reason}");
}
