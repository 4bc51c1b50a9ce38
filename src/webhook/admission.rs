//! The pure part of the webhook: one admission request and the current caches in, one
//! AdmissionResponse (with its JSON Patch) out. No I/O, no clock, no API calls.

use std::borrow::Cow;
use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use kube::core::{Status, TypeMeta};
use serde_json::{Value, json};

use super::metrics::Outcome;
use super::{Mode, WebhookState};
use crate::capability::pod::{PodFacts, decide};
use crate::capability::{Awaited, BlockerCode, PodDecision};
use crate::config::TableState;
use crate::keys::{self, Keys};

/// Values of the `<prefix>/decision` annotation (defined once, in [`crate::keys::decision`]).
pub const DECISION_ENABLED: &str = keys::decision::ENABLED;
pub const DECISION_SKIPPED: &str = keys::decision::SKIPPED;
pub const DECISION_AUDIT: &str = keys::decision::AUDIT;
/// A reinvocation found a pod we enabled no longer safe (a later webhook changed it): our
/// `hostUsers: false` was removed.
pub const DECISION_REVERTED: &str = keys::decision::REVERTED;

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
    /// What was missing from the caches (empty with `cache_miss` while they have not synced):
    /// the handler waits for these, and decides again once they are all there.
    pub awaited: Vec<Awaited>,
}

impl Admission {
    fn new(response: AdmissionResponse, outcome: Outcome) -> Admission {
        Admission {
            response,
            outcome,
            blockers: Vec::new(),
            error: None,
            cache_miss: false,
            awaited: Vec::new(),
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

/// A pod CREATE as the webhook reads it: the request fields it answers with or logs, the pod
/// metadata it checks, and the [`PodFacts`] the capability engine decides on. Made from a fully
/// decoded request by [`PodCreate::of`], or straight from the JSON by the fast decoder
/// ([`super::lean`]); both must give equal values (tested).
#[derive(Clone, Debug, PartialEq)]
pub struct PodCreate<'a> {
    /// The review's `apiVersion` and `kind`, echoed in the response.
    pub api_version: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub uid: Cow<'a, str>,
    /// `request.name` (empty when the pod has only a `generateName`).
    pub name: Cow<'a, str>,
    /// `request.namespace`.
    pub namespace: Option<Cow<'a, str>>,
    pub meta: PodMeta<'a>,
    pub facts: PodFacts<'a>,
}

/// The pod metadata the webhook reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodMeta<'a> {
    pub namespace: Option<Cow<'a, str>>,
    pub generate_name: Option<Cow<'a, str>>,
    /// The value of the opt-out label, when the pod has it.
    pub opt_out: Option<Cow<'a, str>>,
    /// `metadata.annotations` is present: the patch adds to it rather than creating it.
    pub has_annotations: bool,
    /// The value of the decision annotation, when the pod has it.
    pub decision: Option<Cow<'a, str>>,
}

impl<'a> PodCreate<'a> {
    /// The pod CREATE of a decoded request, borrowing from it.
    pub fn of(request: &'a AdmissionRequest<Pod>, pod: &'a Pod, keys: &Keys) -> PodCreate<'a> {
        let meta = &pod.metadata;
        let value = |map: &'a Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key))
                .map(|v| Cow::Borrowed(v.as_str()))
        };
        let borrow = |s: &'a Option<String>| s.as_deref().map(Cow::Borrowed);
        PodCreate {
            api_version: Cow::Borrowed(&request.types.api_version),
            kind: Cow::Borrowed(&request.types.kind),
            uid: Cow::Borrowed(&request.uid),
            name: Cow::Borrowed(&request.name),
            namespace: borrow(&request.namespace),
            meta: PodMeta {
                namespace: borrow(&meta.namespace),
                generate_name: borrow(&meta.generate_name),
                opt_out: value(&meta.labels, &keys.opt_out),
                has_annotations: meta.annotations.is_some(),
                decision: value(&meta.annotations, &keys.decision),
            },
            facts: PodFacts::of(pod),
        }
    }

    /// The answer allowing the request unchanged.
    pub fn allowed(&self) -> AdmissionResponse {
        allowed_response(&self.api_version, &self.kind, &self.uid)
    }

    /// The namespace the pod is created in: the request's, else the pod's own.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace
            .as_deref()
            .or(self.meta.namespace.as_deref())
            .filter(|ns| !ns.is_empty())
    }
}

