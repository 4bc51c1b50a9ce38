//! The evidence loop's series: failure Events seen by kind, what each idmap failure led to, and
//! failed pods deleted.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::OutcomeLabels;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    /// `volume_idmap`, `image_idmap` or `unrelated`.
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    /// `runc`, `crun` or `containerd`.
    runtime: &'static str,
    /// See [`Outcome`].
    outcome: &'static str,
}

/// What one idmap-failure Event led to; the string is a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The claim and its PV were labelled `false` with the evidence.
    Claim,
    /// The inline hostPath was recorded in the evidence ConfigMap.
    HostPath,
    /// The node was labelled `false` with the evidence.
    Node,
    /// Already handled for this pod (a repeated Event).
    Repeated,
    /// The pod no longer exists (or is another pod of the same name).
    PodGone,
    /// The pod was not enabled by this webhook: nothing changes.
    NotEnabled,
    /// The failing mount could not be attributed to a claim, hostPath or the node.
    Unattributed,
    /// The evidence ConfigMap holds its maximum of host paths.
    HostPathsFull,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Claim,
        Outcome::HostPath,
        Outcome::Node,
        Outcome::Repeated,
        Outcome::PodGone,
        Outcome::NotEnabled,
        Outcome::Unattributed,
        Outcome::HostPathsFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Claim => "claim",
            Outcome::HostPath => "host_path",
            Outcome::Node => "node",
            Outcome::Repeated => "repeated",
            Outcome::PodGone => "pod_gone",
            Outcome::NotEnabled => "not_enabled",
            Outcome::Unattributed => "unattributed",
            Outcome::HostPathsFull => "host_paths_full",
        }
    }
}

/// The evidence loop's counters; the default is registered nowhere (tests).
#[derive(Clone, Debug, Default)]
pub struct EvidenceMetrics {
    events: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    deletions: Family<OutcomeLabels, Counter>,
}

impl EvidenceMetrics {
    pub fn register(registry: &mut Registry) -> EvidenceMetrics {
        let metrics = EvidenceMetrics::default();
        registry.register(
            "failure_events",
            "Pod failure Events (reasons Failed, FailedCreatePodSandBox) seen by the leader, by kind (volume_idmap, image_idmap, unrelated)",
            metrics.events.clone(),
        );
        registry.register(
            "idmap_failures",
            "idmap-mount failures reported by a node's runtime, by runtime and what they led to (claim, host_path, node, repeated, pod_gone, not_enabled, unattributed, host_paths_full)",
            metrics.failures.clone(),
        );
        registry.register(
            "failed_pod_deletions",
            "Failed pods with a controller owner deleted so that they are created and decided again (--delete-failed-pods), by outcome (deleted, error)",
            metrics.deletions.clone(),
        );
        for kind in ["volume_idmap", "image_idmap", "unrelated"] {
            let _ = metrics.events.get_or_create(&KindLabels { kind });
        }
        metrics
    }

    pub(crate) fn event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabels { kind }).inc();
    }

    pub(crate) fn failure(&self, runtime: &'static str, outcome: Outcome) {
        self.failures
            .get_or_create(&FailureLabels {
                runtime,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(crate) fn deletion(&self, outcome: &'static str) {
        self.deletions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Events seen of `kind` (tests).
    pub fn events(&self, kind: &'static str) -> u64 {
        self.events.get_or_create(&KindLabels { kind }).get()
    }
}
