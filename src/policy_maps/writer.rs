//! The claim maps' index (every replica) and writer (the leader only).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, PostParams},
    core::Request,
    runtime::watcher,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::shards::{
    ClaimEntry, PublishedShard, ShardChange, ShardObject, Support, desired_shards, diff_namespace,
    map_label, published_from,
};
use crate::keys::Keys;

/// Where and how fast the maps are written.
#[derive(Debug, Clone)]
pub struct PolicyMapSettings {
    /// The labeler's namespace: the maps live there.
    pub namespace: String,
    pub keys: Keys,
    /// The field manager the writes name.
    pub field_manager: String,
    /// Changes arriving within this window are written together (1,000 claims flipped by a
    /// table edit make one write per shard, not 1,000).
    pub coalesce: Duration,
    /// At most this many writes (create, replace or delete) per second.
    pub max_writes_per_second: u32,
    /// At most this many bytes of maps written per second. A big map costs the API server in
    /// proportion to its keys (it tracks each as a field in managedFields): without this budget a
    /// labelling storm in a namespace of 10,000 claims had its maps rewritten several times a
    /// second, doubling the API server's CPU and halving the label writes' rate.
    pub max_bytes_per_second: usize,
}

impl PolicyMapSettings {
    /// The wait after a write of `bytes` (0 for a deletion): the write rate's pace, or longer
    /// as the byte budget requires.
    fn pause_after(&self, bytes: usize) -> Duration {
        let pace = Duration::from_secs(1) / self.max_writes_per_second.max(1);
        let budget = bytes as f64 / self.max_bytes_per_second.max(1) as f64;
        pace.max(Duration::from_secs_f64(budget))
    }

    pub fn new(namespace: &str, keys: &Keys) -> PolicyMapSettings {
        PolicyMapSettings {
            namespace: namespace.to_owned(),
            keys: keys.clone(),
            field_manager: "userns-labeler".to_owned(),
            coalesce: Duration::from_millis(200),
            max_writes_per_second: 20,
            max_bytes_per_second: 128 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    #[error("listing the claim maps in namespace {namespace}: {source}")]
    List {
        namespace: String,
        source: kube::Error,
    },
    #[error("writing claim map {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error("deleting claim map {name}: {source}")]
    Delete { name: String, source: kube::Error },
}

impl PolicyMapError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            PolicyMapError::List { .. } => "list",
            PolicyMapError::Write { .. } => "write",
            PolicyMapError::Delete { .. } => "delete",
        }
    }
}

/// The claims as the watch last reported them, and which namespaces changed since written.
#[derive(Debug, Default)]
pub(crate) struct Index {
    claims: BTreeMap<String, BTreeMap<String, Support>>,
    /// Claims of a relist in progress (`Init` … `InitDone`).
    relist: Option<BTreeMap<String, BTreeMap<String, Support>>>,
    /// At least one full list has been seen: before that nothing may be written (a partial
    /// index would delete or shrink maps).
    synced: bool,
    dirty: BTreeSet<String>,
}

