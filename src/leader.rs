//! Leader election on a coordination.k8s.io Lease: only the holder writes labels; every replica
//! keeps its caches warm and serves the webhook.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where the Lease is and who we are in it.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("leader election: {0}")]
pub struct LeaderError(String);

/// This replica's leadership: whether it holds the lease now, and the task that keeps it.
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    /// Ends with `Ok` after `shutdown`, or with the error that stopped the election.
    pub task: tokio::task::JoinHandle<Result<(), LeaderError>>,
}

/// Starts taking part in the election on `settings.name`.
pub async fn start(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
) -> Result<Leadership, LeaderError> {
    let lease = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration.as_secs())
        .with_grace(5)
        .build()
        .await
        .map_err(|e| LeaderError(e.to_string()))?;
    let (is_leader, lease_task) = lease.watch().await;
    let mut changes = is_leader.clone();
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            let is_leader = *changes.borrow_and_update();
            tracing::info!(is_leader, "leadership changed");
        }
    });
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            result = lease_task => match result {
                Ok(Ok(_)) => Err(LeaderError("the lease task ended".to_string())),
                Ok(Err(e)) => Err(LeaderError(e.to_string())),
                Err(e) => Err(LeaderError(e.to_string())),
            },
        }
    });
    Ok(Leadership { is_leader, task })
}