/// The answer allowing a request unchanged, from the review's `apiVersion` and `kind` and the
/// request's `uid`: kube's `From<&AdmissionRequest>` made from the fields it copies (kube's
/// constructors start from a request, or deny).
pub fn allowed_response(api_version: &str, kind: &str, uid: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid("");
    response.types = TypeMeta {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
    };
    response.uid = uid.to_string();
    response.allowed = true;
    response.result = Status::default();
    response
}

/// Decides one admission request from the caches and the current driver table.
///
/// - not a pod CREATE: allowed, no patch (`ignored`);
/// - a pod CREATE without an object or namespace: an invalid-request response (`error`);
/// - otherwise as [`mutate_pod`].
pub fn mutate(request: &AdmissionRequest<Pod>, state: &WebhookState, mode: Mode) -> Admission {
    if !is_pod_create(request) {
        return Admission::new(AdmissionResponse::from(request), Outcome::Ignored);
    }
    let Some(pod) = &request.object else {
        return Admission::invalid(
            Some(&request.uid),
            "no_object",
            "the AdmissionReview request for a pod CREATE carries no object",
        );
    };
    mutate_pod(&PodCreate::of(request, pod, &state.keys), state, mode)
}

/// Decides one pod CREATE:
/// - no namespace: an invalid-request response (`error`);
/// - caches not yet synced, or the namespace not in them: allowed, no patch (`error`, and
///   `cache_miss` so the handler waits for the caches first);
/// - pod or namespace label `<prefix>/opt-out: "true"`: allowed, no patch (`opt_out`);
/// - a pod this webhook already enabled (a reinvocation): decided again; still safe: allowed, no
///   patch (`ignored`); no longer safe: `hostUsers` removed, `decision: reverted` (`reverted`);
/// - otherwise the capability engine decides, and the patch sets the decision annotations, plus
///   `spec.hostUsers: false` in enforce mode when nothing blocks.
pub fn mutate_pod(pod: &PodCreate<'_>, state: &WebhookState, mode: Mode) -> Admission {
    let Some(namespace) = pod.namespace() else {
        return Admission::invalid(
            Some(&pod.uid),
            "no_namespace",
            "the AdmissionReview request for a pod CREATE names no namespace",
        );
    };
    let allowed = pod.allowed();
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
            awaited: vec![Awaited::Namespace(namespace.to_string())],
            ..Admission::fail_safe(allowed, "namespace_not_cached")
        };
    };
    if pod.meta.opt_out.as_deref() == Some("true")
        || namespace_labels
            .get(&state.keys.opt_out)
            .map(String::as_str)
            == Some("true")
    {
        return Admission::new(allowed, Outcome::OptOut);
    }
    if already_enabled(pod) {
        return reinvoked(pod, namespace, state, allowed);
    }

    let Some(mut decision) = decide_with_table(&pod.facts, namespace, state) else {
        // Before the driver ConfigMap is read nothing can be judged: the pod stays as written.
        return Admission::fail_safe(allowed, "table_not_loaded");
    };
    let require_node = crate::nodes::gate_decision(&mut decision, &pod.facts, state);
    let cache_miss = waits_for_caches(&decision);
    let (outcome, value, reason, set_host_users) = match (mode, decision.mutate()) {
        (Mode::Enforce, true) => (
            Outcome::Enabled,
            DECISION_ENABLED,
            crate::nodes::with_node_requirement(decision.summary(), require_node, &state.keys),
            true,
        ),
        (Mode::Enforce, false) => (
            Outcome::Skipped,
            DECISION_SKIPPED,
            decision.summary(),
            false,
        ),
        (Mode::Audit, _) => (
            Outcome::Audit,
            DECISION_AUDIT,
            crate::nodes::with_node_requirement(
                audit_reason(&decision),
                require_node && decision.mutate(),
                &state.keys,
            ),
            false,
        ),
    };
    let mut patch = decision_patch(
        pod.meta.has_annotations,
        &state.keys,
        value,
        reason,
        set_host_users,
    );
    if set_host_users && require_node {
        patch
            .0
            .extend(crate::nodes::affinity_patch(&pod.facts, &state.keys));
    }
    match allowed.with_patch(patch) {
        Ok(response) => Admission {
            response,
            outcome,
            blockers: decision.blockers.iter().map(|b| b.code).collect(),
            error: None,
            cache_miss,
            awaited: decision.awaited,
        },
        Err(_) => Admission::fail_safe(pod.allowed(), "patch_serialization"),
    }
}

