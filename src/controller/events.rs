//! The `IdmapSupportChanged` Events, published off the write path: a label write queues its
//! Event and moves on, and one task publishes the queue with the write budget's lowest priority
//! and at most [`EVENTS_PER_SECOND`]. A table edit that flips many labels so writes them at the
//! API server's pace, and its Events trickle after them without taking the server's time from
//! the writes; past [`QUEUE`] waiting Events the rest are dropped and counted
//! (`userns_labeler_change_events_dropped`): each label's reason annotation says the same.
//!
//! Not through kube's `Recorder`: its series cache keys on the object's resourceVersion, which
//! every label change moves, so it never merges our Events, while it keeps each one for six
//! minutes and scans all of them on every publish (a table edit flipping N labels would hold N
//! Events and scan them N times). Each Event here is what the Recorder creates for a first
//! occurrence.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::Reporter;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::MissedTickBehavior;
use tracing::warn;

use super::budget::{Priority, WriteBudget};

/// Events waiting to be published at most (about half a kilobyte each); more are dropped.
pub const QUEUE: usize = 10_000;

/// Events published per second at most.
pub const EVENTS_PER_SECOND: u32 = 20;

/// The reason of every Event published here.
pub const REASON: &str = "IdmapSupportChanged";

/// One Event to publish.
struct Pending {
    regarding: ObjectReference,
    note: String,
}

/// The queue of label-change Events; its task ends when the last handle is dropped.
pub struct ChangeEvents {
    queue: mpsc::Sender<Pending>,
    dropped: Counter,
}

impl ChangeEvents {
    /// Starts the task that publishes queued Events as `reporter`, one at a time and at most
    /// [`EVENTS_PER_SECOND`], each holding a permit of `budget` at [`Priority::Event`]; Events
    /// that find the queue full are counted in `dropped`.
    pub fn start(
        client: Client,
        reporter: Reporter,
        budget: WriteBudget,
        dropped: Counter,
    ) -> ChangeEvents {
        let (queue, mut received) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs(1) / EVENTS_PER_SECOND);
            pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
            while let Some(event) = received.recv().await {
                pace.tick().await;
                let _permit = budget.acquire(Priority::Event).await;
                publish(client.clone(), &reporter, event).await;
            }
        });
        ChangeEvents { queue, dropped }
    }

    /// Queues a Normal `IdmapSupportChanged` Event about `regarding`; never waits: when the
    /// queue is full the Event is dropped and counted.
    pub fn announce(&self, regarding: ObjectReference, note: String) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Pending { regarding, note })
            && self.dropped.inc().is_multiple_of(1_000)
        {
            warn!(
                queue = QUEUE,
                "label-change Events are dropped: more labels changed than the Event queue holds (userns_labeler_change_events_dropped counts them)"
            );
        }
    }
}

async fn publish(client: Client, reporter: &Reporter, pending: Pending) {
    let event = change_event(reporter, pending, Timestamp::now());
    let namespace = event.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<Event> = Api::namespaced(client, namespace);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        warn!(error = %e, "could not publish the label-change event");
    }
}

/// The Event as kube's `Recorder` writes a first occurrence (cluster-scoped objects' Events go
/// to `default`).
fn change_event(reporter: &Reporter, pending: Pending, now: Timestamp) -> Event {
    let Pending { regarding, note } = pending;
    Event {
        action: Some("Relabel".to_string()),
        reason: Some(REASON.to_string()),
        note: Some(note),
        type_: Some("Normal".to_string()),
        event_time: Some(MicroTime(now)),
        metadata: ObjectMeta {
            namespace: Some(
                regarding
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".to_string()),
            ),
            name: Some(format!(
                "{}.{:x}",
                regarding.name.as_deref().unwrap_or(&reporter.controller),
                now.as_nanosecond()
            )),
            ..ObjectMeta::default()
        },
        regarding: Some(regarding),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        ..Event::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_names_its_object_reporter_and_reason() {
        let reporter = Reporter {
            controller: "userns-labeler".into(),
            instance: Some("pod-a".into()),
        };
        let regarding = ObjectReference {
            kind: Some("PersistentVolume".into()),
            name: Some("pv-1".into()),
            ..ObjectReference::default()
        };
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let event = change_event(
            &reporter,
            Pending {
                regarding: regarding.clone(),
                note: "changed".into(),
            },
            now,
        );
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(
            event.metadata.name,
            Some(format!("pv-1.{:x}", now.as_nanosecond()))
        );
        assert_eq!(event.regarding, Some(regarding));
        assert_eq!(event.reason.as_deref(), Some(REASON));
        assert_eq!(event.type_.as_deref(), Some("Normal"));
        assert_eq!(event.reporting_instance.as_deref(), Some("pod-a"));
        assert_eq!(event.note.as_deref(), Some("changed"));
    }
}
