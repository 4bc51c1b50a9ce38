//! The operator's driver ConfigMap: validated on every change, published on a watch channel as
//! the [`TableState`]. An invalid edit keeps the last good table in force and says so (log,
//! Warning Event, metric). [`watch`] runs the ConfigMap watch; [`TableTracker`] is its pure core.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::capability::{DriverTable, TableError};
use crate::controller::reconcile::{FIELD_MANAGER, truncate};
use crate::metrics::OutcomeLabels;

/// The ConfigMap key holding the operator's driver table.
pub const CONFIG_MAP_KEY: &str = "drivers.yaml";

/// The driver table as the controller and the webhook see it.
#[derive(Clone, Debug, Default)]
pub enum TableState {
    /// The ConfigMaps have not been read yet: nothing is decided.
    #[default]
    Loading,
    /// This table is in force.
    InForce(Arc<DriverTable>),
    /// No usable table: the operator's ConfigMap is invalid and no last good copy exists. The
    /// controller writes nothing and the webhook skips every pod (fail closed).
    Unusable(Arc<str>),
}

impl TableState {
    /// The table in force, if any.
    pub fn table(&self) -> Option<&Arc<DriverTable>> {
        match self {
            TableState::InForce(table) => Some(table),
            TableState::Loading | TableState::Unusable(_) => None,
        }
    }

    /// A state with `table` in force (tests, benchmarks and offline use).
    pub fn channel(table: Arc<DriverTable>) -> watch::Receiver<TableState> {
        watch::channel(TableState::InForce(table)).1
    }
}

/// What happened when a ConfigMap version was applied; the string is a metric label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A valid table is now in force.
    Applied,
    /// No ConfigMap: the built-in defaults are in force.
    Defaults,
    /// No ConfigMap at start-up, but a last good copy: the copy is in force.
    LastGood,
    /// The same document as the table in force: nothing to do.
    Unchanged,
    /// The edit is invalid; the last good table stays in force.
    Invalid(TableError),
    /// The document is invalid and there is no good table to keep: fail closed.
    Unusable(TableError),
}

impl ReloadOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Defaults => "defaults",
            ReloadOutcome::LastGood => "last_good",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Invalid(_) => "invalid",
            ReloadOutcome::Unusable(_) => "unusable",
        }
    }
}

/// Parses the table a ConfigMap holds: operator rules before the built-in ones.
pub fn table_from_config_map(config_map: &ConfigMap) -> Result<DriverTable, TableError> {
    let origin = format!(
        "ConfigMap {}/{} key {CONFIG_MAP_KEY}",
        config_map.metadata.namespace.as_deref().unwrap_or_default(),
        config_map.metadata.name.as_deref().unwrap_or_default()
    );
    let Some(text) = config_map.data.as_ref().and_then(|d| d.get(CONFIG_MAP_KEY)) else {
        return Err(TableError::Document {
            origin,
            field: CONFIG_MAP_KEY.to_string(),
            message: format!("the ConfigMap has no data key {CONFIG_MAP_KEY:?}"),
        });
    };
    DriverTable::from_operator_yaml(text, &origin)
}

/// The last good operator table as persisted by the leader: the document and where it came
/// from (`namespace/name@resourceVersion` of the operator's ConfigMap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastGood {
    pub text: String,
    pub source: String,
}

impl LastGood {
    /// The copy a ConfigMap holds; `None` when it holds no valid table (it is then ignored).
    pub fn of(config_map: &ConfigMap, keys_prefix: &str) -> Option<(LastGood, DriverTable)> {
        let table = table_from_config_map(config_map).ok()?;
        let text = config_map.data.as_ref()?.get(CONFIG_MAP_KEY)?.clone();
        let source = config_map
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&source_annotation(keys_prefix)))
            .cloned()
            .unwrap_or_default();
        Some((LastGood { text, source }, table))
    }
}

/// The annotation of the copy naming the operator ConfigMap version it was taken from.
pub fn source_annotation(keys_prefix: &str) -> String {
    format!("{keys_prefix}/driver-table-source")
}

/// What the leader should do with the persisted copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyAction {
    /// The copy is what it should be.
    Keep,
    /// Write this document as the copy.
    Write(LastGood),
    /// The operator deleted the ConfigMap while we watched: an explicit reset to the defaults.
    Delete,
}

