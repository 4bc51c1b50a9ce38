//! The one table of pod cases (`tests/cases/pods.yaml`) that the built-in webhook's tests
//! (`tests/pod_cases.rs`) and the Kyverno policies' tests (`tests/kyverno_server.rs`,
//! `tests/kyverno_policies.rs`) share: each case a pod, the claims it refers to with their
//! labels, the webhook's expected decision and, where the policies are allowed to differ, theirs
//! with the reason.
//!
//! [`Table::load`] reads and checks the table: every name unique, every claim a case refers to
//! declared and given the label it is declared with, every blocker code one the webhook knows, an
//! override only where it differs. Bad input is reported with its place (the file, the case or
//! claim by index and name), all problems at once, never as a bare panic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use userns_labeler::capability::BlockerCode;
use userns_labeler::capability::evidence::{Evidence, host_path_key};

use crate::control_plane::{ControlPlane, TestNamespace};

/// The table's path, relative to the repository root.
pub const TABLE: &str = "tests/cases/pods.yaml";

/// The whole table.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Table {
    /// StorageClasses the claims (and ephemeral volumes) name.
    #[serde(default)]
    pub storage_classes: Vec<StorageClassDecl>,
    /// PersistentVolumes the claims are bound to.
    #[serde(default)]
    pub volumes: Vec<VolumeDecl>,
    /// Nodes the pods name in `nodeName`.
    #[serde(default)]
    pub nodes: Vec<NodeDecl>,
    /// Host paths a node could not idmap-mount, as the labeler records them (its evidence
    /// ConfigMap).
    #[serde(default)]
    pub host_path_evidence: Vec<HostPathEvidenceDecl>,
    /// Every claim a case refers to.
    #[serde(default)]
    pub claims: Vec<ClaimDecl>,
    /// The pod cases.
    pub cases: Vec<Case>,
}

/// A namespace of its own for each case with `namespaceLabels`, labelled as the case says;
/// the other cases share one namespace of the test's.
pub struct CaseNamespaces(Vec<(String, TestNamespace)>);

impl CaseNamespaces {
    /// Creates them on `cp` (before a policy engine starts watching namespaces, so that its
    /// cache has the labels).
    pub async fn create(table: &Table, cp: &ControlPlane, admin: &Client) -> CaseNamespaces {
        let mut own = Vec::new();
        for case in table
            .cases
            .iter()
            .filter(|c| !c.namespace_labels.is_empty())
        {
            let namespace = cp.namespace(&case.name).await;
            Api::<Namespace>::all(admin.clone())
                .patch(
                    &namespace,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": case.namespace_labels}})),
                )
                .await
                .unwrap_or_else(|e| panic!("labelling namespace {}: {e}", &*namespace));
            own.push((case.name.clone(), namespace));
        }
        CaseNamespaces(own)
    }

    /// The namespace `case`'s pod is created in: its own, else `shared`.
    pub fn of<'a>(&'a self, case: &Case, shared: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|(name, _)| *name == case.name)
            .map_or(shared, |(_, namespace)| namespace.name())
    }

    /// The cases' own namespaces.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(_, namespace)| namespace.name())
    }
}

/// A StorageClass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageClassDecl {
    /// Its name.
    pub name: String,
    /// Its provisioner (the driver the table judges).
    pub provisioner: String,
    /// Its parameters.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// A PersistentVolume.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeDecl {
    /// Its name.
    pub name: String,
    /// Its spec, as written in a manifest.
    pub spec: Value,
}

/// A Node, reduced to what its kubelet says about user namespaces.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeDecl {
    /// Its name.
    pub name: String,
    /// `status.runtimeHandlers[name=""].features.userNamespaces`.
    pub user_namespaces: bool,
}

/// A host path a node could not idmap-mount: one entry of the labeler's evidence ConfigMap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPathEvidenceDecl {
    /// The host path.
    pub path: String,
    /// The node it failed on.
    pub node: String,
    /// `namespace/name` of the pod that failed.
    pub pod: String,
    /// `runc`, `crun` or `containerd`.
    pub runtime: String,
    /// The runtime's error.
    pub error: String,
}