impl Index {
    pub(crate) fn observe(&mut self, event: &watcher::Event<ClaimEntry>) {
        match event {
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(c) => {
                let relist = self.relist.get_or_insert_with(BTreeMap::new);
                relist
                    .entry(c.namespace.clone())
                    .or_default()
                    .insert(c.name.clone(), c.support);
            }
            watcher::Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                // Namespaces whose content differs (including those now empty).
                for ns in fresh.keys().chain(self.claims.keys()) {
                    if fresh.get(ns) != self.claims.get(ns) || !self.synced {
                        self.dirty.insert(ns.clone());
                    }
                }
                self.claims = fresh;
                self.synced = true;
            }
            watcher::Event::Apply(c) => {
                let previous = self
                    .claims
                    .entry(c.namespace.clone())
                    .or_default()
                    .insert(c.name.clone(), c.support);
                if previous != Some(c.support) {
                    self.dirty.insert(c.namespace.clone());
                }
            }
            watcher::Event::Delete(c) => {
                if let Some(ns) = self.claims.get_mut(&c.namespace)
                    && ns.remove(&c.name).is_some()
                {
                    if ns.is_empty() {
                        self.claims.remove(&c.namespace);
                    }
                    self.dirty.insert(c.namespace.clone());
                }
            }
        }
    }

    /// The dirty namespaces with their claims, clearing the dirty set.
    fn take_dirty(&mut self) -> Vec<(String, BTreeMap<String, Support>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|ns| {
                let claims = self.claims.get(&ns).cloned().unwrap_or_default();
                (ns, claims)
            })
            .collect()
    }

    fn mark_dirty(&mut self, namespaces: impl IntoIterator<Item = String>) {
        self.dirty.extend(namespaces);
    }

    fn namespaces(&self) -> impl Iterator<Item = &String> {
        self.claims.keys()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    /// `write` (create or replace) or `delete`.
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    /// [`PolicyMapError::category`].
    category: &'static str,
}

/// The writer's series: what it cost the API server, and what failed.
#[derive(Clone, Debug, Default)]
struct MapMetrics {
    writes: Family<OperationLabels, Counter>,
    bytes: Counter,
    failures: Family<FailureLabels, Counter>,
}

impl MapMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "claim_map_writes",
            "Claim maps written (created or replaced) or deleted, by operation",
            self.writes.clone(),
        );
        registry.register(
            "claim_map_bytes",
            "Bytes of claim maps written (each write costs the API server in proportion to the claims in the map)",
            self.bytes.clone(),
        );
        registry.register(
            "claim_map_failures",
            "Failed lists, writes and deletions of claim maps, by category",
            self.failures.clone(),
        );
    }
}

/// The claim maps: a cheap handle (clone it freely) to the index every replica keeps, and the
/// writer task ([`PolicyMaps::run`]).
#[derive(Clone)]
pub struct PolicyMaps {
    settings: Arc<PolicyMapSettings>,
    index: Arc<Mutex<Index>>,
    wake: Arc<Notify>,
    metrics: MapMetrics,
}

impl PolicyMaps {
    pub fn new(settings: PolicyMapSettings) -> PolicyMaps {
        PolicyMaps {
            settings: Arc::new(settings),
            index: Arc::default(),
            wake: Arc::default(),
            metrics: MapMetrics::default(),
        }
    }

    /// Registers the writer's metrics (`claim_map_writes`, `claim_map_bytes`,
    /// `claim_map_failures`) in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// Feeds one event of the claim watcher (each claim reduced to a [`ClaimEntry`]). Never
    /// blocks on I/O; wakes the writer when a namespace's content changed.
    pub fn observe(&self, event: &watcher::Event<ClaimEntry>) {
        let changed = {
            let mut index = self.index.lock().expect("index lock");
            index.observe(event);
            index.synced && !index.dirty.is_empty()
        };
        if changed {
            self.wake.notify_one();
        }
    }