/// Keeps the table in force and publishes changes: the pure core of [`watch`]. The document
/// text in force is remembered so that a resync of an unchanged ConfigMap republishes nothing.
///
/// Which table is in force:
/// - the operator's ConfigMap, when it holds a valid table;
/// - an invalid edit keeps whatever was in force; at start-up (nothing in force yet) the last
///   good copy is used, and without one there is no usable table ([`TableState::Unusable`]);
/// - no operator ConfigMap at start-up: the last good copy if there is one (until the operator
///   recreates the ConfigMap or deletes the copy), else the built-in defaults;
/// - the operator's ConfigMap deleted while watched: the built-in defaults, and the copy is
///   deleted too, so a restart agrees.
pub struct TableTracker {
    sender: watch::Sender<TableState>,
    /// The operator's document in force, and its source; `None` while another table is.
    current: Option<LastGood>,
    /// The persisted copy as last seen, with its table.
    last_good: Option<(LastGood, Arc<DriverTable>)>,
    /// Whether the operator's ConfigMap exists (as far as seen).
    operator_present: bool,
    /// The operator deleted its ConfigMap while watched: the copy must go.
    reset: bool,
}

impl TableTracker {
    /// Starts [`TableState::Loading`].
    pub fn new() -> (TableTracker, watch::Receiver<TableState>) {
        let (sender, receiver) = watch::channel(TableState::Loading);
        let tracker = TableTracker {
            sender,
            current: None,
            last_good: None,
            operator_present: false,
            reset: false,
        };
        (tracker, receiver)
    }

    fn in_force(&self) -> bool {
        matches!(*self.sender.borrow(), TableState::InForce(_))
    }

    fn loading(&self) -> bool {
        matches!(*self.sender.borrow(), TableState::Loading)
    }

    fn publish(&self, state: TableState) {
        self.sender.send_replace(state);
    }

    /// Records the persisted copy (`None`: there is none). While the operator's ConfigMap is
    /// absent, the copy decides: a deleted copy resets to the defaults.
    pub fn set_last_good(&mut self, copy: Option<(LastGood, DriverTable)>) -> ReloadOutcome {
        self.last_good = copy.map(|(copy, table)| (copy, Arc::new(table)));
        if self.loading() || self.operator_present {
            return ReloadOutcome::Unchanged;
        }
        if self.last_good.is_none() {
            self.reset = false;
        }
        self.apply_absent()
    }

    fn apply_absent(&mut self) -> ReloadOutcome {
        self.current = None;
        match &self.last_good {
            Some((_, table)) if !self.reset => {
                self.publish(TableState::InForce(table.clone()));
                ReloadOutcome::LastGood
            }
            _ => {
                self.publish(TableState::InForce(DriverTable::defaults()));
                ReloadOutcome::Defaults
            }
        }
    }

