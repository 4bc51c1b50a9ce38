//! The pure part of the webhook: one admission request and the current caches in, one
//! AdmissionResponse (with its JSON Patch) out. No I/O, no clock, no API calls.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};

use super::metrics::Outcome;
use super::{Mode, WebhookState};
use crate::capability::{BlockerCode, PodDecision, decide_pod};
use crate::keys::Keys;

/// Values of the `<prefix>/decision` annotation.
pub const DECISION_ENABLED: &str = "enabled";
pub const DECISION_SKIPPED: &str = "skipped";
pub const DECISION_AUDIT: &str = "audit";

/// The result of one admission: the response to send, and what to count.
#[derive(Clone, Debug)]
pub struct Admission {
    pub response: AdmissionResponse,
    pub outcome: Outcome,
    /// The codes that blocked the pod (empty unless skipped, or audited as skipped).
    pub blockers: Vec<BlockerCode>,
    /// Error category (a fixed string) when `outcome` is `Error`.
    pub error: Option<&'static str>,
    /// The answer depends on an object the caches do not hold yet (a claim or the namespace).
    /// The handler retries for a bounded time, so that a claim created a moment before its pod
    /// is seen; if the object never shows up this answer stands.
    pub cache_miss: bool,
}

impl Admission {
    fn new(response: AdmissionResponse, outcome: Outcome) -> Admission {
        Admission {
            response,
            outcome,
            blockers: Vec::new(),
            error: None,
            cache_miss: false,
        }
    }

    /// Allowed, no patch: not a request this webhook acts on.
    pub(crate) fn ignored(response: AdmissionResponse) -> Admission {
        Admission::new(response, Outcome::Ignored)
    }

    /// Allowed, no patch, counted as an error of `category`: the fail-safe answer.
    pub(crate) fn fail_safe(response: AdmissionResponse, category: &'static str) -> Admission {
        Admission {
            error: Some(category),
            ..Admission::new(response, Outcome::Error)
        }
    }

    /// A response rejecting a request that cannot be acted on.
    pub(crate) fn invalid(uid: Option<&str>, category: &'static str, message: &str) -> Admission {
        let mut response = AdmissionResponse::invalid(message);
        if let Some(uid) = uid {
            response.uid = uid.to_string();
        }
        Admission {
            error: Some(category),
            ..Admission::new(response, Outcome::Error)
        }
    }
}

/// Is this request one the webhook acts on: CREATE of a core/v1 Pod (not a subresource)?
pub fn is_pod_create<K: kube::Resource>(request: &AdmissionRequest<K>) -> bool {
    request.operation == Operation::Create
        && request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.sub_resource.as_deref().is_none_or(str::is_empty)
}

