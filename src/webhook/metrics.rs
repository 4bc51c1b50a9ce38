//! The webhook's Prometheus metrics. Every label value comes from a closed set (outcomes, blocker
//! codes, error categories), so the number of series is bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::capability::BlockerCode;
use crate::metrics::{Latencies, OutcomeLabels, ResultLabels};

/// What the webhook did with one admission request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `hostUsers: false` was set.
    Enabled,
    /// Left as written, with the decision annotations.
    Skipped,
    /// Audit mode: annotated with what enforce mode would do.
    Audit,
    /// A reinvocation found a pod we enabled no longer safe: `hostUsers: false` removed.
    Reverted,
    /// The pod or its namespace opted out: no patch at all.
    OptOut,
    /// Not a pod CREATE (or already decided on an earlier invocation): no patch.
    Ignored,
    /// Malformed request or internal doubt: see `userns_labeler_webhook_admission_errors_total`.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Enabled,
        Outcome::Skipped,
        Outcome::Reverted,
        Outcome::Audit,
        Outcome::OptOut,
        Outcome::Ignored,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Enabled => "enabled",
            Outcome::Skipped => "skipped",
            Outcome::Reverted => "reverted",
            Outcome::Audit => "audit",
            Outcome::OptOut => "opt_out",
            Outcome::Ignored => "ignored",
            Outcome::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BlockerLabels {
    code: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    category: &'static str,
}

/// Counters and the latency histogram of the webhook. Cheap to clone (shared handles); the
/// default is registered nowhere (tests, benchmarks).
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    admissions: Family<OutcomeLabels, Counter>,
    blockers: Family<BlockerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Latencies<OutcomeLabels>,
    tls_reloads: Family<ResultLabels, Counter>,
    cache_waits: Family<ResultLabels, Counter>,
    ca_bundle_injections: Family<ResultLabels, Counter>,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them under `webhook_` in `registry` (so
    /// `userns_labeler_webhook_…` in the process's [`crate::metrics::registry`]).
    pub fn register(registry: &mut Registry) -> WebhookMetrics {
        let metrics = WebhookMetrics::default();
        let registry = registry.sub_registry_with_prefix("webhook");
        registry.register(
            "admissions",
            "Pod admission requests by outcome (enabled, skipped, reverted, audit, opt_out, ignored, error)",
            metrics.admissions.clone(),
        );
        registry.register(
            "admission_blockers",
            "Reasons that left a pod as written (or would, in audit mode), by blocker code",
            metrics.blockers.clone(),
        );
        registry.register(
            "admission_errors",
            "Malformed admission requests and internal errors, by category",
            metrics.errors.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time from receiving an admission request to its response, by outcome",
            metrics.duration.0.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of the serving certificate from disk, or from a rotated shared self-signed CA, by result (ok, error)",
            metrics.tls_reloads.clone(),
        );
        registry.register(
            "cache_waits",
            "Admissions that waited for the caches to catch up with a claim or namespace, by result (caught_up, timed_out)",
            metrics.cache_waits.clone(),
        );
        // Zero-valued series for every outcome and code, so dashboards see them from the start.
        for outcome in Outcome::ALL {
            let _ = metrics.admissions.get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            });
        }
        for code in BlockerCode::ALL {
            let _ = metrics.blockers.get_or_create(&BlockerLabels {
                code: code.as_str(),
            });
        }
        registry.register(
            "ca_bundle_injections",
            "Writes of the self-signed CA into the webhook configuration's caBundle, by result (ok, error)",
            metrics.ca_bundle_injections.clone(),
        );
        metrics
    }

    pub(crate) fn record(
        &self,
        outcome: Outcome,
        blockers: &[BlockerCode],
        error: Option<&'static str>,
        seconds: f64,
    ) {
        let labels = OutcomeLabels {
            outcome: outcome.as_str(),
        };
        self.admissions.get_or_create(&labels).inc();
        for code in blockers {
            self.blockers
                .get_or_create(&BlockerLabels {
                    code: code.as_str(),
                })
                .inc();
        }
        if let Some(category) = error {
            self.errors.get_or_create(&ErrorLabels { category }).inc();
        }
        self.duration.0.get_or_create(&labels).observe(seconds);
    }

    pub(crate) fn tls_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// How many admissions ended with `outcome` (for tests and the load benchmark).
    pub fn admissions(&self, outcome: Outcome) -> u64 {
        self.admissions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .get()
    }

    /// How many errors of a category were counted.
    pub fn errors(&self, category: &'static str) -> u64 {
        self.errors.get_or_create(&ErrorLabels { category }).get()
    }

    /// How many times a blocker code was counted.
    pub fn blockers(&self, code: BlockerCode) -> u64 {
        self.blockers
            .get_or_create(&BlockerLabels {
                code: code.as_str(),
            })
            .get()
    }

    pub(crate) fn cache_wait(&self, caught_up: bool) {
        let result = if caught_up { "caught_up" } else { "timed_out" };
        self.cache_waits
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// How many admissions waited for the caches and then found what they missed
    /// (`caught_up`) or not.
    pub fn cache_waits(&self, caught_up: bool) -> u64 {
        let result = if caught_up { "caught_up" } else { "timed_out" };
        self.cache_waits
            .get_or_create(&ResultLabels { result })
            .get()
    }

    /// How many certificate reloads succeeded (`ok`) or failed.
    pub fn tls_reloads(&self, ok: bool) -> u64 {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .get()
    }

    pub(crate) fn ca_bundle_injection(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.ca_bundle_injections
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// How many writes of the self-signed CA into the webhook configuration succeeded (`ok`)
    /// or failed.
    pub fn ca_bundle_injections(&self, ok: bool) -> u64 {
        let result = if ok { "ok" } else { "error" };
        self.ca_bundle_injections
            .get_or_create(&ResultLabels { result })
            .get()
    }
}
