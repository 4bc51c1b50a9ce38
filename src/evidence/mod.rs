//! Self-correction: the node is the ground truth. When a runtime cannot idmap-mount a volume of a
//! pod this webhook enabled, it says so in the kubelet's Warning Event; the leader reads that
//! Event and records the evidence where the next decision looks:
//!
//! - a claim's volume: the claim and its PersistentVolume are labelled `false` with the
//!   annotation `<prefix>/idmap-evidence` (JSON: pod, node, time, runtime, the error's first
//!   line), applied with the other keys by the controller's field manager so later reconciles
//!   keep it; a Warning Event `IdmapMountFailed` on the claim;
//! - an inline hostPath: an entry in the labeler-owned ConfigMap ([`host_paths`]) that the
//!   webhook consults on every replica; a Warning Event on the pod;
//! - the container's root filesystem (containerd's snapshotter error), or a kubelet-managed
//!   volume (emptyDir, projected token, …): the node, labelled
//!   `<prefix>/user-namespaces=false` with the evidence ([`crate::nodes::labeller`]).
//!
//! With `--delete-failed-pods` such a pod is then deleted when a controller owns it, so that its
//! replacement is created — and decided — again. Bare pods are never deleted.
//!
//! The watch ([`run`]) is on `events.k8s.io/v1` (core/v1 Events are the same objects), one per
//! failure reason (`Failed`, `FailedCreatePodSandBox`; field selectors cannot OR), only Warning
//! Events about Pods, and only while this replica may write. Memory stays bounded: Events are
//! handled one at a time as the watch delivers them (its initial list is paged), never cached;
//! a message that is no idmap failure costs no API call; a pod is read with one GET (no pod
//! cache) and remembered by uid in a bounded set, so its repeated Events cost nothing.
//!
//! [`failure`] reads the runtimes' messages, [`attribution`] maps the failing path to the pod's
//! volume; both are pure.

pub mod attribution;
pub mod failure;
pub mod host_paths;
pub mod metrics;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::capability::evidence::{Evidence, HostPathEvidence, MAX_ERROR_BYTES, first_line};
use crate::capability::{PrunedClaim, PrunedVolume};
use crate::controller::Context;
use crate::controller::reconcile::{record_evidence, truncate};
use crate::nodes::labeller::NodeLabeller;
use crate::webhook::admission::DECISION_ENABLED;
use attribution::{Culprit, attribute};
use failure::IdmapFailure;
use host_paths::{Recorded, RecordsConfigMap};
pub use metrics::{EvidenceMetrics, Outcome};

/// The kubelet's Event reasons that carry runtime errors: a container that could not be
/// created or started (`Failed`), and a pod sandbox that could not be.
pub const FAILURE_REASONS: [&str; 2] = ["Failed", "FailedCreatePodSandBox"];

/// How many pods' uids are remembered as handled.
const HANDLED_PODS: usize = 4096;

/// Evidence flags of `userns-labeler run`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvidenceArgs {
    /// Delete a pod that failed to idmap-mount (after recording the evidence) when a
    /// controller owns it, so that its replacement is created and decided again. Bare pods
    /// are never deleted. Needs the RBAC to delete pods.
    #[arg(long, env = "USERNS_DELETE_FAILED_PODS")]
    pub delete_failed_pods: bool,
    /// The labeler-owned ConfigMap (in --namespace) recording inline hostPaths a node could
    /// not idmap-mount.
    #[arg(
        long,
        env = "USERNS_EVIDENCE_CONFIG_MAP",
        default_value = "userns-labeler-idmap-evidence"
    )]
    pub evidence_config_map: String,
}

impl Default for EvidenceArgs {
    fn default() -> Self {
        EvidenceArgs {
            delete_failed_pods: false,
            evidence_config_map: "userns-labeler-idmap-evidence".to_string(),
        }
    }
}

