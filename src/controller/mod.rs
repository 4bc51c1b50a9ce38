//! The labelling controller: keeps `<prefix>/idmap-supported` and its reason/driver annotations
//! correct on every PVC and PV. A thin I/O shell around the capability engine: it reads the shared
//! caches, applies our keys by server-side apply under one field manager, and writes only when
//! the desired values differ from what the object carries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

use crate::cache::Caches;
use crate::capability::{DriverTable, VolumeVerdict, resolve_claim, resolve_volume};
use crate::keys::Keys;
use crate::metrics::{ControllerMetrics, FailureLabels, KindLabels};

/// The one field manager under which all our labels and annotations are applied.
pub const FIELD_MANAGER: &str = "userns-labeler";

/// Everything a reconciliation needs, shared by both controllers.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub table: watch::Receiver<Arc<DriverTable>>,
    pub keys: Keys,
    /// Only the lease holder writes; other replicas keep caches warm and serve the webhook.
    pub leader: Arc<AtomicBool>,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("applying labels to {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("{kind} without a name or namespace")]
    Unnamed { kind: &'static str },
}

impl ControllerError {
    /// A bounded metric label.
    pub fn category(&self) -> &'static str {
        match self {
            ControllerError::Apply {
                source: kube::Error::Api(status),
                ..
            } if status.code == 404 => "not_found",
            ControllerError::Apply {
                source: kube::Error::Api(status),
                ..
            } if status.code == 403 => "forbidden",
            ControllerError::Apply {
                source: kube::Error::Api(status),
                ..
            } if status.code == 409 => "conflict",
            ControllerError::Apply {
                source: kube::Error::Api(_),
                ..
            } => "api_error",
            ControllerError::Apply { .. } => "transport",
            ControllerError::Unnamed { .. } => "invalid_object",
        }
    }
}

/// The values of our keys an object should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredKeys {
    pub label: &'static str,
    pub reason: String,
    pub driver: Option<String>,
}

impl DesiredKeys {
    pub fn from_verdict(verdict: &VolumeVerdict) -> DesiredKeys {
        DesiredKeys {
            label: verdict.verdict.as_str(),
            reason: verdict.reason.clone(),
            driver: verdict.driver.clone(),
        }
    }

    /// Whether `meta` already carries exactly these values.
    pub fn is_current(&self, meta: &ObjectMeta, keys: &Keys) -> bool {
        let label = meta.labels.as_ref().and_then(|l| l.get(&keys.supported));
        let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k));
        label.map(String::as_str) == Some(self.label)
            && annotation(&keys.reason) == Some(&self.reason)
            && annotation(&keys.driver) == self.driver.as_ref()
    }

    /// The metadata of a server-side apply patch holding only our keys. A key we owned and now
    /// leave out (the driver, when none is known) is removed by the API server.
    fn apply_metadata(&self, keys: &Keys) -> serde_json::Value {
        let mut annotations = BTreeMap::from([(keys.reason.clone(), self.reason.clone())]);
        if let Some(driver) = &self.driver {
            annotations.insert(keys.driver.clone(), driver.clone());
        }
        json!({
            "labels": {keys.supported.clone(): self.label},
            "annotations": annotations,
        })
    }
}

/// Reconciles one claim.
#[instrument(skip_all, fields(claim = %format!("{}/{}", claim.namespace().unwrap_or_default(), claim.name_any())))]
pub async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    ctx.metrics
        .reconciles
        .get_or_create(&KindLabels { kind: "claim" })
        .inc();
    if !ctx.leader.load(Ordering::Acquire) {
        return Ok(Action::await_change());
    }
    let table = ctx.table.borrow().clone();
    let verdict = resolve_claim(&claim, &ctx.caches, &table, &ctx.keys);
    let desired = DesiredKeys::from_verdict(&verdict);
    if desired.is_current(&claim.metadata, &ctx.keys) {
        return Ok(Action::await_change());
    }
    let (Some(namespace), Some(name)) = (
        claim.metadata.namespace.as_deref(),
        claim.metadata.name.as_deref(),
    ) else {
        return Err(ControllerError::Unnamed { kind: "claim" });
    };
    let patch = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
    });
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    apply(&api, name, patch, &desired, &ctx.keys)
        .await
        .map_err(|source| ControllerError::Apply {
            kind: "claim",
            name: format!("{namespace}/{name}"),
            source,
        })?;
    ctx.metrics
        .writes
        .get_or_create(&KindLabels { kind: "claim" })
        .inc();
    announce_change(&ctx, claim.as_ref(), &desired).await;
    Ok(Action::await_change())
}

