//! The cluster readiness report: which workloads could run with user namespaces today, what
//! holds the others back, the claims by label value and the nodes by user-namespace support.
//!
//! The pure part: the listed objects in, a [`ClusterReport`] out. Every workload is judged
//! from its own template (a Deployment's, not its pods', which this webhook may have mutated
//! already); pods are grouped under their top owner (Deployment, StatefulSet, DaemonSet,
//! CronJob or Job, ReplicationController); pods without a known owner are judged from their
//! spec.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Node, PersistentVolume, PersistentVolumeClaim, Pod, ReplicationController,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Serialize;

use crate::capability::pod::{PodFacts, decide, pod_namespace};
use crate::capability::{
    BlockerCode, DriverTable, PodDecision, Snapshot, Verdict, Workload, WorkloadKind,
    decide_workload, resolve_claim,
};
use crate::cli::explain::ReasonReport;
use crate::keys::{Keys, decision};

/// Everything the report reads, as listed from the cluster (or built by a test). Pods and
/// workloads are reduced as they are listed to what the report reads of them, a few hundred
/// bytes each.
#[derive(Debug, Default)]
pub struct ClusterObjects {
    pub pods: Vec<ListedPod>,
    pub claims: Vec<PersistentVolumeClaim>,
    pub volumes: Vec<PersistentVolume>,
    pub classes: Vec<StorageClass>,
    /// `None`: the nodes could not be listed (forbidden); the report says so.
    pub nodes: Option<Vec<Node>>,
    /// Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and
    /// CronJobs.
    pub workloads: Vec<ListedWorkload>,
}

/// An object's controller: the owner reference marked `controller: true`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Controller {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

impl Controller {
    pub fn of(meta: &ObjectMeta) -> Option<Controller> {
        controller_of(meta).map(|r| Controller {
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        })
    }
}

/// A workload as listed: what is judged, and its identity in the owner chain.
#[derive(Debug)]
pub struct ListedWorkload {
    pub uid: Option<String>,
    pub controller: Option<Controller>,
    pub workload: Workload,
}

impl ListedWorkload {
    fn new(meta: &ObjectMeta) -> impl FnOnce(Workload) -> ListedWorkload + use<> {
        let (uid, controller) = (meta.uid.clone(), Controller::of(meta));
        move |workload| ListedWorkload {
            uid,
            controller,
            workload,
        }
    }

    pub fn of_deployment(o: Deployment) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_deployment(o))
    }

    pub fn of_stateful_set(o: StatefulSet) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_stateful_set(o))
    }

    pub fn of_daemon_set(o: DaemonSet) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_daemon_set(o))
    }

    pub fn of_replica_set(o: ReplicaSet) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_replica_set(o))
    }

    pub fn of_replication_controller(o: ReplicationController) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_replication_controller(o))
    }

    pub fn of_job(o: Job) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_job(o))
    }

    pub fn of_cron_job(o: CronJob) -> ListedWorkload {
        ListedWorkload::new(&o.metadata)(Workload::of_cron_job(o))
    }
}

/// A pod as listed: where it belongs, the decision recorded on it, and what the decision reads
/// of it as its author wrote it.
#[derive(Debug)]
pub struct ListedPod {
    pub namespace: String,
    /// Its name (or `generateName`).
    pub name: String,
    pub controller: Option<Controller>,
    /// The value of its `<prefix>/decision` annotation.
    pub decision: Option<String>,
    pub facts: PodFacts<'static>,
}

impl ListedPod {
    pub fn of(pod: &Pod, keys: &Keys) -> ListedPod {
        ListedPod {
            namespace: pod_namespace(&pod.metadata).to_string(),
            name: pod
                .metadata
                .name
                .clone()
                .or_else(|| pod.metadata.generate_name.clone())
                .unwrap_or_default(),
            controller: Controller::of(&pod.metadata),
            decision: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(&keys.decision))
                .cloned(),
            facts: as_written(pod, keys),
        }
    }
}

/// The driver table the report judges by, as the labeler in the cluster would have it.
#[derive(Clone, Debug)]
pub enum TableInForce {
    /// This table, and where it came from.
    Table {
        table: Arc<DriverTable>,
        source: String,
    },
    /// None usable (the labeler's ConfigMap is invalid and has no last good copy): the webhook
    /// skips every pod with `DriverTableInvalid`.
    Unusable { reason: String },
}

