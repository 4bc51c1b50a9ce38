//! One reconcile for claims and volumes: judge the object from the caches and the table, and
//! apply our keys by server-side apply when they differ from what the object carries. The kind
//! supplies only what differs ([`Labelled`]).

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::core::Request;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::{Context, ControllerError, Priority};
use crate::cache::Caches;
use crate::capability::{
    DriverTable, Marks, PrunedClaim, PrunedVolume, VolumeVerdict, resolve_claim, resolve_volume,
};
use crate::keys::Keys;

/// The one field manager under which all our labels and annotations are applied.
pub const FIELD_MANAGER: &str = "userns-labeler";

/// The first wait after a failed reconcile; it doubles with each failure in a row.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between retries of one object.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What differs between the kinds we label.
pub trait Labelled:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind in metrics and errors: `claim` or `volume`.
    const KIND: &'static str;

    /// Its place in the queue for a write permit.
    const PRIORITY: Priority;

    /// The verdict for this object, from the caches and the table.
    fn judge(&self, caches: &Caches, table: &DriverTable, keys: &Keys) -> VolumeVerdict;

    /// The cache holding the objects of this kind.
    fn cache(caches: &Caches) -> &Store<Self>;

    /// The labels and annotations of the object that are read.
    fn marks(&self) -> &Marks;

    fn marks_mut(&mut self) -> &mut Marks;

    /// Requests for this object's kind, scoped like the object (`None`: a claim without a
    /// namespace).
    fn requests(namespace: Option<&str>) -> Option<Request>;
}

impl Labelled for PrunedClaim {
    const KIND: &'static str = "claim";
    const PRIORITY: Priority = Priority::Claim;

    fn judge(&self, caches: &Caches, table: &DriverTable, keys: &Keys) -> VolumeVerdict {
        resolve_claim(self, caches, table, keys)
    }

    fn cache(caches: &Caches) -> &Store<Self> {
        &caches.claims
    }

    fn marks(&self) -> &Marks {
        &self.marks
    }

    fn marks_mut(&mut self) -> &mut Marks {
        &mut self.marks
    }

    fn requests(namespace: Option<&str>) -> Option<Request> {
        namespace.map(|ns| Request::new(Self::url_path(&(), Some(ns))))
    }
}

impl Labelled for PrunedVolume {
    const KIND: &'static str = "volume";
    const PRIORITY: Priority = Priority::Volume;

    fn judge(&self, caches: &Caches, table: &DriverTable, keys: &Keys) -> VolumeVerdict {
        resolve_volume(self, caches, table, keys)
    }

    fn cache(caches: &Caches) -> &Store<Self> {
        &caches.volumes
    }

    fn marks(&self) -> &Marks {
        &self.marks
    }

    fn marks_mut(&mut self) -> &mut Marks {
        &mut self.marks
    }

    fn requests(_namespace: Option<&str>) -> Option<Request> {
        Some(Request::new(Self::url_path(&(), None)))
    }
}

/// The values of our keys an object should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredKeys {
    pub label: &'static str,
    pub reason: String,
    pub driver: Option<String>,
    /// The node's evidence (`<prefix>/idmap-evidence`), kept under our field manager.
    pub evidence: Option<String>,
}

impl DesiredKeys {
    pub fn from_verdict(verdict: &VolumeVerdict) -> DesiredKeys {
        DesiredKeys {
            label: verdict.verdict.as_str(),
            reason: verdict.reason.clone(),
            driver: verdict.driver.clone(),
            evidence: None,
        }
    }

    /// The same keys, keeping `evidence`.
    pub fn with_evidence(mut self, evidence: Option<&str>) -> DesiredKeys {
        self.evidence = evidence.map(String::from);
        self
    }