/// Reconciles one volume, from its own spec.
#[instrument(skip_all, fields(volume = %volume.name_any()))]
pub async fn reconcile_volume(
    volume: Arc<PersistentVolume>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    ctx.metrics
        .reconciles
        .get_or_create(&KindLabels { kind: "volume" })
        .inc();
    if !ctx.leader.load(Ordering::Acquire) {
        return Ok(Action::await_change());
    }
    let table = ctx.table.borrow().clone();
    let verdict = resolve_volume(&volume, &ctx.caches, &table, &ctx.keys);
    let desired = DesiredKeys::from_verdict(&verdict);
    if desired.is_current(&volume.metadata, &ctx.keys) {
        return Ok(Action::await_change());
    }
    let Some(name) = volume.metadata.name.as_deref() else {
        return Err(ControllerError::Unnamed { kind: "volume" });
    };
    let patch = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
    });
    let api: Api<PersistentVolume> = Api::all(ctx.client.clone());
    apply(&api, name, patch, &desired, &ctx.keys)
        .await
        .map_err(|source| ControllerError::Apply {
            kind: "volume",
            name: name.to_string(),
            source,
        })?;
    ctx.metrics
        .writes
        .get_or_create(&KindLabels { kind: "volume" })
        .inc();
    announce_change(&ctx, volume.as_ref(), &desired).await;
    Ok(Action::await_change())
}

async fn apply<K>(
    api: &Api<K>,
    name: &str,
    mut patch: serde_json::Value,
    desired: &DesiredKeys,
    keys: &Keys,
) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let (Some(meta), serde_json::Value::Object(ours)) = (
        patch["metadata"].as_object_mut(),
        desired.apply_metadata(keys),
    ) {
        meta.extend(ours);
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_metadata(name, &params, &Patch::Apply(&patch))
        .await
        .map(|_| ())
}

