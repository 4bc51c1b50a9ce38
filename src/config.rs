//! The operator's driver ConfigMap: validated on every change, published on a watch channel.
//! An invalid edit keeps the last good table in force.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;

use crate::capability::{DriverTable, TableError};

/// The ConfigMap key holding the operator's driver table.
pub const CONFIG_MAP_KEY: &str = "drivers.yaml";

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
    sender: watch::Sender<Arc<DriverTable>>,
    /// The document in force; `None` while the built-in defaults are.
    current: Option<String>,
}

impl TableTracker {
    /// Starts with the built-in defaults.
    pub fn new() -> (TableTracker, watch::Receiver<Arc<DriverTable>>) {
        let (sender, receiver) = watch::channel(DriverTable::defaults());
        (
            TableTracker {
                sender,
                current: None,
            },
            receiver,
        )
    }

    /// Applies the ConfigMap's current version (`None`: it does not exist).
    pub fn apply(&mut self, config_map: Option<&ConfigMap>) -> ReloadOutcome {
        let Some(config_map) = config_map else {
            if self.current.take().is_none() {
                return ReloadOutcome::Unchanged;
            }
            self.sender.send_replace(DriverTable::defaults());
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
                self.sender.send_replace(Arc::new(table));
                ReloadOutcome::Applied
            }
            Err(e) => ReloadOutcome::Invalid(e),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<DriverTable>> {
        self.sender.subscribe()
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

    fn ebs(table: &DriverTable) -> Verdict {
        table
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
}