    /// Writes the maps while `is_leader` is `true`, until `shutdown`. Errors are logged and the
    /// namespace retried after a pause; this never returns an error.
    pub async fn run(
        self,
        client: Client,
        mut is_leader: watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &self.settings.namespace);
        // What exists, by name: `None` until listed in this leadership term.
        let mut published: Option<BTreeMap<String, PublishedShard>> = None;
        let mut retry_after = Duration::ZERO;
        loop {
            let leading = *is_leader.borrow_and_update();
            if !leading {
                published = None;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = is_leader.changed() => if changed.is_err() { return },
                }
                continue;
            }
            if published.is_none() {
                match self.list(&api).await {
                    Ok(listed) => {
                        let mut index = self.index.lock().expect("index lock");
                        let all: Vec<String> = index
                            .namespaces()
                            .cloned()
                            .chain(listed.values().map(|p| p.namespace.clone()))
                            .collect();
                        index.mark_dirty(all);
                        published = Some(listed);
                    }
                    Err(e) => {
                        self.failed(&e);
                        warn!(error = %e, category = e.category(), "claim maps: cannot list");
                        retry_after = backoff(retry_after);
                        if pause(retry_after, &shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let work = {
                let mut index = self.index.lock().expect("index lock");
                if index.synced {
                    index.take_dirty()
                } else {
                    Vec::new()
                }
            };
            if work.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = is_leader.changed() => {}
                }
                // Let more changes of the same burst arrive before writing.
                if pause(self.settings.coalesce, &shutdown).await {
                    return;
                }
                continue;
            }
            let published_now = published.as_mut().expect("listed above");
            let mut failed = Vec::new();
            for (namespace, claims) in work {
                if shutdown.is_cancelled() || !*is_leader.borrow() {
                    failed.push(namespace);
                    continue;
                }
                let desired = desired_shards(&namespace, claims);
                if desired.overflow > 0 {
                    warn!(
                        namespace,
                        left_out = desired.overflow,
                        "claim maps: the namespace has more claims than its maps hold; pods on the claims left out are not enabled by the policies"
                    );
                }
                let ours: BTreeMap<String, PublishedShard> = published_now
                    .iter()
                    .filter(|(_, p)| p.namespace == namespace)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                for change in diff_namespace(&desired, &ours) {
                    let mut written = 0;
                    let known = matches!(&change, ShardChange::Write(s) if published_now.contains_key(&s.name));
                    match self.execute(&api, &client, &change, known).await {
                        Ok(bytes) => match change {
                            ShardChange::Write(shard) => {
                                written = bytes;
                                self.wrote("write", bytes);
                                published_now
                                    .insert(shard.name.clone(), PublishedShard::written(&shard));
                            }
                            ShardChange::Delete(name) => {
                                self.wrote("delete", 0);
                                published_now.remove(&name);
                            }
                        },
                        Err(e) => {
                            self.failed(&e);
                            warn!(error = %e, category = e.category(), namespace, "claim maps: write failed; retrying");
                            failed.push(namespace.clone());
                            break;
                        }
                    }
                    if pause(self.settings.pause_after(written), &shutdown).await {
                        return;
                    }
                }
            }
            if failed.is_empty() {
                retry_after = Duration::ZERO;
            } else {
                self.index.lock().expect("index lock").mark_dirty(failed);
                // A failed write may have left `published` wrong (a conflict, a deletion by
                // someone else): list again before the retry.
                published = None;
                retry_after = backoff(retry_after);
                if pause(retry_after, &shutdown).await {
                    return;
                }
            }
        }
    }

    fn wrote(&self, operation: &'static str, bytes: usize) {
        let metrics = &self.metrics;
        metrics
            .writes
            .get_or_create(&OperationLabels { operation })
            .inc();
        metrics.bytes.inc_by(bytes as u64);
    }

    fn failed(&self, error: &PolicyMapError) {
        let category = error.category();
        self.metrics
            .failures
            .get_or_create(&FailureLabels { category })
            .inc();
    }

    async fn list(
        &self,
        api: &Api<ConfigMap>,
    ) -> Result<BTreeMap<String, PublishedShard>, PolicyMapError> {
        let keys = &self.settings.keys;
        let params = ListParams::default().labels(&map_label(keys));
        let list = api
            .list(&params)
            .await
            .map_err(|source| PolicyMapError::List {
                namespace: self.settings.namespace.clone(),
                source,
            })?;
        let shards: BTreeMap<String, PublishedShard> = list
            .items
            .iter()
            .filter_map(|cm| {
                let name = cm.metadata.name.as_deref()?;
                published_from(
                    name,
                    cm.metadata.labels.as_ref(),
                    cm.metadata.annotations.as_ref(),
                    cm.data.as_ref(),
                    keys,
                )
            })
            .map(|p| (p.name.clone(), p))
            .collect();
        info!(
            shards = shards.len(),
            "claim maps: listed the published maps"
        );
        Ok(shards)
    }

