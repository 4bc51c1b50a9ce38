//! The metrics style shared by every part: one prometheus-client [`Registry`] whose series all
//! start with [`PREFIX`], each part registering its own series next to its code
//! (`controller::metrics`, `config`, `webhook::metrics`), every label value from a closed set so
//! the number of series is bounded, and counters changed only through a part's `record…` methods.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The prefix of every series: `userns_labeler_…`.
pub const PREFIX: &str = "userns_labeler";

/// The process's registry: every series registered in it is named `userns_labeler_<name>`.
pub fn registry() -> Registry {
    Registry::with_prefix(PREFIX)
}

/// A series split by what happened (`enabled`, `applied`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A series split by success (`ok`/`error`, `caught_up`/`timed_out`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// A duration histogram from 50 µs to ~3.3 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Duration histograms by label set, each with [`latency_histogram`]'s buckets. Unlike a plain
/// histogram [`Family`], it has a `Default`, so a part's metrics struct can derive its own.
#[derive(Clone, Debug)]
pub struct Latencies<L>(pub Family<L, Histogram, fn() -> Histogram>);

impl<L: Clone + std::hash::Hash + Eq> Default for Latencies<L> {
    fn default() -> Self {
        Latencies(Family::new_with_constructor(latency_histogram))
    }
}
