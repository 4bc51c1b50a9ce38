//! Controller metrics (prometheus-client). Every label value comes from a closed set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cache::Caches;
use crate::keys::Keys;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `claim` or `volume`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    /// An error category (`ControllerError::category`).
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelValueLabels {
    pub kind: &'static str,
    /// `true`, `false`, `unknown`, or `none` (not labelled yet).
    pub value: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// The controller's counters and gauges.
#[derive(Clone, Default)]
pub struct ControllerMetrics {
    pub reconciles: Family<KindLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub writes: Family<KindLabels, Counter>,
    pub labelled: Family<LabelValueLabels, Gauge>,
    pub config_reloads: Family<OutcomeLabels, Counter>,
}

impl ControllerMetrics {
    pub fn register(registry: &mut Registry) -> ControllerMetrics {
        let metrics = ControllerMetrics::default();
        registry.register(
            "userns_labeler_reconciles",
            "Reconciliations of claims and volumes",
            metrics.reconciles.clone(),
        );
        registry.register(
            "userns_labeler_reconcile_failures",
            "Failed reconciliations, by error category",
            metrics.failures.clone(),
        );
        registry.register(
            "userns_labeler_label_writes",
            "Patches sent to the API server to change our labels or annotations",
            metrics.writes.clone(),
        );
        registry.register(
            "userns_labeler_objects",
            "Claims and volumes in the cache, by the value of their idmap label",
            metrics.labelled.clone(),
        );
        registry.register(
            "userns_labeler_config_reloads",
            "Driver ConfigMap versions seen, by outcome",
            metrics.config_reloads.clone(),
        );
        metrics
    }

    /// Recounts claims and volumes by label value from the caches (called at scrape time).
    pub fn refresh_label_counts(&self, caches: &Caches, keys: &Keys) {
        const VALUES: [&str; 4] = ["true", "false", "unknown", "none"];
        let bucket = |labels: Option<&std::collections::BTreeMap<String, String>>| match labels
            .and_then(|l| l.get(&keys.supported))
            .map(String::as_str)
        {
            Some("true") => 0,
            Some("false") => 1,
            Some(_) => 2,
            None => 3,
        };
        let mut claims = [0i64; 4];
        for claim in caches.claims.state() {
            claims[bucket(claim.metadata.labels.as_ref())] += 1;
        }
        let mut volumes = [0i64; 4];
        for volume in caches.volumes.state() {
            volumes[bucket(volume.metadata.labels.as_ref())] += 1;
        }
        for (kind, counts) in [("claim", claims), ("volume", volumes)] {
            for (value, count) in VALUES.iter().zip(counts) {
                self.labelled
                    .get_or_create(&LabelValueLabels { kind, value })
                    .set(count);
            }
        }
    }
}
