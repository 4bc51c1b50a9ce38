//! The `IdmapSupportChanged` Events, published off the write path: a label write queues its
//! Event and moves on, and one task publishes the queue with the write budget's lowest priority.
//! A table edit that flips many labels so writes them all at the API server's pace first, and
//! its Events follow.
//!
//! Not through kube's `Recorder`: its series cache keys on the object's resourceVersion, which
//! every label change moves, so it never merges our Events, while it keeps each one for six
//! minutes and scans all of them on every publish (a table edit flipping N labels would hold N
//! Events and scan them N times). Each Event here is what the Recorder creates for a first
//! occurrence.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::runtime::events::Reporter;
use tokio::sync::mpsc;
use tracing::warn;

use super::budget::{Priority, WriteBudget};

/// Events waiting to be published at most; a label write that would queue more waits for room
/// (about half a kilobyte each).
const QUEUE: usize = 10_000;

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
}

impl ChangeEvents {
    /// Starts the task that publishes queued Events as `reporter`, each holding a permit of
    /// `budget` at [`Priority::Event`].
    pub fn start(client: Client, reporter: Reporter, budget: WriteBudget) -> ChangeEvents {
        let (queue, received) = mpsc::channel::<Pending>(QUEUE);
        let pending =
            futures::stream::unfold(
                received,
                |mut r| async move { r.recv().await.map(|p| (p, r)) },
            );
        let in_flight = budget.permits();
        tokio::spawn(pending.for_each_concurrent(in_flight, move |event| {
            let (client, reporter, budget) = (client.clone(), reporter.clone(), budget.clone());
            async move {
                let _permit = budget.acquire(Priority::Event).await;
                publish(client, &reporter, event).await;
            }
        }));
        ChangeEvents { queue }
    }

    /// Queues a Normal `IdmapSupportChanged` Event about `regarding`; waits only while the
    /// queue is full.
    pub async fn announce(&self, regarding: ObjectReference, note: String) {
        // The task ends only with the last sender, so sending cannot fail while `self` lives.
        let _ = self.queue.send(Pending { regarding, note }).await;
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
