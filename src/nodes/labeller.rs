//! The leader labels every Node `<prefix>/user-namespaces=true|false` with its reason, by
//! server-side apply under the controller's field manager, writing only when a value differs.
//! Evidence of an image-level idmap failure ([`NodeLabeller::record_evidence`]) is applied with
//! the label, so later reconciles keep it; the operator clears it by removing the annotation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::Controller;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ReflectHandle, Store};
use kube::{Client, Resource};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::support::node_support;
use crate::capability::evidence::evidence_annotation;
use crate::controller::reconcile::{FIELD_MANAGER, truncate};
use crate::keys::Keys;

/// How long a failed node label write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// What the node labeller needs; shared with the evidence loop, which records image-level
/// failures through it.
pub struct NodeLabeller {
    pub client: Client,
    pub keys: Keys,
    pub recorder: Recorder,
    /// The controller's write gate: leader, caches synced, a table in force.
    pub writable: watch::Receiver<bool>,
    pub nodes: Store<Node>,
    /// Evidence written on top of a node version the store has not moved past yet: a
    /// reconcile of that stale version must not apply the keys without it.
    pending: Mutex<HashMap<String, (Option<String>, String)>>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeLabelError {
    #[error("labelling node {name}: {source}")]
    Apply {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The values of our keys a node should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DesiredNodeKeys {
    label: &'static str,
    reason: String,
    evidence: Option<String>,
}

impl DesiredNodeKeys {
    fn is_current(&self, node: &Node, keys: &Keys) -> bool {
        let meta = &node.metadata;
        let label = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(&keys.user_namespaces));
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
        label.map(String::as_str) == Some(self.label)
            && annotation(&keys.user_namespaces_reason) == Some(&self.reason)
            && annotation(&keys.idmap_evidence) == self.evidence.as_ref()
    }
}

impl NodeLabeller {
    pub fn new(
        client: Client,
        keys: Keys,
        recorder: Recorder,
        writable: watch::Receiver<bool>,
        nodes: Store<Node>,
    ) -> NodeLabeller {
        NodeLabeller {
            client,
            keys,
            recorder,
            writable,
            nodes,
            pending: Mutex::default(),
        }
    }

    fn may_write(&self) -> bool {
        *self.writable.borrow()
    }

    /// Labels `node` `false` with `evidence` (JSON, see `capability::Evidence`), unless it
    /// already carries evidence. Returns whether it wrote.
    pub async fn record_evidence(
        &self,
        node_name: &str,
        evidence: &str,
    ) -> Result<bool, NodeLabelError> {
        let Some(node) = self
            .nodes
            .get(&kube::runtime::reflector::ObjectRef::new(node_name))
        else {
            return Ok(false);
        };
        if evidence_annotation(&node.metadata, &self.keys).is_some() {
            return Ok(false);
        }
        self.apply(&node, Some(evidence.to_string())).await
    }

    /// Applies the keys `node` should carry (with `evidence` when given, else the evidence it
    /// carries or was just given). Returns whether it wrote.
    async fn apply(&self, node: &Node, evidence: Option<String>) -> Result<bool, NodeLabelError> {
        if !self.may_write() {
            return Ok(false);
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let evidence = evidence
            .or_else(|| evidence_annotation(&node.metadata, &self.keys).map(String::from))
            .or_else(|| self.pending_evidence(node));
        let mut judged = node.clone();
        if let Some(evidence) = &evidence {
            judged
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(self.keys.idmap_evidence.clone(), evidence.clone());
        }
        let support = node_support(&judged, &self.keys);
        let desired = DesiredNodeKeys {
            label: support.label(),
            reason: support.reason,
            evidence,
        };
        if desired.is_current(node, &self.keys) {
            return Ok(false);
        }
        let mut annotations = json!({self.keys.user_namespaces_reason.clone(): desired.reason});
        if let Some(evidence) = &desired.evidence {
            annotations[&self.keys.idmap_evidence] = json!(evidence);
        }
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {self.keys.user_namespaces.clone(): desired.label},
                "annotations": annotations,
            },
        });
        Api::<Node>::all(self.client.clone())
            .patch_metadata(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| NodeLabelError::Apply {
                name: name.clone(),
                source,
            })?;
        if let Some(evidence) = &desired.evidence {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.insert(
                name.clone(),
                (node.metadata.resource_version.clone(), evidence.clone()),
            );
        }
        self.announce(node, &desired).await;
        Ok(true)
    }

    /// Evidence just written on top of exactly this version of the node.
    fn pending_evidence(&self, node: &Node) -> Option<String> {
        let name = node.metadata.name.as_deref()?;
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.get(name) {
            Some((version, evidence)) if *version == node.metadata.resource_version => {
                Some(evidence.clone())
            }
            Some(_) => {
                pending.remove(name);
                None
            }
            None => None,
        }
    }

    /// An Event when the label changes (not when a node is first labelled).
    async fn announce(&self, node: &Node, desired: &DesiredNodeKeys) {
        let old = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&self.keys.user_namespaces));
        let Some(old) = old.filter(|old| *old != desired.label) else {
            return;
        };
        let name = node.metadata.name.as_deref().unwrap_or_default();
        info!(node = name, from = %old, to = desired.label, reason = %desired.reason, "node user-namespace label changed");
        let mut note = format!(
            "{} changed from {old} to {}: {}",
            self.keys.user_namespaces, desired.label, desired.reason
        );
        truncate(&mut note, 1000);
        let event = Event {
            type_: if desired.label == "false" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: "UserNamespaceSupportChanged".to_string(),
            note: Some(note),
            action: "Relabel".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &node.object_ref(&())).await {
            warn!(error = %e, "could not publish the node label event");
        }
    }
}

/// Runs the node labeller until `shutdown`: every node is reconciled on change and when the
/// write gate opens.
pub async fn run(
    labeller: Arc<NodeLabeller>,
    subscription: ReflectHandle<Node>,
    shutdown: CancellationToken,
) {
    let opened = futures::stream::unfold(labeller.writable.clone(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });
    Controller::for_shared_stream(subscription, labeller.nodes.clone())
        .reconcile_all_on(opened)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, labeller)
        .for_each(|_| future::ready(()))
        .await;
}

async fn reconcile(node: Arc<Node>, labeller: Arc<NodeLabeller>) -> Result<Action, NodeLabelError> {
    labeller.apply(&node, None).await?;
    Ok(Action::await_change())
}

fn error_policy(_node: Arc<Node>, error: &NodeLabelError, _labeller: Arc<NodeLabeller>) -> Action {
    warn!(%error, "node label write failed; retrying");
    Action::requeue(RETRY)
}