    /// Applies the operator ConfigMap's current version (`None`: it does not exist).
    pub fn apply(&mut self, config_map: Option<&ConfigMap>) -> ReloadOutcome {
        let was_present = std::mem::replace(&mut self.operator_present, config_map.is_some());
        let Some(config_map) = config_map else {
            if !self.loading() && was_present {
                // Deleted while we watched: the operator's reset to the defaults.
                self.reset = true;
            } else if !self.loading() && !was_present {
                return ReloadOutcome::Unchanged;
            }
            return self.apply_absent();
        };
        self.reset = false;
        let text = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_MAP_KEY))
            .cloned();
        if text.is_some() && text.as_ref() == self.current.as_ref().map(|c| &c.text) {
            return ReloadOutcome::Unchanged;
        }
        match table_from_config_map(config_map) {
            Ok(table) => {
                let meta = &config_map.metadata;
                let source = format!(
                    "{}/{}@{}",
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                    meta.resource_version.as_deref().unwrap_or_default()
                );
                self.current = text.map(|text| LastGood { text, source });
                self.publish(TableState::InForce(Arc::new(table)));
                ReloadOutcome::Applied
            }
            Err(e) if self.in_force() => ReloadOutcome::Invalid(e),
            Err(e) => match &self.last_good {
                Some((_, table)) => {
                    self.publish(TableState::InForce(table.clone()));
                    ReloadOutcome::Invalid(e)
                }
                None => {
                    self.publish(TableState::Unusable(Arc::from(e.to_string())));
                    ReloadOutcome::Unusable(e)
                }
            },
        }
    }

    /// What the leader should do with the persisted copy now.
    pub fn copy_action(&self) -> CopyAction {
        match (&self.current, &self.last_good) {
            (Some(current), Some((copy, _))) if current.text == copy.text => CopyAction::Keep,
            (Some(current), _) => CopyAction::Write(current.clone()),
            (None, Some(_)) if self.reset => CopyAction::Delete,
            (None, _) => CopyAction::Keep,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<TableState> {
        self.sender.subscribe()
    }
}

/// The config's series: ConfigMap versions seen by outcome, and whether a table is usable.
#[derive(Clone, Debug, Default)]
struct ConfigMetrics {
    reloads: Family<OutcomeLabels, Counter>,
    usable: Gauge,
}

impl ConfigMetrics {
    fn register(registry: &mut Registry) -> ConfigMetrics {
        let metrics = ConfigMetrics::default();
        registry.register(
            "config_reloads",
            "Driver ConfigMap versions seen, by outcome (applied, defaults, last_good, unchanged, invalid, unusable)",
            metrics.reloads.clone(),
        );
        registry.register(
            "driver_table_usable",
            "1 while a driver table is in force, 0 while none is (loading, or failed closed)",
            metrics.usable.clone(),
        );
        metrics
    }

    fn record(&self, outcome: &ReloadOutcome, state: &TableState) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        self.usable.set(i64::from(state.table().is_some()));
    }
}

/// Where the driver table comes from: the operator's ConfigMap and the labeler's last good
/// copy of it, both in `namespace`.
pub struct Source {
    pub client: Client,
    pub namespace: String,
    /// The operator's ConfigMap.
    pub name: String,
    /// The label prefix (the copy's annotation).
    pub prefix: String,
}

impl Source {
    /// The name of the labeler-owned copy of the last good table.
    pub fn copy_name(&self) -> String {
        format!("{}-last-good", self.name)
    }
}

/// Starts watching the driver ConfigMap and its last good copy. Returns the table channel
/// (starting [`TableState::Loading`]) and the watch loop, which the caller runs until shutdown.
/// Only while `leader` is true is the copy written or deleted.
pub fn watch(
    source: Source,
    recorder: Recorder,
    leader: watch::Receiver<bool>,
    registry: &mut Registry,
) -> (
    watch::Receiver<TableState>,
    impl Future<Output = ()> + Send + use<>,
) {
    let metrics = ConfigMetrics::register(registry);
    let (tracker, table) = TableTracker::new();
    let run = Watch {
        source,
        tracker,
        recorder,
        metrics,
        leader,
    };
    (table, run.run())
}

/// Which watch an event came from.
enum Seen {
    Operator(watcher::Event<ConfigMap>),
    Copy(watcher::Event<ConfigMap>),
}

struct Watch {
    source: Source,
    tracker: TableTracker,
    recorder: Recorder,
    metrics: ConfigMetrics,
    leader: watch::Receiver<bool>,
}

/// How often a failed write of the copy is tried again.
const COPY_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

