//! Workloads: the pods a Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,
//! Job, CronJob or PodTemplate would create, decided through their pod template as the webhook
//! would decide each pod; a StatefulSet's `volumeClaimTemplates` judged as the claims it will
//! create. Pure: objects in, decisions out. Used by `explain` (manifests) and `report` (a
//! cluster).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, Pod, PodTemplate, PodTemplateSpec, ReplicationController,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{
    PodDecision, PodFacts, PodVolume, SpecFacts, VolumeSource, decide, pod_namespace,
};
use super::pruned::{PrunedClaim, PrunedClass, PrunedVolume};
use super::resolve::ClusterView;
use super::table::DriverTable;
use crate::keys::Keys;

/// The kinds whose pods are decided: a pod itself, or an object with a pod template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    ReplicationController,
    Job,
    CronJob,
    PodTemplate,
}

impl WorkloadKind {
    pub const ALL: [WorkloadKind; 9] = [
        WorkloadKind::Pod,
        WorkloadKind::Deployment,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::ReplicaSet,
        WorkloadKind::ReplicationController,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::PodTemplate,
    ];

    /// The manifest's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "Pod",
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::ReplicationController => "ReplicationController",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::PodTemplate => "PodTemplate",
        }
    }

    pub fn parse(kind: &str) -> Option<WorkloadKind> {
        WorkloadKind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// kubectl's lower-case resource name, as in `deployment/web`.
    pub fn resource(self) -> &'static str {
        match self {
            WorkloadKind::Pod => "pod",
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::ReplicaSet => "replicaset",
            WorkloadKind::ReplicationController => "replicationcontroller",
            WorkloadKind::Job => "job",
            WorkloadKind::CronJob => "cronjob",
            WorkloadKind::PodTemplate => "podtemplate",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pod, or an object that creates pods from a template, reduced to what the decision reads.
#[derive(Clone, Debug)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    /// The object's name (a pod with only `generateName` is named by it).
    pub name: String,
    /// What the decision reads of the pod itself, or of the pod the template makes (which has
    /// no name: it is generated).
    pub pod: PodFacts<'static>,
    /// A StatefulSet's `volumeClaimTemplates`, each in the StatefulSet's namespace and named as
    /// the template (`data`), not as the claims made from it (`data-web-0`).
    pub claim_templates: Vec<PersistentVolumeClaim>,
    /// A StatefulSet's `replicas` (unset: 1): the ordinals whose claims may already exist.
    pub replicas: i32,
}

impl Workload {
    /// A pod as written.
    pub fn of_pod(pod: Pod) -> Workload {
        let namespace = pod_namespace(&pod.metadata).to_string();
        let name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone())
            .unwrap_or_else(|| "<unnamed>".to_string());
        Workload {
            kind: WorkloadKind::Pod,
            namespace,
            name,
            pod: PodFacts::of(&pod).into_owned(),
            claim_templates: Vec::new(),
            replicas: 1,
        }
    }

    /// The workload of an object with a pod template (`None` for the template: `template: {}`,
    /// which gives a pod without a spec, blocked as the webhook would block it).
    fn of_template(
        kind: WorkloadKind,
        meta: &ObjectMeta,
        template: Option<PodTemplateSpec>,
    ) -> Workload {
        let namespace = pod_namespace(meta).to_string();
        let name = meta
            .name
            .clone()
            .or_else(|| meta.generate_name.clone())
            .unwrap_or_else(|| "<unnamed>".to_string());
        // A template's own namespace and name are ignored by the controllers: the pod is made
        // in the workload's namespace, under a generated name.
        let spec = template.as_ref().and_then(|t| t.spec.as_ref());
        Workload {
            kind,
            namespace,
            name,
            pod: PodFacts {
                name: None,
                spec: spec.map(|s| SpecFacts::of(s).into_owned()),
            },
            claim_templates: Vec::new(),
            replicas: 1,
        }
    }

    pub fn of_deployment(object: Deployment) -> Workload {
        let template = object.spec.map(|s| s.template);
        Workload::of_template(WorkloadKind::Deployment, &object.metadata, template)
    }

    pub fn of_stateful_set(object: StatefulSet) -> Workload {
        let namespace = pod_namespace(&object.metadata).to_string();
        let (template, claim_templates, replicas) = match object.spec {
            Some(spec) => (
                Some(spec.template),
                spec.volume_claim_templates.unwrap_or_default(),
                spec.replicas.unwrap_or(1),
            ),
            None => (None, Vec::new(), 1),
        };
        let mut workload =
            Workload::of_template(WorkloadKind::StatefulSet, &object.metadata, template);
        workload.claim_templates = claim_templates
            .into_iter()
            .map(|mut claim| {
                claim.metadata.namespace = Some(namespace.clone());
                claim.status = None;
                claim
            })
            .collect();
        workload.replicas = replicas.max(0);
        workload
    }

    pub fn of_daemon_set(object: DaemonSet) -> Workload {
        let template = object.spec.map(|s| s.template);
        Workload::of_template(WorkloadKind::DaemonSet, &object.metadata, template)
    }

    pub fn of_replica_set(object: ReplicaSet) -> Workload {
        let template = object.spec.and_then(|s| s.template);
        Workload::of_template(WorkloadKind::ReplicaSet, &object.metadata, template)
    }

    pub fn of_replication_controller(object: ReplicationController) -> Workload {
        let template = object.spec.and_then(|s| s.template);
        Workload::of_template(
            WorkloadKind::ReplicationController,
            &object.metadata,
            template,
        )
    }

    pub fn of_job(object: Job) -> Workload {
        let template = object.spec.map(|s| s.template);
        Workload::of_template(WorkloadKind::Job, &object.metadata, template)
    }

    pub fn of_cron_job(object: CronJob) -> Workload {
        let template = object
            .spec
            .and_then(|s| s.job_template.spec)
            .map(|s| s.template);
        Workload::of_template(WorkloadKind::CronJob, &object.metadata, template)
    }

    pub fn of_pod_template(object: PodTemplate) -> Workload {
        Workload::of_template(WorkloadKind::PodTemplate, &object.metadata, object.template)
    }

    /// `deployment/web`, as kubectl names objects.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.kind.resource(), self.name)
    }

    /// The claim a StatefulSet makes from `template` for pod ordinal `ordinal`:
    /// `<template>-<statefulset>-<ordinal>`, with the template's labels, annotations and spec.
    pub fn claim_for_ordinal(
        &self,
        template: &PersistentVolumeClaim,
        ordinal: i32,
    ) -> PersistentVolumeClaim {
        let template_name = template.metadata.name.as_deref().unwrap_or_default();
        let mut claim = template.clone();
        claim.metadata.name = Some(format!("{template_name}-{}-{ordinal}", self.name));
        claim.metadata.namespace = Some(self.namespace.clone());
        claim
    }

    /// The pod a StatefulSet makes for `ordinal`: named `<statefulset>-<ordinal>`, each claim
    /// template mounted as its ordinal's claim (replacing a pod volume of the same name, as the
    /// StatefulSet controller does).
    fn pod_for_ordinal(&self, ordinal: i32) -> PodFacts<'static> {
        let mut pod = self.pod.clone();
        pod.name = Some(Cow::Owned(format!("{}-{ordinal}", self.name)));
        if let Some(spec) = pod.spec.as_mut() {
            for template in &self.claim_templates {
                let name = template.metadata.name.clone().unwrap_or_default();
                let claim = self.claim_for_ordinal(template, ordinal);
                let volume = PodVolume {
                    name: Cow::Owned(name.clone()),
                    source: VolumeSource::Claim(Cow::Owned(
                        claim.metadata.name.unwrap_or_default(),
                    )),
                };
                match spec.volumes.iter_mut().find(|v| v.name == name) {
                    Some(existing) => *existing = volume,
                    None => spec.volumes.push(volume),
                }
            }
        }
        pod
    }
}