/// The report. Serialised as `-o json`; keys may be added, none renamed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    /// `all namespaces`, or `namespace <name>`.
    pub scope: String,
    /// Where the driver table came from.
    pub driver_table: String,
    pub summary: Summary,
    /// Every workload, by namespace, kind and name.
    pub workloads: Vec<WorkloadEntry>,
    /// Each blocker by the number of workloads it holds back, most first.
    pub blockers: Vec<BlockerEntry>,
    /// Workloads per namespace.
    pub namespaces: Vec<NamespaceEntry>,
    pub claims: ClaimSummary,
    pub nodes: NodeSummary,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub workloads: usize,
    /// Workloads whose every pod the webhook would enable.
    pub can_run: usize,
    /// `can_run` of `workloads`, in whole percent (never 100 unless all, never 0 unless none).
    pub percent: u32,
    pub top_blocker: Option<TopBlocker>,
    /// The one-line summary.
    pub text: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopBlocker {
    pub label: String,
    pub workloads: usize,
}

/// How a workload was judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JudgedFrom {
    /// Its pod template (and a StatefulSet's claim templates).
    Template,
    /// Its pods' specs: a bare pod, or pods whose owner is not a workload kind listed.
    Pods,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// `Deployment`, `StatefulSet`, …, `Pod`, or the kind of another owner (`Node` for static
    /// pods, a custom resource's kind).
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub judged_from: JudgedFrom,
    /// `enabled` (the webhook would set `hostUsers: false` on its pods) or `skipped`.
    pub decision: &'static str,
    pub can_run: bool,
    pub reasons: Vec<ReasonReport>,
    /// Its pods now.
    pub pods: usize,
    /// Its pods by their `<prefix>/decision` annotation (`enabled`, `skipped`, `reverted`,
    /// `audit`), and `none` for pods without one.
    pub pod_decisions: BTreeMap<String, usize>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockerEntry {
    pub code: &'static str,
    /// The storage driver, for claim and volume blockers whose driver is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `Code`, or `Code on driver`.
    pub label: String,
    /// Workloads it holds back (each counted once).
    pub workloads: usize,
    /// One of its sentences, as an example.
    pub example: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceEntry {
    pub namespace: String,
    pub workloads: usize,
    pub can_run: usize,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimSummary {
    pub total: usize,
    /// Claims by the label the controller writes (`true`, `false`, `unknown`).
    pub by_label: BTreeMap<&'static str, usize>,
    /// The drivers behind `false` and `unknown`, by driver and reason, most claims first.
    pub drivers: Vec<DriverEntry>,
    /// Claims whose label on the object is already this value.
    pub labelled: usize,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriverEntry {
    pub label: &'static str,
    /// `null` when no driver could be found.
    pub driver: Option<String>,
    pub claims: usize,
    /// Why these claims have this label.
    pub reason: String,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// False when the nodes could not be listed.
    pub listed: bool,
    pub total: usize,
    /// Nodes by support: `supported`, `unsupported`, `unknown`.
    pub by_support: BTreeMap<&'static str, usize>,
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub name: String,
    /// `supported`, `unsupported` or `unknown`.
    pub support: &'static str,
    pub reason: String,
    pub kernel: String,
    pub runtime: String,
}

/// The scope of a report: one namespace, or all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Namespace(String),
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::All => "all namespaces".to_string(),
            Scope::Namespace(ns) => format!("namespace {ns}"),
        }
    }

    fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Namespace(ns) => ns == namespace,
        }
    }
}

/// A workload being assembled: what it is judged from, and its pods.
struct Group {
    kind: String,
    namespace: String,
    name: String,
    template: Option<Workload>,
    /// Its pods as their authors wrote them (kept only when there is no template).
    pods: Vec<PodFacts<'static>>,
    pod_count: usize,
    pod_decisions: BTreeMap<String, usize>,
}

/// A workload's key: kind, namespace, name.
type OwnerKey = (String, String, String);

fn key(kind: &str, namespace: &str, name: &str) -> OwnerKey {
    (kind.to_string(), namespace.to_string(), name.to_string())
}

fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