impl Watch {
    async fn run(mut self) {
        let api: Api<ConfigMap> =
            Api::namespaced(self.source.client.clone(), &self.source.namespace);
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let operator = watcher(api.clone(), by_name(&self.source.name))
            .default_backoff()
            .map(|e| e.map(Seen::Operator));
        let copy = watcher(api.clone(), by_name(&self.source.copy_name()))
            .default_backoff()
            .map(|e| e.map(Seen::Copy));
        let stream = futures::stream::select(operator, copy);
        futures::pin_mut!(stream);
        // Start-up waits for both initial lists: the copy decides what an absent or invalid
        // operator ConfigMap means.
        let (mut operator_synced, mut copy_synced, mut started) = (false, false, false);
        let mut initial: Option<ConfigMap> = None;
        let mut retry = tokio::time::interval(COPY_RETRY);
        loop {
            let seen = tokio::select! {
                event = stream.next() => match event {
                    Some(Ok(seen)) => seen,
                    Some(Err(e)) => {
                        warn!(error = %e, "driver ConfigMap watch error; retrying with backoff");
                        continue;
                    }
                    None => return,
                },
                _ = self.leader.changed() => {
                    self.sync_copy(&api).await;
                    continue;
                }
                _ = retry.tick() => {
                    self.sync_copy(&api).await;
                    continue;
                }
            };
            let outcome = match seen {
                Seen::Operator(watcher::Event::Init) => {
                    (initial, operator_synced) = (None, false);
                    None
                }
                Seen::Operator(watcher::Event::InitApply(cm)) if !started => {
                    initial = Some(cm);
                    None
                }
                Seen::Operator(watcher::Event::InitApply(cm) | watcher::Event::Apply(cm)) => {
                    Some((self.tracker.apply(Some(&cm)), Some(cm)))
                }
                Seen::Operator(watcher::Event::InitDone) if !started => {
                    operator_synced = true;
                    None
                }
                Seen::Operator(watcher::Event::InitDone) => None,
                Seen::Operator(watcher::Event::Delete(_)) => Some((self.tracker.apply(None), None)),
                Seen::Copy(watcher::Event::InitDone) => {
                    copy_synced = true;
                    None
                }
                Seen::Copy(watcher::Event::Init) => None,
                Seen::Copy(watcher::Event::InitApply(cm) | watcher::Event::Apply(cm)) => {
                    let copy = LastGood::of(&cm, &self.source.prefix);
                    if copy.is_none() {
                        warn!(config_map = %self.source.copy_name(), "the last good copy holds no valid table; ignored");
                    }
                    Some((self.tracker.set_last_good(copy), None))
                }
                Seen::Copy(watcher::Event::Delete(_)) => {
                    Some((self.tracker.set_last_good(None), None))
                }
            };
            let outcome = match outcome {
                None if !started && operator_synced && copy_synced => {
                    started = true;
                    let cm = initial.take();
                    Some((self.tracker.apply(cm.as_ref()), cm))
                }
                other => other,
            };
            if let Some((outcome, cm)) = outcome {
                self.report(&outcome, cm.as_ref()).await;
                self.sync_copy(&api).await;
            }
        }
    }