/// Decides a workload as the webhook would decide the pods it creates.
///
/// A pod, or a template, is decided once. A StatefulSet's pod mounts the claims made from its
/// templates: a claim that already exists in the view is judged as it is (it is what the pod will
/// mount, bound volume and all); one that does not is judged as the template will create it.
/// Ordinal 0 is always decided, and every other ordinal up to `replicas` whose claim exists; the
/// blockers of all of them are kept, each distinct sentence once.
pub fn decide_workload<V: ClusterView + ?Sized>(
    workload: &Workload,
    view: &V,
    table: &DriverTable,
    keys: &Keys,
) -> PodDecision {
    if workload.kind != WorkloadKind::StatefulSet || workload.claim_templates.is_empty() {
        return decide(&workload.pod, &workload.namespace, view, table, keys);
    }
    let mut merged = PodDecision::default();
    for ordinal in 0..workload.replicas.max(1) {
        let mut planned = HashMap::new();
        let mut any_exists = false;
        for template in &workload.claim_templates {
            let claim = workload.claim_for_ordinal(template, ordinal);
            let name = claim.metadata.name.clone().unwrap_or_default();
            if view.claim(&workload.namespace, &name).is_some() {
                any_exists = true;
            } else {
                planned.insert(name, Arc::new(PrunedClaim::from(&claim)));
            }
        }
        if ordinal > 0 && !any_exists {
            continue;
        }
        let view = WithPlannedClaims {
            base: view,
            namespace: &workload.namespace,
            planned,
        };
        let pod = workload.pod_for_ordinal(ordinal);
        let decision = decide(&pod, &workload.namespace, &view, table, keys);
        merged.volumes_checked = merged.volumes_checked.max(decision.volumes_checked);
        for blocker in decision.blockers {
            if !merged.blockers.iter().any(|b| b.message == blocker.message) {
                merged.blockers.push(blocker);
            }
        }
        merged.awaited.extend(decision.awaited);
    }
    merged
}

/// A view with the claims a StatefulSet is about to create added to those that exist.
struct WithPlannedClaims<'a, V: ?Sized> {
    base: &'a V,
    namespace: &'a str,
    planned: HashMap<String, Arc<PrunedClaim>>,
}

impl<V: ClusterView + ?Sized> ClusterView for WithPlannedClaims<'_, V> {
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PrunedClaim>> {
        self.base.claim(namespace, name).or_else(|| {
            (namespace == self.namespace)
                .then(|| self.planned.get(name).cloned())
                .flatten()
        })
    }

    fn volume(&self, name: &str) -> Option<Arc<PrunedVolume>> {
        self.base.volume(name)
    }

    fn storage_class(&self, name: &str) -> Option<Arc<PrunedClass>> {
        self.base.storage_class(name)
    }

    fn default_storage_class(&self) -> Option<Arc<PrunedClass>> {
        self.base.default_storage_class()
    }
}