impl HostPathEvidenceDecl {
    /// The ConfigMap entry the labeler's leader would write: its key and value.
    pub fn entry(&self) -> (String, String) {
        let evidence = Evidence {
            pod: self.pod.clone(),
            node: self.node.clone(),
            time: "2026-01-01T00:00:00Z".into(),
            runtime: self.runtime.clone(),
            error: self.error.clone(),
            path: Some(self.path.clone()),
        };
        (host_path_key(&self.path), evidence.to_json())
    }
}

/// A claim's label `userns.io/idmap-supported`, or `absent`: no such claim in the pods'
/// namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Label {
    /// `true`
    True,
    /// `false`
    False,
    /// `unknown`
    Unknown,
    /// The claim does not exist (in the pods' namespace).
    Absent,
}

impl Label {
    /// The label's value; `None` for [`Label::Absent`].
    pub fn value(self) -> Option<&'static str> {
        match self {
            Label::True => Some("true"),
            Label::False => Some("false"),
            Label::Unknown => Some("unknown"),
            Label::Absent => None,
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.value().unwrap_or("absent"))
    }
}

impl<'de> Deserialize<'de> for Label {
    /// `true`, `false` (as YAML booleans or strings), `unknown` or `absent`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Label, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, unknown or absent")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Label, E> {
                Ok(if v { Label::True } else { Label::False })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Label, E> {
                match v {
                    "true" => Ok(Label::True),
                    "false" => Ok(Label::False),
                    "unknown" => Ok(Label::Unknown),
                    "absent" => Ok(Label::Absent),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A claim: the label it carries and the objects that make the labeler's table reach it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimDecl {
    /// Its name.
    pub name: String,
    /// Its label in the pods' namespace.
    pub label: Label,
    /// How the driver table reaches that label (or why the claim is absent).
    pub why: String,
    /// Its annotations (the provisioner annotation, the override).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Its spec as written in a manifest (without `resources`, which defaults to 1Gi).
    #[serde(default)]
    pub spec: Option<Value>,
    /// For an absent claim: the label it has in another namespace, where it does exist.
    #[serde(default)]
    pub elsewhere: Option<Label>,
}

impl ClaimDecl {
    /// The PersistentVolumeClaim (without a namespace).
    pub fn object(&self) -> Value {
        let mut spec = self.spec.clone().unwrap_or_else(|| json!({}));
        if spec.get("resources").is_none() {
            spec["resources"] = json!({"requests": {"storage": "1Gi"}});
        }
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": self.name, "annotations": self.annotations},
            "spec": spec,
        })
    }
}

impl StorageClassDecl {
    /// The StorageClass.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": self.name},
            "provisioner": self.provisioner,
            "parameters": self.parameters,
        })
    }
}

impl VolumeDecl {
    /// The PersistentVolume.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": self.name},
            "spec": self.spec,
        })
    }
}

impl NodeDecl {
    /// The Node, Linux, with the default runtime handler reporting [`NodeDecl::user_namespaces`]
    /// as kubelet 1.30+ does.
    pub fn object(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": {"kubernetes.io/os": "linux"}},
            "status": {"runtimeHandlers": [{
                "name": "",
                "features": {"recursiveReadOnlyMounts": true, "userNamespaces": self.user_namespaces},
            }]},
        })
    }
}

/// What a decision is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// `hostUsers: false` set, decision annotation `enabled`.
    Enabled,
    /// Left as written (the webhook records `skipped` and the blockers; the policies record
    /// nothing).
    Skipped,
    /// Not decided at all: no decision annotation, the pod exactly as written (opt-out).
    Untouched,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Enabled => "enabled",
            Decision::Skipped => "skipped",
            Decision::Untouched => "untouched",
        })
    }
}

/// An expected decision and, when skipped, its blocker codes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// The decision.
    pub decision: Decision,
    /// The webhook: every code its decision-reason names. The policies: the codes the
    /// ClusterPolicy may name (its first failing precondition is one of them).
    #[serde(default)]
    pub blockers: Vec<String>,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.blockers.is_empty() {
            write!(f, "{}", self.decision)
        } else {
            write!(f, "{} ({})", self.decision, self.blockers.join(", "))
        }
    }
}