/// Everything the evidence loop needs.
pub struct Learner {
    /// The controller's context: client, caches, keys, write gate, recorder, label writes.
    pub ctx: Arc<Context>,
    pub nodes: Arc<NodeLabeller>,
    pub host_paths: watch::Receiver<Arc<HostPathEvidence>>,
    pub records: RecordsConfigMap,
    pub delete_failed_pods: bool,
    pub metrics: EvidenceMetrics,
    handled: Mutex<RecentPods>,
}

impl Learner {
    pub fn new(
        ctx: Arc<Context>,
        nodes: Arc<NodeLabeller>,
        host_paths: watch::Receiver<Arc<HostPathEvidence>>,
        records: RecordsConfigMap,
        delete_failed_pods: bool,
        metrics: EvidenceMetrics,
    ) -> Learner {
        Learner {
            ctx,
            nodes,
            host_paths,
            records,
            delete_failed_pods,
            metrics,
            handled: Mutex::default(),
        }
    }
}

/// The uids of the pods handled last, at most [`HANDLED_PODS`].
#[derive(Default)]
struct RecentPods {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentPods {
    fn contains(&self, uid: &str) -> bool {
        self.set.contains(uid)
    }

    fn insert(&mut self, uid: String) {
        if uid.is_empty() || !self.set.insert(uid.clone()) {
            return;
        }
        self.order.push_back(uid);
        if self.order.len() > HANDLED_PODS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
    }
}

/// Watches failure Events while this replica may write, until `shutdown`.
pub async fn run(learner: Arc<Learner>, shutdown: CancellationToken) {
    let mut writable = learner.ctx.writable.clone();
    loop {
        while !*writable.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = writable.changed() => if changed.is_err() { return },
            }
        }
        info!("watching pods' failure Events for idmap-mount errors");
        let closed = async {
            while *writable.borrow_and_update() {
                if writable.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = closed => info!("no longer writing: stopped watching failure Events"),
            _ = learner.watch_events() => {}
        }
        // A later leadership lists the Events again; what was handled is handled again.
        *learner.handled.lock().unwrap_or_else(|e| e.into_inner()) = RecentPods::default();
    }
}