    /// Whether an object with these labels and annotations already carries exactly these
    /// values.
    pub fn is_current(&self, marks: &Marks, keys: &Keys) -> bool {
        marks.label(&keys.supported) == Some(self.label)
            && marks.annotation(&keys.reason) == Some(self.reason.as_str())
            && marks.annotation(&keys.driver) == self.driver.as_deref()
            && marks.annotation(&keys.idmap_evidence) == self.evidence.as_deref()
    }

    /// The metadata of a server-side apply patch holding only our keys. A key we owned and now
    /// leave out (the driver, when none is known) is removed by the API server.
    pub(super) fn apply_metadata(&self, keys: &Keys) -> serde_json::Value {
        let mut annotations = BTreeMap::from([(keys.reason.clone(), self.reason.clone())]);
        if let Some(driver) = &self.driver {
            annotations.insert(keys.driver.clone(), driver.clone());
        }
        if let Some(evidence) = &self.evidence {
            annotations.insert(keys.idmap_evidence.clone(), evidence.clone());
        }
        json!({
            "labels": {keys.supported.clone(): self.label},
            "annotations": annotations,
        })
    }
}

/// Reconciles one claim or volume.
#[tracing::instrument(skip_all, fields(kind = K::KIND, object = %object_name(object.as_ref())))]
pub async fn reconcile<K: Labelled>(
    object: Arc<K>,
    ctx: Arc<Context>,
) -> Result<Action, ControllerError> {
    relabel(object.as_ref(), &ctx)
        .await
        .map(|()| Action::await_change())
}

/// Writes our keys on `object` if it needs them (a reconciliation, counted and timed).
pub(super) async fn relabel<K: Labelled>(object: &K, ctx: &Context) -> Result<(), ControllerError> {
    let started = Instant::now();
    let result = match ctx.needed_write(object) {
        Some(desired) => label(object, desired, Stale::Skip, ctx).await.map(|_| ()),
        None => Ok(()),
    };
    if result.is_ok() {
        ctx.backoff.succeeded(&PendingWrites::key(object));
    }
    ctx.metrics
        .record_reconcile(K::KIND, started.elapsed().as_secs_f64());
    result
}

impl Context {
    /// The keys `object` should carry, when it does not carry them yet, no write of them is
    /// pending and this replica may write: whether it needs a write now.
    pub fn needed_write<K: Labelled>(&self, object: &K) -> Option<DesiredKeys> {
        // Evidence just written on top of this very version is not in the cache yet: keep it.
        match self.written.pending_evidence(object) {
            Some(evidence) => self.write_for(&with_evidence(object, &self.keys, evidence), object),
            None => self.write_for(object, object),
        }
    }

    /// The keys `judged` should carry, when the object the cache holds as `object` (the same,
    /// or it without evidence not written yet) does not carry them and no such write is pending.
    fn write_for<K: Labelled>(&self, judged: &K, object: &K) -> Option<DesiredKeys> {
        let table = self.table.borrow().table().cloned();
        let (true, Some(table)) = (self.may_write(), table) else {
            return None;
        };
        let evidence = judged
            .marks()
            .annotation(&self.keys.idmap_evidence)
            .filter(|v| !v.trim().is_empty());
        let desired = DesiredKeys::from_verdict(&judged.judge(&self.caches, &table, &self.keys))
            .with_evidence(evidence);
        if desired.is_current(object.marks(), &self.keys) {
            self.written.forget(object);
            return None;
        }
        (!self.written.is_pending(object, &desired)).then_some(desired)
    }
}

/// Labels `object` `false` with a node's `evidence` (JSON, see `capability::Evidence`), under
/// the same field manager as every other key, so later reconciles keep it. An object that
/// already carries evidence keeps its own. Returns whether it wrote.
pub async fn record_evidence<K: Labelled>(
    object: &K,
    evidence: &str,
    ctx: &Context,
) -> Result<bool, ControllerError> {
    if object
        .marks()
        .annotation(&ctx.keys.idmap_evidence)
        .is_some_and(|v| !v.trim().is_empty())
    {
        return Ok(false);
    }
    let judged = with_evidence(object, &ctx.keys, evidence.to_string());
    match ctx.write_for(&judged, object) {
        // Written even when the cache has moved past `object`: no reconciliation of the later
        // version would bring the evidence, and writing it twice is harmless.
        Some(desired) => label(object, desired, Stale::Write, ctx).await,
        None => Ok(false),
    }
}