/// An Event when the label value changes (not on first labelling, which would flood a new
/// cluster with one event per claim).
async fn announce_change<K>(ctx: &Context, object: &K, desired: &DesiredKeys)
where
    K: Resource<DynamicType = ()>,
{
    let old = object
        .meta()
        .labels
        .as_ref()
        .and_then(|l| l.get(&ctx.keys.supported))
        .cloned();
    let Some(old) = old.filter(|old| old != desired.label) else {
        return;
    };
    let kind = K::kind(&());
    info!(%kind, name = %object.meta().name.as_deref().unwrap_or_default(), from = %old, to = desired.label, reason = %desired.reason, "idmap label changed");
    let mut note = format!(
        "{} changed from {old} to {}: {}",
        ctx.keys.supported, desired.label, desired.reason
    );
    truncate(&mut note, 1000);
    let event = Event {
        type_: EventType::Normal,
        reason: "IdmapSupportChanged".to_string(),
        note: Some(note),
        action: "Relabel".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        warn!(error = %e, "could not publish the label-change event");
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary (Event notes are bounded).
pub(crate) fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Requeues a failed object with a delay; the error is logged and counted by category.
pub fn error_policy<K>(_object: Arc<K>, error: &ControllerError, ctx: Arc<Context>) -> Action {
    let kind = match error {
        ControllerError::Apply { kind, .. } | ControllerError::Unnamed { kind } => *kind,
    };
    ctx.metrics
        .failures
        .get_or_create(&FailureLabels {
            kind,
            category: error.category(),
        })
        .inc();
    warn!(%error, category = error.category(), "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// A PV's claim, through `spec.claimRef`.
pub fn volume_to_claim(volume: &PersistentVolume) -> Option<ObjectRef<PersistentVolumeClaim>> {
    let claim_ref = volume.spec.as_ref()?.claim_ref.as_ref()?;
    Some(ObjectRef::new(claim_ref.name.as_deref()?).within(claim_ref.namespace.as_deref()?))
}

/// The claims a StorageClass change can affect: those naming it, and those naming no class
/// (the default class may have moved).
pub fn class_to_claims(
    class: &StorageClass,
    claims: &Store<PersistentVolumeClaim>,
) -> Vec<ObjectRef<PersistentVolumeClaim>> {
    let name = class.metadata.name.as_deref().unwrap_or_default();
    claims
        .state()
        .iter()
        .filter(|c| {
            let class_name = c
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref());
            class_name.is_none() || class_name == Some(name)
        })
        .map(|c| ObjectRef::from_obj(c.as_ref()))
        .collect()
}

/// The volumes of a StorageClass.
pub fn class_to_volumes(
    class: &StorageClass,
    volumes: &Store<PersistentVolume>,
) -> Vec<ObjectRef<PersistentVolume>> {
    let name = class.metadata.name.as_deref().unwrap_or_default();
    volumes
        .state()
        .iter()
        .filter(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.storage_class_name.as_deref())
                == Some(name)
        })
        .map(|v| ObjectRef::from_obj(v.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Caches;
    use crate::capability::Verdict;
    use userns_labeler_test_support::fixtures::{claim, class, volume};

    #[test]
    fn a_volume_maps_to_its_claim_ref() {
        let v = volume("pv")
            .set("/spec/claimRef", json!({"namespace": "ns", "name": "data"}))
            .build();
        assert_eq!(
            volume_to_claim(&v),
            Some(ObjectRef::new("data").within("ns"))
        );
        assert_eq!(volume_to_claim(&volume("free").build()), None);
    }

    #[test]
    fn a_class_maps_to_its_claims_and_to_claims_without_a_class() {
        let store = Caches::from_objects(
            vec![
                claim("a", "mine").class("fast").build(),
                claim("a", "other").class("slow").build(),
                claim("b", "defaulted").build(),
                claim("b", "none").class("").build(),
            ],
            vec![],
            vec![],
            vec![],
        );
        let mut refs: Vec<String> = class_to_claims(&class("fast", "x").build(), &store.claims)
            .into_iter()
            .map(|r| r.to_string())
            .collect();
        refs.sort();
        assert_eq!(refs.len(), 2, "{refs:?}");
        assert!(
            refs[0].contains("defaulted") && refs[1].contains("mine"),
            "{refs:?}"
        );
    }

    #[test]
    fn a_class_maps_to_its_volumes() {
        let store = Caches::from_objects(
            vec![],
            vec![
                volume("a").class("fast").build(),
                volume("b").class("slow").build(),
            ],
            vec![],
            vec![],
        );
        let refs = class_to_volumes(&class("fast", "x").build(), &store.volumes);
        assert_eq!(refs, vec![ObjectRef::new("a")]);
    }

    fn desired(driver: Option<&str>) -> DesiredKeys {
        DesiredKeys::from_verdict(&VolumeVerdict {
            verdict: Verdict::False,
            driver: driver.map(String::from),
            driver_source: None,
            reason: "NFS".to_string(),
        })
    }

    #[test]
    fn current_keys_need_no_write() {
        let keys = Keys::default();
        let c = claim("ns", "c")
            .set(
                "/metadata/labels",
                json!({"userns.io/idmap-supported": "false"}),
            )
            .annotation("userns.io/idmap-reason", "NFS")
            .annotation("userns.io/driver", "nfs.csi.k8s.io")
            .build();
        assert!(desired(Some("nfs.csi.k8s.io")).is_current(&c.metadata, &keys));
        assert!(!desired(Some("other")).is_current(&c.metadata, &keys));
        assert!(
            !desired(None).is_current(&c.metadata, &keys),
            "a stale driver annotation is a difference"
        );
    }

    #[test]
    fn a_tampered_or_missing_label_needs_a_write() {
        let keys = Keys::default();
        let tampered = claim("ns", "c")
            .set(
                "/metadata/labels",
                json!({"userns.io/idmap-supported": "true"}),
            )
            .annotation("userns.io/idmap-reason", "NFS")
            .build();
        assert!(!desired(None).is_current(&tampered.metadata, &keys));
        assert!(!desired(None).is_current(&claim("ns", "c").build().metadata, &keys));
    }

    #[test]
    fn the_apply_patch_holds_only_our_keys() {
        let keys = Keys::default();
        assert_eq!(
            desired(Some("nfs.csi.k8s.io")).apply_metadata(&keys),
            json!({
                "labels": {"userns.io/idmap-supported": "false"},
                "annotations": {"userns.io/idmap-reason": "NFS", "userns.io/driver": "nfs.csi.k8s.io"}
            })
        );
        assert_eq!(
            desired(None).apply_metadata(&keys),
            json!({
                "labels": {"userns.io/idmap-supported": "false"},
                "annotations": {"userns.io/idmap-reason": "NFS"}
            })
        );
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(600);
        truncate(&mut s, 1001);
        assert_eq!(s.len(), 1000);
    }
}