/// The policies' expected decision where they are allowed to differ from the webhook.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    /// The decision.
    pub decision: Decision,
    /// The codes the ClusterPolicy may name.
    #[serde(default)]
    pub blockers: Vec<String>,
    /// Why they may differ.
    pub why: String,
}

/// One pod case.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Case {
    /// The case's name, also the pod's.
    pub name: String,
    /// What it proves, in one sentence.
    pub proves: String,
    /// Each claim the pod's volumes name, with its label.
    #[serde(default)]
    pub claims: BTreeMap<String, Label>,
    /// The pod's labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The labels of the pod's namespace (such a case names no claims).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// A PodSpec fragment; `containers` defaults to one plain container.
    pub pod: Value,
    /// The built-in webhook's decision.
    pub webhook: Expected,
    /// The Kyverno policies' decision, where it is allowed to differ.
    #[serde(default)]
    pub policies: Option<PolicyOverride>,
}

impl Case {
    /// The pod (without a namespace): the fragment as its spec, with one container `app` unless
    /// the fragment has containers, and the case's labels.
    pub fn pod(&self) -> Value {
        let mut spec = self.pod.as_object().cloned().unwrap_or_default();
        spec.entry("containers")
            .or_insert_with(|| json!([{"name": "app", "image": "registry.example/app:1"}]));
        let mut metadata = Map::new();
        metadata.insert("name".into(), json!(self.name));
        if !self.labels.is_empty() {
            metadata.insert("labels".into(), json!(self.labels));
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    }

    /// The claim names the pod's `persistentVolumeClaim` volumes give, in order, repeats kept.
    pub fn claim_names(&self) -> Vec<&str> {
        self.pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .collect()
    }

    /// What the Kyverno policies must do: the override, else the webhook's decision.
    pub fn policies_expect(&self) -> Expected {
        match &self.policies {
            Some(p) => Expected {
                decision: p.decision,
                blockers: p.blockers.clone(),
            },
            None => self.webhook.clone(),
        }
    }

    /// `hostUsers` as the author wrote it.
    pub fn written_host_users(&self) -> Option<bool> {
        self.pod["hostUsers"].as_bool()
    }
}

impl Table {
    /// Reads and checks [`TABLE`]; panics with every problem, located, if it is not valid.
    pub fn load() -> Table {
        let path = crate::repo_root().join(TABLE);
        Table::read(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Reads and checks the table at `path`.
    pub fn read(path: &Path) -> Result<Table, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Table::parse(&text, &path.display().to_string())
    }

    /// Parses and checks a table; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Table, String> {
        let table: Table =
            serde_saphyr::from_str(text).map_err(|e| format!("{origin}: not a case table: {e}"))?;
        let problems = table.problems();
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(format!(
                "{origin}: {} problem(s):\n  {}",
                problems.len(),
                problems.join("\n  ")
            ))
        }
    }

    /// The claim declared as `name`.
    pub fn claim(&self, name: &str) -> Option<&ClaimDecl> {
        self.claims.iter().find(|c| c.name == name)
    }

    /// The claims that exist in the pods' namespace (label not absent).
    pub fn present_claims(&self) -> impl Iterator<Item = &ClaimDecl> {
        self.claims.iter().filter(|c| c.label != Label::Absent)
    }

    /// The claims that exist only in another namespace, with their label there.
    pub fn claims_elsewhere(&self) -> impl Iterator<Item = (&ClaimDecl, Label)> {
        self.claims
            .iter()
            .filter_map(|c| c.elsewhere.map(|label| (c, label)))
    }

    /// Every problem of the table, each with its place.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let known_codes: BTreeSet<&str> = BlockerCode::ALL.iter().map(|c| c.as_str()).collect();

        unique_names(
            "storageClasses",
            self.storage_classes.iter().map(|c| &c.name),
            &mut out,
        );
        unique_names("volumes", self.volumes.iter().map(|v| &v.name), &mut out);
        unique_names("nodes", self.nodes.iter().map(|n| &n.name), &mut out);
        unique_names("claims", self.claims.iter().map(|c| &c.name), &mut out);
        unique_names("cases", self.cases.iter().map(|c| &c.name), &mut out);
        let classes: BTreeSet<&str> = self
            .storage_classes
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let nodes: BTreeSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();