/// `object` as it will be once `evidence` is written on it.
fn with_evidence<K: Labelled>(object: &K, keys: &Keys, evidence: String) -> K {
    let mut object = object.clone();
    object
        .marks_mut()
        .set_annotation(keys.idmap_evidence.clone(), evidence);
    object
}

/// What [`label`] does with an object the cache has already moved past.
#[derive(Clone, Copy)]
enum Stale {
    /// Skips it: the later version gets its own reconciliation.
    Skip,
    /// Writes anyway.
    Write,
}

/// Applies `desired` to `object`; whether it wrote (not when the same write is in flight, nor
/// with [`Stale::Skip`] when the cache holds another version of the object).
async fn label<K: Labelled>(
    object: &K,
    desired: DesiredKeys,
    stale: Stale,
    ctx: &Context,
) -> Result<bool, ControllerError> {
    let meta = object.meta();
    let name = meta.name.as_deref();
    let requests = K::requests(meta.namespace.as_deref());
    let (Some(name), Some(requests)) = (name, requests) else {
        return Err(ControllerError::Unnamed { kind: K::KIND });
    };
    let mut metadata = desired.apply_metadata(&ctx.keys);
    metadata["name"] = json!(name);
    if let Some(namespace) = &meta.namespace {
        metadata["namespace"] = json!(namespace);
    }
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": metadata,
    });
    // Recorded before the write, so that a reconciliation of the same object from elsewhere (the
    // sweep and the controller may meet) does not send it again.
    let cached = || match stale {
        Stale::Skip => K::cache(&ctx.caches).get(&ObjectRef::from_obj(object)),
        Stale::Write => None,
    };
    if !ctx.written.begin(object, &desired, cached) {
        return Ok(false);
    }
    let permit = ctx.writes.acquire(K::PRIORITY).await;
    let written = match requests.patch_metadata(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    ) {
        // The answer (the object's metadata, managedFields and all) is not decoded: the watch
        // brings the same object to the cache, pruned.
        Ok(request) => ctx.client.request_text(request).await.map(drop),
        Err(e) => Err(kube::Error::BuildRequest(e)),
    };
    drop(permit);
    if let Err(source) = written {
        ctx.written.forget(object);
        return Err(ControllerError::Apply {
            kind: K::KIND,
            name: object_name(object),
            source,
        });
    }
    ctx.metrics.record_write(K::KIND);
    announce_change(ctx, object, &desired);
    Ok(true)
}

/// The writes sent or being sent whose watch events the cache has not delivered yet. Until it
/// does, a reconcile of the same object (from another trigger) sees the version before our
/// write and would write the same keys again; it is skipped instead. An entry is dropped when
/// the cache shows our keys or moves on, or when the write fails.
#[derive(Default)]
pub struct PendingWrites {
    /// `kind/namespace/name` → the resourceVersion our write was based on, and what it wrote.
    writes: std::sync::Mutex<std::collections::HashMap<String, (Option<String>, DesiredKeys)>>,
}

impl PendingWrites {
    pub(crate) fn key<K: Labelled>(object: &K) -> String {
        format!("{}/{}", K::KIND, object_name(object))
    }