    /// Logs, counts and, for what the operator must know, publishes an Event.
    async fn report(&self, outcome: &ReloadOutcome, cm: Option<&ConfigMap>) {
        let name = &self.source.name;
        self.metrics.record(outcome, &self.tracker.sender.borrow());
        let (reason, note, object) = match outcome {
            ReloadOutcome::Applied => {
                info!(config_map = %name, "driver table applied");
                return;
            }
            ReloadOutcome::Defaults => {
                info!(config_map = %name, "no driver ConfigMap: built-in defaults in force");
                return;
            }
            ReloadOutcome::Unchanged => return,
            ReloadOutcome::LastGood => {
                let source = self
                    .tracker
                    .last_good
                    .as_ref()
                    .map(|(c, _)| c.source.clone());
                let note = format!(
                    "The driver ConfigMap {name} does not exist: the last good table (from {}) stays in force until it is recreated, or until this copy is deleted to reset to the built-in defaults.",
                    source.unwrap_or_default()
                );
                warn!(config_map = %name, "{note}");
                let copy = self.copy_ref();
                ("LastGoodDriverTableInForce", note, copy)
            }
            ReloadOutcome::Invalid(error) => {
                error!(%error, "invalid driver ConfigMap; the last good table stays in force");
                let note =
                    format!("Invalid driver table, the last good one stays in force: {error}");
                ("InvalidDriverTable", note, cm.map(|cm| cm.object_ref(&())))
            }
            ReloadOutcome::Unusable(error) => {
                error!(%error, "invalid driver ConfigMap and no last good table: failing closed (no label writes, every pod skipped)");
                let note = format!(
                    "Invalid driver table and no last good one: no labels are written and every pod is left as written until it is fixed: {error}"
                );
                ("NoUsableDriverTable", note, cm.map(|cm| cm.object_ref(&())))
            }
        };
        let Some(object) = object else { return };
        let mut note = note;
        truncate(&mut note, 1000);
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(note),
            action: "Validate".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object).await {
            warn!(error = %e, "could not publish the driver-table event");
        }
    }

    fn copy_ref(&self) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
        Some(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".to_string()),
            kind: Some("ConfigMap".to_string()),
            namespace: Some(self.source.namespace.clone()),
            name: Some(self.source.copy_name()),
            ..Default::default()
        })
    }

    /// The leader writes or deletes the copy as the tracker wants it.
    async fn sync_copy(&mut self, api: &Api<ConfigMap>) {
        if !*self.leader.borrow_and_update() {
            return;
        }
        let name = self.source.copy_name();
        let result = match self.tracker.copy_action() {
            CopyAction::Keep => return,
            CopyAction::Write(copy) => {
                let patch = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "namespace": self.source.namespace,
                        "annotations": {source_annotation(&self.source.prefix): copy.source},
                    },
                    "data": {CONFIG_MAP_KEY: copy.text},
                });
                let params = PatchParams::apply(FIELD_MANAGER).force();
                api.patch(&name, &params, &Patch::Apply(&patch))
                    .await
                    .map(|_| ())
            }
            CopyAction::Delete => match api.delete(&name, &DeleteParams::default()).await {
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                other => other.map(|_| ()),
            },
        };
        match result {
            Ok(()) => info!(config_map = %name, "last good driver table copy updated"),
            Err(e) => {
                warn!(config_map = %name, error = %e, "could not update the last good driver table copy; retrying")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{AccessMode, Verdict, VolumeMode};
    use std::collections::BTreeMap;

    fn config_map(text: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "userns-labeler-drivers", "namespace": "userns-labeler"},
            "data": {CONFIG_MAP_KEY: text}
        }))
        .unwrap()
    }

    fn ebs(state: &TableState) -> Verdict {
        state
            .table()
            .expect("a table in force")
            .evaluate(
                "ebs.csi.aws.com",
                &[AccessMode::ReadWriteOnce],
                VolumeMode::Filesystem,
                None,
                &BTreeMap::new(),
            )
            .verdict
    }

    const EBS_UNKNOWN: &str =
        "rules:\n- driver: ebs.csi.aws.com\n  verdict: unknown\n  reason: not trusted here\n";

    #[test]
    fn a_valid_edit_is_published() {
        let (mut tracker, rx) = TableTracker::new();
        assert_eq!(tracker.apply(None), ReloadOutcome::Defaults);
        assert_eq!(ebs(&rx.borrow()), Verdict::True);
        assert_eq!(
            tracker.apply(Some(&config_map(EBS_UNKNOWN))),
            ReloadOutcome::Applied
        );
        assert_eq!(ebs(&rx.borrow()), Verdict::Unknown);
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_good_table() {
        let (mut tracker, mut rx) = TableTracker::new();
        tracker.apply(Some(&config_map(EBS_UNKNOWN)));
        rx.mark_unchanged();
        let outcome = tracker.apply(Some(&config_map("rules:\n- driverRegex: '('\n")));
        let ReloadOutcome::Invalid(error) = outcome else {
            panic!("expected invalid, got {outcome:?}")
        };
        assert!(
            error.to_string().starts_with(
                "ConfigMap userns-labeler/userns-labeler-drivers key drivers.yaml: rules[0]"
            ),
            "{error}"
        );
        assert!(!rx.has_changed().unwrap(), "nothing republished");
        assert_eq!(ebs(&rx.borrow()), Verdict::Unknown);
    }

    #[test]
    fn a_missing_key_is_invalid() {
        let (mut tracker, _rx) = TableTracker::new();
        tracker.apply(None);
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "namespace": "n"}, "data": {"driver.yaml": "rules: []"}
        }))
        .unwrap();
        assert!(matches!(
            tracker.apply(Some(&cm)),
            ReloadOutcome::Invalid(_)
        ));
    }

    #[test]
    fn the_same_document_again_is_unchanged() {
        let (mut tracker, mut rx) = TableTracker::new();
        tracker.apply(Some(&config_map(EBS_UNKNOWN)));
        rx.mark_unchanged();
        assert_eq!(
            tracker.apply(Some(&config_map(EBS_UNKNOWN))),
            ReloadOutcome::Unchanged
        );
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn a_deleted_config_map_restores_the_defaults() {
        let (mut tracker, rx) = TableTracker::new();
        tracker.apply(Some(&config_map(EBS_UNKNOWN)));
        assert_eq!(tracker.apply(None), ReloadOutcome::Defaults);
        assert_eq!(ebs(&rx.borrow()), Verdict::True);
        assert_eq!(tracker.apply(None), ReloadOutcome::Unchanged);
    }

    #[test]
    fn nothing_is_in_force_before_the_config_map_is_read() {
        let (_tracker, rx) = TableTracker::new();
        assert!(rx.borrow().table().is_none());
    }

    const INVALID: &str = "rules:\n- driverRegex: '('\n";

    fn copy_of(text: &str) -> Option<(LastGood, DriverTable)> {
        let mut cm = config_map(text);
        cm.metadata.name = Some("userns-labeler-drivers-last-good".to_string());
        LastGood::of(&cm, "userns.io")
    }

    #[test]
    fn an_invalid_first_document_without_a_copy_fails_closed() {
        let (mut tracker, rx) = TableTracker::new();
        tracker.set_last_good(None);
        let outcome = tracker.apply(Some(&config_map(INVALID)));
        assert!(matches!(outcome, ReloadOutcome::Unusable(_)), "{outcome:?}");
        assert!(matches!(*rx.borrow(), TableState::Unusable(_)));
        assert_eq!(
            tracker.apply(Some(&config_map(EBS_UNKNOWN))),
            ReloadOutcome::Applied
        );
        assert_eq!(
            ebs(&rx.borrow()),
            Verdict::Unknown,
            "a fix ends the fail-closed state"
        );
    }

    #[test]
    fn an_invalid_first_document_puts_the_last_good_copy_in_force() {
        let (mut tracker, rx) = TableTracker::new();
        tracker.set_last_good(copy_of(EBS_UNKNOWN));
        let outcome = tracker.apply(Some(&config_map(INVALID)));
        assert!(matches!(outcome, ReloadOutcome::Invalid(_)), "{outcome:?}");
        assert_eq!(ebs(&rx.borrow()), Verdict::Unknown);
        assert_eq!(
            tracker.copy_action(),
            CopyAction::Keep,
            "the copy is kept as it is"
        );
    }

    #[test]
    fn an_absent_config_map_at_start_keeps_the_copy_until_the_copy_is_deleted() {
        let (mut tracker, rx) = TableTracker::new();
        tracker.set_last_good(copy_of(EBS_UNKNOWN));
        assert_eq!(tracker.apply(None), ReloadOutcome::LastGood);
        assert_eq!(ebs(&rx.borrow()), Verdict::Unknown);
        assert_eq!(tracker.copy_action(), CopyAction::Keep);
        assert_eq!(tracker.set_last_good(None), ReloadOutcome::Defaults);
        assert_eq!(ebs(&rx.borrow()), Verdict::True);
    }

    #[test]
    fn an_applied_table_wants_its_copy_written_once() {
        let (mut tracker, _rx) = TableTracker::new();
        tracker.set_last_good(None);
        tracker.apply(Some(&config_map(EBS_UNKNOWN)));
        let CopyAction::Write(copy) = tracker.copy_action() else {
            panic!("expected a write, got {:?}", tracker.copy_action());
        };
        assert_eq!(copy.text, EBS_UNKNOWN);
        assert!(
            copy.source
                .starts_with("userns-labeler/userns-labeler-drivers@"),
            "{}",
            copy.source
        );
        tracker.set_last_good(copy_of(EBS_UNKNOWN));
        assert_eq!(tracker.copy_action(), CopyAction::Keep);
    }

    #[test]
    fn deleting_the_config_map_while_watched_resets_to_the_defaults_and_the_copy_goes() {
        let (mut tracker, rx) = TableTracker::new();
        tracker.set_last_good(copy_of(EBS_UNKNOWN));
        tracker.apply(Some(&config_map(EBS_UNKNOWN)));
        assert_eq!(tracker.apply(None), ReloadOutcome::Defaults);
        assert_eq!(ebs(&rx.borrow()), Verdict::True);
        assert_eq!(tracker.copy_action(), CopyAction::Delete);
        tracker.set_last_good(None);
        assert_eq!(tracker.copy_action(), CopyAction::Keep);
        assert_eq!(ebs(&rx.borrow()), Verdict::True);
    }

    #[test]
    fn a_copy_that_holds_no_valid_table_is_ignored() {
        assert!(copy_of(INVALID).is_none());
    }
}