    /// Carries out `change`: the bytes of the map written (0 for a deletion). `exists`: the map
    /// was there when last listed or written (a write replaces it, else creates it; either
    /// falls back to the other when the map turns out to be gone or there after all).
    async fn execute(
        &self,
        api: &Api<ConfigMap>,
        client: &Client,
        change: &ShardChange,
        exists: bool,
    ) -> Result<usize, PolicyMapError> {
        match change {
            ShardChange::Write(shard) => {
                // A replace (PUT without a resourceVersion: the labeler owns these objects
                // whole, the last write wins), or a create when the map does not exist yet.
                // Not server-side apply: for a map of 5,000 claims an apply cost the API server
                // about twice the CPU of a replace (`benches/claim_map_writes.rs`: each key of
                // `data` is a field it merges), and the merge buys nothing for an object with a
                // single writer. A replace also drops an entry someone else added, which an
                // apply kept (owned by its writer) though it could say `true` for any claim.
                let object =
                    &ShardObject::new(&self.settings.namespace, shard, &self.settings.keys);
                let params = &PostParams {
                    field_manager: Some(self.settings.field_manager.clone()),
                    ..PostParams::default()
                };
                let url = &ConfigMap::url_path(&(), Some(&self.settings.namespace));
                // One attempt: it serializes the object itself, so the common case (no fallback)
                // copies no ~200 KiB body; the bytes sent on success.
                let send = |replace: bool| async move {
                    let body = serde_json::to_vec(object).map_err(kube::Error::SerdeError)?;
                    let bytes = body.len();
                    let request = Request::new(url);
                    let request = if replace {
                        request.replace(&shard.name, params, body)
                    } else {
                        request.create(params, body)
                    }
                    .map_err(kube::Error::BuildRequest)?;
                    // The answer (the whole map and its managedFields, a field per claim) is
                    // not decoded: nothing reads it.
                    client.request_text(request).await.map(|_| bytes)
                };
                let bytes = match send(exists).await {
                    // Replaced a map that was gone (deleted by someone), or created one that
                    // was there (left by an earlier term): the other way, once.
                    Err(kube::Error::Api(s))
                        if (exists && s.code == 404) || (!exists && s.code == 409) =>
                    {
                        send(!exists).await
                    }
                    result => result,
                }
                .map_err(|source| PolicyMapError::Write {
                    name: shard.name.clone(),
                    source,
                })?;
                debug!(
                    name = shard.name,
                    claims = shard.data.len(),
                    bytes,
                    "claim map written"
                );
                return Ok(bytes);
            }
            ShardChange::Delete(name) => {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(source) => {
                        return Err(PolicyMapError::Delete {
                            name: name.clone(),
                            source,
                        });
                    }
                }
                debug!(name, "claim map deleted");
            }
        }
        Ok(0)
    }
}

fn backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(500), Duration::from_secs(30))
}

