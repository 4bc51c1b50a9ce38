//! The two AdmissionReview decoders agree: whenever both the fast decoder
//! (`webhook::lean::decode_pod_create`) and kube's full typed decoder (`AdmissionReview<Pod>`)
//! decode a body, the fast one gives exactly what the webhook takes from the full decode
//! (`PodCreate::of`), the same decision and the same admission in both modes, with the default
//! and a custom key prefix — as `assert_equivalent` in `src/webhook/lean_tests.rs`.
//!
//! The documented difference (`src/webhook/lean.rs`): a member the decision never reads is
//! only checked to be JSON by the fast decoder, so it may decode a body the full decoder
//! rejects. Those bodies, and the ones only the full decoder reads, are still decided (nothing
//! may panic), but not compared.
#![no_main]

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use libfuzzer_sys::fuzz_target;
use userns_labeler::capability::decide_pod;
use userns_labeler::capability::pod::decide;
use userns_labeler::webhook::admission::is_pod_create;
use userns_labeler::webhook::lean::decode_pod_create;
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

fn assert_same_admission(fast: &Admission, full: &Admission, context: &str) {
    assert_eq!(fast.response, full.response, "{context}");
    assert_eq!(fast.response.patch, full.response.patch, "{context}");
    assert_eq!(fast.outcome, full.outcome, "{context}");
    assert_eq!(fast.blockers, full.blockers, "{context}");
    assert_eq!(fast.error, full.error, "{context}");
    assert_eq!(fast.cache_miss, full.cache_miss, "{context}");
}

fn check(body: &[u8], state: &WebhookState) {
    let fast = decode_pod_create(body, &state.keys);
    let full = full_decode(body);
    match (&fast, &full) {
        (Some(fast), Some(full)) => {
            let context = String::from_utf8_lossy(body);
            assert!(
                is_pod_create(full),
                "the fast path took a review that is no pod CREATE: {context}"
            );
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

fuzz_target!(|body: &[u8]| {
    for state in STATES.iter() {
        check(body, state);
    }
});