        for (i, evidence) in self.host_path_evidence.iter().enumerate() {
            if !evidence.path.starts_with('/') {
                out.push(format!(
                    "hostPathEvidence[{i}] `{}`: not an absolute path",
                    evidence.path
                ));
            }
        }

        for (i, claim) in self.claims.iter().enumerate() {
            let at = format!("claims[{i}] `{}`", claim.name);
            if claim.why.trim().is_empty() {
                out.push(format!("{at}: `why` is empty"));
            }
            let exists_somewhere = claim.label != Label::Absent || claim.elsewhere.is_some();
            match (&claim.spec, exists_somewhere) {
                (None, true) => out.push(format!("{at}: a claim that exists needs a `spec`")),
                (Some(_), false) => out.push(format!(
                    "{at}: an absent claim without `elsewhere` is never created; drop its `spec`"
                )),
                (Some(spec), true) => {
                    if !spec.is_object() {
                        out.push(format!("{at}: `spec` is not a mapping"));
                    } else if !spec["accessModes"].is_array() {
                        out.push(format!(
                            "{at}: `spec.accessModes` is missing (the verdict may depend on it)"
                        ));
                    }
                    if let Some(class) = spec["storageClassName"].as_str()
                        && !class.is_empty()
                        && !classes.contains(class)
                    {
                        out.push(format!(
                            "{at}: storageClassName `{class}` is not declared under storageClasses"
                        ));
                    }
                }
                (None, false) => {}
            }
            match (claim.label, claim.elsewhere) {
                (Label::Absent, Some(Label::Absent)) => {
                    out.push(format!("{at}: `elsewhere` must be a label, not absent"))
                }
                (Label::Absent, _) | (_, None) => {}
                (_, Some(_)) => out.push(format!(
                    "{at}: `elsewhere` is for absent claims (this one exists here)"
                )),
            }
            if !self
                .cases
                .iter()
                .any(|c| c.claims.contains_key(&claim.name))
            {
                out.push(format!("{at}: no case refers to it"));
            }
        }

        for (i, case) in self.cases.iter().enumerate() {
            let at = format!("cases[{i}] `{}`", case.name);
            if !is_dns_label(&case.name) {
                out.push(format!(
                    "{at}: the name is the pod's, so it must be a DNS label (a-z, 0-9, '-', at most 63)"
                ));
            }
            if case.proves.trim().is_empty() {
                out.push(format!("{at}: `proves` is empty"));
            }
            let Some(spec) = case.pod.as_object() else {
                out.push(format!("{at}: `pod` is not a mapping (a PodSpec fragment)"));
                continue;
            };
            for key in ["metadata", "labels", "spec"] {
                if spec.contains_key(key) {
                    out.push(format!(
                        "{at}: `pod` is a PodSpec fragment; `{key}` does not belong there \
                         (the pod's labels are the case's `labels`)"
                    ));
                }
            }
            if let Some(node) = spec.get("nodeName").and_then(Value::as_str)
                && !nodes.contains(node)
            {
                out.push(format!(
                    "{at}: nodeName `{node}` is not declared under nodes"
                ));
            }
            for volume in spec
                .get("volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let template = &volume["ephemeral"]["volumeClaimTemplate"]["spec"];
                if let Some(class) = template["storageClassName"].as_str()
                    && !classes.contains(class)
                {
                    out.push(format!(
                        "{at}: volume {}: storageClassName `{class}` is not declared under storageClasses",
                        volume["name"]
                    ));
                }
            }

            // The claims the pod names, and the labels the case gives them.
            let named: BTreeSet<&str> = case.claim_names().into_iter().collect();
            let listed: BTreeSet<&str> = case.claims.keys().map(String::as_str).collect();
            for name in named.difference(&listed) {
                out.push(format!(
                    "{at}: the pod names claim `{name}`, which `claims` does not list with its label"
                ));
            }
            for name in listed.difference(&named) {
                out.push(format!(
                    "{at}: `claims` lists `{name}`, which no persistentVolumeClaim volume of the pod names"
                ));
            }
            for (name, label) in &case.claims {
                match self.claim(name) {
                    None => out.push(format!("{at}: claim `{name}` is not declared under claims")),
                    Some(decl) if decl.label != *label => out.push(format!(
                        "{at}: claim `{name}` is listed as {label}, but declared {}",
                        decl.label
                    )),
                    Some(_) => {}
                }
            }
            if !case.namespace_labels.is_empty() && !case.claims.is_empty() {
                out.push(format!(
                    "{at}: a case with namespaceLabels runs in a namespace of its own, without the \
                     table's claims; it cannot name claims"
                ));
            }

            check_expected(&at, "webhook", &case.webhook, &known_codes, &mut out);
            if let Some(p) = &case.policies {
                let expected = case.policies_expect();
                check_expected(&at, "policies", &expected, &known_codes, &mut out);
                if p.why.trim().is_empty() {
                    out.push(format!("{at}: policies: `why` is empty"));
                }
                let same = expected.decision == case.webhook.decision
                    && sorted(&expected.blockers) == sorted(&case.webhook.blockers);
                if same {
                    out.push(format!(
                        "{at}: policies: the same as the webhook's; list an override only where \
                         the policies differ"
                    ));
                }
            }
        }
        out
    }
}

