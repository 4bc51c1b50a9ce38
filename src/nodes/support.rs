//! The pure part of node awareness: whether a Node can run user-namespaced pods, and what the
//! webhook's node mode makes of the cluster's nodes for one pod. No I/O.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::capability::evidence::{describe_annotation, evidence_annotation};
use crate::capability::pod::RequiredNodeAffinity;
use crate::keys::Keys;

/// The well-known label naming a node's operating system.
pub const OS_LABEL: &str = "kubernetes.io/os";

/// How many nodes a blocker names (the rest are counted).
const NAMED_NODES: usize = 3;

/// Whether a node can run a pod with `hostUsers: false`, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSupport {
    pub supported: bool,
    pub reason: String,
}

impl NodeSupport {
    /// The label value: `true` or `false`.
    pub fn label(&self) -> &'static str {
        if self.supported { "true" } else { "false" }
    }
}

/// What a node's own status says, overruled by evidence: an image-level idmap failure recorded
/// on the node (annotation `<prefix>/idmap-evidence`) makes it `false` whatever the runtime
/// claims. Otherwise the default runtime handler (`status.runtimeHandlers[name=""]`, the one
/// a pod without `runtimeClassName` uses) decides through `features.userNamespaces`; a node
/// that reports no handlers (kubelet < 1.30) is not assumed to support them.
pub fn node_support(node: &Node, keys: &Keys) -> NodeSupport {
    let assessment = assess(node, keys);
    NodeSupport {
        supported: assessment == Assessment::Declared(true),
        reason: assessment.reason(keys),
    }
}

/// [`node_support`] without its sentence: what the webhook evaluates for every node.
pub fn supports(node: &Node, keys: &Keys) -> bool {
    assess(node, keys) == Assessment::Declared(true)
}

/// What decides a node's support, before it is put in words.
#[derive(Debug, PartialEq, Eq)]
enum Assessment<'a> {
    Evidence(&'a str),
    NoHandlers,
    NoDefaultHandler,
    Declared(bool),
    Unset,
}

fn assess<'a>(node: &'a Node, keys: &Keys) -> Assessment<'a> {
    if let Some(value) = evidence_annotation(&node.metadata, keys) {
        return Assessment::Evidence(value);
    }
    let handlers = node
        .status
        .as_ref()
        .and_then(|s| s.runtime_handlers.as_deref())
        .unwrap_or_default();
    if handlers.is_empty() {
        return Assessment::NoHandlers;
    }
    let Some(default) = handlers
        .iter()
        .find(|h| h.name.as_deref().unwrap_or_default().is_empty())
    else {
        return Assessment::NoDefaultHandler;
    };
    match default.features.as_ref().and_then(|f| f.user_namespaces) {
        Some(declared) => Assessment::Declared(declared),
        None => Assessment::Unset,
    }
}

impl Assessment<'_> {
    fn reason(&self, keys: &Keys) -> String {
        match self {
            Assessment::Evidence(value) => format!(
                "The runtime could not idmap-mount a container's root filesystem on this node: {}. Remove the annotation {} to clear this evidence.",
                describe_annotation(value),
                keys.idmap_evidence
            ),
            Assessment::NoHandlers => "The kubelet reports no runtime handlers (status.runtimeHandlers, Kubernetes >= 1.30), so user namespace support is not assumed.".to_string(),
            Assessment::NoDefaultHandler => {
                "The kubelet reports no default runtime handler in status.runtimeHandlers.".to_string()
            }
            Assessment::Declared(true) => "The default runtime handler reports user namespace support (status.runtimeHandlers features.userNamespaces: true).".to_string(),
            Assessment::Declared(false) => "The default runtime handler reports no user namespace support (status.runtimeHandlers features.userNamespaces: false): containerd >= 2.0 or CRI-O >= 1.25 with runc >= 1.2 or crun >= 1.9 is needed.".to_string(),
            Assessment::Unset => "The default runtime handler does not say whether it supports user namespaces (status.runtimeHandlers features.userNamespaces unset).".to_string(),
        }
    }
}

/// Whether the scheduler may place an ordinary pod on `node`: not cordoned, and Linux (a node
/// without the `kubernetes.io/os` label is taken as Linux).
pub fn is_schedulable_linux(node: &Node) -> bool {
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let os = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OS_LABEL))
        .map(String::as_str);
    !cordoned && os.is_none_or(|os| os == "linux")
}