impl Learner {
    async fn watch_events(&self) {
        let api: Api<KubeEvent> = Api::all(self.ctx.client.clone());
        let watches = FAILURE_REASONS.map(|reason| {
            let config = watcher::Config::default()
                .fields(&format!("reason={reason},type=Warning,regarding.kind=Pod"));
            watcher(api.clone(), config).default_backoff().boxed()
        });
        let stream = futures::stream::select_all(watches);
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(event) | watcher::Event::InitApply(event)) => {
                    self.handle(&event).await
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "failure Event watch error; retrying with backoff"),
            }
        }
    }

    /// One failure Event: an idmap-mount failure of a pod this webhook enabled becomes
    /// evidence; anything else changes nothing.
    pub async fn handle(&self, event: &KubeEvent) {
        let message = event.note.as_deref().unwrap_or_default();
        let Some(failure) = failure::classify(message) else {
            self.metrics.event("unrelated");
            return;
        };
        self.metrics.event(match failure {
            IdmapFailure::Volume { .. } => "volume_idmap",
            IdmapFailure::Image { .. } => "image_idmap",
        });
        let runtime = failure.runtime().as_str();
        let Some(regarding) = event.regarding.as_ref() else {
            return self.metrics.failure(runtime, Outcome::Unattributed);
        };
        let uid = regarding.uid.clone().unwrap_or_default();
        if self.handled().contains(&uid) {
            return self.metrics.failure(runtime, Outcome::Repeated);
        }
        let (Some(namespace), Some(name)) = (&regarding.namespace, &regarding.name) else {
            return self.metrics.failure(runtime, Outcome::Unattributed);
        };
        let pod = match Api::<Pod>::namespaced(self.ctx.client.clone(), namespace)
            .get_opt(name)
            .await
        {
            Ok(pod) => pod.filter(|p| uid.is_empty() || p.metadata.uid.as_deref() == Some(&uid)),
            Err(e) => {
                // Not remembered: a later Event of the same pod tries again.
                return warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not read the failed pod");
            }
        };
        let Some(pod) = pod else {
            self.handled().insert(uid);
            return self.metrics.failure(runtime, Outcome::PodGone);
        };
        if !self.enabled_by_us(&pod) {
            self.handled().insert(uid);
            return self.metrics.failure(runtime, Outcome::NotEnabled);
        }
        let evidence = Evidence {
            pod: format!("{namespace}/{name}"),
            node: node_of(&pod, event),
            time: time_of(event),
            runtime: runtime.to_string(),
            error: first_line(message, MAX_ERROR_BYTES),
            path: None,
        };
        let container = regarding.field_path.as_deref().and_then(container_of);
        match self.act(&pod, &failure, container, evidence).await {
            Ok(outcome) => {
                self.handled().insert(uid);
                self.metrics.failure(runtime, outcome);
                if matches!(outcome, Outcome::Claim | Outcome::HostPath | Outcome::Node) {
                    self.delete_if_owned(&pod).await;
                }
            }
            Err(e) => {
                warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not record the idmap-mount evidence; the next Event retries")
            }
        }
    }

    fn handled(&self) -> std::sync::MutexGuard<'_, RecentPods> {
        self.handled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Our decision annotation says `enabled` and the pod has `hostUsers: false`.
    fn enabled_by_us(&self, pod: &Pod) -> bool {
        let decision = pod.annotations().get(&self.ctx.keys.decision);
        decision.map(String::as_str) == Some(DECISION_ENABLED)
            && pod.spec.as_ref().and_then(|s| s.host_users) == Some(false)
    }

    /// Records the evidence where it belongs; returns what it led to.
    async fn act(
        &self,
        pod: &Pod,
        failure: &IdmapFailure,
        container: Option<&str>,
        mut evidence: Evidence,
    ) -> Result<Outcome, String> {
        let (path, side) = match failure {
            IdmapFailure::Image { .. } => return self.mark_node(pod, &evidence).await,
            IdmapFailure::Volume { path, side, .. } => (path, *side),
        };
        let namespace = pod.namespace().unwrap_or_default();
        let claims = &self.ctx.caches.claims;
        let bound_volume = |claim: &str| {
            claims
                .get(&ObjectRef::new(claim).within(&namespace))
                .and_then(|c| c.spec.volume_name.clone())
        };
        let culprit = attribute(pod, path, side, container, bound_volume);
        match culprit {
            Some(Culprit::Claim { claim, volume }) => {
                let Some(claim) = claims.get(&ObjectRef::new(&claim).within(&namespace)) else {
                    warn!(pod = %evidence.pod, %volume, "the failing volume's claim is not in the cache");
                    return Ok(Outcome::Unattributed);
                };
                self.mark_claim(&claim, &volume, &evidence).await?;
                Ok(Outcome::Claim)
            }
            Some(Culprit::HostPath { path, volume }) => {
                evidence.path = Some(path.clone());
                let current = self.host_paths.borrow().clone();
                let recorded =
                    host_paths::record(&self.ctx.client, &self.records, &current, &evidence)
                        .await
                        .map_err(|e| e.to_string())?;
                match recorded {
                    Recorded::Full => {
                        warn!(%path, max = host_paths::MAX_HOST_PATHS, "the hostPath evidence ConfigMap is full; not recorded");
                        Ok(Outcome::HostPathsFull)
                    }
                    Recorded::AlreadyThere => Ok(Outcome::HostPath),
                    Recorded::Added => {
                        info!(%path, pod = %evidence.pod, node = %evidence.node, "recorded hostPath idmap evidence");
                        let note = format!(
                            "Volume {volume}: hostPath {path} could not be idmap-mounted ({}). Recorded in ConfigMap {}/{}: pods with this hostPath are left without a user namespace.",
                            evidence.describe(),
                            self.records.namespace,
                            self.records.name
                        );
                        self.warn_on(&pod.object_ref(&()), note).await;
                        Ok(Outcome::HostPath)
                    }
                }
            }
            Some(Culprit::NodeLocal { volume }) => {
                info!(pod = %evidence.pod, %volume, "a kubelet-managed volume could not be idmap-mounted: the node's filesystems cannot");
                self.mark_node(pod, &evidence).await
            }
            Some(Culprit::Inline { volume }) => {
                warn!(pod = %evidence.pod, %volume, "an inline volume could not be idmap-mounted; there is no claim to label");
                Ok(Outcome::Unattributed)
            }
            None => {
                warn!(pod = %evidence.pod, %path, "no volume of the pod matches the failing mount");
                Ok(Outcome::Unattributed)
            }
        }
    }

    /// Labels the claim and its bound PV `false` with the evidence.
    async fn mark_claim(
        &self,
        claim: &PrunedClaim,
        volume: &str,
        evidence: &Evidence,
    ) -> Result<(), String> {
        let json = evidence.to_json();
        let wrote = record_evidence(claim, &json, &self.ctx)
            .await
            .map_err(|e| e.to_string())?;
        let pv_name = claim.spec.volume_name.clone();
        if let Some(pv) = pv_name.as_deref().and_then(|name| {
            self.ctx
                .caches
                .volumes
                .get(&ObjectRef::<PrunedVolume>::new(name))
        }) {
            record_evidence(pv.as_ref(), &json, &self.ctx)
                .await
                .map_err(|e| e.to_string())?;
        }
        if wrote {
            let claim_name = claim.name_any();
            info!(claim = %format!("{}/{claim_name}", claim.namespace().unwrap_or_default()), pv = ?pv_name, pod = %evidence.pod, node = %evidence.node, "labelled false from the node's idmap-mount error");
            let note = format!(
                "Pod {} could not idmap-mount this claim's volume {volume} on node {}: {}. Labelled {}=false (and its PersistentVolume); remove the annotation {} to clear it.",
                evidence.pod,
                evidence.node,
                evidence.error,
                self.ctx.keys.supported,
                self.ctx.keys.idmap_evidence
            );
            self.warn_on(&claim.object_ref(&()), note).await;
        }
        Ok(())
    }

    /// Labels the pod's node `false` with the evidence.
    async fn mark_node(&self, pod: &Pod, evidence: &Evidence) -> Result<Outcome, String> {
        if evidence.node.is_empty() {
            return Ok(Outcome::Unattributed);
        }
        let wrote = self
            .nodes
            .record_evidence(&evidence.node, &evidence.to_json())
            .await
            .map_err(|e| e.to_string())?;
        if wrote {
            let note = format!(
                "Node {} could not idmap-mount what this pod needs ({}): labelled {}=false.",
                evidence.node, evidence.error, self.ctx.keys.user_namespaces
            );
            self.warn_on(&pod.object_ref(&()), note).await;
        }
        Ok(Outcome::Node)
    }

    async fn warn_on(&self, object: &ObjectReference, mut note: String) {
        truncate(&mut note, 1000);
        let event = Event {
            type_: EventType::Warning,
            reason: "IdmapMountFailed".to_string(),
            note: Some(note),
            action: "RecordEvidence".to_string(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, object).await {
            warn!(error = %e, "could not publish the IdmapMountFailed event");
        }
    }

    /// With `--delete-failed-pods`, deletes the pod (this very one: uid precondition) when a
    /// controller owns it.
    async fn delete_if_owned(&self, pod: &Pod) {
        if !self.delete_failed_pods || !has_controller(pod) {
            return;
        }
        let (Some(namespace), name) = (pod.namespace(), pod.name_any()) else {
            return;
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match Api::<Pod>::namespaced(self.ctx.client.clone(), &namespace)
            .delete(&name, &params)
            .await
        {
            Ok(_) => {
                info!(pod = %format!("{namespace}/{name}"), "deleted the failed pod so that its controller creates it again");
                self.metrics.deletion("deleted");
            }
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
            Err(e) => {
                warn!(pod = %format!("{namespace}/{name}"), error = %e, "could not delete the failed pod");
                self.metrics.deletion("error");
            }
        }
    }
}

/// Whether an owner reference marks a controller (a ReplicaSet, StatefulSet, Job, …).
pub fn has_controller(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true))
}

