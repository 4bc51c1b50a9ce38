//! The whole handler (`webhook::router`, `POST /mutate/pods`) on arbitrary bodies: it never
//! panics (a panic caught inside the handler aborts the fuzzer too), and answers 400 or an
//! AdmissionReview carrying a response (with a base64 JSON Patch, if any).
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;
use userns_labeler::keys::Keys;
use userns_labeler::webhook::{AdmissionSettings, MUTATE_PODS_PATH, Mode, router};

struct Harness {
    runtime: tokio::runtime::Runtime,
    routers: Vec<Router>,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let mut routers = Vec::new();
    for mode in [Mode::Enforce, Mode::Audit] {
        let state = Arc::new(userns_labeler_fuzz::state(Keys::default()));
        // No wait for the caches: a missing claim is answered at once.
        let settings = AdmissionSettings {
            mode,
            cache_wait: Duration::ZERO,
            ..AdmissionSettings::default()
        };
        routers.push(router(state, settings));
    }
    Harness { runtime, routers }
});

/// A 200 answer: an AdmissionReview whose response has a uid, `allowed`, and a patch (if any)
/// that is a base64 JSON Patch.
fn check_review(answer: &[u8]) {
    let context = String::from_utf8_lossy(answer);
    let review: Value = serde_json::from_slice(answer)
        .unwrap_or_else(|e| panic!("200 without JSON ({e}): {context}"));
    assert_eq!(review["kind"], "AdmissionReview", "{context}");
    assert!(
        review["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("admission.k8s.io/")),
        "{context}"
    );
    let response = &review["response"];
    assert!(response["uid"].is_string(), "{context}");
    assert!(response["allowed"].is_boolean(), "{context}");
    if let Some(patch) = response.get("patch") {
        assert_eq!(response["patchType"], "JSONPatch", "{context}");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(patch.as_str().expect("a base64 string"))
            .unwrap_or_else(|e| panic!("the patch is not base64 ({e}): {context}"));
        let operations: Vec<Value> = serde_json::from_slice(&patch)
            .unwrap_or_else(|e| panic!("the patch is no JSON Patch ({e}): {context}"));
        assert!(!operations.is_empty(), "{context}");
    }
}

fuzz_target!(|body: &[u8]| {
    let harness = &*HARNESS;
    for router in &harness.routers {
        let request = Request::post(MUTATE_PODS_PATH)
            .header("content-type", "application/json")
            .body(Body::from(body.to_vec()))
            .expect("a request");
        let (status, answer) = harness.runtime.block_on(async {
            let response = router.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            (status, bytes)
        });
        match status {
            StatusCode::OK => check_review(&answer),
            StatusCode::BAD_REQUEST => {}
            other => panic!("unexpected status {other}: {answer:?}"),
        }
    }
});