/// The webhook's node mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeMode {
    /// Skip pods (with a reason) when Nodes exist and no schedulable Linux node supports user
    /// namespaces.
    #[default]
    Any,
    /// As `any`; and when only some nodes support them, add a required node affinity on the
    /// node label `<prefix>/user-namespaces=true`.
    Affinity,
    /// Ignore nodes.
    Off,
}

/// What the node mode makes of one pod that nothing else blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeGate {
    /// Enable it as it is.
    Allow,
    /// Enable it, requiring a node labelled `<prefix>/user-namespaces=true`.
    RequireSupportingNode,
    /// Leave it as written: no node it could run on supports user namespaces.
    Block(String),
}

/// Decides the gate for a pod from the nodes the caches hold. With no Node objects at all
/// (an API server without nodes) nodes are not judged: [`NodeGate::Allow`].
pub fn gate<'n>(
    mode: NodeMode,
    nodes: impl IntoIterator<Item = &'n Node>,
    node_name: Option<&str>,
    keys: &Keys,
) -> NodeGate {
    if mode == NodeMode::Off {
        return NodeGate::Allow;
    }
    let mut total = 0usize;
    let mut candidates = 0usize;
    let mut supporting = 0usize;
    // The first few that do not, by name, for the reason.
    let mut unsupported: Vec<&Node> = Vec::new();
    let bound = node_name.filter(|n| !n.is_empty());
    for node in nodes {
        total += 1;
        if let Some(bound) = bound
            && node.metadata.name.as_deref() == Some(bound)
        {
            // A pod created with nodeName skips the scheduler: only that node matters.
            let support = node_support(node, keys);
            return if support.supported {
                NodeGate::Allow
            } else {
                NodeGate::Block(format!(
                    "the pod is bound to node {bound} (spec.nodeName), which does not support user namespaces: {}",
                    support.reason
                ))
            };
        }
        if !is_schedulable_linux(node) {
            continue;
        }
        candidates += 1;
        if supports(node, keys) {
            supporting += 1;
        } else {
            unsupported.push(node);
        }
    }
    if total == 0 {
        return NodeGate::Allow;
    }
    if supporting == 0 {
        if candidates == 0 {
            return NodeGate::Block(format!(
                "none of the {total} node(s) is a schedulable Linux node"
            ));
        }
        unsupported.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut named: Vec<String> = unsupported
            .iter()
            .take(NAMED_NODES)
            .map(|node| {
                format!(
                    "{}: {}",
                    node.metadata.name.as_deref().unwrap_or_default(),
                    node_support(node, keys).reason
                )
            })
            .collect();
        if unsupported.len() > NAMED_NODES {
            named.push(format!("and {} more", unsupported.len() - NAMED_NODES));
        }
        return NodeGate::Block(format!(
            "none of the {candidates} schedulable Linux node(s) supports user namespaces ({})",
            named.join("; ")
        ));
    }
    match mode {
        NodeMode::Affinity if supporting < candidates => NodeGate::RequireSupportingNode,
        _ => NodeGate::Allow,
    }
}