/// Sleeps `duration`; `true` when shutdown came first.
async fn pause(duration: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ns: &str, name: &str, support: Support) -> ClaimEntry {
        ClaimEntry {
            namespace: ns.into(),
            name: name.into(),
            support,
        }
    }

    fn listed(index: &mut Index, claims: &[ClaimEntry]) {
        index.observe(&watcher::Event::Init);
        for c in claims {
            index.observe(&watcher::Event::InitApply(c.clone()));
        }
        index.observe(&watcher::Event::InitDone);
    }

    fn dirty(index: &mut Index) -> Vec<String> {
        index.take_dirty().into_iter().map(|(ns, _)| ns).collect()
    }

    #[test]
    fn nothing_is_dirty_before_the_first_full_list() {
        let mut index = Index::default();
        index.observe(&watcher::Event::Init);
        index.observe(&watcher::Event::InitApply(claim("a", "x", Support::True)));
        assert!(!index.synced);
        assert!(index.claims.is_empty(), "a partial list is not the index");
        index.observe(&watcher::Event::InitDone);
        assert!(index.synced);
        assert_eq!(dirty(&mut index), vec!["a"]);
    }

    #[test]
    fn only_a_changed_value_marks_its_namespace() {
        let mut index = Index::default();
        listed(
            &mut index,
            &[
                claim("a", "x", Support::True),
                claim("b", "y", Support::True),
            ],
        );
        dirty(&mut index);
        // A label write the watch echoes back unchanged, or another field of the claim.
        index.observe(&watcher::Event::Apply(claim("a", "x", Support::True)));
        assert!(dirty(&mut index).is_empty());
        index.observe(&watcher::Event::Apply(claim("a", "x", Support::False)));
        assert_eq!(dirty(&mut index), vec!["a"]);
        index.observe(&watcher::Event::Apply(claim("b", "new", Support::Unknown)));
        assert_eq!(dirty(&mut index), vec!["b"]);
    }

    #[test]
    fn a_deleted_claim_marks_its_namespace_and_the_last_one_empties_it() {
        let mut index = Index::default();
        listed(&mut index, &[claim("a", "x", Support::True)]);
        dirty(&mut index);
        index.observe(&watcher::Event::Delete(claim(
            "a",
            "missing",
            Support::True,
        )));
        assert!(
            dirty(&mut index).is_empty(),
            "an unknown claim changes nothing"
        );
        index.observe(&watcher::Event::Delete(claim("a", "x", Support::True)));
        let work = index.take_dirty();
        assert_eq!(work, vec![("a".to_owned(), BTreeMap::new())]);
        assert!(index.claims.is_empty());
    }

    #[test]
    fn a_relist_marks_exactly_the_namespaces_that_differ() {
        let mut index = Index::default();
        listed(
            &mut index,
            &[
                claim("same", "x", Support::True),
                claim("flipped", "y", Support::True),
                claim("gone", "z", Support::True),
            ],
        );
        dirty(&mut index);
        listed(
            &mut index,
            &[
                claim("same", "x", Support::True),
                claim("flipped", "y", Support::False),
                claim("new", "w", Support::True),
            ],
        );
        assert_eq!(dirty(&mut index), vec!["flipped", "gone", "new"]);
    }

    #[test]
    fn a_burst_of_flips_in_one_namespace_is_one_unit_of_work() {
        let mut index = Index::default();
        let claims: Vec<ClaimEntry> = (0..1000)
            .map(|i| claim("apps", &format!("data-{i}"), Support::True))
            .collect();
        listed(&mut index, &claims);
        dirty(&mut index);
        for c in &claims {
            index.observe(&watcher::Event::Apply(claim(
                "apps",
                &c.name,
                Support::False,
            )));
        }
        let work = index.take_dirty();
        assert_eq!(work.len(), 1);
        assert!(work[0].1.values().all(|s| *s == Support::False));
    }

    #[test]
    fn big_maps_are_paced_by_their_bytes_small_ones_by_the_write_rate() {
        let settings = PolicyMapSettings::new("userns-labeler", &Keys::default());
        // 20 writes/s: 50 ms between small writes and after deletions.
        assert_eq!(settings.pause_after(0), Duration::from_millis(50));
        assert_eq!(settings.pause_after(2_000), Duration::from_millis(50));
        // 128 KiB/s: a 256 KiB map (a full shard) is followed by 2 s without writes.
        assert_eq!(settings.pause_after(256 * 1024), Duration::from_secs(2));
        assert_eq!(settings.pause_after(64 * 1024), Duration::from_millis(500));
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        assert_eq!(backoff(Duration::ZERO), Duration::from_millis(500));
        assert_eq!(backoff(Duration::from_secs(1)), Duration::from_secs(2));
        assert_eq!(backoff(Duration::from_secs(20)), Duration::from_secs(30));
    }

    #[test]
    fn error_categories_are_a_closed_set() {
        let e = PolicyMapError::Delete {
            name: "x".into(),
            source: kube::Error::LinesCodecMaxLineLengthExceeded,
        };
        assert_eq!(e.category(), "delete");
    }
}