    /// Whether `desired` was written on top of exactly the version `object` is.
    fn is_pending<K: Labelled>(&self, object: &K, desired: &DesiredKeys) -> bool {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(object);
        match writes.get(&key) {
            Some((version, written)) if *version == object.meta().resource_version => {
                written == desired
            }
            Some(_) => {
                writes.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Evidence we wrote on top of exactly the version `object` is, which it does not carry.
    fn pending_evidence<K: Labelled>(&self, object: &K) -> Option<String> {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        match writes.get(&Self::key(object)) {
            Some((version, written)) if *version == object.meta().resource_version => {
                written.evidence.clone()
            }
            _ => None,
        }
    }

    /// The cache shows our keys: nothing is pending for `object` any more.
    fn forget<K: Labelled>(&self, object: &K) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if !writes.is_empty() {
            writes.remove(&Self::key(object));
        }
    }

    /// Records a write of `desired` on top of the version `object` is, unless exactly that
    /// write is already pending or the cache (`cached`: its copy of the object) already holds
    /// another version, whose own reconciliation decides: whether the caller should send it.
    ///
    /// The cache is read under the lock. An entry is forgotten only once the cache shows a later
    /// version, so a caller still holding the version a write was based on finds either the
    /// entry or the later version: it never sends the same write twice.
    fn begin<K: Labelled>(
        &self,
        object: &K,
        desired: &DesiredKeys,
        cached: impl FnOnce() -> Option<Arc<K>>,
    ) -> bool {
        let version = &object.meta().resource_version;
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        if cached().is_some_and(|latest| latest.meta().resource_version != *version) {
            return false;
        }
        let key = Self::key(object);
        if writes
            .get(&key)
            .is_some_and(|(v, d)| v == version && d == desired)
        {
            return false;
        }
        writes.insert(key, (version.clone(), desired.clone()));
        true
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn object_name<K: Resource>(object: &K) -> String {
    match object.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", object.name_any()),
        None => object.name_any(),
    }
}

/// An Event when the label value changes (not on first labelling, which would flood a new
/// cluster with one event per claim), queued: it is published after the label writes waiting.
fn announce_change<K: Labelled>(ctx: &Context, object: &K, desired: &DesiredKeys) {
    let old = object.marks().label(&ctx.keys.supported);
    let Some(old) = old.filter(|old| *old != desired.label) else {
        return;
    };
    ctx.metrics.record_label_change(K::KIND);
    info!(kind = K::KIND, name = %object_name(object), from = %old, to = desired.label, reason = %desired.reason, "idmap label changed");
    let mut note = format!(
        "{} changed from {old} to {}: {}",
        ctx.keys.supported, desired.label, desired.reason
    );
    truncate(&mut note, 1000);
    ctx.events.announce(object.object_ref(&()), note);
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

/// Failures in a row per object, for exponential backoff with jitter: an object that keeps
/// failing (a webhook refusing our patch, RBAC) is retried ever less often, and many objects
/// failing together (an API server outage) do not retry in lockstep.
#[derive(Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    random: std::collections::hash_map::RandomState,
}

impl Backoff {
    /// The wait before the next try of `key`, counting this failure.
    fn failed(&self, key: String) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        let ceiling = RETRY_FIRST
            .saturating_mul(1u32 << (*count - 1).min(16))
            .min(RETRY_MAX);
        // Jitter: between half and all of the ceiling.
        let fraction = (self.random.hash_one((&key, *count)) % 1_000) as f64 / 1_000.0;
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }

    fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

/// Requeues a failed object with exponential backoff and jitter; the error is logged and
/// counted by category.
pub fn error_policy<K: Labelled>(
    object: Arc<K>,
    error: &ControllerError,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.record_failure(K::KIND, error.category());
    let retry = ctx.backoff.failed(PendingWrites::key(object.as_ref()));
    warn!(%error, category = error.category(), ?retry, "reconcile failed");
    Action::requeue(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_a_ceiling() {
        let backoff = Backoff::default();
        let waits: Vec<Duration> = (0..12).map(|_| backoff.failed("claim/a".into())).collect();
        for (n, wait) in waits.iter().enumerate() {
            let ceiling = (RETRY_FIRST * 2u32.pow(n as u32)).min(RETRY_MAX);
            assert!(*wait <= ceiling && *wait >= ceiling / 2, "{n}: {wait:?}");
        }
        assert!(waits[11] >= RETRY_MAX / 2);
        backoff.succeeded("claim/a");
        assert!(
            backoff.failed("claim/a".into()) <= RETRY_FIRST,
            "a success resets"
        );
    }
    use crate::capability::Verdict;
    use userns_labeler_test_support::fixtures::claim;

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
        assert!(desired(Some("nfs.csi.k8s.io")).is_current(&Marks::of(&c.metadata), &keys));
        assert!(!desired(Some("other")).is_current(&Marks::of(&c.metadata), &keys));
        assert!(
            !desired(None).is_current(&Marks::of(&c.metadata), &keys),
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
        assert!(!desired(None).is_current(&Marks::of(&tampered.metadata), &keys));
        assert!(!desired(None).is_current(&Marks::of(&claim("ns", "c").build().metadata), &keys));
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

    fn at(version: &str) -> PrunedClaim {
        PrunedClaim::from(
            &claim("ns", "c")
                .set("/metadata/resourceVersion", json!(version))
                .build(),
        )
    }

    #[test]
    fn a_pending_write_is_sent_once_until_it_fails_or_the_cache_moves_on() {
        let pending = PendingWrites::default();
        let uncached = || None;
        assert!(pending.begin(&at("1"), &desired(None), uncached));
        assert!(
            !pending.begin(&at("1"), &desired(None), uncached),
            "already pending"
        );
        assert!(pending.is_pending(&at("1"), &desired(None)));
        assert!(
            pending.begin(&at("1"), &desired(Some("d")), uncached),
            "other keys are another write"
        );
        pending.forget(&at("1"));
        assert!(
            pending.begin(&at("1"), &desired(None), uncached),
            "a failed write is retried"
        );
        assert!(
            !pending.is_pending(&at("2"), &desired(None)),
            "the cache moved on"
        );
        assert!(pending.writes.lock().unwrap().is_empty());
    }

    /// The race CI once lost: the sweep reads version 1 while the controller's write on top of
    /// it is in flight; the write lands, the cache shows version 2 with our keys and the entry is
    /// forgotten; only then does the sweep decide. It must not send the write again.
    #[test]
    fn a_write_based_on_a_version_the_cache_has_left_is_not_sent() {
        let pending = PendingWrites::default();
        assert!(pending.begin(&at("1"), &desired(None), || Some(Arc::new(at("1")))));
        pending.forget(&at("2"));
        assert!(!pending.is_pending(&at("1"), &desired(None)));
        assert!(
            !pending.begin(&at("1"), &desired(None), || Some(Arc::new(at("2")))),
            "the cache holds version 2: version 1 is stale"
        );
        assert!(
            pending.begin(&at("2"), &desired(Some("d")), || Some(Arc::new(at("2")))),
            "the cached version itself is written"
        );
    }

    #[test]
    fn evidence_is_one_of_our_keys_and_its_removal_is_a_difference() {
        let keys = Keys::default();
        let with = desired(None).with_evidence(Some("{\"node\":\"a\"}"));
        assert_eq!(
            with.apply_metadata(&keys)["annotations"]["userns.io/idmap-evidence"],
            "{\"node\":\"a\"}"
        );
        let carrying = claim("ns", "c")
            .set(
                "/metadata/labels",
                json!({"userns.io/idmap-supported": "false"}),
            )
            .annotation("userns.io/idmap-reason", "NFS")
            .annotation("userns.io/idmap-evidence", "{\"node\":\"a\"}")
            .build();
        let marks = PrunedClaim::from(&carrying).marks;
        assert!(
            with.is_current(&marks, &keys),
            "the pruned claim keeps the evidence"
        );
        assert!(
            !desired(None).is_current(&marks, &keys),
            "keys without the evidence would drop it"
        );
    }

    #[test]
    fn long_notes_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(600);
        truncate(&mut s, 1001);
        assert_eq!(s.len(), 1000);
    }
}