fn name_of(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// Which ReplicaSets belong to a listed Deployment, and Jobs to a listed CronJob: the key of
/// each such child, and its top owner's.
fn parents(workloads: &[ListedWorkload]) -> HashMap<OwnerKey, OwnerKey> {
    let uids = |kind: WorkloadKind| -> HashSet<&str> {
        workloads
            .iter()
            .filter(|w| w.workload.kind == kind)
            .filter_map(|w| w.uid.as_deref())
            .collect()
    };
    let deployments = uids(WorkloadKind::Deployment);
    let cron_jobs = uids(WorkloadKind::CronJob);
    let mut parents = HashMap::new();
    for listed in workloads {
        let w = &listed.workload;
        let (parent_kind, parent_uids) = match w.kind {
            WorkloadKind::ReplicaSet => ("Deployment", &deployments),
            WorkloadKind::Job => ("CronJob", &cron_jobs),
            _ => continue,
        };
        if let Some(c) = &listed.controller
            && c.kind == parent_kind
            && parent_uids.contains(c.uid.as_str())
        {
            parents.insert(
                key(w.kind.as_str(), &w.namespace, &w.name),
                key(parent_kind, &w.namespace, &c.name),
            );
        }
    }
    parents
}

/// Builds the report from the listed objects.
pub fn build(
    objects: ClusterObjects,
    scope: &Scope,
    table: &TableInForce,
    keys: &Keys,
) -> ClusterReport {
    let mut view = Snapshot::default();
    for class in objects.classes {
        view.add_class(class);
    }
    for volume in objects.volumes {
        view.add_volume(volume);
    }
    let claims: Vec<PersistentVolumeClaim> = objects
        .claims
        .into_iter()
        .filter(|c| scope.contains(pod_namespace(&c.metadata)))
        .collect();
    for claim in &claims {
        view.add_claim(claim.clone());
    }
    let (judging_table, driver_table) = match table {
        TableInForce::Table { table, source } => (table.clone(), source.clone()),
        TableInForce::Unusable { reason } => (
            DriverTable::defaults(),
            format!(
                "none usable ({reason}): the webhook skips every pod; claims judged by the built-in table"
            ),
        ),
    };

    let mut groups: BTreeMap<OwnerKey, Group> = BTreeMap::new();
    let mut add_template = |workload: Workload| {
        if !scope.contains(&workload.namespace) {
            return;
        }
        let k = key(workload.kind.as_str(), &workload.namespace, &workload.name);
        groups.insert(
            k,
            Group {
                kind: workload.kind.as_str().to_string(),
                namespace: workload.namespace.clone(),
                name: workload.name.clone(),
                template: Some(workload),
                pods: Vec::new(),
                pod_count: 0,
                pod_decisions: BTreeMap::new(),
            },
        );
    };

    let parents = parents(&objects.workloads);
    for listed in objects.workloads {
        let w = &listed.workload;
        if !parents.contains_key(&key(w.kind.as_str(), &w.namespace, &w.name)) {
            add_template(listed.workload);
        }
    }

    for pod in objects.pods {
        if !scope.contains(&pod.namespace) {
            continue;
        }
        let group_key = match &pod.controller {
            None => key("Pod", &pod.namespace, &pod.name),
            Some(owner) => {
                let direct = key(&owner.kind, &pod.namespace, &owner.name);
                parents.get(&direct).cloned().unwrap_or(direct)
            }
        };
        let group = groups.entry(group_key.clone()).or_insert_with(|| Group {
            kind: group_key.0.clone(),
            namespace: group_key.1.clone(),
            name: group_key.2.clone(),
            template: None,
            pods: Vec::new(),
            pod_count: 0,
            pod_decisions: BTreeMap::new(),
        });
        let recorded = pod.decision.unwrap_or_else(|| "none".to_string());
        *group.pod_decisions.entry(recorded).or_insert(0) += 1;
        group.pod_count += 1;
        if group.template.is_none() {
            group.pods.push(pod.facts);
        }
    }

    let mut workloads = Vec::with_capacity(groups.len());
    for group in groups.into_values() {
        let (judged_from, decided) = match (&group.template, table) {
            (_, TableInForce::Unusable { reason }) => (
                if group.template.is_some() {
                    JudgedFrom::Template
                } else {
                    JudgedFrom::Pods
                },
                PodDecision::blocked(
                    BlockerCode::DriverTableInvalid,
                    format!("no usable driver table, so no pod is enabled: {reason}"),
                ),
            ),
            (Some(workload), TableInForce::Table { table, .. }) => (
                JudgedFrom::Template,
                decide_workload(workload, &view, table, keys),
            ),
            (None, TableInForce::Table { table, .. }) => {
                let mut merged = PodDecision::default();
                for pod in &group.pods {
                    let d = decide(pod, &group.namespace, &view, table, keys);
                    for blocker in d.blockers {
                        if !merged.blockers.iter().any(|b| b.message == blocker.message) {
                            merged.blockers.push(blocker);
                        }
                    }
                }
                (JudgedFrom::Pods, merged)
            }
        };
        let can_run = decided.mutate();
        workloads.push(WorkloadEntry {
            kind: group.kind,
            namespace: group.namespace,
            name: group.name,
            judged_from,
            decision: decision::of(can_run),
            can_run,
            reasons: ReasonReport::of_decision(decided),
            pods: group.pod_count,
            pod_decisions: group.pod_decisions,
        });
    }
    workloads
        .sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));

    let blockers = rank_blockers(&workloads);
    let namespaces = by_namespace(&workloads);
    let claims = claim_summary(&claims, &view, &judging_table, keys);
    let nodes = node_summary(objects.nodes.as_deref());
    let summary = summarise(&workloads, &blockers, scope);
    ClusterReport {
        scope: scope.describe(),
        driver_table,
        summary,
        workloads,
        blockers,
        namespaces,
        claims,
        nodes,
    }
}

