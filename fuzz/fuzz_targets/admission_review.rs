//! The two AdmissionReview decoders agree: whenever both the fast decoder
//! (`webhook::lean::decode_review`) and kube's full typed decoder (`AdmissionReview<Pod>`)
//! decode a body, the fast one gives exactly what the webhook takes from the full decode
//! (`PodCreate::of`), the same decision and the same admission in both modes, with the default
//! and a custom key prefix — as `assert_equivalent` in `src/webhook/lean_tests.rs`.
//!
//! A review the fast path answers without a decision (`Review::Other`: not a pod CREATE) gets
//! the answer the full decoder's request would get (allowed, unchanged, same `apiVersion`,
//! `kind` and `uid`) whenever the full decoder reads it.
//!
//! Each input is checked twice: as the whole request body, and as the pod of a fixed pod CREATE
//! review (spliced in as `request.object`), so that mutations of a pod's JSON reach both
//! decoders far more often than mutations of a whole review do.
//!
//! The documented difference (`src/webhook/lean.rs`): a member the decision never reads is
//! only checked to be JSON by the fast decoder, so it may decode a body the full decoder
//! rejects, and the object of a review that is no pod CREATE is only checked to be JSON. Those
//! bodies, and the ones only the full decoder reads, are still decided (nothing may panic), but
//! not compared.
#![no_main]

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::{DynamicObject, TypeMeta};
use libfuzzer_sys::fuzz_target;
use userns_labeler::capability::decide_pod;
use userns_labeler::capability::pod::decide;
use userns_labeler::webhook::admission::{allowed_response, is_pod_create};
use userns_labeler::webhook::lean::{Review, decode_review};
use userns_labeler::webhook::{Admission, Mode, PodCreate, WebhookState, mutate, mutate_pod};

static STATES: LazyLock<Vec<WebhookState>> = LazyLock::new(|| {
    userns_labeler_fuzz::all_keys()
        .into_iter()
        .map(userns_labeler_fuzz::state)
        .collect()
});

fn full_decode(body: &[u8]) -> Option<AdmissionRequest<Pod>> {
    let review: AdmissionReview<Pod> = serde_json::from_slice(body).ok()?;
    review.try_into().ok()
}

/// The full decoder as the handler falls back to it for an object that is no pod.
fn dynamic_decode(body: &[u8]) -> Option<AdmissionRequest<DynamicObject>> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).ok()?;
    review.try_into().ok()
}

/// What the handler takes for an AdmissionReview (`is_review_type` in `server.rs`).
fn is_review_type(types: &TypeMeta) -> bool {
    types.kind == "AdmissionReview" && types.api_version.starts_with("admission.k8s.io/")
}

fn assert_same_admission(fast: &Admission, full: &Admission, context: &str) {
    assert_eq!(fast.response, full.response, "{context}");
    assert_eq!(fast.response.patch, full.response.patch, "{context}");
    assert_eq!(fast.outcome, full.outcome, "{context}");
    assert_eq!(fast.blockers, full.blockers, "{context}");
    assert_eq!(fast.error, full.error, "{context}");
    assert_eq!(fast.cache_miss, full.cache_miss, "{context}");
}

fn check(body: &[u8], state: &WebhookState) {
    let context = || String::from_utf8_lossy(body).into_owned();
    let fast = match decode_review(body, &state.keys) {
        Review::PodCreate(pod) => Some(*pod),
        Review::Other(other) => {
            let answer = allowed_response(&other.api_version, &other.kind, &other.uid);
            let full = full_decode(body).map(|r| (is_pod_create(&r), AdmissionResponse::from(&r)));
            let full = full.or_else(|| {
                dynamic_decode(body).map(|r| (is_pod_create(&r), AdmissionResponse::from(&r)))
            });
            if let Some((pod_create, response)) = full {
                let context = context();
                assert!(!pod_create, "answered a pod CREATE undecided: {context}");
                assert!(is_review_type(&response.types), "not a review: {context}");
                assert_eq!(answer, response, "{context}");
            }
            return;
        }
        Review::Declined => None,
    };
    let full = full_decode(body);
    match (&fast, &full) {
        (Some(fast), Some(full)) => {
            let context = context();
            assert!(
                is_pod_create(full),
                "the fast path took a review that is no pod CREATE: {context}"
            );
            assert!(is_review_type(&full.types), "not a review: {context}");
            let full_pod = full
                .object
                .as_ref()
                .unwrap_or_else(|| panic!("the fast path took a review without object: {context}"));
            assert_eq!(
                *fast,
                PodCreate::of(full, full_pod, &state.keys),
                "{context}"
            );
            let namespace = full.namespace.as_deref().unwrap_or("default");
            let table = state.table.borrow().table().cloned().expect("a table");
            let caches = &state.caches;
            assert_eq!(
                decide(&fast.facts, namespace, caches, &table, &state.keys),
                decide_pod(full_pod, namespace, caches, &table, &state.keys),
                "{context}"
            );
            for mode in [Mode::Audit, Mode::Enforce] {
                let fast = mutate_pod(fast, state, mode);
                let full = mutate(full, state, mode);
                assert_same_admission(&fast, &full, &context);
            }
        }
        (Some(fast), None) => {
            for mode in [Mode::Audit, Mode::Enforce] {
                mutate_pod(fast, state, mode);
            }
        }
        (None, Some(full)) => {
            for mode in [Mode::Audit, Mode::Enforce] {
                mutate(full, state, mode);
            }
        }
        (None, None) => {}
    }
}

/// A pod CREATE review with `object` spliced in as its pod.
fn review_of(object: &[u8]) -> Vec<u8> {
    const HEAD: &str = concat!(
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"#,
        r#""uid":"7b0c0a4e-0d3f-4a41-9d1e-3f1d2a6b5c01","#,
        r#""kind":{"group":"","version":"v1","kind":"Pod"},"#,
        r#""resource":{"group":"","version":"v1","resource":"pods"},"#,
        r#""namespace":"app","operation":"CREATE","userInfo":{"username":"u"},"object":"#,
    );
    const TAIL: &str = r#","dryRun":false}}"#;
    [HEAD.as_bytes(), object, TAIL.as_bytes()].concat()
}

fuzz_target!(|body: &[u8]| {
    let spliced = review_of(body);
    for state in STATES.iter() {
        check(body, state);
        check(&spliced, state);
    }
});
