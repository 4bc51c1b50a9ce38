//! Node awareness: which nodes can run user-namespaced pods, from what each kubelet reports in
//! `status.runtimeHandlers[].features.userNamespaces` and from evidence of image-level idmap
//! failures on the node.
//!
//! - [`support`]: the pure part: a node's support and its reason, the webhook's node gate
//!   (`--webhook-node-mode any|affinity|off`) and the JSON Patch of the required node affinity.
//! - [`labeller`]: the leader labels every Node `<prefix>/user-namespaces=true|false` (with the
//!   reason in `<prefix>/user-namespaces-reason`) by server-side apply, under the same field
//!   manager as the claims; evidence on a node is kept with it.
//! - here: the Node watch every replica keeps ([`start`]: one pruned store — labels, our
//!   annotations, `spec.unschedulable` and `status.runtimeHandlers` only), the webhook's view of
//!   it ([`NodeSignals`], which also carries the host paths a node could not idmap-mount), the
//!   flag, and the `userns_labeler_nodes` gauge computed at scrape time.
//!
//! With no Node objects at all (an API server without nodes, the demo) nothing is gated.

pub mod labeller;
pub mod support;

use std::sync::Arc;

use futures::StreamExt;
use futures::future::FutureExt;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::capability::pod::{PodFacts, SpecFacts};
use crate::capability::{
    BlockerCode, ClusterView, Evidence, HostPathEvidence, PodDecision, PrunedClaim, PrunedClass,
    PrunedVolume,
};
use crate::keys::Keys;
pub use support::{NodeGate, NodeMode, NodeSupport, gate, node_support, supports};

/// Node flags of `userns-labeler run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// any: skip pods when Nodes exist and no schedulable Linux node supports user namespaces;
    /// affinity: also require a node labelled <prefix>/user-namespaces=true when only some do;
    /// off: ignore nodes.
    #[arg(long, env = "USERNS_WEBHOOK_NODE_MODE", value_enum, default_value_t = NodeMode::Any)]
    pub webhook_node_mode: NodeMode,
}

/// How many events the node store may buffer for the labeller before the watch waits.
const SUBSCRIBER_BUFFER: usize = 256;

/// Starts the Node watch (pruned, see [`prune`]) feeding one store, and a subscription for the
/// labeller. Runs until `shutdown`.
pub fn start(
    client: &Client,
    keys: &Keys,
    shutdown: &CancellationToken,
) -> (Store<Node>, ReflectHandle<Node>) {
    let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
    let subscription = writer.subscribe().expect("a shared store");
    let keys = keys.clone();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(move |node| prune(node, &keys)),
    );
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = stream.next() => event,
            };
            match event {
                Some(Err(e)) => warn!(error = %e, "node watch error; retrying with backoff"),
                Some(Ok(_)) => {}
                None => break,
            }
        }
    });
    (store, subscription)
}

/// Keeps only what node awareness reads: the name, labels, our annotations, whether the node
/// is cordoned and its runtime handlers. A Node's images, conditions and addresses are most of
/// its size.
pub fn prune(node: &mut Node, keys: &Keys) {
    let meta = &mut node.metadata;
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| *k == keys.idmap_evidence || *k == keys.user_namespaces_reason);
    }
    meta.owner_references = None;
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable);
    node.spec = Some(NodeSpec {
        unschedulable,
        ..NodeSpec::default()
    });
    let runtime_handlers = node.status.take().and_then(|s| s.runtime_handlers);
    node.status = Some(NodeStatus {
        runtime_handlers,
        ..NodeStatus::default()
    });
}

/// What the webhook knows from the nodes: the node mode, the Node store (none: no nodes are
/// judged) and the host paths a node could not idmap-mount. The default judges nothing.
#[derive(Clone)]
pub struct NodeSignals {
    pub mode: NodeMode,
    nodes: Option<Store<Node>>,
    host_paths: watch::Receiver<Arc<HostPathEvidence>>,
}

impl Default for NodeSignals {
    fn default() -> Self {
        NodeSignals {
            mode: NodeMode::Any,
            nodes: None,
            host_paths: watch::channel(Arc::default()).1,
        }
    }
}

impl NodeSignals {
    pub fn new(
        mode: NodeMode,
        nodes: Store<Node>,
        host_paths: watch::Receiver<Arc<HostPathEvidence>>,
    ) -> NodeSignals {
        NodeSignals {
            mode,
            nodes: Some(nodes),
            host_paths,
        }
    }