fn sorted(codes: &[String]) -> Vec<&str> {
    let mut out: Vec<&str> = codes.iter().map(String::as_str).collect();
    out.sort_unstable();
    out
}

fn check_expected(
    at: &str,
    whose: &str,
    expected: &Expected,
    known: &BTreeSet<&str>,
    out: &mut Vec<String>,
) {
    match (expected.decision, expected.blockers.is_empty()) {
        (Decision::Skipped, true) => out.push(format!(
            "{at}: {whose}: skipped, but no blocker code is given"
        )),
        (Decision::Enabled | Decision::Untouched, false) => out.push(format!(
            "{at}: {whose}: {} takes no blocker codes",
            expected.decision
        )),
        _ => {}
    }
    let mut seen = BTreeSet::new();
    for code in &expected.blockers {
        if !known.contains(code.as_str()) {
            out.push(format!(
                "{at}: {whose}: `{code}` is not a blocker code (README: {})",
                known.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        if !seen.insert(code) {
            out.push(format!("{at}: {whose}: `{code}` is given twice"));
        }
    }
}

fn unique_names<'a>(section: &str, names: impl Iterator<Item = &'a String>, out: &mut Vec<String>) {
    let mut seen = BTreeMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name.as_str(), i) {
            out.push(format!(
                "{section}[{i}] `{name}`: the name is already used by {section}[{first}]"
            ));
        }
    }
}