/// The engine's decision under the table in force; `None` while no table is loaded. With no
/// usable table every pod fails closed, and says why.
fn decide_with_table(
    facts: &PodFacts<'_>,
    namespace: &str,
    state: &WebhookState,
) -> Option<PodDecision> {
    let table = state.table.borrow().clone();
    match &table {
        TableState::InForce(table) => {
            let view = crate::nodes::WithHostPaths::new(&state.caches, &state.nodes);
            Some(decide(facts, namespace, &view, table, &state.keys))
        }
        TableState::Unusable(reason) => Some(PodDecision::blocked(
            BlockerCode::DriverTableInvalid,
            format!("no usable driver table, so no pod is enabled: {reason}"),
        )),
        TableState::Loading => None,
    }
}

/// Whether a blocker may go away once the caches catch up (a claim or its PV just created).
fn waits_for_caches(decision: &PodDecision) -> bool {
    decision.blockers.iter().any(|b| {
        matches!(
            b.code,
            BlockerCode::ClaimNotFound | BlockerCode::ClaimVolumeNotFound
        )
    })
}

/// A reinvocation of a pod we enabled: a later webhook may have added a host namespace, a
/// privileged container or a volume. Decided again as if `hostUsers` were not set (we set it);
/// still safe: no patch; no longer safe (or no table to judge by): our `hostUsers: false` is
/// removed, so the API server neither rejects the pod nor the node fails it, and the pod says
/// why (`decision: reverted`).
fn reinvoked(
    pod: &PodCreate<'_>,
    namespace: &str,
    state: &WebhookState,
    allowed: AdmissionResponse,
) -> Admission {
    let mut facts = pod.facts.clone();
    if let Some(spec) = facts.spec.as_mut() {
        spec.host_users = None;
    }
    let decision = decide_with_table(&facts, namespace, state).unwrap_or_else(|| {
        PodDecision::blocked(
            BlockerCode::DriverTableInvalid,
            "the driver table is not loaded on this replica, so the pod cannot be judged again",
        )
    });
    if decision.mutate() {
        return Admission::new(allowed, Outcome::Ignored);
    }
    let reason = format!(
        "changed after this webhook enabled it; {}",
        decision.summary()
    );
    let mut patch = decision_patch(true, &state.keys, DECISION_REVERTED, reason, false);
    patch.0.push(PatchOperation::Remove(RemoveOperation {
        path: PointerBuf::from_tokens(["spec", "hostUsers"]),
    }));
    match allowed.with_patch(patch) {
        Ok(response) => Admission {
            response,
            outcome: Outcome::Reverted,
            blockers: decision.blockers.iter().map(|b| b.code).collect(),
            error: None,
            cache_miss: waits_for_caches(&decision),
            awaited: decision.awaited,
        },
        Err(_) => Admission::fail_safe(pod.allowed(), "patch_serialization"),
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

/// `hostUsers: false` together with our `enabled` annotation: this webhook already mutated the
/// pod (the API server reinvokes webhooks when a later one changed the pod). Deciding again
/// would see `hostUsers` set and turn the annotation into `skipped`.
fn already_enabled(pod: &PodCreate<'_>) -> bool {
    pod.facts.spec.as_ref().and_then(|s| s.host_users) == Some(false)
        && pod.meta.decision.as_deref() == Some(DECISION_ENABLED)
}

/// The JSON Patch: the two annotations (creating `/metadata/annotations` when the pod has none,
/// `has_annotations` false)
/// and, when asked, `spec.hostUsers: false`. `add` replaces a value already present.
pub fn decision_patch(
    has_annotations: bool,
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
    if has_annotations {
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
