//! The controller's series: reconciliations, their duration and failures, label writes and
//! label-change Events, and the objects in the caches by label value.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cache::Caches;
use crate::keys::Keys;
use crate::metrics::Latencies;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `claim` or `volume`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    /// An error category (`ControllerError::category`).
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelValueLabels {
    kind: &'static str,
    /// `true`, `false`, `unknown`, or `none` (not labelled yet).
    value: &'static str,
}

/// The controller's counters, gauges and histogram. Cheap to clone (shared handles); the
/// default is registered nowhere (tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct ControllerMetrics {
    reconciles: Family<KindLabels, Counter>,
    duration: Latencies<KindLabels>,
    failures: Family<FailureLabels, Counter>,
    writes: Family<KindLabels, Counter>,
    label_changes: Family<KindLabels, Counter>,
    /// Label changes whose Event was not published (the queue was full).
    pub(crate) events_dropped: Counter,
    labelled: Family<LabelValueLabels, Gauge>,
    /// When `labelled` was last recounted (`refresh_label_counts`).
    counted: Arc<Mutex<Option<Instant>>>,
}

/// The label counts are recounted at most this often: a count walks every cached object, and a
/// scraper polling faster (a benchmark timing writes) would otherwise pay it on each request.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> ControllerMetrics {
        let metrics = ControllerMetrics::default();
        registry.register(
            "reconciles",
            "Reconciliations of claims and volumes, by kind",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took, label write included, by kind",
            metrics.duration.0.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciliations, by kind and error category",
            metrics.failures.clone(),
        );
        registry.register(
            "label_writes",
            "Patches sent to the API server to change our labels or annotations, by kind",
            metrics.writes.clone(),
        );
        registry.register(
            "label_changes",
            "Changes of an existing idmap label value (each announced by an IdmapSupportChanged Event unless the Event queue was full), by kind",
            metrics.label_changes.clone(),
        );
        registry.register(
            "change_events_dropped",
            "IdmapSupportChanged Events not published because more label changes waited than the Event queue holds (a table edit flipping many labels); the labels and reasons carry the change",
            metrics.events_dropped.clone(),
        );
        registry.register(
            "objects",
            "Claims and volumes in the cache, by the value of their idmap label (counted at scrape time, at most once a second)",
            metrics.labelled.clone(),
        );
        metrics
    }

    pub(crate) fn record_reconcile(&self, kind: &'static str, seconds: f64) {
        let labels = KindLabels { kind };
        self.reconciles.get_or_create(&labels).inc();
        self.duration.0.get_or_create(&labels).observe(seconds);
    }

    pub(crate) fn record_write(&self, kind: &'static str) {
        self.writes.get_or_create(&KindLabels { kind }).inc();
    }

    pub(crate) fn record_label_change(&self, kind: &'static str) {
        self.label_changes.get_or_create(&KindLabels { kind }).inc();
    }

    pub(crate) fn record_failure(&self, kind: &'static str, category: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { kind, category })
            .inc();
    }

    /// How many label writes were sent for `kind` (tests and benchmarks).
    pub fn writes(&self, kind: &'static str) -> u64 {
        self.writes.get_or_create(&KindLabels { kind }).get()
    }

    /// Recounts claims and volumes by label value from the caches (called at scrape time), unless
    /// they were counted less than [`RECOUNT_EVERY`] ago.
    pub fn refresh_label_counts(&self, caches: &Caches, keys: &Keys) {
        {
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if counted.is_some_and(|at| now.duration_since(at) < RECOUNT_EVERY) {
                return;
            }
            *counted = Some(now);
        }
        const VALUES: [&str; 4] = ["true", "false", "unknown", "none"];
        let bucket = |marks: &crate::capability::Marks| match marks.label(&keys.supported) {
            Some("true") => 0,
            Some("false") => 1,
            Some(_) => 2,
            None => 3,
        };
        let mut claims = [0i64; 4];
        for claim in caches.claims.state() {
            claims[bucket(&claim.marks)] += 1;
        }
        let mut volumes = [0i64; 4];
        for volume in caches.volumes.state() {
            volumes[bucket(&volume.marks)] += 1;
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