/// What the decision reads of a pod as its author wrote it: a `hostUsers: false` that this
/// webhook set (recorded by its `enabled` annotation) is taken back, as the webhook does on
/// reinvocation.
fn as_written(pod: &Pod, keys: &Keys) -> PodFacts<'static> {
    let mut facts = PodFacts::of(pod).into_owned();
    let ours = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(&keys.decision))
        .is_some_and(|v| v == decision::ENABLED);
    if let Some(spec) = facts.spec.as_mut()
        && ours
        && spec.host_users == Some(false)
    {
        spec.host_users = None;
    }
    facts
}

/// Each (code, driver) by the number of workloads it holds back, most first, ties by label.
fn rank_blockers(workloads: &[WorkloadEntry]) -> Vec<BlockerEntry> {
    let mut counts: HashMap<(&'static str, Option<String>), (usize, String)> = HashMap::new();
    for workload in workloads {
        let mut seen = HashSet::new();
        for reason in &workload.reasons {
            let k = (reason.code, reason.driver.clone());
            if seen.insert(k.clone()) {
                let entry = counts.entry(k).or_insert((0, reason.message.clone()));
                entry.0 += 1;
            }
        }
    }
    let mut ranked: Vec<BlockerEntry> = counts
        .into_iter()
        .map(|((code, driver), (workloads, example))| BlockerEntry {
            label: match &driver {
                Some(d) => format!("{code} on {d}"),
                None => code.to_string(),
            },
            code,
            driver,
            workloads,
            example,
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.workloads
            .cmp(&a.workloads)
            .then_with(|| a.label.cmp(&b.label))
    });
    ranked
}

fn by_namespace(workloads: &[WorkloadEntry]) -> Vec<NamespaceEntry> {
    let mut map: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for w in workloads {
        let entry = map.entry(&w.namespace).or_default();
        entry.0 += 1;
        entry.1 += usize::from(w.can_run);
    }
    map.into_iter()
        .map(|(namespace, (workloads, can_run))| NamespaceEntry {
            namespace: namespace.to_string(),
            workloads,
            can_run,
        })
        .collect()
}

/// `part` of `whole` in whole percent, rounded, but 100 only when all and 0 only when none.
pub fn percent(part: usize, whole: usize) -> u32 {
    if whole == 0 {
        return 0;
    }
    let rounded = ((part * 100 + whole / 2) / whole) as u32;
    match (part, rounded) {
        (p, 100) if p < whole => 99,
        (p, 0) if p > 0 => 1,
        _ => rounded,
    }
}

fn summarise(workloads: &[WorkloadEntry], blockers: &[BlockerEntry], scope: &Scope) -> Summary {
    let total = workloads.len();
    let can_run = workloads.iter().filter(|w| w.can_run).count();
    let percent = percent(can_run, total);
    let top_blocker = blockers.first().map(|b| TopBlocker {
        label: b.label.clone(),
        workloads: b.workloads,
    });
    let text = if total == 0 {
        format!("No workloads found in {}.", scope.describe())
    } else {
        let noun = if total == 1 { "workload" } else { "workloads" };
        let head =
            format!("{can_run} of {total} {noun} ({percent} %) can run with user namespaces");
        match &top_blocker {
            Some(top) => format!(
                "{head}; the top blocker is {} ({}).",
                top.label, top.workloads
            ),
            None => format!("{head}."),
        }
    };
    Summary {
        workloads: total,
        can_run,
        percent,
        top_blocker,
        text,
    }
}

fn claim_summary(
    claims: &[PersistentVolumeClaim],
    view: &Snapshot,
    table: &DriverTable,
    keys: &Keys,
) -> ClaimSummary {
    let mut summary = ClaimSummary {
        total: claims.len(),
        ..ClaimSummary::default()
    };
    for verdict in [Verdict::True, Verdict::False, Verdict::Unknown] {
        summary.by_label.insert(verdict.as_str(), 0);
    }
    let mut drivers: BTreeMap<(&'static str, Option<String>, String), usize> = BTreeMap::new();
    for claim in claims {
        let v = resolve_claim(claim, view, table, keys);
        let label = v.verdict.as_str();
        *summary.by_label.entry(label).or_insert(0) += 1;
        let current = claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&keys.supported));
        if current.is_some_and(|c| c == label) {
            summary.labelled += 1;
        }
        if v.verdict != Verdict::True {
            *drivers.entry((label, v.driver, v.reason)).or_insert(0) += 1;
        }
    }
    summary.drivers = drivers
        .into_iter()
        .map(|((label, driver, reason), claims)| DriverEntry {
            label,
            driver,
            claims,
            reason,
        })
        .collect();
    summary.drivers.sort_by(|a, b| {
        b.claims
            .cmp(&a.claims)
            .then_with(|| a.driver.cmp(&b.driver))
    });
    summary
}