/// The container an Event's `fieldPath` names: `spec.containers{name}`,
/// `spec.initContainers{name}`, `spec.ephemeralContainers{name}`.
pub fn container_of(field_path: &str) -> Option<&str> {
    let inner = field_path
        .strip_prefix("spec.containers{")
        .or_else(|| field_path.strip_prefix("spec.initContainers{"))
        .or_else(|| field_path.strip_prefix("spec.ephemeralContainers{"))?;
    inner.strip_suffix('}').filter(|n| !n.is_empty())
}

/// The node the pod failed on: its `nodeName`, else the Event's reporting host.
fn node_of(pod: &Pod, event: &KubeEvent) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .or_else(|| event.deprecated_source.as_ref()?.host.clone())
        .or_else(|| event.reporting_instance.clone())
        .unwrap_or_default()
}

/// When the failure was last seen, to the second (RFC 3339, UTC).
fn time_of(event: &KubeEvent) -> String {
    let time = event
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
        .or_else(|| event.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| event.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or_else(k8s_openapi::jiff::Timestamp::now);
    time.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_comes_from_the_field_path() {
        assert_eq!(container_of("spec.containers{main}"), Some("main"));
        assert_eq!(container_of("spec.initContainers{init}"), Some("init"));
        assert_eq!(
            container_of("spec.ephemeralContainers{debug}"),
            Some("debug")
        );
        assert_eq!(container_of("spec.containers{}"), None);
        assert_eq!(container_of("metadata.name"), None);
        assert_eq!(container_of(""), None);
    }

    #[test]
    fn only_a_controller_owner_counts() {
        let pod = |owners: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p", "ownerReferences": owners}}))
                .unwrap()
        };
        let owner = |controller: Option<bool>| {
            let mut o =
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "1"});
            if let Some(c) = controller {
                o["controller"] = json!(c);
            }
            o
        };
        assert!(has_controller(&pod(json!([owner(Some(true))]))));
        assert!(!has_controller(&pod(json!([owner(Some(false))]))));
        assert!(!has_controller(&pod(json!([owner(None)]))));
        assert!(!has_controller(&pod(json!([]))));
    }

    #[test]
    fn the_time_is_the_series_last_observation_else_the_event_time() {
        let event: KubeEvent = serde_json::from_value(json!({
            "metadata": {"name": "e", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "eventTime": "2026-05-01T10:00:00.123456Z",
        }))
        .unwrap();
        assert_eq!(time_of(&event), "2026-05-01T10:00:00Z");
        let series: KubeEvent = serde_json::from_value(json!({
            "metadata": {"name": "e"},
            "eventTime": "2026-05-01T10:00:00.000000Z",
            "series": {"count": 3, "lastObservedTime": "2026-05-01T10:05:00.000000Z"},
        }))
        .unwrap();
        assert_eq!(time_of(&series), "2026-05-01T10:05:00Z");
        let old: KubeEvent = serde_json::from_value(json!({
            "metadata": {"name": "e", "creationTimestamp": "2026-01-01T00:00:00Z"},
        }))
        .unwrap();
        assert_eq!(time_of(&old), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn remembered_pods_are_bounded() {
        let mut recent = RecentPods::default();
        for i in 0..HANDLED_PODS + 10 {
            recent.insert(format!("uid-{i}"));
        }
        assert_eq!(recent.set.len(), HANDLED_PODS);
        assert!(!recent.contains("uid-0"), "the oldest are forgotten");
        assert!(recent.contains(&format!("uid-{}", HANDLED_PODS + 9)));
        recent.insert(String::new());
        assert!(!recent.contains(""));
    }
}