/// Decides one admission request from the caches and the current driver table.
///
/// - not a pod CREATE: allowed, no patch (`ignored`);
/// - a pod CREATE without an object or namespace: an invalid-request response (`error`);
/// - caches not yet synced, or the namespace not in them: allowed, no patch (`error`, and
///   `cache_miss` so the handler waits for the caches first);
/// - pod or namespace label `<prefix>/opt-out: "true"`: allowed, no patch (`opt_out`);
/// - a pod this webhook already enabled (a reinvocation): allowed, no patch (`ignored`);
/// - otherwise the capability engine decides, and the patch sets the decision annotations, plus
///   `spec.hostUsers: false` in enforce mode when nothing blocks.
pub fn mutate(request: &AdmissionRequest<Pod>, state: &WebhookState, mode: Mode) -> Admission {
    let allowed = AdmissionResponse::from(request);
    if !is_pod_create(request) {
        return Admission::new(allowed, Outcome::Ignored);
    }
    let Some(pod) = &request.object else {
        return Admission::invalid(
            Some(&request.uid),
            "no_object",
            "the AdmissionReview request for a pod CREATE carries no object",
        );
    };
    let Some(namespace) = request
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .filter(|ns| !ns.is_empty())
    else {
        return Admission::invalid(
            Some(&request.uid),
            "no_namespace",
            "the AdmissionReview request for a pod CREATE names no namespace",
        );
    };
    if !state.caches_synced() {
        return Admission {
            cache_miss: true,
            ..Admission::fail_safe(allowed, "caches_not_synced")
        };
    }
    let Some(namespace_labels) = state.caches.namespace_labels(namespace) else {
        // A pod's namespace exists before the pod: the watch has not delivered it yet. Without
        // it the namespace opt-out cannot be checked, so the pod is left alone.
        return Admission {
            cache_miss: true,
            ..Admission::fail_safe(allowed, "namespace_not_cached")
        };
    };
    if opted_out(pod.metadata.labels.as_ref(), &state.keys)
        || opted_out(Some(&namespace_labels), &state.keys)
    {
        return Admission::new(allowed, Outcome::OptOut);
    }
    if already_enabled(pod, &state.keys) {
        return Admission::new(allowed, Outcome::Ignored);
    }

    let table = state.table.borrow().clone();
    let decision = decide_pod(pod, namespace, &state.caches, &table, &state.keys);
    let cache_miss = decision
        .blockers
        .iter()
        .any(|b| b.code == BlockerCode::ClaimNotFound);
    let (outcome, value, reason, set_host_users) = match (mode, decision.mutate()) {
        (Mode::Enforce, true) => (Outcome::Enabled, DECISION_ENABLED, decision.summary(), true),
        (Mode::Enforce, false) => (
            Outcome::Skipped,
            DECISION_SKIPPED,
            decision.summary(),
            false,
        ),
        (Mode::Audit, _) => (
            Outcome::Audit,
            DECISION_AUDIT,
            audit_reason(&decision),
            false,
        ),
    };
    let patch = decision_patch(pod, &state.keys, value, reason, set_host_users);
    match allowed.with_patch(patch) {
        Ok(response) => Admission {
            response,
            outcome,
            blockers: decision.blockers.iter().map(|b| b.code).collect(),
            error: None,
            cache_miss,
        },
        Err(_) => Admission::fail_safe(AdmissionResponse::from(request), "patch_serialization"),
    }
}

/// The decision-reason text in audit mode: what enforce mode would do, and why.
pub fn audit_reason(decision: &PodDecision) -> String {
    let summary = decision.summary();
    if decision.mutate() {
        format!("enforce mode would set spec.hostUsers: false; {summary}")
    } else {
        format!("enforce mode would leave the pod as written; {summary}")
    }
}

fn opted_out(labels: Option<&BTreeMap<String, String>>, keys: &Keys) -> bool {
    labels
        .and_then(|l| l.get(&keys.opt_out))
        .is_some_and(|v| v == "true")
}

/// `hostUsers: false` together with our `enabled` annotation: this webhook already mutated the
/// pod (the API server reinvokes webhooks when a later one changed the pod). Deciding again
/// would see `hostUsers` set and turn the annotation into `skipped`.
fn already_enabled(pod: &Pod, keys: &Keys) -> bool {
    pod.spec.as_ref().and_then(|s| s.host_users) == Some(false)
        && pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&keys.decision))
            .is_some_and(|v| v == DECISION_ENABLED)
}

/// The JSON Patch: the two annotations (creating `/metadata/annotations` when the pod has none)
/// and, when asked, `spec.hostUsers: false`. `add` replaces a value already present.
pub fn decision_patch(
    pod: &Pod,
    keys: &Keys,
    decision: &str,
    reason: String,
    set_host_users: bool,
) -> Patch {
    let add = |tokens: &[&str], value: Value| {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        })
    };
    let mut ops = Vec::with_capacity(3);
    if pod.metadata.annotations.is_some() {
        ops.push(add(
            &["metadata", "annotations", &keys.decision],
            json!(decision),
        ));
        ops.push(add(
            &["metadata", "annotations", &keys.decision_reason],
            json!(reason),
        ));
    } else {
        let mut map = serde_json::Map::new();
        map.insert(keys.decision.clone(), json!(decision));
        map.insert(keys.decision_reason.clone(), json!(reason));
        ops.push(add(&["metadata", "annotations"], Value::Object(map)));
    }
    if set_host_users {
        ops.push(add(&["spec", "hostUsers"], json!(false)));
    }
    Patch(ops)
}