/// The JSON Patch operations that make the pod require a node labelled
/// `<prefix>/user-namespaces=true`, keeping what it already requires: node selector terms are
/// ORed, so the requirement is added to every term.
pub fn require_supporting_node(shape: &RequiredNodeAffinity, keys: &Keys) -> Vec<PatchOperation> {
    let requirement = json!({"key": keys.user_namespaces, "operator": "In", "values": ["true"]});
    let term = json!({"matchExpressions": [requirement.clone()]});
    let required = json!({"nodeSelectorTerms": [term.clone()]});
    let add = |tokens: &[&str], value: Value| {
        PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(tokens.iter().copied()),
            value,
        })
    };
    const REQUIRED: [&str; 4] = [
        "spec",
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
    ];
    match shape {
        RequiredNodeAffinity::NoAffinity => vec![add(
            &REQUIRED[..2],
            json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}),
        )],
        RequiredNodeAffinity::NoNodeAffinity => vec![add(
            &REQUIRED[..3],
            json!({"requiredDuringSchedulingIgnoredDuringExecution": required}),
        )],
        RequiredNodeAffinity::NoRequired => vec![add(&REQUIRED, required)],
        RequiredNodeAffinity::Terms(terms) if terms.is_empty() => {
            vec![add(
                &[&REQUIRED[..], &["nodeSelectorTerms", "-"]].concat(),
                term,
            )]
        }
        RequiredNodeAffinity::Terms(terms) => terms
            .iter()
            .enumerate()
            .map(|(i, has_expressions)| {
                let index = i.to_string();
                let mut path: Vec<&str> = REQUIRED.to_vec();
                path.extend(["nodeSelectorTerms", &index, "matchExpressions"]);
                if *has_expressions {
                    path.push("-");
                    add(&path, requirement.clone())
                } else {
                    add(&path, json!([requirement.clone()]))
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use userns_labeler_test_support::fixtures;

    fn node(name: &str, handlers: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"runtimeHandlers": handlers}
        }))
        .unwrap()
    }

    /// What the real kubelet 1.37 with containerd 2.4 and runc 1.5 reports (real-node.md).
    fn supporting(name: &str) -> Node {
        node(
            name,
            json!([
                {"features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}, "name": ""},
                {"features": {"recursiveReadOnlyMounts": true, "userNamespaces": true}, "name": "runc"}
            ]),
        )
    }

    fn lacking(name: &str) -> Node {
        node(
            name,
            json!([{"features": {"recursiveReadOnlyMounts": true, "userNamespaces": false}, "name": ""}]),
        )
    }

    #[test]
    fn the_default_handler_decides_a_nodes_support() {
        let keys = Keys::default();
        assert!(node_support(&supporting("a"), &keys).supported);
        assert!(!node_support(&lacking("b"), &keys).supported);
        let only_named = node(
            "c",
            json!([{"features": {"userNamespaces": true}, "name": "kata"}]),
        );
        assert!(!node_support(&only_named, &keys).supported);
        let silent = node("d", json!([{"name": ""}]));
        assert!(!node_support(&silent, &keys).supported);
        let old: Node = serde_json::from_value(json!({"metadata": {"name": "e"}})).unwrap();
        let support = node_support(&old, &keys);
        assert!(!support.supported);
        assert!(
            support.reason.contains("no runtime handlers"),
            "{}",
            support.reason
        );
    }

    #[test]
    fn evidence_on_a_node_overrules_its_runtime() {
        let keys = Keys::default();
        let mut n = supporting("a");
        n.metadata.annotations = Some(
            [(
                keys.idmap_evidence.clone(),
                r#"{"pod":"app/p","node":"a","time":"t","runtime":"containerd","error":"snapshotter \"overlayfs\" doesn't support idmap mounts on this host"}"#.to_string(),
            )]
            .into(),
        );
        let support = node_support(&n, &keys);
        assert_eq!(support.label(), "false");
        assert!(support.reason.contains("overlayfs"), "{}", support.reason);
        assert!(support.reason.contains("userns.io/idmap-evidence"));
    }

    #[test]
    fn cordoned_and_windows_nodes_are_not_candidates() {
        let mut cordoned = supporting("a");
        cordoned.spec = Some(serde_json::from_value(json!({"unschedulable": true})).unwrap());
        assert!(!is_schedulable_linux(&cordoned));
        let mut windows = supporting("w");
        windows.metadata.labels = Some([(OS_LABEL.to_string(), "windows".to_string())].into());
        assert!(!is_schedulable_linux(&windows));
        let mut unlabelled = supporting("u");
        unlabelled.metadata.labels = None;
        assert!(is_schedulable_linux(&unlabelled));
    }

    #[rstest::rstest]
    #[case::no_nodes(NodeMode::Any, vec![], None, "allow")]
    #[case::all_support(NodeMode::Any, vec![supporting("a"), supporting("b")], None, "allow")]
    #[case::some_support_any(NodeMode::Any, vec![supporting("a"), lacking("b")], None, "allow")]
    #[case::some_support_affinity(NodeMode::Affinity, vec![supporting("a"), lacking("b")], None, "affinity")]
    #[case::all_support_affinity(NodeMode::Affinity, vec![supporting("a")], None, "allow")]
    #[case::none_support_any(NodeMode::Any, vec![lacking("a"), lacking("b")], None, "block")]
    #[case::none_support_affinity(NodeMode::Affinity, vec![lacking("a")], None, "block")]
    #[case::none_support_off(NodeMode::Off, vec![lacking("a")], None, "allow")]
    #[case::bound_to_a_lacking_node(NodeMode::Affinity, vec![supporting("a"), lacking("b")], Some("b"), "block")]
    #[case::bound_to_a_supporting_node(NodeMode::Affinity, vec![supporting("a"), lacking("b")], Some("a"), "allow")]
    #[case::bound_to_an_unknown_node(NodeMode::Affinity, vec![supporting("a"), lacking("b")], Some("z"), "affinity")]
    fn the_node_mode_gates_a_pod(
        #[case] mode: NodeMode,
        #[case] nodes: Vec<Node>,
        #[case] node_name: Option<&str>,
        #[case] expected: &str,
    ) {
        let got = gate(mode, &nodes, node_name, &Keys::default());
        let got = match got {
            NodeGate::Allow => "allow",
            NodeGate::RequireSupportingNode => "affinity",
            NodeGate::Block(_) => "block",
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn a_block_names_the_nodes_and_why() {
        let nodes: Vec<Node> = (0..5).map(|i| lacking(&format!("n{i}"))).collect();
        let NodeGate::Block(reason) = gate(NodeMode::Any, &nodes, None, &Keys::default()) else {
            panic!("blocked")
        };
        assert!(
            reason.starts_with("none of the 5 schedulable Linux node(s)"),
            "{reason}"
        );
        assert!(
            reason.contains("n0: The default runtime handler reports no user namespace support"),
            "{reason}"
        );
        assert!(reason.contains("and 2 more"), "{reason}");
        let mut cordoned = supporting("c");
        cordoned.spec = Some(serde_json::from_value(json!({"unschedulable": true})).unwrap());
        assert!(
            matches!(
                gate(
                    NodeMode::Any,
                    &[cordoned, lacking("d")],
                    None,
                    &Keys::default()
                ),
                NodeGate::Block(_)
            ),
            "a cordoned node that supports them does not count"
        );
    }

    /// Applies the operations to the pod's JSON and decodes the result's required node
    /// selector terms.
    fn terms_after(pod: Value) -> Vec<Value> {
        let decoded: Pod = serde_json::from_value(pod.clone()).unwrap();
        let shape = RequiredNodeAffinity::of(decoded.spec.as_ref().unwrap().affinity.as_ref());
        let mut patched = pod;
        json_patch::patch(
            &mut patched,
            &require_supporting_node(&shape, &Keys::default()),
        )
        .unwrap();
        let pod: Pod = serde_json::from_value(patched.clone()).expect("still a pod");
        let required = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        serde_json::to_value(
            required
                .required_during_scheduling_ignored_during_execution
                .unwrap()
                .node_selector_terms,
        )
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
    }

    fn pod_with(affinity: Option<Value>) -> Value {
        let mut pod = serde_json::to_value(fixtures::pod("app", "p").build()).unwrap();
        if let Some(affinity) = affinity {
            pod["spec"]["affinity"] = affinity;
        }
        pod
    }

    #[test]
    fn the_affinity_patch_creates_what_the_pod_lacks() {
        let ours =
            json!({"key": "userns.io/user-namespaces", "operator": "In", "values": ["true"]});
        let expected = vec![json!({"matchExpressions": [ours]})];
        assert_eq!(terms_after(pod_with(None)), expected);
        assert_eq!(terms_after(pod_with(Some(Value::Null))), expected);
        assert_eq!(
            terms_after(pod_with(Some(json!({"podAntiAffinity": {}})))),
            expected
        );
        assert_eq!(
            terms_after(pod_with(Some(json!({"nodeAffinity": {}})))),
            expected
        );
        assert_eq!(
            terms_after(pod_with(Some(json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}})))),
            expected
        );
    }

    #[test]
    fn the_affinity_patch_adds_the_requirement_to_every_existing_term() {
        let zone = json!({"key": "zone", "operator": "In", "values": ["a"]});
        let name = json!({"key": "metadata.name", "operator": "In", "values": ["n1"]});
        let terms = terms_after(pod_with(Some(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [zone]},
                {"matchFields": [name]},
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [],
        }}))));
        let ours =
            json!({"key": "userns.io/user-namespaces", "operator": "In", "values": ["true"]});
        assert_eq!(
            terms,
            vec![
                json!({"matchExpressions": [zone, ours]}),
                json!({"matchExpressions": [ours], "matchFields": [name]}),
            ]
        );
    }
}