/// A DNS-1123 label: what a pod's name must be here.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// The blocker codes a `userns.io/decision-reason` names, in order: the reason is
/// `Code: sentence; Code: sentence…`, so a code counts only at the start of an item.
pub fn named_blockers(reason: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut rest = reason;
    loop {
        if let Some(code) = BlockerCode::ALL
            .iter()
            .map(|c| c.as_str())
            .find(|c| rest.strip_prefix(c).is_some_and(|r| r.starts_with(':')))
        {
            out.push(code);
        }
        match rest.find("; ") {
            Some(at) => rest = &rest[at + 2..],
            None => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
claims:
  - name: db
    label: true
    why: ebs
    annotations: {volume.kubernetes.io/storage-provisioner: ebs.csi.aws.com}
    spec: {storageClassName: "", accessModes: [ReadWriteOnce]}
cases:
  - name: claim-true
    proves: a true claim enables
    claims: {db: true}
    pod:
      volumes: [{name: data, persistentVolumeClaim: {claimName: db}}]
    webhook: {decision: enabled}
"#;

    fn problems_of(text: &str) -> String {
        Table::parse(text, "t.yaml").expect_err("the table must be refused")
    }

    #[test]
    fn the_shipped_table_is_valid() {
        let table = Table::load();
        assert!(table.cases.len() >= 40, "{} cases", table.cases.len());
    }

    #[test]
    fn a_valid_table_builds_its_pods_and_claims() {
        let table = Table::parse(SMALL, "t.yaml").unwrap();
        let case = &table.cases[0];
        assert_eq!(case.claim_names(), ["db"]);
        let pod = case.pod();
        assert_eq!(pod["metadata"]["name"], "claim-true");
        assert_eq!(pod["spec"]["containers"][0]["name"], "app");
        assert_eq!(case.policies_expect(), case.webhook);
        let claim = table.claim("db").unwrap().object();
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "1Gi");
        assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    }

    #[test]
    fn a_duplicate_case_name_is_refused_with_both_places() {
        let text = format!(
            "{SMALL}  - name: claim-true\n    proves: again\n    pod: {{}}\n    webhook: {{decision: enabled}}\n"
        );
        let e = problems_of(&text);
        assert!(
            e.contains("cases[1] `claim-true`: the name is already used by cases[0]"),
            "{e}"
        );
    }

    #[test]
    fn a_claim_the_pod_names_but_the_table_does_not_declare_is_refused() {
        let text = SMALL.replace("claimName: db", "claimName: other");
        let e = problems_of(&text);
        assert!(e.contains("t.yaml:"), "{e}");
        assert!(
            e.contains("cases[0] `claim-true`: the pod names claim `other`"),
            "{e}"
        );
        assert!(e.contains("`claims` lists `db`, which no"), "{e}");
    }

    #[test]
    fn a_case_listing_an_undeclared_claim_is_refused() {
        let text = SMALL
            .replace("claimName: db", "claimName: ghost")
            .replace("claims: {db: true}", "claims: {ghost: true}");
        let e = problems_of(&text);
        assert!(
            e.contains("cases[0] `claim-true`: claim `ghost` is not declared under claims"),
            "{e}"
        );
        assert!(e.contains("claims[0] `db`: no case refers to it"), "{e}");
    }

    #[test]
    fn a_label_other_than_the_declared_one_is_refused() {
        let e = problems_of(&SMALL.replace("claims: {db: true}", "claims: {db: unknown}"));
        assert!(
            e.contains("claim `db` is listed as unknown, but declared true"),
            "{e}"
        );
    }

    #[test]
    fn unknown_blocker_codes_and_inconsistent_decisions_are_refused() {
        let e = problems_of(&SMALL.replace(
            "webhook: {decision: enabled}",
            "webhook: {decision: skipped, blockers: [ClaimIsBad]}",
        ));
        assert!(e.contains("`ClaimIsBad` is not a blocker code"), "{e}");
        let e = problems_of(&SMALL.replace(
            "webhook: {decision: enabled}",
            "webhook: {decision: skipped}",
        ));
        assert!(e.contains("webhook: skipped, but no blocker code"), "{e}");
    }

    #[test]
    fn a_policies_override_equal_to_the_webhook_is_refused() {
        let e = problems_of(&SMALL.replace(
            "webhook: {decision: enabled}",
            "webhook: {decision: enabled}\n    policies: {decision: enabled, why: same}",
        ));
        assert!(e.contains("policies: the same as the webhook's"), "{e}");
    }

    #[test]
    fn malformed_yaml_and_unknown_fields_are_refused_not_panicked_on() {
        let e = problems_of("cases: [");
        assert!(e.starts_with("t.yaml: not a case table"), "{e}");
        let e = problems_of(&SMALL.replace("proves:", "prove:"));
        assert!(e.contains("prove"), "{e}");
        let e = problems_of(&SMALL.replace("label: true", "label: maybe"));
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn named_blockers_reads_codes_only_at_the_start_of_each_item() {
        let reason = "HostUsersSet: spec.hostUsers is already set to false by the pod's author; \
                      ClaimNotSupported: volume media: claim nfs (driver nfs.csi.k8s.io) cannot \
                      be idmap-mounted: NFS volumes cannot be idmapped, unlike HostNetwork: x";
        assert_eq!(
            named_blockers(reason),
            ["HostUsersSet", "ClaimNotSupported"]
        );
        assert!(named_blockers("no host namespaces, devices or volumes").is_empty());
    }
}