/// The oldest kernel a user-namespaced pod runs on in practice (idmapped tmpfs, for the
/// service-account token and other kubelet-managed volumes).
pub const MIN_KERNEL: (u32, u32) = (6, 3);

/// Whether a node can run user-namespaced pods, as far as its status says.
pub fn node_support(node: &Node) -> (&'static str, String) {
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    if let Some(info) = info {
        if info.operating_system.eq_ignore_ascii_case("windows") {
            return ("unsupported", "a Windows node".to_string());
        }
        if let Some(version) = kernel_version(&info.kernel_version)
            && version < MIN_KERNEL
        {
            return (
                "unsupported",
                format!(
                    "kernel {} is older than {}.{}",
                    info.kernel_version, MIN_KERNEL.0, MIN_KERNEL.1
                ),
            );
        }
    }
    let handlers = node
        .status
        .as_ref()
        .and_then(|s| s.runtime_handlers.as_ref());
    let default_handler = handlers.and_then(|hs| {
        hs.iter()
            .find(|h| h.name.as_deref().unwrap_or_default().is_empty())
    });
    match default_handler
        .and_then(|h| h.features.as_ref())
        .and_then(|f| f.user_namespaces)
    {
        Some(true) => (
            "supported",
            "the container runtime reports user-namespace support".to_string(),
        ),
        Some(false) => (
            "unsupported",
            "the container runtime reports no user-namespace support".to_string(),
        ),
        None => (
            "unknown",
            "the kubelet does not report its runtime's features (status.runtimeHandlers)"
                .to_string(),
        ),
    }
}

