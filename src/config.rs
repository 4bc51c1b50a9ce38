//! The operator's driver ConfigMap: validated on every change, published on a watch channel as
//! the [`TableState`]. An invalid edit keeps the last good table in force and says so (log,
//! Warning Event, metric). [`watch`] runs the ConfigMap watch; [`TableTracker`] is its pure core.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Resource;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::capability::{DriverTable, TableError};
use crate::controller::reconcile::truncate;
use crate::metrics::OutcomeLabels;

/// The ConfigMap key holding the operator's driver table.
pub const CONFIG_MAP_KEY: &str = "drivers.yaml";

/// The driver table as the controller and the webhook see it.
#[derive(Clone, Debug, Default)]
pub enum TableState {
    /// The ConfigMap has not been read yet: nothing is decided.
    #[default]
    Loading,
    /// This table is in force.
    InForce(Arc<DriverTable>),
}

impl TableState {
    /// The table in force, if any.
    pub fn table(&self) -> Option<&Arc<DriverTable>> {
        match self {
            TableState::InForce(table) => Some(table),
            TableState::Loading => None,
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
    /// The same document as the table in force: nothing to do.
    Unchanged,
    /// The edit is invalid; the last good table stays in force.
    Invalid(TableError),
}

impl ReloadOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Defaults => "defaults",
            ReloadOutcome::Unchanged => "unchanged",
            ReloadOutcome::Invalid(_) => "invalid",
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

/// Keeps the table in force and publishes changes. The document text in force is remembered so
/// that a resync of an unchanged ConfigMap does not republish (and so re-evaluate) anything.
pub struct TableTracker {
    sender: watch::Sender<TableState>,
    /// The document in force; `None` while the built-in defaults are (or nothing yet).
    current: Option<String>,
}

impl TableTracker {
    /// Starts [`TableState::Loading`].
    pub fn new() -> (TableTracker, watch::Receiver<TableState>) {
        let (sender, receiver) = watch::channel(TableState::Loading);
        (
            TableTracker {
                sender,
                current: None,
            },
            receiver,
        )
    }

    fn loading(&self) -> bool {
        matches!(*self.sender.borrow(), TableState::Loading)
    }

    fn publish(&self, table: Arc<DriverTable>) {
        self.sender.send_replace(TableState::InForce(table));
    }

    /// Applies the ConfigMap's current version (`None`: it does not exist).
    pub fn apply(&mut self, config_map: Option<&ConfigMap>) -> ReloadOutcome {
        let Some(config_map) = config_map else {
            if self.current.take().is_none() && !self.loading() {
                return ReloadOutcome::Unchanged;
            }
            self.publish(DriverTable::defaults());
            return ReloadOutcome::Defaults;
        };
        let text = config_map
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_MAP_KEY))
            .cloned();
        if text.is_some() && text == self.current {
            return ReloadOutcome::Unchanged;
        }
        match table_from_config_map(config_map) {
            Ok(table) => {
                self.current = text;
                self.publish(Arc::new(table));
                ReloadOutcome::Applied
            }
            Err(e) => {
                if self.loading() {
                    // Nothing was in force yet: the built-in defaults are the last good table.
                    self.publish(DriverTable::defaults());
                }
                ReloadOutcome::Invalid(e)
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<TableState> {
        self.sender.subscribe()
    }
}

/// Driver ConfigMap versions seen, by outcome.
#[derive(Clone, Debug, Default)]
struct ConfigMetrics {
    reloads: Family<OutcomeLabels, Counter>,
}

impl ConfigMetrics {
    fn register(registry: &mut Registry) -> ConfigMetrics {
        let metrics = ConfigMetrics::default();
        registry.register(
            "config_reloads",
            "Driver ConfigMap versions seen, by outcome (applied, defaults, unchanged, invalid)",
            metrics.reloads.clone(),
        );
        metrics
    }

    fn record(&self, outcome: &ReloadOutcome) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }
}

/// Starts watching the driver ConfigMap `name` in `api`'s namespace. Returns the table channel
/// (starting [`TableState::Loading`]) and the watch loop, which the caller runs until shutdown.
pub fn watch(
    api: Api<ConfigMap>,
    name: String,
    recorder: Recorder,
    registry: &mut Registry,
) -> (
    watch::Receiver<TableState>,
    impl Future<Output = ()> + Send + use<>,
) {
    let metrics = ConfigMetrics::register(registry);
    let (tracker, table) = TableTracker::new();
    (table, watch_loop(api, name, tracker, recorder, metrics))
}

async fn watch_loop(
    api: Api<ConfigMap>,
    name: String,
    mut tracker: TableTracker,
    recorder: Recorder,
    metrics: ConfigMetrics,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut seen_in_initial_list = false;
    while let Some(event) = stream.next().await {
        let config_map = match event {
            Ok(watcher::Event::Init) => {
                seen_in_initial_list = false;
                continue;
            }
            Ok(watcher::Event::InitApply(cm)) => {
                seen_in_initial_list = true;
                Some(cm)
            }
            Ok(watcher::Event::InitDone) if seen_in_initial_list => continue,
            Ok(watcher::Event::InitDone) | Ok(watcher::Event::Delete(_)) => None,
            Ok(watcher::Event::Apply(cm)) => Some(cm),
            Err(e) => {
                warn!(error = %e, "ConfigMap watch error; retrying with backoff");
                continue;
            }
        };
        let outcome = tracker.apply(config_map.as_ref());
        match (&outcome, &config_map) {
            (ReloadOutcome::Applied, _) => info!(config_map = %name, "driver table applied"),
            (ReloadOutcome::Defaults, _) => {
                info!(config_map = %name, "no driver ConfigMap: built-in defaults in force")
            }
            (ReloadOutcome::Invalid(error), Some(cm)) => report_invalid(error, cm, &recorder).await,
            _ => {}
        }
        metrics.record(&outcome);
    }
}

/// Logs an invalid table and publishes a Warning Event on its ConfigMap.
async fn report_invalid(error: &TableError, cm: &ConfigMap, recorder: &Recorder) {
    error!(%error, "invalid driver ConfigMap; the last good table stays in force");
    let mut note = format!("Invalid driver table, the last good one stays in force: {error}");
    truncate(&mut note, 1000);
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidDriverTable".to_string(),
        note: Some(note),
        action: "Validate".to_string(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &cm.object_ref(&())).await {
        warn!(error = %e, "could not publish the invalid-table event");
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

    #[test]
    fn an_invalid_first_document_leaves_the_defaults_in_force() {
        let (mut tracker, rx) = TableTracker::new();
        let outcome = tracker.apply(Some(&config_map("rules:\n- driverRegex: '('\n")));
        assert!(matches!(outcome, ReloadOutcome::Invalid(_)), "{outcome:?}");
        assert_eq!(ebs(&rx.borrow()), Verdict::True);
    }
}