    /// Signals over fixed nodes and host-path evidence, already synced (tests, offline use).
    pub fn from_objects(mode: NodeMode, nodes: Vec<Node>, host_paths: HostPathEvidence) -> Self {
        let mut writer = reflector::store::Writer::default();
        writer.apply_watcher_event(&watcher::Event::Init);
        for node in nodes {
            writer.apply_watcher_event(&watcher::Event::InitApply(node));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        NodeSignals {
            mode,
            nodes: Some(writer.as_reader()),
            host_paths: watch::channel(Arc::new(host_paths)).1,
        }
    }

    /// True once the Node store has its initial list (always without one, or in mode `off`,
    /// which does not read it).
    pub fn synced(&self) -> bool {
        self.mode == NodeMode::Off
            || self
                .nodes
                .as_ref()
                .is_none_or(|s| matches!(s.wait_until_ready().now_or_never(), Some(Ok(()))))
    }

    /// The gate for a pod that nothing else blocks.
    pub fn gate(&self, spec: Option<&SpecFacts<'_>>, keys: &Keys) -> NodeGate {
        let Some(store) = &self.nodes else {
            return NodeGate::Allow;
        };
        let nodes = store.state();
        let node_name = spec.and_then(|s| s.node_name.as_deref());
        gate(self.mode, nodes.iter().map(Arc::as_ref), node_name, keys)
    }

    /// The evidence recorded for an inline hostPath (or a directory above it).
    pub fn host_path_evidence(&self, path: &str) -> Option<Evidence> {
        self.host_paths.borrow().lookup(path).cloned()
    }
}

/// Applies the node gate to a pod's decision: a node mode that finds no node for the pod adds
/// the blocker `NoUserNamespaceNode`. Returns whether the pod, if enabled, must require a node
/// labelled `<prefix>/user-namespaces=true` (mode `affinity`, only some nodes support them).
pub fn gate_decision(
    decision: &mut PodDecision,
    facts: &PodFacts<'_>,
    state: &crate::webhook::WebhookState,
) -> bool {
    match state.nodes.gate(facts.spec.as_ref(), &state.keys) {
        NodeGate::Allow => false,
        NodeGate::RequireSupportingNode => true,
        NodeGate::Block(reason) => {
            decision.block(BlockerCode::NoUserNamespaceNode, reason);
            false
        }
    }
}

/// The decision reason of an enabled pod, saying when it also requires a supporting node.
pub fn with_node_requirement(reason: String, require_node: bool, keys: &Keys) -> String {
    if require_node {
        format!(
            "{reason}; not every node supports user namespaces, so the pod requires a node labelled {}=true",
            keys.user_namespaces
        )
    } else {
        reason
    }
}

/// The JSON Patch operations adding the required node affinity to the pod.
pub fn affinity_patch(facts: &PodFacts<'_>, keys: &Keys) -> Vec<json_patch::PatchOperation> {
    let shape = facts
        .spec
        .as_ref()
        .map(|s| s.node_affinity.clone())
        .unwrap_or_default();
    support::require_supporting_node(&shape, keys)
}

/// A [`ClusterView`] that also answers with the hostPath evidence of [`NodeSignals`].
pub struct WithHostPaths<'a, V: ?Sized> {
    view: &'a V,
    nodes: &'a NodeSignals,
}

impl<'a, V: ClusterView + ?Sized> WithHostPaths<'a, V> {
    pub fn new(view: &'a V, nodes: &'a NodeSignals) -> Self {
        WithHostPaths { view, nodes }
    }
}

impl<V: ClusterView + ?Sized> ClusterView for WithHostPaths<'_, V> {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PrunedClaim>> {
        self.view.claim(namespace, name)
    }

    fn volume(&self, name: &str) -> Option<Arc<PrunedVolume>> {
        self.view.volume(name)
    }

    fn storage_class(&self, name: &str) -> Option<Arc<PrunedClass>> {
        self.view.storage_class(name)
    }

    fn default_storage_class(&self) -> Option<Arc<PrunedClass>> {
        self.view.default_storage_class()
    }

    fn host_path_evidence(&self, path: &str) -> Option<Evidence> {
        self.nodes
            .host_path_evidence(path)
            .or_else(|| self.view.host_path_evidence(path))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SupportLabels {
    /// `true` or `false`.
    user_namespaces: &'static str,
}

/// `userns_labeler_nodes{user_namespaces}`: the Nodes in the store by support, counted at
/// scrape time.
pub struct NodeCount {
    store: Store<Node>,
    keys: Keys,
}

impl NodeCount {
    pub fn new(store: Store<Node>, keys: Keys) -> NodeCount {
        NodeCount { store, keys }
    }
}

impl std::fmt::Debug for NodeCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCount")
    }
}

impl Collector for NodeCount {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let family = Family::<SupportLabels, Gauge>::default();
        let (mut yes, mut no) = (0, 0);
        for node in self.store.state() {
            if supports(&node, &self.keys) {
                yes += 1;
            } else {
                no += 1;
            }
        }
        for (value, count) in [("true", yes), ("false", no)] {
            family
                .get_or_create(&SupportLabels {
                    user_namespaces: value,
                })
                .set(count);
        }
        let metric = encoder.encode_descriptor(
            "nodes",
            "Nodes by whether they can run user-namespaced pods (runtime handlers and evidence)",
            None,
            family.metric_type(),
        )?;
        family.encode(metric)
    }
}