/// `6.8.0-45-generic` → (6, 8).
fn kernel_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn node_summary(nodes: Option<&[Node]>) -> NodeSummary {
    let Some(nodes) = nodes else {
        return NodeSummary::default();
    };
    let mut summary = NodeSummary {
        listed: true,
        total: nodes.len(),
        ..NodeSummary::default()
    };
    for support in ["supported", "unsupported", "unknown"] {
        summary.by_support.insert(support, 0);
    }
    for node in nodes {
        let (support, reason) = node_support(node);
        *summary.by_support.entry(support).or_insert(0) += 1;
        let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
        summary.nodes.push(NodeEntry {
            name: name_of(&node.metadata),
            support,
            reason,
            kernel: info.map(|i| i.kernel_version.clone()).unwrap_or_default(),
            runtime: info
                .map(|i| i.container_runtime_version.clone())
                .unwrap_or_default(),
        });
    }
    summary.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::json;

    fn from<T: DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid object")
    }

    fn built_in() -> TableInForce {
        TableInForce::Table {
            table: DriverTable::defaults(),
            source: "the built-in table".to_string(),
        }
    }

    #[rstest::rstest]
    #[case(312, 418, 75)]
    #[case(0, 5, 0)]
    #[case(5, 5, 100)]
    #[case(999, 1000, 99)]
    #[case(1, 1000, 1)]
    #[case(0, 0, 0)]
    fn percent_is_rounded_but_never_claims_all_or_none_wrongly(
        #[case] part: usize,
        #[case] whole: usize,
        #[case] expected: u32,
    ) {
        assert_eq!(percent(part, whole), expected);
    }

    fn node(kernel: &str, os: &str, handlers: serde_json::Value) -> Node {
        let mut status = json!({"nodeInfo": {"kernelVersion": kernel, "operatingSystem": os,
            "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://2.1.0",
            "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "osImage": "", "systemUUID": ""}});
        if !handlers.is_null() {
            status["runtimeHandlers"] = handlers;
        }
        from(json!({"metadata": {"name": "n"}, "status": status}))
    }

    #[rstest::rstest]
    #[case::runtime_says_yes("6.8.0-45-generic", "linux", json!([{"name": "", "features": {"userNamespaces": true}}]), "supported")]
    #[case::runtime_says_no("6.8.0", "linux", json!([{"name": "", "features": {"userNamespaces": false}}]), "unsupported")]
    #[case::old_kernel_whatever_the_runtime_says("6.2.16", "linux", json!([{"name": "", "features": {"userNamespaces": true}}]), "unsupported")]
    #[case::kernel_6_3_is_enough("6.3.0", "linux", json!([{"name": "", "features": {"userNamespaces": true}}]), "supported")]
    #[case::windows("10.0.20348", "windows", serde_json::Value::Null, "unsupported")]
    #[case::kubelet_silent("6.8.0", "linux", serde_json::Value::Null, "unknown")]
    #[case::only_another_handler("6.8.0", "linux", json!([{"name": "kata", "features": {"userNamespaces": true}}]), "unknown")]
    fn node_support_follows_the_kernel_and_the_runtime(
        #[case] kernel: &str,
        #[case] os: &str,
        #[case] handlers: serde_json::Value,
        #[case] expected: &str,
    ) {
        assert_eq!(node_support(&node(kernel, os, handlers)).0, expected);
    }

    fn spec(extra: serde_json::Value) -> serde_json::Value {
        let mut spec = json!({"containers": [{"name": "c", "image": "c"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    }

    fn owned(kind: &str, name: &str, uid: &str) -> serde_json::Value {
        json!([{"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": true}])
    }

    /// Pods are grouped under their top owner and the owner is judged from its template, not
    /// from its pods: here the pods carry a hostNetwork their template does not have.
    #[test]
    fn pods_are_grouped_under_their_top_owner_and_judged_by_its_template() {
        let template = json!({"metadata": {}, "spec": spec(json!({}))});
        let keys = Keys::default();
        let pods: Vec<Pod> = vec![
            from(
                json!({"metadata": {"name": "web-1-x", "namespace": "a", "ownerReferences": owned("ReplicaSet", "web-1", "r1")},
                "spec": spec(json!({"hostNetwork": true}))}),
            ),
            from(
                json!({"metadata": {"name": "nightly-1-y", "namespace": "a", "ownerReferences": owned("Job", "nightly-1", "j1"),
                "annotations": {"userns.io/decision": "audit"}}, "spec": spec(json!({}))}),
            ),
            from(
                json!({"metadata": {"name": "mirror", "namespace": "a", "ownerReferences": owned("Node", "node-1", "n1")},
                "spec": spec(json!({"hostNetwork": true}))}),
            ),
            // Out of scope.
            from(json!({"metadata": {"name": "other", "namespace": "b"}, "spec": spec(json!({}))})),
        ];
        let objects = ClusterObjects {
            workloads: vec![
                ListedWorkload::of_deployment(from(
                    json!({"metadata": {"name": "web", "namespace": "a", "uid": "d1"},
                    "spec": {"selector": {}, "template": template}}),
                )),
                ListedWorkload::of_replica_set(from(
                    json!({"metadata": {"name": "web-1", "namespace": "a", "uid": "r1", "ownerReferences": owned("Deployment", "web", "d1")},
                    "spec": {"selector": {}, "template": template}}),
                )),
                // Its Deployment is not listed: the ReplicaSet is the top owner.
                ListedWorkload::of_replica_set(from(
                    json!({"metadata": {"name": "lone", "namespace": "a", "uid": "r2", "ownerReferences": owned("Deployment", "gone", "d9")},
                    "spec": {"selector": {}, "template": template}}),
                )),
                ListedWorkload::of_cron_job(from(
                    json!({"metadata": {"name": "nightly", "namespace": "a", "uid": "c1"},
                    "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": template}}}}),
                )),
                ListedWorkload::of_job(from(
                    json!({"metadata": {"name": "nightly-1", "namespace": "a", "uid": "j1", "ownerReferences": owned("CronJob", "nightly", "c1")},
                    "spec": {"template": template}}),
                )),
            ],
            pods: pods.iter().map(|p| ListedPod::of(p, &keys)).collect(),
            ..ClusterObjects::default()
        };
        let report = build(objects, &Scope::Namespace("a".into()), &built_in(), &keys);
        let got: Vec<(&str, &str, usize, bool, JudgedFrom)> = report
            .workloads
            .iter()
            .map(|w| {
                (
                    w.kind.as_str(),
                    w.name.as_str(),
                    w.pods,
                    w.can_run,
                    w.judged_from,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("CronJob", "nightly", 1, true, JudgedFrom::Template),
                ("Deployment", "web", 1, true, JudgedFrom::Template),
                ("Node", "node-1", 1, false, JudgedFrom::Pods),
                ("ReplicaSet", "lone", 0, true, JudgedFrom::Template),
            ]
        );
        assert_eq!(
            report.workloads[0].pod_decisions,
            BTreeMap::from([("audit".to_string(), 1)])
        );
        assert_eq!(
            report.summary.text,
            "3 of 4 workloads (75 %) can run with user namespaces; the top blocker is HostNetwork (1)."
        );
    }

    /// A pod this webhook enabled is judged as its author wrote it; a pod whose author set
    /// hostUsers is not.
    #[test]
    fn a_bare_pod_is_judged_without_this_webhooks_own_mutation() {
        let pod = |name: &str, decision: Option<&str>| -> Pod {
            let mut pod = json!({"metadata": {"name": name, "namespace": "a"}, "spec": spec(json!({"hostUsers": false}))});
            if let Some(d) = decision {
                pod["metadata"]["annotations"] = json!({"userns.io/decision": d});
            }
            from(pod)
        };
        let keys = Keys::default();
        let objects = ClusterObjects {
            pods: vec![
                ListedPod::of(&pod("ours", Some("enabled")), &keys),
                ListedPod::of(&pod("theirs", None), &keys),
            ],
            ..ClusterObjects::default()
        };
        let report = build(objects, &Scope::All, &built_in(), &Keys::default());
        let can_run: Vec<(&str, bool)> = report
            .workloads
            .iter()
            .map(|w| (w.name.as_str(), w.can_run))
            .collect();
        assert_eq!(can_run, [("ours", true), ("theirs", false)]);
        assert_eq!(report.workloads[1].reasons[0].code, "HostUsersSet");
    }

    #[test]
    fn no_usable_table_skips_every_workload_as_the_webhook_would() {
        let objects = ClusterObjects {
            pods: vec![ListedPod::of(
                &from(
                    json!({"metadata": {"name": "p", "namespace": "a"}, "spec": spec(json!({}))}),
                ),
                &Keys::default(),
            )],
            ..ClusterObjects::default()
        };
        let table = TableInForce::Unusable {
            reason: "rules[0]: bad".to_string(),
        };
        let report = build(objects, &Scope::All, &table, &Keys::default());
        assert_eq!(report.workloads[0].reasons[0].code, "DriverTableInvalid");
        assert_eq!(report.summary.can_run, 0);
        assert!(
            report
                .driver_table
                .starts_with("none usable (rules[0]: bad)")
        );
    }

    #[test]
    fn one_workload_reads_in_the_singular_and_none_says_where() {
        let objects = ClusterObjects {
            pods: vec![ListedPod::of(
                &from(
                    json!({"metadata": {"name": "p", "namespace": "a"}, "spec": spec(json!({}))}),
                ),
                &Keys::default(),
            )],
            ..ClusterObjects::default()
        };
        let report = build(objects, &Scope::All, &built_in(), &Keys::default());
        assert_eq!(
            report.summary.text,
            "1 of 1 workload (100 %) can run with user namespaces."
        );
        let report = build(
            ClusterObjects::default(),
            &Scope::Namespace("x".into()),
            &built_in(),
            &Keys::default(),
        );
        assert_eq!(report.summary.text, "No workloads found in namespace x.");
    }
}
